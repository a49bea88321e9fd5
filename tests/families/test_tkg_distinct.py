"""tkg mode=distinct: each local expert some token selected runs once on the whole token tile.

The matrix of every mode (token counts, experts and top-K, activations, clamps, biases, dtype paths, fp8
quantization, LNC=2 splits, SBUF input/output) runs in distinct mode in tests/families/test_tkg_kernels.py
(parametrized over its MODES). Here what distinct mode alone runs: scaling modes and eager affinities
with EP, partial tiles, each compared per element with the reference (selective semantics); and what the
mode is for: each selected expert's weights are read from HBM once, whatever T.
"""

from __future__ import annotations

import numpy as np
import pytest

from moegen import sim
from moegen.compare import compare
from moegen.verify import tkg as harness
from tests.families.support import module_builds
from tests.families.test_tkg_kernels import GPT_OSS, SEED, SILU_POST, build, check, spec_text

build_dir = module_builds("tkg_distinct_builds")


def test_equals_selective_on_the_same_inputs():
    text = spec_text("kernel k : tkg { }\n  kernel d : tkg { mode=distinct }", hidden=320)
    _, inputs, selective = check(text, "k", tokens=7)
    _, _, distinct = check(text, "d", tokens=7, inputs=inputs)
    assert compare("agree", distinct, selective, kind="bf16").ok


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
