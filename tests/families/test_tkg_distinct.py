"""tkg mode=distinct: each local expert some token selected runs once on the whole token tile.

The same matrix as selective mode (tests/families/test_tkg_kernels.py): token counts, experts and
top-K, activations, clamps, biases, scaling modes, eager affinities, dtype paths, fp8 quantization,
LNC=2 splits, SBUF input/output, expert parallelism, partial tiles; each compared per element with
the reference (selective semantics). Plus what the mode is for: each selected expert's weights are
read from HBM once, whatever T.
"""

from __future__ import annotations

import numpy as np
import pytest

from moegen import sim
from moegen.compare import compare
from moegen.verify import tkg as harness
from tests.families import test_tkg_kernels as base
from tests.families.test_tkg_kernels import GPT_OSS, SEED, SILU_POST, build, check, spec_text


@pytest.fixture(scope="module", autouse=True)
def build_dir(tmp_path_factory):
    base._BUILD_DIR[:] = [tmp_path_factory.mktemp("tkg_distinct_builds")]
    build.cache_clear()
    yield
    build.cache_clear()


@pytest.mark.parametrize("tokens", [1, 4, 31, pytest.param(128, marks=pytest.mark.slow)])
def test_silu_post_scale(tokens):
    check(spec_text("kernel k : tkg { mode=distinct }"), tokens=tokens)


@pytest.mark.parametrize("experts, top_k, ep", [(4, 1, 1), (16, 4, 1), (32, 8, 1), (16, 4, 4), (32, 2, 8)])
def test_experts_and_top_k(experts, top_k, ep):
    text = spec_text(
        f"kernel k : tkg {{ mode=distinct ep={ep} }}", experts=experts, top_k=top_k, hidden=128, intermediate=128
    )
    check(text, tokens=6)


def test_equals_selective_on_the_same_inputs():
    text = spec_text("kernel k : tkg { }\n  kernel d : tkg { mode=distinct }", hidden=320)
    _, inputs, selective = check(text, "k", tokens=7)
    _, _, distinct = check(text, "d", tokens=7, inputs=inputs)
    assert compare("agree", distinct, selective, kind="bf16").ok


@pytest.mark.parametrize(
    "activation", ["silu", "gelu", "gelu_tanh", "swish(1.702)", "swish(1.0)", "relu", "squared_relu"]
)
def test_each_activation(activation):
    check(spec_text("kernel k : tkg { mode=distinct }", expert=f"gate_up -> {activation} -> down -> scale"))


@pytest.mark.parametrize(
    "clamp", ["gate <= 0.5", "gate >= -0.5", "up <= 0.5", "up >= -0.5", "-0.5 <= gate <= 0.5, -0.3 <= up <= 0.4"]
)
def test_each_clamp(clamp):
    check(spec_text("kernel k : tkg { mode=distinct }", expert=f"gate_up -> clamp({clamp}) -> silu -> down -> scale"))


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
def test_biases_and_the_folded_plus_one(expert):
    """Biases make an unselected token's y non-zero: its zero column must still drop it."""
    check(spec_text("kernel k : tkg { mode=distinct }", expert=expert, hidden=320))


@pytest.mark.parametrize("ep", [1, 2])
@pytest.mark.parametrize("scale", ["none", "pre", "post"])
def test_each_scaling_mode(scale, ep):
    expert = {
        "none": "gate_up(bias) -> silu -> down",
        "pre": "scale -> gate_up(bias) -> silu -> down",
        "post": SILU_POST,
    }[scale]
    check(spec_text(f"kernel k : tkg {{ mode=distinct ep={ep} }}", expert=expert, hidden=320), tokens=5)


@pytest.mark.parametrize("ep", [1, 2])
def test_eager_affinities(ep):
    check(spec_text(f"kernel k : tkg {{ mode=distinct eager ep={ep} }}"), tokens=6)


@pytest.mark.parametrize("dtype, out", [("fp16", None), ("bf16", "fp32"), ("fp16", "bf16")])
def test_dtype_paths(dtype, out):
    option = f"out={out}" if out else ""
    check(spec_text(f"kernel k : tkg {{ mode=distinct {option} }}", dtype=dtype), tokens=3)


@pytest.mark.parametrize(
    "quant",
    [
        "weights=fp8_row",
        "weights=fp8_static",
        "weights=fp8_row activations=fp8_static",
        "weights=fp8_static activations=fp8_static",
    ],
)
def test_fp8_weights(quant):
    check(spec_text("kernel k : tkg { mode=distinct }", quant=quant, hidden=320, expert=GPT_OSS), tokens=3)


def test_fp8_static_input_with_pre_scale():
    check(
        spec_text(
            "kernel k : tkg { mode=distinct }",
            quant="weights=fp8_static activations=fp8_static",
            expert="scale -> gate_up -> silu -> down",
        ),
        tokens=4,
    )


@pytest.mark.parametrize(
    "kernel",
    [
        "kernel k : tkg { mode=distinct lnc=2 }",
        "kernel k : tkg { mode=distinct lnc=2 shard=hidden }",
        "kernel k : tkg { mode=distinct lnc=2 shard=tokens }",
        "kernel k : tkg { mode=distinct lnc=2 shard=intermediate out=fp32 }",
        "kernel k : tkg { mode=distinct lnc=2 ep=2 shard=tokens }",
    ],
)
def test_lnc2(kernel):
    check(spec_text(kernel, hidden=320, expert=GPT_OSS), tokens=5)


@pytest.mark.parametrize(
    "kernel",
    [
        "kernel k : tkg { mode=distinct input=sbuf tokens<=16 }",
        "kernel k : tkg { mode=distinct input=sbuf output=sbuf tokens<=16 }",
        "kernel k : tkg { mode=distinct output=sbuf tokens<=16 out=fp32 }",
    ],
)
def test_sbuf_input_and_output(kernel):
    check(spec_text(kernel, hidden=384, expert=GPT_OSS), tokens=7)


def test_gpt_oss_partial_tiles_h2880_i1856():
    """GPT-OSS's odd sizes: H 2880 = 22 x 128 + 64, I 1856 = 14 x 128 + 64 (partial contraction tiles)."""
    check(
        spec_text("kernel k : tkg { mode=distinct }", hidden=2880, intermediate=1856, experts=4, expert=GPT_OSS),
        tokens=2,
    )


def _weight_bytes_read(plan, kernel, inputs) -> int:
    """Bytes the kernel's DMAs read from expert_gate_up_weights and expert_down_weights."""
    with sim.recording():
        harness.run(kernel, plan, inputs)
    total = 0
    for instruction in sim.last_run().trace:
        for region in instruction.get("reads", ()):
            if "weights" in region["mem"] and "scale" not in region["mem"]:
                total += instruction["bytes"]
    return total


@pytest.mark.parametrize("tokens", [1, 9])
def test_each_selected_expert_is_read_once(tokens):
    """Selective mode reads one weight set per (token, k); distinct mode one per distinct selected expert."""
    text = spec_text("kernel k : tkg { }\n  kernel d : tkg { mode=distinct }", experts=8, top_k=2)
    plans, kernels = build(text)
    inputs = harness.make_inputs(plans["d"], tokens, np.random.default_rng(SEED))
    per_expert = inputs["expert_gate_up_weights"][0].nbytes + inputs["expert_down_weights"][0].nbytes
    distinct = len(np.unique(inputs["expert_index"]))
    assert _weight_bytes_read(plans["d"], kernels["d"], inputs) == distinct * per_expert
    assert _weight_bytes_read(plans["k"], kernels["k"], inputs) == tokens * 2 * per_expert


@pytest.mark.parametrize(
    "kernel, layer, reason",
    [
        ("kernel k : tkg { mode=distinct tokens<=256 }", {}, "distinct mode runs one token tile of at most 128"),
        ("kernel k : tkg { mode=distinct }", {"experts": 256}, "at most 128): use ep= to split them"),
        ("kernel k : tkg { mode=distinct mask_unselected }", {}, "distinct mode only runs selected experts"),
        ("kernel k : tkg { mode=distinct eager }", {"expert": "gate_up -> silu -> down"}, "read and ignored"),
    ],
)
def test_refused_with_reason(tmp_path, kernel, layer, reason):
    from tests.families.test_tkg_plans import refusal

    assert reason in refusal(tmp_path, kernel, **layer)


def test_plan_decision_and_rank():
    plans, _ = build(spec_text("kernel d : tkg { mode=distinct ep=2 }\n  kernel e : tkg { mode=distinct }"))
    assert plans["d"].uses_rank and not plans["e"].uses_rank
    assert plans["d"].reference_mode == "selective"
    assert any(what == "distinct items" for what, _ in plans["e"].decisions)
