"""The compute instructions of ``nki.isa`` (Vector, Scalar and GpSimd engines), NKI 0.6 API.

Every instruction writes into a ``dst`` the kernel allocated and follows its documentation page:

* operands live on chip (SBUF or PSUM; only DMA touches HBM), partition dimension first (<= 128);
  "same layout" means the same partition count and the same number of elements per partition
  (shapes may otherwise differ: values flow in row-major order within each partition);
* arithmetic is float32 internally; the result is rounded to ``dst.dtype`` when written
  (``NkiTensor.write``); bitvec operators work on integer bit patterns without casting;
* each check raises ``NkiSimError`` naming the instruction, the operand, the limit and the value;
* each executed instruction is recorded in the run's trace (engine, opcode, operands).

Tie and miss behaviour of the routing instructions (documented on the NKI 0.6 pages):

* ``max8``: the 8 largest values per partition in descending order; equal values simply repeat
  (values only, no indices).
* NaN: the pages define neither max8's order of NaN nor whether nc_find_index8 / nc_match_replace8
  match it, so a NaN operand of these three is refused (naming the operand and the first NaN) instead
  of being given an invented answer; it is also how a read of unwritten memory (NaN sentinel) shows.
* ``nc_find_index8``: for each of the 8 values, the index of its first occurrence in ``data``; when a
  value repeats within ``vals``, its k-th repetition (left to right) takes the k-th occurrence in
  ``data`` (ascending pairing); a value absent from ``data`` gives all-ones (0xFFFFFFFF / 0xFFFF).
* ``nc_match_replace8``: the matched positions are replaced by ``imm``; ``vals`` are processed in
  reverse order (7..0), so repeated values pair with occurrences in *descending* slot order: the first
  occurrence goes to the highest slot. Not documented: a value absent from ``data`` (we leave ``data``
  unchanged and write all-ones into ``dst_idx``).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence

import numpy as np

from moegen.sim import checks, runtime
from moegen.sim import dtypes as dt
from moegen.sim import language_ops as ops
from moegen.sim.enums import NkiInstruction, engine, reduce_cmd
from moegen.sim.errors import NkiSimError
from moegen.sim.language_ops import equal, maximum
from moegen.sim.tensor import NkiTensor

F32 = np.float32
PMAX = 128
ON_CHIP = ("sbuf", "psum")
FP32_MIN = float(np.finfo(np.float32).min)

# ---------------------------------------------------------------------------------------------------
# Access to the simulator core (moegen.sim.tensor, moegen.sim.runtime)
# ---------------------------------------------------------------------------------------------------


def _is_tensor(x: object) -> bool:
    return isinstance(x, NkiTensor)


def _buffer_name(t: NkiTensor) -> str:
    """'sbuf', 'psum', 'private_hbm' or 'shared_hbm'."""
    return t.buffer.name


def _dtype_name(t: NkiTensor) -> str:
    return t.dtype.name


def _tensor_label(t) -> str:
    return f"{getattr(t, 'name', '?')}{tuple(t.shape)} {_dtype_name(t)} in {_buffer_name(t).upper()}"


def _read_raw(t: NkiTensor) -> np.ndarray:
    """Values in the storage dtype (bit-exact copies, bit patterns)."""
    return np.asarray(t.read())


def _read_f32(t: NkiTensor) -> np.ndarray:
    """Values as float32 (what the engines compute on)."""
    return dt.to_f32(np.asarray(t.read())).astype(F32, copy=False)


def _write(t: NkiTensor, values: np.ndarray) -> None:
    """Store values (row-major within each partition) into t, rounded to t's dtype."""
    t.write(np.asarray(values).reshape(tuple(t.shape)))


def _target() -> str:
    return runtime.current().target


def _record(instruction: str, eng: str, dst, inputs: dict, name: str | None) -> NkiInstruction:
    """Record one executed instruction in the run's trace; return its NkiInstruction handle."""
    operands = {"dst": dst, **{k: v for k, v in inputs.items() if v is not None}}
    if name is not None:
        operands["name"] = name
    entry = runtime.current().record(eng, instruction, operands)
    return NkiInstruction(entry)


# ---------------------------------------------------------------------------------------------------
# Operator lookup (the tables live in language_ops)
# ---------------------------------------------------------------------------------------------------


def _op_name(op: object) -> str:
    """A printable name of an operator value, for error messages and the trace."""
    return getattr(op, "__name__", repr(op))


def _alu_op(op: object, instruction: str, param: str) -> ops.AluOp:
    """The ALU operator behind ``op`` (an nl function); NkiSimError naming instruction and param if
    ``op`` is not one (e.g. ``nl.divide``, an activation, a NumPy ufunc, a string)."""
    spec = ops.ALU_OPS.get(op) if callable(op) else None
    if spec is None:
        supported = ", ".join(f"nl.{name}" for name in ops.ALU_BY_NAME)
        raise NkiSimError(
            f"{instruction}: {param}={_op_name(op)} is not a supported ALU operator of nki.isa (supported: {supported})"
        )
    return spec


def _reduce_op(op: object, instruction: str, param: str) -> ops.AluOp:
    """The ALU operator of a reduction (``nl.max``/``nl.min``/... accepted as aliases); NkiSimError if
    ``op`` is not a legal reduction operator."""
    op = ops.REDUCE_ALIASES.get(op, op) if callable(op) else op
    spec = _alu_op(op, instruction, param)
    if spec.name == "subtract":
        raise NotImplementedError(
            f"{instruction}: {param}=nl.subtract is a legal reduction on hardware but its order of "
            "evaluation is not documented; the simulator does not implement it"
        )
    if spec.reduce is None:
        raise NkiSimError(f"{instruction}: {param}=nl.{spec.name} is not a legal reduction operator")
    return spec


def _activation_fn(op: object, instruction: str, param: str = "op") -> ops.Activation:
    """The activation function behind ``op``; NkiSimError if ``op`` is not a Scalar Engine activation."""
    spec = ops.ACTIVATIONS.get(op) if (callable(op) or op is ops.bypass) else None
    if spec is None:
        supported = ", ".join(f"nl.{name}" for name in ops.ACTIVATION_BY_NAME)
        raise NkiSimError(
            f"{instruction}: {param}={_op_name(op)} is not a supported activation function (supported: {supported})"
        )
    return spec


# ---------------------------------------------------------------------------------------------------
# Engine accumulator registers (one fp32 register per partition lane, per engine, per run)
# ---------------------------------------------------------------------------------------------------


class _Accumulators:
    """ScalarE (activation/activate2) and VectorE (exponential, range_select, select_reduce,
    tensor_scalar_reduce, tensor_scalar_cumulative) reduction registers. NaN = undefined state."""

    def __init__(self) -> None:
        self.scalar = np.full(PMAX, np.nan, dtype=F32)
        self.vector = np.full(PMAX, np.nan, dtype=F32)


_ACCUMULATORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _accumulators() -> _Accumulators:
    """The accumulator registers of the current core (each simulated NeuronCore has its own)."""
    return _ACCUMULATORS.setdefault(runtime.current(), _Accumulators())


# ---------------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------------


def _free_size(t) -> int:
    return int(math.prod(tuple(t.shape)[1:]))


def _check_tensor(instr: str, param: str, t, buffers: Sequence[str] = ON_CHIP) -> None:
    """t is a tensor in one of ``buffers`` with a partition dimension <= 128."""
    if not _is_tensor(t):
        raise NkiSimError(
            f"{instr}: {param} must be a tensor in {'/'.join(b.upper() for b in buffers)}, got {type(t).__name__}"
        )
    buf = _buffer_name(t)
    if buf not in buffers:
        raise NkiSimError(
            f"{instr}: {param} must be in {' or '.join(b.upper() for b in buffers)}, but {_tensor_label(t)} "
            f"is in {buf.upper()}" + (" (only DMA instructions access HBM)" if "hbm" in buf else "")
        )
    if len(t.shape) < 2:
        raise NkiSimError(f"{instr}: {param} must have a partition and a free dimension, got shape {tuple(t.shape)}")
    checks.check_partition(instr, param, t)  # <= 128, contiguous partitions, start-partition rule


def _check_same_layout(instr: str, a_param: str, a, b_param: str, b) -> None:
    """Same partition count and same number of elements per partition."""
    if a.shape[0] != b.shape[0]:
        raise NkiSimError(
            f"{instr}: {a_param} and {b_param} must have the same partition dimension, "
            f"got {a_param}{tuple(a.shape)} and {b_param}{tuple(b.shape)}"
        )
    if _free_size(a) != _free_size(b):
        raise NkiSimError(
            f"{instr}: {a_param} and {b_param} must have the same number of elements per partition, "
            f"got {a_param}{tuple(a.shape)} ({_free_size(a)}) and {b_param}{tuple(b.shape)} ({_free_size(b)})"
        )


def _check_not_both_psum(instr: str, a_param: str, a, b_param: str, b) -> None:
    if _is_tensor(a) and _is_tensor(b) and _buffer_name(a) == "psum" and _buffer_name(b) == "psum":
        raise NkiSimError(f"{instr}: {a_param} and {b_param} cannot both be in PSUM")


def _check_dtype(instr: str, param: str, t, allowed: Sequence[str]) -> None:
    if _dtype_name(t) not in allowed:
        raise NkiSimError(f"{instr}: {param} dtype must be one of {', '.join(allowed)}, got {_dtype_name(t)}")


def _check_rank(instr: str, param: str, t, max_rank: int) -> None:
    if len(t.shape) > max_rank:
        raise NkiSimError(f"{instr}: {param} may have at most {max_rank} dimensions, got shape {tuple(t.shape)}")


def _check_target(instr: str, what: str, minimum: str = "trn3") -> None:
    order = {"trn1": 1, "trn2": 2, "trn3": 3}
    target = _target()
    if order.get(target, 3) < order[minimum]:
        raise NkiSimError(f"{instr}: {what} requires {minimum} or newer, target is {target}")


def _engine(instr: str, value, allowed: Sequence[str], default: str) -> str:
    """The engine an instruction runs on: ``value`` (an nisa.engine member) or ``default`` if unknown."""
    if not isinstance(value, engine):
        raise NkiSimError(f"{instr}: engine must be an nisa.engine member (raw values are rejected), got {value!r}")
    if value is engine.unknown:
        return default
    if value.name not in allowed:
        raise NkiSimError(f"{instr}: engine={value.name} is not allowed (allowed: {', '.join(allowed)})")
    return value.name


def _check_gpsimd_access(instr: str, eng: str, operands: dict) -> None:
    if eng != "gpsimd":
        return
    for param, t in operands.items():
        if _is_tensor(t) and _buffer_name(t) == "psum":
            raise NkiSimError(f"{instr}: {param} is in PSUM, which the GpSimd engine cannot access")


def _check_reduce_cmd(instr: str, value) -> reduce_cmd:
    if not isinstance(value, reduce_cmd):
        raise NkiSimError(f"{instr}: reduce_cmd must be an nisa.reduce_cmd member, got {value!r}")
    return value


def _is_scalar(x: object) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def _scalar_or_vector(instr: str, param: str, value, partitions: int, fp32_only: bool = True):
    """A compile-time scalar (float32) or a [P, 1] on-chip vector (returned as a (P, 1) float32 array)."""
    if _is_scalar(value):
        return F32(value)
    if _is_tensor(value):
        _check_tensor(instr, param, value)
        if value.shape[0] != partitions or _free_size(value) != 1:
            raise NkiSimError(
                f"{instr}: {param} must be a scalar or a ({partitions}, 1) vector, got shape {tuple(value.shape)}"
            )
        if fp32_only and _dtype_name(value) != "float32":
            raise NkiSimError(f"{instr}: {param} vector must be float32, got {_dtype_name(value)}")
        return _read_f32(value).reshape(partitions, 1)
    raise NkiSimError(f"{instr}: {param} must be a scalar or a ({partitions}, 1) tensor, got {type(value).__name__}")


# ---------------------------------------------------------------------------------------------------
# Integer bit patterns (bitvec operators)
# ---------------------------------------------------------------------------------------------------

_INT_WIDTH = {"int8": 8, "uint8": 8, "int16": 16, "uint16": 16, "int32": 32, "uint32": 32, "bool_": 8}
_UNSIGNED = {8: np.uint8, 16: np.uint16, 32: np.uint32}
_INT_NUMPY = {
    "int8": np.int8,
    "uint8": np.uint8,
    "int16": np.int16,
    "uint16": np.uint16,
    "int32": np.int32,
    "uint32": np.uint32,
    "bool_": np.uint8,
}


def _check_integer(instr: str, param: str, t) -> int:
    width = _INT_WIDTH.get(_dtype_name(t))
    if width is None:
        raise NkiSimError(f"{instr}: bitvec operators need integer tiles, {param} is {_dtype_name(t)}")
    return width


def _bits(t) -> np.ndarray:
    """The zero-extended bit patterns of an integer tile, as uint64, shape (P, F)."""
    width = _INT_WIDTH[_dtype_name(t)]
    raw = _read_raw(t).astype(_INT_NUMPY[_dtype_name(t)])
    return raw.view(_UNSIGNED[width]).astype(np.uint64).reshape(t.shape[0], -1)


def _bits_operand(instr: str, param: str, value, partitions: int) -> np.ndarray | np.uint64:
    if _is_scalar(value) and float(value).is_integer():
        return np.uint64(int(value) & 0xFFFF_FFFF_FFFF_FFFF)
    if _is_tensor(value):
        _check_tensor(instr, param, value)
        _check_integer(instr, param, value)
        if value.shape[0] != partitions or _free_size(value) != 1:
            raise NkiSimError(
                f"{instr}: {param} must be a scalar or a ({partitions}, 1) vector, got shape {tuple(value.shape)}"
            )
        return _bits(value)
    raise NkiSimError(f"{instr}: {param} of a bitvec operator must be an integer scalar or integer tile, got {value!r}")


def _from_bits(values: np.ndarray, dst) -> np.ndarray:
    """Truncate uint64 bit patterns to dst's integer width and reinterpret them as dst's dtype."""
    width = _INT_WIDTH[_dtype_name(dst)]
    mask = np.uint64((1 << width) - 1)
    return (np.asarray(values, dtype=np.uint64) & mask).astype(_UNSIGNED[width]).view(_INT_NUMPY[_dtype_name(dst)])


# ---------------------------------------------------------------------------------------------------
# Copies and fills
# ---------------------------------------------------------------------------------------------------


def tensor_copy(dst, src, engine=engine.unknown, name=None):
    """dst = src; same partitions and elements per partition. Bit-exact when dtypes match, else via fp32.

    src, dst: SBUF/PSUM [P <= 128, ...]; engine: vector (default) / scalar / gpsimd (no PSUM)."""
    instr = "tensor_copy"
    _check_tensor(instr, "src", src)
    _check_tensor(instr, "dst", dst)
    _check_same_layout(instr, "src", src, "dst", dst)
    eng = _engine(instr, engine, ("vector", "scalar", "gpsimd"), "vector")
    _check_gpsimd_access(instr, eng, {"src": src, "dst": dst})
    values = _read_raw(src) if _dtype_name(src) == _dtype_name(dst) else _read_f32(src)
    _write(dst, values)
    return _record(instr, eng, dst, {"src": src}, name)


def memset(dst, value, engine=engine.unknown, name=None):
    """Fill dst with a compile-time constant. Integer dst needs an integer value; x4 packed dtypes only 0.

    dst: SBUF/PSUM [P <= 128, ...]; engine: vector (default) / gpsimd (no PSUM)."""
    instr = "memset"
    _check_tensor(instr, "dst", dst)
    eng = _engine(instr, engine, ("vector", "gpsimd"), "vector")
    _check_gpsimd_access(instr, eng, {"dst": dst})
    if not (_is_scalar(value) or isinstance(value, bool)):
        raise NkiSimError(f"{instr}: value must be a compile-time constant number, got {type(value).__name__}")
    dname = _dtype_name(dst)
    if dname.endswith("_x4"):
        if value != 0:
            raise NkiSimError(f"{instr}: x4 packed dtype {dname} only supports value=0, got {value}")
        _write(dst, np.zeros(tuple(dst.shape), dtype=np.uint32))  # raw zero bits
        return _record(instr, eng, dst, {}, name)
    if dname in _INT_WIDTH and isinstance(value, (float, np.floating)):
        raise NkiSimError(f"{instr}: value {value!r} is a float but dst dtype is {dname}; pass an int")
    fill = np.full(tuple(dst.shape), value, dtype=np.int64 if dname in _INT_WIDTH else F32)
    _write(dst, fill)
    return _record(instr, eng, dst, {}, name)


def tensor_copy_predicated(dst, src, predicate, reverse_pred=False, name=None):
    """dst[i] = src[i] where predicate[i] != 0 (inverted by reverse_pred), else dst[i] unchanged.

    src: tile (same dtype as dst) or scalar; predicate: uint8/uint16/uint32 tile; all same layout;
    src and predicate not both in PSUM. Vector engine."""
    instr = "tensor_copy_predicated"
    _check_tensor(instr, "dst", dst)
    _check_tensor(instr, "predicate", predicate)
    _check_same_layout(instr, "predicate", predicate, "dst", dst)
    _check_dtype(instr, "predicate", predicate, ("uint8", "uint16", "uint32"))
    mask = _read_raw(predicate).reshape(dst.shape[0], -1) != 0
    if reverse_pred:
        mask = ~mask
    current = _read_raw(dst).reshape(dst.shape[0], -1)
    if _is_tensor(src):
        _check_tensor(instr, "src", src)
        _check_same_layout(instr, "src", src, "dst", dst)
        _check_not_both_psum(instr, "src", src, "predicate", predicate)
        if _dtype_name(src) != _dtype_name(dst):
            raise NkiSimError(
                f"{instr}: src and dst must have the same dtype, got {_dtype_name(src)} and {_dtype_name(dst)}"
            )
        incoming = _read_raw(src).reshape(dst.shape[0], -1)
    elif _is_scalar(src):
        incoming = np.asarray(src, dtype=F32) if _dtype_name(dst) not in _INT_WIDTH else np.asarray(src)
    else:
        raise NkiSimError(f"{instr}: src must be a tile or a scalar, got {type(src).__name__}")
    _write(dst, np.where(mask, incoming, current))
    return _record(instr, "vector", dst, {"src": src, "predicate": predicate}, name)


# ---------------------------------------------------------------------------------------------------
# Element-wise arithmetic
# ---------------------------------------------------------------------------------------------------


def _apply_alu(spec: ops.AluOp, lhs, rhs):
    with np.errstate(all="ignore"):
        if spec.arity == 1:
            return spec.fn(lhs)
        return spec.fn(lhs, rhs)


def _check_alu_target(instr: str, param: str, spec: ops.AluOp) -> None:
    if spec.trn3_only:
        _check_target(instr, f"{param}=nl.{spec.name}")


_INT32_TYPES = ("int32", "uint32")


def tensor_tensor(dst, data1, data2, op, engine=engine.unknown, name=None):
    """dst = op(data1, data2) element-wise; all three same layout (no broadcasting).

    Float math in fp32; bitvec ops on integer bit patterns; all-int32/uint32 tiles default to GpSimd with
    exact integer arithmetic (engine=vector forces the fp32 path); nl.power runs on GpSimd.
    data1/data2/dst: SBUF/PSUM [P <= 128, ...]; data1 and data2 not both in PSUM."""
    instr = "tensor_tensor"
    for param, t in (("data1", data1), ("data2", data2), ("dst", dst)):
        _check_tensor(instr, param, t)
    _check_same_layout(instr, "data1", data1, "data2", data2)
    _check_same_layout(instr, "data1", data1, "dst", dst)
    _check_not_both_psum(instr, "data1", data1, "data2", data2)
    spec = _alu_op(op, instr, "op")
    _check_alu_target(instr, "op", spec)
    if spec.arity != 2:
        raise NkiSimError(f"{instr}: op=nl.{spec.name} is unary; tensor_tensor needs a binary operator")
    operands = {"data1": data1, "data2": data2, "dst": dst}
    any_psum = any(_buffer_name(t) == "psum" for t in operands.values())
    all_int32 = all(_dtype_name(t) in _INT32_TYPES for t in operands.values())
    if spec.name == "power":
        eng = _engine(instr, engine, ("gpsimd",), "gpsimd")
    elif spec.kind == "bitvec":
        eng = _engine(instr, engine, ("vector", "gpsimd"), "vector")
    else:
        eng = _engine(instr, engine, ("vector", "gpsimd"), "gpsimd" if all_int32 and not any_psum else "vector")
    _check_gpsimd_access(instr, eng, operands)
    P = dst.shape[0]
    if spec.kind == "bitvec":
        for param, t in operands.items():
            _check_integer(instr, param, t)
        result = _from_bits(_apply_alu(spec, _bits(data1), _bits(data2)), dst)
    elif eng == "gpsimd" and all_int32:
        a = _read_raw(data1).astype(np.int64).reshape(P, -1)
        b = _read_raw(data2).astype(np.int64).reshape(P, -1)
        result = _integer_alu(spec, a, b)
    else:
        a = _read_f32(data1).reshape(P, -1)
        b = _read_f32(data2).reshape(P, -1)
        result = _apply_alu(spec, a, b)
    _write(dst, result)
    return _record(instr, eng, dst, {"data1": data1, "data2": data2}, name)


_INTEGER_FUNCS = {
    "add": np.add,
    "subtract": np.subtract,
    "multiply": np.multiply,
    "maximum": np.maximum,
    "minimum": np.minimum,
    "equal": np.equal,
    "not_equal": np.not_equal,
    "greater": np.greater,
    "greater_equal": np.greater_equal,
    "less": np.less,
    "less_equal": np.less_equal,
    "logical_and": lambda a, b: (a != 0) & (b != 0),
    "logical_or": lambda a, b: (a != 0) | (b != 0),
    "logical_xor": lambda a, b: (a != 0) ^ (b != 0),
    "abs_max": lambda a, b: np.maximum(np.abs(a), np.abs(b)),
    "abs_min": lambda a, b: np.minimum(np.abs(a), np.abs(b)),
}


def _integer_alu(spec: ops.AluOp, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """GpSimd native int32 arithmetic (exact; the int64 result saturates to the dst range on write)."""
    fn = _INTEGER_FUNCS.get(spec.name)
    if fn is None:  # power: no exact integer definition documented; fall back to fp32 math
        return _apply_alu(spec, a.astype(F32), b.astype(F32))
    return np.asarray(fn(a, b)).astype(np.int64)


def _tensor_scalar_stage(spec: ops.AluOp, data, operand, reverse: bool):
    if spec.arity == 1:
        return _apply_alu(spec, data, None)
    return _apply_alu(spec, operand, data) if reverse else _apply_alu(spec, data, operand)


def _check_unary_operand(instr: str, param: str, spec: ops.AluOp, operand) -> None:
    if spec.arity == 1 and not (operand is None or (_is_scalar(operand) and operand == 0)):
        raise NkiSimError(f"{instr}: {param} must be None or 0 for the unary operator nl.{spec.name}, got {operand!r}")


def tensor_scalar(
    dst,
    data,
    op0,
    operand0,
    reverse0=False,
    op1=None,
    operand1=None,
    reverse1=False,
    engine=engine.unknown,
    name=None,
):
    """dst = (data op0 operand0) op1 operand1; operands are scalars or [P, 1] fp32 vectors broadcast along
    the free dims; reverse0/1 swap the operand order. op0 and op1 are both bitvec (Vector engine, integer
    tiles, bit patterns) or both arithmetic (fp32 math).

    data, dst: SBUF/PSUM, same layout; engine: vector (default) / scalar (trn2: only (multiply, add),
    (multiply, None), (add, None)) / gpsimd (only nl.rsqrt)."""
    instr = "tensor_scalar"
    _check_tensor(instr, "data", data)
    _check_tensor(instr, "dst", dst)
    _check_same_layout(instr, "data", data, "dst", dst)
    spec0 = _alu_op(op0, instr, "op0")
    _check_alu_target(instr, "op0", spec0)
    _check_unary_operand(instr, "operand0", spec0, operand0)
    spec1 = None
    if op1 is None:
        if operand1 is not None:
            raise NkiSimError(f"{instr}: operand1 must be None when op1 is None, got {operand1!r}")
        if reverse1:
            raise NkiSimError(f"{instr}: reverse1=True needs op1")
    else:
        spec1 = _alu_op(op1, instr, "op1")
        _check_alu_target(instr, "op1", spec1)
        _check_unary_operand(instr, "operand1", spec1, operand1)
        if spec1.kind != spec0.kind:
            raise NkiSimError(
                f"{instr}: op0=nl.{spec0.name} ({spec0.kind}) and op1=nl.{spec1.name} ({spec1.kind}) "
                "must both be bitvec or both arithmetic"
            )
    P = data.shape[0]
    default_engine = "vector"
    eng = _engine(instr, engine, ("vector", "scalar", "gpsimd"), default_engine)
    if spec0.kind == "bitvec" and eng != "vector":
        raise NkiSimError(f"{instr}: bitvec operators run on the Vector engine, not {eng}")
    if eng == "gpsimd" and not (spec0.name == "rsqrt" and spec1 is None):
        raise NkiSimError(
            f"{instr}: engine=gpsimd is only allowed for op0=nl.rsqrt (got op0=nl.{spec0.name}"
            f"{', op1=nl.' + spec1.name if spec1 else ''})"
        )
    if eng == "scalar" and _target() == "trn2":
        combo = (spec0.name, spec1.name if spec1 else None)
        if combo not in (("multiply", "add"), ("multiply", None), ("add", None)):
            raise NkiSimError(
                f"{instr}: the Scalar engine on trn2 supports only (multiply, add), (multiply, None), "
                f"(add, None), got {combo}"
            )
    _check_gpsimd_access(instr, eng, {"data": data, "dst": dst, "operand0": operand0, "operand1": operand1})
    if spec0.kind == "bitvec":
        _check_integer(instr, "data", data)
        _check_integer(instr, "dst", dst)
        x = _bits(data)
        x = _tensor_scalar_stage(
            spec0, x, None if spec0.arity == 1 else _bits_operand(instr, "operand0", operand0, P), reverse0
        )
        if spec1 is not None:
            o1 = None if spec1.arity == 1 else _bits_operand(instr, "operand1", operand1, P)
            x = _tensor_scalar_stage(spec1, x, o1, reverse1)
        result = _from_bits(x, dst)
    else:
        x = _read_f32(data).reshape(P, -1)
        o0 = None if spec0.arity == 1 else _scalar_or_vector(instr, "operand0", operand0, P)
        x = _tensor_scalar_stage(spec0, x, o0, reverse0)
        if spec1 is not None:
            o1 = None if spec1.arity == 1 else _scalar_or_vector(instr, "operand1", operand1, P)
            x = _tensor_scalar_stage(spec1, x, o1, reverse1)
        result = x
    _write(dst, result)
    return _record(instr, eng, dst, {"data": data, "operand0": operand0, "operand1": operand1}, name)


def scalar_tensor_tensor(dst, data, op0, operand0, op1, operand1, reverse0=False, reverse1=False, name=None):
    """dst = (data op0 operand0) op1 operand1: operand0 a scalar or [P, 1] vector, operand1 a tile of
    data's layout; arithmetic operators only, fp32 math. data and operand1 not both in PSUM. Vector."""
    instr = "scalar_tensor_tensor"
    for param, t in (("data", data), ("operand1", operand1), ("dst", dst)):
        _check_tensor(instr, param, t)
    _check_same_layout(instr, "data", data, "operand1", operand1)
    _check_same_layout(instr, "data", data, "dst", dst)
    _check_not_both_psum(instr, "data", data, "operand1", operand1)
    spec0 = _alu_op(op0, instr, "op0")
    spec1 = _alu_op(op1, instr, "op1")
    for param, spec in (("op0", spec0), ("op1", spec1)):
        _check_alu_target(instr, param, spec)
        if spec.kind != "arithmetic":
            raise NkiSimError(
                f"{instr}: {param}=nl.{spec.name} is a bitvec operator; only arithmetic operators are supported"
            )
    if spec1.arity != 2:
        raise NkiSimError(f"{instr}: op1=nl.{spec1.name} is unary; op1 combines two tiles")
    _check_unary_operand(instr, "operand0", spec0, operand0)
    P = data.shape[0]
    x = _read_f32(data).reshape(P, -1)
    o0 = None if spec0.arity == 1 else _scalar_or_vector(instr, "operand0", operand0, P, fp32_only=False)
    tmp = _tensor_scalar_stage(spec0, x, o0, reverse0)
    other = _read_f32(operand1).reshape(P, -1)
    result = _apply_alu(spec1, other, tmp) if reverse1 else _apply_alu(spec1, tmp, other)
    _write(dst, result)
    return _record(instr, "vector", dst, {"data": data, "operand0": operand0, "operand1": operand1}, name)


def reciprocal(dst, data, name=None):
    """dst = 1 / data in fp32 on the Vector engine (more precise than the ScalarE activation, no input
    range limit). data, dst: SBUF/PSUM, same layout."""
    instr = "reciprocal"
    _check_tensor(instr, "data", data)
    _check_tensor(instr, "dst", dst)
    _check_same_layout(instr, "data", data, "dst", dst)
    with np.errstate(all="ignore"):
        result = F32(1.0) / _read_f32(data)
    _write(dst, result)
    return _record(instr, "vector", dst, {"data": data}, name)


# ---------------------------------------------------------------------------------------------------
# Reductions
# ---------------------------------------------------------------------------------------------------


def _reduce_axes(instr: str, axis, ndim: int) -> tuple[int, ...]:
    """Normalise ``axis``: the last contiguous free axes ending at the final dim (never axis 0)."""
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    if not axes:
        raise NkiSimError(f"{instr}: axis must name at least one free axis")
    norm = []
    for a in axes:
        if not isinstance(a, (int, np.integer)) or not -ndim <= a < ndim:
            raise NkiSimError(f"{instr}: axis {a!r} is out of range for a {ndim}-D tile")
        norm.append(int(a) % ndim)
    norm_sorted = tuple(sorted(set(norm)))
    if 0 in norm_sorted:
        raise NkiSimError(f"{instr}: axis 0 (the partition axis) cannot be reduced, got axis={axis!r}")
    expected = tuple(range(norm_sorted[0], ndim))
    if norm_sorted != expected or len(norm) != len(norm_sorted):
        raise NkiSimError(
            f"{instr}: axis must be the last contiguous free axes ending at the final dim "
            f"(e.g. {expected}), got axis={axis!r} for a {ndim}-D tile"
        )
    return norm_sorted


def tensor_reduce(dst, op, data, axis, negate=False, keepdims=False, name=None):
    """dst = op-reduction of data over ``axis`` (the last contiguous free axes), times -1 if ``negate``.

    data: SBUF/PSUM [P <= 128, ...]; dst: same P, elements per partition = the kept free dims.
    Arithmetic ops in fp32; bitvec ops (bitwise_and/or/xor) on integer bit patterns. Vector engine."""
    instr = "tensor_reduce"
    _check_tensor(instr, "data", data)
    _check_tensor(instr, "dst", dst)
    spec = _reduce_op(op, instr, "op")
    shape = tuple(data.shape)
    axes = _reduce_axes(instr, axis, len(shape))
    kept = int(math.prod(shape[1 : axes[0]]))
    if dst.shape[0] != shape[0] or _free_size(dst) != kept:
        reduced_shape = shape[: axes[0]] + ((1,) * len(axes) if keepdims else ())
        raise NkiSimError(
            f"{instr}: dst must hold the reduced shape {reduced_shape} ({kept} elements per "
            f"partition), got dst{tuple(dst.shape)}"
        )
    if spec.kind == "bitvec":
        if negate:
            raise NkiSimError(f"{instr}: negate=True only applies to arithmetic operators, op=nl.{spec.name}")
        _check_integer(instr, "data", data)
        _check_integer(instr, "dst", dst)
        bits = _bits(data).reshape(shape)
        result = _from_bits(spec.reduce(bits, axes), dst)
    else:
        values = _read_f32(data).reshape(shape)
        with np.errstate(all="ignore"):
            result = spec.reduce(values, axes)
        if negate:
            result = -result
    _write(dst, result)
    return _record(instr, "vector", dst, {"data": data}, name)


def tensor_scalar_reduce(
    dst,
    data,
    op0,
    operand0,
    reduce_op,
    reduce_res=None,
    reverse0=False,
    reduce_cmd=reduce_cmd.reset_reduce,
    reduce_init=None,
    reduce_res_negate=False,
    name=None,
):
    """dst = data op0 operand0 (arithmetic, fp32) and a free-dim reduction (add, multiply, max, min) of it
    into the Vector engine accumulators (reset_reduce / reduce / load_reduce from reduce_init);
    reduce_res [P, 1] (optional) receives the accumulators, negated if reduce_res_negate."""
    instr = "tensor_scalar_reduce"
    _check_tensor(instr, "data", data)
    _check_tensor(instr, "dst", dst)
    _check_same_layout(instr, "data", data, "dst", dst)
    spec0 = _alu_op(op0, instr, "op0")
    if spec0.kind != "arithmetic":
        raise NkiSimError(f"{instr}: op0=nl.{spec0.name} is bitvec; only arithmetic operators are supported")
    rspec = _reduce_op(reduce_op, instr, "reduce_op")
    if rspec.name not in ("add", "multiply", "maximum", "minimum"):
        raise NkiSimError(f"{instr}: reduce_op must be add, multiply, max or min, got nl.{rspec.name}")
    if reverse0:
        raise NkiSimError(f"{instr}: reverse0=True is documented as not supported yet")
    cmd = _check_reduce_cmd(instr, reduce_cmd)
    if cmd not in (type(cmd).reset_reduce, type(cmd).reduce, type(cmd).load_reduce):
        raise NkiSimError(f"{instr}: reduce_cmd must be reset_reduce, reduce or load_reduce, got {cmd.name}")
    if (reduce_init is not None) != (cmd is type(cmd).load_reduce):
        raise NkiSimError(f"{instr}: reduce_init must be given exactly when reduce_cmd is load_reduce")
    P = data.shape[0]
    _check_unary_operand(instr, "operand0", spec0, operand0)
    x = _read_f32(data).reshape(P, -1)
    o0 = None if spec0.arity == 1 else _scalar_or_vector(instr, "operand0", operand0, P)
    result = _tensor_scalar_stage(spec0, x, o0, False)
    _write(dst, result)
    regs = _accumulators().vector
    if cmd is type(cmd).reset_reduce:
        regs[:P] = rspec.identity
    elif cmd is type(cmd).load_reduce:
        regs[:P] = np.broadcast_to(_scalar_or_vector(instr, "reduce_init", reduce_init, P), (P, 1))[:, 0]
    with np.errstate(all="ignore"):
        partial = rspec.reduce(np.asarray(result, dtype=F32), (1,))
        regs[:P] = _apply_alu(rspec, regs[:P], partial)
    if reduce_res is not None:
        _write_reduce_res(instr, reduce_res, -regs[:P] if reduce_res_negate else regs[:P], P)
    return _record(instr, "vector", dst, {"data": data, "operand0": operand0, "reduce_res": reduce_res}, name)


def _write_reduce_res(instr: str, reduce_res, values: np.ndarray, partitions: int) -> None:
    _check_tensor(instr, "reduce_res", reduce_res)
    if reduce_res.shape[0] != partitions or _free_size(reduce_res) != 1:
        raise NkiSimError(f"{instr}: reduce_res must have shape ({partitions}, 1), got {tuple(reduce_res.shape)}")
    _write(reduce_res, np.asarray(values, dtype=F32).reshape(partitions, 1))


# ---------------------------------------------------------------------------------------------------
# Scalar engine activation
# ---------------------------------------------------------------------------------------------------


def _activation_input(instr: str, data, bias, scale) -> np.ndarray:
    """data * scale + bias in fp32, shape (P, F)."""
    P = data.shape[0]
    x = _read_f32(data).reshape(P, -1)
    s = _scalar_or_vector(instr, "scale", scale, P)
    if bias is None:
        b = F32(0.0)
    elif _is_tensor(bias):
        if _dtype_name(bias) == "tfloat32":
            raise NkiSimError(f"{instr}: bias cannot be tfloat32")
        b = _scalar_or_vector(instr, "bias", bias, P, fp32_only=False)
    else:
        b = _scalar_or_vector(instr, "bias", bias, P)
    with np.errstate(over="ignore", invalid="ignore"):  # inf / NaN data propagate as on the engine
        return (x * s + b).astype(F32)


def _scalar_engine_reduce(instr: str, values: np.ndarray, reduce_op, reduce_res, cmd, partitions: int) -> None:
    """The Scalar engine accumulators: reset/reduce per reduce_cmd (sum only), then read out."""
    regs = _accumulators().scalar
    reducing = cmd in (type(cmd).reduce, type(cmd).reset_reduce)
    if cmd is type(cmd).load_reduce:
        raise NkiSimError(f"{instr}: reduce_cmd=load_reduce is not supported by the Scalar engine")
    if reducing or reduce_op is not None:
        spec = _reduce_op(reduce_op, instr, "reduce_op") if reduce_op is not None else None
        if spec is None or spec.name != "add":
            raise NkiSimError(
                f"{instr}: reduce_op must be nl.add (the Scalar engine registers only sum), got {_op_name(reduce_op)}"
            )
    if cmd in (type(cmd).reset, type(cmd).reset_reduce):
        regs[:partitions] = 0.0
    if reducing:
        regs[:partitions] += np.sum(values, axis=1, dtype=F32)
    if reduce_res is not None:
        _write_reduce_res(instr, reduce_res, regs[:partitions], partitions)


def activation(
    dst,
    op,
    data,
    bias=None,
    scale=1.0,
    reduce_op=None,
    reduce_res=None,
    reduce_cmd=reduce_cmd.idle,
    name=None,
):
    """dst = op(data * scale + bias) on the Scalar engine, fp32 math, cast to dst.dtype.

    data, dst: SBUF/PSUM, same layout; scale: float or [P, 1] fp32 vector; bias: None, float or [P, 1]
    vector (not tfloat32). Optional free-dim sum of the activated values into the Scalar engine
    registers (reduce_op=nl.add; reduce_cmd reset / reduce / reset_reduce; idle leaves them) and
    read-out into reduce_res [P, 1]."""
    instr = "activation"
    _check_tensor(instr, "data", data)
    _check_tensor(instr, "dst", dst)
    _check_same_layout(instr, "data", data, "dst", dst)
    act = _activation_fn(op, instr)
    if act.trn3_only:
        _check_target(instr, f"op=nl.{act.name}")
    cmd = _check_reduce_cmd(instr, reduce_cmd)
    x = _activation_input(instr, data, bias, scale)
    out = act.apply(x)
    _write(dst, out)
    _scalar_engine_reduce(instr, out, reduce_op, reduce_res, cmd, data.shape[0])
    return _record(instr, "scalar", dst, {"data": data, "bias": bias, "scale": scale, "reduce_res": reduce_res}, name)


def activation_reduce(dst, op, data, reduce_op, reduce_res, bias=None, scale=1.0, name=None):
    """activation(...) plus the free-dim sum of the result into reduce_res [P, 1] (registers reset first);
    the legacy form of activation(reduce_cmd=reset_reduce, reduce_res=...)."""
    if reduce_res is None:
        raise NkiSimError("activation_reduce: reduce_res is required")
    return activation(
        dst,
        op,
        data,
        bias=bias,
        scale=scale,
        reduce_op=reduce_op,
        reduce_res=reduce_res,
        reduce_cmd=reduce_cmd.reset_reduce,
        name=name,
    )


def exponential(dst, src, max_value=0.0, reduce_res=None, reduce_cmd=reduce_cmd.idle, reduce_init=0.0, name=None):
    """dst = exp(src - max_value) on the Vector engine (trn3+), with an optional running sum in the Vector
    engine accumulators (reset_reduce / reduce / load_reduce from reduce_init) read out into reduce_res."""
    instr = "exponential"
    _check_target(instr, "nisa.exponential")
    _check_tensor(instr, "src", src)
    _check_tensor(instr, "dst", dst)
    _check_same_layout(instr, "src", src, "dst", dst)
    _check_rank(instr, "src", src, 4)
    cmd = _check_reduce_cmd(instr, reduce_cmd)
    if cmd is type(cmd).reset:
        raise NkiSimError(f"{instr}: reduce_cmd=reset is not supported (idle, reset_reduce, reduce, load_reduce)")
    if cmd is not type(cmd).load_reduce and reduce_init not in (None, 0.0):
        raise NkiSimError(f"{instr}: reduce_init must be unset or 0.0 unless reduce_cmd is load_reduce")
    P = src.shape[0]
    m = _scalar_or_vector(instr, "max_value", max_value, P)
    with np.errstate(all="ignore"):
        out = np.exp(_read_f32(src).reshape(P, -1) - m).astype(F32)
    _write(dst, out)
    regs = _accumulators().vector
    if cmd is type(cmd).idle:
        regs[:P] = np.nan  # "accumulator state unknown" after an idle Vector engine instruction
        if reduce_res is not None:
            raise NkiSimError(
                f"{instr}: reduce_res with reduce_cmd=idle reads an undefined accumulator; use reset_reduce"
            )
    else:
        if cmd is type(cmd).reset_reduce:
            regs[:P] = 0.0
        elif cmd is type(cmd).load_reduce:
            regs[:P] = np.broadcast_to(_scalar_or_vector(instr, "reduce_init", reduce_init, P), (P, 1))[:, 0]
        regs[:P] += np.sum(out, axis=1, dtype=F32)
        if reduce_res is not None:
            _write_reduce_res(instr, reduce_res, regs[:P], P)
    return _record(instr, "vector", dst, {"src": src, "max_value": max_value, "reduce_res": reduce_res}, name)


# ---------------------------------------------------------------------------------------------------
# Patterns, selects, shuffles, gathers (GpSimd / Vector)
# ---------------------------------------------------------------------------------------------------


def _affine_values(instr: str, pattern, offset, channel_multiplier, partitions: int, free: int) -> np.ndarray:
    """offset + p * channel_multiplier + sum_k i_k * step_k over a <= 4-D [[step, num], ...] pattern, int32
    arithmetic (wrapping), shape (P, free)."""
    if not isinstance(pattern, (list, tuple)) or not 1 <= len(pattern) <= 4:
        raise NkiSimError(f"{instr}: pattern must be a list of 1 to 4 [step, num] pairs, got {pattern!r}")
    steps, nums = [], []
    for pair in pattern:
        if (
            not isinstance(pair, (list, tuple))
            or len(pair) != 2
            or not all(isinstance(v, (int, np.integer)) for v in pair)
        ):
            raise NkiSimError(f"{instr}: each pattern entry must be [step, num] of ints, got {pair!r}")
        steps.append(int(pair[0]))
        nums.append(int(pair[1]))
    if math.prod(nums) != free:
        raise NkiSimError(
            f"{instr}: pattern {pattern!r} generates {math.prod(nums)} elements per partition but dst holds {free}"
        )
    grids = np.indices(nums, dtype=np.int64).reshape(len(nums), -1)
    free_part = (np.asarray(steps, dtype=np.int64)[:, None] * grids).sum(axis=0)
    p = np.arange(partitions, dtype=np.int64)[:, None]
    values = int(offset) + p * int(channel_multiplier) + free_part[None, :]
    return ((values + 2**31) % 2**32 - 2**31).astype(np.int64)


def iota(dst, pattern, offset=0, channel_multiplier=0, name=None):
    """dst[p, ...] = offset + p * channel_multiplier + sum(i_k * step_k) (int32 math, cast to dst.dtype).

    pattern: [[step_w, num_w], ..., [step_x, num_x]] (<= 4 pairs, product of nums = dst elements per
    partition); dst in SBUF. GpSimd engine."""
    instr = "iota"
    _check_tensor(instr, "dst", dst, ("sbuf",))
    for operand, value in (("offset", offset), ("channel_multiplier", channel_multiplier)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise NkiSimError(f"{instr}: {operand} must be an int32 value, got {value!r}")
    values = _affine_values(instr, pattern, offset, channel_multiplier, dst.shape[0], _free_size(dst))
    _write(dst, values)
    return _record(instr, "gpsimd", dst, {}, name)


_COMPARISONS = ("equal", "not_equal", "greater", "greater_equal", "less", "less_equal")


def affine_select(dst, pattern, channel_multiplier, on_true_tile, on_false_value, cmp_op=equal, offset=0, name=None):
    """dst = on_true_tile where cmp_op(affine value, 0) else on_false_value (fp32 scalar); the affine value
    is iota's. dst and on_true_tile in SBUF, same layout; dtype change via fp32. GpSimd engine."""
    instr = "affine_select"
    _check_tensor(instr, "dst", dst, ("sbuf",))
    _check_tensor(instr, "on_true_tile", on_true_tile, ("sbuf",))
    _check_same_layout(instr, "on_true_tile", on_true_tile, "dst", dst)
    spec = _alu_op(cmp_op, instr, "cmp_op")
    if spec.name not in _COMPARISONS:
        raise NkiSimError(f"{instr}: cmp_op must be a comparison ({', '.join(_COMPARISONS)}), got nl.{spec.name}")
    if not _is_scalar(on_false_value):
        raise NkiSimError(f"{instr}: on_false_value must be a float32 scalar, got {on_false_value!r}")
    P = dst.shape[0]
    values = _affine_values(instr, pattern, offset, channel_multiplier, P, _free_size(dst))
    predicate = spec.fn(values.astype(np.float64), np.float64(0.0)) != 0
    same = _dtype_name(on_true_tile) == _dtype_name(dst)
    incoming = (_read_raw(on_true_tile) if same else _read_f32(on_true_tile)).reshape(P, -1)
    _write(dst, np.where(predicate, incoming, F32(on_false_value)))
    return _record(instr, "gpsimd", dst, {"on_true_tile": on_true_tile}, name)


def select_reduce(
    dst,
    predicate,
    on_true,
    on_false,
    reduce_res=None,
    reduce_cmd=reduce_cmd.idle,
    reduce_op=maximum,
    reverse_pred=False,
    name=None,
):
    """dst = where(predicate != 0, on_true, on_false) (reverse_pred inverts); optional per-partition max of
    the result into the Vector engine accumulators (reset_reduce: from -inf; reduce: on top) and reduce_res.

    predicate: int8/uint8/int16/uint16 tile; on_true: tile (not tfloat32/int32/uint32); on_false: fp32
    scalar or [P, 1]; all tiles same layout; on_true and predicate not both in PSUM. Vector engine."""
    instr = "select_reduce"
    for param, t in (("dst", dst), ("predicate", predicate), ("on_true", on_true)):
        _check_tensor(instr, param, t)
    _check_same_layout(instr, "on_true", on_true, "dst", dst)
    _check_same_layout(instr, "predicate", predicate, "dst", dst)
    _check_not_both_psum(instr, "on_true", on_true, "predicate", predicate)
    _check_dtype(instr, "predicate", predicate, ("int8", "uint8", "int16", "uint16"))
    if _dtype_name(on_true) in ("tfloat32", "int32", "uint32"):
        raise NkiSimError(f"{instr}: on_true dtype cannot be tfloat32, int32 or uint32, got {_dtype_name(on_true)}")
    rspec = _reduce_op(reduce_op, instr, "reduce_op")
    if rspec.name != "maximum":
        raise NkiSimError(f"{instr}: reduce_op must be nl.maximum, got nl.{rspec.name}")
    cmd = _check_reduce_cmd(instr, reduce_cmd)
    P = dst.shape[0]
    false_values = _scalar_or_vector(instr, "on_false", on_false, P, fp32_only=False)
    mask = _read_raw(predicate).reshape(P, -1) != 0
    if reverse_pred:
        mask = ~mask
    result = np.where(mask, _read_f32(on_true).reshape(P, -1), false_values).astype(F32)
    _write(dst, result)
    regs = _accumulators().vector
    if cmd is type(cmd).idle:
        regs[:P] = np.nan
        if reduce_res is not None:
            raise NkiSimError(
                f"{instr}: reduce_res with reduce_cmd=idle reads an undefined accumulator; use reset_reduce"
            )
    elif cmd in (type(cmd).reset_reduce, type(cmd).reduce):
        if cmd is type(cmd).reset_reduce:
            regs[:P] = -np.inf
        regs[:P] = np.maximum(regs[:P], np.max(result, axis=1))
        if reduce_res is not None:
            if _dtype_name(reduce_res) in _INT_WIDTH:
                raise NkiSimError(f"{instr}: reduce_res must be a float tile, got {_dtype_name(reduce_res)}")
            _write_reduce_res(instr, reduce_res, regs[:P], P)
    else:
        raise NkiSimError(f"{instr}: reduce_cmd must be idle, reset_reduce or reduce, got {cmd.name}")
    return _record(
        instr,
        "vector",
        dst,
        {"predicate": predicate, "on_true": on_true, "on_false": on_false, "reduce_res": reduce_res},
        name,
    )


def range_select(
    dst,
    on_true_tile,
    comp_op0,
    comp_op1,
    bound0,
    bound1,
    reduce_cmd=reduce_cmd.reset_reduce,
    reduce_res=None,
    reduce_op=maximum,
    range_start=0,
    on_false_value=...,
    name=None,
):
    """dst = on_true_tile where comp_op0(j, bound0) and comp_op1(j, bound1) else FP32_MIN, j = range_start
    + free index (fp32); max of each partition into the Vector accumulators and reduce_res (trn2+).

    bound0/bound1: [P, 1] fp32; on_true_tile: float dtype; on_false_value must be FP32_MIN (-3.4028235e38)."""
    instr = "range_select"
    _check_target(instr, "nisa.range_select", "trn2")
    _check_tensor(instr, "dst", dst)
    _check_tensor(instr, "on_true_tile", on_true_tile)
    _check_same_layout(instr, "on_true_tile", on_true_tile, "dst", dst)
    if _dtype_name(on_true_tile) in _INT_WIDTH:
        raise NkiSimError(f"{instr}: on_true_tile must be a float dtype, got {_dtype_name(on_true_tile)}")
    specs = []
    for param, op in (("comp_op0", comp_op0), ("comp_op1", comp_op1)):
        spec = _alu_op(op, instr, param)
        if spec.name not in ("equal", "less", "less_equal", "greater", "greater_equal"):
            raise NkiSimError(
                f"{instr}: {param} must be equal, less, less_equal, greater or greater_equal, got nl.{spec.name}"
            )
        specs.append(spec)
    fill = FP32_MIN if on_false_value is ... else on_false_value
    if not _is_scalar(fill) or F32(fill) != F32(FP32_MIN):
        raise NkiSimError(f"{instr}: on_false_value must be FP32_MIN ({FP32_MIN}), got {on_false_value!r}")
    rspec = _reduce_op(reduce_op, instr, "reduce_op")
    if rspec.name != "maximum":
        raise NkiSimError(f"{instr}: reduce_op must be nl.maximum, got nl.{rspec.name}")
    cmd = _check_reduce_cmd(instr, reduce_cmd)
    P = dst.shape[0]
    b0 = _scalar_or_vector(instr, "bound0", bound0, P)
    b1 = _scalar_or_vector(instr, "bound1", bound1, P)
    if _is_scalar(bound0) or _is_scalar(bound1):
        raise NkiSimError(f"{instr}: bound0 and bound1 must be ({P}, 1) float32 tiles")
    j = (int(range_start) + np.arange(_free_size(dst), dtype=np.float64)).astype(F32)[None, :]
    keep = (specs[0].fn(j, b0) != 0) & (specs[1].fn(j, b1) != 0)
    result = np.where(keep, _read_f32(on_true_tile).reshape(P, -1), F32(FP32_MIN)).astype(F32)
    _write(dst, result)
    regs = _accumulators().vector
    if cmd is type(cmd).idle:
        regs[:P] = np.nan
    else:
        if cmd in (type(cmd).reset, type(cmd).reset_reduce):
            regs[:P] = -np.inf
        if cmd in (type(cmd).reduce, type(cmd).reset_reduce):
            regs[:P] = np.maximum(regs[:P], np.max(result, axis=1))
    if reduce_res is not None:
        _write_reduce_res(instr, reduce_res, regs[:P], P)
    return _record(
        instr,
        "vector",
        dst,
        {"on_true_tile": on_true_tile, "bound0": bound0, "bound1": bound1, "reduce_res": reduce_res},
        name,
    )


def nc_stream_shuffle(dst, src, shuffle_mask, name=None):
    """Within each 32-partition quadrant: dst[q*32 + i] = src[q*32 + shuffle_mask[i]]; mask value 255 leaves
    dst partition i unchanged. 32-entry mask shared by all quadrants; same dtype and elements per partition;
    in place allowed. Start partitions: 0 for 96/128 active partitions, 0/64 for 64, 0/32/64/96 for 32."""
    instr = "nc_stream_shuffle"
    _check_tensor(instr, "src", src)
    _check_tensor(instr, "dst", dst)
    if _free_size(src) != _free_size(dst):
        raise NkiSimError(
            f"{instr}: src and dst must have the same number of elements per partition, got "
            f"src{tuple(src.shape)} and dst{tuple(dst.shape)}"
        )
    if _dtype_name(src) != _dtype_name(dst):
        raise NkiSimError(
            f"{instr}: src and dst must have the same dtype, got {_dtype_name(src)} and {_dtype_name(dst)}"
        )
    mask = list(shuffle_mask) if isinstance(shuffle_mask, (list, tuple)) else None
    if mask is None or len(mask) != 32:
        raise NkiSimError(f"{instr}: shuffle_mask must be a list of 32 entries, got {shuffle_mask!r}")
    for i, m in enumerate(mask):
        if not isinstance(m, (int, np.integer)) or not (0 <= m < 32 or m == 255):
            raise NkiSimError(f"{instr}: shuffle_mask[{i}] must be 0..31 or 255, got {m!r}")
    active = math.ceil(max(src.shape[0], dst.shape[0]) / 32) * 32
    allowed_starts = {96: (0,), 128: (0,), 64: (0, 64), 32: (0, 32, 64, 96)}[active]
    for param, t in (("src", src), ("dst", dst)):
        start = _partition_start(t)
        if start not in allowed_starts:
            raise NkiSimError(
                f"{instr}: {param} starts at partition {start}; with {active} active partitions the "
                f"start partition must be one of {allowed_starts}"
            )
    mask_arr = np.asarray(mask, dtype=np.int64)
    d = np.arange(dst.shape[0])
    lane = mask_arr[d % 32]
    moved = lane != 255
    source = (d // 32) * 32 + lane
    if np.any(source[moved] >= src.shape[0]):
        bad = int(d[moved][np.argmax(source[moved] >= src.shape[0])])
        raise NkiSimError(
            f"{instr}: dst partition {bad} reads src partition {int(source[bad])}, beyond src's "
            f"{src.shape[0]} partitions"
        )
    src_values = _read_raw(src).reshape(src.shape[0], -1)
    result = _read_raw(dst).reshape(dst.shape[0], -1).copy()
    result[moved] = src_values[source[moved]]
    _write(dst, result)
    return _record(instr, "vector", dst, {"src": src}, name)


def _partition_start(t) -> int:
    """The first partition a view of an on-chip tensor accesses."""
    return t.partition_start()


def local_gather(dst, src_buffer, index, num_elem_per_idx=1, num_valid_indices=None, name=None):
    """GpSimd gather per core of 16 partitions: core c flattens its index[16c:16c+16] partition-first
    (column-major) into idx (first num_valid_indices entries), and every partition p of the core gets
    dst[p] = concat_j src_buffer[p].flat[idx[j] : idx[j] + num_elem_per_idx] (the docs' NumPy semantics).

    src_buffer, index, dst: SBUF; index uint16; partitions equal, multiple of 16; num_elem_per_idx in
    {1, 2, 4, 8, 16, 32}; <= 4096 indices per core; dst dtype = src dtype; out-of-bounds is an error."""
    instr = "local_gather"
    for param, t in (("dst", dst), ("src_buffer", src_buffer), ("index", index)):
        _check_tensor(instr, param, t, ("sbuf",))
    P = src_buffer.shape[0]
    if index.shape[0] != P or P % 16 != 0:
        raise NkiSimError(
            f"{instr}: src_buffer and index must have the same partition count, a multiple of 16; "
            f"got src_buffer{tuple(src_buffer.shape)} and index{tuple(index.shape)}"
        )
    if dst.shape[0] != P:
        raise NkiSimError(f"{instr}: dst must have {P} partitions, got dst{tuple(dst.shape)}")
    _check_dtype(instr, "index", index, ("uint16",))
    if _dtype_name(dst) != _dtype_name(src_buffer):
        raise NkiSimError(
            f"{instr}: dst dtype must equal src_buffer dtype {_dtype_name(src_buffer)}, got {_dtype_name(dst)}"
        )
    if num_elem_per_idx not in (1, 2, 4, 8, 16, 32):
        raise NkiSimError(f"{instr}: num_elem_per_idx must be 1, 2, 4, 8, 16 or 32, got {num_elem_per_idx!r}")
    per_core = 16 * _free_size(index)
    valid = per_core if num_valid_indices is None else int(num_valid_indices)
    if not 0 < valid <= per_core:
        raise NkiSimError(
            f"{instr}: num_valid_indices must be in 1..{per_core} (index elements per core), got {num_valid_indices}"
        )
    if valid > 4096:
        raise NkiSimError(f"{instr}: at most 4096 indices per core, got {valid}")
    if _free_size(dst) != valid * num_elem_per_idx:
        raise NkiSimError(
            f"{instr}: dst must hold num_valid_indices * num_elem_per_idx = {valid * num_elem_per_idx} "
            f"elements per partition, got dst{tuple(dst.shape)}"
        )
    cores = P // 16
    idx = _read_raw(index).astype(np.int64).reshape(cores, 16, -1)
    idx = idx.transpose(0, 2, 1).reshape(cores, -1)[:, :valid]  # partition-first flattening per core
    offsets = (idx[:, :, None] + np.arange(num_elem_per_idx)[None, None, :]).reshape(cores, -1)
    src_free = _free_size(src_buffer)
    if np.any(offsets >= src_free):
        raise NkiSimError(
            f"{instr}: index {int(offsets.max())} reads beyond src_buffer's {src_free} elements per "
            "partition (undefined on hardware)"
        )
    per_partition = np.repeat(offsets, 16, axis=0)  # (P, valid * num_elem_per_idx)
    values = np.take_along_axis(_read_raw(src_buffer).reshape(P, -1), per_partition, axis=1)
    _write(dst, values)
    return _record(instr, "gpsimd", dst, {"src_buffer": src_buffer, "index": index}, name)


def nc_n_gather(dst, data, indices, name=None):
    """dst[p, j] = data[p].flat[indices[p, j]] (GpSimd, per-partition gather over the flattened free dims).

    data, indices, dst: SBUF, same partitions; indices uint32 in [0, elements per partition); dst dtype =
    data dtype; dst elements per partition = indices elements per partition."""
    instr = "nc_n_gather"
    for param, t in (("dst", dst), ("data", data), ("indices", indices)):
        _check_tensor(instr, param, t, ("sbuf",))
    _check_dtype(instr, "indices", indices, ("uint32",))
    _check_same_layout(instr, "indices", indices, "dst", dst)
    if data.shape[0] != dst.shape[0]:
        raise NkiSimError(
            f"{instr}: data and dst must have the same partition count, got data{tuple(data.shape)} "
            f"and dst{tuple(dst.shape)}"
        )
    if _dtype_name(dst) != _dtype_name(data):
        raise NkiSimError(f"{instr}: dst dtype must equal data dtype {_dtype_name(data)}, got {_dtype_name(dst)}")
    P = data.shape[0]
    idx = _read_raw(indices).astype(np.int64).reshape(P, -1)
    if np.any(idx >= _free_size(data)):
        raise NkiSimError(f"{instr}: index {int(idx.max())} is outside [0, {_free_size(data)})")
    _write(dst, np.take_along_axis(_read_raw(data).reshape(P, -1), idx, axis=1))
    return _record(instr, "gpsimd", dst, {"data": data, "indices": indices}, name)


def nonzero_with_count(dst, src, index_offset=0, padding_val=-1, name=None):
    """For partitions 0, 16, ..., 112 only (GpSimd core c reads and writes its first partition 16c):
    dst[p, :N] = positions of the N nonzero elements of src[p] (+ index_offset, ascending),
    dst[p, N:T] = padding_val, dst[p, T] = N. Other partitions of dst are left unchanged (trn2+).

    src: SBUF [P, T] float32/int32; dst: SBUF [P, T + 1] int32; index_offset, padding_val: int32."""
    instr = "nonzero_with_count"
    _check_target(instr, "nisa.nonzero_with_count", "trn2")
    _check_tensor(instr, "src", src, ("sbuf",))
    _check_tensor(instr, "dst", dst, ("sbuf",))
    _check_dtype(instr, "src", src, ("float32", "int32"))
    _check_dtype(instr, "dst", dst, ("int32",))
    if dst.shape[0] != src.shape[0] or _free_size(dst) != _free_size(src) + 1:
        raise NkiSimError(
            f"{instr}: dst must have src's partitions and one more element per partition "
            f"(({src.shape[0]}, {_free_size(src) + 1})), got dst{tuple(dst.shape)} for src{tuple(src.shape)}"
        )
    for param, value in (("index_offset", index_offset), ("padding_val", padding_val)):
        if not isinstance(value, (int, np.integer)) or not -(2**31) <= int(value) < 2**31:
            raise NkiSimError(f"{instr}: {param} must be an int32, got {value!r}")
    P, T = src.shape[0], _free_size(src)
    rows = np.arange(0, P, 16)  # the first partition of each GpSimd core
    values = _read_raw(src).reshape(P, T)[rows]
    nonzero = values != 0
    count = nonzero.sum(axis=1)
    order = np.argsort(~nonzero, axis=1, kind="stable")  # nonzero positions first, in ascending order
    slots = np.arange(T)[None, :]
    listed = np.where(slots < count[:, None], order + int(index_offset), int(padding_val))
    result = _read_raw(dst).reshape(P, T + 1).astype(np.int64)
    result[rows] = np.concatenate([listed, count[:, None]], axis=1)
    _write(dst, result)
    return _record(instr, "gpsimd", dst, {"src": src}, name)


# ---------------------------------------------------------------------------------------------------
# Top-8 routing helpers (Vector engine)
# ---------------------------------------------------------------------------------------------------


def _check_top8_data(instr: str, param: str, t) -> None:
    _check_tensor(instr, param, t)
    _check_rank(instr, param, t, 3)
    n = _free_size(t)
    if not 8 <= n <= 16384:
        raise NkiSimError(
            f"{instr}: {param} must have 8 to 16384 elements per partition, got {n} ({param}{tuple(t.shape)})"
        )


def _check_eight(instr: str, param: str, t, partitions: int) -> None:
    _check_tensor(instr, param, t)
    if t.shape[0] != partitions or _free_size(t) != 8:
        raise NkiSimError(f"{instr}: {param} must have shape ({partitions}, 8), got {tuple(t.shape)}")


def _refuse_nan(instr: str, param: str, values: np.ndarray) -> None:
    """NaN in a top-8 operand: its order / matching is not documented (see the module docstring)."""
    nan = np.isnan(values)
    if nan.any():
        p, i = (int(v) for v in np.argwhere(nan)[0])
        raise NkiSimError(
            f"{instr}: {param} holds NaN (partition {p}, element {i}; {int(nan.sum())} in all): the NKI docs "
            "do not define how this instruction orders or matches NaN (replace NaN first, or it is unwritten memory)"
        )


def max8(dst, src, name=None):
    """dst[p, :] = the 8 largest values of src[p] in descending order (fp32 compare, cast to dst.dtype).

    src: SBUF/PSUM, <= 3-D, 8..16384 elements per partition, no NaN; dst: [P, 8]. Equal values repeat."""
    instr = "max8"
    _check_top8_data(instr, "src", src)
    _check_eight(instr, "dst", dst, src.shape[0])
    _check_rank(instr, "dst", dst, 2)
    P = src.shape[0]
    values = _read_f32(src).reshape(P, -1)
    _refuse_nan(instr, "src", values)
    ascending = np.sort(values, axis=1)
    _write(dst, ascending[:, :-9:-1])
    return _record(instr, "vector", dst, {"src": src}, name)


_INDEX_DTYPES = {"uint32": (np.uint32, 0xFFFFFFFF), "uint16": (np.uint16, 0xFFFF)}


def _occurrence_positions(data: np.ndarray, vals: np.ndarray, rank: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each (p, j): the position of the rank[p, j]-th (0-based) occurrence of vals[p, j] in data[p].

    data (P, N), vals (P, 8), rank (P, 8) -> positions (P, 8) int64 and found (P, 8) bool."""
    matches = data[:, None, :] == vals[:, :, None]  # (P, 8, N) bool
    if rank.any():  # repeated values: the k-th repetition takes the k-th occurrence
        seen = np.cumsum(matches, axis=2, dtype=np.int16)  # N <= 16384 fits int16
        matches &= seen == (rank[:, :, None] + 1)
    return np.argmax(matches, axis=2), matches.any(axis=2)


def _duplicate_rank(vals: np.ndarray, from_left: bool) -> np.ndarray:
    """rank[p, j] = how many times vals[p, j] occurs before slot j (from_left) or after it (else)."""
    same = vals[:, :, None] == vals[:, None, :]  # (P, j, i)
    i = np.arange(vals.shape[1])
    order = (i[None, :] < i[:, None]) if from_left else (i[None, :] > i[:, None])  # (j, i)
    return np.sum(same & order[None, :, :], axis=2)


def nc_find_index8(dst, data, vals, name=None):
    """dst[p, j] = index (from 0, flattened free dims) of vals[p, j] in data[p]: the first occurrence;
    a value repeated in vals takes successive occurrences in ascending order; absent -> all ones.

    data: <= 3-D, 8..16384 elements per partition; vals: 8 per partition; dst: [P, 8] uint32 or uint16."""
    instr = "nc_find_index8"
    _check_top8_data(instr, "data", data)
    P = data.shape[0]
    _check_eight(instr, "vals", vals, P)
    _check_eight(instr, "dst", dst, P)
    _check_rank(instr, "vals", vals, 3)
    _check_dtype(instr, "dst", dst, tuple(_INDEX_DTYPES))
    values = _read_f32(data).reshape(P, -1)
    wanted = _read_f32(vals).reshape(P, 8)
    _refuse_nan(instr, "data", values)
    _refuse_nan(instr, "vals", wanted)
    positions, found = _occurrence_positions(values, wanted, _duplicate_rank(wanted, from_left=True))
    np_dtype, miss = _INDEX_DTYPES[_dtype_name(dst)]
    _write(dst, np.where(found, positions, miss).astype(np_dtype))
    return _record(instr, "vector", dst, {"data": data, "vals": vals}, name)


def nc_match_replace8(dst, data, vals, imm, dst_idx=None, name=None):
    """dst = data with the first occurrence of each of the 8 vals replaced by imm; vals are processed from
    slot 7 down to 0, so repeated vals pair with occurrences in descending slot order. dst_idx [P, 8]
    (uint32/uint16, optional) receives the matched positions (all ones when a value is absent:
    undocumented). data, dst: same layout; data 8..16384 elements per partition. Vector engine."""
    instr = "nc_match_replace8"
    _check_top8_data(instr, "data", data)
    _check_tensor(instr, "dst", dst)
    _check_same_layout(instr, "data", data, "dst", dst)
    P = data.shape[0]
    _check_eight(instr, "vals", vals, P)
    if not _is_scalar(imm):
        raise NkiSimError(f"{instr}: imm must be a float scalar, got {imm!r}")
    values = _read_f32(data).reshape(P, -1)
    wanted = _read_f32(vals).reshape(P, 8)
    _refuse_nan(instr, "data", values)
    _refuse_nan(instr, "vals", wanted)
    positions, found = _occurrence_positions(values, wanted, _duplicate_rank(wanted, from_left=False))
    hit = np.zeros(values.shape, dtype=bool)
    rows = np.broadcast_to(np.arange(P)[:, None], positions.shape)
    hit[rows[found], positions[found]] = True
    same = _dtype_name(data) == _dtype_name(dst)
    original = _read_raw(data).reshape(P, -1) if same else values
    _write(dst, np.where(hit, F32(imm), original))
    if dst_idx is not None:
        _check_eight(instr, "dst_idx", dst_idx, P)
        _check_dtype(instr, "dst_idx", dst_idx, tuple(_INDEX_DTYPES))
        np_dtype, miss = _INDEX_DTYPES[_dtype_name(dst_idx)]
        _write(dst_idx, np.where(found, positions, miss).astype(np_dtype))
    return _record(instr, "vector", dst, {"data": data, "vals": vals, "dst_idx": dst_idx}, name)


# ---------------------------------------------------------------------------------------------------
# Scalar engine activate2 (trn3) and free-axis scans
# ---------------------------------------------------------------------------------------------------

_ACTIVATE2_STAGES = {
    ("multiply", "add"),
    ("multiply", "subtract"),
    ("multiply", "bypass"),
    ("add", "bypass"),
    ("subtract", "bypass"),
    ("bypass", "bypass"),
}
_REDUCE_IDENTITY = {"add": 0.0, "maximum": -np.inf, "minimum": np.inf, "abs_max": 0.0, "abs_min": np.inf}
_ACTIVATE2_REDUCE = {
    "add": lambda v: np.sum(v, axis=1, dtype=F32),
    "maximum": lambda v: np.max(v, axis=1),
    "minimum": lambda v: np.min(v, axis=1),
    "abs_max": lambda v: np.max(np.abs(v), axis=1),
    "abs_min": lambda v: np.min(np.abs(v), axis=1),
}


def activate2(
    dst,
    op,
    data,
    imm0,
    imm1,
    op0,
    op1,
    relu_param=0.0,
    reverse0=False,
    reverse1=False,
    reduce_op=None,
    reduce_res=None,
    reduce_cmd=reduce_cmd.idle,
    name=None,
):
    """dst = op((data op0 imm0) op1 imm1) on the Scalar engine (trn3+), fp32 math; op0/op1 one of the
    documented pairs (multiply/add/subtract or nl.bypass); nl.prelu uses relu_param as the slope.
    Optional reduction (add, maximum, minimum, abs_max, abs_min) into the Scalar engine registers
    (reset_reduce: reset to the op's identity first) and read-out into reduce_res [P, 1]."""
    instr = "activate2"
    _check_target(instr, "nisa.activate2")
    _check_tensor(instr, "data", data)
    _check_tensor(instr, "dst", dst)
    _check_same_layout(instr, "data", data, "dst", dst)
    P = data.shape[0]
    stage_names = []
    for param, stage in (("op0", op0), ("op1", op1)):
        stage_names.append("bypass" if stage is ops.bypass else _alu_op(stage, instr, param).name)
    if tuple(stage_names) not in _ACTIVATE2_STAGES:
        raise NkiSimError(
            f"{instr}: (op0, op1) = {tuple(stage_names)} is not supported (supported: {sorted(_ACTIVATE2_STAGES)})"
        )
    if reverse0 and stage_names[0] == "bypass" or reverse1 and stage_names[1] == "bypass":
        raise NkiSimError(f"{instr}: reverse0/reverse1 need op0/op1 to be set (not nl.bypass)")
    if _is_tensor(imm0) and _is_tensor(imm1) and _dtype_name(imm0) != _dtype_name(imm1):
        raise NkiSimError(f"{instr}: imm0 and imm1 tensors must have the same dtype")
    x = _read_f32(data).reshape(P, -1)
    for stage, imm, param, reverse in ((op0, imm0, "imm0", reverse0), (op1, imm1, "imm1", reverse1)):
        if stage is ops.bypass:
            continue
        spec = _alu_op(stage, instr, "op")
        value = _scalar_or_vector(instr, param, imm, P, fp32_only=False)
        x = _tensor_scalar_stage(spec, x, value, reverse)
    if op is ops.prelu:
        slope = _scalar_or_vector(instr, "relu_param", relu_param, P, fp32_only=False)
        out = np.where(x > 0, x, x * slope).astype(F32)
    else:
        act = _activation_fn(op, instr)
        out = act.apply(x)
    _write(dst, out)
    cmd = _check_reduce_cmd(instr, reduce_cmd)
    regs = _accumulators().scalar
    if cmd is type(cmd).load_reduce:
        raise NkiSimError(f"{instr}: reduce_cmd=load_reduce is not supported by the Scalar engine")
    if cmd is not type(cmd).idle or reduce_op is not None:
        if reduce_op is None:
            raise NkiSimError(f"{instr}: reduce_cmd={cmd.name} needs reduce_op")
        rname = _alu_op(ops.REDUCE_ALIASES.get(reduce_op, reduce_op), instr, "reduce_op").name
        if rname not in _REDUCE_IDENTITY:
            raise NkiSimError(f"{instr}: reduce_op must be add, maximum, minimum, abs_max or abs_min, got nl.{rname}")
        rspec = ops.ALU_OPS[getattr(ops, rname)]
        if cmd in (type(cmd).reset, type(cmd).reset_reduce):
            regs[:P] = _REDUCE_IDENTITY[rname]
        if cmd in (type(cmd).reduce, type(cmd).reset_reduce):
            partial = _ACTIVATE2_REDUCE[rname](out)
            regs[:P] = _apply_alu(rspec, regs[:P], partial)
    if reduce_res is not None:
        _write_reduce_res(instr, reduce_res, regs[:P], P)
    return _record(instr, "scalar", dst, {"data": data, "imm0": imm0, "imm1": imm1, "reduce_res": reduce_res}, name)


def _free_axis_scan(step, first: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """Sequential recurrence along the free axis, vectorised over partitions: out[:, i] = step(i, prev).

    A scan's element i depends on element i - 1 (the documented semantics), so this is one NumPy operation
    per free element over all partitions; ``first`` is the state before element 0."""
    out = np.empty(columns.shape, dtype=F32)
    prev = first
    with np.errstate(all="ignore"):
        for i in range(columns.shape[1]):
            prev = step(i, prev)
            out[:, i] = prev
    return out


def tensor_tensor_scan(dst, data0, data1, initial, op0, op1, reverse0=False, reverse1=False, name=None):
    """Per partition: r[0] = op1(op0(data0[0], initial), data1[0]),
    r[i] = op1(op0(data0[i], r[i-1]), data1[i])
    (reverse0: data0 is op0's rhs; reverse1: data1 is op1's lhs). fp32 math, free dims flattened.

    data0, data1, dst: SBUF/PSUM, same layout, data0 and data1 not both in PSUM; initial: fp32 scalar or
    [P, 1] tile; op0/op1 binary arithmetic operators. Vector engine."""
    instr = "tensor_tensor_scan"
    for param, t in (("data0", data0), ("data1", data1), ("dst", dst)):
        _check_tensor(instr, param, t)
    _check_same_layout(instr, "data0", data0, "data1", data1)
    _check_same_layout(instr, "data0", data0, "dst", dst)
    _check_not_both_psum(instr, "data0", data0, "data1", data1)
    specs = []
    for param, op in (("op0", op0), ("op1", op1)):
        spec = _alu_op(op, instr, param)
        if spec.kind != "arithmetic" or spec.arity != 2:
            raise NkiSimError(f"{instr}: {param}=nl.{spec.name} must be a binary arithmetic operator")
        specs.append(spec)
    P = data0.shape[0]
    a = _read_f32(data0).reshape(P, -1)
    b = _read_f32(data1).reshape(P, -1)
    init = np.broadcast_to(_scalar_or_vector(instr, "initial", initial, P, fp32_only=False), (P, 1))[:, 0]

    def step(i: int, prev: np.ndarray) -> np.ndarray:
        t = specs[0].fn(prev, a[:, i]) if reverse0 else specs[0].fn(a[:, i], prev)
        return specs[1].fn(b[:, i], t) if reverse1 else specs[1].fn(t, b[:, i])

    _write(dst, _free_axis_scan(step, init.astype(F32), a))
    return _record(instr, "vector", dst, {"data0": data0, "data1": data1, "initial": initial}, name)


_CUMULATIVE_OPS = ("add", "subtract", "multiply", "maximum", "minimum")
_CUMULATIVE_RESET = {"add": 0.0, "subtract": 0.0, "multiply": 1.0, "maximum": -np.inf, "minimum": np.inf}


def tensor_scalar_cumulative(dst, src, op0, op1, imm0, imm1=None, reduce_cmd=reduce_cmd.reset_reduce, name=None):
    """Per partition: reg = op1(op0(src[i], imm0), reg); dst[i] = reg (a running scan in the Vector engine
    accumulator). reduce_cmd: reset_reduce (reg = 0 / 1 / -inf / +inf by op1), reduce (continue),
    load_reduce (reg = imm1). op1 in add, subtract, multiply, maximum, minimum; no int32/uint32 I/O."""
    instr = "tensor_scalar_cumulative"
    _check_tensor(instr, "src", src)
    _check_tensor(instr, "dst", dst)
    _check_same_layout(instr, "src", src, "dst", dst)
    for param, t in (("src", src), ("dst", dst)):
        if _dtype_name(t) in _INT32_TYPES:
            raise NkiSimError(f"{instr}: {param} dtype {_dtype_name(t)} is not supported (no int32/uint32 I/O)")
    spec0 = _alu_op(op0, instr, "op0")
    spec1 = _alu_op(op1, instr, "op1")
    if spec0.kind != "arithmetic":
        raise NkiSimError(f"{instr}: op0=nl.{spec0.name} must be an arithmetic operator")
    if spec1.name not in _CUMULATIVE_OPS:
        raise NkiSimError(f"{instr}: op1 must be one of {', '.join(_CUMULATIVE_OPS)}, got nl.{spec1.name}")
    cmd = _check_reduce_cmd(instr, reduce_cmd)
    P = src.shape[0]
    regs = _accumulators().vector
    if cmd is type(cmd).reset_reduce:
        regs[:P] = _CUMULATIVE_RESET[spec1.name]
    elif cmd is type(cmd).load_reduce:
        if imm1 is None:
            raise NkiSimError(f"{instr}: reduce_cmd=load_reduce needs imm1")
        regs[:P] = np.broadcast_to(_scalar_or_vector(instr, "imm1", imm1, P), (P, 1))[:, 0]
    elif cmd is not type(cmd).reduce:
        raise NkiSimError(f"{instr}: reduce_cmd must be reset_reduce, reduce or load_reduce, got {cmd.name}")
    x = _read_f32(src).reshape(P, -1)
    o0 = None if spec0.arity == 1 else _scalar_or_vector(instr, "imm0", imm0, P)
    with np.errstate(all="ignore"):
        y = _tensor_scalar_stage(spec0, x, o0, False)
    out = _free_axis_scan(lambda i, prev: spec1.fn(y[:, i], prev), regs[:P].copy(), y)
    regs[:P] = out[:, -1]
    _write(dst, out)
    return _record(instr, "vector", dst, {"src": src, "imm0": imm0, "imm1": imm1}, name)


__all__ = [
    "activate2", "activation", "activation_reduce", "affine_select", "exponential", "iota", "local_gather",
    "max8", "memset", "nc_find_index8", "nc_match_replace8", "nc_n_gather", "nc_stream_shuffle",
    "nonzero_with_count", "range_select", "reciprocal", "scalar_tensor_tensor", "select_reduce",
    "tensor_copy", "tensor_copy_predicated", "tensor_reduce", "tensor_scalar", "tensor_scalar_cumulative",
    "tensor_scalar_reduce", "tensor_tensor", "tensor_tensor_scan",
]  # fmt: skip
