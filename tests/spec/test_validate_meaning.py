"""What a valid spec means: dims, pipelines and how kernel options resolve (family, defaults, base, own)."""

from __future__ import annotations

import pytest

from moegen.diagnostics import SpecError
from moegen.spec.parser import parse
from moegen.spec.validate import validate

LAYER = """\
moe m {
  dims hidden=256 intermediate=512 experts=8 top_k=2 tp=2 ep=4
  dtype bf16 out=fp32
  %s
}
"""


def check(statements: str, toy_family):
    return validate(parse(LAYER % statements, "m.moe"), {"toy": toy_family.options})


def test_dims_and_dtypes(toy_family):
    layer = check("kernel a : toy", toy_family).layer
    assert (layer.dims.intermediate_tp, layer.dims.local_experts) == (256, 2)
    assert (layer.dtype, layer.out_dtype) == ("bf16", "fp32")
    assert layer.router is None and layer.expert is None and layer.quant.weights == "none"


def test_option_resolution_order_family_defaults_base_own(toy_family):
    spec = check(
        """defaults toy { block=512 mode=hybrid }
  kernel base : toy { tokens<=1024 }
  kernel child : base { block=128 selective }
  kernel plain : toy""",
        toy_family,
    )
    options = {v.name: dict(v.options) for v in spec.variants}
    assert options["plain"] == {"lnc": 1, "tokens": 128, "block": 512, "scale": 1.0, "mode": "hybrid"}
    assert options["base"] == {**options["plain"], "tokens": 1024}
    assert options["child"] == {**options["base"], "block": 128, "selective": True}
    child = spec.variants[1]
    assert child.span_of("tokens").line == 5  # inherited from base: points at base's option
    assert child.span_of("block").line == 6  # its own
    assert child.span_of("mode").line == 4  # from the defaults block
    assert child.span_of("scale") == child.span  # a family default: the kernel declaration


def test_float_options_are_floats_and_bounds_accept_equals(toy_family):
    variant = check("kernel a : toy { scale=2 tokens=64 }", toy_family).variants[0]
    assert variant["scale"] == 2.0 and isinstance(variant["scale"], float)
    assert variant["tokens"] == 64


@pytest.mark.parametrize(
    ("router", "pre_norm", "renormalize"),
    [
        ("linear -> softmax -> topk -> renormalize", True, True),
        ("linear -> topk -> softmax", False, False),
        ("linear -> topk -> sigmoid -> renormalize", False, True),
    ],
)
def test_router_norm_position(router, pre_norm, renormalize, toy_family):
    parsed = check(f"router = {router}\n  kernel a : toy", toy_family).layer.router
    assert (parsed.pre_norm, parsed.renormalize) == (pre_norm, renormalize)


def test_deepseek_style_router(toy_family):
    router = check(
        "router = linear(bias) -> sigmoid -> select_bias -> group_limit(groups=4, keep=2, score=top2_sum) -> topk -> scale(2.5)\n"
        "  kernel a : toy",
        toy_family,
    ).layer.router
    assert (router.bias, router.selection_bias, router.n_group, router.topk_group) == (True, True, 4, 2)
    assert router.scaling_factor == 2.5


@pytest.mark.parametrize(
    ("expert", "scale"),
    [
        ("scale -> gate_up -> silu -> down", "pre"),
        ("gate_up -> silu -> down -> scale", "post"),
        ("gate_up -> silu -> down", "none"),
    ],
)
def test_affinity_scaling_by_position(expert, scale, toy_family):
    assert check(f"expert = {expert}\n  kernel a : toy", toy_family).layer.expert.affinity_scale == scale


def test_gpt_oss_expert(toy_family):
    expert = check(
        "expert = gate_up(bias) -> clamp(gate <= 7, -7 <= up <= 7) -> swish(1.702) -> up_plus_one -> down(bias)\n"
        "  kernel a : toy",
        toy_family,
    ).layer.expert
    assert (expert.gated, expert.activation, expert.alpha, expert.up_plus_one) == (True, "swish", 1.702, True)
    assert (expert.gate_min, expert.gate_max, expert.up_min, expert.up_max) == (None, 7.0, -7.0, 7.0)
    assert expert.gate_up_bias and expert.down_bias


def test_non_gated_expert_refuses_up_clamp_and_up_plus_one(toy_family):
    with pytest.raises(SpecError) as error:
        check("expert = up -> clamp(up <= 7) -> squared_relu -> up_plus_one -> down\n  kernel a : toy", toy_family)
    message = str(error.value)
    assert "clamp takes bounds on gate" in message and "'up_plus_one' needs a gated expert" in message
