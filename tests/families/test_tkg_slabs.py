"""tkg weight slabs: gate/up weights of several I tiles per DMA (longer contiguous runs), two gate/up
slabs and DOWN_BUFFERS down slabs alternating so the next load overlaps the matmuls; kernels with
groups of several tiles and a partial last tile against the reference."""

from __future__ import annotations

from pathlib import Path

import pytest

from moegen.compiler import generate
from moegen.plan.common import SBUF_BYTES
from tests.families.support import module_builds
from tests.families.test_tkg_kernels import GPT_OSS, build, check, spec_text

REPO = Path(__file__).resolve().parents[2]


build_dir = module_builds("tkg_slab_builds")


def test_mixtral_slabs_fit_sbuf_and_alternate():
    plan = next(p for p in generate(REPO / "specs" / "mixtral_8x7b.moe").plans if p.kernel_name == "tkg_distinct")
    assert plan.i_tiles == 14 and plan.gate_up_buffers == 2 and plan.gate_up_columns == 4 * 128
    assert [g for g, _, _ in plan.gate_up_group] == [0] * 4 + [4] * 4 + [8] * 4 + [12] * 2
    assert [slot for _, _, slot in plan.gate_up_group[::4]] == [0, 1, 0, 1]
    assert plan.sbuf_bytes() <= SBUF_BYTES["trn2"]
    assert any(what == "gate/up slabs" and "1024-byte contiguous runs" in why for what, why in plan.decisions)


def test_groups_split_each_core_range():
    text = spec_text("kernel k : tkg { lnc=2 shard=intermediate gate_up_loop=i_outer }", intermediate=704)
    plan = build(text)[0]["k"]
    assert plan.core_i_tiles == ((0, 3), (3, 3))
    # each core's 3 tiles in groups of ceil(3 / 2) = 2: (0, 1), (2) and (3, 4), (5: 64 columns)
    assert plan.gate_up_group == ((0, 256, 0), (0, 256, 0), (2, 128, 1), (3, 256, 0), (3, 256, 0), (5, 64, 1))


@pytest.mark.parametrize(
    "kernel",
    [
        "kernel k : tkg { }",
        "kernel k : tkg { mode=distinct }",
        "kernel k : tkg { mode=all_experts mask_unselected }",
        "kernel k : tkg { lnc=2 shard=intermediate out=fp32 }",
        "kernel k : tkg { mode=distinct input=sbuf tokens<=16 }",
    ],
)
@pytest.mark.parametrize("loop", ["i_outer", "h_outer"])
def test_multi_tile_groups_with_a_partial_last_tile(kernel, loop):
    """I 704 = 5 x 128 + 64: groups of 3 tiles (i_outer), passes (h_outer), ending in the partial tile."""
    check(
        spec_text(kernel.replace("{", "{ gate_up_loop=" + loop), hidden=384, intermediate=704, expert=GPT_OSS), tokens=5
    )


def test_fp8_groups():
    check(
        spec_text("kernel k : tkg { mode=distinct }", hidden=320, intermediate=704, quant="weights=fp8_row"), tokens=3
    )


@pytest.mark.parametrize(
    "kernel, quant",
    [
        ("kernel k : tkg { gate_up_loop=h_outer mode=distinct }", ""),
        ("kernel k : tkg { gate_up_loop=h_outer weight_buffers=3 down_columns=512 }", "weights=fp8_row"),
        (
            "kernel k : tkg { gate_up_loop=h_outer lnc=2 shard=intermediate }",
            "weights=fp8_static activations=fp8_static",
        ),
        ("kernel k : tkg { gate_up_loop=h_outer mode=all_experts mask_unselected lnc=2 shard=hidden }", ""),
    ],
)
def test_h_outer_in_several_passes(kernel, quant):
    """tokens<=128: one PSUM bank holds 4 I tiles' sums, so I 2304 (18 tiles) runs in passes (as many banks
    as the down groups leave); H 320 ends in a partial tile; each H tile's rows of a pass arrive in one DMA."""
    text = spec_text(kernel, hidden=320, intermediate=2304, quant=quant, expert=GPT_OSS)
    plan = build(text)[0]["k"]
    assert plan.gate_up_loop == "h_outer" and plan.acc_tiles == 4
    assert max(len(core) for core in plan.gate_up_passes) == -(
        -max(n for _, n in plan.core_i_tiles) // (4 * plan.acc_banks)
    )
    assert max(len(core) for core in plan.gate_up_passes) >= 2 or "fp8_static" in quant
    check(text, tokens=5)


def test_h_outer_reads_whole_rows_when_one_pass_holds_i():
    """Mixtral TP8 at tokens<=32: the 14 I tiles' sums fit one bank per projection, so each gate/up DMA reads
    rows of gate then up back to back (2 x 1792 x 2 B = 7 KiB per row), 4 rows per partition with the
    transposed down projection (28 KiB runs)."""
    text = spec_text("kernel k : tkg { mode=distinct tokens<=32 }", hidden=4096, intermediate=1792)
    plan = build(text)[0]["k"]
    assert plan.gate_up_loop == "h_outer" and plan.gate_up_passes == (((0, 14, 1792),),)
    assert plan.down_transposed and plan.gate_up_rows == 4
    assert any(what == "gate/up loop" and "28672-byte contiguous runs" in why for what, why in plan.decisions)
