"""LNC=2 race detection on shared HBM (beyond the official simulator).

Every access to a shared_hbm tensor in an LNC>1 run is logged with the core's epoch (the number of
core_barrier / sendrecv synchronisations it has passed). Both cores pass each synchronisation
together, so accesses in the same epoch by different cores are unordered. If one core writes bytes
that the other core reads or writes in the same epoch, that is a race: reported as an NkiSimError
naming both instructions. Checked when the epoch closes (at the barrier) and at the end of the run.
"""

from __future__ import annotations

import numpy as np

from moegen.sim.errors import NkiSimError


def _byte_range(t, snapshot) -> tuple[int, int]:
    isz = t.dtype.itemsize
    if snapshot is not None:
        idx = snapshot[0]
        return int(idx.min()) * isz, int(idx.max()) * isz + isz - 1
    lo, hi = t._extent(t.offset)
    return lo * isz, hi * isz + isz - 1


def _byte_set(t, snapshot) -> np.ndarray:
    isz = t.dtype.itemsize
    if snapshot is not None:
        idx, valid = snapshot
        if valid is not None:
            idx = idx[valid]
    else:
        idx, _ = t._flat_index("race check")
    idx = np.unique(idx.reshape(-1))
    if isz == 1:
        return idx
    return np.unique((idx[:, None] * isz + np.arange(isz)).reshape(-1))


def _conflict(a, b) -> bool:
    _, _, ka, ta, sa, _ = a
    _, _, kb, tb, sb, _ = b
    if ta._alloc is not tb._alloc or (ka == "r" and kb == "r"):
        return False
    alo, ahi = _byte_range(ta, sa)
    blo, bhi = _byte_range(tb, sb)
    if ahi < blo or bhi < alo:
        return False
    return np.intersect1d(_byte_set(ta, sa), _byte_set(tb, sb), assume_unique=True).size > 0


def check_epoch(run, epoch: int | None = None) -> None:
    """Check the logged accesses (of `epoch`, or all) for cross-core conflicts; clear them."""
    with run.lock:
        log = run.access_log
        if epoch is None:
            entries, rest = log, []
        else:
            entries = [e for e in log if e[0] == epoch]
            rest = [e for e in log if e[0] != epoch]
        run.access_log = rest
    by_core: dict[tuple, list] = {}
    for e in entries:
        by_core.setdefault((e[0], e[1]), []).append(e)
    for (ep, c), accs in by_core.items():
        others = [x for (ep2, c2), xs in by_core.items() if ep2 == ep and c2 > c for x in xs]
        if not others:
            continue
        for a in accs:
            for b in others:
                if _conflict(a, b):
                    run.failed = True
                    ka = "writes" if a[2] == "w" else "reads"
                    kb = "writes" if b[2] == "w" else "reads"
                    raise NkiSimError(
                        f"LNC race on shared HBM tensor '{a[3]._alloc.name}' in barrier epoch {ep}: "
                        f"core {a[1]} "
                        f"{ka} it in {a[5]} and core {b[1]} {kb} overlapping bytes in {b[5]}, with no "
                        "core_barrier or sendrecv between them (limit: one core writes bytes the other "
                        "accesses "
                        "only across a barrier)"
                    )
