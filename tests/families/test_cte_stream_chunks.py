"""cte streamed weights: the chunk widths (`gate_up_tiles`, `down_columns`) and the copies each chunk rotates
through (`weight_buffers`) as spec options; auto is the old rule (the widest chunks that fit SBUF, two copies)."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest

from tests.families.test_cte import SEED, assert_matches, build_dir, cte_spec, harness, run  # noqa: F401
from tests.families.test_cte_plans import layer_spec, plans, refusal

MIXTRAL_TP8 = "hidden=4096 intermediate=14336 experts=8 top_k=2 tp=8"


def _without_decisions(plan):
    return replace(plan, decisions=())


def test_auto_is_the_widest_chunks_that_fit_with_two_copies(tmp_path):
    """Mixtral's prefill shape (tail=block: no absorbed tail tile, test_cte_tail.py): auto takes 3 I tiles and 512
    columns, double-buffered; writing those values gives the same plan (so the same kernel); depth 3 at auto widths
    refits narrower chunks within SBUF."""
    auto, spelled, deep = plans(
        tmp_path,
        layer_spec(
            "kernel a : cte { lnc=2 tail=block }\n"
            "  kernel s : cte { lnc=2 gate_up_tiles=3 down_columns=512 weight_buffers=2 tail=block }"
            "\n  kernel d : cte { lnc=2 weight_buffers=3 tail=block }",
            dims=MIXTRAL_TP8,
        ),
    )
    assert (auto.stream_depth, auto.gate_up_chunks[0][3], auto.down_cols) == (2, 3, 512)
    assert _without_decisions(replace(spelled, kernel_name="a")) == _without_decisions(auto)
    assert (deep.stream_depth, deep.gate_up_chunks[0][3], deep.down_cols) == (3, 2, 256)
    counts = {buffer.name: buffer.count for buffer in deep.buffers}
    assert counts["w_gate_up"] == counts["w_down"] == counts["out_rows"] == 3
    assert deep.sbuf_bytes() <= 224 * 1024 - 16 * 1024
    assert deep.gate_up_first_loads == (2,) and deep.down_first_loads == ()  # pipelined: two loaded a block ahead
    assert "(triple-buffered)" in dict(deep.decisions)["weights"]


def test_chunks_that_do_not_fit_are_refused_by_how_many_bytes(tmp_path):
    message = refusal(tmp_path, layer_spec("kernel p : cte { lnc=2 gate_up_tiles=4 }", dims=MIXTRAL_TP8))
    assert "t.moe:5:" in message and "^" in message
    found = re.search(
        r"gate_up_tiles=4: the streamed weight chunks with the block's buffers need (\d+) bytes per "
        r"partition, (\d+) more than the (\d+) usable on trn2",
        message,
    )
    need, over, usable = map(int, found.groups())
    assert need - usable == over > 0 and usable == 208 * 1024


@pytest.mark.parametrize(
    "options, needle",
    [
        ("weight_buffers=4", "weight_buffers 4: must be at most 3"),
        ("weight_buffers=1", "weight_buffers 1: must be at least 2"),
        ("down_columns=320", "down_columns 320: must be a multiple of 128"),
        ("down_columns=1024", "down_columns 1024: must be at most 512"),
        ("gate_up_tiles=0", "gate_up_tiles 0: must be at least 1"),
        ("gate_up_tiles=wide", "gate_up_tiles=wide: expected a number or auto"),
        ("weights=stream gate_up_tiles=8", "gate_up_tiles=8: this core's share of I (512 columns) has 4 I tile(s)"),
        (
            "weights=stream shard=intermediate lnc=2 down_columns=512",
            "down_columns=512: this core finishes 256 output columns",
        ),
        (
            "weight_buffers=3",
            "weight_buffers=3 sets how streamed weights are chunked, but this kernel's weights are "
            "resident (weights=auto: they fit SBUF)",
        ),
    ],
)
def test_out_of_range_values_are_spec_errors(tmp_path, options, needle):
    message = refusal(tmp_path, layer_spec(f"kernel p : cte {{ {options} }}"))
    assert "t.moe:5:" in message and "^" in message and needle in message


STREAMED = """\
kernel d3 : cte { block=128 lnc=2 weights=stream weight_buffers=3 gate_up_tiles=1 down_columns=128 }
  kernel n3 : cte { block=128 weights=stream weight_buffers=3 gate_up_tiles=2 down_columns=256 }
  kernel h3 : cte { block=128 lnc=2 loop=hybrid weights=stream weight_buffers=3 gate_up_tiles=2 }
  kernel i3 : cte { block=128 lnc=2 shard=intermediate weights=stream weight_buffers=3 gate_up_tiles=1 }
  kernel c3 : cte { block=128 checkpoint weights=stream weight_buffers=3 gate_up_tiles=2 }"""
STREAMED_TEXT = cte_spec(STREAMED, hidden=384, intermediate=640)  # 5 I tiles, 3 H tiles


@pytest.mark.parametrize("kernel", ["d3", "n3", "h3", "i3", "c3"])
def test_three_copies_and_narrow_chunks_match_the_reference(kernel):
    """A ring of three copies per weight chunk (pipelined serpentine blocks at LNC 1 and 2, the hybrid body,
    the intermediate split, checkpointing) with narrow chunks: two experts over 300 tokens, so consecutive
    blocks repeat their expert and reuse the chunks still in their copies."""
    from moegen import sim

    expert_index = harness.routing(300, 4, 2, np.random.default_rng(SEED), experts_used=2)
    with sim.recording():
        plan, inputs, got, want = run(STREAMED_TEXT, kernel, 300, expert_index=expert_index)
        trace = sim.last_run().trace
    assert plan.stream_depth == 3 and not plan.resident_weights and len(plan.gate_up_chunks) >= 3
    assert_matches(plan, got, want)
    if plan.serpentine:  # a repeated expert's first three chunks of each weight are still in their copies
        weight_bytes = sum(
            rec["bytes"]
            for rec in trace
            if rec["opcode"] == "dma_copy" and "proj_weight" in str(rec["operands"].get("src"))
        )
        real_blocks = int((inputs["token_position_to_id"].reshape(-1, plan.block) < 300).any(axis=1).sum())
        assert weight_bytes < real_blocks * 3 * plan.hidden * plan.intermediate * 2  # gate, up, down in bf16
