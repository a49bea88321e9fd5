"""Narrow tiles (plan field narrow_columns): with padding tiles, a token tile holding tokens in its first 64 slots
only runs its gate/up matmuls and their epilogue 64 columns wide. A matmul streams max(64, N) moving columns
(nki.isa.nc_matmul page; moegen.perf.costs matmul_min_cycles), so such a tile (an expert's last tile, often) takes
half the gate/up TensorE time. Each tile gets two runtime trip counts (wide, narrow) from the minimum (or, with
-1 padding, the maximum) of each half tile's slot ids; checked from the simulator's trace on every path that
computes them, with outputs against the blockwise reference."""

from __future__ import annotations

from pathlib import Path

import pytest

from moegen import sim
from tests.families.support import build, module_builds
from tests.families.test_cte import assert_matches, cte_spec, run
from tests.families.test_cte_tail import tail_routing

builds = module_builds("cte_narrow_builds")

# Tokens per expert: expert 0 128 + 64 (a narrow tile of exactly 64), expert 1 128 + 1 (narrow), expert 2 65 (one
# slot past narrow: wide), expert 3 256 + 40 (the 40 narrow: at block 256 a tail tile, absorbed where the kernel can).
COUNTS = (192, 129, 65, 296)
NARROW_TILES, WIDE_TILES = 3, 5

KERNELS = """\
kernel absorb2 : cte { block=256 lnc=2 weights=stream tail=absorb }
  kernel skip1   : cte { block=256 weights=stream tail=block padding=skip }
  kernel res1    : cte { block=256 }
  kernel hyb_i2  : cte { block=256 shard=intermediate lnc=2 loop=hybrid }
  kernel rows2   : cte { block=128 shard=block lnc=2 loop=hybrid }"""
TEXT = cte_spec(KERNELS)


def gate_up_widths(kernel, trace: list) -> list[int]:
    """The moving columns of every gate/up nc_matmul in the trace (found by its source line in the kernel file)."""
    path = Path(kernel.fn.__code__.co_filename)
    lines = path.read_text().splitlines()
    gate_up_lines = {
        f"{path.name}:{number}"
        for number, text in enumerate(lines, start=1)
        if "nc_matmul(dst=gate_psum" in text or "nc_matmul(dst=up_psum" in text
    }
    assert gate_up_lines, "no gate/up matmul lines found"
    return [
        rec["operands"]["moving"]["shape"][-1]
        for rec in trace
        if rec["opcode"] == "nc_matmul" and rec["line"] in gate_up_lines
    ]


@pytest.mark.parametrize("kernel", ["absorb2", "skip1", "res1", "hyb_i2", "rows2"])
def test_tiles_with_tokens_in_their_first_64_slots_run_gate_up_64_wide(kernel):
    """The three tiles holding 64, 1 and 40 tokens issue their gate/up matmuls 64 columns wide, the five holding 65
    or more 128 wide, and nothing else runs: the counts follow the tiles exactly (shard=intermediate at LNC 2: both
    cores run every tile). The output matches the reference. Before narrow tiles every matmul was 128 wide."""
    tokens = sum(COUNTS) // 2
    with sim.recording():
        plan, inputs, got, want = run(TEXT, kernel, tokens, expert_index=tail_routing(COUNTS))
        trace = sim.last_run().trace
    assert plan.narrow_columns == 64
    assert_matches(plan, got, want)
    widths = gate_up_widths(build(TEXT)[1][kernel], trace)
    per_tile = len(plan.i_tiles) * len(plan.h_tiles) * plan.mlp.projections
    cores = 2 if plan.shard == "intermediate" and plan.lnc == 2 else 1
    assert sorted(set(widths)) == [64, 128]
    assert widths.count(64) == NARROW_TILES * per_tile * cores
    assert widths.count(128) == WIDE_TILES * per_tile * cores


@pytest.mark.parametrize(
    "spec_kw, options",
    [
        (dict(dtype="fp16"), "block=256 lnc=2 weights=stream"),
        (
            dict(
                quant="weights=fp8_row",
                expert="gate_up(bias) -> clamp(-1.5 <= gate <= 1, -1 <= up <= 1) -> swish(1.702) -> up_plus_one "
                "-> down(bias) -> scale",
            ),
            "block=256 lnc=2 weights=stream",
        ),
        (dict(expert="up -> relu -> down -> scale"), "block=128 lnc=2 weights=stream padding=skip"),
        (dict(hidden=2880, intermediate=464), "block=256"),
        (dict(dtype="in=bf16 out=fp32", hidden=320, intermediate=192), "block=512 lnc=2 weights=stream"),
    ],
    ids=["fp16_lnc2", "fp8_row_bias_clamp", "not_gated_skip", "h_2880_i_464", "out_fp32_block512"],
)
def test_narrow_tiles_match_the_reference(spec_kw, options):
    """Across dtypes, fp8 dequant with biases and clamps, a non-gated MLP, H 2880 / I 464 and block 512."""
    text = cte_spec(f"kernel k : cte {{ {options} }}", **spec_kw)
    plan, _, got, want = run(text, "k", sum(COUNTS) // 2, expert_index=tail_routing(COUNTS))
    assert plan.narrow_columns == 64
    assert_matches(plan, got, want)


def test_mx_kernels_keep_full_width_tiles():
    """nc_matmul_mx kernels (trn3) keep their own gate/up loop (moegen/plan/cte_mx.py): no narrow tiles."""
    text = cte_spec("kernel k : cte { block=512 lnc=2 shard=block }", quant="weights=mxfp4 activations=mxfp8")
    plans, _ = build(text)
    assert plans["k"].skip_padding_tiles and plans["k"].narrow_columns == 0
