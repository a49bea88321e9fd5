"""tkg LNC=2 shard=top_k, the seed's MX selective "shard on K" (nki-library moe_tkg
selective_expert_mx_impl: K is top_k, each core takes K / 2 of every token's selected experts): core c
runs the items (t, k) with k in its share on the whole token tile, the two partial [T, H] sums are
exchanged once per tile (sendrecv) and each core writes half of the columns. MX weights (MXFP4 /
MXFP8, tests/families/test_tkg_mx.py shapes and tolerance) and the bf16 / fp8 kernels, which share the
item loop; each output element compared with the reference.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from moegen import sim
from moegen.compare import compare
from moegen.verify import tkg as harness
from tests.families import test_tkg_kernels as bf16
from tests.families import test_tkg_mx as mx
from tests.families.support import module_builds
from tests.families.test_tkg_plans import refusal

build_dir = module_builds("tkg_top_k_builds")


@pytest.mark.parametrize("weights", ["mxfp4", "mxfp8"])
@pytest.mark.parametrize("tokens", [1, 5])
def test_mx_gpt_oss(weights, tokens):
    mx.check(mx.spec_text("kernel k : tkg { lnc=2 shard=top_k }", weights=weights, experts=8, top_k=4), tokens=tokens)


@pytest.mark.parametrize(
    "expert, options",
    [
        ("gate_up(bias) -> silu -> down(bias)", ""),
        ("scale -> gate_up(bias) -> silu -> down(bias)", ""),
        (mx.SILU_POST, "eager"),
        ("gate_up -> clamp(-0.5 <= gate <= 0.5, -0.3 <= up <= 0.4) -> relu -> down -> scale", "out=fp32"),
    ],
    ids=["no_scale_biases", "pre_scale", "eager_post", "clamps_out_fp32"],
)
def test_mx_epilogue_and_scaling(expert, options):
    text = mx.spec_text(f"kernel k : tkg {{ lnc=2 shard=top_k {options} }}", expert=expert, weights="mxfp8")
    mx.check(text, tokens=5)


def test_mx_odd_top_k_splits_two_and_one():
    text = mx.spec_text("kernel k : tkg { lnc=2 shard=top_k }", experts=8, top_k=3)
    plan, *_ = mx.check(text, tokens=3)
    assert plan.core_top_k == ((0, 2), (2, 1))


def test_mx_equals_lnc1_selective():
    text = mx.spec_text("kernel k : tkg { lnc=2 shard=top_k }\n  kernel s : tkg { }", experts=8, top_k=4)
    _, inputs, split, _ = mx.check(text, "k", tokens=4)
    _, _, single, _ = mx.check(text, "s", tokens=4, inputs=inputs)
    assert compare("agree", split, single, kind="bf16").ok


@pytest.mark.parametrize("quant, expert", [("", bf16.SILU_POST), ("", bf16.GPT_OSS), ("weights=fp8_row", bf16.GPT_OSS)])
def test_bf16_and_fp8(quant, expert):
    bf16.check(bf16.spec_text("kernel k : tkg { lnc=2 shard=top_k }", top_k=4, expert=expert, quant=quant), tokens=6)


def test_each_core_reads_the_weights_of_its_items():
    """Core c reads, of every weight and scale tensor, one expert's bytes per item (t, k) with k in its share."""
    text = mx.spec_text("kernel k : tkg { lnc=2 shard=top_k }", experts=8, top_k=4)
    plans, kernels = mx.build(text)
    plan, tokens = plans["k"], 3
    inputs = harness.make_inputs(plan, tokens, np.random.default_rng(mx.SEED))
    with sim.recording():
        harness.run(kernels["k"], plan, inputs)
    read = Counter()
    for instruction in sim.last_run().trace:
        for region in instruction.get("reads", ()):
            name = region["mem"].split(":")[1] if region["mem"].startswith("hbm:") else ""
            if name.startswith("expert_") and "weights" in name:
                read[instruction["core"], name] += instruction["bytes"]
    names = {name for _, name in read}
    assert len(names) == 4
    for core, (_, count) in enumerate(plan.core_top_k):
        for name in names:
            assert read[core, name] == tokens * count * inputs[name][0].nbytes, (core, name)


@pytest.mark.parametrize(
    "kernel, layer, reason",
    [
        ("kernel k : tkg { mode=all_experts lnc=2 shard=top_k }", {}, "has no (token, k) items"),
        ("kernel k : tkg { mode=distinct lnc=2 shard=top_k }", {}, "has no (token, k) items"),
        ("kernel k : tkg { lnc=2 shard=top_k }", {"experts": 4, "top_k": 1}, "top_k 1, nothing to split"),
        ("kernel k : tkg { shard=top_k }", {}, "this kernel has lnc=1"),
    ],
)
def test_refused_with_reason(tmp_path, kernel, layer, reason):
    assert reason in refusal(tmp_path, kernel, **layer)
