"""Calibration against the engine-active percentages of the NKI kernel-optimisation tutorial (trn2).

https://awsdocs-neuron.readthedocs-hosted.com/en/latest/nki/how-to-guides/kernel-optimization.html
publishes, for four versions of an fp32 matmul (lhs 4096 x 8192, rhs 8192 x 8192): v1 tiled TensorE
87.28% / DMA 99.93%; v2 loads hoisted TensorE 99.85% / DMA 99.73%; v3 blocked TensorE 99.52% / DMA
95.70%; v4 blocked in K with SBUF accumulation TensorE 99.50% / DMA 21.54% / VectorE 10.55%.

The kernels (tests/perf/matmul_tutorial.py) run in trace-only mode at the full K = 8192 with fewer
output tiles, so the test stays fast: M = 256 for v1-v3 (their m loop is outermost: every M tile
repeats the same schedule) and M = 2048, N = 1024 for v4 (one block of the tutorial's blocking). The
full-size run is the slow test below. Where the model and the tutorial disagree (v3's DMA activity,
the order of v2 / v3 / v4, which the model finds within a few percent of each other) is recorded in
docs/perf_model.md and asserted as such here, so a change that closes (or widens) a gap shows up.
"""

import numpy as np
import pytest

import moegen.perf as perf
from tests.perf import matmul_tutorial as tutorial

PUBLISHED = {
    "v1": {"tensor": 87.28, "dma": 99.93},
    "v2": {"tensor": 99.85, "dma": 99.73},
    "v3": {"tensor": 99.52, "dma": 95.70},
    "v4": {"tensor": 99.50, "dma": 21.54, "vector": 10.55},
}
KNOWN_GAPS = {("v3", "dma")}  # docs/perf_model.md: the model keeps v3's DMA queues idle ~40% of the time
KERNELS = {
    "v1": tutorial.matmul_v1_tiled,
    "v2": tutorial.matmul_v2_hoisted,
    "v3": tutorial.matmul_v3_blocked,
    "v4": tutorial.matmul_v4_blocked_k,
}
FAST_SHAPES = {"v1": (256, 8192, 8192), "v2": (256, 8192, 8192), "v3": (256, 8192, 8192), "v4": (2048, 8192, 1024)}
FULL_SHAPE = (4096, 8192, 8192)


def _profile(version: str, m: int, k: int, n: int) -> perf.Report:
    lhsT = np.zeros((k, m), np.float32)  # trace-only: values never read; zero pages cost no memory
    rhs = np.zeros((k, n), np.float32)
    return perf.profile(KERNELS[version], lhsT, rhs, target="trn2", trace_only=True)


@pytest.fixture(scope="module")
def reports():
    return {v: _profile(v, *shape) for v, shape in FAST_SHAPES.items()}


def _check(reports: dict) -> None:
    for version, published in PUBLISHED.items():
        for engine, percent in published.items():
            modeled = 100 * reports[version].engine_busy[engine]
            if (version, engine) in KNOWN_GAPS:
                assert abs(modeled - percent) > 10, f"{version} {engine}: gap closed, update docs/perf_model.md"
            else:
                assert abs(modeled - percent) <= 10, f"{version} {engine}: modeled {modeled:.2f}% vs {percent}%"
    # the same MACs in every version: modeled time is comparable directly
    t = {v: r.modeled_us / r.macs_issued for v, r in reports.items()}
    assert t["v1"] > 1.15 * t["v2"], "hoisting the loads must pay (v1 is DMA-bound)"
    for later in ("v3", "v4"):
        assert t[later] < 1.05 * t["v2"], f"{later} within 5% of v2 (all TensorE-bound in the model)"


def test_engine_activity_matches_the_tutorial_within_10_points(reports):
    _check(reports)


def test_the_bound_moves_from_dma_to_tensor_engine(reports):
    assert reports["v1"].engine_busy["dma"] > reports["v1"].engine_busy["tensor"]
    assert reports["v4"].bound == "tensor"
    assert reports["v4"].engine_busy["vector"] > 0.05  # SBUF accumulation puts VectorE to work
    per_mac = {v: r.hbm_bytes / r.macs_issued for v, r in reports.items()}
    assert per_mac["v1"] > per_mac["v2"] > per_mac["v3"] > per_mac["v4"]  # each version reloads less


@pytest.mark.slow
def test_calibration_at_the_tutorial_sizes():
    """The tutorial's own sizes (about a minute per version in trace-only mode)."""
    _check({v: _profile(v, *FULL_SHAPE) for v in PUBLISHED})
