"""The MoE knowledge `moegen profile` passes to the model: algorithmic MACs and the HBM minimum."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np

from moegen.verify.profile import algorithmic_macs, minimum_hbm_bytes, needed_experts


def _plan(**fields):
    base = dict(family="tkg", experts=8, local_experts=8, ep=1, top_k=2, hidden=256, intermediate=64)
    base.update(fields)
    return SimpleNamespace(mlp=SimpleNamespace(projections=2), **base)


def _trace(*regions):
    return [{"reads": [{"mem": mem, "parts": [0, 1], "bytes": list(span)}], "writes": []} for mem, span in regions]


def test_minimum_counts_only_the_selected_experts_weights():
    plan = _plan()
    inputs = {
        "expert_gate_up_weights": np.zeros((8, 256, 2, 64), np.float16),
        "expert_down_weights": np.zeros((8, 64, 256), np.float16),
        "hidden_input": np.zeros((4, 256), np.float16),
        "expert_index": np.array([[0, 3], [3, 5], [0, 5], [3, 0]], np.int32),  # experts 0, 3, 5
    }
    # an all-expert kernel touches every expert's weights and writes a [4, 256] fp32 output
    trace = _trace(
        ("hbm:expert_gate_up_weights:0.1", (0, inputs["expert_gate_up_weights"].nbytes)),
        ("hbm:expert_down_weights:0.2", (0, inputs["expert_down_weights"].nbytes)),
        ("hbm:hidden_input:0.3", (0, 4 * 256 * 2)),
        ("hbm:output:0.9", (0, 4 * 256 * 4)),
    )
    weights = inputs["expert_gate_up_weights"].nbytes + inputs["expert_down_weights"].nbytes
    assert needed_experts(plan, inputs) == (3, 8)
    assert minimum_hbm_bytes(plan, inputs, trace, ["hbm:output:0.9"]) == weights * 3 // 8 + 4 * 256 * 2 + 4 * 256 * 4


def test_minimum_leaves_out_the_kernels_own_hbm_scratch():
    """A shard=block prefill keeps the two cores' partial sums in shared HBM ([2T, H]): the kernel's choice,
    not the layer's need. The minimum is the needed inputs and the returned output, each once."""
    plan = _plan(family="cte")
    inputs = {"hidden_states": np.zeros((4, 256), np.float16), "expert_index": np.array([[0, 1]] * 4, np.int32)}
    trace = _trace(
        ("hbm:hidden_states:0.1", (0, 4 * 256 * 2)),
        ("hbm:partials:0.7", (0, 2 * 4 * 256 * 2)),  # written by both cores, read back and summed
        ("hbm:partials:0.7", (0, 2 * 4 * 256 * 2)),
        ("hbm:out:0.8", (0, 4 * 256 * 2)),
    )
    assert minimum_hbm_bytes(plan, inputs, trace, ["hbm:out:0.8"]) == 4 * 256 * 2 + 4 * 256 * 2


def test_expert_parallel_rank_needs_only_its_window():
    plan = _plan(local_experts=4, ep=2)  # the harness runs the last rank: experts 4..7
    inputs = {"expert_index": np.array([[0, 4], [6, 1]], np.int32)}
    assert needed_experts(plan, inputs) == (2, 4)


def test_algorithmic_macs():
    assert algorithmic_macs(_plan(), 4) == 4 * 2 * 3 * 256 * 64
    assert algorithmic_macs(_plan(local_experts=4, ep=2), 4) == 4 * 2 * 3 * 256 * 64 // 2
    router = SimpleNamespace(family="router", hidden=256, experts=8)
    assert algorithmic_macs(router, 4) == 4 * 256 * 8
    assert needed_experts(router, {}) is None


def test_sbuf_variant_minimum_counts_its_inputs_like_the_hbm_variant():
    """A tkg kernel that reads or writes SBUF runs inside the harness's wrapper kernel; the trace must name its
    HBM inputs as the unwrapped kernel's do (hbm:expert_gate_up_weights:...), or the minimum finds none of
    them (it read 0.0 MB, a roofline of 0.002, for selective_sbuf)."""
    from moegen.compiler import generate
    from moegen.verify.profile import profile_plan

    spec = Path(__file__).resolve().parents[2] / "specs" / "tkg_seed_matrix.moe"
    plans = {plan.kernel_name: plan for plan in generate(spec).plans}
    generated = spec.parents[1] / "generated" / "tkg_seed_matrix"
    minimum = {}
    for name in ("selective", "selective_sbuf"):
        report, _, _ = profile_plan(plans[name], generated / f"{name}.py", tokens=1)
        minimum[name] = report.hbm_min_bytes
    assert minimum["selective_sbuf"] == minimum["selective"] > 1_000_000  # the selected experts' weights
