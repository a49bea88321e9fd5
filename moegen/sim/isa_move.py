"""Data movement and synchronisation: dma_copy, dma_transpose, dma_compute, registers, barrier, sendrecv.

DMA semantics (nki.isa.dma_copy page, NKI 0.6):
* only the total element counts of src and dst must match; elements flow in each view's
  row-major order;
* dtype conversion goes src -> fp32 -> dst (bit-exact when the dtypes are equal); no casting of
  packed MX types; with dge_mode.hwdge src and dst dtypes must match;
* PSUM is not a legal DMA source;
* dynamic addressing (scalar_offset / vector_offset) is bounds-checked at run time:
  oob_mode.error raises, oob_mode.skip skips the out-of-bounds transfer (rows of an indirect view,
  or the whole transfer of a scalar-offset view) and leaves the destination unchanged.
"""

from __future__ import annotations

import queue
import time

import numpy as np

from moegen.sim import dtypes as dt
from moegen.sim import runtime
from moegen.sim.checks import check_buffer, check_tensor
from moegen.sim.enums import NkiInstruction, check_enum, dge_mode, dma_engine, engine, oob_mode
from moegen.sim.errors import NkiSimError
from moegen.sim.registers import VirtualRegister, value_of
from moegen.sim.tensor import MemoryRegion, NkiTensor, origin_at, origin_of, record_origin

# The enum classes, under names that instruction parameters (oob_mode=, engine=, ...) do not shadow.
_OOB = oob_mode
_DGE = dge_mode
_ENGINE = engine
_DMA_ENGINE = dma_engine

# seconds a core waits for its partner at a barrier / sendrecv (wall time: a failing partner aborts the barrier at
# once; a real-shape LNC 2 prefill on a loaded machine can reach its final barrier minutes apart on the two cores)
_SENTINEL_TIMEOUT = 600.0


def _elements_match(instr: str, dst: NkiTensor, src: NkiTensor) -> None:
    if dst.size != src.size:
        raise NkiSimError(
            f"{instr}: total elements of src {src.shape} ({src.size}) must match dst {dst.shape} ({dst.size})"
        )


def _convert_values(src_vals: np.ndarray, src: NkiTensor, dst: NkiTensor, instr: str) -> np.ndarray:
    """src storage values -> values for dst (bit-exact if same dtype, else through fp32)."""
    if src.dtype == dst.dtype:
        return src_vals
    if src.dtype.packed or dst.dtype.packed:
        raise NkiSimError(
            f"{instr}: no dtype conversion for packed MX types ({src.dtype.name} -> {dst.dtype.name}); "
            "use .view() for a bitcast"
        )
    return dt.to_f32(src_vals).astype(np.float32)


def _dyn_in_bounds(t: NkiTensor) -> bool:
    """For a scalar-offset (dynamic) view: whether the resolved view stays in bounds."""
    try:
        t._resolved_offset("dma")
    except NkiSimError:
        return False
    return True


def _named_by_origin(view: NkiTensor, partition: int) -> str:
    """'arg[i] = v, used as a row index: ' when the vector_offset row of `partition` was DMA-loaded from a
    kernel argument (an id read from HBM), else ''."""
    origin = origin_at(view._vec[0], partition)
    return f"{origin}, used as a row index: " if origin else ""


def _gather(src: NkiTensor, mode, instr: str):
    """Read src: (values in src storage dtype, element mask of valid values or None)."""
    if src._vec is not None:
        idx, valid = src._flat_index(instr, "src")
        if mode is _OOB.error and not valid.all():
            bad = int(np.flatnonzero(~valid)[0])
            raise NkiSimError(
                _named_by_origin(src, bad)
                + f"{instr}: src '{src.name}' indirect row index {src._vec_rows(instr, 'src')[bad]} out of "
                f"bounds at partition {bad} (limit: 0..{src._vec[2] - 1}, and "
                f"inside '{src.name}' once the access pattern's offset is added; oob_mode=error)"
            )
        src._note_access("r", instr)
        storage = src._storage_flat()
        safe = np.where(valid.reshape((-1,) + (1,) * (idx.ndim - 1)), idx, 0)
        vals = storage[safe]
        mask = None if valid.all() else np.broadcast_to(valid.reshape((-1,) + (1,) * (idx.ndim - 1)), idx.shape)
        return vals, mask
    if src._dyn and mode is _OOB.skip and not _dyn_in_bounds(src):
        return None, False
    src._note_access("r", instr)
    return src._array(instr, "src"), None  # no copy: numpy handles src/dst overlap on assignment


def _scatter(dst: NkiTensor, values: np.ndarray, mask, mode, instr: str) -> None:
    """Write values (already shaped like dst) into dst, honouring the element mask and oob_mode."""
    core = dst._alloc.core
    precise = core.precise if core else True
    if dst._vec is None and not dst._dyn and mask is None:
        dst.write(values, instr, "dst")
        return
    if dst._vec is None and dst._dyn and not _dyn_in_bounds(dst):
        if mode is _OOB.skip:
            return
        dst._resolved_offset(instr, "dst")  # raises with the detail
    idx, valid = dst._flat_index(instr, "dst")
    ok = np.ones(dst.shape, bool) if mask is None else np.array(mask, dtype=bool).reshape(dst.shape)
    if valid is not None:
        if mode is _OOB.error and not valid.all():
            bad = int(np.flatnonzero(~valid)[0])
            raise NkiSimError(
                _named_by_origin(dst, bad)
                + f"{instr}: dst '{dst.name}' indirect row index {dst._vec_rows(instr, 'dst')[bad]} out of "
                f"bounds at partition {bad} (limit: 0..{dst._vec[2] - 1}, and "
                f"inside '{dst.name}' once the access pattern's offset is added; oob_mode=error)"
            )
        ok &= valid.reshape((-1,) + (1,) * (dst.ndim - 1))
    conv = dt.convert(np.broadcast_to(values, dst.shape), dst.dtype, precise)
    dst._note_access("w", instr)
    dst._storage_flat()[idx[ok]] = conv[ok]


def dma_copy(
    dst,
    src,
    priority=None,
    oob_mode=oob_mode.error,
    dge_mode=dge_mode.unknown,
    engine=engine.unknown,
    name=None,
):
    """dst = src by DMA (HBM <-> SBUF, HBM -> HBM, SBUF -> SBUF). Element counts must match."""
    instr = "dma_copy"
    check_tensor(instr, "dst", dst)
    check_tensor(instr, "src", src)
    mode = check_enum(instr, "oob_mode", oob_mode, _OOB)
    dge = check_enum(instr, "dge_mode", dge_mode, _DGE)
    eng = check_enum(instr, "engine", engine, _ENGINE)
    if src.buffer is MemoryRegion.psum:
        raise NkiSimError(
            f"{instr}: src '{src.name}' is in psum (limit: DMA cannot read PSUM since NKI 0.3; "
            "copy to SBUF with tensor_copy first)"
        )
    if dst.buffer is MemoryRegion.psum:
        raise NkiSimError(f"{instr}: dst '{dst.name}' is in psum (limit: DMA writes HBM or SBUF)")
    _elements_match(instr, dst, src)
    _check_priority(instr, priority, dge)
    indirect = src._vec is not None or dst._vec is not None
    if src._vec is not None and dst._vec is not None:
        # dma_copy page, "Indirect addressing (gather/scatter)": a vector_offset on src gathers, one on dst scatters;
        # no page shows both on one copy (docs/sim_audit.md, below #23)
        raise NkiSimError(
            f"{instr}: vector_offset on both src '{src.name}' and dst '{dst.name}' (limit: a gather indexes src, a "
            "scatter indexes dst; stage the rows through SBUF or index one side)"
        )
    if dge is _DGE.hwdge:
        if indirect:
            raise NkiSimError(
                f"{instr}: dge_mode=hwdge does not support gather/scatter (vector_offset); use swdge or unknown"
            )
        if src.dtype != dst.dtype:
            raise NkiSimError(
                f"{instr}: with dge_mode=hwdge src dtype {src.dtype.name} must equal dst dtype {dst.dtype.name}"
            )
    if dge is _DGE.none and (indirect or src._dyn or dst._dyn):
        raise NkiSimError(f"{instr}: dge_mode=none needs static addresses (limit: no dynamic offsets)")
    if eng not in (_ENGINE.unknown, _ENGINE.sync, _ENGINE.scalar):
        # dma_copy page: engine is "the engine to use for HWDGE descriptor generation:
        # nki.isa.engine.sync or nki.isa.engine.scalar"; unknown (default) lets the compiler choose
        raise NkiSimError(f"{instr}: engine={eng.name} (limit: unknown, or sync / scalar with dge_mode=hwdge)")
    if eng in (_ENGINE.sync, _ENGINE.scalar) and dge is not _DGE.hwdge:
        raise NkiSimError(f"{instr}: engine={eng.name} is only valid with dge_mode=hwdge, got {dge.name}")
    core = runtime.current()
    entry = core.record("dma", instr, {"dst": dst, "src": src}, bytes_moved=dst.size * dst.dtype.itemsize)
    if core.run.trace_only:
        return _trace_only_dma(instr, dst, [src])
    if entry and mode is _OOB.skip:
        entry["bytes"] = _bytes_not_skipped(dst, src)
    vals, mask = _gather(src, mode, instr)
    if vals is None:  # whole transfer skipped (oob_mode.skip)
        return NkiInstruction(instr)
    vals = _convert_values(vals, src, dst, instr)
    if vals.shape != dst.shape:
        vals = vals.reshape(dst.shape)
        if mask is not None:
            mask = np.asarray(mask).reshape(dst.shape)
    version_before = dst._alloc.version
    _scatter(dst, vals, mask, mode, instr)
    record_origin(dst, src, version_before)
    return NkiInstruction(instr)


def _rows_in_bounds(t: NkiTensor) -> float:
    """Share of an access's elements that an oob_mode=skip transfer moves: 0 for a scalar-offset view out
    of bounds, the in-bounds rows of an indirect (vector_offset) view, else 1."""
    if t._vec is not None:
        valid = t._flat_index("dma_copy", "")[1]
        return float(np.count_nonzero(valid)) / max(1, valid.size) if valid is not None else 1.0
    if t._dyn and not _dyn_in_bounds(t):
        return 0.0
    return 1.0


def _bytes_not_skipped(dst: NkiTensor, src: NkiTensor) -> int:
    """Bytes an oob_mode=skip DMA moves (nki.isa.dma_copy: out-of-bounds rows, or a whole out-of-bounds
    scalar-offset transfer, are skipped, not moved): the trace records these, so that the timeline model
    charges a skipped weight load or padding row its fixed latency but no bandwidth."""
    share = min(_rows_in_bounds(src), _rows_in_bounds(dst))
    return int(round(dst.size * dst.dtype.itemsize * share))


def _trace_only_dma(instr: str, dst: NkiTensor, srcs: list) -> NkiInstruction:
    """Trace-only mode: no data moves; an address read from tensor values (indirect view) is an error."""
    for t in (dst, *srcs):
        if t._vec is not None:
            t._vec_rows(instr, "dst" if t is dst else "src")  # raises in trace-only mode
    dst._note_access("w", instr)
    return NkiInstruction(instr)


def _check_priority(instr: str, priority, dge) -> None:
    """DMA QoS priority (dma_copy / dma_transpose pages): None or 0..3, NeuronCore-v4+ (trn3) only, and
    not with dge_mode=none."""
    if priority is None:
        return
    if isinstance(priority, bool) or not isinstance(priority, (int, np.integer)) or not 0 <= priority <= 3:
        raise NkiSimError(f"{instr}: priority {priority!r} (limit: None or an int 0..3)")
    target = runtime.current().target
    if target != "trn3":
        raise NkiSimError(
            f"{instr}: priority={priority} on {target} (limit: DMA priority is NeuronCore-v4+ (trn3) only)"
        )
    if dge is _DGE.none:
        raise NkiSimError(f"{instr}: priority={priority} with dge_mode=none (limit: not supported without DGE)")


_TRANSPOSE_AXES = {2: (1, 0), 3: (2, 1, 0), 4: (3, 1, 2, 0)}


def dma_transpose(dst, src, axes=None, priority=None, dge_mode=dge_mode.unknown, oob_mode=oob_mode.error, name=None):
    """dst = src transposed by DMA: 2-D (1,0), 3-D (2,1,0), 4-D (3,1,2,0). dst in SBUF, same dtype,
    dst.shape == permuted src.shape."""
    instr = "dma_transpose"
    check_tensor(instr, "dst", dst)
    check_tensor(instr, "src", src)
    mode = check_enum(instr, "oob_mode", oob_mode, _OOB)
    dge = check_enum(instr, "dge_mode", dge_mode, _DGE)
    check_buffer(instr, "dst", dst, ("sbuf",))
    check_buffer(instr, "src", src, ("sbuf", "hbm"))
    nd = src.ndim
    if nd not in _TRANSPOSE_AXES:
        raise NkiSimError(f"{instr}: src rank {nd} (limit: 2, 3 or 4)")
    want = _TRANSPOSE_AXES[nd]
    ax = want if axes is None else tuple(int(a) for a in axes)
    if ax != want:
        raise NkiSimError(f"{instr}: axes {ax} for rank {nd} (limit: {want})")
    if src.dtype != dst.dtype:
        raise NkiSimError(f"{instr}: src dtype {src.dtype.name} must equal dst dtype {dst.dtype.name}")
    tshape = tuple(src.shape[a] for a in ax)
    if tuple(dst.shape) != tshape:
        raise NkiSimError(f"{instr}: dst shape {dst.shape} must equal transposed src shape {tshape}")
    # dma_transpose page: a direct transpose takes dge_mode unknown or hwdge; an indirect one (src
    # addressed through vector_offset) unknown or swdge
    if src._vec is not None:
        if dge not in (_DGE.unknown, _DGE.swdge):
            raise NkiSimError(f"{instr}: dge_mode={dge.name} for an indirect transpose (limit: unknown or swdge)")
    elif dge not in (_DGE.unknown, _DGE.hwdge):
        raise NkiSimError(f"{instr}: dge_mode={dge.name} for a direct transpose (limit: unknown or hwdge)")
    _check_priority(instr, priority, dge)
    if mode is _OOB.skip and src._vec is None and not src._dyn:
        raise NkiSimError(
            f"{instr}: oob_mode=skip with a directly addressed src '{src.name}' (limit: skip is only valid "
            "when src uses indirect indexing)"
        )
    if dge is _DGE.hwdge:
        if src.dtype.itemsize != 2:
            raise NkiSimError(f"{instr}: hwdge needs a 2-byte dtype, got {src.dtype.name}")
        if nd == 2 and src.shape[0] != 16:
            raise NkiSimError(f"{instr}: hwdge 2-D src.shape[0] must be 16, got {src.shape[0]}")
        if nd > 2 and (src.shape[0] not in (1, 2, 4, 8, 16) or (src.shape[0] * src.shape[-2]) % 16):
            raise NkiSimError(
                f"{instr}: hwdge src.shape[0] {src.shape[0]} must be in (1,2,4,8,16) and "
                f"src.shape[0]*src.shape[-2] a multiple of 16"
            )
        if src.shape[-1] > 128:
            raise NkiSimError(f"{instr}: hwdge src.shape[-1] {src.shape[-1]} exceeds maximum 128")
    runtime.current().record("dma", instr, {"dst": dst, "src": src}, bytes_moved=dst.size * dst.dtype.itemsize)
    if runtime.current().run.trace_only:
        return _trace_only_dma(instr, dst, [src])
    vals, mask = _gather(src, mode, instr)
    if vals is None:
        return NkiInstruction(instr)
    out = np.transpose(vals, ax)
    m = None if mask is None else np.transpose(np.broadcast_to(mask, src.shape), ax)
    _scatter(dst, out, m, mode, instr)
    return NkiInstruction(instr)


def _same_view(a: NkiTensor, b: NkiTensor) -> bool:
    """a and b address the same elements the same way (the same vector_offset index view included)."""
    if a._alloc is not b._alloc or (a.offset, a.shape, a.strides, a.dtype) != (b.offset, b.shape, b.strides, b.dtype):
        return False
    if (a._vec is None) != (b._vec is None):
        return False
    if a._vec is not None:
        ia, ib = a._vec[0], b._vec[0]
        if ia._alloc is not ib._alloc or (ia.offset, ia.shape, ia.strides) != (ib.offset, ib.shape, ib.strides):
            return False
        if tuple(a._vec[1:]) != tuple(b._vec[1:]):
            return False
    return True


def _check_compute_addressing(instr: str, dst: NkiTensor, srcs: list) -> None:
    """The dma_compute page: every tensor has a compile-time address unless it uses vector_offset, and a
    vector_offset turns the instruction into one of two read-modify-writes with exactly 2 sources:
    scatter (dst HBM indirect, one source the same view as dst, the other SBUF data) or gather (dst SBUF,
    one source the same view as dst, the other HBM data with vector_offset)."""
    named = [("dst", dst)] + [(f"srcs[{i}]", s) for i, s in enumerate(srcs)]
    for nm, t in named:
        if t._dyn:
            raise NkiSimError(
                f"{instr}: {nm} '{t.name}' has a runtime (scalar) offset (limit: compile-time addresses; "
                "only a vector_offset read-modify-write is indirect)"
            )
    if all(t._vec is None for _, t in named):
        return
    if len(srcs) != 2:
        raise NkiSimError(f"{instr}: a vector_offset read-modify-write takes exactly 2 sources, got {len(srcs)}")
    same = [_same_view(s, dst) for s in srcs]
    other = srcs[1] if same[0] else srcs[0]
    scatter = dst._vec is not None and not dst.on_chip and other.buffer is MemoryRegion.sbuf
    gather = dst._vec is None and dst.buffer is MemoryRegion.sbuf and not other.on_chip and other._vec is not None
    if not any(same) or not (scatter or gather):
        raise NkiSimError(
            f"{instr}: dst '{dst.name}' ({dst.buffer.name}{', vector_offset' if dst._vec is not None else ''}) "
            f"with sources {[f'{s.name} ({s.buffer.name})' for s in srcs]} is neither documented read-modify-write "
            "(limit: scatter: dst HBM with vector_offset, srcs = [dst, SBUF data]; gather: dst SBUF, "
            "srcs = [dst, HBM data with vector_offset])"
        )


def dma_compute(dst, srcs, reduce_op, scales=None, unique_indices=True, oob_mode=oob_mode.error, name=None):
    """dst = srcs[0] + srcs[1] + ... computed in fp32 by the DMA engine (reduce_op must be nl.add)."""
    from moegen.sim import language_ops

    instr = "dma_compute"
    check_tensor(instr, "dst", dst)
    mode = check_enum(instr, "oob_mode", oob_mode, _OOB)
    if reduce_op is not language_ops.add:
        raise NkiSimError(f"{instr}: reduce_op {getattr(reduce_op, '__name__', reduce_op)} (limit: nl.add only)")
    srcs = list(srcs)
    if not 1 <= len(srcs) <= 16:
        raise NkiSimError(f"{instr}: {len(srcs)} sources (limit: 1..16)")
    if scales is not None:
        if len(scales) != len(srcs) or any(float(s) != 1.0 for s in scales):
            raise NkiSimError(f"{instr}: scales {scales} (limit: None or all 1.0, one per source)")
    if not unique_indices:
        raise NkiSimError(f"{instr}: unique_indices=False is not supported (limit: True)")
    for i, s in enumerate(srcs):
        check_tensor(instr, f"srcs[{i}]", s)
        if s.buffer is MemoryRegion.psum:
            raise NkiSimError(f"{instr}: srcs[{i}] '{s.name}' is in psum (limit: DMA cannot read PSUM)")
        _elements_match(instr, dst, s)
    _check_compute_addressing(instr, dst, srcs)
    entry = runtime.current().record(
        "dma",
        instr,
        {"dst": dst, **{f"srcs[{i}]": s for i, s in enumerate(srcs)}},
        bytes_moved=dst.size * dst.dtype.itemsize,
    )
    if runtime.current().run.trace_only:
        return _trace_only_dma(instr, dst, srcs)
    if entry and mode is _OOB.skip:  # skipped rows move nothing, as for dma_copy
        share = min(_rows_in_bounds(t) for t in (dst, *srcs))
        entry["bytes"] = int(round(dst.size * dst.dtype.itemsize * share))
    total = np.zeros(dst.shape, np.float32)
    mask_all = None
    for s in srcs:
        vals, mask = _gather(s, mode, instr)
        if vals is None:
            return NkiInstruction(instr)
        if mask is not None:
            m = np.asarray(mask).reshape(dst.shape)
            mask_all = m if mask_all is None else (mask_all & m)
        v = dt.to_f32(vals).astype(np.float32).reshape(dst.shape)
        total += np.where(np.asarray(mask).reshape(dst.shape), v, 0) if mask is not None else v
    _scatter(dst, total, mask_all, mode, instr)
    return NkiInstruction(instr)


def assign(dst: NkiTensor, value) -> None:
    """`dst[...] = value` (NkiTensor.__setitem__): a copy by DMA when HBM is involved, else a Vector copy."""
    core = runtime.current()
    if isinstance(value, NkiTensor):
        _elements_match("setitem", dst, value)
        hbm = not dst.on_chip or not value.on_chip
        core.record(
            "dma" if hbm else "vector",
            "setitem",
            {"dst": dst, "src": value},
            bytes_moved=dst.nbytes if hbm else 0,
        )
        vals = _convert_values(value.read("setitem", "value"), value, dst, "setitem")
        dst.write(vals.reshape(dst.shape), "setitem", "dst")
    else:
        core.record("dma" if not dst.on_chip else "vector", "setitem", {"dst": dst, "value": value})
        dst.write(np.asarray(value, dtype=np.float32 if dst.dtype.is_float else None), "setitem", "dst")


# ------------------------------------------------------------------------------------------------
# Registers
# ------------------------------------------------------------------------------------------------
def register_alloc(x=None) -> VirtualRegister:
    """A new 32-bit register, optionally initialised to int `x` (or the value of register `x`)."""
    reg = VirtualRegister(value_of(x, "register_alloc", "x") if x is not None else None)
    runtime.current().record(
        "sync",
        "register_alloc",
        {"x": x if isinstance(x, int) else None},
        reg_reads=(x,) if isinstance(x, VirtualRegister) else (),
        reg_writes=(reg,),
    )
    return reg


def _check_reg(instr: str, operand: str, r) -> VirtualRegister:
    if not isinstance(r, VirtualRegister):
        raise NkiSimError(f"{instr}: {operand} must be a VirtualRegister (from register_alloc), got {type(r).__name__}")
    return r


def register_move(dst, src):
    """dst register = src (int constant or register)."""
    _check_reg("register_move", "dst", dst)
    if not isinstance(src, (int, VirtualRegister)) or isinstance(src, bool):
        raise NkiSimError(f"register_move: src must be an int or VirtualRegister, got {type(src).__name__}")
    runtime.current().record(
        "sync",
        "register_move",
        {"src": src if isinstance(src, int) else "register"},
        reg_reads=(src,) if isinstance(src, VirtualRegister) else (),
        reg_writes=(dst,),
    )
    dst._set(value_of(src, "register_move", "src"), "register_move")
    dst.origin = src.origin if isinstance(src, VirtualRegister) else None
    return NkiInstruction("register_move")


def _check_scalar_tensor(instr: str, operand: str, t) -> None:
    check_tensor(instr, operand, t)
    if t.size != 1 or t.shape not in ((1,), (1, 1)):
        raise NkiSimError(
            f"{instr}: {operand} '{t.name}' must be a 1-element tensor of shape [1] or [1,1], got {t.shape}"
        )
    if t.buffer is MemoryRegion.psum:
        raise NkiSimError(f"{instr}: {operand} '{t.name}' is in psum (limit: sbuf or hbm)")
    if t.dtype.packed:
        raise NkiSimError(f"{instr}: {operand} dtype {t.dtype.name} (limit: not a packed x4 type)")


def register_load(dst, src):
    """dst register = the value of the 1-element tensor src (SBUF or HBM)."""
    _check_reg("register_load", "dst", dst)
    _check_scalar_tensor("register_load", "src", src)
    runtime.current().record("sync", "register_load", {"src": src}, reg_writes=(dst,))
    dst._set(value_of(src, "register_load", "src"), "register_load")
    dst.origin = origin_of(src)
    return NkiInstruction("register_load")


def register_store(dst, src):
    """Write register src into the 1-element tensor dst (SBUF or HBM)."""
    _check_reg("register_store", "src", src)
    _check_scalar_tensor("register_store", "dst", dst)
    runtime.current().record("sync", "register_store", {"dst": dst}, reg_reads=(src,))
    dst.write(np.array(src._get()).reshape(dst.shape), "register_store", "dst")
    return NkiInstruction("register_store")


# ------------------------------------------------------------------------------------------------
# LNC=2 synchronisation
# ------------------------------------------------------------------------------------------------
def core_barrier(data, cores, engine=engine.gpsimd, name=None):
    """Block until both cores of the LNC=2 pair arrive; orders their accesses to shared HBM `data` (only `data`
    under barrier scope 'data', every shared-HBM tensor under 'all': see races.py)."""
    instr = "core_barrier"
    check_tensor(instr, "data", data)
    if runtime.current().run.num_programs == 1:
        raise NkiSimError(
            f"{instr}: kernel launched with LNC=1 (limit: core_barrier needs kernel[2]); it would deadlock on hardware"
        )
    if data.buffer is not MemoryRegion.shared_hbm:
        raise NkiSimError(f"{instr}: data '{data.name}' is in {data.buffer.name} (limit: shared_hbm)")
    if tuple(cores) != (0, 1):
        raise NkiSimError(f"{instr}: cores {tuple(cores)} (limit: (0, 1))")
    check_enum(instr, "engine", engine, _ENGINE)
    core = runtime.current()
    core.record(engine.name, instr, {"data": data})
    _barrier_wait(core, instr, data._alloc)
    return NkiInstruction(instr)


def _barrier_wait(core, instr: str, alloc) -> None:
    """Meet the partner at a core_barrier on `alloc`; the first core through checks the closing epoch for races.

    Barrier scope 'data': the epoch closed is that of `alloc` alone (accesses to other tensors stay unordered);
    both cores must name the same allocation. Scope 'all': every shared-HBM access of the epoch."""
    from moegen.sim import races

    run = core.run
    scoped = run.barrier_scope == "data"
    with run.lock:
        run.barrier_data[core.program_id] = alloc
    try:
        idx = run.barrier.wait(timeout=_SENTINEL_TIMEOUT)
    except Exception:
        raise NkiSimError(
            f"{instr}: core {core.program_id} waited for its partner, which never arrived or failed "
            "(limit: both cores run identical control flow)"
        ) from None
    key = id(alloc) if scoped else None
    epoch = core.barriers_passed.get(key, 0)
    if idx == 0:
        met = [run.barrier_data[p] for p in sorted(run.barrier_data)]
        if scoped and any(m is not alloc for m in met):
            run.failed = True
            raise NkiSimError(
                f"{instr}: the cores met at barriers on different tensors ("
                + ", ".join(f"core {p}: '{m.name}'" for p, m in enumerate(met))
                + ") (limit: both cores call core_barrier on the same data, which is what it orders)"
            )
        races.check_epoch(run, epoch, alloc if scoped else None)
    try:
        run.barrier.wait(timeout=_SENTINEL_TIMEOUT)
    except Exception:
        raise NkiSimError(f"{instr}: the partner core failed (see its error)") from None
    core.barriers_passed[key] = epoch + 1


def _receive(run, in_q: queue.Queue):
    """The partner's payload, or None when it does not come (the partner failed: its barrier is aborted)."""
    deadline = time.monotonic() + _SENTINEL_TIMEOUT
    while time.monotonic() < deadline:
        try:
            return in_q.get(timeout=0.2)
        except queue.Empty:
            if run.barrier is None or run.barrier.broken:
                return None
    return None


def sendrecv(src, dst, send_to_rank, recv_from_rank, pipe_id, dma_engine=dma_engine.dma, name=None):
    """Send SBUF `src` to core `send_to_rank` and receive into SBUF `dst` from `recv_from_rank` (LNC=2)."""
    instr = "sendrecv"
    check_tensor(instr, "src", src)
    check_tensor(instr, "dst", dst)
    check_buffer(instr, "src", src, ("sbuf",))
    check_buffer(instr, "dst", dst, ("sbuf",))
    dma_eng = check_enum(instr, "dma_engine", dma_engine, _DMA_ENGINE)
    if dma_eng is _DMA_ENGINE.gpsimd_dma:
        # sendrecv page: gpsimd_dma moves at most 1024 / 512 / 256 bytes per partition for 32- / 16- /
        # 8-bit types (256 elements)
        limit = {4: 1024, 2: 512, 1: 256}.get(src.dtype.itemsize, 1024)
        per_part = src.free_size * src.dtype.itemsize
        if per_part > limit:
            raise NkiSimError(
                f"{instr}: src '{src.name}' moves {per_part} bytes per partition with dma_engine=gpsimd_dma "
                f"(limit: {limit} bytes for {8 * src.dtype.itemsize}-bit types)"
            )
    core = runtime.current()
    run = core.run
    if run.num_programs == 1:
        raise NkiSimError(f"{instr}: kernel launched with LNC=1 (limit: sendrecv needs kernel[2])")
    for nm, r in (("send_to_rank", send_to_rank), ("recv_from_rank", recv_from_rank)):
        if r not in range(run.num_programs) or r == core.program_id:
            raise NkiSimError(f"{instr}: {nm} {r} (limit: the other core's rank, 0..{run.num_programs - 1})")
    if src.shape != dst.shape or src.dtype != dst.dtype:
        raise NkiSimError(
            f"{instr}: src {src.shape} {src.dtype.name} and dst {dst.shape} {dst.dtype.name} must "
            "have equal shape and dtype"
        )
    core.record("dma", instr, {"src": src, "dst": dst, "pipe_id": pipe_id}, bytes_moved=src.nbytes)
    payload = src.read(instr, "src")
    with run.lock:
        out_q = run.pipes.setdefault((core.program_id, send_to_rank, pipe_id), queue.Queue())
        in_q = run.pipes.setdefault((recv_from_rank, core.program_id, pipe_id), queue.Queue())
    out_q.put(payload)
    got = _receive(run, in_q)
    if got is None:
        raise NkiSimError(
            f"{instr}: core {core.program_id} received nothing from rank {recv_from_rank} on pipe "
            f"{pipe_id} (limit: both cores call sendrecv)"
        )
    if got.shape != dst.shape:
        raise NkiSimError(f"{instr}: received shape {got.shape} does not match dst {dst.shape}")
    dst.write(got, instr, "dst")
    # No HBM fence: the sendrecv page orders only the exchange itself (its SBUF operands, and the
    # operations of one pipe_id); unlike core_barrier it does not say that either core's earlier HBM
    # writes are complete, so the race check's epoch does not advance here.
    return NkiInstruction(instr)
