"""Shared experts fused into the routed tkg kernel (moegen/plan/shared_fusion.py, docs/shared_experts.md):
the kernel's output is routed + shared (rounded once), against the references; the plan's decision and
the `shared=` option."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from moegen.compare import compare
from moegen.compiler import generate
from moegen.diagnostics import SpecError
from moegen.reference.mlp import Precision
from moegen.reference.shared import shared_experts
from moegen.reference.tkg import moe_tkg
from moegen.verify import tkg as harness
from tests.families.support import build_spec

SEED = 20261206


def spec_text(kernel: str, *, shared: str = "gate_up -> silu -> down", expert: str = "", dims: str = "") -> str:
    return (
        "moe t {\n"
        f"  dims hidden=256 intermediate=128 experts=4 top_k=2 {dims or 'shared_experts=2 shared_intermediate=384'}\n"
        "  dtype bf16\n"
        f"  expert = {expert or 'gate_up -> silu -> down -> affinity_scale'}\n"
        f"  shared_expert = {shared}\n"
        f"  {kernel}\n"
        "}\n"
    )


def run(tmp_path: Path, text: str, tokens: int):
    generated, modules = build_spec(text, tmp_path)
    plan = generated.plans[0]
    inputs = harness.make_inputs(plan, tokens, np.random.default_rng(SEED))
    got = harness.run(getattr(modules[plan.kernel_name], plan.kernel_name), plan, inputs)["output"]
    return plan, inputs, got


def routed_only(plan, inputs) -> np.ndarray:
    return moe_tkg(**harness._reference_arguments(plan, inputs))


@pytest.mark.parametrize(
    "kernel, tokens, shared, expert",
    [
        ("kernel k : tkg { tokens<=8 }", 5, "gate_up -> silu -> down", ""),
        ("kernel k : tkg { tokens<=8 }", 5, "up -> relu2 -> down", "up -> relu2 -> down -> affinity_scale"),
        ("kernel k : tkg { tokens<=8 }", 3, "up -> gelu -> down", ""),  # routed gated, shared not
        ("kernel k : tkg { tokens<=8 }", 3, "gate_up -> silu -> down", "up -> relu -> down -> affinity_scale"),
        ("kernel k : tkg { tokens<=8 }", 4, "gate_up -> gelu -> down -> sigmoid_gate", ""),
        ("kernel k : tkg { lnc=2 shard=intermediate tokens<=8 }", 5, "gate_up -> silu -> down", ""),
        ("kernel k : tkg { lnc=2 shard=hidden tokens<=8 }", 5, "up -> relu2 -> down -> sigmoid_gate", ""),
        ("kernel k : tkg { lnc=2 shard=tokens mode=all_experts tokens<=256 }", 130, "gate_up -> silu -> down", ""),
        ("kernel k : tkg { mode=distinct tokens<=8 }", 6, "gate_up -> silu -> down", ""),
        (
            "kernel k : tkg { tp=3 tokens<=8 }",
            4,
            "gate_up -> silu -> down",
            "affinity_scale -> gate_up -> silu -> down",
        ),
    ],
)
def test_fused_shared_experts_match_the_reference(tmp_path, kernel, tokens, shared, expert):
    """routed + shared in one kernel equals the two references summed; without the shared part it differs."""
    text = spec_text(kernel, shared=shared, expert=expert)
    if "tp=3" in kernel or "shard=intermediate" in kernel:
        text = text.replace("intermediate=128", "intermediate=384")
    plan, inputs, got = run(tmp_path, text, tokens)
    assert plan.shared is not None and plan.shared.experts == 2
    want = harness.expected(plan, inputs)["output"]
    assert compare("output", got, want, kind=harness.tolerance(plan, "output")).ok
    assert not compare("output", got, routed_only(plan, inputs), kind="bf16").ok


def test_expert_parallel_ranks_each_take_a_slice_of_the_shared_experts(tmp_path):
    """ep=2: each rank holds I_S / 2 of every shared expert; the two ranks' outputs sum to the whole layer."""
    text = spec_text("kernel k : tkg { mode=all_experts ep=2 mask_unselected tokens<=8 }")
    generated, modules = build_spec(text, tmp_path)
    plan = generated.plans[0]
    kernel = modules["k"].k
    assert plan.shared.intermediate == 192 and plan.uses_rank
    rng = np.random.default_rng(SEED)
    rank1 = harness.make_inputs(plan, 4, rng, rank=1)
    rank0 = dict(rank1, rank_id=np.array([[0]], dtype=np.int32))
    halves = (rank0["shared_gate_up_weights"], rank0["shared_down_weights"])
    other = harness.make_inputs(plan, 4, np.random.default_rng(SEED + 1), rank=0)
    rank0["shared_gate_up_weights"], rank0["shared_down_weights"] = (
        other["shared_gate_up_weights"],
        other["shared_down_weights"],
    )
    for inputs in (rank0, rank1):
        got = harness.run(kernel, plan, inputs)["output"]
        assert compare("output", got, harness.expected(plan, inputs)["output"], kind="bf16").ok
    # the two slices are one shared expert of width I_S = 384
    whole = shared_experts(
        rank1["hidden_input"],
        np.concatenate([rank0["shared_gate_up_weights"], halves[0]], axis=-1),
        np.concatenate([rank0["shared_down_weights"], halves[1]], axis=1),
        output_dtype="fp32",
        precision=Precision(matmul_in="bf16"),
    )
    parts = [harness.shared_fused.expected(plan.shared, inputs, "bf16") for inputs in (rank0, rank1)]
    # fp32 sums in another order (BLAS threads split the contraction differently): agree to fp32 rounding of H terms
    np.testing.assert_allclose(parts[0] + parts[1], whole, rtol=1e-4, atol=1e-4)


def test_explain_says_fused_and_why(tmp_path):
    generated, _ = build_spec(spec_text("kernel k : tkg { }\n  kernel s : tkg { shared=separate }"), tmp_path)
    fused, separate = generated.plans
    assert (
        fused.shared
        and "fused: the shared experts move the same weight bytes" in dict(fused.decisions)["shared experts"]
    )
    assert separate.shared is None and "shared=separate" in dict(separate.decisions)["shared experts"]
    assert "shared_gate_up_weights" in harness.argument_names(fused)
    assert "shared_gate_up_weights" not in harness.argument_names(separate)


def test_auto_falls_back_to_separate_and_says_why(tmp_path):
    """shared_intermediate 384 at tp 3 x ep 2 is not divisible: auto keeps them separate, fused is an error."""
    text = spec_text("kernel k : tkg { mode=all_experts ep=2 tp=4 }").replace("intermediate=128", "intermediate=512")
    generated, _ = build_spec(text.replace("shared_intermediate=384", "shared_intermediate=388"), tmp_path)
    plan = generated.plans[0]
    assert plan.shared is None and "not divisible by tp 4 x ep 2" in dict(plan.decisions)["shared experts"]
    path = tmp_path / "bad.moe"
    path.write_text(
        text.replace("tp=4 }", "tp=4 shared=fused }").replace("shared_intermediate=384", "shared_intermediate=388")
    )
    with pytest.raises(SpecError) as caught:
        generate(path)
    assert "shared=fused: shared_intermediate 388 is not divisible by tp 4 x ep 2" in str(caught.value)


def test_shared_fused_without_shared_experts_is_an_error(tmp_path):
    path = tmp_path / "t.moe"
    text = spec_text("kernel k : tkg { shared=fused }", dims="tp=1").replace(
        "  shared_expert = gate_up -> silu -> down\n", ""
    )
    path.write_text(text)
    with pytest.raises(SpecError) as caught:
        generate(path)
    assert "t.moe:5:20: error" in str(caught.value) and "the layer has no shared experts" in str(caught.value)


def test_wrong_shared_weights_shape_names_the_argument(tmp_path):
    generated, modules = build_spec(spec_text("kernel k : tkg { tokens<=8 }"), tmp_path)
    plan = generated.plans[0]
    inputs = harness.make_inputs(plan, 2, np.random.default_rng(SEED))
    inputs["shared_down_weights"] = inputs["shared_down_weights"][:, :128]
    with pytest.raises(Exception, match="shared_down_weights: expected"):
        harness.run(modules["k"].k, plan, inputs)


def cte_spec(kernel: str, *, shared: str = "gate_up -> silu -> down", expert: str = "", top_k: int = 2) -> str:
    return (
        "moe t {\n"
        f"  dims hidden=320 intermediate=256 experts=4 top_k={top_k} shared_experts=2 shared_intermediate=384\n"
        "  dtype bf16\n"
        f"  expert = {expert or 'gate_up -> silu -> down -> affinity_scale'}\n"
        f"  shared_expert = {shared}\n"
        f"  {kernel}\n"
        "}\n"
    )


@pytest.mark.parametrize(
    "kernel, shared, expert, top_k",
    [
        ("kernel c : cte { lnc=1 block=128 }", "gate_up -> silu -> down", "", 2),
        ("kernel c : cte { lnc=1 block=128 }", "up -> relu2 -> down", "up -> relu2 -> down -> affinity_scale", 2),
        ("kernel c : cte { lnc=2 shard=block block=128 }", "gate_up -> gelu -> down -> sigmoid_gate", "", 2),
        ("kernel c : cte { lnc=2 shard=block block=128 }", "up -> relu2 -> down", "", 1),  # top-1 overwrite
        ("kernel c : cte { lnc=2 shard=intermediate block=128 }", "gate_up -> silu -> down", "", 2),
        (
            "kernel c : cte { lnc=2 shard=intermediate loop=hybrid block=128 }",
            "up -> gelu -> down -> sigmoid_gate",
            "",
            2,
        ),
        ("kernel c : cte { lnc=1 block=128 padding=skip }", "gate_up -> silu -> down", "", 2),
        ("kernel c : cte { lnc=1 block=128 ep=2 }", "gate_up -> silu -> down", "", 2),
        ("kernel c : cte { lnc=1 block=128 }", "gate_up -> silu -> down", "up -> relu -> down -> affinity_scale", 2),
        # two 128-row tiles per pass over the shared weights (the second one partial at T = 150)
        ("kernel c : cte { lnc=1 block=256 }", "gate_up -> gelu -> down -> sigmoid_gate", "", 2),
        ("kernel c : cte { lnc=2 shard=block block=256 }", "up -> relu2 -> down", "", 2),
        (
            "kernel c : cte { lnc=2 shard=intermediate loop=hybrid block=256 }",
            "up -> relu2 -> down",
            "up -> relu2 -> down -> affinity_scale",
            2,
        ),
        ("kernel c : cte { lnc=2 shard=intermediate block=256 }", "gate_up -> silu -> down -> sigmoid_gate", "", 2),
    ],
)
def test_fused_shared_experts_in_cte_match_the_reference(tmp_path, kernel, shared, expert, top_k):
    """Prefill: out[t] = routed experts + each shared expert, added after the blocks on 128-row tiles."""
    from moegen.verify import cte as cte_harness

    generated, modules = build_spec(cte_spec(kernel, shared=shared, expert=expert, top_k=top_k), tmp_path)
    plan = generated.plans[0]
    assert plan.shared is not None and "shared_gate_up_weights" in plan.arguments
    if "ep=2" in kernel:
        assert plan.shared.intermediate == 192
    inputs = cte_harness.make_inputs(plan, 150, np.random.default_rng(SEED))
    got = cte_harness.run(modules["c"].c, plan, inputs)["out"]
    want = cte_harness.expected(plan, inputs)["out"]
    assert compare("out", got, want, kind=cte_harness.tolerance(plan, "out")).ok
    routed = cte_harness.expected(replace(plan, shared=None), inputs)["out"]
    assert not compare("out", got, routed, kind="bf16").ok


def test_cte_per_core_output_keeps_the_shared_experts_separate(tmp_path):
    text = cte_spec(
        "kernel c : cte { lnc=2 shard=block block=128 output=per_core }\n  kernel f : cte { shared=fused output=per_core }"
    )
    path = tmp_path / "t.moe"
    path.write_text(text)
    with pytest.raises(SpecError) as caught:
        generate(path)
    assert "kernel 'f': shared=fused: output=per_core leaves the cores' partial sums to the caller" in str(caught.value)
    generated, _ = build_spec(text.replace("\n  kernel f : cte { shared=fused output=per_core }", ""), tmp_path)
    assert generated.plans[0].shared is None
    assert "separate (auto): output=per_core" in dict(generated.plans[0].decisions)["shared experts"]


def test_cte_shared_weights_stream_once_per_row_group(tmp_path):
    """Nemotron-like prefill (shard=intermediate, loop=hybrid, LNC 2, block 256): the cores take every other
    group of two 128-row tiles, whole rows, so the trace reads each shared weight byte once per 256 tokens over
    both cores. (The earlier kernel had both cores read all the shared gate/up weights and half the down
    weights for every 128-row tile: 3x these bytes.)"""
    from moegen import sim
    from moegen.verify import cte as cte_harness

    text = cte_spec(
        "kernel c : cte { lnc=2 shard=intermediate loop=hybrid block=256 }",
        shared="up -> relu2 -> down",
        expert="up -> relu2 -> down -> affinity_scale",
    )
    generated, modules = build_spec(text, tmp_path)
    plan = generated.plans[0]
    assert (plan.shared.row_tiles, plan.shared.row_split) == (2, True)
    tokens = 512
    inputs = cte_harness.make_inputs(plan, tokens, np.random.default_rng(SEED))
    with sim.recording():
        got = cte_harness.run(modules["c"].c, plan, inputs)["out"]
        trace = sim.last_run().trace
    assert compare("out", got, cte_harness.expected(plan, inputs)["out"], kind=cte_harness.tolerance(plan, "out")).ok
    shared_bytes = {
        name: sum(
            rec["bytes"] for rec in trace if rec["opcode"] == "dma_copy" and name in str(rec["operands"].get("src"))
        )
        for name in ("shared_gate_up_weights", "shared_down_weights")
    }
    weights = 2 * 384 * 320 * 2  # S = 2 shared experts of [H 320, I_S 384], bf16, per projection
    assert shared_bytes == {"shared_gate_up_weights": 2 * weights, "shared_down_weights": 2 * weights}


def test_cte_fused_shared_tiles_fit_the_usable_sbuf():
    """Every checked-in cte kernel with fused shared experts keeps its SBUF buffers, the shared stage's included,
    within the bytes per partition a cte plan may use (SBUF_BYTES - SBUF_RESERVED: the runtime keeps ~16 KiB). The
    Nemotron 3 prefill's shared gate/up slabs were 7 I tiles, 221496 bytes against 212992 usable (now 6, 210744), before the shared
    stage budgeted against the same limit as the routed plan."""
    from moegen.compiler import generate
    from moegen.plan.common import SBUF_BYTES, SBUF_RESERVED

    fused = []
    for spec in sorted((Path(__file__).resolve().parents[2] / "specs").glob("*.moe")):
        for plan in generate(spec).plans:
            if plan.family == "cte" and getattr(plan, "shared", None) is not None and plan.target == "trn2":
                fused.append(plan.kernel_name)
                assert plan.sbuf_bytes() <= SBUF_BYTES["trn2"] - SBUF_RESERVED, (spec.name, plan.kernel_name)
    assert fused  # the real-model specs fuse their shared experts
