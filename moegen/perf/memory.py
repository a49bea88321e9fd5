"""Dependency tracking on memory regions: which earlier instruction an access must wait for.

Every trace region is (mem key, partitions [p0, p1), bytes [b0, b1)). Accesses are kept per (mem key,
address bucket) so a lookup scans only nearby accesses: reads look for overlapping writes (read after
write), writes for overlapping writes and reads (write after write, write after read). A write that
covers earlier accesses replaces them (anything later that would wait for those waits for it), and a
region accessed again replaces its own entry, so the lists stay short. Memory no instruction writes
needs no tracking at all (read-only weights and inputs).
"""

from __future__ import annotations

ON_CHIP_BUCKET_SHIFT = 9  # 512-byte buckets of the per-partition address space
HBM_BUCKET_SHIFT = 20  # 1 MiB buckets of an HBM allocation
MAX_BUCKETS = 64  # a wider span is tracked in one coarse bucket per allocation


class Access:
    """One tracked access: region and the time it completes, with the instruction that made it."""

    __slots__ = ("p0", "p1", "b0", "b1", "done", "instr")

    def __init__(self, p0: int, p1: int, b0: int, b1: int, done: float, instr: int):
        self.p0, self.p1, self.b0, self.b1, self.done, self.instr = p0, p1, b0, b1, done, instr

    def overlaps(self, p0: int, p1: int, b0: int, b1: int) -> bool:
        return self.b0 < b1 and b0 < self.b1 and self.p0 < p1 and p0 < self.p1

    def within(self, p0: int, p1: int, b0: int, b1: int) -> bool:
        return p0 <= self.p0 and self.p1 <= p1 and b0 <= self.b0 and self.b1 <= b1


def _buckets(mem: str, b0: int, b1: int) -> list:
    shift = HBM_BUCKET_SHIFT if mem.startswith("hbm") else ON_CHIP_BUCKET_SHIFT
    lo, hi = b0 >> shift, (max(b1, b0 + 1) - 1) >> shift
    if hi - lo >= MAX_BUCKETS:
        return [(mem, -1)]
    return [(mem, b) for b in range(lo, hi + 1)]


class MemoryTracker:
    """Last writers and readers of every tracked byte range."""

    def __init__(self, written_mems: set):
        self.written = written_mems  # mem keys some instruction writes (others: read-only, untracked)
        self.writes: dict = {}  # (mem, bucket) -> list[Access]
        self.reads: dict = {}
        self.coarse: set = set()  # mems with a coarse (whole-allocation) bucket in use

    def _keys(self, mem: str, b0: int, b1: int) -> list:
        keys = _buckets(mem, b0, b1)
        if keys[0][1] == -1:
            self.coarse.add(mem)
        elif mem in self.coarse:
            keys = keys + [(mem, -1)]
        return keys

    def wait_for(self, reads: list, writes: list) -> tuple[float, int, str, str]:
        """(time the instruction may start, producer instruction index or -1, kind, mem) over all its
        read-after-write, write-after-write and write-after-read dependencies."""
        best, who, kind, where = 0.0, -1, "", ""
        for r in reads:
            mem = r["mem"]
            if mem not in self.written:
                continue
            (p0, p1), (b0, b1) = r["parts"], r["bytes"]
            keys = self._keys(mem, b0, b1) if mem not in self.coarse else _all_keys(self.writes, mem)
            for key in keys:
                for a in self.writes.get(key, ()):
                    if a.done > best and a.overlaps(p0, p1, b0, b1):
                        best, who, kind, where = a.done, a.instr, "RAW", mem
        for w in writes:
            mem = w["mem"]
            (p0, p1), (b0, b1) = w["parts"], w["bytes"]
            keys = self._keys(mem, b0, b1) if mem not in self.coarse else _all_keys(self.writes, mem, self.reads)
            for key in keys:
                for a in self.writes.get(key, ()):
                    if a.done > best and a.overlaps(p0, p1, b0, b1):
                        best, who, kind, where = a.done, a.instr, "WAW", mem
                for a in self.reads.get(key, ()):
                    if a.done > best and a.overlaps(p0, p1, b0, b1):
                        best, who, kind, where = a.done, a.instr, "WAR", mem
        return best, who, kind, where

    def record(self, reads: list, writes: list, done: float, instr: int) -> None:
        """Note the accesses of an instruction that completes at `done`."""
        for r in reads:
            mem = r["mem"]
            if mem not in self.written:
                continue
            (p0, p1), (b0, b1) = r["parts"], r["bytes"]
            for key in self._keys(mem, b0, b1):
                lst = self.reads.setdefault(key, [])
                for a in lst:
                    if a.p0 == p0 and a.p1 == p1 and a.b0 == b0 and a.b1 == b1:
                        if done > a.done:
                            a.done, a.instr = done, instr
                        break
                else:
                    lst.append(Access(p0, p1, b0, b1, done, instr))
        for w in writes:
            mem = w["mem"]
            (p0, p1), (b0, b1) = w["parts"], w["bytes"]
            for key in self._keys(mem, b0, b1):
                lst = self.writes.get(key)
                if lst:
                    lst[:] = [a for a in lst if not a.within(p0, p1, b0, b1)]
                else:
                    lst = self.writes.setdefault(key, [])
                lst.append(Access(p0, p1, b0, b1, done, instr))
                rl = self.reads.get(key)
                if rl:
                    rl[:] = [a for a in rl if not a.within(p0, p1, b0, b1)]


def _all_keys(table: dict, mem: str, other: dict | None = None) -> list:
    """Every bucket of `mem` in use (a coarse access overlaps them all)."""
    keys = {k for k in table if k[0] == mem}
    if other is not None:
        keys |= {k for k in other if k[0] == mem}
    return sorted(keys, key=lambda k: k[1])
