"""The head of a pipelined static block loop and the block after an empty block (plan fields head_chunk_first and
row_id_slots): schedule checks from the simulator trace and the timeline model, with reference comparisons."""

from __future__ import annotations

from tests.families.test_cte import assert_matches, build_dir, cte_spec, run  # noqa: F401 (build_dir: fixture)
from tests.families.test_cte_tail import tail_routing

# Tokens per expert at block 256: expert 0 two full blocks and a tail of 30 (absorbed by the second: block 2, on core
# 0, is empty), expert 1 two full blocks, expert 2 one block of 100, expert 3 one of 200. Core 0 runs blocks 0
# (real), 2 (empty), 4 (real), 6 (real).
COUNTS = (542, 512, 100, 200)
TEXT = cte_spec("kernel p : cte { block=256 lnc=2 weights=stream gate_up_tiles=1 }")  # two gate/up chunks


def _traced():
    from moegen import sim

    with sim.recording():
        plan, inputs, got, want = run(TEXT, "p", sum(COUNTS) // 2, expert_index=tail_routing(COUNTS))
        trace = sim.last_run().trace
    assert_matches(plan, got, want)
    return plan, inputs, trace


def _name(rec, operand):
    value = rec["operands"].get(operand)
    return value.get("name") if isinstance(value, dict) else None


def _core_records(trace, core):
    return [rec for rec in trace if rec["core"] == core]


def test_first_block_loads_its_first_gate_up_chunk_before_the_other_and_after_its_rows():
    """A core's first block has no previous block to overlap: its gate/up weight DMAs start with the chunk its first
    matmuls use (I columns from 0), and the other of its first two chunks goes out after every token-row gather of
    the block (before: that other chunk was the block's first weight DMA, ahead of its first rows)."""
    plan, inputs, trace = _traced()
    assert plan.head_chunk_first and plan.serpentine and len(plan.gate_up_chunks) > 1
    row_bytes = plan.mlp.projections * plan.intermediate * 2  # one H row of gate/up weights
    for core in (0, 1):
        records = _core_records(trace, core)
        loads = [i for i, rec in enumerate(records) if _name(rec, "src") == "gate_up_proj_weight" and rec["bytes"]]
        first, second = loads[0], loads[1]
        assert records[first]["operands"]["src"]["region"]["bytes"][0] % row_bytes == 0  # I column 0: chunk 0
        # the block's own token tiles (the next block's first rows are gathered after its last gate/up chunk loads)
        slots = inputs["token_position_to_id"].reshape(-1, plan.token_tiles, 128)[core]
        own_tiles = int((slots < inputs["hidden_states"].shape[0] - 1).any(axis=1).sum())
        gathers = [i for i, rec in enumerate(records) if _name(rec, "src") == "hidden_states"]
        gathered_tiles = 0
        for i in gathers:
            if i > second:
                break
            gathered_tiles += records[i]["bytes"] / (128 * plan.hidden * 2)
        assert gathered_tiles >= own_tiles, (core, gathered_tiles, own_tiles)


def _overlap(a: dict, b: dict) -> bool:
    """Whether two trace regions share bytes (same memory, partitions and byte ranges overlapping)."""
    return (
        a["mem"] == b["mem"]
        and a["parts"][0] < b["parts"][1]
        and b["parts"][0] < a["parts"][1]
        and a["bytes"][0] < b["bytes"][1]
        and b["bytes"][0] < a["bytes"][1]
    )


def test_block_after_an_empty_block_writes_row_ids_the_block_before_still_reads():
    """Core 0 runs block 0, block 2 (absorbed into core 1's block 1: empty) and block 4. Block 4 starts during block
    2, i.e. right after block 0's down phase is issued, while block 0's output-row DMAs still read its row ids. With
    three copies of the row id tiles, block 4's metadata writes no tile those DMAs read, so (write after read) it
    does not wait for block 0's last output write: at Mixtral's shape (T 4096, modeled) that wait held the block
    after an empty block ~7 us and a core's trailing empty blocks, hence its barrier, ~17 us. With two copies
    block 4 (turn 2) reused block 0's copy."""
    plan, inputs, trace = _traced()
    assert plan.row_id_slots == 3
    blocks = inputs["token_position_to_id"].reshape(-1, plan.block)
    real = (blocks < inputs["hidden_states"].shape[0] - 1).sum(axis=1)
    assert real[2] == COUNTS[0] - 2 * plan.block and real[1] == plan.block  # block 2 is a tail block 1 absorbs
    assert (real[[0, 4]] > 0).all()
    records = _core_records(trace, 0)
    start = next(
        i
        for i, rec in enumerate(records)
        if _name(rec, "src") == "token_position_to_id"
        and rec["operands"]["src"]["region"]["bytes"][0] == 4 * plan.block * 4
        and rec["bytes"] == 4 * 128 * (plan.token_tiles + 1)
    )  # block 4's row ids (and the first tile of block 5)
    first_gather = next(i for i in range(start, len(records)) if _name(records[i], "src") == "hidden_states")
    # what block 0's output-row writes read (the only HBM the block loop writes, after the first block's zero fill)
    read_by_writes = [
        region
        for rec in records[:start]
        if any(w["mem"].startswith("hbm") for w in rec.get("writes", ()))
        for region in (*rec.get("reads", ()), *rec.get("addr_reads", ()))
        if not region["mem"].startswith("hbm")
    ]
    assert read_by_writes
    metadata_writes = [
        w for rec in records[start:first_gather] for w in rec.get("writes", ()) if w["mem"].startswith("sbuf")
    ]
    assert metadata_writes
    assert not any(_overlap(w, r) for w in metadata_writes for r in read_by_writes)


def test_the_neighbour_block_slots_have_their_own_tile():
    """The tail rule reads block - 1's tile 1 slots (128 int32 ids). They now go into their own tile, so their DMA
    does not wait for the tile flags' reads of slot_ids, which hold the block's own slots (before: they overwrote
    slot_ids' first row, and the first weight DMA's weight_expert chain waited for that write). From the trace: the
    128-slot DMAs from token_position_to_id never write where the whole-block slot DMAs write."""
    plan, inputs, trace = _traced()
    assert plan.absorb_tail and plan.pipeline_blocks
    for core in (0, 1):
        records = _core_records(trace, core)
        slot_loads = [
            rec for rec in records if _name(rec, "src") == "token_position_to_id" and rec["opcode"] == "dma_copy"
        ]
        neighbour = [rec for rec in slot_loads if rec["bytes"] == 4 * 128]
        whole = [rec for rec in slot_loads if rec["bytes"] == 4 * 128 * plan.token_tiles and len(rec["writes"]) == 1]
        assert neighbour and whole, core
        assert not any(_overlap(n["writes"][0], w["writes"][0]) for n in neighbour for w in whole), core
