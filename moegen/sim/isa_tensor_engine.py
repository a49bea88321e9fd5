"""TensorE instructions: nc_matmul, nc_transpose (Tensor or Vector engine); MX instructions: isa_mx.py.

nc_matmul (NKI 0.6 page): dst[M, N] = stationary[K, M].T @ moving[K, N], K on the partition dim of
both inputs, fp32 accumulation. stationary/moving in SBUF, dst in PSUM.
* limits: K <= 128 (256 as [128, 2, .] with perf_mode=double_row, FP8 only), M <= 128,
  N <= 512 on trn2; on trn3 N <= 4096 (fp32 dst) / 8192 (bf16 dst);
* dtypes: float8_e4m3, float8_e5m2, bfloat16, float16, tfloat32, float32 (+ float8_e4m3fn on trn3;
  e4m3 and e4m3fn not mixed); fp32/tf32 only with fp32/tf32; dst float32 (trn2) or float32 /
  bfloat16 (trn3);
* accumulate: False overwrites; True adds onto PSUM a matmul initialised (error otherwise: undefined
  on hardware); None (default) overwrites elements no matmul has written since allocation (or since a
  non-matmul instruction wrote them) and accumulates onto the others;
* is_transpose=True: bit-exact transpose of stationary through the moving identity; dst dtype equals
  the input dtype.
"""

from __future__ import annotations

import numpy as np

from moegen.sim import dtypes as dt
from moegen.sim import runtime
from moegen.sim.checks import check_buffer, check_partition, check_tensor
from moegen.sim.enums import NkiInstruction, check_enum, engine, matmul_perf_mode
from moegen.sim.errors import NkiSimError
from moegen.sim.tensor import MemoryRegion, NkiTensor

_ENGINE = engine
_PERF = matmul_perf_mode

MM_INPUT_DTYPES = {
    "trn2": ("float8_e4m3", "float8_e5m2", "bfloat16", "float16", "tfloat32", "float32"),
    "trn3": ("float8_e4m3", "float8_e4m3fn", "float8_e5m2", "bfloat16", "float16", "tfloat32", "float32"),
}
MM_DST_DTYPES = {"trn2": ("float32",), "trn3": ("float32", "bfloat16")}
FP8_DOUBLE_ROW = {
    "trn2": ("float8_e4m3", "float8_e5m2"),
    "trn3": ("float8_e4m3", "float8_e4m3fn", "float8_e5m2"),
}
MAX_K = 128
MAX_M = 128
# per-element PSUM state (Allocation.mm_state): never written, last written by a matmul (nc_matmul,
# TensorE transpose), last written by another instruction
UNWRITTEN, MM_WRITTEN, OTHER_WRITTEN = 0, 1, 2


def max_moving_free(target: str, dst_dtype: str) -> int:
    """Largest moving free size N of one nc_matmul."""
    if target == "trn2":
        return 512
    return 8192 if dst_dtype == "bfloat16" else 4096


def _f32(t: NkiTensor, instr: str, operand: str) -> np.ndarray:
    return t.f32(instr, operand)


def _check_mm_dtypes(instr: str, target: str, stationary: NkiTensor, moving: NkiTensor) -> None:
    allowed = MM_INPUT_DTYPES[target]
    for nm, t in (("stationary", stationary), ("moving", moving)):
        if t.dtype.name not in allowed:
            raise NkiSimError(
                f"{instr}: {nm} '{t.name}' dtype {t.dtype.name} not supported on {target} (limit: {', '.join(allowed)})"
            )
    a, b = stationary.dtype.name, moving.dtype.name
    wide = ("float32", "tfloat32")
    if (a in wide) != (b in wide):
        raise NkiSimError(
            f"{instr}: stationary dtype {a} with moving dtype {b} (limit: float32/tfloat32 only "
            "pair with float32/tfloat32)"
        )
    if {a, b} == {"float8_e4m3", "float8_e4m3fn"}:
        raise NkiSimError(
            f"{instr}: stationary {a} and moving {b} (limit: legacy float8_e4m3 and float8_e4m3fn cannot be mixed)"
        )


def nc_matmul(
    dst,
    stationary,
    moving,
    is_stationary_onezero=False,
    is_moving_onezero=False,
    is_transpose=False,
    accumulate=None,
    tile_position=(),
    tile_size=(),
    perf_mode=matmul_perf_mode.none,
    name=None,
):
    """dst[M, N] (PSUM) (+)= stationary[K, M].T @ moving[K, N] (SBUF), fp32 accumulate."""
    instr = "nc_matmul"
    core = runtime.current()
    target = core.target
    for nm, t in (("dst", dst), ("stationary", stationary), ("moving", moving)):
        check_tensor(instr, nm, t)
    check_buffer(instr, "stationary", stationary, ("sbuf",))
    check_buffer(instr, "moving", moving, ("sbuf",))
    check_buffer(instr, "dst", dst, ("psum",))
    for nm, t in (("dst", dst), ("stationary", stationary), ("moving", moving)):
        check_partition(instr, nm, t)
    mode = check_enum(instr, "perf_mode", perf_mode, _PERF)
    if accumulate not in (None, True, False):
        raise NkiSimError(f"{instr}: accumulate must be None, True or False, got {accumulate!r}")
    _check_mm_dtypes(instr, target, stationary, moving)
    k = stationary.shape[0]
    if moving.shape[0] != k:
        raise NkiSimError(f"{instr}: contraction (partition) sizes differ: stationary {k}, moving {moving.shape[0]}")
    m_tile = stationary.shape[2] if mode is _PERF.double_row and stationary.ndim == 3 else stationary.free_size
    _check_tiling(instr, tile_position, tile_size, mode, k, m_tile)
    if mode is _PERF.double_row:
        fp8 = FP8_DOUBLE_ROW[target]
        for nm, t in (("stationary", stationary), ("moving", moving)):
            if t.dtype.name not in fp8:
                raise NkiSimError(
                    f"{instr}: perf_mode=double_row needs FP8 {nm}, got {t.dtype.name} (limit: {', '.join(fp8)})"
                )
            if t.ndim != 3 or t.shape[1] != 2:
                raise NkiSimError(f"{instr}: perf_mode=double_row {nm} must be [K, 2, F], got {t.shape}")
        if is_transpose:
            raise NkiSimError(f"{instr}: perf_mode=double_row cannot be combined with is_transpose")
        m, n = stationary.shape[2], moving.shape[2]
        kmax = 2 * MAX_K
        keff = 2 * k
    else:
        m, n = stationary.free_size, moving.free_size
        kmax = MAX_K
        keff = k
    if k > MAX_K:
        raise NkiSimError(f"{instr}: contraction (partition) size {keff} exceeds maximum {kmax}")
    if m > MAX_M:
        raise NkiSimError(f"{instr}: stationary free size {m} exceeds maximum {MAX_M}")
    if is_transpose:
        if dst.dtype != stationary.dtype:
            raise NkiSimError(
                f"{instr}: is_transpose dst dtype {dst.dtype.name} must equal input dtype {stationary.dtype.name}"
            )
        nmax = 128
    else:
        if dst.dtype.name not in MM_DST_DTYPES[target]:
            raise NkiSimError(
                f"{instr}: dst dtype {dst.dtype.name} not supported on {target} "
                f"(limit: {', '.join(MM_DST_DTYPES[target])})"
            )
        nmax = max_moving_free(target, dst.dtype.name)
    if n > nmax:
        raise NkiSimError(f"{instr}: moving free size {n} exceeds maximum {nmax} on {target}")
    if dst.shape[0] != m or dst.free_size != n:
        raise NkiSimError(
            f"{instr}: dst shape {dst.shape} must be [M={m}, N={n}] for stationary {stationary.shape} "
            f"and moving {moving.shape}"
        )
    core.record("tensor", instr, {"dst": dst, "stationary": stationary, "moving": moving})
    if core.run.trace_only and not (accumulate is True and not _accumulable(dst._mm_state_view(), target).all()):
        # no values: keep the matmul state (it decides later accumulate rules), skip the product
        dst._note_access("w", instr)
        dst._mm_state_view()[...] = MM_WRITTEN
        return NkiInstruction(instr)

    if is_transpose:
        # bit-accurate data transpose (NeuronCore-v3+): dst = stationary.T, NaN/Inf carried as-is
        if n != k:
            raise NkiSimError(f"{instr}: is_transpose needs a [K, K] identity moving tile, got {moving.shape}")
        _check_identity(instr, moving, k)
        vals = stationary.read(instr, "stationary").reshape(k, m).T
        dst._array(instr, "dst")[...] = vals.reshape(dst.shape)
        dst._alloc.written = True
        dst._alloc.version += 1
        dst._mm_state_view()[...] = MM_WRITTEN
        return NkiInstruction(instr)
    # [K', M] / [K', N] float32 operands (double_row: K' = 2K, row (k, j) of both operands)
    st = _operand_f32(stationary, instr, "stationary", keff, m)
    mv = _operand_f32(moving, instr, "moving", keff, n)
    if _defer(dst, st, mv, accumulate):
        return NkiInstruction(instr)
    res = st.T @ mv
    _accumulate_into(instr, dst, res.reshape(dst.shape), accumulate, target, exact=is_transpose)
    return NkiInstruction(instr)


def _check_identity(instr: str, moving: NkiTensor, k: int) -> None:
    """Transpose mode's moving tile must be the [K, K] identity: the nc_matmul page ("Transpose mode")
    defines the transpose as the stationary tile loaded "using an identity matrix as the moving tile";
    what the PE array computes with any other moving tile in this mode is undocumented."""
    vals = moving.f32(instr, "moving").reshape(k, k)
    bad = np.argwhere(vals != np.eye(k, dtype=np.float32))
    if bad.size:
        i, j = (int(v) for v in bad[0])
        raise NkiSimError(
            f"{instr}: is_transpose moving '{moving.name}' [{i}, {j}] = {vals[i, j]} is not the identity "
            f"(limit: transpose mode takes a [{k}, {k}] identity matrix as the moving tile)"
        )


# ------------------------------------------------------------------------------------------------
# Deferred accumulation chains
# ------------------------------------------------------------------------------------------------
def _operand_f32(t: NkiTensor, instr: str, operand: str, rows: int, cols: int) -> np.ndarray:
    """The operand as a [rows, cols] float32 array that later writes to its tensor cannot change: the
    allocation's cached float32 copy (replaced, never modified, on a write) or a private copy."""
    a = t._alloc
    arr = t.f32(instr, operand).reshape(rows, cols)
    if np.may_share_memory(arr, a.data):
        arr = arr.copy()  # float32 storage: a live view, snapshot it
    return arr


class PendingMatmuls:
    """A chain of nc_matmuls into one fp32 PSUM view, computed as one product when the PSUM is next
    accessed: dst (=|+=) sum_i st_i.T @ mv_i, accumulated in fp32 (order of the fp32 sums aside, the
    same as issuing them one by one). All checks, trace records and matmul-state updates happened when
    each instruction was issued; `Allocation.flush_pending` runs `flush` before any access."""

    __slots__ = ("key", "out", "add", "sts", "mvs")

    def __init__(self, key, out: np.ndarray, add: bool):
        self.key = key
        self.out = out  # writable float32 view of the dst (no reference to the allocation: no cycle)
        self.add = add  # False: the first matmul overwrites; True: it accumulates onto the dst
        self.sts: list = []
        self.mvs: list = []

    def flush(self) -> None:
        sts, mvs = self.sts, self.mvs
        res = None
        for i, j in _runs(sts, mvs):
            part = _product(sts[i:j], mvs[i:j])
            res = part if res is None else res + part
        res = res.reshape(self.out.shape)
        if self.add:
            self.out += res
        else:
            self.out[...] = res


def _runs(sts: list, mvs: list) -> list:
    """Split a chain into runs of operands that are views of the same buffers with the same layout
    (typically the K tiles of one SBUF tile), each computable as one product without copying."""
    runs = []
    start = 0
    for i in range(1, len(sts) + 1):
        if i == len(sts) or not (
            sts[i].base is not None
            and sts[i].base is sts[start].base
            and mvs[i].base is mvs[start].base
            and sts[i].strides == sts[start].strides
            and mvs[i].strides == mvs[start].strides
            and sts[i].shape == sts[start].shape
            and mvs[i].shape == mvs[start].shape
        ):
            runs.append((start, i))
            start = i
    if len(runs) > 4:  # unrelated operands: one concatenated product beats many small ones
        return [(0, len(sts))]
    return runs


def _product(sts: list, mvs: list) -> np.ndarray:
    """sum_i sts[i].T @ mvs[i] as one fp32 product (inf / NaN operands propagate without a warning)."""
    with np.errstate(over="ignore", invalid="ignore"):
        if len(sts) == 1:
            return sts[0].T @ mvs[0]
        st = _stack(sts)
        mv = _stack(mvs) if st is not None else None
        if st is None or mv is None:
            st, mv = np.concatenate(sts, axis=0), np.concatenate(mvs, axis=0)
        return st.T @ mv


def _stack(arrs: list) -> np.ndarray | None:
    """[C x (K, F)] views at equally spaced offsets of one buffer (the K tiles of one SBUF tile) as a
    (K * C, F) array without copying when the layout allows; None when they are not such views."""
    a0 = arrs[0]
    base = a0.base
    if base is None or not base.flags.c_contiguous or base.dtype != np.float32:
        return None
    ptr = [a.__array_interface__["data"][0] for a in arrs]
    step = ptr[1] - ptr[0]
    for i, a in enumerate(arrs):
        if a.base is not base or a.shape != a0.shape or a.strides != a0.strides:
            return None
        if i and ptr[i] - ptr[i - 1] != step:
            return None
    start = ptr[0] - base.__array_interface__["data"][0]
    k, f = a0.shape
    try:
        v = np.ndarray(
            (k, len(arrs), f), np.float32, buffer=base, offset=start, strides=(a0.strides[0], step, a0.strides[1])
        )
    except (TypeError, ValueError):
        return None
    return v.reshape(k * len(arrs), f)


def _defer(dst: NkiTensor, st: np.ndarray, mv: np.ndarray, accumulate) -> bool:
    """Queue this matmul on the dst's pending chain when its result is plain fp32 arithmetic:
    fp32 static dst, and the accumulate rule resolves to one mode for the whole tile."""
    alloc = dst._alloc
    if dst._dyn or dst._vec is not None or dst.dtype.name != "float32" or alloc.data.dtype != np.float32:
        return False
    key = (dst.offset, dst.shape, dst.strides)
    pend = alloc.pending
    if pend is not None and pend.key == key and accumulate is not False:
        # the chain's first matmul set the matmul state of every element: accumulate (None or True) adds
        pend.sts.append(st)
        pend.mvs.append(mv)
        alloc.version += 1
        return True
    state = dst._mm_state_view()  # computes any other pending chain first
    by_matmul = state == MM_WRITTEN
    if accumulate is False:
        add = False
    elif by_matmul.all() or (accumulate is True and _accumulable(state, runtime.current().target).all()):
        add = True
    elif accumulate is None and not by_matmul.any():
        add = False
    else:
        return False  # accumulate=True onto uninitialised elements (error) or a mixed tile: do it now
    if not add and alloc.fresh and dst._covers_allocation():
        alloc.fresh = False  # the chain overwrites every element: no sentinel fill needed
    pend = PendingMatmuls(key, dst._array("nc_matmul", "dst"), add)
    pend.sts.append(st)
    pend.mvs.append(mv)
    alloc.written = True
    alloc.version += 1
    state[...] = MM_WRITTEN
    alloc.pending = pend
    return True


def _accumulate_into(instr: str, dst: NkiTensor, res: np.ndarray, accumulate, target: str, exact: bool) -> None:
    """Write / accumulate `res` (fp32) into PSUM dst per the accumulate flag; track matmul state."""
    arr = dst._array(instr, "dst")
    state = dst._mm_state_view()
    alloc = dst._alloc
    alloc.written = True
    alloc.version += 1
    precise = alloc.core.precise if alloc.core else True
    native = arr.dtype == np.float32
    if accumulate is False or exact:
        mode = "overwrite"
    elif accumulate is True:
        ok = _accumulable(state, target)
        if not ok.all():
            bad = tuple(int(x) for x in np.argwhere(~ok)[0])
            if state[bad] == OTHER_WRITTEN:
                raise NkiSimError(
                    f"{instr}: accumulate=True onto dst '{dst.name}' element {bad} that a non-matmul "
                    f"instruction wrote (limit: not supported on NeuronCore-v2/v3, i.e. {target}; "
                    "undefined on hardware)"
                )
            raise NkiSimError(
                f"{instr}: accumulate=True onto dst '{dst.name}' element {bad} "
                "that no nc_matmul initialised (limit: accumulate only onto matmul output; "
                "undefined on hardware)"
            )
        mode = "add"
    else:
        by_matmul = state == MM_WRITTEN
        if by_matmul.all():
            mode = "add"
        elif not by_matmul.any():
            mode = "overwrite"
        else:
            mode = "mixed"
    if mode == "overwrite":
        if native:
            arr[...] = res
        else:
            arr[...] = dt.convert(res, dst.dtype, precise)
    elif mode == "add":
        if native:
            arr += res
        else:
            arr[...] = dt.convert(dt.to_f32(arr) + res, dst.dtype, precise)
    else:
        old = np.where(state == MM_WRITTEN, dt.to_f32(arr).astype(np.float32), np.float32(0))
        arr[...] = dt.convert(old + res, dst.dtype, precise) if not native else old + res
    state[...] = MM_WRITTEN


def _accumulable(state: np.ndarray, target: str) -> np.ndarray:
    """Elements accumulate=True may add onto: written by a matmul; on trn3 also by another instruction (the
    nc_matmul page: accumulating onto a PSUM location "value-initialized by a non-matmul instruction (e.g.,
    memset, tensor_copy)" is unsupported "on NeuronCore-v2 and NeuronCore-v3", i.e. supported from v4)."""
    if target == "trn2":
        return state == MM_WRITTEN
    return state != UNWRITTEN


def _check_tiling(instr: str, tile_position, tile_size, mode, k: int, m: int) -> None:
    pos, size = tuple(tile_position or ()), tuple(tile_size or ())
    if not pos and not size:
        return
    if not pos or not size or len(pos) != 2 or len(size) != 2:
        raise NkiSimError(f"{instr}: tile_position {pos} and tile_size {size} must both be set as (row, column)")
    # double_row "cannot be combined with Tensor Engine column tiling mode" (nc_matmul page); column
    # tiling is refused below anyway (column_size must be 128), row tiling is allowed with it
    row_size, col_size = size
    if row_size not in (32, 64, 128) or col_size != 128:
        raise NkiSimError(f"{instr}: tile_size {size} (limit: row_size in 32, 64, 128; column_size 128)")
    if pos[1] != 0:
        raise NkiSimError(f"{instr}: tile_position {pos} (limit: start column 0)")
    if pos[0] % row_size or pos[1] % col_size or pos[0] + row_size > 128 or pos[1] + col_size > 128:
        raise NkiSimError(f"{instr}: tile_position {pos} must be multiples of tile_size {size} inside 128x128")
    if k > row_size:
        raise NkiSimError(f"{instr}: contraction size {k} exceeds the row tile size {row_size}")
    if m > col_size:
        raise NkiSimError(f"{instr}: stationary free size {m} exceeds the column tile size {col_size}")


def nc_transpose(dst, data, engine=engine.unknown, name=None):
    """dst[F, P] = data[P, F]: TensorE (SBUF <= [128,128] -> PSUM) or VectorE (<= [32,32], SBUF/PSUM)."""
    instr = "nc_transpose"
    check_tensor(instr, "dst", dst)
    check_tensor(instr, "data", data)
    eng = check_enum(instr, "engine", engine, _ENGINE)
    for nm, t in (("dst", dst), ("data", data)):
        if t.buffer not in (MemoryRegion.sbuf, MemoryRegion.psum):
            raise NkiSimError(
                f"{instr}: {nm} '{t.name}' is in {t.buffer.name}: only DMA instructions access HBM "
                "(limit: sbuf or psum)"
            )
        check_partition(instr, nm, t)
    p, f = data.shape[0], data.free_size
    if eng is _ENGINE.unknown:
        small = p <= 32 and f <= 32
        eng = (
            _ENGINE.tensor
            if dst.buffer is MemoryRegion.psum and data.buffer is MemoryRegion.sbuf and not small
            else _ENGINE.vector
            if small
            else _ENGINE.tensor
        )
    if eng is _ENGINE.tensor:
        check_buffer(instr, "data", data, ("sbuf",))
        check_buffer(instr, "dst", dst, ("psum",))
        lim = 128
    elif eng is _ENGINE.vector:
        lim = 32
    else:
        raise NkiSimError(f"{instr}: engine {eng.name} (limit: tensor, vector or unknown)")
    if p > lim or f > lim:
        raise NkiSimError(f"{instr}: data {data.shape} exceeds the {eng.name} engine maximum [{lim}, {lim}]")
    if dst.dtype != data.dtype:
        raise NkiSimError(f"{instr}: dst dtype {dst.dtype.name} must equal data dtype {data.dtype.name}")
    if dst.shape[0] != f or dst.free_size != p:
        raise NkiSimError(f"{instr}: dst shape {dst.shape} must be [{f}, {p}] for data {data.shape}")
    runtime.current().record(eng.name, instr, {"dst": dst, "data": data})
    vals = data.read(instr, "data").reshape(p, f).T
    if eng is _ENGINE.tensor:
        arr = dst._array(instr, "dst")
        arr[...] = vals.reshape(dst.shape)
        dst._alloc.written = True
        dst._alloc.version += 1
        dst._mm_state_view()[...] = MM_WRITTEN
    else:
        dst.write(vals.reshape(dst.shape), instr, "dst")
    return NkiInstruction(instr)
