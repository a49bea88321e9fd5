"""tkg `gate_up_split=hidden`: under the LNC=2 intermediate split with the transposed down projection, each
core reads half of the H rows of the gate/up weights with all their I columns (whole gate + up rows, one
DMA run per partition) and the cores add each other's partial gate/up sums (sendrecv) per expert before
the activation; the down projection stays split by I (docs/faster_decode.md, round 5).

The matrix again (EP, token counts, activations, clamps, biases, scaling modes, eager affinities, dtype
paths, non-gated experts), each compared per element with the reference; the schedule property (whole-row
gate/up runs on both cores, one exchange per expert) fails on the intermediate split; the cases the split
does not take are refused with the reason.
"""

from __future__ import annotations

import numpy as np
import pytest

from moegen import sim
from moegen.compiler import generate
from moegen.diagnostics import SpecError
from moegen.perf.timeline import dma_transfer
from moegen.verify import tkg as harness
from tests.families.support import module_builds
from tests.families.test_tkg_kernels import GPT_OSS, SEED, SILU_POST, build, check, spec_text

SPLIT = "kernel k : tkg { mode=distinct lnc=2 gate_up_split=hidden tokens<=32 }"
SPLIT_EP2 = "kernel k : tkg { mode=distinct lnc=2 ep=2 gate_up_split=hidden tokens<=32 }"


build_dir = module_builds("tkg_gate_up_split_builds")


def check_split(text: str, tokens: int):
    plan, _, _ = check(text, tokens=tokens)
    assert plan.gate_up_split == "hidden" and plan.down_transposed and plan.shard == "intermediate", text
    return plan


@pytest.mark.parametrize("tokens", [1, 5, 32])
def test_silu_post_scale_ep2(tokens):
    check_split(spec_text(SPLIT_EP2, hidden=512, intermediate=256), tokens)


@pytest.mark.parametrize("experts, top_k", [(4, 1), (16, 4)])
def test_experts_and_top_k(experts, top_k):
    check_split(spec_text(SPLIT, experts=experts, top_k=top_k, hidden=512, intermediate=256), 6)


@pytest.mark.parametrize(
    "expert",
    [
        "gate_up -> gelu -> down -> scale",
        "gate_up(bias) -> clamp(-0.5 <= gate <= 0.5, -0.3 <= up <= 0.4) -> silu -> up_plus_one -> down -> scale",
        "gate_up(bias) -> silu -> down",  # no affinity scaling
        "up -> squared_relu -> down -> scale",  # not gated: one projection exchanged
    ],
    ids=["gelu", "clamps_bias_plus_one", "no_scale", "non_gated"],
)
def test_activations_clamps_biases_scaling(expert):
    check_split(spec_text(SPLIT_EP2, expert=expert, hidden=512, intermediate=256), 5)


def test_eager_affinities():
    check_split(spec_text(SPLIT.replace("mode=distinct", "mode=distinct eager"), hidden=512, intermediate=256), 4)


@pytest.mark.parametrize("dtype, out", [("fp16", None), ("bf16", "fp32")])
def test_dtype_paths(dtype, out):
    text = SPLIT.replace("}", f"out={out} }}") if out else SPLIT
    check_split(spec_text(text, dtype=dtype, hidden=512, intermediate=256), 3)


def _gate_up_runs(text: str, tokens: int) -> tuple[set, int]:
    """(bytes per contiguous run of the gate/up weight DMAs, sendrecvs) over both cores of one run."""
    plans, kernels = build(text)
    inputs = harness.make_inputs(plans["k"], tokens, np.random.default_rng(SEED))
    with sim.recording():
        harness.run(kernels["k"], plans["k"], inputs)
    runs, exchanges = set(), 0
    for instruction in sim.last_run().trace:
        exchanges += instruction["opcode"] == "sendrecv"
        if any("expert_gate_up_weights" in region["mem"] for region in instruction.get("reads", ())):
            nbytes, descriptors, _ = dma_transfer(instruction)
            runs.add(nbytes // descriptors)
    return runs, exchanges


def test_whole_gate_up_rows_per_run_on_both_cores():
    """H 1024 = 8 H tiles, 4 per core: each partition's 4 whole gate + up rows are one run (4 x 2 x I x 2
    bytes); under the intermediate split each core's run is half a gate (or up) row: I / 2 x 2 bytes."""
    split, split_exchanges = _gate_up_runs(spec_text(SPLIT, hidden=1024, intermediate=256), 1)
    assert split == {4 * 2 * 256 * 2}
    intermediate, exchanges = _gate_up_runs(
        spec_text(SPLIT.replace("hidden", "intermediate"), hidden=1024, intermediate=256), 1
    )
    assert intermediate == {256 // 2 * 2}
    # T = 1, top-2 of 8: two experts, an exchange of gate/up sums each, then the output's exchange
    assert exchanges == 2 and split_exchanges == 2 * (2 + 1)


@pytest.mark.parametrize(
    "kernel, hidden, intermediate, expert, reason",
    [
        ("kernel k : tkg { mode=distinct gate_up_split=hidden tokens<=32 }", 512, 256, SILU_POST, "shard=none"),
        (
            "kernel k : tkg { mode=distinct lnc=2 shard=hidden gate_up_split=hidden tokens<=32 }",
            512,
            256,
            SILU_POST,
            "shard=hidden",
        ),
        (SPLIT, 512, 384, SILU_POST, "even number of whole"),
        (SPLIT, 512, 1856, SILU_POST, "even number of whole"),  # I 1856 = 14 x 128 + 64
        (SPLIT, 512, 256, "gate_up -> silu -> down(bias) -> scale", "transposed down projection"),
        (SPLIT.replace("tokens<=32", "tokens<=128"), 4096, 256, SILU_POST, "must fit one PSUM bank"),
        (SPLIT, 2880, 256, GPT_OSS, "transposed down projection"),
    ],
    ids=["lnc1", "shard_hidden", "odd_i_tiles", "partial_i_tile", "down_bias", "psum_full", "h2880"],
)
def test_refused_with_the_reason(tmp_path, kernel, hidden, intermediate, expert, reason):
    path = tmp_path / "t.moe"
    path.write_text(spec_text(kernel, hidden=hidden, intermediate=intermediate, expert=expert))
    with pytest.raises(SpecError) as error:
        generate(path)
    assert reason in str(error.value) and "gate_up_split" in str(error.value)


def test_intermediate_is_the_rule():
    """Untuned, gate_up_split=auto keeps the intermediate split (the model's choice decides otherwise)."""
    plans, _ = build(spec_text("kernel k : tkg { mode=distinct lnc=2 tokens<=32 }", hidden=512, intermediate=256))
    assert plans["k"].gate_up_split == "intermediate" and plans["k"].down_transposed


def test_a_tune_axis_at_lnc2_only(tmp_path):
    """`moegen tune` searches gate_up_split on a tuned LNC 2 tkg kernel that leaves it at auto, not at LNC 1."""
    from moegen.compiler import load_spec
    from moegen.tune import axes

    path = tmp_path / "t.moe"
    kernels = "kernel a : tkg { mode=auto tuned lnc=2 tokens<=32 }\n  kernel b : tkg { mode=auto tuned tokens<=32 }"
    path.write_text(spec_text(kernels, hidden=512, intermediate=256))
    searched = {variant.name: [name for name, _ in axes(variant)] for variant in load_spec(path).variants}
    assert "gate_up_split" in searched["a"] and "gate_up_split" not in searched["b"]
