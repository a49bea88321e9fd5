"""cte kernels generated from inline specs, run in the simulator, compared per element with the
blockwise reference (moegen.reference.cte) on routing metadata from moegen.blocking.

Reduced shapes (H 256-320, I 192-256, a few hundred tokens); real model shapes are `slow` and in
`moegen verify`. Every variant runs on the same routing and must agree with the reference and so
with each other; the sweeps cover B, T (T*K not a multiple of B, experts without tokens), E, K,
dtypes, fp8 dequant, activations, scaling modes, bias, clamps, LNC 1 and 2, padding by T and -1,
hybrid loops over many padded blocks, and the checkpoint outputs.
"""

from __future__ import annotations

from functools import cache, partial
from pathlib import Path

import numpy as np
import pytest

from moegen.codegen.build import write
from moegen.compare import compare
from moegen.compiler import generate
from moegen.plan.common import DTYPE_BYTES
from moegen.reference import cte as cte_reference
from moegen.verify import cte as harness
from tests.families.support import build, layer_spec, module_builds

SEED = 20261123
REPO = Path(__file__).resolve().parents[2]


# The small layer of the cte tests: H 256, I 256, E 4, K 2, SiLU with POST_SCALE (keywords override each).
cte_spec = partial(
    layer_spec, hidden=256, intermediate=256, experts=4, top_k=2, expert="gate_up -> silu -> down -> scale"
)


def run(text: str, kernel: str, tokens: int, *, seed: int = SEED, expert_index=None, num_blocks=None):
    """(plan, inputs, kernel outputs, reference outputs) for one kernel of a spec."""
    plans, kernels = build(text)
    plan = plans[kernel]
    rng = np.random.default_rng(seed)
    inputs = harness.make_inputs(plan, tokens, rng, expert_index=expert_index, num_blocks=num_blocks)
    got = harness.run(kernels[kernel], plan, inputs)
    want = harness.expected(plan, inputs)
    return plan, inputs, got, want


def assert_matches(plan, got, want):
    assert set(got) == set(want)
    for name in want:
        result = compare(name, got[name], want[name], kind=harness.tolerance(plan, name))
        assert result.ok, f"{plan.kernel_name}: {result}"


# ------------------------------------------------------------------ variants on the same inputs

VARIANTS = """\
kernel block1  : cte { block=128 shard=block }
  kernel block2  : cte { block=128 shard=block lnc=2 }
  kernel i1      : cte { block=128 shard=intermediate }
  kernel i2      : cte { block=128 shard=intermediate lnc=2 }
  kernel hybrid2 : cte { block=128 shard=intermediate lnc=2 loop=hybrid }
  kernel stream2 : cte { block=128 shard=block lnc=2 weights=stream }
  kernel halves2 : cte { block=128 shard=block lnc=2 distribute=halves }
  kernel hybridb2 : cte { block=128 shard=block lnc=2 loop=hybrid }"""


VARIANT_TEXT = cte_spec(VARIANTS, hidden=320, intermediate=192)  # H and I with partial 64-row tiles


@cache
def variant_run(kernel: str):
    expert_index = harness.routing(150, 4, 2, np.random.default_rng(SEED))  # T*K = 300: not a multiple of B
    return run(VARIANT_TEXT, kernel, 150, expert_index=expert_index)


build_dir = module_builds("cte_builds", variant_run)


@pytest.mark.parametrize("kernel", ["block2", "i1", "i2", "hybrid2", "stream2", "halves2", "hybridb2"])
def test_variants_agree_with_each_other_and_the_reference(kernel):
    plan, _, got, want = variant_run(kernel)
    assert_matches(plan, got, want)
    first_plan, _, first, _ = variant_run("block1")
    assert_matches(first_plan, first, want)
    result = compare(kernel, got["out"], first["out"], kind="bf16")
    assert result.ok, str(result)


def test_blockwise_kernel_equals_plain_per_token_moe():
    text = cte_spec("kernel p : cte { block=128 }")
    plan, inputs, got, _ = run(text, "p", 200)
    per_token = cte_reference.moe_per_token(
        inputs["hidden_states"][:-1],
        inputs["expert_index"],
        inputs["expert_affinities"],
        inputs["gate_up_proj_weight"],
        inputs["down_proj_weight"],
        output_dtype="bf16",
        precision=harness.reference_precision(plan),
    )
    # the per-token sum rounds once; the kernel rounds each of the K contributions: 2 bf16 steps apart at most
    result = compare("out", got["out"][:-1], per_token, rtol=2**-5, atol=2**-5)
    assert result.ok, str(result)


def test_dropping_matches_reference_and_drops_beyond_capacity():
    text = cte_spec("kernel d : cte { block=128 dropping checkpoint shard=intermediate lnc=2 }")
    rng = np.random.default_rng(SEED)
    expert_index = harness.routing(200, 4, 2, rng, experts_used=3)  # expert 3 empty, the others over 128
    plan, inputs, got, want = run(text, "d", 200, expert_index=expert_index)
    assert_matches(plan, got, want)
    assert got["gate_up_activations_T"].shape == (4, 2, 256, 128)
    assert inputs["dropped"].any()
    per_token = cte_reference.moe_per_token(
        inputs["hidden_states"][:-1],
        inputs["expert_index"],
        inputs["expert_affinities"],
        inputs["gate_up_proj_weight"],
        inputs["down_proj_weight"],
        keep=~inputs["dropped"],
        output_dtype="bf16",
        precision=harness.reference_precision(plan),
    )
    result = compare("out", got["out"][:-1], per_token, rtol=2**-5, atol=2**-5)
    assert result.ok, str(result)


# ------------------------------------------------------------------ every variant x a full epilogue

MATRIX_VARIANTS = """\
kernel block1 : cte { block=128 checkpoint }
  kernel block2 : cte { block=128 checkpoint lnc=2 }
  kernel i1     : cte { block=128 checkpoint shard=intermediate }
  kernel i2     : cte { block=128 checkpoint shard=intermediate lnc=2 }
  kernel hybrid2 : cte { block=128 checkpoint shard=intermediate lnc=2 loop=hybrid }
  kernel hybridb2 : cte { block=128 checkpoint lnc=2 loop=hybrid }
  kernel drop1  : cte { block=128 checkpoint dropping }
  kernel drop2  : cte { block=128 checkpoint dropping shard=intermediate lnc=2 }"""
# GPT-OSS-like: fp8 row dequant, both biases, all four clamps, swish(1.702), +1 on up, POST_SCALE, top-2
EPILOGUE_A = cte_spec(
    MATRIX_VARIANTS,
    hidden=320,
    intermediate=192,
    quant="weights=fp8_row",
    expert="gate_up(bias) -> clamp(-1.5 <= gate <= 1, -1 <= up <= 1) -> swish(1.702) "
    "-> up_plus_one -> down(bias) -> scale",
)
# fp8 static dequant, PRE_SCALE, top-1 overwrite, gelu_tanh, down bias only, padding skipped by -1
EPILOGUE_B = cte_spec(
    MATRIX_VARIANTS.replace("checkpoint", "checkpoint padding=skip"),
    top_k=1,
    quant="weights=fp8_static",
    expert="scale -> gate_up -> gelu_tanh -> down(bias)",
)
MATRIX = [("A", k) for k in ("block1", "block2", "i1", "i2", "hybrid2", "hybridb2", "drop1", "drop2")] + [
    ("B", k) for k in ("block2", "i1", "hybrid2", "hybridb2", "drop2")
]


@pytest.mark.parametrize("epilogue, kernel", MATRIX, ids=[f"{e}-{k}" for e, k in MATRIX])
def test_variant_with_full_epilogue_matches_reference(epilogue, kernel):
    text = EPILOGUE_A if epilogue == "A" else EPILOGUE_B
    rng = np.random.default_rng(SEED)
    expert_index = harness.routing(140, 4, 2 if epilogue == "A" else 1, rng, experts_used=3)  # expert 3 empty
    plan, _, got, want = run(text, kernel, 140, expert_index=expert_index)
    assert plan.checkpoint
    assert_matches(plan, got, want)


# ------------------------------------------------------------------ sweeps (one kernel each)

SWEEP = [
    # id, spec keywords, kernel options, tokens
    ("B256_T300_K2", {}, "block=256", 300),
    ("E2_K1_overwrite", dict(experts=2, top_k=1), "block=128", 170),
    ("E8_K4_lnc2_block", dict(experts=8, top_k=4), "block=128 lnc=2", 90),
    ("fp16", dict(dtype="fp16"), "block=128 shard=intermediate lnc=2", 120),
    ("fp8_row", dict(quant="weights=fp8_row"), "block=128", 120),
    ("fp8_static_lnc2_i", dict(quant="weights=fp8_static"), "block=128 shard=intermediate lnc=2", 120),
    ("gelu", dict(expert="gate_up -> gelu -> down -> scale"), "block=128", 100),
    ("gelu_tanh", dict(expert="gate_up -> gelu_tanh -> down -> scale"), "block=128 lnc=2", 100),
    ("swish_1702", dict(expert="gate_up -> swish(1.702) -> down -> scale"), "block=128", 100),
    ("swish_1", dict(expert="gate_up -> swish(1.0) -> down -> scale"), "block=128", 100),
    ("relu", dict(expert="gate_up -> relu -> down -> scale"), "block=128 shard=intermediate", 100),
    ("squared_relu", dict(expert="gate_up -> squared_relu -> down -> scale"), "block=128", 100),
    ("pre_scale_top1", dict(top_k=1, expert="scale -> gate_up -> silu -> down"), "block=128 lnc=2", 150),
    ("no_scale", dict(expert="gate_up -> silu -> down"), "block=128", 100),
    (
        "bias_clamp_plus_one",
        dict(
            expert="gate_up(bias) -> clamp(gate <= 1, -1 <= up <= 1) -> swish(1.702) "
            "-> up_plus_one -> down(bias) -> scale"
        ),
        "block=128 shard=intermediate lnc=2",
        120,
    ),
    (
        "gate_clamps_only",
        dict(expert="gate_up -> clamp(-0.5 <= gate <= 0.5) -> silu -> down -> scale"),
        "block=128",
        100,
    ),
    ("pad_skip", {}, "block=128 padding=skip", 130),
    ("pad_skip_lnc2_top1", dict(top_k=1), "block=128 padding=skip lnc=2", 130),
    (
        "checkpoint_clamp",
        dict(expert="gate_up(bias) -> clamp(gate <= 1) -> silu -> down(bias) -> scale"),
        "block=128 checkpoint",
        100,
    ),
    ("checkpoint_hybrid_skip", {}, "block=128 checkpoint shard=intermediate loop=hybrid padding=skip", 100),
    (
        "fp8_bias_pre_lnc2_i",
        dict(quant="weights=fp8_row", expert="scale -> gate_up(bias) -> relu -> down(bias)", top_k=1),
        "block=128 shard=intermediate lnc=2",
        100,
    ),
    ("out_fp32", dict(dtype="in=bf16 out=fp32"), "block=128", 100),
    ("hybrid_block_lnc1_fp8_static", dict(quant="weights=fp8_static"), "block=128 loop=hybrid", 100),
]


@pytest.mark.parametrize("spec_kw, options, tokens", [s[1:] for s in SWEEP], ids=[s[0] for s in SWEEP])
def test_sweep_cell_matches_reference(spec_kw, options, tokens):
    text = cte_spec(f"kernel k : cte {{ {options} }}", **spec_kw)
    plan, _, got, want = run(text, "k", tokens)
    assert_matches(plan, got, want)


def test_experts_without_tokens_are_skipped_cleanly():
    text = cte_spec("kernel k : cte { block=128 }", experts=8)
    rng = np.random.default_rng(SEED)
    expert_index = harness.routing(100, 8, 2, rng, experts_used=3)
    plan, _, got, want = run(text, "k", 100, expert_index=expert_index)
    assert_matches(plan, got, want)


@pytest.mark.parametrize("lnc", [1, 2])
def test_resident_weights_are_reused_across_blocks_of_one_expert(lnc):
    text = cte_spec(f"kernel k : cte {{ block=128 lnc={lnc} }}")
    rng = np.random.default_rng(SEED)
    expert_index = harness.routing(200, 4, 2, rng, experts_used=2)  # experts 0 and 1: 2 blocks each
    plan, inputs, got, want = run(text, "k", 200, expert_index=expert_index)
    assert plan.reuse_weights
    assert list(inputs["block_to_expert"][:4, 0]) == [0, 0, 1, 1]
    assert_matches(plan, got, want)


@pytest.mark.parametrize("shard", ["intermediate", "block"])
def test_hybrid_skips_many_fully_padded_blocks(shard):
    text = cte_spec(f"kernel h : cte {{ block=128 shard={shard} lnc=2 loop=hybrid checkpoint }}")
    plan, inputs, got, want = run(text, "h", 60, num_blocks=12)  # 60*2 slots: at most 4 real blocks of 12
    assert int(inputs["conditions"].sum()) <= 4
    assert_matches(plan, got, want)


@pytest.mark.parametrize("top_k, tokens, used, padding", [(2, 150, 7, ""), (1, 130, 5, "padding=skip"), (4, 90, 5, "")])
def test_hybrid_shard_block_cores_run_different_trip_counts(top_k, tokens, used, padding):
    """shard=block loop=hybrid at LNC 2: each core runs a runtime loop over its own blocks (c, c+2, ...); with
    an odd number of real blocks the cores' trip counts differ, and the output still matches the reference
    (an LNC=2 NEFF holds one instruction stream per core: "Using Logical NeuronCores (LNC) with NKI")."""
    text = cte_spec(f"kernel h : cte {{ block=128 lnc=2 loop=hybrid {padding} }}", experts=8, top_k=top_k)
    expert_index = harness.routing(tokens, 8, top_k, np.random.default_rng(SEED), experts_used=used)
    plan, inputs, got, want = run(text, "h", tokens, expert_index=expert_index, num_blocks=16)
    assert plan.hybrid and (plan.shard, plan.lnc) == ("block", 2)
    real_blocks = int(inputs["conditions"].sum())
    static_blocks = -(-tokens * top_k // 128)
    assert real_blocks > static_blocks and real_blocks % 2 == 1  # runtime blocks on both cores, uneven split
    assert_matches(plan, got, want)


def test_core_without_blocks_still_clears_its_partial_sums():
    """shard=block at LNC 2 with one block: core 1 runs no block, so the zero fill that pipelined kernels issue
    during a core's first block must still clear its partial sums (out = partial 0 + partial 1)."""
    text = cte_spec("kernel a : cte { block=128 lnc=2 weights=stream update=accumulate }", top_k=1)
    expert_index = harness.routing(100, 4, 1, np.random.default_rng(SEED), experts_used=1)
    plan, inputs, got, want = run(text, "a", 100, expert_index=expert_index, num_blocks=1)
    assert plan.partial_output and plan.zero_in_first_block and inputs["block_to_expert"].shape[0] == 1
    assert_matches(plan, got, want)


def test_hybrid_core_without_a_trace_time_block_clears_its_partial_sums_before_its_runtime_loop():
    """loop=hybrid, shard=block, LNC 2, 100 tokens top-1 at block 128: one trace-time block (core 0's, which
    clears core 0's partial sums between its gate/up weight loads); core 1 runs only runtime blocks, so it must
    clear its partial sums before its runtime loop."""
    text = cte_spec("kernel h : cte { block=128 lnc=2 loop=hybrid update=accumulate }", top_k=1)
    expert_index = harness.routing(100, 4, 1, np.random.default_rng(SEED), experts_used=4)
    plan, inputs, got, want = run(text, "h", 100, expert_index=expert_index)
    assert plan.hybrid and plan.partial_output and plan.zero_in_first_block
    assert int(inputs["conditions"].sum()) >= 3  # core 1 runs at least one runtime block
    assert_matches(plan, got, want)


def absorbed_blocks(plan, inputs) -> list[bool]:
    """Per block: whether block b - 1 runs its only token tile (plan.absorb_tail: same expert, block b holds tokens in
    its tile 0 only, block b - 1 one in its tile 1), evaluated on the inputs independently of the kernel."""
    ids = inputs["token_position_to_id"].reshape(-1, plan.block)
    experts = inputs["block_to_expert"].ravel()
    tokens = inputs["hidden_states"].shape[0] - (0 if plan.pad_skip else 1)
    real = ((ids >= 0) & (ids < tokens)).reshape(ids.shape[0], -1, 128).any(axis=2)  # [N, token tiles]
    return [
        bool(plan.absorb_tail and b > 0 and experts[b] == experts[b - 1] and real[b, 0] and not real[b, 1:].any())
        and bool(real[b - 1, 1])
        for b in range(ids.shape[0])
    ]


def rows_of_each_core(plan, inputs) -> tuple[set, set]:
    """The token rows core 0 and core 1 add into (shard=block at LNC 2: interleaved or halves): a block's rows go to
    the core that runs it, an absorbed tile's to the core of the block that absorbs it."""
    ids = inputs["token_position_to_id"].reshape(-1, plan.block)
    n = ids.shape[0]
    half = (n + 1) // 2
    owner = [(b // half if plan.distribute == "halves" else b % 2) for b in range(n)]
    absorbed = absorbed_blocks(plan, inputs)
    tokens = inputs["hidden_states"].shape[0] - (0 if plan.pad_skip else 1)
    rows = (set(), set())
    for b in range(n):
        rows[owner[b - 1] if absorbed[b] else owner[b]].update(int(i) for i in ids[b] if 0 <= i < tokens)
    return rows


def assert_final_sum_moves_only_the_touched_rows(plan, inputs, trace, tokens):
    """From the trace: core 0 clears exactly the rows it adds into; core 1 writes before the barrier exactly the rows
    core 0 never touches (and the padding row T when no slot of core 0 holds it), or with plan.copy_after_barrier the
    two cores copy exactly those rows below T after it; the dma_compute after the barrier moves exactly the rows both
    cores touched (split between the cores)."""
    rows0, rows1 = rows_of_each_core(plan, inputs)
    row_bytes = plan.hidden * DTYPE_BYTES[plan.out_dtype]
    ids = inputs["token_position_to_id"].reshape(-1, plan.block)
    half = (ids.shape[0] + 1) // 2
    core0_ids = ids[:half] if plan.distribute == "halves" else ids[0::2]
    pad_row = not plan.pad_skip and tokens not in core0_ids
    (out_mem,) = {rec["writes"][0]["mem"] for rec in trace if rec["opcode"] == "dma_compute"}
    zero_tile = next(  # the zero tile [128, ZERO_COLUMNS] core 0 clears rows from (its first memset of that shape)
        rec["writes"][0]
        for rec in trace
        if rec["core"] == 0
        and rec["opcode"] == "memset"
        and rec["operands"]["dst"]["shape"] == (128, plan.zero_columns)
    )

    def reads_zero_tile(rec) -> bool:
        return any(
            r["mem"] == zero_tile["mem"] and zero_tile["bytes"][0] <= r["bytes"][0] < zero_tile["bytes"][1]
            for r in rec["reads"]
        )

    before, after, copied = {(0, "zero"): 0, (1, "copy"): 0}, {0: 0, 1: 0}, {0: 0, 1: 0}
    for core in (0, 1):
        records = [rec for rec in trace if rec["core"] == core]
        barrier = max(i for i, rec in enumerate(records) if rec["opcode"] == "core_barrier")
        for i, rec in enumerate(records):
            if not any(w["mem"] == out_mem and w.get("indirect") for w in rec["writes"]):
                continue
            if i > barrier and rec["opcode"] == "dma_copy" and plan.copy_after_barrier:
                copied[core] += rec["bytes"]
            elif i > barrier:
                assert rec["opcode"] == "dma_compute"
                after[core] += rec["bytes"]
            elif core == 1:  # core 1 writes out only here: its rows that core 0 never touches
                before[(1, "copy")] += rec["bytes"]
            elif reads_zero_tile(rec):
                before[(0, "zero")] += rec["bytes"]
    untouched_by_0 = (tokens - len(rows0)) * row_bytes
    assert before == {
        (0, "zero"): len(rows0) * row_bytes,  # core 0 clears exactly the rows it adds into
        (1, "copy"): 0 if plan.copy_after_barrier else untouched_by_0 + pad_row * row_bytes,
    }
    if plan.copy_after_barrier:
        assert copied[0] + copied[1] == untouched_by_0
    assert after[0] + after[1] == len(rows0 & rows1) * row_bytes and after[0] and after[1]


@pytest.mark.parametrize(
    "options, tokens",
    [
        ("block=128 lnc=2", 300),
        ("block=128 lnc=2 weights=stream padding=skip", 300),
        ("block=128 lnc=2 weights=stream distribute=halves", 300),
    ],
)
def test_final_sum_moves_only_the_rows_both_cores_touched(options, tokens):
    """shard=block at LNC 2 (static loop): core 0 accumulates into out itself, clearing a row when one of its blocks
    first adds into it (no up-front zero fill); core 1 accumulates into a partial-sum buffer and, before the barrier,
    writes the rows no block of core 0 touches (out = partial: its sums, or zero); after the barrier the final sum is
    one dma_compute out += partial per 128-row tile over the rows both cores touched (ids -1 elsewhere, oob_mode=skip:
    they move no bytes). The trace's bytes are exactly those rows (the old kernel zero-filled all of each core's
    partial sums and added the two partials over all T rows after the barrier); outputs match the reference.
    (With tail tiles: tests/families/test_cte_tail.py.)"""
    from moegen import sim

    text = cte_spec(f"kernel a : cte {{ {options} }}")
    with sim.recording():
        plan, inputs, got, want = run(text, "a", tokens)
        trace = sim.last_run().trace
    assert_matches(plan, got, want)
    assert plan.partial_output and plan.final_sum_touched
    rows0, rows1 = rows_of_each_core(plan, inputs)
    assert rows0 & rows1 and rows1 - rows0 and rows0 - rows1  # every kind of row occurs
    assert_final_sum_moves_only_the_touched_rows(plan, inputs, trace, tokens)


@pytest.mark.parametrize("lnc", [1, 2])
def test_repeated_expert_skips_the_weight_chunks_still_in_sbuf(lnc):
    """Streamed weights, pipelined blocks: a core's consecutive blocks run their weight chunks in opposite orders,
    so when the expert repeats the first two chunks of each weight are the ones the previous block ended with and
    their DMAs are skipped (out-of-bounds expert); the output still matches the reference."""
    from moegen import sim

    text = cte_spec(f"kernel s : cte {{ block=128 lnc={lnc} weights=stream }}", hidden=1024, intermediate=1280)
    expert_index = harness.routing(300, 4, 2, np.random.default_rng(SEED), experts_used=2)  # 3 blocks per expert
    with sim.recording():
        plan, inputs, got, want = run(text, "s", 300, expert_index=expert_index)
        trace = sim.last_run().trace
    assert plan.serpentine and len(plan.gate_up_chunks) >= 2 and len(plan.down_chunks) >= 2
    assert_matches(plan, got, want)
    experts = inputs["block_to_expert"].ravel().tolist()
    real = (inputs["token_position_to_id"].reshape(len(experts), -1) < 300).any(axis=1).tolist()
    order = [list(range(core, len(experts), lnc)) for core in range(lnc)]  # each core's blocks (interleaved)
    repeats = sum(
        1 for blocks in order for a, b in zip(blocks, blocks[1:]) if real[a] and real[b] and experts[a] == experts[b]
    )
    assert repeats >= 2
    weight_bytes = sum(
        rec["bytes"]
        for rec in trace
        if rec["opcode"] == "dma_copy" and "proj_weight" in str(rec["operands"].get("src"))
    )
    per_block = 3 * plan.hidden * plan.intermediate * 2  # gate, up and down weights of one expert, bf16
    assert weight_bytes < sum(real) * per_block  # the repeated blocks skipped their first chunks


def test_later_token_tiles_are_gathered_in_column_pieces():
    """Pipelined static loop: a block's token tiles after the first two (gathered when the block starts) are
    gathered in column pieces, so a tile's transposes can start when its first piece lands; every gathered row
    is moved once and the output matches the reference."""
    from moegen import sim

    text = cte_spec("kernel p : cte { block=512 lnc=2 weights=stream }", hidden=1024, experts=2)
    with sim.recording():
        plan, inputs, got, want = run(text, "p", 300)  # 300 tokens per expert: 3 active tiles per block
        trace = sim.last_run().trace
    assert_matches(plan, got, want)
    assert plan.pipeline_blocks and len(plan.gather_pieces) == 4
    row_bytes = plan.hidden * 2
    gathers = [
        rec["bytes"]
        for rec in trace
        if rec["opcode"] == "dma_copy" and "hidden_states" in str(rec["operands"].get("src"))
    ]
    slots = inputs["token_position_to_id"].reshape(-1, plan.token_tiles, 128)
    active = (slots < 300).any(axis=2)
    later = int(active[:, 2:].sum())  # tiles gathered inside their block
    assert later > 0
    assert gathers.count(128 * row_bytes // 4) == 4 * later
    assert sum(gathers) == int(active.sum()) * 128 * row_bytes


PADDING_TILES = """\
kernel res1    : cte { block=512 }
  kernel stream2 : cte { block=512 lnc=2 weights=stream padding=skip }
  kernel hyb2    : cte { block=512 shard=intermediate lnc=2 loop=hybrid }"""


@pytest.mark.parametrize("kernel", ["res1", "stream2", "hyb2"])
def test_padding_tiles_issue_no_matmuls(kernel):
    """Blocks of 512 slots holding ~50 tokens: only each block's first 128-slot tile runs its gate/up and down
    matmuls (a 0/1 nl.fori_loop per tile); the output still matches the reference."""
    from moegen import sim

    text = cte_spec(PADDING_TILES)
    with sim.recording():
        plan, inputs, got, want = run(text, kernel, 100)  # T*K = 200 pairs over 4 experts, N = 4 blocks of 512
        trace = sim.last_run().trace
    assert_matches(plan, got, want)
    slots = inputs["token_position_to_id"].reshape(-1, plan.token_tiles, 128)
    real = (slots >= 0) & (slots < 100)
    active_tiles = int(real.any(axis=2).sum())
    assert active_tiles < slots.shape[0] * plan.token_tiles  # most tiles hold only padding
    h_tiles, i_tiles, projections = len(plan.h_tiles), len(plan.i_tiles), plan.mlp.projections
    per_core_tile = i_tiles * h_tiles * projections + i_tiles * len(plan.down_chunks) * (2 if plan.exchange else 1)
    cores = 2 if plan.shard == "intermediate" and plan.lnc == 2 else 1  # shard=i: both cores run every tile
    matmuls = sum(1 for rec in trace if rec["opcode"] == "nc_matmul")
    assert matmuls == active_tiles * per_core_tile * cores


PIPELINED = """\
kernel hyb_block : cte { block=256 lnc=2 loop=hybrid }
  kernel hyb_skip  : cte { block=256 lnc=2 loop=hybrid padding=skip }
  kernel hyb_i     : cte { block=256 shard=intermediate lnc=2 loop=hybrid }"""


@pytest.mark.parametrize("kernel", ["hyb_block", "hyb_skip", "hyb_i"])
def test_hybrid_body_updates_rows_by_dma_compute(kernel):
    """The hybrid body adds each token tile's result into its output rows with dma_compute (read-modify-write in
    the DMA engine), not a read DMA, a VectorE add and a write DMA: one per active tile (shard=block: whole rows)
    or per active tile and output chunk (shard=intermediate); no output row is read into SBUF; outputs match."""
    from moegen import sim

    with sim.recording():
        plan, inputs, got, want = run(cte_spec(PIPELINED), kernel, 100)
        trace = sim.last_run().trace
    assert_matches(plan, got, want)
    assert plan.output_dma_add and plan.metadata_prefetch and plan.gather_prefetch
    assert plan.down_whole_rows == (plan.shard == "block")
    slots = inputs["token_position_to_id"].reshape(-1, plan.token_tiles, 128)
    active = int(((slots >= 0) & (slots < 100)).any(axis=2).sum())
    per_tile = 1 if plan.down_whole_rows else len(plan.down_chunks)
    cores = 2 if plan.shard == "intermediate" else 1  # shard=i: both cores run every tile
    row_updates = [
        rec for rec in trace if rec["opcode"] == "dma_compute" and any(r.get("indirect") for r in rec["writes"])
    ]
    assert len(row_updates) == active * per_tile * cores  # (the final sum of partial sums is dma_compute too)
    accumulators = {r["mem"] for rec in trace if rec["opcode"] == "dma_compute" for r in rec["writes"]}
    row_reads = [
        rec
        for rec in trace
        if rec["opcode"] == "dma_copy" and any(r.get("indirect") and r["mem"] in accumulators for r in rec["reads"])
    ]
    assert accumulators and not row_reads  # the old update gathered the rows into SBUF first


def _producers(trace: list) -> list:
    """Per record: indices of the latest earlier records (same core) that wrote bytes it reads or addresses."""
    writes: dict = {}  # (core, mem) -> [(parts, bytes, index)]
    deps = []
    for index, rec in enumerate(trace):
        found = set()
        for region in (*rec.get("reads", ()), *rec.get("addr_reads", ())):
            for parts, span, writer in reversed(writes.get((rec["core"], region["mem"]), [])):
                p, b = region["parts"], region["bytes"]
                if parts[0] < p[1] and p[0] < parts[1] and span[0] < b[1] and b[0] < span[1]:
                    found.add(writer)
                    break
        deps.append(found)
        for region in rec.get("writes", ()):
            writes.setdefault((rec["core"], region["mem"]), []).append((region["parts"], region["bytes"], index))
    return deps


@pytest.mark.parametrize("shard", ["block", "intermediate"])
def test_hybrid_weight_expert_is_computed_a_block_ahead_on_gpsimd(shard):
    """Resident weights in a hybrid loop: the expert index that addresses a block's weight DMAs (out of bounds when
    the expert repeats on this core, so the DMAs are skipped) is computed by the previous block on GpSimd from the
    prefetched ids; no VectorE instruction (in order behind the transposes' evacuations and the gate/up epilogue)
    is on its chain, so the next expert's weights load as soon as this block's matmuls free their buffer. Repeated
    experts still load nothing; the output matches the reference."""
    from moegen import sim

    text = cte_spec(f"kernel h : cte {{ block=128 lnc=2 shard={shard} loop=hybrid }}")
    expert_index = harness.routing(300, 4, 2, np.random.default_rng(SEED), experts_used=2)  # 3 blocks per expert
    with sim.recording():
        plan, inputs, got, want = run(text, "h", 300, expert_index=expert_index)
        trace = sim.last_run().trace
    assert plan.hybrid and plan.resident_weights and plan.reuse_weights and plan.weight_expert_ahead
    assert_matches(plan, got, want)
    deps = _producers(trace)
    weight_dmas = [
        index
        for index, rec in enumerate(trace)
        if rec["opcode"] == "dma_copy" and any("proj_weight" in r["mem"] for r in rec["reads"])
    ]
    for index in weight_dmas:
        chain, todo = set(), [w for w in deps[index]]  # the address's producers, back to the metadata DMAs
        while todo:
            writer = todo.pop()
            if writer not in chain:
                chain.add(writer)
                if trace[writer]["engine"] != "dma":
                    todo.extend(deps[writer])
        assert chain and {trace[w]["engine"] for w in chain} <= {"gpsimd", "dma"}, trace[index]["line"]
    # each core loads an expert's weights only when its expert differs from the core's previous block's
    experts = inputs["block_to_expert"].ravel().tolist()
    real = int(inputs["conditions"].sum())
    step = 2 if shard == "block" else 1
    loads = sum(
        sum(1 for k, b in enumerate(blocks) if k == 0 or experts[b] != experts[blocks[k - 1]])
        for blocks in ([list(range(c, real, step)) for c in range(2)])
    )
    per_core = 3 * plan.hidden * plan.intermediate * 2 // (1 if shard == "block" else 2)  # bf16 gate, up, down
    assert loads < real * (2 if shard == "intermediate" else 1)  # some blocks repeat their core's previous expert
    assert sum(trace[i]["bytes"] for i in weight_dmas) == loads * per_core


def test_kernel_rejects_a_wrong_shape_by_name():
    plans, kernels = build(cte_spec("kernel p : cte { block=128 }"))
    plan = plans["p"]
    inputs = harness.make_inputs(plan, 64, np.random.default_rng(SEED))
    inputs["down_proj_weight"] = inputs["down_proj_weight"][:, :128]
    with pytest.raises(Exception, match="down_proj_weight must have shape"):
        harness.run(kernels["p"], plan, inputs)


# ------------------------------------------------------------------ real model shapes


@pytest.mark.slow
@pytest.mark.parametrize(
    "spec", ["cte_seed_variants", "mixtral_8x7b", "qwen3_30b_a3b", "gpt_oss_20b", "llama4_scout", "deepseek_v3"]
)
def test_real_model_specs_verify(spec, tmp_path):
    from moegen.verify import verify_plans

    generated = generate(REPO / "specs" / f"{spec}.moe")
    folder = write(generated, tmp_path)
    plans = [plan for plan in generated.plans if plan.family == "cte"]
    assert verify_plans(plans, folder, out=lambda line: None)
