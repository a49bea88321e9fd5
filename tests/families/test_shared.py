"""The shared family (docs/shared_experts.md): specs state shared experts, the generated kernel runs in the
simulator and matches moegen.reference.shared; bad specs are located errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from moegen.compare import compare
from moegen.compiler import generate
from moegen.diagnostics import SpecError
from moegen.reference.mlp import ExpertMLP, Precision
from moegen.reference.shared import shared_experts
from moegen.verify import shared as harness
from tests.families.support import build_spec

SEED = 20261206


def spec_text(kernels: str, *, shared: str = "gate_up -> silu -> down", dims: str = "") -> str:
    dims = dims or "shared_experts=2 shared_intermediate=192"
    return (
        "moe t {\n"
        f"  dims hidden=256 intermediate=128 experts=4 top_k=2 {dims}\n"
        "  dtype bf16\n"
        "  expert = gate_up -> silu -> down -> scale\n"
        f"  shared_expert = {shared}\n"
        f"  {kernels}\n"
        "}\n"
    )


def run(tmp_path: Path, text: str, tokens: int):
    generated, modules = build_spec(text, tmp_path)
    plan = generated.plans[0]
    inputs = harness.make_inputs(plan, tokens, np.random.default_rng(SEED))
    got = harness.run(getattr(modules[plan.kernel_name], plan.kernel_name), plan, inputs)["output"]
    return plan, inputs, got


@pytest.mark.parametrize(
    "kernel, tokens",
    [("kernel s : shared { tokens<=8 }", 5), ("kernel s : shared { lnc=2 tokens<=256 }", 130)],
)
def test_two_shared_experts_match_the_reference(tmp_path, kernel, tokens):
    """Both experts run on every token and add up (LNC 1, and LNC 2 over two token tiles)."""
    plan, inputs, got = run(tmp_path, spec_text(kernel), tokens)
    want = harness.expected(plan, inputs)["output"]
    assert compare("output", got, want, kind=harness.tolerance(plan, "output")).ok
    one = shared_experts(
        inputs["hidden_input"],
        inputs["expert_gate_up_weights"][:1],
        inputs["expert_down_weights"][:1],
        precision=Precision(matmul_in="bf16"),
    )
    assert not compare("output", got, one, kind="bf16").ok  # the second expert matters


def test_sigmoid_gate_scales_each_token(tmp_path):
    """Qwen2-MoE's gate: the output is g[t] * MLP(x[t]); without the gate the kernel output differs."""
    text = spec_text("kernel s : shared { tokens<=8 }", shared="gate_up -> gelu -> down -> sigmoid_gate")
    text = text.replace("shared_experts=2", "shared_experts=1")
    plan, inputs, got = run(tmp_path, text, 6)
    assert plan.gate and plan.uses_affinities
    want = harness.expected(plan, inputs)["output"]
    assert compare("output", got, want, kind="bf16").ok
    ungated = shared_experts(
        inputs["hidden_input"],
        inputs["expert_gate_up_weights"],
        inputs["expert_down_weights"],
        mlp=ExpertMLP(activation="gelu"),
        precision=Precision(matmul_in="bf16"),
    )
    assert not compare("output", got, ungated, kind="bf16").ok


def test_tensor_parallel_shared_width(tmp_path):
    """tp splits I_S: the kernel holds I_S / tp = 96 of each shared expert."""
    plan, inputs, got = run(tmp_path, spec_text("kernel s : shared { tp=2 tokens<=4 }"), 3)
    assert plan.intermediate == 96 and inputs["expert_down_weights"].shape == (2, 96, 256)
    assert compare("output", got, harness.expected(plan, inputs)["output"], kind="bf16").ok


def test_explain_says_why_the_shared_experts_are_not_fused(tmp_path):
    generated, _ = build_spec(spec_text("kernel s : shared { }"), tmp_path)
    decisions = dict(generated.plans[0].decisions)
    assert "own kernel, not fused" in decisions and "every token" in decisions["own kernel, not fused"]


def errors(tmp_path: Path, text: str) -> str:
    path = tmp_path / "t.moe"
    path.write_text(text)
    with pytest.raises(SpecError) as caught:
        generate(path)
    return str(caught.value)


@pytest.mark.parametrize(
    "change, message",
    [
        (("shared_intermediate=192", ""), "need both 'shared_experts=S' and 'shared_intermediate=I'"),
        (("shared_experts=2", "shared_expert=2"), "did you mean 'shared_experts'?"),
        (("down\n", "down -> scale\n"), "unknown shared_expert stage 'scale'"),
        (("gate_up -> silu", "sigmoid_gate -> gate_up -> silu"), "'sigmoid_gate' multiplies the shared output"),
        (("  shared_expert = gate_up -> silu -> down\n", ""), "add their MLP"),
        (("shared_intermediate=192", "shared_intermediate=191 tp=2"), "shared_intermediate 191 is not divisible"),
    ],
)
def test_bad_shared_expert_specs_are_located_errors(tmp_path, change, message):
    text = spec_text("kernel s : shared { }").replace(*change)
    assert message in errors(tmp_path, text)


def test_shared_pipeline_without_shared_dims_is_an_error(tmp_path):
    text = spec_text("kernel s : tkg { }", dims="tp=1")
    assert "'shared_expert' needs 'shared_experts=S shared_intermediate=I' in dims" in errors(tmp_path, text)


def test_shared_family_without_shared_experts_is_an_error(tmp_path):
    text = spec_text("kernel s : shared { }", dims="tp=1").replace("  shared_expert = gate_up -> silu -> down\n", "")
    assert "t.moe:5:3: error: kernel 's': the shared family runs the layer's shared experts" in errors(tmp_path, text)


@pytest.mark.parametrize(
    "kernel, tokens",
    [
        ("kernel s : shared { tokens<=8 }", 5),
        ("kernel s : shared { lnc=2 shard=intermediate tokens<=256 }", 130),
        ("kernel s : shared { lnc=2 shard=hidden tp=2 tokens<=8 }", 3),
    ],
)
def test_non_gated_shared_experts_match_the_reference(tmp_path, kernel, tokens):
    """Nemotron-H's shared expert: up -> relu2 -> down, weights [S, H, I_S], no gate projection."""
    plan, inputs, got = run(tmp_path, spec_text(kernel, shared="up -> relu2 -> down"), tokens)
    assert not plan.mlp.gated and plan.mlp.activation == "squared_relu"
    assert inputs["expert_gate_up_weights"].shape == (2, 256, plan.intermediate)
    want = harness.expected(plan, inputs)["output"]
    assert compare("output", got, want, kind=harness.tolerance(plan, "output")).ok
    relu = shared_experts(
        inputs["hidden_input"],
        inputs["expert_gate_up_weights"],
        inputs["expert_down_weights"],
        mlp=ExpertMLP(activation="relu", gated=False),
        precision=Precision(matmul_in="bf16"),
    )
    assert not compare("output", got, relu, kind="bf16").ok  # the square matters


def test_non_gated_shared_expert_with_sigmoid_gate(tmp_path):
    text = spec_text("kernel s : shared { tokens<=8 }", shared="up -> gelu -> down -> sigmoid_gate")
    plan, inputs, got = run(tmp_path, text, 6)
    assert plan.gate and not plan.mlp.gated
    want = harness.expected(plan, inputs)["output"]
    assert compare("output", got, want, kind="bf16").ok
    ungated = shared_experts(
        inputs["hidden_input"],
        inputs["expert_gate_up_weights"],
        inputs["expert_down_weights"],
        mlp=ExpertMLP(activation="gelu", gated=False),
        precision=Precision(matmul_in="bf16"),
    )
    assert not compare("output", got, ungated, kind="bf16").ok


def test_relu2_is_squared_relu_in_both_expert_pipelines(tmp_path):
    """Hugging Face's name (Nemotron-H mlp_hidden_act relu2) parses as squared_relu, without a warning."""
    text = spec_text("kernel s : shared { }", shared="up -> relu2 -> down").replace(
        "gate_up -> silu -> down -> scale", "up -> relu2 -> down -> affinity_scale"
    )
    path = tmp_path / "t.moe"
    path.write_text(text)
    generated = generate(path)
    assert generated.spec.layer.expert.activation == "squared_relu"
    assert generated.spec.layer.shared_expert.activation == "squared_relu"
    assert not generated.spec.warnings
