"""tkg mode=distinct with MX weights (Trainium3): each local expert some token selected runs once on the
whole token tile, its MXFP4 / MXFP8 weights and E8M0 scales read from HBM once.

The matrix of both MX modes (activations, gate/up bias in the MX bias layout and down bias, clamps, +1 on
up, dtypes in and out) runs in distinct mode in tests/families/test_tkg_mx.py (parametrized over its MODES;
reduced shapes H 640, I 576, E 4, K 2, tolerance moegen/verify/tkg.py data_tolerance). Here what distinct
mode alone runs: NO/POST/PRE_SCALE and eager affinities with EP, LNC 2 splits, output=sbuf; plus the trace
of weight reads.
"""

from __future__ import annotations

import numpy as np
import pytest

from moegen import sim
from moegen.compare import compare
from moegen.verify import tkg as harness
from tests.families.support import module_builds
from tests.families.test_tkg_mx import GPT_OSS, SEED, SILU_POST, build, check, spec_text

build_dir = module_builds("tkg_mx_distinct_builds")


@pytest.mark.parametrize("ep", [1, 2])
@pytest.mark.parametrize("scale", ["none", "pre", "post"])
def test_each_scaling_mode(scale, ep):
    """Biases make an unselected token's y non-zero: its zero column must still drop it (NO_SCALE: the
    count column; PRE_SCALE: x * affinity requantized per expert)."""
    expert = {
        "none": "gate_up(bias) -> silu -> down(bias)",
        "pre": "scale -> gate_up(bias) -> clamp(gate <= 7, -7 <= up <= 7) -> swish(1.702) -> up_plus_one -> down(bias)",
        "post": GPT_OSS,
    }[scale]
    check(spec_text(f"kernel k : tkg {{ mode=distinct ep={ep} }}", expert=expert, experts=8), tokens=5)


@pytest.mark.parametrize("ep", [1, 2])
def test_eager_affinities(ep):
    check(spec_text(f"kernel k : tkg {{ mode=distinct eager ep={ep} }}", experts=8), tokens=6)


@pytest.mark.parametrize(
    "options",
    [
        "lnc=2",
        "lnc=2 shard=hidden",
        "lnc=2 shard=tokens",
        "lnc=2 shard=intermediate out=fp32",
        "lnc=2 ep=2 shard=tokens",
        "lnc=2 shard=intermediate expert_pre",
    ],
)
def test_lnc2(options):
    expert = GPT_OSS
    if "expert_pre" in options:
        options, expert = options.replace("expert_pre", ""), "scale -> gate_up -> silu -> down(bias)"
    check(spec_text(f"kernel k : tkg {{ mode=distinct {options} }}", expert=expert, experts=8), tokens=5)


def test_sbuf_output():
    check(spec_text("kernel k : tkg { mode=distinct output=sbuf tokens<=16 }"), tokens=7)


def test_equals_selective_on_the_same_inputs():
    text = spec_text("kernel k : tkg { }\n  kernel d : tkg { mode=distinct }")
    _, inputs, selective, _ = check(text, "k", tokens=7)
    _, _, distinct, _ = check(text, "d", tokens=7, inputs=inputs)
    assert compare("agree", distinct, selective, kind="bf16").ok


def _bytes_read(plan, kernel, inputs) -> dict[str, int]:
    """Bytes the kernel's DMAs read from each expert weight and scale tensor (HBM allocations by name)."""
    with sim.recording():
        harness.run(kernel, plan, inputs)
    totals = dict.fromkeys(
        (
            "expert_gate_up_weights",
            "expert_gate_up_weights_scale",
            "expert_down_weights",
            "expert_down_weights_scale",
        ),
        0,
    )
    for instruction in sim.last_run().trace:
        for region in instruction.get("reads", ()):
            name = region["mem"].split(":")[1] if region["mem"].startswith("hbm:") else ""
            if name in totals:
                totals[name] += instruction["bytes"]
    return totals


@pytest.mark.parametrize("weights", ["mxfp4", "mxfp8"])
@pytest.mark.parametrize("tokens", [1, 9])
def test_each_selected_expert_is_read_once(tokens, weights):
    """Selective mode reads one expert's weights and scales per (token, k); distinct mode once per distinct
    selected expert: every byte of those experts' words and E8M0 scales exactly once."""
    text = spec_text("kernel k : tkg { }\n  kernel d : tkg { mode=distinct }", experts=8, top_k=2, weights=weights)
    plans, kernels = build(text)
    inputs = harness.make_inputs(plans["d"], tokens, np.random.default_rng(SEED))
    distinct = len(np.unique(inputs["expert_index"]))
    assert distinct < tokens * 2 or tokens == 1
    read_distinct = _bytes_read(plans["d"], kernels["d"], inputs)
    read_selective = _bytes_read(plans["k"], kernels["k"], inputs)
    for name, total in read_distinct.items():
        per_expert = inputs[name][0].nbytes
        assert total == distinct * per_expert, (name, total, distinct, per_expert)
        assert read_selective[name] == tokens * 2 * per_expert, name


def test_streaming_plan_choices():
    """The MX weight loads move whole I slabs (2 KiB runs for MXFP4, one buffer per load when SBUF allows),
    the four packed positions' epilogues get their own PSUM sets (fewer when PSUM is short: PRE_SCALE's
    row broadcast and distinct mode's compaction take a bank each), and every choice is explained."""
    plans, _ = build(
        spec_text(
            "kernel k : tkg { }\n  kernel p : tkg { mode=distinct }",
            expert="scale -> gate_up -> silu -> down",
            hidden=2880,
            intermediate=2880,
        )
    )
    k, p = plans["k"], plans["p"]
    assert k.gate_up_columns * k.mx.word_bytes == 2048 and k.gate_up_buffers == 3
    assert k.gate_up_group[:3] == ((0, 1024, 0), (0, 1024, 0), (2, 1024, 1))
    assert k.mx_epilogue_buffers == 2 and p.mx_epilogue_buffers == 2  # 8 banks: down 4, PRE_SCALE rows 1
    assert k.psum_banks() <= 8 and p.psum_banks() <= 8
    assert {"gate/up slabs", "mx epilogues", "mx down loads"} <= {what for what, _ in k.decisions}


def test_allowance_counts_the_items_that_reach_a_token():
    """Distinct mode (and masked POST_SCALE all-expert mode) adds exactly 0 from every expert a token did not
    select: the fp8-step allowance counts K items per token, not E_L."""
    plans, _ = build(
        spec_text(
            "kernel d : tkg { mode=distinct }\n  kernel a : tkg { mode=all_experts mask_unselected }\n"
            "  kernel n : tkg { mode=all_experts }",
            expert=SILU_POST,
            experts=8,
        )
    )
    assert [harness.contributing_items(plans[name]) for name in "dan"] == [2, 2, 8]


def test_distinct_generates_only_the_rank_s_selected_experts():
    """The harness builds (and dequantizes) only the experts a distinct call reads, as local ids of the
    rank's window: GPT-OSS-120B's 128 experts would not fit in memory otherwise."""
    plans, _ = build(spec_text("kernel d : tkg { mode=distinct ep=2 }", experts=8))
    plan = plans["d"]
    index = np.array([[4, 1], [6, 4]], dtype=np.int32)
    assert harness.used_experts(plan, index, np.array([[1]], dtype=np.int32)) == [0, 2]
    inputs = harness.make_inputs(plan, 3, np.random.default_rng(SEED))
    used = harness.used_experts(plan, inputs["expert_index"], inputs["rank_id"])
    unused = sorted(set(range(plan.local_experts)) - set(used))
    assert not inputs["expert_gate_up_weights"][unused].any() and inputs["expert_gate_up_weights"][used].any()
