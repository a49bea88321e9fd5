"""Calibration against the profiles of the NKI kernel-optimisation tutorial (trn2).

https://awsdocs-neuron.readthedocs-hosted.com/en/latest/nki/how-to-guides/kernel-optimization.html
profiles four versions of an fp32 matmul (lhs 4096 x 8192, rhs 8192 x 8192) and shows the profiler's
summary for each (the screenshots v2..v5-pe.png, -dma.png, v5-vec.png on that page): engine-active
percentages and the active times behind them. The kernel's time is the TensorE active time over its
percentage: v1 tiled 34.82 ms / 87.28% = 39.89 ms; v2 loads hoisted 28.16 ms / 99.85% = 28.20 ms;
v3 blocked 28.28 ms / 99.52% = 28.42 ms; v4 blocked in K 28.16 ms / 99.50% = 28.30 ms. So the
profiles show v1 -> v2 as the one large gain and v2, v3, v4 within 0.8% of each other, v3 and v4
slightly *slower* than v2 (the prose says each version is faster; its own figures say otherwise).

The kernels (tests/perf/matmul_tutorial.py) run in trace-only mode at the full K = 8192 with fewer
output tiles, so the test stays fast: M = 256 for v1-v3 (their m loop is outermost: every M tile
repeats the same schedule) and M = 2048, N = 1024 for v4 (one block of the tutorial's blocking); the
modeled time per MAC times the tutorial's MACs is compared with its time. The full-size run is the slow
test below. The one disagreement (v3's DMA activity: the profiled v3 moved as many bytes as v2, our v3
half as many) is recorded in docs/perf_model.md and asserted as such, so closing or widening it shows.
"""

import numpy as np
import pytest

import moegen.perf as perf
from moegen.sim import NkiSimError
from tests.perf import matmul_tutorial as tutorial

PUBLISHED = {
    "v1": {"tensor": 87.28, "dma": 99.93},
    "v2": {"tensor": 99.85, "dma": 99.73},
    "v3": {"tensor": 99.52, "dma": 95.70},
    "v4": {"tensor": 99.50, "dma": 21.54, "vector": 10.55},
}
TENSOR_ACTIVE_MS = {"v1": 34.82, "v2": 28.16, "v3": 28.28, "v4": 28.16}
PUBLISHED_MS = {v: TENSOR_ACTIVE_MS[v] / (PUBLISHED[v]["tensor"] / 100) for v in PUBLISHED}
# modeled full-size time within this fraction of the published one: v1 is DMA-bound and the model keeps all
# 16 DMA engines moving (the profile: 13 of 16 on average; docs/perf_model.md); v2-v4 are TensorE-bound
TIME_TOLERANCE = {"v1": 0.15, "v2": 0.05, "v3": 0.05, "v4": 0.05}
# v3 and v4 against v2 (profiled: +0.8% and +0.4%)
ORDER_TOLERANCE = {"v3": 0.03, "v4": 0.03}
# at M = 4096 the tutorial's v4 tiles fill all 224 KiB of SBUF: no room to prefetch the next K block, so
# the model exposes every lhsT load (full size: 30.83 ms, +8.9% on the profile, +10.2% on the modeled v2),
# which the profiled run overlapped (docs/perf_model.md)
FULL_SIZE_TIME_TOLERANCE = {**TIME_TOLERANCE, "v4": 0.10}
FULL_SIZE_ORDER_TOLERANCE = {**ORDER_TOLERANCE, "v4": 0.12}
KNOWN_GAPS = {("v3", "dma")}  # docs/perf_model.md: the profiled v3 did not get the blocking's reuse
KERNELS = {
    "v1": tutorial.matmul_v1_tiled,
    "v2": tutorial.matmul_v2_hoisted,
    "v3": tutorial.matmul_v3_blocked,
    "v4": tutorial.matmul_v4_blocked_k,
}
FAST_SHAPES = {"v1": (256, 8192, 8192), "v2": (256, 8192, 8192), "v3": (256, 8192, 8192), "v4": (2048, 8192, 1024)}
FULL_SHAPE = (4096, 8192, 8192)
FULL_MACS = FULL_SHAPE[0] * FULL_SHAPE[1] * FULL_SHAPE[2]


def _profile(version: str, m: int, k: int, n: int, **blocks) -> perf.Report:
    lhsT = np.zeros((k, m), np.float32)  # trace-only: values never read; zero pages cost no memory
    rhs = np.zeros((k, n), np.float32)
    return perf.profile(KERNELS[version], lhsT, rhs, target="trn2", trace_only=True, **blocks)


def _full_size_ms(report: perf.Report) -> float:
    return report.modeled_us / report.macs_issued * FULL_MACS / 1000


@pytest.fixture(scope="module")
def reports():
    return {v: _profile(v, *shape) for v, shape in FAST_SHAPES.items()}


def _check(reports: dict, time_tolerance: dict = TIME_TOLERANCE, order_tolerance: dict = ORDER_TOLERANCE) -> None:
    for version, published in PUBLISHED.items():
        for engine, percent in published.items():
            modeled = 100 * reports[version].engine_busy[engine]
            if (version, engine) in KNOWN_GAPS:
                assert abs(modeled - percent) > 10, f"{version} {engine}: gap closed, update docs/perf_model.md"
            else:
                assert abs(modeled - percent) <= 10, f"{version} {engine}: modeled {modeled:.2f}% vs {percent}%"
    ms = {v: _full_size_ms(r) for v, r in reports.items()}
    for version, published in PUBLISHED_MS.items():
        error = ms[version] / published - 1
        assert abs(error) <= time_tolerance[version], f"{version}: modeled {ms[version]:.2f} ms vs {published:.2f} ms"
    # as profiled: hoisting the loads is the large gain (39.9 -> 28.2 ms), blocking changes little
    assert ms["v1"] > 1.2 * ms["v2"]
    for later in ("v3", "v4"):
        assert abs(ms[later] / ms["v2"] - 1) < order_tolerance[later], (
            f"{later}: {ms[later]:.2f} ms vs v2 {ms['v2']:.2f}"
        )


def test_engine_activity_and_time_match_the_tutorial_profiles(reports):
    _check(reports)


def test_the_bound_moves_from_dma_to_tensor_engine(reports):
    assert reports["v1"].engine_busy["dma"] > reports["v1"].engine_busy["tensor"]
    assert reports["v4"].bound == "tensor"
    assert reports["v4"].engine_busy["vector"] > 0.05  # SBUF accumulation puts VectorE to work
    per_mac = {v: r.hbm_bytes / r.macs_issued for v, r in reports.items()}
    assert per_mac["v1"] > per_mac["v2"] > per_mac["v3"] > per_mac["v4"]  # each version reloads less


def test_the_tutorials_v3_blocking_does_not_fit_sbuf():
    """The tutorial's v3 (2 x 2 tiles per block) keeps two K columns of lhsT (2 x 64 x 512 B) and of rhs
    (2 x 64 x 2 KiB) live: 320 KiB per partition at K = 8192, more than trn2's 224 KiB (Trainium2
    architecture guide: 128 partitions of 224 KiB). Our v3 therefore blocks 2 x 1."""
    with pytest.raises(NkiSimError, match="SBUF capacity exceeded"):
        _profile("v3", 256, 8192, 1024, TILES_IN_BLOCK_N=2)


@pytest.mark.slow
def test_calibration_at_the_tutorial_sizes():
    """The tutorial's own sizes (one to several minutes per version in trace-only mode)."""
    _check({v: _profile(v, *FULL_SHAPE) for v in PUBLISHED}, FULL_SIZE_TIME_TOLERANCE, FULL_SIZE_ORDER_TOLERANCE)
