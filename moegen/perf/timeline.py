"""The timeline model: schedule a simulator trace on in-order engine queues with memory dependencies.

Each core has in-order queues: TensorE, VectorE, ScalarE (activation), GpSimd, the sync engine (register
and loop bookkeeping), and `dma_queues` DMA queues (each DMA goes to the queue that frees first). An instruction
starts when its queue is free and every instruction it depends on (read-after-write, write-after-write,
write-after-read on overlapping bytes, `moegen.perf.memory`) has completed. Compute instructions occupy
their engine for their cost in cycles and complete `latency_cycles` later; a DMA waits its fixed
latency, then moves its bytes through the core's DMA bandwidth (a calendar shared by its queues), no
faster than the core's share of its HBM stack (the two cores of an LNC=2 pair split the stack); a DMA that
moves no bytes (every row skipped) pays only the fixed latency. A `sendrecv` is a DMA paired with the peer
core's sendrecv of the same position in program order: it waits for its own operands, the peer's, and the
previous exchange on its `pipe_id`, and orders nothing else. `core_barrier` fences every queue of both cores
at the later arrival. Times are in ns.

Registers are memory too (a 'reg<core>' region per register): an instruction whose address or bound
comes from a register or a tile (`addr_reads`: a DMA with `scalar_offset=reg` or a tile offset, an
indirect DMA's index vector, a loop's register trip count) starts after the instruction that wrote it
completes; those address reads happen at issue, so a later write to them waits only for that issue.
Register instructions and runtime-loop bookkeeping (one per loop entry and per iteration) occupy the
sync queue for `sync_instruction_ns` each.
"""

from __future__ import annotations

import bisect
import heapq
from dataclasses import dataclass, field

from moegen.perf.costs import Costs
from moegen.perf.memory import MemoryTracker

COMPUTE_ENGINES = ("tensor", "vector", "scalar", "gpsimd")
SYNC_OPCODES = ("core_barrier", "sendrecv")
# opcodes whose engine streams each element twice (two tensor inputs from SBUF), or more
PASSES = {"tensor_tensor": 2, "scalar_tensor_tensor": 2, "tensor_tensor_scan": 2, "reciprocal": 8}
# opcodes with the VectorE performance mode for 2-byte float SBUF operands
FAST_BF16 = ("tensor_copy", "tensor_scalar", "memset", "setitem")
GPSIMD_FIXED = {"iota": 150}


@dataclass
class Event:
    """One scheduled instruction (for the Perfetto timeline and the stall list)."""

    core: int
    track: str  # 'tensor' | 'vector' | 'scalar' | 'gpsimd' | 'sync' | 'dma<q>'
    opcode: str
    line: str
    start: float
    end: float


@dataclass
class Timeline:
    """Result of scheduling one trace."""

    end_ns: float
    events: list
    busy_ns: dict  # (core, engine) -> ns the engine was occupied ('dma': union of the data-movement intervals)
    macs: int
    ideal_tensor_ns: float  # time of the issued matmuls at peak rate (their dtypes)
    hbm_bytes: int
    stalls: list  # the longest stalls: dicts
    cores: int
    instructions: int
    touched_hbm: dict = field(default_factory=dict)  # mem -> list of [b0, b1) byte ranges touched


class Calendar:
    """Busy intervals of a shared resource (bandwidth), merged and sorted; `book` finds the earliest gap."""

    def __init__(self):
        self.starts: list = []
        self.ends: list = []

    def earliest(self, t: float, dur: float) -> float:
        starts, ends = self.starts, self.ends
        i = bisect.bisect_right(ends, t)
        while i < len(starts):
            if starts[i] >= t + dur:
                return t
            t = max(t, ends[i])
            i += 1
        return t

    def book(self, s: float, e: float) -> None:
        starts, ends = self.starts, self.ends
        i = bisect.bisect_left(ends, s)
        j = i
        while j < len(starts) and starts[j] <= e:
            s = min(s, starts[j])
            e = max(e, ends[j])
            j += 1
        starts[i:j] = [s]
        ends[i:j] = [e]


def _union_length(intervals: list) -> float:
    """Total length covered by (start, end) intervals."""
    total, cur_s, cur_e = 0.0, None, None
    for s, e in sorted(intervals):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        total += cur_e - cur_s
    return total


def _free(shape) -> int:
    n = 1
    for d in shape[1:]:
        n *= d
    return n


def _tensors(ops: dict) -> list:
    return [v for v in ops.values() if type(v) is dict and "shape" in v]


def matmul_shape(ops: dict) -> tuple[int, int, int, bool]:
    """(K, M, N, double_row) of an nc_matmul record."""
    st, mv = ops["stationary"], ops["moving"]
    k = st["shape"][0]
    double = len(st["shape"]) == 3 and st["shape"][1] == 2 and st["dtype"].startswith("float8")
    m = st["shape"][2] if double else _free(st["shape"])
    n = mv["shape"][2] if double else _free(mv["shape"])
    if st["dtype"].endswith("_x4"):  # nc_matmul_mx: each element packs 4 contraction values (MXFP8 x4)
        k *= 4
    return (2 * k if double else k), m, n, double


def compute_cycles(rec: dict, costs: Costs) -> tuple[float, int, float]:
    """(engine cycles, MACs, ideal TensorE ns) of a compute instruction."""
    opcode, ops = rec["opcode"], rec["operands"]
    if opcode.startswith("nc_matmul") and "stationary" in ops:
        k, m, n, double = matmul_shape(ops)
        fp32 = "float32" in (ops["stationary"]["dtype"], ops["moving"]["dtype"])
        # a pass streams the moving tensor's N columns through the 128 x 128 array: max(64, N) cycles;
        # fp32 takes 4 passes; FP8 double_row contracts 256 rows in one pass (2x throughput)
        passes = costs.matmul_fp32_passes if fp32 else 1.0
        cycles = max(costs.matmul_min_cycles, n) * passes
        macs = k * m * n
        rows_per_pass = 256 if double else 4 * 128 if ops["stationary"]["dtype"].endswith("_x4") else 128
        ideal = macs * passes / (rows_per_pass * 128) / costs.clock_ghz["tensor"]
        return cycles, macs, ideal
    tensors = _tensors(ops)
    n = max((_free(t["shape"]) for t in tensors), default=1)
    passes = PASSES.get(opcode, 1)
    if opcode == "tensor_tensor" and any(t["buffer"] == "psum" for t in tensors):
        passes = 1
    if (
        rec["engine"] == "vector"
        and opcode in FAST_BF16
        and tensors
        and all(t["dtype"] in ("bfloat16", "float16") and t["buffer"] == "sbuf" for t in tensors)
    ):
        passes = 1.0 / costs.vector_bf16_speedup
    cycles = max(costs.min_ii_cycles, n * passes) + GPSIMD_FIXED.get(opcode, 0)
    return cycles, 0, 0.0


def dma_transfer(rec: dict) -> tuple[int, int, bool]:
    """(bytes, descriptors, touches HBM) of a DMA record."""
    nbytes = int(rec["bytes"])
    regions = rec["reads"] + rec["writes"]
    contig = min((r.get("contig", nbytes) for r in regions), default=nbytes)
    contig = max(1, min(contig, nbytes)) if nbytes else 1
    descriptors = -(-nbytes // contig) if nbytes else 0
    hbm = any(r["mem"].startswith("hbm") for r in regions)
    return nbytes, descriptors, hbm


def dma_compute_streams(rec: dict) -> int:
    """How many dst-sized streams a DMA moves: one per source for dma_compute (its reduction reads every
    source), one for every other DMA."""
    if rec["opcode"] != "dma_compute":
        return 1
    return max(1, sum(1 for name in rec["operands"] if name.startswith("srcs[")))


def schedule(trace: list, costs: Costs, keep_events: bool = True, n_stalls: int = 5) -> Timeline:
    stalls_kept = 16 * n_stalls  # the longest distinct (line, producer) pairs come from these
    """Schedule `trace` (moegen.sim RunResult.trace) on the engines of its cores; see the module doc."""
    cores = 1 + max((rec["core"] for rec in trace), default=0)
    per_core = [[] for _ in range(cores)]
    for i, rec in enumerate(trace):
        per_core[rec["core"]].append(i)
    written = {w["mem"] for rec in trace for w in rec.get("writes", ())}
    mem = MemoryTracker(written)
    queues = [{e: 0.0 for e in (*COMPUTE_ENGINES, "sync")} for _ in range(cores)]
    dma_free = [[0.0] * costs.dma_queues for _ in range(cores)]
    dma_cal = [Calendar() for _ in range(cores)]
    hbm_share = costs.hbm_stack_bytes_per_ns / cores  # an LNC=2 pair shares one HBM stack
    busy: dict = {}
    dma_active = [[] for _ in range(cores)]  # (start, end) of every DMA's data movement, merged at the end
    done_at = [0.0] * len(trace)
    pipe_done: dict = {}  # sendrecv pipe_id -> when its last exchange completed
    events: list = []
    stalls: list = []  # heap of (stall ns, seq, dict)
    macs = 0
    ideal = 0.0
    hbm_bytes = 0
    touched: dict = {}
    ns_per_cycle = {e: 1.0 / costs.clock_ghz[e] for e in COMPUTE_ENGINES}
    # TensorE results are not delayed: a PSUM accumulation group streams matmul after matmul (assumption)
    latency_ns = {e: 0.0 if e == "tensor" else costs.latency_cycles * ns_per_cycle[e] for e in COMPUTE_ENGINES}

    def note_stall(rec, idx, queue_free, dep, who, kind, where):
        stall = dep - queue_free
        if stall <= 0 or who < 0:
            return
        item = (stall, idx)
        if len(stalls) < stalls_kept:
            heapq.heappush(stalls, (item, rec, who, kind, where))
        elif item > stalls[0][0]:
            heapq.heapreplace(stalls, (item, rec, who, kind, where))

    def dependencies(rec: dict) -> tuple:
        """((ready ns, producer, kind, region), tracked regions) of an entry's memory and address reads."""
        reads, writes, addr = rec.get("reads", ()), rec.get("writes", ()), rec.get("addr_reads", ())
        tracked_reads = mem.prepare(reads, True) if reads or writes else None
        tracked_writes = mem.prepare(writes, False) if reads or writes else None
        tracked_addr = mem.prepare(addr, True) if addr else None
        found = mem.wait_for(tracked_reads, tracked_writes) if reads or writes else (0.0, -1, "", "")
        if addr:  # address / bound sources: read-after-write only
            a_dep, a_who, _, a_where = mem.wait_for(tracked_addr, [])
            if a_dep > found[0]:
                found = (a_dep, a_who, "address", a_where)
        return found, (tracked_reads, tracked_writes, tracked_addr)

    def finish(idx: int, tracked: tuple, start: float, done: float) -> None:
        """Record an entry's completion for the instructions that depend on it."""
        tracked_reads, tracked_writes, tracked_addr = tracked
        done_at[idx] = done
        if tracked_reads is not None:
            mem.record(tracked_reads, tracked_writes, done, idx)
        if tracked_addr is not None:
            mem.record(tracked_addr, [], start, idx)

    def run(idx: int) -> None:
        nonlocal macs, ideal, hbm_bytes
        rec = trace[idx]
        c = rec["core"]
        engine = rec["engine"]
        reads, writes = rec.get("reads", ()), rec.get("writes", ())
        (dep, who, kind, where), tracked = dependencies(rec)
        if engine == "dma":
            # the queue that frees first takes it (a DMA waiting for its data holds only its own queue)
            frees = dma_free[c]
            q = min(range(len(frees)), key=frees.__getitem__)
            ready = max(dma_free[c][q], dep)
            note_stall(rec, idx, dma_free[c][q], dep, who, kind, where)
            nbytes, desc, on_hbm = dma_transfer(rec)
            dur = (nbytes + desc * costs.dma_descriptor_overhead_bytes) / costs.dma_bytes_per_ns
            if on_hbm:  # the cores of the launch share their HBM stack's bandwidth evenly
                dur = max(dur, nbytes / hbm_share)
            # dma_compute streams each of its sources through the engine to write dst once
            dur *= dma_compute_streams(rec)
            t = ready + costs.dma_latency_ns
            # a DMA that moves nothing (every row skipped) pays its fixed latency and books no bandwidth
            s = dma_cal[c].earliest(t, dur) if dur > 0 else t
            if on_hbm:
                sides = sum(1 for r in (*reads, *writes) if r["mem"].startswith("hbm"))
                hbm_bytes += nbytes * max(1, sides)
                for r in (*reads, *writes):
                    if r["mem"].startswith("hbm"):
                        touched.setdefault(r["mem"], []).append(r["bytes"])
            end = s + dur
            if dur > 0:
                dma_cal[c].book(s, end)
                # DMA active time as the profiler counts it: "at least one DMA packet is transferring", not
                # the wait before the transfer starts (Neuron Explorer profile schema reference,
                # dma_active_time: https://awsdocs-neuron.readthedocs-hosted.com/en/latest/tools/neuron-explorer/profile-schema-reference.html)
                dma_active[c].append((s, end))
            dma_free[c][q] = end
            done = end
            track = f"dma{q}"
            start = ready
        else:
            eng = engine if engine in COMPUTE_ENGINES else "sync"
            free = queues[c][eng]
            start = max(free, dep)
            note_stall(rec, idx, free, dep, who, kind, where)
            if eng == "sync":
                end = start + costs.sync_instruction_ns
                done = end
            else:
                cycles, m, ide = compute_cycles(rec, costs)
                macs += m
                ideal += ide
                end = start + cycles * ns_per_cycle[eng]
                done = end + latency_ns[eng]
                busy[(c, eng)] = busy.get((c, eng), 0.0) + (end - start)
            queues[c][eng] = end
            track = eng
        finish(idx, tracked, start, done)
        if keep_events:
            events.append(Event(c, track, rec["opcode"], rec["line"], start, end))

    def exchange(idxs: list) -> None:
        """The Nth sendrecv of every core, paired (nki.lnc.sendrecv page: paired by program order). Each
        takes a DMA queue of its core; the pair moves data once every core's src is written and dst free
        (its own dependencies), after the pair before it on the same pipe_id completed (the sendrecv page:
        operations with the same pipe_id complete as a group before any proceeds, other pipes progress
        independently), and completes on every core when the last byte arrives. Nothing else waits."""
        pipe = trace[idxs[0]]["operands"].get("pipe_id")
        ready = pipe_done.get(pipe, 0.0)
        taken = []
        for idx in idxs:
            rec = trace[idx]
            c = rec["core"]
            (dep, who, kind, where), tracked = dependencies(rec)
            q = min(range(len(dma_free[c])), key=dma_free[c].__getitem__)
            note_stall(rec, idx, dma_free[c][q], dep, who, kind, where)
            nbytes, desc, _ = dma_transfer(rec)
            dur = (nbytes + desc * costs.dma_descriptor_overhead_bytes) / costs.dma_bytes_per_ns
            taken.append((idx, c, q, dur, tracked))
            ready = max(ready, dma_free[c][q], dep)
        dur = max(t[3] for t in taken)
        s = ready + costs.dma_latency_ns
        while dur > 0:  # the earliest time free in every core's DMA calendar
            later = max(dma_cal[c].earliest(s, dur) for _, c, *_ in taken)
            if later == s:
                break
            s = later
        end = s + dur
        for idx, c, q, own, tracked in taken:
            if own > 0:
                dma_cal[c].book(s, s + own)
                dma_active[c].append((s, s + own))
            dma_free[c][q] = end
            finish(idx, tracked, ready, end)
            if keep_events:
                events.append(Event(c, f"dma{q}", "sendrecv", trace[idx]["line"], ready, end))
        pipe_done[pipe] = end

    def fence(idxs: list) -> None:
        """core_barrier / sendrecv on every core: all arrive, then every queue waits for the latest."""
        arrive = 0.0
        for idx in idxs:
            rec = trace[idx]
            c = rec["core"]
            last = max(max(queues[c].values()), max(dma_free[c]))
            run(idx)
            arrive = max(arrive, done_at[idx], last)
        for c in range(cores):
            for e in queues[c]:
                queues[c][e] = max(queues[c][e], arrive)
            dma_free[c] = [max(t, arrive) for t in dma_free[c]]

    pos = [0] * cores
    while True:
        at_sync = []
        for c in range(cores):
            lst = per_core[c]
            while pos[c] < len(lst) and (cores == 1 or trace[lst[pos[c]]]["opcode"] not in SYNC_OPCODES):
                run(lst[pos[c]])
                pos[c] += 1
            if pos[c] < len(lst):
                at_sync.append(lst[pos[c]])
                pos[c] += 1
        if not at_sync:
            break
        opcodes = {trace[i]["opcode"] for i in at_sync}
        if opcodes == {"sendrecv"} and len(at_sync) == cores:
            exchange(at_sync)
        else:
            fence(at_sync)

    end_ns = 0.0
    for c in range(cores):
        end_ns = max(end_ns, max(queues[c].values()), max(dma_free[c]))
    for c in range(cores):
        busy[(c, "dma")] = _union_length(dma_active[c])
    longest = []
    seen = set()
    for (stall, _idx), rec, who, kind, where in sorted(stalls, reverse=True):
        dep_rec = trace[who]
        key = (rec["line"], dep_rec["line"])
        if key in seen or len(longest) == n_stalls:
            continue
        seen.add(key)
        longest.append(
            {
                "stall_us": stall / 1000.0,
                "core": rec["core"],
                "engine": rec["engine"],
                "opcode": rec["opcode"],
                "line": rec["line"],
                "waits_on": f"{dep_rec['opcode']} at {dep_rec['line']} ({dep_rec['engine']})",
                "dependency": kind,
                "memory": where,
            }
        )
    return Timeline(
        end_ns=end_ns,
        events=events,
        busy_ns=busy,
        macs=macs,
        ideal_tensor_ns=ideal,
        hbm_bytes=hbm_bytes,
        stalls=longest,
        cores=cores,
        instructions=len(trace),
        touched_hbm=touched,
    )
