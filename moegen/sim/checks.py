"""Operand checks shared by instructions; each raises NkiSimError naming instruction, operand, limit, value.

Partition rules (Trainium architecture guide): an on-chip operand spans at most 128 contiguous
partitions (no partition striding), and its start partition depends on how many it spans:
65-128 partitions start at 0; 33-64 at 0 or 64; 1-32 at 0, 32, 64 or 96. These apply to compute
engines (Vector, Scalar, GpSimd, Tensor); DMA addresses SBUF freely.
"""

from __future__ import annotations

from collections.abc import Iterable

from moegen.sim import runtime
from moegen.sim.errors import NkiSimError
from moegen.sim.tensor import MemoryRegion, NkiTensor

PMAX = runtime.NUM_PARTITIONS


def _label(instr: str, operand: str, t) -> str:
    name = getattr(t, "name", "")
    return f"{instr} {operand}" + (f" '{name}'" if name else "")


def check_tensor(instr: str, operand: str, t) -> NkiTensor:
    """`t` must be an NkiTensor."""
    if not isinstance(t, NkiTensor):
        raise NkiSimError(f"{instr} {operand}: expected an NkiTensor, got {type(t).__name__}")
    return t


def allowed_starts(nparts: int) -> tuple[int, ...]:
    """Legal start partitions for an operand spanning `nparts` partitions."""
    if nparts > 64:
        return (0,)
    if nparts > 32:
        return (0, 64)
    return (0, 32, 64, 96)


def check_partition(instr: str, operand: str, t: NkiTensor, start_rule: bool = True) -> None:
    """On-chip operand: partition dim <= 128, contiguous partitions, legal start partition."""
    check_tensor(instr, operand, t)
    if not t.on_chip:
        return
    n = t.shape[0]
    if n > PMAX:
        raise NkiSimError(f"{_label(instr, operand, t)} partition dimension {n} exceeds maximum {PMAX}")
    if t._dyn or t._vec is not None:
        return
    step = t.partition_step()
    if step != 1:
        raise NkiSimError(
            f"{_label(instr, operand, t)} must access contiguous partitions (limit: partition step 1), "
            f"got partition stride {t.strides[0]} elements"
        )
    if start_rule:
        start = t.partition_start()
        ok = allowed_starts(n)
        if start not in ok:
            raise NkiSimError(
                f"{_label(instr, operand, t)} spans {n} partitions starting at partition {start} "
                f"(limit: start in {ok} for {n} partitions)"
            )


def check_buffer(instr: str, operand: str, t: NkiTensor, allowed: Iterable[str] = ("sbuf", "psum")) -> None:
    """`t` must live in one of the `allowed` memory regions (sbuf, psum, private_hbm, shared_hbm, hbm)."""
    check_tensor(instr, operand, t)
    names = set(allowed)
    if "hbm" in names:
        names |= {"private_hbm", "shared_hbm"}
    if t.buffer.name not in names:
        raise NkiSimError(
            f"{_label(instr, operand, t)} is in {t.buffer.name} (limit: {' or '.join(sorted(set(allowed)))})"
        )


def check_on_chip(instr: str, operand: str, t: NkiTensor) -> None:
    """Only DMA touches HBM: compute operands must be SBUF or PSUM."""
    check_tensor(instr, operand, t)
    if t.buffer not in (MemoryRegion.sbuf, MemoryRegion.psum):
        raise NkiSimError(
            f"{_label(instr, operand, t)} is in {t.buffer.name}: only DMA instructions access HBM (limit: sbuf or psum)"
        )


def check_dtype(instr: str, operand: str, t: NkiTensor, allowed: Iterable[str]) -> None:
    """`t.dtype` must be one of `allowed` (dtype names)."""
    names = tuple(str(a) for a in allowed)
    if t.dtype.name not in names:
        raise NkiSimError(f"{_label(instr, operand, t)} dtype {t.dtype.name} not supported (limit: {', '.join(names)})")


def check_same_shape(instr: str, a_name: str, a: NkiTensor, b_name: str, b: NkiTensor) -> None:
    if tuple(a.shape) != tuple(b.shape):
        raise NkiSimError(f"{instr}: {a_name} shape {a.shape} must equal {b_name} shape {b.shape}")


def check_same_partitions_and_free(instr: str, a_name: str, a: NkiTensor, b_name: str, b: NkiTensor) -> None:
    """Same partition count and same number of elements per partition (shapes may differ)."""
    if a.shape[0] != b.shape[0] or a.free_size != b.free_size:
        raise NkiSimError(
            f"{instr}: {a_name} {a.shape} and {b_name} {b.shape} must have the same partition count "
            f"and elements per partition"
        )


def check_target(instr: str, targets: Iterable[str]) -> None:
    """Refuse an instruction on a target that does not have it (e.g. trn3-only on trn2)."""
    t = runtime.current().target
    ok = tuple(targets)
    if t not in ok:
        raise NkiSimError(f"{instr}: not available on {t} (limit: {' or '.join(ok)} only)")


def check_not_both_psum(instr: str, a_name: str, a: NkiTensor, b_name: str, b: NkiTensor) -> None:
    if a.buffer is MemoryRegion.psum and b.buffer is MemoryRegion.psum:
        raise NkiSimError(f"{instr}: {a_name} and {b_name} cannot both be in PSUM (limit: at most one PSUM input)")


def check_compute_operand(instr: str, operand: str, t: NkiTensor, allowed=("sbuf", "psum")) -> None:
    """Common check for a compute-engine operand: on chip, allowed buffer, partition rules."""
    check_on_chip(instr, operand, t)
    check_buffer(instr, operand, t, allowed)
    check_partition(instr, operand, t)
