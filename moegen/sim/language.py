"""The `nki.language` namespace of the simulator (NKI 0.6 API, names and parameters as in api.json).

Memory (ndarray, zeros, ...), dtypes, memory regions, tile_size, loops (range aliases, fori_loop,
while_loop, dynamic_range), SPMD ids, and the data-movement convenience ops (load, store,
load_transpose2d, matmul, transpose) live here; the math / activation functions (used as `op=`
values and callable) come from `language_ops`. Unimplemented listed APIs raise NotImplementedError.
"""

from __future__ import annotations

import builtins
import contextlib
import os

import numpy as np

from moegen.sim import runtime as _runtime
from moegen.sim.dtypes import (  # noqa: F401
    DType,
    bfloat16,
    bool_,
    float4_e2m1fn_x4,
    float8_e4m3,
    float8_e4m3fn,
    float8_e4m3fn_x4,
    float8_e5m2,
    float8_e5m2_x4,
    float8_e8m0fnu,
    float16,
    float32,
    int8,
    int16,
    int32,
    tfloat32,
    uint8,
    uint16,
    uint32,
)
from moegen.sim.dtypes import as_dtype as _as_dtype
from moegen.sim.enums import NKIObject  # noqa: F401
from moegen.sim.errors import NkiSimError
from moegen.sim.registers import VirtualRegister as _Reg
from moegen.sim.registers import value_of as _value_of
from moegen.sim.tensor import (  # noqa: F401
    MemoryRegion,
    NkiTensor,
    allocate,
    ds,
    hbm,
    is_hbm,
    is_on_chip,
    is_psum,
    is_sbuf,
    private_hbm,
    psum,
    sbuf,
    shared_hbm,
)

try:
    from moegen.sim import language_ops as _ops
except ImportError:  # pragma: no cover
    _ops = None

if _ops is not None:
    for _name in dir(_ops):
        _obj = getattr(_ops, _name)
        if _name.startswith("_") or _name in ("annotations", "math", "np", "dataclass", "Callable"):
            continue
        if callable(_obj) and getattr(_obj, "__module__", "") == _ops.__name__ and not isinstance(_obj, type):
            globals().setdefault(_name, _obj)
    bypass = _ops.bypass
    prelu = _ops.prelu
    average = _ops.average
    del _name, _obj

_MAX_WHILE_ITERATIONS = 10_000_000


# ------------------------------------------------------------------------------------------------
# tile_size
# ------------------------------------------------------------------------------------------------
class _TileSize(NKIObject):
    """Hardware tile-size constants (documented values; undocumented ones raise NotImplementedError)."""

    pmax = 128
    gemm_stationary_fmax = 128
    gemm_moving_fmax = 512
    psum_bank_fmax = 512
    psum_bank_fmax_bytes = 2048
    psum_fmax = 512
    bn_stats_fmax = 512

    @property
    def psum_min_align(self):
        raise NotImplementedError("nki.language.tile_size.psum_min_align: value not documented")

    @property
    def sbuf_min_align(self):
        raise NotImplementedError("nki.language.tile_size.sbuf_min_align: value not documented")

    @property
    def psum_num_banks(self) -> int:
        return _runtime.PSUM_NUM_BANKS

    @property
    def sbuf_size_bytes(self) -> int:
        """Total SBUF capacity in bytes, all partitions combined (tile_size page): 128 x 224 KiB = 28 MiB
        on trn2, 128 x 256 KiB = 32 MiB on trn3."""
        return _runtime.NUM_PARTITIONS * _runtime.SBUF_BYTES_PER_PARTITION[_runtime.current().target]

    @property
    def sbuf_fmax(self):
        raise NotImplementedError("nki.language.tile_size.sbuf_fmax: value not documented")

    @property
    def sbuf_fmax_bytes(self):
        raise NotImplementedError("nki.language.tile_size.sbuf_fmax_bytes: value not documented")

    @property
    def total_available_sbuf_size(self):
        raise NotImplementedError("nki.language.tile_size.total_available_sbuf_size: value not documented")


tile_size = _TileSize()


# ------------------------------------------------------------------------------------------------
# Allocation
# ------------------------------------------------------------------------------------------------
def ndarray(shape, dtype, buffer=sbuf, name="", address=None):
    """New uninitialised tensor (sentinel-filled: NaN floats, 4 ints). On-chip: dim 0 = partition."""
    return allocate(shape, dtype, buffer, name=name, address=address)


def zeros(shape, dtype, buffer=sbuf, name=""):
    return _filled(shape, dtype, buffer, name, 0, "zeros")


def ones(shape, dtype, buffer=sbuf, name=""):
    return _filled(shape, dtype, buffer, name, 1, "ones")


def full(shape, fill_value, dtype, buffer=sbuf, name=""):
    return _filled(shape, dtype, buffer, name, fill_value, "full")


def _filled(shape, dtype, buffer, name, value, what):
    t = allocate(shape, dtype, buffer, name=name)
    core = _runtime.current()
    core.record("dma" if not t.on_chip else "gpsimd", what, {"dst": t, "value": value})
    t.write(np.asarray(value, dtype=np.float32 if t.dtype.is_float else None), what, "dst")
    return t


def zeros_like(x, dtype=None, buffer=None, name=""):
    return zeros(x.shape, dtype if dtype is not None else x.dtype, buffer if buffer is not None else x.buffer, name)


def empty_like(x, dtype=None, buffer=None, name=""):
    return ndarray(x.shape, dtype if dtype is not None else x.dtype, buffer if buffer is not None else x.buffer, name)


def rand(shape, dtype, buffer=sbuf, name=""):
    """Uniform [0, 1) values (seeded per run by nl.random_seed; default seed 0)."""
    t = allocate(shape, dtype, buffer, name=name)
    _runtime.current().record("gpsimd", "rand", {"dst": t})
    t.write(_rng().random(t.shape, dtype=np.float32), "rand", "dst")
    return t


def _rng() -> np.random.Generator:
    core = _runtime.current()
    g = getattr(core, "rng", None)
    if g is None:
        g = core.rng = np.random.default_rng(0)
    return g


def random_seed(seed):
    """Seed the random generator from a [1,1] tensor (or int)."""
    _runtime.current().rng = np.random.default_rng(_value_of(seed, "random_seed", "seed"))


def shared_constant(constant):
    """A shared-HBM tensor holding a NumPy array (or the array in a .npy file)."""
    from moegen.sim.tensor import from_numpy

    if isinstance(constant, (str, os.PathLike)):
        constant = np.load(constant)
    return from_numpy(np.asarray(constant), shared_hbm, name="shared_constant")


def shared_identity_matrix(n, dtype=uint8, dst=None):
    """An [n, n] identity matrix in SBUF (written into `dst` if given)."""
    if dst is None:
        dst = allocate((n, n), dtype, sbuf, name="identity")
    if tuple(dst.shape) != (n, n):
        raise NkiSimError(f"shared_identity_matrix: dst shape {dst.shape} must be ({n}, {n})")
    _runtime.current().record("gpsimd", "shared_identity_matrix", {"dst": dst})
    dst.write(np.eye(n, dtype=np.float32), "shared_identity_matrix", "dst")
    return dst


# ------------------------------------------------------------------------------------------------
# Loops and control
# ------------------------------------------------------------------------------------------------
def affine_range(start, stop=None, step=1):
    """Deprecated alias of Python range() (fully unrolled, program order)."""
    return range(start, stop, step) if stop is not None else range(start)


def sequential_range(start, stop=None, step=1):
    """Deprecated alias of Python range()."""
    return range(start, stop, step) if stop is not None else range(start)


def static_range(start, stop=None, step=1):
    """Deprecated alias of Python range()."""
    return range(start, stop, step) if stop is not None else range(start)


def _bound(x, what: str) -> int:
    if isinstance(x, _Reg):
        return x._get()
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return int(x)
    raise NkiSimError(f"{what}: bound must be an int or VirtualRegister, got {type(x).__name__}")


def _check_step(step, what: str) -> int:
    if not isinstance(step, (int, np.integer)) or isinstance(step, bool) or step <= 0:
        raise NkiSimError(f"{what}: step must be a positive compile-time int, got {step!r}")
    return int(step)


def dynamic_range(start, stop=None, step=1):
    """Deprecated (removed in NKI 0.7): a runtime loop; yields a read-only register per iteration."""
    if stop is None:
        start, stop = 0, start
    step = _check_step(step, "dynamic_range")
    lo, hi = _bound(start, "dynamic_range"), _bound(stop, "dynamic_range")
    core = _runtime.current()
    core.record("sync", "dynamic_range", {"start": lo, "stop": hi, "step": step}, reg_reads=_registers(start, stop))

    def gen():
        for i in range(lo, hi, step):
            with _loop_iteration(core):
                yield _next_index(core, i)

    return gen()


def _registers(*values) -> tuple:
    """The registers among a loop's bounds (read when the loop starts)."""
    return tuple(v for v in values if isinstance(v, _Reg))


def _next_index(core, i: int) -> _Reg:
    """The induction register of one iteration of a runtime loop; its bookkeeping (the branch back, the
    induction update and the bound compare) is one sync-engine instruction in the trace."""
    reg = _Reg(i, frozen=True)
    core.record("sync", "loop_iteration", {"index": i}, reg_writes=(reg,))
    return reg


@contextlib.contextmanager
def _loop_iteration(core):
    """One iteration of a dynamic loop body: every on-chip tile it allocates stays allocated until the
    iteration ends (NKI Dynamic Loops: tensors allocated in the body are allocated once and reused
    across iterations, so each allocation holds its own slot for the whole loop; a body whose
    allocations together exceed SBUF / PSUM is refused)."""
    core.loop_pins.append([])
    try:
        yield
    finally:
        core.loop_pins.pop()


def fori_loop(lower, upper, body_fun, step=1):
    """Runtime loop: `for i in range(lower, upper, step): body_fun(i)`; bounds ints or registers (read once
    at loop entry), `i` a read-only VirtualRegister, body returns nothing."""
    step = _check_step(step, "fori_loop")
    lo, hi = _bound(lower, "fori_loop"), _bound(upper, "fori_loop")
    if not callable(body_fun):
        raise NkiSimError("fori_loop: body_fun must be callable")
    core = _runtime.current()
    core.record("sync", "fori_loop", {"lower": lo, "upper": hi, "step": step}, reg_reads=_registers(lower, upper))
    for i in range(lo, hi, step):
        with _loop_iteration(core):
            ret = body_fun(_next_index(core, i))
        if ret is not None:
            raise NkiSimError(
                f"fori_loop: body_fun must return None, returned {type(ret).__name__} "
                "(carry state through SBUF/HBM tensors)"
            )


def while_loop(init, body_fun):
    """Runtime loop: `r = init; while r != 0: r = body_fun(r)` on registers."""
    if not isinstance(init, _Reg):
        raise NkiSimError(f"while_loop: init must be a VirtualRegister, got {type(init).__name__}")
    core = _runtime.current()
    core.record("sync", "while_loop", {}, reg_reads=(init,))
    r = init
    n = 0
    while r._get() != 0:
        with _loop_iteration(core):
            r = body_fun(r)
        if not isinstance(r, _Reg):
            raise NkiSimError(f"while_loop: body_fun must return the condition VirtualRegister, got {type(r).__name__}")
        core.record("sync", "loop_iteration", {}, reg_reads=(r,))  # the branch back on the new condition
        n += 1
        if n > _MAX_WHILE_ITERATIONS:
            raise NkiSimError(f"while_loop: more than {_MAX_WHILE_ITERATIONS} iterations (limit), likely endless")


@contextlib.contextmanager
def no_reorder():
    """Keep instruction order inside the block (the simulator always executes in program order)."""
    yield


def program_id(axis=0):
    """Index of this program (core) on launch axis 0: 0 or 1 under LNC=2."""
    if axis != 0:
        raise NkiSimError(f"program_id: axis {axis} (limit: 0, the only launch axis)")
    return _runtime.current().program_id


def num_programs(axes=0):
    """Number of programs on launch axis 0: 1 or 2."""
    if axes not in (0, None):
        raise NkiSimError(f"num_programs: axes {axes} (limit: 0)")
    return _runtime.current().num_programs


def program_ndim():
    """Number of launch grid dims: 1 under kernel[2], 0 without a grid."""
    return 1 if _runtime.current().num_programs > 1 else 0


def device_print(print_prefix, tensor):
    """Print a tensor's values now (the simulator runs eagerly)."""
    vals = tensor.read() if isinstance(tensor, NkiTensor) else tensor
    print(print_prefix, vals)


# ------------------------------------------------------------------------------------------------
# Data-movement / TensorE convenience ops (each allocates its result)
# ------------------------------------------------------------------------------------------------
def load(src, dtype=None):
    """HBM tensor -> new SBUF tile of the same shape (dma_copy)."""
    from moegen.sim.isa_move import dma_copy

    if not isinstance(src, NkiTensor) or not is_hbm(src):
        raise NkiSimError("nl.load: src must be an HBM tensor")
    out = allocate(
        src.shape if len(src.shape) >= 2 else (1,) + tuple(src.shape),
        dtype if dtype is not None else src.dtype,
        sbuf,
    )
    dma_copy(out, src)
    return out


def store(dst, value):
    """SBUF tile -> HBM tensor (dma_copy). PSUM values are not supported: copy to SBUF first."""
    from moegen.sim.isa_move import dma_copy

    if not isinstance(value, NkiTensor):
        raise NkiSimError("nl.store: value must be a tile")
    if is_psum(value):
        raise NkiSimError("nl.store: value is in psum (limit: sbuf; copy PSUM to SBUF first)")
    dma_copy(dst, value)


def load_transpose2d(src, dtype=None):
    """HBM [P, F] -> new SBUF tile [F, P] (dma_transpose)."""
    from moegen.sim.isa_move import dma_transpose

    if not isinstance(src, NkiTensor) or src.ndim != 2:
        raise NkiSimError("nl.load_transpose2d: src must be a 2-D tensor")
    d = _as_dtype(dtype) if dtype is not None else src.dtype
    out = allocate((src.shape[1], src.shape[0]), src.dtype, sbuf)
    dma_transpose(out, src)
    if d != src.dtype:
        conv = allocate(out.shape, d, sbuf)
        conv.write(out.read())
        return conv
    return out


def matmul(x, y, transpose_x=False):
    """x.T @ y into a new fp32 PSUM tile (only transpose_x=True is supported, as on hardware)."""
    from moegen.sim.isa_tensor_engine import nc_matmul

    if not transpose_x:
        raise NkiSimError("nl.matmul: transpose_x=False is not supported (limit: transpose_x=True, x is [K, M])")
    out = allocate((x.free_size, y.free_size), float32, psum)
    nc_matmul(out, x, y)
    return out


def transpose(x, dtype=None):
    """2-D partition<->free transpose into a new PSUM tile (nc_transpose)."""
    from moegen.sim.isa_tensor_engine import nc_transpose

    out = allocate((x.free_size, x.shape[0]), x.dtype, psum)
    nc_transpose(out, x)
    if dtype is not None and _as_dtype(dtype) != x.dtype:
        conv = allocate(out.shape, dtype, psum)
        conv.write(out.read())
        return conv
    return out


from moegen.sim.stubs import fill_missing as _fill_missing  # noqa: E402

NOT_IMPLEMENTED = _fill_missing("nki.language", globals())

# builtins shadowed by NKI names (max, min, sum, all, abs) stay reachable for helpers here
_builtins = builtins
