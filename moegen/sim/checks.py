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
from moegen.sim.tensor import NkiTensor

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


def check_target(instr: str, targets: Iterable[str]) -> None:
    """Refuse an instruction on a target that does not have it (e.g. trn3-only on trn2)."""
    t = runtime.current().target
    ok = tuple(targets)
    if t not in ok:
        raise NkiSimError(f"{instr}: not available on {t} (limit: {' or '.join(ok)} only)")
