"""LNC=2 race detection on shared HBM (beyond the official simulator).

Every access to a shared_hbm tensor in an LNC>1 run is logged with the core's epoch: the number of core_barriers
the core has passed that order the access. Under barrier scope 'data' (MOEGEN_SIM_BARRIER_SCOPE=data, the faithful
reading, docs/sim_audit.md #23) those are the barriers whose `data` is the tensor's allocation: nki.isa.core_barrier
orders "the shared data that all cores need to synchronize on" and blocks only its own engine. Under scope 'all'
(the default until templates/cte.py.j2 is fixed, see #23) every barrier orders every shared-HBM tensor. Both cores
pass each barrier together, so accesses to one allocation in the same epoch by different cores are unordered. If one
core writes bytes that the other core reads or writes in the same epoch, that is a race: reported as an
NkiSimError naming both instructions. Checked when the epoch closes (at a barrier) and at the end of the run.
sendrecv orders nothing in HBM.
"""

from __future__ import annotations

import numpy as np

from moegen.sim.errors import NkiSimError


def _byte_range(t, snapshot) -> tuple[int, int]:
    """First and last byte an access touched; snapshot = (resolved offset, rows or None) or None."""
    isz = t.dtype.itemsize
    if snapshot is not None and snapshot[1] is not None:
        idx, valid = t._index_at(*snapshot)
        idx = idx[valid]
        if not idx.size:
            return 1, 0  # nothing in bounds: an empty range
        return int(idx.min()) * isz, int(idx.max()) * isz + isz - 1
    lo, hi = t._extent(t.offset if snapshot is None else snapshot[0])
    return lo * isz, hi * isz + isz - 1


def _injective(shape, strides) -> bool:
    """True if no two elements of a strided view share an offset (checked conservatively: dims sorted by
    |stride| each step past the extent of the smaller ones)."""
    extent = 0
    for n, s in sorted(((n, abs(s)) for n, s in zip(shape, strides) if n > 1), key=lambda x: x[1]):
        if s <= extent:
            return False
        extent += (n - 1) * s
    return True


def _elem_set(t, snapshot) -> np.ndarray:
    """Distinct storage element indices (in the view's dtype) an access touched."""
    if snapshot is not None:
        idx, valid = t._index_at(*snapshot)
        if valid is not None:
            return np.unique(idx[valid].reshape(-1))
    else:
        idx, _ = t._flat_index("race check")
    idx = idx.reshape(-1)
    return idx if _injective(t.shape, t.strides) else np.unique(idx)


def _byte_set(t, snapshot) -> np.ndarray:
    isz = t.dtype.itemsize
    idx = _elem_set(t, snapshot)
    if isz == 1:
        return idx
    return (idx[:, None] * isz + np.arange(isz)).reshape(-1)  # distinct: elements do not overlap


def _overlapping_pairs(es: list, ranges: list) -> list:
    """Index pairs (i, j) of accesses by different cores, at least one a write, whose byte ranges
    overlap (a sweep over the ranges sorted by start)."""
    order = sorted(range(len(es)), key=lambda i: ranges[i][0])
    active: list[int] = []
    pairs = []
    for i in order:
        lo = ranges[i][0]
        active = [j for j in active if ranges[j][1] >= lo]
        for j in active:
            a, b = es[i], es[j]
            if a[1] != b[1] and (a[2] == "w" or b[2] == "w"):
                pairs.append((j, i) if b[1] < a[1] else (i, j))
        active.append(i)
    return pairs


def _cores_share_a_written_byte(es: list) -> bool:
    """True if one core writes a byte the other core reads or writes (accesses of one allocation in one epoch).
    Linear in the accessed bytes: each core's written and accessed elements marked in masks over the allocation,
    then two intersections (the pairwise search in check_epoch, which names the two instructions, runs only when
    this finds a conflict)."""
    alloc = es[0][3]._alloc
    isz = alloc.dtype.itemsize
    same_unit = all(e[3].dtype.itemsize == isz for e in es)
    size = int(np.prod(alloc.shape)) * (1 if same_unit else isz)
    marks = {}  # (core, "w" | "a") -> mask over the allocation's elements (or bytes)
    for e in es:
        index = _elem_set(e[3], e[4]) if same_unit else _byte_set(e[3], e[4])
        index = index[(index >= 0) & (index < size)]
        for kind in ("w", "a") if e[2] == "w" else ("a",):
            mask = marks.get((e[1], kind))
            if mask is None:
                mask = marks[(e[1], kind)] = np.zeros(size, dtype=bool)
            mask[index] = True
    cores = sorted({core for core, _ in marks})
    return any(
        (marks.get((a, "w")) is not None) and bool(np.any(marks[(a, "w")] & marks[(b, "a")]))
        for a in cores
        for b in cores
        if a != b
    )


def check_epoch(run, epoch: int | None = None, alloc=None) -> None:
    """Check the logged accesses (of `epoch` of allocation `alloc`, of `epoch` of every allocation when
    `alloc` is None, or all when `epoch` is None) for cross-core conflicts; clear them.

    Accesses are grouped by (epoch, allocation); only allocations that some core wrote and that both
    cores touched are examined, candidate pairs come from overlapping byte ranges, and only those are
    compared byte by byte (strided views may interleave without sharing a byte)."""
    with run.lock:
        log = run.access_log
        if epoch is None:
            entries, rest = log, []
        else:
            entries, rest = [], []
            for e in log:
                mine = e[0] == epoch and (alloc is None or e[3]._alloc is alloc)
                (entries if mine else rest).append(e)
        run.access_log = rest
    groups: dict[tuple, list] = {}
    for e in entries:
        groups.setdefault((e[0], id(e[3]._alloc)), []).append(e)
    for (ep, _), es in groups.items():
        if len({e[1] for e in es}) < 2 or not any(e[2] == "w" for e in es):
            continue
        if not _cores_share_a_written_byte(es):
            continue  # the common case, checked on the union of each core's accesses
        ranges = [_byte_range(e[3], e[4]) for e in es]
        pairs = _overlapping_pairs(es, ranges)
        if not pairs:
            continue
        sets: dict[tuple, np.ndarray] = {}
        for i, j in pairs:
            # same itemsize: elements overlap iff their indices are equal (no byte expansion)
            unit = "elem" if es[i][3].dtype.itemsize == es[j][3].dtype.itemsize else "byte"
            fn = _elem_set if unit == "elem" else _byte_set
            for k in (i, j):
                if (k, unit) not in sets:
                    sets[(k, unit)] = fn(es[k][3], es[k][4])
            if np.intersect1d(sets[(i, unit)], sets[(j, unit)], assume_unique=True).size:
                a, b = es[i], es[j]
                run.failed = True
                ka = "writes" if a[2] == "w" else "reads"
                kb = "writes" if b[2] == "w" else "reads"
                name = a[3]._alloc.name
                site = f" (allocated at {a[3]._alloc.site})" if a[3]._alloc.site else ""
                if run.barrier_scope == "data":
                    between = f"with no core_barrier(data={name}) between them"
                    limit = (
                        f"bytes one core writes, the other accesses only across a core_barrier whose data is "
                        f"'{name}': a barrier orders only its data tensor"
                    )
                else:
                    between = "with no core_barrier between them"
                    limit = "one core writes bytes the other accesses only across a barrier"
                raise NkiSimError(
                    f"LNC race on shared HBM tensor '{name}'{site} in barrier epoch {ep}: core {a[1]} {ka} it in "
                    f"{a[5]} and core {b[1]} {kb} overlapping bytes in {b[5]}, {between} (limit: {limit})"
                )
