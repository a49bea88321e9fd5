"""MX tkg kernels (Trainium3): MXFP4 / MXFP8 weights in the seed's layouts, activations quantized on
chip to MXFP8, run in the simulator and compared per element with moegen.reference.tkg on the
exactly dequantized weights (moegen/verify/tkg.py: data_tolerance states the allowance).

Reduced shapes: H 640 = 512 + 128 (two H slabs, the second a quarter full), I 576 = 512 + 64 (two
I slabs, the second 16 partitions), E 4, K 2.
"""

from __future__ import annotations

import numpy as np
import pytest

from moegen.compare import compare
from moegen.diagnostics import SpecError
from moegen.verify import tkg as harness
from tests.families.support import MODES, build, each_mode, kernel_line, layer_spec, module_builds

SEED = 20261206
GPT_OSS = "gate_up(bias) -> clamp(gate <= 7, -7 <= up <= 7) -> swish(1.702) -> up_plus_one -> down(bias) -> scale"
SILU_POST = "gate_up -> silu -> down -> scale"


def spec_text(kernels: str, *, expert: str = GPT_OSS, weights: str = "mxfp4", dtype: str = "bf16", **dims) -> str:
    shape = dict(hidden=640, intermediate=576, experts=4, top_k=2) | dims
    return layer_spec(kernels, dtype=dtype, expert=expert, quant=f"weights={weights}", **shape)


build_dir = module_builds("tkg_mx_builds")


def check(text: str, kernel: str = "k", tokens: int = 4, *, inputs=None):
    """Run one kernel; every output element within data_tolerance. Returns (plan, inputs, got, want)."""
    plans, kernels = build(text)
    plan = plans[kernel]
    if inputs is None:
        inputs = harness.make_inputs(plan, tokens, np.random.default_rng(SEED))
    want = harness.expected(plan, inputs)["output"]
    got = harness.run(kernels[kernel], plan, inputs)["output"]
    result = compare("output", got, want, kind=harness.data_tolerance(plan, "output", inputs))
    assert result.ok, f"{kernel} T={tokens}: {result}\n{text}"
    assert np.abs(want).max() > 0.1  # a real output, not zeros
    return plan, inputs, got, want


# The matrix of every mode: each cell once per mode of MODES (tests/families/support.py); what one mode alone
# runs follows it here and in test_tkg_mx_distinct.py.


@each_mode
@pytest.mark.parametrize("weights", ["mxfp4", "mxfp8"])
@pytest.mark.parametrize("tokens", [1, 3, 8])
def test_gpt_oss_epilogue(mode, weights, tokens):
    check(spec_text(kernel_line(mode), weights=weights), tokens=tokens)


EPILOGUES = {
    "silu_post": SILU_POST,
    "gelu_no_scale": "gate_up -> gelu -> down",
    "clamps_relu": "gate_up -> clamp(-0.5 <= gate <= 0.5, -0.3 <= up <= 0.4) -> relu -> down -> scale",
    "squared_relu_down_bias": "gate_up -> squared_relu -> down(bias) -> scale",
    "swish1_bias_plus_one": "gate_up(bias) -> swish(1.0) -> up_plus_one -> down -> scale",
    "gelu_tanh": "gate_up -> gelu_tanh -> down -> scale",
}


@pytest.mark.parametrize(
    "mode, expert",
    [pytest.param(mode, expert, id=f"{mode}-{name}") for mode in MODES for name, expert in EPILOGUES.items()]
    + [
        pytest.param(
            "selective",
            "scale -> gate_up(bias) -> clamp(gate <= 7, -7 <= up <= 7) -> swish(1.702) -> up_plus_one -> down(bias)",
            id="selective-pre_scale_gpt_oss",
        ),
        pytest.param(
            "distinct",
            "gate_up -> clamp(gate <= 0.5, up >= -0.5) -> silu -> down -> scale",
            id="distinct-one_sided_clamps",
        ),
    ],
)
def test_epilogue_cells(mode, expert):
    check(spec_text(kernel_line(mode), expert=expert, weights="mxfp8"), tokens=5)


@pytest.mark.parametrize(
    "mode, weights",
    [("selective", "mxfp4"), ("distinct", "mxfp4"), ("distinct", "mxfp8")],
)
@pytest.mark.parametrize("dtype, out", [("fp16", "fp16"), ("bf16", "fp32"), ("fp16", "bf16")])
def test_dtypes_in_and_out(mode, weights, dtype, out):
    check(spec_text(kernel_line(mode, f"out={out}"), dtype=dtype, weights=weights), tokens=4)


# Selective and all-expert mode alone


@pytest.mark.parametrize("weights", ["mxfp4", "mxfp8"])
def test_all_experts_beyond_one_token_tile(weights):
    """T = 131 > 128: two token tiles (the MX all-expert mode of the seed)."""
    check(spec_text("kernel k : tkg { mode=all_experts tokens<=256 }", weights=weights), tokens=131)


@pytest.mark.parametrize("options", ["", "mode=all_experts", "lnc=2"])
def test_pre_scale_requantizes_x_times_affinity_per_item(options):
    """PRE_SCALE: x * affinity rounded to bf16, then quantized to MXFP8 again for each work item."""
    check(spec_text(f"kernel k : tkg {{ {options} }}", expert="scale -> gate_up -> silu -> down(bias)"), tokens=3)


@pytest.mark.parametrize(
    "options",
    ["lnc=2 shard=hidden", "lnc=2 shard=tokens", "lnc=2 shard=intermediate", "lnc=2 mode=all_experts tokens<=256"],
)
def test_lnc2(options):
    check(spec_text(f"kernel k : tkg {{ {options} }}"), tokens=130 if "tokens<=256" in options else 4)


def test_expert_parallel_masked_all_experts_and_eager_selective():
    text = spec_text("kernel a : tkg { mode=all_experts ep=2 mask_unselected }\n  kernel e : tkg { eager }", experts=8)
    check(text, "a", tokens=6)
    check(text, "e", tokens=6)


def test_sbuf_output():
    check(spec_text("kernel k : tkg { output=sbuf }"), tokens=4)


def test_selective_equals_all_experts_masked():
    text = spec_text("kernel k : tkg { }\n  kernel a : tkg { mode=all_experts mask_unselected }")
    _, inputs, selective, _ = check(text, "k", tokens=5)
    _, _, all_experts, _ = check(text, "a", tokens=5, inputs=dict(inputs, rank_id=np.zeros((1, 1), np.int32)))
    assert compare("agree", all_experts, selective, kind="bf16").ok


def test_tolerance_catches_swapped_gate_and_up():
    """The allowance is small: swapping the gate and up weights of every expert fails it by far."""
    plans, kernels = build(spec_text("kernel k : tkg { }"))
    plan = plans["k"]
    inputs = harness.make_inputs(plan, 4, np.random.default_rng(SEED))
    got = harness.run(kernels["k"], plan, inputs)["output"]
    swapped = dict(inputs)
    for name in ("expert_gate_up_weights", "expert_gate_up_weights_scale"):
        swapped[name] = np.ascontiguousarray(inputs[name][:, :, ::-1])
    want = harness.expected(plan, swapped)["output"]
    assert not compare("output", got, want, kind=harness.data_tolerance(plan, "output", swapped)).ok


def test_wrong_weight_layout_names_the_argument():
    plans, kernels = build(spec_text("kernel k : tkg { }"))
    plan = plans["k"]
    inputs = harness.make_inputs(plan, 2, np.random.default_rng(SEED))
    inputs["expert_down_weights"] = inputs["expert_down_weights"].astype(np.uint32)
    with pytest.raises(Exception, match="expert_down_weights: expected"):
        harness.run(kernels["k"], plan, inputs)


@pytest.mark.parametrize(
    "kernel, expert, reason",
    [
        ("kernel k : tkg { target=trn2 }", GPT_OSS, "Trainium3"),
        ("kernel k : tkg { input=sbuf }", GPT_OSS, "not the MX slab layout"),
    ],
)
def test_refused_at_spec_time(tmp_path, kernel, expert, reason):
    path = tmp_path / "t.moe"
    path.write_text(spec_text(kernel, expert=expert))
    from moegen.compiler import generate

    with pytest.raises(SpecError) as error:
        generate(path)
    assert reason in str(error.value) and "t.moe:" in str(error.value)


def test_intermediate_split_needs_two_i_slabs(tmp_path):
    path = tmp_path / "t.moe"
    path.write_text(spec_text("kernel k : tkg { lnc=2 shard=intermediate }", intermediate=512))
    from moegen.compiler import generate

    with pytest.raises(SpecError, match="a single 512-value MX slab"):
        generate(path)


def test_dimensions_not_in_whole_mx_blocks_are_refused(tmp_path):
    path = tmp_path / "t.moe"
    path.write_text(spec_text("kernel k : tkg { }", hidden=640, intermediate=560))
    from moegen.compiler import generate

    with pytest.raises(SpecError, match="not a multiple of 32"):
        generate(path)
