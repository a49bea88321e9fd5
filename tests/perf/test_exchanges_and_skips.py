"""The timeline model's cross-core exchanges (sendrecv) and DMAs that move no bytes."""

import numpy as np
import pytest

import moegen.perf as perf
from moegen.sim import isa as nisa
from moegen.sim import jit
from moegen.sim import language as nl

COSTS = perf.Costs.of("trn2")


@jit
def _exchange_kernel(x, w):
    """Per core: a small tile exchanged with the peer (pipe 0, twice), long weight loads issued before the
    exchange, an independent load issued after it, and the received tile's consumer."""
    pid = nl.program_id(0)
    mine = nl.ndarray((128, 64), nl.float32, buffer=nl.sbuf)
    nisa.dma_copy(dst=mine, src=x[pid * 128 : pid * 128 + 128, :])
    for i in range(4):  # 4 x 2 MiB per core, independent of the exchange
        big = nl.ndarray((128, 4096), nl.float32, buffer=nl.sbuf)
        nisa.dma_copy(dst=big, src=w[pid, i])
    got = nl.ndarray((128, 64), nl.float32, buffer=nl.sbuf)
    nisa.sendrecv(src=mine, dst=got, send_to_rank=1 - pid, recv_from_rank=1 - pid, pipe_id=0)
    again = nl.ndarray((128, 64), nl.float32, buffer=nl.sbuf)
    nisa.sendrecv(src=mine, dst=again, send_to_rank=1 - pid, recv_from_rank=1 - pid, pipe_id=0)
    late = nl.ndarray((128, 64), nl.float32, buffer=nl.sbuf)
    nisa.dma_copy(dst=late, src=x[pid * 128 : pid * 128 + 128, :])  # issued after the exchanges
    used = nl.ndarray((128, 64), nl.float32, buffer=nl.sbuf)
    nisa.activation(dst=used, op=nl.exp, data=got)
    out = nl.ndarray((256, 64), nl.float32, buffer=nl.shared_hbm)
    nisa.dma_copy(dst=out[pid * 128 : pid * 128 + 128, :], src=used)
    return out


def test_sendrecv_orders_only_its_operands_and_its_pipe():
    """nki.isa.sendrecv page: the core sends src to the peer's dst while receiving the peer's src into its
    own dst; "operations with the same pipe_id form a logical group where all operations in the group must
    complete before any can proceed", other pipes progress independently; nki.lnc.sendrecv page: the Nth
    sendrecv of one rank pairs with the Nth of the other. Nothing says it waits for other engines or DMA
    queues: a load issued after the exchange must not wait for the loads issued before it (the old model
    fenced every queue of both cores), while the received tile's consumer waits for the exchange."""
    x = np.ones((256, 64), np.float32)
    w = np.ones((2, 4, 128, 4096), np.float32)
    report = perf.profile(_exchange_kernel[2], x, w, target="trn2", trace_only=True)
    events = report.timeline.events
    exchanges = sorted((e for e in events if e.opcode == "sendrecv"), key=lambda e: (e.core, e.start))
    assert len(exchanges) == 4
    first = [e for e in exchanges if e.start == min(x.start for x in exchanges if x.core == e.core)]
    second = [e for e in exchanges if e not in first]
    # the pair completes together on both cores; the second exchange on pipe 0 starts after the first
    assert first[0].end == pytest.approx(first[1].end) and second[0].end == pytest.approx(second[1].end)
    assert min(e.start for e in second) >= first[0].end - 1e-6
    for core in (0, 1):
        loads = [e for e in events if e.core == core and e.opcode == "dma_copy"]
        big_end = max(e.end for e in loads[1:5])
        late = loads[5]
        assert late.start < big_end  # the later load is issued across the exchange, not after a fence
        [use] = [e for e in events if e.core == core and e.opcode == "activation"]
        own_first = next(e for e in first if e.core == core)
        assert use.start >= own_first.end  # the consumer of dst waits for the received bytes
        assert own_first.start >= loads[0].end  # src written before it is sent


@jit
def _skipped_load_kernel(table, w):
    """A long load, then a scalar-offset load whose row is out of range (oob_mode=skip: nothing moves)."""
    big = nl.ndarray((128, 8192), nl.float32, buffer=nl.sbuf)
    nisa.dma_copy(dst=big, src=w)
    V, H = table.shape
    reg = nisa.register_alloc(V + 5)
    row = nl.ndarray((1, H), nl.float32, buffer=nl.sbuf)
    src = table.ap(pattern=[[H, 1], [1, H]], offset=0, scalar_offset=reg, indirect_dim=0)
    nisa.dma_copy(dst=row, src=src, oob_mode=nisa.oob_mode.skip)
    return None


def test_a_dma_that_moves_nothing_pays_only_its_fixed_latency():
    """nki.isa.dma_copy page (oob_mode.skip skips the out-of-bounds transfer) and the model's DMA design
    (docs/perf_model.md: every DMA pays the fixed ~1.3 us semaphore-to-start latency, then its bytes go
    through the core's DMA bandwidth calendar): a DMA of zero bytes books no bandwidth, so it must not wait
    for a gap in the calendar behind a long transfer (the old model ended it after the 4 MiB load)."""
    table = np.ones((16, 64), np.float32)
    w = np.ones((128, 8192), np.float32)
    report = perf.profile(_skipped_load_kernel, table, w, target="trn2")
    big, skipped = [e for e in report.timeline.events if e.opcode == "dma_copy"]
    assert big.end - big.start > 5 * COSTS.dma_latency_ns
    assert skipped.end - skipped.start == pytest.approx(COSTS.dma_latency_ns)
    assert skipped.end < big.end
    assert report.engine_busy["dma"] == pytest.approx((big.end - big.start - COSTS.dma_latency_ns) / big.end, rel=0.01)
