"""tkg kernels generated from inline specs, run in the simulator, compared per element with
moegen.reference.tkg (rounded where the kernel rounds: see moegen/verify/tkg.py).

Reduced shapes: H 256 (two full tiles) or 320 (a 64-row remainder), I 192 (128 + 64). Each test
is one behaviour; the matrix (token sweep T {1, 4, 31, 128}, then the feature cells at a few tokens)
runs in every mode of MODES, what one mode alone runs follows it. Real-model shapes are `slow` (and
`moegen verify`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from moegen.codegen.build import write
from moegen.compare import compare
from moegen.compiler import generate
from moegen.reference.tkg import moe_tkg
from moegen.verify import tkg as harness
from tests.families.support import MODES, build, each_mode, kernel_line, module_builds
from tests.families.support import tkg_spec as spec_text

REPO = Path(__file__).resolve().parents[2]
SEED = 20261123
SILU_POST = "gate_up -> silu -> down -> scale"
GPT_OSS = "gate_up(bias) -> clamp(gate <= 7, -7 <= up <= 7) -> swish(1.702) -> up_plus_one -> down(bias) -> scale"


build_dir = module_builds("tkg_builds")


def check(text: str, kernel: str = "k", tokens: int = 4, *, seed: int = SEED, inputs=None):
    """Run one kernel on seeded inputs; assert every output element within tolerance. Returns
    (plan, inputs, kernel output)."""
    plans, kernels = build(text)
    plan = plans[kernel]
    if inputs is None:
        inputs = harness.make_inputs(plan, tokens, np.random.default_rng(seed))
    want = harness.expected(plan, inputs)["output"]
    got = harness.run(kernels[kernel], plan, inputs)["output"]
    result = compare("output", got, want, kind=harness.tolerance(plan, "output"))
    assert result.ok, f"{kernel} T={tokens} seed={seed}: {result}\n{text}"
    return plan, inputs, got


# The matrix of every mode: each cell once per mode of MODES (tests/families/support.py); what one mode alone
# runs follows it here and in test_tkg_distinct.py.


@each_mode
@pytest.mark.parametrize("tokens", [1, 4, 31, pytest.param(128, marks=pytest.mark.slow)])
def test_silu_post_scale(mode, tokens):
    check(spec_text(kernel_line(mode)), tokens=tokens)


@each_mode
@pytest.mark.parametrize("experts, top_k, ep", [(4, 1, 1), (16, 4, 1), (32, 8, 1), (16, 4, 4), (32, 2, 8)])
def test_experts_and_top_k(mode, experts, top_k, ep):
    """Under EP the selective cell runs the masked all-expert mode (selective mode has no rank)."""
    word = {"selective": "selective" if ep == 1 else "all_experts mask_unselected", "distinct": "distinct"}[mode]
    text = spec_text(
        f"kernel k : tkg {{ mode={word} ep={ep} }}", experts=experts, top_k=top_k, hidden=128, intermediate=128
    )
    check(text, tokens=6)


@each_mode
@pytest.mark.parametrize(
    "activation", ["silu", "gelu", "gelu_tanh", "swish(1.702)", "swish(1.0)", "relu", "squared_relu"]
)
def test_each_activation(mode, activation):
    check(spec_text(kernel_line(mode), expert=f"gate_up -> {activation} -> down -> scale"))


@each_mode
@pytest.mark.parametrize(
    "clamp", ["gate <= 0.5", "gate >= -0.5", "up <= 0.5", "up >= -0.5", "-0.5 <= gate <= 0.5, -0.3 <= up <= 0.4"]
)
def test_each_clamp_alone_and_all_four(mode, clamp):
    check(spec_text(kernel_line(mode), expert=f"gate_up -> clamp({clamp}) -> silu -> down -> scale"))


@each_mode
@pytest.mark.parametrize(
    "expert",
    [
        "gate_up(bias) -> silu -> down -> scale",
        "gate_up -> silu -> down(bias) -> scale",
        GPT_OSS,
        "gate_up -> clamp(-1 <= up <= 1) -> silu -> up_plus_one -> down -> scale",
    ],
    ids=["gate_up_bias", "down_bias", "gpt_oss", "plus_one_without_bias"],
)
def test_biases_and_the_folded_plus_one(mode, expert):
    """Biases make an unselected token's y non-zero: distinct mode's zero column must still drop it."""
    check(spec_text(kernel_line(mode), expert=expert, hidden=320))


@each_mode
@pytest.mark.parametrize("dtype, out", [("fp16", None), ("bf16", "fp32"), ("fp16", "bf16")])
def test_dtype_paths(mode, dtype, out):
    check(spec_text(kernel_line(mode, f"out={out}" if out else ""), dtype=dtype), tokens=3)


@each_mode
@pytest.mark.parametrize(
    "quant",
    [
        "weights=fp8_row",
        "weights=fp8_static",
        "weights=fp8_row activations=fp8_static",
        "weights=fp8_static activations=fp8_static",
    ],
)
def test_fp8_weights(mode, quant):
    check(spec_text(kernel_line(mode), quant=quant, hidden=320, expert=GPT_OSS), tokens=3)


@pytest.mark.parametrize("kernel", ["kernel k : tkg { mode=all_experts mask_unselected }", kernel_line("distinct")])
def test_fp8_static_input_with_pre_scale(kernel):
    check(
        spec_text(kernel, quant="weights=fp8_static activations=fp8_static", expert="scale -> gate_up -> silu -> down"),
        tokens=4,
    )


LNC2_SPLITS = ["lnc=2", "lnc=2 shard=hidden", "lnc=2 shard=tokens", "lnc=2 shard=intermediate out=fp32"]


@pytest.mark.parametrize(
    "kernel",
    [kernel_line(mode, split) for mode in MODES for split in LNC2_SPLITS]
    + [
        "kernel k : tkg { lnc=2 mode=all_experts }",
        "kernel k : tkg { lnc=2 mode=all_experts shard=tokens tokens<=256 }",
        kernel_line("distinct", "lnc=2 ep=2 shard=tokens"),
    ],
)
def test_lnc2(kernel):
    check(spec_text(kernel, hidden=320, expert=GPT_OSS), tokens=5)


@pytest.mark.parametrize(
    "kernel",
    [kernel_line(mode, io) for mode in MODES for io in ("input=sbuf tokens<=16", "input=sbuf output=sbuf tokens<=16")]
    + [
        "kernel k : tkg { mode=all_experts input=sbuf output=sbuf tokens<=16 }",
        kernel_line("distinct", "output=sbuf tokens<=16 out=fp32"),
    ],
)
def test_sbuf_input_and_output(kernel):
    """hidden_input [128, T, H / 128] in SBUF (column h0 * H1 + h1 at [h0, t, h1]) loaded by a wrapper, and
    an SBUF output read back by it."""
    check(spec_text(kernel, hidden=384, expert=GPT_OSS), tokens=7)


# Selective and all-expert mode alone


@pytest.mark.parametrize("tokens", [1, 31, 128])
def test_all_experts_silu_post_scale(tokens):
    check(spec_text("kernel k : tkg { mode=all_experts }"), tokens=tokens)


def test_selective_equals_all_experts_masked_on_the_same_inputs():
    text = spec_text("kernel k : tkg { }\n  kernel a : tkg { mode=all_experts mask_unselected }", hidden=320)
    _, inputs, selective = check(text, "k", tokens=5)
    _, _, all_experts = check(text, "a", tokens=5, inputs=dict(inputs, rank_id=np.zeros((1, 1), np.int32)))
    assert compare("agree", all_experts, selective, kind="bf16").ok


@pytest.mark.parametrize("mode", ["selective", "all_experts"])
@pytest.mark.parametrize("scale", ["none", "pre", "post"])
def test_each_scaling_mode(mode, scale):
    expert = {"none": "gate_up -> silu -> down", "pre": "scale -> gate_up -> silu -> down", "post": SILU_POST}[scale]
    check(spec_text(f"kernel k : tkg {{ mode={mode} }}", expert=expert, hidden=320), tokens=5)


def test_eager_affinities():
    check(spec_text("kernel k : tkg { eager }"), tokens=6)


def test_all_experts_more_than_128_tokens_by_tiles():
    check(spec_text("kernel k : tkg { mode=all_experts tokens<=300 }", experts=4), tokens=200)


def test_sbuf_output_read_back_through_a_wrapper():
    check(spec_text("kernel k : tkg { output=sbuf tokens<=16 out=fp32 }"), tokens=9)


def test_expert_parallel_ranks_sum_to_the_full_layer():
    """All-expert mode once per rank (each with its E_L experts and rank_id), summed over ranks,
    equals the full-E layer."""
    ranks, experts, tokens = 4, 8, 6
    text = spec_text(f"kernel k : tkg {{ mode=all_experts ep={ranks} mask_unselected out=fp32 }}", experts=experts)
    plans, kernels = build(text)
    plan = plans["k"]
    rng = np.random.default_rng(SEED)
    full = harness.make_inputs(plan, tokens, rng)  # one rank's shapes; the full weights are drawn below
    gate_up = np.concatenate(
        [
            harness.make_inputs(plan, tokens, np.random.default_rng(SEED + r))["expert_gate_up_weights"]
            for r in range(ranks)
        ]
    )
    down = np.concatenate(
        [
            harness.make_inputs(plan, tokens, np.random.default_rng(SEED + r))["expert_down_weights"]
            for r in range(ranks)
        ]
    )
    total = np.zeros((tokens, plan.hidden), dtype=np.float32)
    for rank in range(ranks):
        inputs = dict(
            full,
            rank_id=np.array([[rank]], dtype=np.int32),
            expert_gate_up_weights=gate_up[rank * 2 : (rank + 1) * 2],
            expert_down_weights=down[rank * 2 : (rank + 1) * 2],
        )
        total += harness.run(kernels["k"], plan, inputs)["output"]
    want = moe_tkg(
        full["hidden_input"],
        gate_up,
        down,
        full["expert_affinities"],
        full["expert_index"],
        mode="selective",
        affinity_scale="post",
        output_dtype="fp32",
        precision="bf16",
    )
    result = compare("sum over ranks", total, want, kind="bf16")
    assert result.ok, str(result)


@pytest.mark.slow
@pytest.mark.parametrize(
    "spec",
    [
        "mixtral_8x7b",
        "qwen3_30b_a3b",
        "gpt_oss_20b",
        "llama4_scout",
        "tkg_seed_matrix",
        "tkg_seed_matrix_fp8_row",
        "tkg_seed_matrix_fp8_static",
    ],
)
def test_real_model_variants(spec, tmp_path):
    from moegen.verify import verify_plans

    generated = generate(REPO / "specs" / f"{spec}.moe")
    folder = write(generated, tmp_path)
    plans = [plan for plan in generated.plans if plan.family == "tkg"]
    assert verify_plans(plans, folder, out=lambda line: None)


@pytest.mark.slow
@pytest.mark.parametrize("tokens", [1, 4, 31, 128])
@pytest.mark.parametrize(
    "kernel", ["kernel k : tkg { }", "kernel k : tkg { mode=all_experts mask_unselected }", "kernel k : tkg { lnc=2 }"]
)
def test_sweep_gpt_oss_style(tokens, kernel):
    check(spec_text(kernel, hidden=704, intermediate=320, experts=16, top_k=4, expert=GPT_OSS), tokens=tokens)
