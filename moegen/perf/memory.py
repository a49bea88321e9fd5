"""Dependency tracking on memory regions: which earlier instruction an access must wait for.

Every trace region is (mem key, partitions [p0, p1), bytes [b0, b1)). Accesses are kept per (mem key,
address bucket) so a lookup scans only nearby accesses: reads look for overlapping writes (read after
write), writes for overlapping writes and reads (write after write, write after read). A write that
covers earlier accesses replaces them (anything later that would wait for those waits for it), and a
region accessed again replaces its own entry, so the lists stay short. Memory no instruction writes
needs no tracking at all (read-only weights and inputs).

An access is a list [p0, p1, b0, b1, done, instr, pitch, row_bytes, rows] (done: the time it
completes; instr: trace index; pitch 0 unless the region is `rows` runs of `row_bytes` every `pitch`
bytes, as a strided HBM view is: two such regions of one pitch overlap only where their rows do).
"""

from __future__ import annotations

ON_CHIP_BUCKET_SHIFT = 12  # 4 KiB buckets of the per-partition address space
HBM_BUCKET_SHIFT = 20  # 1 MiB buckets of an HBM allocation
MAX_BUCKETS = 64  # a wider span is tracked in one coarse bucket per allocation
COARSE = -1


class MemoryTracker:
    """Last writers and readers of every tracked byte range."""

    def __init__(self, written_mems: set):
        self.written = written_mems  # mem keys some instruction writes (others: read-only, untracked)
        self.writes: dict = {}  # (mem, bucket) -> list of accesses
        self.reads: dict = {}
        self.buckets: dict = {}  # mem -> set of buckets in use (for coarse accesses)
        self.coarse: set = set()  # mems with a coarse (whole-allocation) access

    def prepare(self, regions: list, skip_read_only: bool) -> list:
        """[(keys, p0, p1, b0, b1)] of the tracked regions."""
        out = []
        for r in regions:
            mem = r["mem"]
            if skip_read_only and mem not in self.written:
                continue
            (p0, p1), (b0, b1) = r["parts"], r["bytes"]
            shift = HBM_BUCKET_SHIFT if mem[0] == "h" else ON_CHIP_BUCKET_SHIFT
            lo, hi = b0 >> shift, (max(b1, b0 + 1) - 1) >> shift
            if hi - lo >= MAX_BUCKETS:
                self.coarse.add(mem)
                keys = [(mem, b) for b in self.buckets.get(mem, ())] + [(mem, COARSE)]
                self.buckets.setdefault(mem, set()).add(COARSE)
            else:
                keys = [(mem, b) for b in range(lo, hi + 1)]
                used = self.buckets.setdefault(mem, set())
                used.update(range(lo, hi + 1))
                if mem in self.coarse:
                    keys.append((mem, COARSE))
            out.append((keys, p0, p1, b0, b1, r.get("pitch", 0), r.get("row_bytes", 0), r.get("rows", 0)))
        return out

    def wait_for(self, reads: list, writes: list) -> tuple[float, int, str, str]:
        """(time the instruction may start, producer instruction index or -1, kind, mem) over all its
        read-after-write, write-after-write and write-after-read dependencies (prepared regions)."""
        best, who, kind, where = 0.0, -1, "", ""
        wt, rt = self.writes, self.reads
        for region in reads:
            keys, p0, p1, b0, b1 = region[:5]
            for key in keys:
                for a in wt.get(key, ()):
                    if a[4] > best and a[2] < b1 and b0 < a[3] and a[0] < p1 and p0 < a[1] and _rows_meet(a, region):
                        best, who, kind, where = a[4], a[5], "RAW", key[0]
        for region in writes:
            keys, p0, p1, b0, b1 = region[:5]
            for key in keys:
                for a in wt.get(key, ()):
                    if a[4] > best and a[2] < b1 and b0 < a[3] and a[0] < p1 and p0 < a[1] and _rows_meet(a, region):
                        best, who, kind, where = a[4], a[5], "WAW", key[0]
                for a in rt.get(key, ()):
                    if a[4] > best and a[2] < b1 and b0 < a[3] and a[0] < p1 and p0 < a[1] and _rows_meet(a, region):
                        best, who, kind, where = a[4], a[5], "WAR", key[0]
        return best, who, kind, where

    def record(self, reads: list, writes: list, done: float, instr: int) -> None:
        """Note the accesses (prepared regions) of an instruction that completes at `done`."""
        rt, wt = self.reads, self.writes
        for keys, p0, p1, b0, b1, pitch, row, rows in reads:
            for key in keys:
                lst = rt.get(key)
                if lst is None:
                    rt[key] = [[p0, p1, b0, b1, done, instr, pitch, row, rows]]
                    continue
                for a in lst:
                    if a[2] == b0 and a[3] == b1 and a[0] == p0 and a[1] == p1 and a[6] == pitch and a[7] == row:
                        if done > a[4]:
                            a[4], a[5] = done, instr
                        break
                else:
                    lst.append([p0, p1, b0, b1, done, instr, pitch, row, rows])
        for keys, p0, p1, b0, b1, pitch, row, rows in writes:
            entry = [p0, p1, b0, b1, done, instr, pitch, row, rows]
            for key in keys:
                lst = wt.get(key)
                if lst:
                    if not pitch:  # a row-structured write does not cover its whole span
                        lst[:] = [a for a in lst if not (b0 <= a[2] and a[3] <= b1 and p0 <= a[0] and a[1] <= p1)]
                    lst.append(entry)
                else:
                    wt[key] = [entry]
                lst = rt.get(key)
                if lst and not pitch:
                    lst[:] = [a for a in lst if not (b0 <= a[2] and a[3] <= b1 and p0 <= a[0] and a[1] <= p1)]


def _rows_meet(a: list, region: tuple) -> bool:
    """Whether two accesses whose spans overlap share a byte, when both are rows of one pitch (else True).
    Rows i of a and j of b meet when (j - i) * pitch lies in (-row_b - d, row_a - d), d = b0 - a0."""
    pitch = a[6]
    if not pitch or region[5] != pitch:
        return True
    d = region[3] - a[2]
    row_a, row_b = a[7], region[6]
    k_lo = (-row_b - d) // pitch + 1
    k_hi = -((d - row_a) // pitch) - 1
    return max(k_lo, -(a[8] - 1)) <= min(k_hi, region[7] - 1)
