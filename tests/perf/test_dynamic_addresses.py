"""The timeline model on runtime addresses and runtime loops: a DMA whose HBM address comes from a register
or a tile waits for the instruction that wrote it; register and loop-bookkeeping instructions cost time on
the sync queue (NKI Dynamic Loops / fori_loop pages: a runtime loop is a hardware loop, a compare-and-branch
per iteration; VirtualRegister page: registers live on an engine's sequencer)."""

import numpy as np
import pytest

import moegen.perf as perf
from moegen import sim
from moegen.sim import isa as nisa
from moegen.sim import jit
from moegen.sim import language as nl

COSTS = perf.Costs.of("trn2")
EXPERTS, ROWS, COLS = 4, 128, 512


def _events(report, opcode):
    return [e for e in report.timeline.events if e.opcode == opcode]


def _weights_dma(report):
    """The DMA that reads the expert's weights (the widest dma_copy)."""
    return max(_events(report, "dma_copy"), key=lambda e: e.end - e.start)


def _inputs():
    weights = np.arange(EXPERTS * ROWS * COLS, dtype=np.float32).reshape(EXPERTS, ROWS, COLS)
    return weights, np.array([[2]], np.int32)


@jit
def _register_offset_kernel(weights, expert_index):
    index_tile = nl.ndarray((1, 1), nl.int32, buffer=nl.sbuf)
    nisa.dma_copy(dst=index_tile, src=expert_index)
    expert = nisa.register_alloc()
    nisa.register_load(expert, index_tile)
    w = nl.ndarray((ROWS, COLS), nl.float32, buffer=nl.sbuf)
    nisa.dma_copy(
        dst=w, src=weights.ap(pattern=[[COLS, ROWS], [1, COLS]], offset=0, scalar_offset=expert, indirect_dim=0)
    )
    out = nl.ndarray((ROWS, COLS), nl.float32, buffer=nl.shared_hbm)
    nisa.dma_copy(dst=out, src=w)
    return out


@jit
def _tile_offset_kernel(weights, expert_index):
    index_tile = nl.ndarray((1, 1), nl.int32, buffer=nl.sbuf)
    nisa.dma_copy(dst=index_tile, src=expert_index)
    w = nl.ndarray((ROWS, COLS), nl.float32, buffer=nl.sbuf)
    nisa.dma_copy(
        dst=w, src=weights.ap(pattern=[[COLS, ROWS], [1, COLS]], offset=0, scalar_offset=index_tile, indirect_dim=0)
    )
    out = nl.ndarray((ROWS, COLS), nl.float32, buffer=nl.shared_hbm)
    nisa.dma_copy(dst=out, src=w)
    return out


def test_register_offset_dma_waits_for_the_register_load():
    """The weights' address is expert_index read into a register: the DMA cannot start before the
    register_load completes, which itself waits for the DMA that brought expert_index on chip."""
    report = perf.profile(_register_offset_kernel, *_inputs(), target="trn2")
    index_dma = _events(report, "dma_copy")[0]
    load = _events(report, "register_load")[0]
    weights_dma = _weights_dma(report)
    assert load.start >= index_dma.end
    assert load.end == pytest.approx(load.start + COSTS.sync_instruction_ns)
    assert weights_dma.start >= load.end


def test_tile_offset_dma_waits_for_the_tile_writer():
    """scalar_offset=<tile>: the DMA reads its address from SBUF, after the DMA that wrote the tile."""
    report = perf.profile(_tile_offset_kernel, *_inputs(), target="trn2")
    index_dma = _events(report, "dma_copy")[0]
    assert _weights_dma(report).start >= index_dma.end
    assert any(s["dependency"] == "address" for s in report.timeline.stalls)


@jit
def _indirect_kernel(table):
    ids_f = nl.ndarray((ROWS, 1), nl.float32, buffer=nl.sbuf)
    nisa.iota(dst=ids_f, pattern=[[0, 1]], offset=0, channel_multiplier=1)  # row p reads table row p
    ids = nl.ndarray((ROWS, 1), nl.int32, buffer=nl.sbuf)
    nisa.tensor_copy(dst=ids, src=ids_f)
    rows = nl.ndarray((ROWS, COLS), nl.float32, buffer=nl.sbuf)
    nisa.dma_copy(
        dst=rows, src=table.ap(pattern=[[COLS, ROWS], [1, COLS]], offset=0, vector_offset=ids, indirect_dim=0)
    )
    out = nl.ndarray((ROWS, COLS), nl.float32, buffer=nl.shared_hbm)
    nisa.dma_copy(dst=out, src=rows)
    return out


def test_indirect_dma_waits_for_its_index_vector():
    """vector_offset=<index tile>: the gather's row addresses come from the tile the VectorE copy wrote."""
    table = np.arange(2 * ROWS * COLS, dtype=np.float32).reshape(2 * ROWS, COLS)
    report = perf.profile(_indirect_kernel, table, target="trn2")
    copy = _events(report, "tensor_copy")[0]
    gather = _events(report, "dma_copy")[0]
    assert gather.start >= copy.end + COSTS.latency_cycles / COSTS.clock_ghz["vector"] - 1e-9


def _loop_kernel(trips: int):
    @jit
    def kernel(x, count):
        count_tile = nl.ndarray((1, 1), nl.int32, buffer=nl.sbuf)
        nisa.dma_copy(dst=count_tile, src=count)
        trip_count = nisa.register_alloc(0)
        nisa.register_load(trip_count, count_tile)
        rows = nl.ndarray((ROWS, COLS), nl.float32, buffer=nl.sbuf)

        def body(i):
            nisa.dma_copy(
                dst=rows, src=x.ap(pattern=[[COLS, ROWS], [1, COLS]], offset=0, scalar_offset=i, indirect_dim=0)
            )

        nl.fori_loop(0, trip_count, body)
        return None

    x = np.zeros((max(trips, 1), ROWS, COLS), np.float32)
    return kernel, x, np.array([[trips]], np.int32)


@pytest.mark.parametrize("trips", [0, 3])
def test_runtime_loop_bookkeeping_costs_sync_time(trips):
    """A runtime loop costs one sync instruction to enter (the first bound compare) and one per iteration
    (branch back, induction update, compare); a guard that runs 0 times still costs its entry. Each
    iteration's DMA addressed by the induction register starts after that iteration's bookkeeping."""
    kernel, x, count = _loop_kernel(trips)
    report = perf.profile(kernel, x, count, target="trn2")
    sync = [e for e in report.timeline.events if e.track == "sync"]
    assert [e.opcode for e in sync] == ["register_alloc", "register_load", "fori_loop"] + ["loop_iteration"] * trips
    for e in sync:
        assert e.end - e.start == pytest.approx(COSTS.sync_instruction_ns)
    loop = _events(report, "fori_loop")[0]
    assert loop.start >= _events(report, "register_load")[0].end  # the trip count is read when the loop starts
    for step, dma in zip(_events(report, "loop_iteration"), _events(report, "dma_copy")[1:]):
        assert dma.start >= step.end


def test_sync_cost_is_a_documented_assumption():
    facts = perf.costs.table("trn2")
    assert facts["sync_instruction_cycles"].source and facts["sync_instruction_cycles"].assumption
    assert COSTS.sync_instruction_ns == pytest.approx(100 / 1.2)


def test_run_result_names_the_returned_hbm_tensors():
    """`moegen profile` counts the returned tensors in the HBM minimum and leaves the kernel's scratch out."""

    @jit
    def kernel(x):
        scratch = nl.ndarray((ROWS, COLS), nl.float32, buffer=nl.shared_hbm)
        out = nl.ndarray((ROWS, COLS), nl.float32, buffer=nl.shared_hbm)
        tile = nl.ndarray((ROWS, COLS), nl.float32, buffer=nl.sbuf)
        nisa.dma_copy(dst=scratch, src=x)
        nisa.dma_copy(dst=tile, src=scratch)
        nisa.dma_copy(dst=out, src=tile)
        return out

    sim.simulate(kernel, trace=True)(np.zeros((ROWS, COLS), np.float32))
    run = sim.last_run()
    scratch_mem, out_mem = run.trace[0]["writes"][0]["mem"], run.trace[-1]["writes"][0]["mem"]
    assert run.output_mems == [out_mem] and scratch_mem != out_mem
