"""The trace's memory regions (what each instruction reads and writes) and the trace-only mode."""

import numpy as np
import pytest

import moegen.sim as sim
from moegen.sim import isa as nisa
from moegen.sim import language as nl


def _double(x):
    t = nl.ndarray((128, 64), nl.float32, buffer=nl.sbuf)
    nisa.dma_copy(dst=t, src=x[0:128, 0:64])
    u = nl.ndarray((128, 64), nl.float32, buffer=nl.sbuf)
    nisa.tensor_scalar(dst=u, data=t, op0=nl.multiply, operand0=2.0)
    out = nl.ndarray((128, 64), nl.float32, buffer=nl.shared_hbm, name="out")
    nisa.dma_copy(dst=out, src=u)
    return out


def test_regions_name_the_bytes_read_and_written():
    x = np.ones((256, 64), np.float32)
    sim.simulate(_double, target="trn2")(x)
    load, scale, store = sim.last_run().trace
    (src,) = load["reads"]
    assert src["mem"].startswith("hbm:x:") and src["bytes"] == [0, 128 * 64 * 4] and src["contig"] == 128 * 64 * 4
    (tile,) = load["writes"]
    assert tile["mem"] == "sbuf0" and tile["parts"] == [0, 128] and tile["bytes"] == [0, 256]
    # the scaled tile is a second live SBUF tile: first fit puts it after the first one
    assert scale["reads"] == [tile] and scale["writes"][0]["bytes"] == [256, 512]
    assert store["reads"] == scale["writes"] and store["writes"][0]["mem"].startswith("hbm:out:")


def test_region_of_a_strided_view_is_its_span_and_contiguous_run():
    def k(x):
        t = nl.ndarray((128, 8), nl.bfloat16, buffer=nl.sbuf)
        nisa.dma_copy(dst=t, src=x[0:128, 4:12])
        return None

    sim.simulate(k, target="trn2")(np.zeros((128, 16), np.float32).astype(np.float32))
    (src,) = sim.last_run().trace[0]["reads"]
    assert src["bytes"] == [4 * 4, (127 * 16 + 12) * 4] and src["contig"] == 8 * 4


def test_runtime_offset_is_resolved_in_the_region():
    def k(x):
        reg = nisa.register_alloc(3)
        t = nl.ndarray((1, 64), nl.float32, buffer=nl.sbuf)
        nisa.dma_copy(dst=t, src=x[nl.ds(reg, 1), 0:64])
        return None

    sim.simulate(k, target="trn2")(np.zeros((8, 64), np.float32))
    (src,) = sim.last_run().trace[-1]["reads"]
    assert src["offset"] == 3 * 64 and src["bytes"] == [3 * 256, 4 * 256]


def test_trace_only_records_the_same_stream_without_values():
    x = np.ones((256, 64), np.float32)
    sim.simulate(_double, target="trn2")(x)
    full = sim.last_run().trace
    sim.simulate(_double, target="trn2", trace_only=True)(x)
    assert sim.last_run().trace == full


def test_trace_only_skips_the_products_of_a_large_matmul():
    def k(a, b):
        for _i in range(64):
            s = nl.ndarray((128, 128), nl.float32, buffer=nl.sbuf)
            m = nl.ndarray((128, 512), nl.float32, buffer=nl.sbuf)
            nisa.dma_copy(dst=s, src=a[0:128, 0:128])
            nisa.dma_copy(dst=m, src=b[0:128, 0:512])
            p = nl.ndarray((128, 512), nl.float32, buffer=nl.psum)
            nisa.nc_matmul(dst=p, stationary=s, moving=m)
        return None

    sim.simulate(k, target="trn2", trace_only=True)(np.zeros((128, 128), np.float32), np.zeros((128, 512), np.float32))
    assert [e["opcode"] for e in sim.last_run().trace].count("nc_matmul") == 64


def test_trace_only_refuses_a_register_load():
    """register_load reads a tensor value: the trace would depend on data, so trace-only stops."""

    def k(idx):
        t = nl.ndarray((1, 1), nl.int32, buffer=nl.sbuf)
        nisa.dma_copy(dst=t, src=idx)
        reg = nisa.register_alloc(0)
        nisa.register_load(reg, t)
        return None

    with pytest.raises(sim.NkiSimError, match="trace-only"):
        sim.simulate(k, target="trn2", trace_only=True)(np.zeros((1, 1), np.int32))


def test_trace_only_refuses_an_indirect_dma():
    def k(x, idx):
        rows = nl.ndarray((4, 1), nl.int32, buffer=nl.sbuf)
        nisa.dma_copy(dst=rows, src=idx)
        t = nl.ndarray((4, 8), nl.float32, buffer=nl.sbuf)
        nisa.dma_copy(dst=t, src=x.ap([[8, 4], [1, 8]], offset=0, vector_offset=rows, indirect_dim=0))
        return None

    with pytest.raises(sim.NkiSimError, match="trace-only"):
        sim.simulate(k, target="trn2", trace_only=True)(np.zeros((16, 8), np.float32), np.zeros((4, 1), np.int32))


def test_trace_only_refuses_a_runtime_offset_held_in_a_tensor():
    def k(x, idx):
        off = nl.ndarray((1, 1), nl.int32, buffer=nl.sbuf)
        nisa.dma_copy(dst=off, src=idx)
        t = nl.ndarray((1, 8), nl.float32, buffer=nl.sbuf)
        nisa.dma_copy(dst=t, src=x.ap([[8, 1], [1, 8]], offset=0, scalar_offset=off, indirect_dim=0))
        return None

    with pytest.raises(sim.NkiSimError, match="trace-only"):
        sim.simulate(k, target="trn2", trace_only=True)(np.zeros((16, 8), np.float32), np.zeros((1, 1), np.int32))


def test_recording_forces_the_trace_of_a_run_that_skips_it():
    x = np.ones((256, 64), np.float32)
    sim.simulate(_double, target="trn2", trace=False)(x)
    assert sim.last_run().trace == []
    with sim.recording():
        sim.simulate(_double, target="trn2", trace=False)(x)
    assert [e["opcode"] for e in sim.last_run().trace] == ["dma_copy", "tensor_scalar", "dma_copy"]


def test_a_strided_hbm_view_lists_its_rows():
    def k(x):
        t = nl.ndarray((128, 8), nl.float32, buffer=nl.sbuf)
        nisa.dma_copy(dst=t, src=x[0:128, 4:12])
        return None

    sim.simulate(k, target="trn2")(np.zeros((128, 16), np.float32))
    (src,) = sim.last_run().trace[0]["reads"]
    assert (src["pitch"], src["row_bytes"], src["rows"]) == (16 * 4, 8 * 4, 128)
