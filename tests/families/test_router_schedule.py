"""Schedule properties of the router kernels, read from the simulator's instruction trace.

Each test runs a small generated router kernel, checks its outputs against the reference and then one
property of the instructions it issued (DMA run lengths, engine choices, instruction counts).
"""

from __future__ import annotations

import numpy as np
import pytest

from moegen import sim
from moegen.verify import router as harness
from tests.families.test_router_kernels import assert_matches, build, build_dir, router_spec

__all__ = ["build_dir"]  # the module-scoped build folder fixture (autouse) of the router kernel tests

SEED = 20261206


def traced(text: str, tokens: int, kernel: str = "route"):
    """(plan, trace) of one run of `kernel` on seeded inputs."""
    generated, modules = build(text)
    plan = next(p for p in generated.plans if p.kernel_name == kernel)
    inputs = harness.make_inputs(plan, tokens, np.random.default_rng(SEED))
    with sim.recording():
        harness.run(getattr(modules[kernel], kernel), plan, inputs)
    return plan, sim.last_run().trace


def test_layout_ht_few_tokens_load_x_in_one_run_per_partition():
    """Layout ht, T = 1 (Llama-4-Scout decode routing): x [H, 1] is read into a dense [128, H tiles, 1]
    tile, so the DMA moves one run of H tiles elements per partition, not one 2-byte descriptor per
    element (the old [128, H tiles, 128] buffer's column made every element its own run)."""
    text = router_spec(
        hidden=1280,
        experts=16,
        top_k=1,
        router="linear -> topk -> sigmoid",
        kernels="kernel route : router { layout=ht }",
    )
    assert_matches(text, tokens=1)
    plan, trace = traced(text, 1)
    x_loads = [r for r in trace if r["opcode"] == "dma_copy" and r["bytes"] == plan.h_tiles * 128 * 2]
    assert x_loads, "no DMA moved x"
    for rec in x_loads:
        runs = [region["contig"] for region in rec["reads"] + rec["writes"]]
        assert min(runs) >= plan.h_tiles * 2, runs


def test_transposed_x_copies_cycle_over_the_tiles_in_order():
    """Layout th, E = 8 (light routing): the x.T PSUM -> SBUF copies take the plan's engine pattern in
    order across token tiles (3 of every 8 on VectorE), not restarted at each tile's first copy."""
    text = router_spec(
        hidden=2048,
        experts=8,
        top_k=2,
        router="linear -> topk -> softmax",
        kernels="kernel route : router { layout=th }",
    )
    assert_matches(text, tokens=3 * 128)
    plan, trace = traced(text, 3 * 128)
    copies = [
        r["engine"]
        for r in trace
        if r["opcode"] == "tensor_copy"
        and r["operands"]["src"]["buffer"] == "psum"
        and r["operands"]["src"]["dtype"] == "bfloat16"
    ]
    per_tile = plan.h_tiles // plan.x_group
    assert len(copies) == 3 * per_tile
    assert copies == [plan.x_copy_engines[i % len(plan.x_copy_engines)] for i in range(len(copies))]
    assert copies.count("vector") == 2  # s s v s | s v: the second tile does not restart at ScalarE


def test_renormalised_softmax_row_weights_take_one_instruction_per_tile():
    """Pre-norm softmax ranked on logits, L1 renormalised, one-hot scatter (Qwen3): the softmax's 1 / sum
    cancels in the renormalisation, so no row sum is reduced or inverted (the K sums are: one reciprocal per
    routing group), and the whole-row weights exp * (1 / K sum) are one tensor_scalar per tile; the
    affinities match the reference."""
    text = router_spec(hidden=256, experts=64, top_k=8, router="linear -> softmax -> topk -> renormalize")
    assert_matches(text, tokens=2 * 128)
    plan, trace = traced(text, 2 * 128)
    assert plan.softmax_sum_cancels
    row_products = [
        r
        for r in trace
        if r["opcode"] == "tensor_scalar"
        and r["operands"]["dst"]["shape"][-1] == plan.experts
        and r["operands"]["dst"]["dtype"] == "float32"
        and "operand0" in r["operands"]
        and isinstance(r["operands"]["operand0"], dict)
    ]
    assert len(row_products) == 2  # one per tile of the routing group
    assert all("operand1" not in r["operands"] for r in row_products)
    assert len([r for r in trace if r["opcode"] == "reciprocal"]) == 1
    assert all("reduce_res" not in r["operands"] for r in trace if r["opcode"] == "activation")


def test_pre_norm_softmax_keys_come_before_the_softmax_sum_on_vector_engine():
    """Pre-norm softmax without renormalisation: VectorE takes the row max, then the keys (from PSUM) and the
    NaN fix-up, and only then inverts the softmax sums, which nothing in the selection needs."""
    text = router_spec(hidden=256, experts=64, top_k=8, router="linear -> softmax -> topk")
    assert_matches(text, tokens=2 * 128)
    plan, trace = traced(text, 2 * 128)
    assert not plan.softmax_sum_cancels
    vector = [r["opcode"] for r in trace if r["engine"] == "vector"]
    first = vector.index("tensor_reduce")
    fixups = vector.count("tensor_copy_predicated")  # one per tile (E = 64)
    assert vector[first : first + 3 + fixups] == ["tensor_reduce", "tensor_scalar"] + [
        "tensor_copy_predicated"
    ] * fixups + ["reciprocal"]


def test_transposes_rotate_through_every_psum_bank_of_x_across_tiles():
    """Layout th, H = 2048 (16 H tiles = 2 PSUM groups per token tile): the transposes of consecutive
    groups rotate through all X_PSUM_BUFS banks across token tiles, not the first two of each tile, so
    the PE array runs further ahead of the PSUM -> SBUF copies."""
    text = router_spec(hidden=2048, experts=128, top_k=8, router="linear -> softmax -> topk -> renormalize")
    assert_matches(text, tokens=2 * 128)
    plan, trace = traced(text, 2 * 128)
    assert plan.h_tiles // plan.x_group == 2 and plan.x_psum_bufs == 4
    banks = {
        (w["mem"], w["bytes"][0] // 2048)  # 2 KiB PSUM banks per partition
        for r in trace
        if r["opcode"] == "nc_transpose"
        for w in r["writes"]
    }
    assert len(banks) == plan.x_psum_bufs, sorted(banks)


def test_k_weights_that_stay_on_chip_skip_their_final_scaling():
    """Post-norm softmax, one-hot scatter, no eager output (Mixtral): the affinities come from the
    whole-row weights, so the K weights' product by 1 / sum (which nothing reads) is not issued; with
    eager=true it is, and both kernels match the reference."""
    router = "linear -> topk -> softmax"
    kernels = "kernel route : router { layout=th }\n  kernel eager : router { layout=th eager }"
    text = router_spec(hidden=256, experts=8, top_k=2, router=router, kernels=kernels)
    assert_matches(text, tokens=2 * 128)

    def k_products(kernel):
        plan, trace = traced(text, 2 * 128, kernel)
        return [
            r
            for r in trace
            if r["opcode"] in ("tensor_scalar", "tensor_tensor")
            and r["operands"]["dst"]["shape"][-1] == plan.top_k
            and isinstance(r["operands"].get("operand0", r["operands"].get("data2")), dict)
        ]

    assert k_products("route") == []
    # one GpSimd product over the routing group's tiles (each tile's 1 / sum broadcast over its K weights),
    # written in the output dtype: VectorE makes the one-hot rows meanwhile
    (product,) = k_products("eager")
    assert product["engine"] == "gpsimd" and product["operands"]["dst"]["dtype"] == "bfloat16"


def test_last_step_routes_the_previous_group_before_its_later_tiles():
    """Layout th, E = 8, T = 1024 (two routing groups of 4 tiles): the last step issues group 0's
    selection (keys, max8, indices) after its first LAST_ROUTE_SPLIT tiles, so the in-order VectorE /
    ScalarE queues select while the last tiles' x rows still load, and group 0's weights and affinities
    after the last tile's transposes and copies, so they do not delay them."""
    text = router_spec(
        hidden=256, experts=8, top_k=2, router="linear -> topk -> softmax", kernels="kernel route : router"
    )
    assert_matches(text, tokens=8 * 128)
    plan, trace = traced(text, 8 * 128)
    assert plan.route_group == 4
    transposes = [i for i, r in enumerate(trace) if r["opcode"] == "nc_transpose"]
    max8s = [i for i, r in enumerate(trace) if r["opcode"] == "max8"]
    assert len(transposes) == 8 * plan.h_tiles and len(max8s) == 8
    last_tile = transposes[7 * plan.h_tiles]  # the first transpose of the last tile
    assert max8s[3] < last_tile, (max8s, last_tile)  # group 0's selection (its 4 max8) comes before it
    selects = [i for i, r in enumerate(trace) if r["opcode"] == "select_reduce"]
    assert len(selects) == 2 and selects[0] > transposes[-1]  # its weights come after the last tile


def test_last_step_selects_the_previous_group_after_its_carried_tile():
    """Layout th, E = 256 (routing groups of 2 tiles), T = 4 x 128: the last step selects group 0 right after its
    first tile's transposes and group 0's carried last tile, before the last tile's transposes, so the selection's
    ScalarE steps do not wait behind that tile's x.T copies (DeepSeek-V3 T = 4096: 190.2 -> 187.4 us modeled)."""
    text = router_spec(
        hidden=256,
        experts=256,
        top_k=8,
        router="linear -> sigmoid -> topk -> renormalize",
        kernels="kernel route : router",
    )
    assert_matches(text, tokens=4 * 128)
    plan, trace = traced(text, 4 * 128)
    assert plan.route_group == 2 and plan.last_route_split == 1
    transposes = [i for i, r in enumerate(trace) if r["opcode"] == "nc_transpose"]
    max8s = [i for i, r in enumerate(trace) if r["opcode"] == "max8"]
    assert len(transposes) == 4 * plan.h_tiles and len(max8s) == 4
    assert transposes[2 * plan.h_tiles] < max8s[0] < transposes[3 * plan.h_tiles], (max8s, transposes)


def test_topk_chain_keeps_two_steps_off_vector_engine():
    """Post-norm softmax, K = 2 (Mixtral): the values nc_match_replace8 removes (the K chosen, -inf in
    the other slots) are a GpSimd copy made while nc_find_index8 reads max8's values, not a VectorE memset
    after it; -top for the K-value softmax is gathered with the chosen -logits (one ScalarE negation of
    the whole logits rows, before the selection), so the exponentials read the gather's output directly."""
    text = router_spec(
        hidden=256, experts=8, top_k=2, router="linear -> topk -> softmax", kernels="kernel route : router"
    )
    assert_matches(text, tokens=2 * 128)
    _, trace = traced(text, 2 * 128)
    vector_memsets = [r for r in trace if r["opcode"] == "memset" and r["engine"] == "vector"]
    assert vector_memsets == []
    value_copies = [
        r
        for r in trace
        if r["opcode"] == "tensor_copy" and r["engine"] == "gpsimd" and r["operands"]["dst"]["dtype"] == "float32"
    ]
    assert len(value_copies) == 1  # one per routing group, over its 2 tiles
    negations = [i for i, r in enumerate(trace) if r["opcode"] == "tensor_scalar" and r["engine"] == "scalar"]
    assert len(negations) == 1
    gathers = [i for i, r in enumerate(trace) if r["opcode"] == "nc_n_gather"]
    exps = [i for i, r in enumerate(trace) if r["opcode"] == "activation"]
    assert negations[0] < min(r for r in [i for i, r in enumerate(trace) if r["opcode"] == "max8"])
    gathered = {trace[i]["operands"]["dst"]["name"] for i in gathers}
    k_exps = [i for i in exps if trace[i]["operands"]["data"]["name"] in gathered]
    assert len(k_exps) == 2 and all(trace[i]["operands"]["bias"]["name"] in gathered for i in k_exps)


def test_light_routing_outputs_leave_in_long_runs():
    """Layout th, E = 8, K = 2 (Mixtral), T = 12 x 128 (three routing groups of 4 tiles, one output run): each
    output is written in two DMAs, the first two groups' rows together after group 1 (one run of 8 tiles x
    width per partition: 128 B of logits) and the last group's alone, not one DMA of 64 B runs per group."""
    text = router_spec(
        hidden=256, experts=8, top_k=2, router="linear -> topk -> softmax", kernels="kernel route : router"
    )
    assert_matches(text, tokens=12 * 128)
    plan, trace = traced(text, 12 * 128)
    assert plan.route_group == 4 and plan.out_run_tiles == 32
    writes = [r for r in trace if r["opcode"] == "dma_copy" and any(w["mem"].startswith("hbm") for w in r["writes"])]
    assert len(writes) == 3 * 2  # logits, index, affinities: two DMAs each
    runs = sorted(w["contig"] for r in writes for w in r["writes"])
    assert runs == [4 * 2 * 4, 8 * 2 * 4, 4 * 8 * 2, 4 * 8 * 2, 8 * 8 * 2, 8 * 8 * 2], runs


def test_every_step_selects_the_previous_group_with_two_of_its_tiles_to_come():
    """Layout th, T = 12 x 128: a middle step issues the previous group's selection with 2 of its own tiles still to
    come, light and heavy routing alike (E = 8 and E = 128: groups of 4 tiles, selection after 2; E = 160: groups of
    3, after 1), so the selection's chain runs while TensorE works on those tiles; with groups of 2 tiles (E = 256)
    it comes after all of them. Heavy routing used to take the whole routing block after the group's tiles
    (DeepSeek-V2 T = 4096: 114.9 -> 108.8 us modeled, Qwen3 84.5 -> 81.2)."""
    for experts, group, split in ((8, 4, 2), (128, 4, 2), (160, 3, 1), (256, 2, 3)):
        text = router_spec(
            hidden=256,
            experts=experts,
            top_k=2,
            router="linear -> topk -> softmax",
            kernels="kernel route : router",
        )
        plan, trace = traced(text, 12 * 128)
        assert (plan.route_group, plan.route_split) == (group, split)
        transposes = [i for i, r in enumerate(trace) if r["opcode"] == "nc_transpose"]
        max8s = [i for i, r in enumerate(trace) if r["opcode"] == "max8"]
        assert len(transposes) == 12 * plan.h_tiles and len(max8s) == 12
        # group 1 (tiles group .. 2 * group - 1) selects group 0 (its first max8: tile 0's) after `split` of its tiles
        tile_first = [transposes[tile * plan.h_tiles] for tile in range(12)]
        if split <= group:
            assert tile_first[group + split - 1] < max8s[0] < tile_first[group + split], (max8s, tile_first)
        else:
            assert tile_first[2 * group - 1] < max8s[0] < tile_first[2 * group], (max8s, tile_first)


def test_a_group_last_tile_is_multiplied_after_the_next_group_first_transposes():
    """Layout th, E = 128 (routing groups of 4 tiles), T = 8 x 128: TensorE takes tile i's transposes before tile
    i - 1's matmuls across routing groups too. Group 0's last tile (3) is multiplied after group 1's first
    transposes (tile 4), so the PE array multiplies while ScalarE copies tile 4's x.T out of PSUM, instead of
    transposing at the copies' pace at each group's start (DeepSeek-V3 T = 4096: 206.9 -> 190.2 us modeled)."""
    text = router_spec(
        hidden=256,
        experts=128,
        top_k=8,
        router="linear -> softmax -> topk -> renormalize",
        kernels="kernel route : router",
    )
    assert_matches(text, tokens=8 * 128)
    plan, trace = traced(text, 8 * 128)
    assert plan.route_group == 4
    pe = [r["opcode"] for r in trace if r["opcode"] in ("nc_transpose", "nc_matmul")]
    assert len(pe) == 2 * 8 * plan.h_tiles
    blocks = [pe[i : i + plan.h_tiles] for i in range(0, len(pe), plan.h_tiles)]
    assert all(len(set(block)) == 1 for block in blocks)
    order = "".join("T" if block[0] == "nc_transpose" else "M" for block in blocks)
    # tiles:  T0 T1 M0 T2 M1 T3 M2 | T4 M3 T5 M4 T6 M5 T7 M6 M7 (before: ... T3 M2 M3 | T4 T5 M4 ...)
    assert order == "TTMTMTM" + "TMTMTMTMM", order


def test_w_loads_after_the_first_two_tiles_of_x():
    """Layout th, E = 128 (groups of 4 tiles), T = 8 x 128: the w DMA is issued after the x rows of tiles 0 and 1 and
    before those of tiles 2 and 3. TensorE transposes tiles 0 and 1 before its first matmuls, so the transposes need
    not wait behind w's bytes and the matmuls not behind tiles 2 and 3 (DeepSeek-V3 T = 4096: 187.4 -> 183.0 us
    modeled: its w is as large as two tiles of x)."""
    text = router_spec(
        hidden=256,
        experts=128,
        top_k=8,
        router="linear -> softmax -> topk -> renormalize",
        kernels="kernel route : router",
    )
    assert_matches(text, tokens=8 * 128)
    plan, trace = traced(text, 8 * 128)
    w_bytes, x_bytes = 256 * 128 * 2, plan.x_load_rows * 256 * 2
    loads = [r["bytes"] for r in trace if r["opcode"] == "dma_copy" and r["bytes"] in (w_bytes, x_bytes)]
    per_tile = 128 // plan.x_load_rows
    assert loads.index(w_bytes) == 2 * per_tile, loads[: 5 * per_tile]


def test_softmax_keys_read_the_psum_logits_and_the_nan_mask_their_rounded_copy():
    """Softmax ranked on logits with router_logits stored (Qwen3, Mixtral): ScalarE makes no fp32 copy of
    the logits out of PSUM for the keys; VectorE's key step reads the PSUM logits and GpSimd's NaN mask
    reads the rounded router_logits copy (rounding keeps NaN, test_router_nonfinite checks the values)."""
    text = router_spec(hidden=256, experts=64, top_k=8, router="linear -> softmax -> topk -> renormalize")
    assert_matches(text, tokens=2 * 128)
    plan, trace = traced(text, 2 * 128)
    assert plan.keys_from_psum
    psum_fp32_copies = [
        r
        for r in trace
        if r["opcode"] == "tensor_copy"
        and r["operands"]["src"]["buffer"] == "psum"
        and r["operands"]["dst"]["dtype"] == "float32"
    ]
    assert psum_fp32_copies == []
    key_floor = [r for r in trace if r["opcode"] == "tensor_scalar" and r["operands"]["operand0"] == plan.key_floor]
    assert key_floor and all(r["engine"] == "vector" and r["operands"]["data"]["buffer"] == "psum" for r in key_floor)
    nan_masks = [
        r
        for r in trace
        if r["opcode"] == "tensor_tensor" and r["operands"]["data1"]["name"] == r["operands"]["data2"]["name"]
    ]
    assert len(nan_masks) == 2  # one per tile (E = 64)
    assert all(r["engine"] == "gpsimd" and r["operands"]["data1"]["dtype"] == "bfloat16" for r in nan_masks)


def test_group_limited_sigmoid_selection_chain():
    """Sigmoid, selection bias, group limit (DeepSeek-V3's pipeline, E = 64 in 8 groups): the scores are made
    before the router_logits copy; the biased scores get a row of their own, so VectorE's key step
    does not overwrite what GpSimd's NaN mask reads; the experts of the dropped groups become -inf in one
    predicated copy per routing group (the group flags broadcast over their experts), not one flag
    expansion per group and tile."""
    text = router_spec(
        hidden=256,
        experts=64,
        top_k=6,
        router="linear -> sigmoid -> select_bias -> group_limit(groups=8, keep=3, score=top2_sum) -> topk -> renormalize",
    )
    assert_matches(text, tokens=2 * 128)
    plan, trace = traced(text, 2 * 128)
    assert plan.n_group == 8  # one routing group of the 2 tiles
    psum_reads = [
        (r["engine"], r["opcode"])
        for r in trace
        if r["engine"] in ("scalar", "vector")
        and any(isinstance(o, dict) and o.get("buffer") == "psum" for o in r["operands"].values())
    ]
    assert psum_reads[-2:] == [("scalar", "activation"), ("scalar", "tensor_copy")]  # the sigmoid, then router_logits
    key_floor = [r for r in trace if r["opcode"] == "tensor_scalar" and r["operands"]["operand0"] == plan.key_floor]
    assert len(key_floor) == 1 and key_floor[0]["operands"]["data"]["name"] != key_floor[0]["operands"]["dst"]["name"]
    masks = [r for r in trace if r["opcode"] == "tensor_copy_predicated" and r["operands"]["src"] == float("-inf")]
    assert len(masks) == 1 and masks[0]["operands"]["predicate"]["shape"] == (128, 2, 8, 8)
    assert [r for r in trace if r["opcode"] == "tensor_scalar" and r["operands"]["dst"]["dtype"] == "uint8"] == []


def test_eager_weights_leave_after_the_one_hot_rows():
    """Eager output and one-hot scatter (Qwen3): once the K sums are inverted, VectorE makes the one-hot rows and
    their select with no K-weight step queued before them; GpSimd makes the eager weights (1 / sum broadcast over
    the K, rounded into the output tile), so the kernel's last, E-wide output is not queued behind them."""
    text = router_spec(
        hidden=256,
        experts=64,
        top_k=8,
        router="linear -> softmax -> topk -> renormalize",
        kernels="kernel route : router { eager }",
    )
    assert_matches(text, tokens=2 * 128)
    plan, trace = traced(text, 2 * 128)
    vector = [r for r in trace if r["engine"] == "vector"]
    inverted = max(i for i, r in enumerate(vector) if r["opcode"] == "reciprocal")
    select = next(i for i, r in enumerate(vector) if r["opcode"] == "select_reduce")
    assert all(r["operands"]["dst"]["shape"][-1] != plan.top_k for r in vector[inverted + 1 : select])
    eager = [
        r
        for r in trace
        if r["operands"].get("dst", {}).get("dtype") == "bfloat16" and r["operands"]["dst"]["shape"][-1] == plan.top_k
    ]
    assert [(r["engine"], r["opcode"]) for r in eager] == [("gpsimd", "tensor_tensor")]


def test_wide_rows_mask_tile_by_tile():
    """E >= 64: the NaN masks, their fix-ups and the chosen-column masks are one instruction per tile (each
    tile's next step waits only for its own mask); E = 8 keeps one per routing group (a tile's row is
    shorter than an instruction's minimum cost)."""
    for experts, per_group in ((64, 2), (8, 1)):
        text = router_spec(hidden=256, experts=experts, top_k=2, router="linear -> softmax -> topk -> renormalize")
        assert_matches(text, tokens=2 * 128)
        plan, trace = traced(text, 2 * 128)
        assert plan.tile_masks == (experts >= 64)
        counts = [
            sum(1 for r in trace if r["opcode"] == op and r["engine"] == engine)
            for op, engine in (("tensor_tensor", "gpsimd"), ("tensor_copy_predicated", "vector"))
        ]
        assert counts == [2 * per_group, per_group]  # NaN and chosen-column masks; NaN fix-ups


def test_heavy_routing_copies_router_logits_on_vector_engine():
    """Layout th with more than 32 experts: VectorE copies router_logits out of PSUM and ScalarE keeps the x.T
    copies (ScalarE bounds those routers); a pre-norm softmax over all E that ranks the scores (DeepSeek-V2's
    group limit), light routing and layout ht (no x.T copies) keep the copy on ScalarE. The last routing group's
    copy is always ScalarE's: it has no more x.T to copy then (Qwen3 T = 4096: 70.44 -> 69.91 us modeled)."""
    cases = (
        (64, "linear -> softmax -> topk -> renormalize", "vector"),
        (64, "linear -> sigmoid -> topk -> renormalize", "vector"),
        (64, "linear -> softmax -> group_limit(groups=8, keep=3, score=max) -> topk", "scalar"),
        (8, "linear -> topk -> softmax", "scalar"),
        (64, "linear -> softmax -> topk -> renormalize", "scalar", "layout=ht"),  # no x.T copies on ScalarE
    )
    for experts, router, engine, *options in cases:
        text = router_spec(
            hidden=256,
            experts=experts,
            top_k=2,
            router=router,
            kernels=f"kernel route : router {{ {' '.join(options)} }}",
        )
        assert_matches(text, tokens=5 * 128)
        plan, trace = traced(text, 5 * 128)
        assert plan.logits_out_engine == engine
        copies = [
            r
            for r in trace
            if r["opcode"] == "tensor_copy"
            and r["operands"]["src"]["buffer"] == "psum"
            and r["operands"]["dst"]["dtype"] == "bfloat16"
            and r["operands"]["dst"]["shape"][-1] == experts
        ]
        groups = -(-5 // plan.route_group)  # layout th: 4 tiles and 1; ht: 1 tile each
        assert [r["engine"] for r in copies] == [engine] * (groups - 1) + ["scalar"]


def test_wide_hidden_interleaves_the_previous_tile_matmuls_with_the_transpose_groups():
    """Layout th, H = 5120 (40 H tiles: 5 transposed groups of 8 per token tile, one more than the 4 x.T PSUM
    banks): after each group's transposes TensorE takes the same 8 H tiles of the previous tile's matmuls, so
    a transpose group never waits for the copy of the bank it reuses (DeepSeek-V3 T = 4096: 179.59 -> 173.85 us
    modeled), and w loads in the same chunks (173.85 -> 170.86 us), in one DMA when no tile is transposed.
    H = 4096 (4 groups, Mixtral) keeps each tile's matmuls in one block and w in one DMA (the old schedule)."""
    mixtral = router_spec(hidden=4096, experts=16, top_k=2, router="linear -> topk -> softmax")
    assert not next(p for p in build(mixtral)[0].plans if p.kernel_name == "route").interleave_matmuls
    text = router_spec(hidden=5120, experts=16, top_k=2, router="linear -> topk -> softmax")
    assert_matches(text, tokens=2 * 128)
    plan, trace = traced(text, 2 * 128)
    assert plan.interleave_matmuls
    pe = "".join(
        "T" if r["opcode"] == "nc_transpose" else "M" for r in trace if r["opcode"] in ("nc_transpose", "nc_matmul")
    )
    groups = plan.h_tiles // plan.x_group
    assert pe == "T" * plan.h_tiles + ("T" * 8 + "M" * 8) * groups + "M" * plan.h_tiles, pe
    # w in one DMA per transposed group; at few tokens (no transposes) in one
    for tokens, w_dmas in ((2 * 128, groups), (8, 1)):
        _, trace = traced(text, tokens)
        loads = [r for r in trace if r["opcode"] == "dma_copy" and r["reads"][0]["mem"].startswith("hbm:w:")]
        assert len(loads) == w_dmas


def test_group_max_scores_take_one_reduction():
    """Group limit scored by the group's best key (DeepSeek-V2, E = 96 in 8 groups of 12): the group scores are
    one tensor_reduce (max over the last axis of the [rows, tiles, groups, group size] view of the keys) per
    routing group, not one max8 per group and tile (DeepSeek-V2 T = 4096: 102.64 -> 100.83 us modeled)."""
    text = router_spec(
        hidden=256,
        experts=96,
        top_k=6,
        router="linear -> softmax -> group_limit(groups=8, keep=3, score=max) -> topk",
    )
    assert_matches(text, tokens=2 * 128)
    plan, trace = traced(text, 2 * 128)
    assert plan.group_size == 12
    assert all(r["operands"]["src"]["shape"][-1] != plan.group_size for r in trace if r["opcode"] == "max8")
    group_max = [r for r in trace if r["opcode"] == "tensor_reduce" and len(r["operands"]["data"]["shape"]) == 4]
    assert len(group_max) == 1 and group_max[0]["operands"]["data"]["shape"][2:] == (8, 12)


def test_layout_ht_wide_hidden_loads_x_in_long_runs_one_load_ahead():
    """Layout ht with 16+ H tiles (Llama-4-Scout: 40): full token tiles load X_LOAD_TILES (8) at a time, so a row of
    x moves in runs of 8 x 128 tokens (2 KiB), not one 256-byte run per tile, which costs twice its bytes (the DMA
    bandwidth guide: each descriptor costs as much as 256 B). The next load is issued before the current load's first
    matmul, so it does not queue behind that tile's output DMAs; with the one-hot scatter the router_logits of a load
    leave in runs of 7 tiles x E (tile u takes every 8th token)."""
    text = router_spec(
        hidden=2048,
        experts=16,
        top_k=1,
        router="linear -> topk -> sigmoid",
        kernels="kernel route : router { layout=ht }",
    )
    tokens = 11 * 128 + 5  # a load of 8 tiles, one of 3, the partial tile
    assert_matches(text, tokens=tokens)
    plan, trace = traced(text, tokens)
    assert plan.x_load_tiles == 8 and plan.out_run_tiles == 8
    tile_bytes = plan.h_tiles * 128 * 128 * 2
    x_loads = [
        i
        for i, r in enumerate(trace)
        if r["opcode"] == "dma_copy" and r["bytes"] >= tile_bytes and r["bytes"] % tile_bytes == 0
    ]
    assert [trace[i]["bytes"] // tile_bytes for i in x_loads] == [8, 3]
    for i, tiles in zip(x_loads, (8, 3)):
        runs = [region["contig"] for region in trace[i]["reads"] + trace[i]["writes"]]
        assert min(runs) == tiles * 128 * 2, runs
    first_matmul = next(i for i, r in enumerate(trace) if r["opcode"] == "nc_matmul")
    assert x_loads[1] < first_matmul
    logits_runs = [
        r["writes"][0]["contig"]
        for r in trace
        if r["opcode"] == "dma_copy"
        and r["bytes"] == 128 * 7 * plan.experts * 2
        and r["writes"][0]["mem"].startswith("hbm")
    ]
    assert logits_runs and min(logits_runs) == 7 * plan.experts * 2, logits_runs


# Layout th, 64 experts, top-2, the routing weights scattered by indirect DMA (one-tile routing groups).
SCATTER_DMA_SPEC = router_spec(
    hidden=256, experts=64, top_k=2, router="linear -> topk -> softmax", kernels="kernel route : router { scatter=dma }"
)


def test_indirect_scatter_spans_one_tile_of_rows():
    """scatter=dma routes one token tile per group (partition p holds token t0 + p), so each indirect scatter's
    offsets span one tile's rows of expert_affinities: the timeline model orders an indirect write after every
    earlier write its span overlaps, and with a group's tiles interleaved (token t0 + p * tiles + u) every
    scatter of the group overlapped every other and they ran one after another (gpt-oss-120b, modeled)."""
    text = SCATTER_DMA_SPEC
    tokens = 4 * 128
    assert_matches(text, tokens=tokens)
    plan, trace = traced(text, tokens)
    assert plan.route_group == 1
    spans = [w["bytes"] for r in trace for w in r.get("writes", ()) if w.get("indirect")]
    assert len(spans) == 4 * plan.top_k
    for b0, b1 in spans:
        assert b1 - b0 <= 128 * plan.experts * 2, (b0, b1)


def test_one_tile_groups_load_x_rows_four_tiles_ahead():
    """Layout th with scatter=dma (one-tile routing groups): x rows load X_ROWS_AHEAD_ONE_TILE (4) tiles ahead of the
    transposes, so the loads take DMA queues before the indirect scatters that wait for each other hold them
    (one tile ahead, TensorE waited for x: gpt-oss-120b T = 4096 143.7 us, 4 ahead 115.9 us, modeled)."""
    text = SCATTER_DMA_SPEC
    tokens = 6 * 128
    assert_matches(text, tokens=tokens)
    plan, trace = traced(text, tokens)
    assert plan.x_rows_ahead == 4 and plan.x_row_bufs == 5
    row_bytes = plan.x_load_rows * 256 * 2
    first_transpose = next(i for i, r in enumerate(trace) if r["opcode"] == "nc_transpose")
    x_rows_loads = [
        i
        for i, r in enumerate(trace)
        if r["opcode"] == "dma_copy" and r["bytes"] == row_bytes and r["writes"][0]["mem"].startswith("sbuf")
    ]
    assert len(x_rows_loads) == 6 * 128 // plan.x_load_rows
    assert sum(i < first_transpose for i in x_rows_loads) == 4 * 128 // plan.x_load_rows


@pytest.mark.parametrize("lnc", [1, 2])
def test_every_eighth_tile_reads_x_transposed_by_dma_with_many_experts(lnc):
    """Layout th, interleaved matmuls (5+ groups of transposed H tiles) and E = 256 (DeepSeek-V3): every 8th full
    token tile reads x.T by one DMA (runs of H tiles elements) instead of its transposes, so TensorE, the busiest
    engine, hands work to the DMA queues' slack (DeepSeek-V3 T = 4096: 170.9 -> 166.1 us, modeled); x is still read
    once (the DMA tile's rows are not loaded)."""
    hidden = 34 * 128
    text = router_spec(
        hidden=hidden,
        experts=256,
        top_k=8,
        router="linear -> sigmoid -> topk -> renormalize",
        kernels=f"kernel route : router {{ layout=th lnc={lnc} }}",
    )
    # per core: full tiles 0..8 (tile 7 by DMA) and a 5-token tile (the small-tile DMA)
    tokens = lnc * (9 * 128 + 5)
    assert_matches(text, tokens=tokens)
    plan, trace = traced(text, tokens)
    assert plan.x_dma_every == 8 and plan.interleave_matmuls
    assert sum(r["opcode"] == "nc_transpose" for r in trace) == lnc * 8 * plan.h_tiles
    x_bytes = sum(r["bytes"] for r in trace if r["opcode"] == "dma_copy" and r["reads"][0]["mem"] == trace_x_mem(trace))
    assert x_bytes == tokens * hidden * 2
    x_t = [r for r in trace if r["opcode"] == "dma_copy" and r["bytes"] == 128 * hidden * 2]
    assert len(x_t) == lnc and min(reg["contig"] for reg in x_t[0]["reads"]) == plan.h_tiles * 2


def trace_x_mem(trace) -> str:
    """The HBM tensor of the kernel's first DMA read (x: the first group's first x rows)."""
    return next(r["reads"][0]["mem"] for r in trace if r["opcode"] == "dma_copy")
