"""The timeline model on small kernels: the performance guide's statements, buffering, LNC=2, reports."""

import json

import numpy as np
import pytest

import moegen.perf as perf
from moegen.perf import costs, perfetto
from moegen.sim import isa as nisa
from moegen.sim import jit
from moegen.sim import language as nl

COSTS = perf.Costs.of("trn2")


def _events(report, track):
    return [e for e in report.timeline.events if e.track == track]


def _scalar_chain(free: int, count: int, dependent: bool):
    @jit
    def kernel(x):
        a = nl.ndarray((128, free), nl.float32, buffer=nl.sbuf)
        nisa.dma_copy(dst=a, src=x)
        outs = [nl.ndarray((128, free), nl.float32, buffer=nl.sbuf) for _ in range(count)]
        for i in range(count):
            src = outs[i - 1] if dependent and i else a
            nisa.activation(dst=outs[i], op=nl.exp, data=src)
        return None

    return kernel


def _initiation_interval_cycles(report) -> float:
    ev = _events(report, "scalar")
    return (ev[-1].start - ev[0].start) / (len(ev) - 1) * COSTS.clock_ghz["scalar"]


def test_small_free_sizes_are_dominated_by_fixed_overhead():
    """Perf guide (Opt #5a): an instruction reading one element per partition pays the static overhead,
    not one cycle: a stream of such instructions runs at MIN_II (64 cycles) each, and 512 elements cost
    far less than 512 times one element."""
    one = perf.profile(_scalar_chain(1, 32, False), np.zeros((128, 1), np.float32), target="trn2", trace_only=True)
    wide = perf.profile(_scalar_chain(512, 32, False), np.zeros((128, 512), np.float32), target="trn2", trace_only=True)
    assert _initiation_interval_cycles(one) == pytest.approx(64)
    assert _initiation_interval_cycles(wide) == pytest.approx(512)
    per_element_one = _initiation_interval_cycles(one) / 1
    per_element_wide = _initiation_interval_cycles(wide) / 512
    assert per_element_one > 60 * per_element_wide


def test_back_to_back_dependent_instructions_wait_for_each_other():
    """Perf guide (Opt #5a): dependent one-element instructions start about every 264 engine cycles (the
    guide's measured initiation interval), independent ones every MIN_II."""
    x = np.zeros((128, 1), np.float32)
    dependent = perf.profile(_scalar_chain(1, 32, True), x, target="trn2", trace_only=True)
    independent = perf.profile(_scalar_chain(1, 32, False), x, target="trn2", trace_only=True)
    assert _initiation_interval_cycles(dependent) == pytest.approx(264)
    assert dependent.modeled_us > 3 * (independent.modeled_us - _dma_us(independent))
    assert dependent.stalls == [] or all(s["dependency"] == "RAW" for s in dependent.stalls)


def _dma_us(report) -> float:
    return max(e.end for e in report.timeline.events if e.track.startswith("dma")) / 1000.0


def test_fewer_partitions_take_the_same_time():
    """Perf guide (Opt #5b): a 64-partition instruction takes as long as a 128-partition one, so two
    64-partition instructions take twice as long as one 128-partition instruction over both halves."""

    def kernel_for(parts, count):
        @jit
        def kernel(x):
            a = nl.ndarray((128, 512), nl.float32, buffer=nl.sbuf)
            nisa.dma_copy(dst=a, src=x)
            out = nl.ndarray((128, 512), nl.float32, buffer=nl.sbuf)
            for i in range(count):
                nisa.tensor_tensor(
                    dst=out[i * parts : (i + 1) * parts, :],
                    data1=a[i * parts : (i + 1) * parts, :],
                    data2=a[i * parts : (i + 1) * parts, :],
                    op=nl.add,
                )
            return None

        return kernel

    x = np.zeros((128, 512), np.float32)
    halves = perf.profile(kernel_for(64, 2), x, target="trn2", trace_only=True)
    whole = perf.profile(kernel_for(128, 1), x, target="trn2", trace_only=True)
    (full,) = _events(whole, "vector")
    first, second = _events(halves, "vector")
    assert first.end - first.start == pytest.approx(full.end - full.start)
    assert halves.engine_busy["vector"] * halves.modeled_us == pytest.approx(
        2 * whole.engine_busy["vector"] * whole.modeled_us
    )


def _stream(buffers_in_loop: bool, tiles: int = 16):
    """Load a tile, scale it, store it, `tiles` times: one reused buffer, or one per iteration."""

    @jit
    def kernel(x):
        out = nl.ndarray(x.shape, nl.float32, buffer=nl.shared_hbm)
        shared_in = nl.ndarray((128, 2048), nl.float32, buffer=nl.sbuf)
        shared_out = nl.ndarray((128, 2048), nl.float32, buffer=nl.sbuf)
        for i in range(tiles):
            t_in = nl.ndarray((128, 2048), nl.float32, buffer=nl.sbuf) if buffers_in_loop else shared_in
            t_out = nl.ndarray((128, 2048), nl.float32, buffer=nl.sbuf) if buffers_in_loop else shared_out
            nisa.dma_copy(dst=t_in, src=x[i * 128 : (i + 1) * 128, :])
            nisa.activation(dst=t_out, op=nl.exp, data=t_in)
            nisa.dma_copy(dst=out[i * 128 : (i + 1) * 128, :], src=t_out)
        return out

    return kernel


def test_reusing_one_buffer_serialises_load_and_compute():
    """The point of the model: one SBUF buffer reused every iteration makes each load wait for the
    previous compute (write after read); a buffer per iteration lets loads run ahead (overlap)."""
    x = np.zeros((16 * 128, 2048), np.float32)
    single = perf.profile(_stream(False), x, target="trn2", trace_only=True)
    multi = perf.profile(_stream(True), x, target="trn2", trace_only=True)
    assert single.modeled_us > 1.5 * multi.modeled_us
    assert any(s["dependency"] == "WAR" for s in single.stalls)
    assert single.hbm_bytes == multi.hbm_bytes == 2 * x.nbytes
    assert single.hbm_min_bytes == 2 * x.nbytes


def test_lnc2_cores_share_the_work_and_sync_at_a_barrier():
    @jit
    def kernel(x):
        out = nl.ndarray(x.shape, nl.float32, buffer=nl.shared_hbm)
        pid = nl.program_id(0)
        rows = x.shape[0] // 2
        for i in range(rows // 128):
            r0 = pid * rows + i * 128
            t = nl.ndarray((128, 512), nl.float32, buffer=nl.sbuf)
            nisa.dma_copy(dst=t, src=x[r0 : r0 + 128, :])
            u = nl.ndarray((128, 512), nl.float32, buffer=nl.sbuf)
            nisa.activation(dst=u, op=nl.exp, data=t)
            nisa.dma_copy(dst=out[r0 : r0 + 128, :], src=u)
        nisa.core_barrier(out, (0, 1))
        return out

    x = np.zeros((16 * 128, 512), np.float32)
    two = perf.profile(kernel[2], x, target="trn2", trace_only=True)
    assert two.lnc == 2 and {e.core for e in two.timeline.events} == {0, 1}
    per_core = [[e for e in two.timeline.events if e.core == c and e.track.startswith("dma")] for c in (0, 1)]
    assert len(per_core[0]) == len(per_core[1]) == 16
    assert min(e.start for e in per_core[1]) < max(e.end for e in per_core[0])  # the cores run in parallel
    barriers = [e for e in two.timeline.events if e.opcode == "core_barrier"]
    last_store = max(e.end for events in per_core for e in events)
    assert len(barriers) == 2 and min(b.start for b in barriers) >= max(e.end for e in per_core[0]) - 1e-6
    assert two.modeled_us * 1000 >= last_store - 1e-6
    assert two.hbm_bytes == 2 * x.nbytes


def test_matmul_cost_follows_the_documented_cycles():
    """nc_matmul: max(64, N) TensorE cycles per pass, 4 passes for fp32 (ISA cost rule)."""

    def kernel_for(dtype, n):
        @jit
        def kernel(a, b):
            s = nl.ndarray((128, 128), dtype, buffer=nl.sbuf)
            m = nl.ndarray((128, n), dtype, buffer=nl.sbuf)
            nisa.dma_copy(dst=s, src=a)
            nisa.dma_copy(dst=m, src=b)
            p = nl.ndarray((128, n), nl.float32, buffer=nl.psum)
            nisa.nc_matmul(dst=p, stationary=s, moving=m)
            return None

        return kernel

    for dtype, n, cycles in (("bfloat16", 512, 512), ("bfloat16", 16, 64), ("float32", 512, 2048)):
        np_dtype = np.float32
        rep = perf.profile(
            kernel_for(dtype, n), np.zeros((128, 128), np_dtype), np.zeros((128, n), np_dtype), trace_only=True
        )
        (mm,) = _events(rep, "tensor")
        assert (mm.end - mm.start) * COSTS.clock_ghz["tensor"] == pytest.approx(cycles)
        assert rep.macs_issued == 128 * 128 * n


def test_every_cost_fact_names_its_source_or_assumption():
    for target in ("trn2", "trn3"):
        for name, fact in costs.table(target).items():
            assert fact.source.startswith("https://") or fact.assumption, name
    assert costs.table("trn3")["hbm_tbps_chip"].value > costs.table("trn2")["hbm_tbps_chip"].value
    with pytest.raises(ValueError):
        costs.Fact(1.0, "x")


def test_report_json_has_the_documented_keys():
    rep = perf.profile(_stream(True, 2), np.zeros((256, 2048), np.float32), target="trn3", trace_only=True)
    d = json.loads(json.dumps(rep.to_dict()))
    for key in ("modeled_us", "roofline_fraction", "hbm_bytes", "hbm_min_bytes", "macs_issued", "macs_algorithmic"):
        assert isinstance(d[key], (int, float)), key
    assert set(d["engine_busy"]) == {"tensor", "vector", "scalar", "gpsimd", "dma"}
    assert d["bound"] in d["engine_busy"] and d["target"] == "trn3" and "modeled" in d["label"]
    assert 0 < d["roofline_fraction"] <= 1
    assert "modeled" in rep.text()


def test_perfetto_file_has_one_track_per_engine_and_dma_queue(tmp_path):
    rep = perf.profile(_stream(True, 4), np.zeros((512, 2048), np.float32), target="trn2", trace_only=True)
    path = tmp_path / "timeline.json"
    perfetto.write(rep, path)
    data = json.loads(path.read_text())
    events = data["traceEvents"]
    names = {e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    assert {"scalar engine"} <= names and any(n.endswith("(DMA queue)") for n in names)
    spans = [e for e in events if e["ph"] == "X"]
    assert len(spans) == rep.instructions
    for e in spans:
        assert set(e) >= {"name", "ph", "ts", "dur", "pid", "tid"} and e["dur"] >= 0
        assert "test_model.py:" in e["name"]


def test_fp8_double_row_contracts_256_rows_in_one_pass():
    """nc_matmul perf_mode=double_row: FP8 [128, 2, M] x [128, 2, N] in max(64, N) cycles, 2x the MACs."""

    @jit
    def kernel(a, b):
        s = nl.ndarray((128, 2, 128), nl.float8_e4m3, buffer=nl.sbuf)
        m = nl.ndarray((128, 2, 512), nl.float8_e4m3, buffer=nl.sbuf)
        nisa.dma_copy(dst=s, src=a)
        nisa.dma_copy(dst=m, src=b)
        p = nl.ndarray((128, 512), nl.float32, buffer=nl.psum)
        nisa.nc_matmul(dst=p, stationary=s, moving=m, perf_mode=nisa.matmul_perf_mode.double_row)
        return None

    rep = perf.profile(
        kernel, np.zeros((128, 2, 128), np.float32), np.zeros((128, 2, 512), np.float32), trace_only=True
    )
    (mm,) = _events(rep, "tensor")
    assert (mm.end - mm.start) * COSTS.clock_ghz["tensor"] == pytest.approx(512)
    assert rep.macs_issued == 256 * 128 * 512
    assert rep.compute_bound_us == pytest.approx(512 / COSTS.clock_ghz["tensor"] / 1000)


COSTS_TRN2 = perf.Costs.of("trn2")


def _rows_update_kernel(sources: int):
    @jit
    def kernel(out_rows, update):
        """out_rows [128, 512] fp32 in HBM = update (+ out_rows when sources == 2), by dma_compute."""
        tile = nl.ndarray((128, 512), nl.float32, buffer=nl.sbuf)
        nisa.dma_copy(dst=tile, src=update)
        srcs = [out_rows, tile] if sources == 2 else [tile]
        nisa.dma_compute(dst=out_rows, srcs=srcs, reduce_op=nl.add)
        return out_rows

    return kernel


def test_dma_compute_streams_every_source():
    """nki.isa.dma_compute page: the DMA engine reads each source and writes their sum to dst, so a
    two-source accumulate takes twice as long as a one-source write of the same dst (the model used to
    charge only dst's bytes)."""
    rows = np.ones((128, 512), np.float32)
    took = {}
    for sources in (1, 2):
        report = perf.profile(_rows_update_kernel(sources), rows.copy(), rows.copy(), target="trn2")
        [event] = [e for e in report.timeline.events if e.opcode == "dma_compute"]
        took[sources] = event.end - event.start - COSTS_TRN2.dma_latency_ns  # the data movement alone
    assert took[2] == pytest.approx(2 * took[1], rel=0.01)
