"""Tail tiles (cte option `tail`, plan field absorb_tail): in a pipelined static block loop with streamed weights, a
block whose next block has the same expert and holds at most 128 tokens runs that block's tile as one more token tile
of its own weight passes; the tail block then runs nothing and loads no weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.families.test_cte import (  # noqa: F401 (build_dir: fixture)
    absorbed_blocks,
    assert_final_sum_moves_only_the_touched_rows,
    assert_matches,
    build,
    build_dir,
    cte_spec,
    rows_of_each_core,
    run,
)
from tests.families.test_cte_plans import layer_spec, plans, refusal

# Tokens per expert at block 256: expert 0 a full block and a tail of 30 (absorbed), expert 1 a full block and 164
# (two tiles: not a tail), expert 2 one block of 100 (its previous block is another expert's), expert 3 two full blocks
# and a tail of 28 (absorbed by the second).
COUNTS = (286, 420, 100, 540)
TOKENS = sum(COUNTS) // 2


def tail_routing(counts=COUNTS) -> np.ndarray:
    """expert_index [T, 2]: the pairs of expert e are `counts[e]` tokens; token t picks the t-th and (t + T)-th entries
    of the experts listed in order (distinct for these counts)."""
    order = np.repeat(np.arange(len(counts), dtype=np.int32), counts)
    tokens = order.size // 2
    index = np.stack([order[:tokens], order[tokens:]], axis=1)
    assert (index[:, 0] != index[:, 1]).all()
    return index


def weight_bytes_per_expert(plan, trace) -> list[int]:
    """HBM bytes of gate/up and down weights each expert's DMAs moved (skipped DMAs move none)."""
    sizes = {
        "gate_up_proj_weight": plan.hidden * plan.mlp.projections * plan.intermediate * 2,
        "down_proj_weight": plan.intermediate * plan.hidden * 2,
    }
    moved = [0] * plan.experts
    for rec in trace:
        src = rec["operands"].get("src") if rec["opcode"] == "dma_copy" else None
        if isinstance(src, dict) and src.get("name") in sizes and rec["bytes"]:
            moved[src["region"]["bytes"][0] // sizes[src["name"]]] += rec["bytes"]
    return moved


def _traced(text: str, kernel: str):
    from moegen import sim

    with sim.recording():
        plan, inputs, got, want = run(text, kernel, TOKENS, expert_index=tail_routing())
        trace = sim.last_run().trace
    return plan, inputs, got, want, trace


TAIL_KERNELS = """\
kernel absorb2 : cte { block=256 lnc=2 weights=stream tail=absorb }
  kernel own2    : cte { block=256 lnc=2 weights=stream tail=block }
  kernel absorb1 : cte { block=256 weights=stream padding=skip }"""
TAIL_TEXT = cte_spec(TAIL_KERNELS)


def test_tail_tiles_run_in_the_previous_blocks_weight_passes():
    """LNC 2, interleaved blocks: the tails of experts 0 and 3 (blocks 1 and 7, core 1) run in blocks 0 and 6 (core 0).
    Each expert's weights are loaded once per block that runs (expert 3: two full blocks on different cores), not for
    its tail; core 0 issues the matmuls of 9 token tiles, core 1 of 4; the output matches the reference. The kernel
    with tail=block reloads expert 0's weights for its tail and splits the tiles 7 / 6."""
    plan, inputs, got, want, trace = _traced(TAIL_TEXT, "absorb2")
    assert plan.absorb_tail and plan.serpentine
    assert_matches(plan, got, want)
    experts = inputs["block_to_expert"].ravel().tolist()
    assert experts == [0, 0, 1, 1, 2, 3, 3, 3, 3]
    per_expert = 3 * plan.hidden * plan.intermediate * 2  # gate, up and down weights of one expert, bf16
    assert weight_bytes_per_expert(plan, trace) == [per_expert, 2 * per_expert, per_expert, 2 * per_expert]
    per_core = [sum(1 for rec in trace if rec["opcode"] == "nc_matmul" and rec["core"] == c) for c in (0, 1)]
    tile_matmuls = sum(per_core) // 13  # 13 token tiles hold tokens
    assert per_core == [9 * tile_matmuls, 4 * tile_matmuls]

    own, _, got_own, want_own, own_trace = _traced(TAIL_TEXT, "own2")
    assert not own.absorb_tail
    assert_matches(own, got_own, want_own)
    own_bytes = weight_bytes_per_expert(own, own_trace)
    assert own_bytes[0] == 2 * per_expert  # expert 0's tail (block 1, core 1) reloaded its weights
    assert sum(own_bytes) == 7 * per_expert  # (expert 3's tail follows its block 5 on core 1: serpentine reuse)
    own_per_core = [sum(1 for rec in own_trace if rec["opcode"] == "nc_matmul" and rec["core"] == c) for c in (0, 1)]
    assert own_per_core == [7 * tile_matmuls, 6 * tile_matmuls]


def test_tail_tiles_at_lnc1_skip_the_tail_blocks_weights():
    """LNC 1, padding=skip (-1 slots): the two tails load no weights, and at this size (one weight chunk each) a block
    that repeats its expert reuses every chunk (serpentine): each expert's weights are loaded exactly once."""
    plan, _, got, want, trace = _traced(TAIL_TEXT, "absorb1")
    assert plan.absorb_tail and plan.pad_skip
    assert len(plan.gate_up_chunks) == len(plan.down_chunks) == 1
    assert_matches(plan, got, want)
    assert weight_bytes_per_expert(plan, trace) == [3 * plan.hidden * plan.intermediate * 2] * 4


# Where the rule applies, across the cte matrix: dtypes, quantization, activations, clamps, biases, scaling modes,
# padding modes, LNC 1 / 2, distribution, per-core output, top-1, EP, odd sizes.
MATRIX = [
    # id, spec keywords, kernel options
    ("bf16_lnc1", {}, "block=256"),
    ("fp16_lnc2", dict(dtype="fp16"), "block=256 lnc=2 tail=absorb"),
    (
        "fp8_row_bias_clamp",
        dict(
            quant="weights=fp8_row",
            expert="gate_up(bias) -> clamp(-1.5 <= gate <= 1, -1 <= up <= 1) -> swish(1.702) -> up_plus_one "
            "-> down(bias) -> scale",
        ),
        "block=256 lnc=2 tail=absorb",
    ),
    (
        "fp8_static_pre_gelu_tanh_skip",
        dict(quant="weights=fp8_static", expert="scale -> gate_up -> gelu_tanh -> down"),
        "block=256 padding=skip",
    ),
    ("no_scale_relu_halves", dict(expert="gate_up -> relu -> down"), "block=256 lnc=2 distribute=halves tail=absorb"),
    ("per_core_output", {}, "block=256 lnc=2 output=per_core"),
    ("not_gated_512", dict(expert="up -> relu -> down -> scale"), "block=512 lnc=2 tail=absorb"),
    ("out_fp32_3_copies", dict(dtype="in=bf16 out=fp32"), "block=256 weight_buffers=3 gate_up_tiles=1"),
    ("partial_h_i_tiles", dict(hidden=320, intermediate=192), "block=256 lnc=2 tail=absorb"),
    ("h_2880_i_464", dict(hidden=2880, intermediate=464), "block=256"),  # gpt-oss H; I with a partial tile
]


@pytest.mark.parametrize("spec_kw, options", [m[1:] for m in MATRIX], ids=[m[0] for m in MATRIX])
def test_tail_tiles_match_the_reference(spec_kw, options):
    text = cte_spec(f"kernel k : cte {{ {options} weights=stream }}", **spec_kw)
    plan, _, got, want = run(text, "k", TOKENS, expert_index=tail_routing())
    assert plan.absorb_tail
    # LNC 2 with one summed output: the row lists follow the absorbed tiles (the final sum over the rows both touched)
    assert plan.final_sum_touched == ("lnc=2" in options and plan.accumulate and "per_core" not in options)
    assert_matches(plan, got, want)


def test_tail_tiles_with_top1_and_ep():
    """Top-1 (each row written once, shard=block at LNC 2) and EP 2 (the last rank's local experts)."""
    top1 = cte_spec("kernel k : cte { block=256 lnc=2 weights=stream }", top_k=1)
    order = np.repeat(np.arange(4, dtype=np.int32), COUNTS)[:, None]  # the same per-expert counts, one pair per token
    plan, _, got, want = run(top1, "k", order.shape[0], expert_index=order)
    assert plan.absorb_tail and not plan.accumulate
    assert_matches(plan, got, want)
    ep = cte_spec("kernel k : cte { block=256 lnc=2 weights=stream ep=2 tail=absorb }", experts=8)
    index = tail_routing((40, 50, 60, 70, 286, 420, 100, 540))
    index = np.concatenate([index, index[: len(index) // 10]])  # more tokens than pairs of the first rank need
    plan, _, got, want = run(ep, "k", index.shape[0], expert_index=index)
    assert plan.absorb_tail and plan.ep == 2 and plan.final_sum_touched
    assert_matches(plan, got, want)


# Tokens per expert at block 256 for the final sum with tail tiles: expert 0 a full block and a tail of 30 (block 1,
# core 1's, absorbed by block 0 on core 0), expert 1 two full blocks and a tail of 40 (block 4, core 0's, absorbed by
# block 3 on core 1; with distribute=halves core 1's first block, absorbed by core 0's last), expert 2 one block of
# 100, expert 3 a full block and a tail of 34 (block 7, core 1's, absorbed by block 6 on core 0).
CROSS_COUNTS = (286, 552, 100, 290)


@pytest.mark.parametrize(
    "spec_kw, options",
    [
        ({}, "block=256 lnc=2 weights=stream tail=absorb"),
        ({}, "block=256 lnc=2 weights=stream tail=absorb padding=skip"),
        ({}, "block=256 lnc=2 weights=stream tail=absorb distribute=halves"),
        (dict(hidden=320, intermediate=192), "block=256 lnc=2 weights=stream tail=absorb"),
    ],
    ids=["interleaved", "padding_skip", "halves", "partial_tiles"],
)
def test_final_sum_with_tail_tiles_follows_the_tiles_across_cores(spec_kw, options):
    """Tail tiles and the touched-row final sum in one kernel: an absorbed tile's rows are added into by the core of
    the block that absorbs it, so they go into that core's row list (and core 0 clears them at their first touch);
    the absorbed block records nothing, and core 1, listing the rows core 0 never touches, counts the tiles that
    moved (both directions here). From the trace: core 0 clears exactly the rows it adds into, core 1 writes exactly
    the others before the barrier, the final sum moves exactly the rows both touched; outputs match the reference.
    (Before, a kernel with tail tiles took the full final sum: final_sum_touched was off.)"""
    from moegen import sim

    text = cte_spec(f"kernel k : cte {{ {options} }}", **spec_kw)
    tokens = sum(CROSS_COUNTS) // 2
    with sim.recording():
        plan, inputs, got, want = run(text, "k", tokens, expert_index=tail_routing(CROSS_COUNTS))
        trace = sim.last_run().trace
    assert plan.absorb_tail and plan.final_sum_touched
    assert_matches(plan, got, want)
    assert inputs["block_to_expert"].ravel().tolist()[:8] == [0, 0, 1, 1, 1, 2, 3, 3]
    absorbed = [b for b, moved in enumerate(absorbed_blocks(plan, inputs)) if moved]
    assert absorbed == [1, 4, 7]
    n = len(absorbed_blocks(plan, inputs))
    owner = [(b // ((n + 1) // 2) if plan.distribute == "halves" else b % 2) for b in range(n)]
    moves = {(owner[b], owner[b - 1]) for b in absorbed if owner[b] != owner[b - 1]}  # (from core, to core)
    assert moves == ({(1, 0)} if plan.distribute == "halves" else {(1, 0), (0, 1)})
    rows0, rows1 = rows_of_each_core(plan, inputs)
    assert rows0 & rows1 and rows0 - rows1 and (rows1 - rows0 or plan.distribute == "halves")  # rows of every kind
    assert_final_sum_moves_only_the_touched_rows(plan, inputs, trace, tokens)


def _hbm_indirect(regions: list) -> bool:
    return any(r["mem"].startswith("hbm") and r.get("indirect") for r in regions)


@pytest.mark.parametrize(
    "options",
    ["block=256 lnc=2 weights=stream tail=absorb", "block=128 lnc=2"],
    ids=["copy_after_barrier", "copy_before_barrier"],
)
def test_final_sum_lists_load_and_combine_per_group_of_row_tiles(options):
    """The touched-row final sum loads each core's row list for a group of up to plan.final_sum_group row tiles in one
    DMA ([128, tiles], a row tile per column; the first group is short) and derives the rows both touched (and, with
    the copy after the barrier, the rows only core 1 touched and the rows neither touched) in a few [128, tiles]
    instructions per group: 1, or 5 (min; c1 - 1 - c0; iota; c0 + c1; r - 2 - that). Before, every row tile loaded its lists and ran its own chain
    (up to 8 int32 GpSimd instructions per tile). No dma_copy indexes both its source and its destination (the dma_copy
    page's gather and scatter index one side; before, the copy of core 1's rows indexed both); outputs match."""
    from moegen import sim

    text = cte_spec(f"kernel k : cte {{ {options} }}")
    tokens = sum(CROSS_COUNTS) // 2
    with sim.recording():
        plan, inputs, got, want = run(text, "k", tokens, expert_index=tail_routing(CROSS_COUNTS))
        trace = sim.last_run().trace
    assert_matches(plan, got, want)
    assert plan.final_sum_touched and plan.copy_after_barrier == ("tail=absorb" in options)
    copies = [rec for rec in trace if rec["opcode"] == "dma_copy"]
    assert not [rec["line"] for rec in copies if _hbm_indirect(rec["reads"]) and _hbm_indirect(rec["writes"])]
    per_group = 5 if plan.copy_after_barrier else 1
    for core in (0, 1):
        records = [rec for rec in trace if rec["core"] == core]
        barrier = max(i for i, rec in enumerate(records) if rec["opcode"] == "core_barrier")
        after = records[barrier + 1 :]
        tiles = len(range(core * 128, tokens, 256))
        first = plan.final_sum_first_group  # a short first group, then groups of plan.final_sum_group
        groups = 1 + -(-max(0, tiles - first) // plan.final_sum_group)
        assert tiles > 1 and groups < tiles
        compute = [rec for rec in after if rec["engine"] not in ("dma", "sync")]
        assert len(compute) == per_group * groups, [rec["opcode"] for rec in compute]
        list_loads = [  # the only int32 shared-HBM reads after the barrier: the row lists
            rec
            for rec in after
            if rec["opcode"] == "dma_copy"
            and (rec["operands"]["src"]["buffer"], rec["operands"]["src"]["dtype"]) == ("shared_hbm", "int32")
        ]
        assert len(list_loads) == 2 * groups
        sizes = [min(first, tiles)] + [
            min(plan.final_sum_group, tiles - g0) for g0 in range(first, tiles, plan.final_sum_group)
        ]
        assert [rec["operands"]["dst"]["shape"][1] for rec in list_loads] == [n for n in sizes for _ in (0, 1)]


@pytest.mark.parametrize(
    "options, message",
    [
        ("block=128 weights=stream tail=absorb", "block 128 (one token tile"),
        ("block=256 weights=stream loop=hybrid tail=absorb", "loop=hybrid"),
        ("block=256 weights=stream checkpoint tail=absorb", "checkpoint"),
        ("block=256 weights=stream dropping tail=absorb", "dropping"),
        ("block=256 weights=stream shard=intermediate lnc=2 tail=absorb", "shard=intermediate at lnc=2"),
        ("block=256 weights=resident tail=absorb", "weights are resident"),
        ("block=256 tail=sometimes", "tail"),
    ],
)
def test_tail_absorb_is_refused_where_it_cannot_be_built(tmp_path, options, message):
    text = layer_spec(f"kernel k : cte {{ {options} }}")
    error = refusal(tmp_path, text)
    assert "t.moe:5:" in error and "^" in error and message in error


def test_tail_absorb_costs_one_token_tile_of_sbuf(tmp_path):
    """The plan counts the absorbed tile: x^T and h^T hold B + 128 columns, the read-ahead rows one more tile."""
    text = layer_spec(
        "kernel a : cte { block=256 weights=stream }\n  kernel b : cte { block=256 weights=stream tail=block }"
    )
    absorbing, own = plans(tmp_path, text)
    assert absorbing.absorb_tail and not own.absorb_tail
    sizes = [{buf.name: buf.total_per_partition for buf in plan.buffers} for plan in (absorbing, own)]
    for name in ("xT", "hT", "out_rows"):
        assert sizes[0][name] == sizes[1][name] * 3 // 2
    assert "tail tiles" in dict(absorbing.decisions) and "tail tiles" not in dict(own.decisions)


def test_tail_auto_refits_the_chunk_rule_and_yields_to_spelled_widths(tmp_path):
    """Mixtral's prefill shape: with the absorbed tile the rule's widest chunks that fit are 2 I tiles and 512 columns
    (3 I tiles fit only without it); widths the spec spells that fit only without the tile turn it off under
    tail=auto, and are refused with tail=absorb. Both kernels (shard=block, LNC 2, one summed output) take the final
    sum over the rows both cores touched (final_sum_touched), with or without the tail tiles."""
    dims = "hidden=4096 intermediate=14336 experts=8 top_k=2 tp=8"
    auto, spelled = plans(
        tmp_path,
        layer_spec("kernel a : cte { lnc=2 }\n  kernel s : cte { lnc=2 gate_up_tiles=3 down_columns=512 }", dims=dims),
    )
    assert auto.final_sum_touched and spelled.final_sum_touched  # the row lists follow the absorbed tiles
    assert auto.absorb_tail and (auto.gate_up_chunks[0][3], auto.down_cols) == (2, 512)
    assert auto.sbuf_bytes() <= 208 * 1024
    assert not spelled.absorb_tail and (spelled.gate_up_chunks[0][3], spelled.down_cols) == (3, 512)
    error = refusal(
        tmp_path, layer_spec("kernel s : cte { lnc=2 gate_up_tiles=3 down_columns=512 tail=absorb }", dims=dims)
    )
    assert "more than the 212992 usable" in error


# Expert 0: two full blocks and a tail of 30 (block 2, absorbed by block 1); expert 1: two full blocks and a tail of 88
# (block 5, absorbed by block 4); expert 2: one block of 200; expert 3: a full block and a tail of 44 (block 8). At LNC 2
# core 0 runs blocks 0, 2 (empty), 4, 6, 8 (empty) and core 1 blocks 1, 3, 5 (empty), 7, 9 (padding only).
EMPTY_BETWEEN = (542, 600, 200, 300)


def test_an_empty_blocks_successor_loads_its_weights_during_the_previous_blocks_down_phase():
    """Core 0's block 4 follows the absorbed block 2: its first gate/up weight chunk (expert 1) is issued while block 0's
    down projection still has matmuls to run (the empty block 2 loads it in its place), so the in-order DMA queues do not
    hold it behind block 0's output updates; no per-block metadata op runs on VectorE (GpSimd: int32 tensor_tensor).
    Each expert's weights still move once per block that runs, and the output matches the reference. On main's kernel
    that load came after every instruction of block 0."""
    from moegen import sim

    text = cte_spec("kernel k : cte { block=256 lnc=2 weights=stream tail=absorb }")
    with sim.recording():
        plan, inputs, got, want = run(text, "k", sum(EMPTY_BETWEEN) // 2, expert_index=tail_routing(EMPTY_BETWEEN))
        trace = sim.last_run().trace
    assert plan.absorb_tail and plan.serpentine
    assert_matches(plan, got, want)
    assert inputs["block_to_expert"].ravel().tolist() == [0, 0, 0, 1, 1, 1, 2, 3, 3, 3]
    per_expert = 3 * plan.hidden * plan.intermediate * 2
    assert weight_bytes_per_expert(plan, trace) == [2 * per_expert, 2 * per_expert, per_expert, per_expert]

    core0 = [rec for rec in trace if rec["core"] == 0]
    gate_up_bytes = plan.hidden * plan.mlp.projections * plan.intermediate * 2
    first_load = next(
        i
        for i, rec in enumerate(core0)
        if rec["opcode"] == "dma_copy"
        and rec["bytes"]
        and rec["operands"]["src"].get("name") == "gate_up_proj_weight"
        and rec["operands"]["src"]["region"]["bytes"][0] // gate_up_bytes == 1
    )
    next_transpose = next(i for i in range(first_load, len(core0)) if core0[i]["opcode"] == "nc_transpose")
    block0_matmuls_after = sum(1 for rec in core0[first_load:next_transpose] if rec["opcode"] == "nc_matmul")
    assert block0_matmuls_after > 0
    _, kernels = build(text)
    lines = Path(kernels["k"].fn.__code__.co_filename).read_text().splitlines()
    first = next(n for n, line in enumerate(lines, 1) if "def start_block" in line)
    last = next(n for n, line in enumerate(lines, 1) if "def continue_block" in line)
    engines = {rec["engine"] for rec in trace if first < int(rec["line"].rsplit(":", 1)[1]) < last}
    assert "gpsimd" in engines and "vector" not in engines
