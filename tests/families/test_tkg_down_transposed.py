"""tkg distinct mode with the transposed down projection (H on partitions, the sums of all experts in
PSUM, the affinity applied to h): planned when one token tile holds <= 32 tokens (the decode kernels).

The distinct matrix again at `tokens<=32` (token counts, experts and top-K with EP, activations, clamps,
biases, scaling modes, eager affinities, dtype paths, the LNC=2 intermediate split, a partial I tile),
each compared per element with the reference; the cases the layout does not cover (down bias, fp8
scales, pre-scaling, a partial H tile, SBUF output, down sums that do not fit PSUM) fall back to the [T, H] accumulation and stay correct.
"""

from __future__ import annotations

import numpy as np
import pytest

from moegen import sim
from moegen.perf.timeline import dma_transfer
from moegen.verify import tkg as harness
from tests.families.support import module_builds
from tests.families.test_tkg_kernels import GPT_OSS, SEED, SILU_POST, build, check, spec_text

build_dir = module_builds("tkg_down_transposed_builds")


def check_transposed(text: str, tokens: int, transposed: bool = True):
    plan, _, _ = check(text, tokens=tokens)
    assert plan.down_transposed == transposed, text


@pytest.mark.parametrize("tokens", [1, 4, 32])
def test_silu_post_scale(tokens):
    check_transposed(spec_text("kernel k : tkg { mode=distinct tokens<=32 }"), tokens)


@pytest.mark.parametrize("experts, top_k, ep", [(4, 1, 1), (16, 4, 1), (16, 4, 4), (32, 2, 8)])
def test_experts_and_top_k(experts, top_k, ep):
    text = spec_text(
        f"kernel k : tkg {{ mode=distinct ep={ep} tokens<=32 }}",
        experts=experts,
        top_k=top_k,
        hidden=256,
        intermediate=128,
    )
    check_transposed(text, 6)


@pytest.mark.parametrize("activation", ["gelu", "swish(1.702)", "squared_relu"])
def test_activations(activation):
    expert = f"gate_up -> {activation} -> down -> scale"
    check_transposed(spec_text("kernel k : tkg { mode=distinct tokens<=32 }", expert=expert), 5)


def test_clamps_and_gate_up_bias_with_plus_one():
    expert = "gate_up(bias) -> clamp(-0.5 <= gate <= 0.5, -0.3 <= up <= 0.4) -> silu -> up_plus_one -> down -> scale"
    check_transposed(spec_text("kernel k : tkg { mode=distinct tokens<=32 }", expert=expert), 5)


@pytest.mark.parametrize("ep", [1, 2])
@pytest.mark.parametrize("scale", ["none", "pre", "post"])
def test_each_scaling_mode(scale, ep):
    expert = {
        "none": "gate_up(bias) -> silu -> down",
        "pre": "scale -> gate_up(bias) -> silu -> down",
        "post": SILU_POST,
    }[scale]
    text = spec_text(f"kernel k : tkg {{ mode=distinct ep={ep} tokens<=32 }}", expert=expert)
    check_transposed(text, 5, transposed=scale != "pre")


def test_eager_affinities():
    check_transposed(spec_text("kernel k : tkg { mode=distinct eager ep=2 tokens<=32 }"), 6)


@pytest.mark.parametrize("dtype, out", [("fp16", None), ("bf16", "fp32")])
def test_dtype_paths(dtype, out):
    option = f"out={out}" if out else ""
    check_transposed(spec_text(f"kernel k : tkg {{ mode=distinct {option} tokens<=32 }}", dtype=dtype), 3)


@pytest.mark.parametrize(
    "kernel",
    [
        "kernel k : tkg { mode=distinct lnc=2 tokens<=32 }",
        "kernel k : tkg { mode=distinct lnc=2 ep=2 tokens<=32 }",
        "kernel k : tkg { mode=distinct lnc=2 shard=intermediate out=fp32 tokens<=32 }",
    ],
)
def test_lnc2_intermediate_split(kernel):
    check_transposed(spec_text(kernel, hidden=512, intermediate=384), 5)


def test_partial_i_tile():
    """I 1856 = 14 x 128 + 64: the last down DMA and matmuls contract 64 rows."""
    check_transposed(spec_text("kernel k : tkg { mode=distinct tokens<=32 }", hidden=256, intermediate=1856), 2)


@pytest.mark.parametrize(
    "expert, hidden, quant, option",
    [
        ("gate_up -> silu -> down(bias) -> scale", 256, "", ""),
        (GPT_OSS, 256, "weights=fp8_row", ""),
        (GPT_OSS, 2880, "", ""),
        (SILU_POST, 256, "", "output=sbuf"),
        (SILU_POST, 4096, "", "tokens<=128"),
    ],
    ids=["down_bias", "fp8_row", "h2880", "sbuf_output", "psum_full_at_128_tokens"],
)
def test_falls_back_where_not_covered(expert, hidden, quant, option):
    bound = "" if "tokens" in option else "tokens<=32"
    text = spec_text(f"kernel k : tkg {{ mode=distinct {option} {bound} }}", expert=expert, hidden=hidden, quant=quant)
    check_transposed(text, 3, transposed=False)


def test_whole_down_rows_per_dma():
    """Each down-weight DMA moves whole rows: runs of H x 2 bytes (the [T, H] layout moved 2048-column slices)."""
    text = spec_text("kernel k : tkg { mode=distinct tokens<=32 }", hidden=4096, intermediate=128, experts=4)
    plans, kernels = build(text)
    inputs = harness.make_inputs(plans["k"], 3, np.random.default_rng(SEED))
    with sim.recording():
        harness.run(kernels["k"], plans["k"], inputs)
    runs = set()
    for instruction in sim.last_run().trace:
        if any("expert_down_weights" in region["mem"] for region in instruction.get("reads", ())):
            nbytes, descriptors, _ = dma_transfer(instruction)  # the timeline model's descriptor count
            runs.add(nbytes // descriptors)
    assert runs == {4096 * 2}


@pytest.mark.parametrize(
    "kernel, expert, tokens",
    [
        ("kernel k : tkg { mode=distinct tokens<=32 }", SILU_POST, 1),
        ("kernel k : tkg { mode=distinct tokens<=32 }", SILU_POST, 32),
        ("kernel k : tkg { mode=distinct ep=2 tokens<=32 }", "gate_up(bias) -> silu -> down", 5),
        ("kernel k : tkg { mode=distinct eager tokens<=32 }", SILU_POST, 3),
        ("kernel k : tkg { mode=distinct tokens<=32 }", "gate_up -> clamp(gate <= 0.5) -> gelu -> down -> scale", 4),
    ],
)
def test_gate_up_slabs_of_four_h_rows_per_partition(kernel, expert, tokens):
    """H 512 = 4 H tiles: one gate/up slab holds 4 H rows per partition, x.T built in the same H order."""
    plan, _, _ = check(spec_text(kernel, expert=expert, hidden=512, intermediate=192), tokens=tokens)
    assert plan.down_transposed and plan.gate_up_rows == 4


def test_gate_up_runs_span_the_slab_rows():
    """Each gate/up DMA moves, per partition, 4 whole gate + up rows back to back: runs of 4 x 2 x I x 2 bytes."""
    text = spec_text("kernel k : tkg { mode=distinct tokens<=32 }", hidden=512, intermediate=192)
    plans, kernels = build(text)
    inputs = harness.make_inputs(plans["k"], 2, np.random.default_rng(SEED))
    with sim.recording():
        harness.run(kernels["k"], plans["k"], inputs)
    runs = set()
    for instruction in sim.last_run().trace:
        if any("expert_gate_up_weights" in region["mem"] for region in instruction.get("reads", ())):
            nbytes, descriptors, _ = dma_transfer(instruction)
            runs.add(nbytes // descriptors)
    assert runs == {4 * 2 * 192 * 2}
