"""The router top-K family (SEMANTICS section 3): options, plan, and the reasons behind each choice.

One kernel computes logits = x @ w (+ bias) in fp32 PSUM, the activation (softmax or sigmoid, before
or after the top-K), the top-K with moegen's tie rule, the optional L1 renormalisation, selection bias,
group limit and routed scaling, and writes router_logits, expert_index, expert_affinities (and the
eager [T, K] values). The math comes from the spec's router pipeline; a variant may override the
activation, the norm position and the renormalisation (`act=`, `norm=`, `renormalize=`) so that one
spec can hold the seed kernel's option matrix.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from moegen.plan.common import (
    DTYPE_BYTES,
    MATMUL_CONTRACTION_MAX,
    MATMUL_MOVING_FREE_MAX,
    PARTITIONS,
    PSUM_BANK_BYTES,
    Buffer,
    KernelPlan,
    PlanError,
    ceil_div,
)
from moegen.spec.model import Layer, Variant
from moegen.spec.options import OptionSpec
from moegen.spec.validate import GROUP_SCORES

MAX_TOP_K = 16  # two max8 rounds
MAX8_WIDTH = 8  # max8 / nc_find_index8 read at least 8 values per partition and return 8
TOKEN_TILE = PARTITIONS  # tokens per tile: the logits tile has tokens on partitions
# Selection keys (docs/routing_semantics.md): a NaN score ranks as NAN_KEY, the lowest finite fp32
# value, below every number; scores at or below KEY_FLOOR, the second-lowest (-inf included), rank as
# KEY_FLOOR. -inf is then free to mark chosen, dropped-group and padding columns: below every key and
# never equal to one, so nc_find_index8 cannot return such a column.
NAN_KEY = float(np.finfo(np.float32).min)
KEY_FLOOR = float(np.nextafter(np.float32(NAN_KEY), np.float32(0)))

OPTIONS = (
    OptionSpec("layout", "choice", "x in HBM as [T, H] (th) or [H, T] (ht)", default="th", choices=("th", "ht")),
    OptionSpec(
        "scatter",
        "choice",
        "how the K weights reach expert_affinities [T, E]: selected on chip by the chosen-expert mask "
        "(onehot), or an indirect DMA write per weight (dma)",
        default="onehot",
        choices=("onehot", "dma"),
    ),
    OptionSpec("eager", "flag", "also return the K selected affinities [T, K] (expert_affinities_eager)"),
    OptionSpec("skip_logits", "flag", "do not write router_logits (the kernel returns no logits)"),
    OptionSpec("act", "choice", "override the router pipeline's activation", choices=("softmax", "sigmoid")),
    OptionSpec(
        "norm",
        "choice",
        "override where the activation runs: before the top-K (pre) or on the K selected logits (post)",
        choices=("pre", "post"),
    ),
    OptionSpec(
        "renormalize", "choice", "override the pipeline's L1 renormalisation of the K weights", choices=("yes", "no")
    ),
    OptionSpec(
        "affinities",
        "choice",
        "what expert_affinities [T, E] holds: the activated scores of all E experts (all; AWS's pre-norm "
        "pipeline without L1 norm, which has no scatter) or the K selected weights at their experts and 0 "
        "elsewhere (selected). Default: all for a plain pre-norm pipeline without renormalize, "
        "select_bias, group_limit or scaling_factor; selected otherwise",
        choices=("all", "selected"),
    ),
)


@dataclass(frozen=True, kw_only=True)
class RouterPlan(KernelPlan):
    """Every number and choice of one router kernel."""

    hidden: int
    experts: int
    top_k: int
    in_dtype: str
    out_dtype: str
    x_layout: str  # 'th' | 'ht'
    scatter: str  # 'onehot' | 'dma'
    eager: bool
    store_logits: bool
    act: str  # 'softmax' | 'sigmoid'
    pre_norm: bool
    renormalize: bool
    scaling_factor: float | None
    w_bias: bool
    selection_bias: bool
    n_group: int | None
    topk_group: int | None
    group_size: int | None
    group_score: str | None  # 'top2_sum' | 'max' (moegen.spec.validate.GROUP_SCORES)
    # Contraction: H = h_tiles * 128 + h_rest; full tiles map h = p * h_tiles + j (p the partition).
    h_tiles: int
    h_rest: int
    token_tile: int
    tile_bufs: int  # routing groups rotate through this many PSUM buffers of logits (and x.T groups of x.T)
    x_row_bufs: int  # layout th: routing groups rotate through this many SBUF buffers of x rows
    x_rows_ahead: int  # layout th: routing groups whose x rows are loaded ahead of the group being transposed
    x_dma_every: int  # layout th: every x_dma_every-th full token tile reads x.T by DMA, not PE transposes (0: none)
    x_tile_bufs: int  # token tiles rotate through this many SBUF buffers of x.T
    x_load_rows: int  # layout th: partitions per DMA of a routing group's x rows
    x_load_tiles: int  # layout ht: full token tiles per x DMA (runs of x_load_tiles * 128 tokens per row of x)
    interleave_matmuls: bool  # layout th: the previous tile's matmuls follow each transposed H-tile group
    x_psum_bufs: int  # layout th: PSUM banks the groups of transposed H tiles rotate through
    route_split: int  # every step but the last selects the previous group's experts after this many of its tiles
    last_route_split: int  # the last step selects the previous group's experts after this many of its tiles
    out_run_tiles: int  # full token tiles per output run (partition p of a run holds consecutive tokens)
    route_group: int  # full token tiles routed together: each routing step issued for all of them in turn
    x_pe_rows: int  # layout th: tiles of at least this many tokens transpose x on the PE array, smaller: x.T DMA
    x_group: int  # layout th: H tiles per PSUM tile of x.T (transposed on the PE array from whole rows of x)
    x_copy_engines: tuple[str, ...]  # layout th: engine of each x.T PSUM -> SBUF copy, cycled over the groups
    affinities: str  # 'selected' (K weights scattered, 0 elsewhere) | 'all' (the activated scores of all E)
    k_weights_out: bool  # the K weights leave the kernel (eager or scatter=dma): their final scaling is issued
    softmax_sum_cancels: bool  # renormalised pre-norm softmax on logits: weights are exp / (K sum of exp), no 1 / sum
    select_on: str  # 'logits' | 'scores': what max8 ranks
    tile_masks: bool  # the NaN masks, their fix-ups and the chosen-column masks are issued tile by tile (wide rows)
    logits_out_engine: str  # 'scalar' | 'vector': the engine that copies router_logits out of PSUM
    keys_from_psum: bool  # VectorE reads the keys from the PSUM logits, the NaN mask comes from router_logits' copy
    full_scores: bool  # the activation over all E is materialised
    weights_from: str  # 'selected' (activate the K selected values) | 'scores' (gather by column)
    topk_rounds: int  # max8 rounds: ceil(K / 8)
    work_width: int  # selection row width: max(E, 8), padded with -inf
    group_width: int  # group score row width: max(n_group, 8)
    group_pad: int  # per-group width read by max8: max(group_size, 8)
    nan_key: float  # what a NaN score ranks as
    key_floor: float  # what scores at or below it (-inf too) rank as
    verify_tokens: int | None = None


# x and logits buffers per token tile: the next tile's load and transposes overlap this tile's routing
TILE_BUFS = 2
# x buffers in routing groups: a group's loads (~1.4 us per 512 KiB tile at the DMA rate, plus the ~1.3 us
# fixed latency) are issued one group ahead of its transposes, so TensorE does not wait
X_BUF_GROUPS = 2
# a routing group's x rows arrive in DMAs of this many partitions: shorter transfers spread over more of the
# 16 DMA queues, so one transfer's fixed latency overlaps the others' data movement
X_LOAD_ROWS = 32
# Layout th with one-tile routing groups (scatter=dma): x rows load this many groups (tiles) ahead. Their indirect
# scatters wait for each other and hold DMA queues meanwhile; loads issued one tile ahead found the queues taken and
# TensorE waited for x (gpt-oss-120b T = 4096, modeled: 1 ahead 143.7 us, 2 124.7, 4 115.9, 6 115.2)
X_ROWS_AHEAD_ONE_TILE = 4
# Layout ht: full token tiles loaded by one x DMA. A row of x ([H, T]) is contiguous in tokens, so a DMA of one
# 128-token tile moves 256-byte runs (bf16), which cost twice their bytes (each run costs as much as 256 B more);
# X_HT_RUN_BYTES runs are within ~12% of the DMA peak. The x buffers take at most X_HT_LOAD_BUDGET bytes per
# partition (of 224 KiB); the next load is issued when the previous one's first tile is multiplied, before that
# tile's output DMAs take the queues. Llama-4-Scout T = 4096 (modeled): 243.1 -> 147.7 us (docs/faster_router.md)
X_HT_RUN_BYTES = 2048
# ... only with at least this many H tiles: with fewer, x is a small part of the DMA traffic (the outputs dominate)
X_HT_LOAD_MIN_H_TILES = 16
X_HT_LOAD_BUDGET = 160 * 1024
# PSUM banks of x.T: a group's transposes wait for the copy out of its bank X_PSUM_BUFS groups earlier, so
# the PE array transposes while ScalarE / VectorE copy (4 of the 8 banks; the logits take 2). The groups
# rotate through the banks across token tiles: with 2 groups per tile (H = 2048) a per-tile rotation used
# only 2 banks (Qwen3 T = 4096: 87.2 -> 85.9 us modeled, DeepSeek-V2 129.4 -> 124.8 us)
X_PSUM_BUFS = 4
# Layout th with more transposed groups per token tile than this (the x.T PSUM banks): TensorE takes the previous
# tile's matmuls in chunks of X_GROUP H tiles, one after each group's transposes, so a group never waits for the
# copy of the bank it reuses, and w loads in the same chunks (at T >= X_PE_ROWS), so the first tile's matmuls
# wait only for their chunk. T = 4096 modeled: DeepSeek-V3 (7 groups) 179.59 -> 173.85 us, 170.86 with the w
# chunks; DeepSeek-V2 (5) 103.96 -> 103.01, 102.64; with 4 groups (Mixtral) the chunks cost 103.38 -> 103.80 us
INTERLEAVE_ABOVE_GROUPS = X_PSUM_BUFS
# Layout th with interleaved matmuls and E >= X_DMA_MIN_EXPERTS: every X_DMA_EVERY-th full token tile reads x.T by one
# DMA (runs of H tiles elements) instead of its transposes, so the DMA queues' slack takes some of TensorE's work
# (its matmuls of E >= 256 columns keep it the busiest engine). T = 4096 modeled: DeepSeek-V3 (E = 256) 170.9 us ->
# 166.1 (every 8th), 167.3 (6th), 167.8 (4th), 169.1 (12th), 167.9 (16th); DeepSeek-V2 (E = 160) would lose
# (100.8 -> 103.1 every 8th)
X_DMA_EVERY = 8
X_DMA_MIN_EXPERTS = 256
# below this many tokens a tile reads x.T with one DMA: its short runs cost less than the transposes' latency
X_PE_ROWS = 32
# The engines of the x.T PSUM -> SBUF copies, cycled over the copies of the token tiles in order (not
# restarted per tile). With few experts the routing steps hardly use VectorE, so it takes 3 of every 8
# copies: a bf16 copy out of PSUM costs VectorE (0.96 GHz) 1.25x what it costs ScalarE (1.2 GHz), and
# VectorE also runs most routing steps, whose dependent chain holds its in-order queue (Mixtral E = 8,
# T = 4096, modeled: 1 of 2 copies 113.3 us, 1 of 3 113.1 us, 3 of 8 in this order 109.5 us); with many
# experts (E = 128: 90.4 us all on ScalarE, 117.5 us with 1 of 4 on VectorE) VectorE carries the routing
# and ScalarE makes every copy.
X_COPY_ENGINES = {
    True: ("scalar", "scalar", "vector", "scalar", "scalar", "vector", "scalar", "vector"),
    False: ("scalar",),
}
LIGHT_ROUTING_EXPERTS = 32  # at most this many experts: routing is light (the split copies above)
# Full token tiles routed together: their logits share one PSUM bank (at most 512 fp32 per partition), and
# each routing step is issued for every tile of the group in turn (or as one instruction over all of
# them), so while one tile's dependent step waits for its producer's latency the others' run. 4 tiles of
# E = 128 fill the bank; more would only lengthen the pipeline's fill and drain.
ROUTE_GROUP_MAX = 4
# The last step (no next group to load) splits the previous group's routing: its selection (keys, max8,
# indices) after the first LAST_ROUTE_SPLIT tiles of the last group, its weights and affinities after all of them.
# The selection's VectorE steps then run while the last tiles' x rows still arrive, and the weights do not
# hold ScalarE / VectorE ahead of the last tile's x.T copies (Mixtral T = 4096, modeled, before the carried
# matmuls: the whole routing after 0 - 5 tiles 109.6, 109.5, 108.2, 109.4, 108.9 us; the selection after 2 tiles
# and the weights after all 105.8 us, the weights after 3 tiles 106.5 us; the selection after 1 or 3 tiles
# 107.0 us: docs/faster_router.md). With the carried matmuls (the previous group's last tile multiplied after the last group's
# first transposes) the selection comes right after that tile: T = 4096, after 1 / 2 / 3 tiles, Nemotron 3
# 93.9 / 95.3 / 97.6 us, DeepSeek-V3 187.4 / 190.2 / 190.2, Qwen3 81.1 / 81.2 / 82.9, Mixtral 103.38 / 103.38 /
# 104.4 (gpt-oss-120b, DeepSeek-V2 the same)
LAST_ROUTE_SPLIT = 1
# Every other step selects the previous group's experts with ROUTE_TILES_AFTER_SELECTION = 2 of its tiles still to
# come (after its first route_group - 2 tiles), and computes their weights after all of them, so the selection's
# VectorE chain runs while TensorE transposes and multiplies those two tiles instead of holding ScalarE / VectorE
# (and so the next x.T copies and transposes) after the group. A group of 1 or 2 tiles takes the selection after
# all its tiles: its previous group's last tile is multiplied after its first transposes (carried across steps),
# so the selection can come no earlier than after 1 tile, where its ScalarE steps would delay the copies of the
# last tile's transposes, which the copies pace (7 x.T PSUM tiles per token tile, 4 banks).
# Modeled at T = 4096 with the carried matmuls, selection after 1 / 2 / 3 tiles / all tiles (us):
#   Qwen3 (4-tile groups)          81.2 / 81.2 / 82.8 / 84.5
#   Nemotron 3 (4)                 95.3 / 95.3 / 95.3 / 97.2
#   gpt-oss-120b (4)              156.5 / 156.5 / 156.5 / 158.4
#   DeepSeek-V2 (3)               108.8 / 110.1 / 114.9 (all)
#   DeepSeek-V3 (2)               192.7 / 190.2 (all)
#   Mixtral (4, light routing)    103.4 after 1 or 2 (before the carried matmuls: 104.17 after 1, 2 or 3, 105.25 all)
# Without the carried matmuls the split made heavy routing slower (Qwen3 85.9 -> 88.6 us, Nemotron 3 99.1 -> 102.0):
# the group-boundary transposes then waited for the copies, and the selection's ScalarE steps came on top.
ROUTE_TILES_AFTER_SELECTION = 2
# With at least this many experts a tile's row is no shorter than an engine instruction's minimum cost (64
# cycles), so the NaN masks, their fix-ups and the chosen-column masks go tile by tile at no extra engine time:
# each tile's next step waits only for its own mask
TILE_MASK_EXPERTS = 64

# Output runs: full token tiles gather their outputs in SBUF per run of up to OUT_RUN_TILES_MAX tiles, partition p
# holding consecutive tokens, so a run's rows leave in one DMA with one long run per partition (plus one for its
# last group, kept short for the kernel's end) instead of one run of a group's tiles x width per partition and
# group. Worth it when a group's runs are short (each run costs a 256 B descriptor): with E = 8 a group writes
# 64 B runs (Mixtral T = 4096: 105.8 -> 104.2 us modeled, with ROUTE_SPLIT). A run's outputs take at most
# OUT_RUN_BYTES per partition (of each of 2 rotating buffers); larger rows keep one DMA per group, and so does
# scatter=dma, whose indirect writes then span a whole run's rows (router_seed_matrix th_dma_pre_l1, T = 4096:
# 116.2 -> 167.7 us modeled with runs).
OUT_RUN_TILES_MAX = 32
OUT_RUN_BYTES = 2048
ROUTING_ROWS = (
    "selection row (work)",
    "key and gather rows",
    "remaining row, chosen mask, row weights",
    "top-K rows",
    "logits out",
    "scores (or exp scratch)",
    "group top-8",
    "group rows",
    "affinities tile",
    "zero rows, row offsets, DMA targets",
)


def logits_out_engine(layout: str, experts: int, softmax_over_all_scores: bool) -> str:
    """The engine that copies router_logits out of PSUM (fp32 -> the output dtype).

    With layout th and heavy routing ScalarE's x.T copies bound the kernel, so VectorE takes the logits copy (it
    costs VectorE 1.25x, off ScalarE's queue); a pre-norm softmax over all E whose scores are ranked (DeepSeek-V2's
    group limit) starts its chain on VectorE (the row max) and keeps the copy on ScalarE, as light routing and
    layout ht (no x.T copies) do. Modeled at T = 4096, ScalarE -> VectorE: Qwen3 73.00 -> 70.65 us, Nemotron 3
    91.69 -> 88.71, DeepSeek-V3 180.02 -> 179.59; DeepSeek-V2 103.96 -> 106.63 (104.25 with the copy after its
    scores); Mixtral 103.38 -> 103.60; router_seed_matrix ht_dma_post 99.37 -> 107.81, ht_dma_post_lnc2 53.87 -> 57.99.
    """
    if layout == "th" and experts > LIGHT_ROUTING_EXPERTS and not softmax_over_all_scores:
        return "vector"
    return "scalar"


def route_split(route_group: int) -> int:
    """Tiles of a step before the previous group's selection (route_group + 1: after all of them)."""
    if route_group > ROUTE_TILES_AFTER_SELECTION:
        return route_group - ROUTE_TILES_AFTER_SELECTION
    return route_group + 1


def _pipeline(layer: Layer, variant: Variant) -> tuple[str, bool, bool, list[tuple[str | None, str]]]:
    """(activation, pre_norm, renormalize) after the variant's overrides, and the problems they raise."""
    router = layer.router
    act = variant.options.get("act", router.activation)
    norm = variant.options.get("norm")
    pre_norm = router.pre_norm if norm is None else norm == "pre"
    renorm_option = variant.options.get("renormalize")
    renormalize = router.renormalize if renorm_option is None else renorm_option == "yes"
    problems: list[tuple[str | None, str]] = []
    if not pre_norm:
        where = "norm" if norm is not None else None
        if router.selection_bias:
            problems.append(
                (
                    where,
                    "a selection bias applies to activated scores: the router needs pre-norm (activate before topk)",
                )
            )
        if router.n_group is not None:
            problems.append((where, "group-limited top-K ranks activated scores: the router needs pre-norm"))
        if renormalize and act == "softmax":
            where = "renormalize" if renorm_option is not None else where
            problems.append(
                (where, "renormalising after a post-topk softmax does nothing: the K weights already sum to 1")
            )
    return act, pre_norm, renormalize, problems


def _affinities(layer: Layer, variant: Variant, pre_norm: bool, renormalize: bool) -> tuple[str, list]:
    """The affinities form (see the `affinities` option) and the problems an explicit choice raises."""
    router = layer.router
    extras = [
        name
        for name, present in (
            ("renormalize", renormalize),
            ("select_bias", router.selection_bias),
            ("group_limit", router.n_group is not None),
            ("scaling_factor", router.scaling_factor is not None),
        )
        if present
    ]
    chosen = variant.options.get("affinities")
    if chosen is None:
        return ("all" if pre_norm and not extras else "selected"), []
    problems = []
    if chosen == "all" and not pre_norm:
        problems.append(
            ("affinities", "affinities=all stores the activated scores of all E experts: it needs pre-norm")
        )
    elif chosen == "all" and extras:
        problems.append(
            (
                "affinities",
                f"affinities=all stores the plain activated scores of all E experts, which {', '.join(extras)} "
                "would not change: use affinities=selected",
            )
        )
    return chosen, problems


def plan(layer: Layer, variant: Variant) -> RouterPlan:
    """Resolve one router variant to numbers; PlanError names the option and the reason."""
    if layer.router is None:
        raise PlanError((None, "the layer has no router pipeline: add 'router = linear -> ... -> topk'"))
    dims, router = layer.dims, layer.router
    hidden, experts, top_k = dims.hidden, dims.experts, dims.top_k
    act, pre_norm, renormalize, problems = _pipeline(layer, variant)
    affinities, affinity_problems = _affinities(layer, variant, pre_norm, renormalize)
    problems += affinity_problems
    if affinities == "all" and variant.options["scatter"] == "dma":
        problems.append(
            (
                "scatter",
                "scatter=dma: expert_affinities holds all E scores (affinities=all), nothing is scattered; "
                "use affinities=selected to scatter the K weights",
            )
        )
    if experts > MATMUL_MOVING_FREE_MAX:
        problems.append(
            (
                None,
                f"experts {experts}: at most {MATMUL_MOVING_FREE_MAX} (one matmul's moving free "
                "size and one PSUM bank of fp32 logits per token)",
            )
        )
    if top_k > MAX_TOP_K:
        problems.append((None, f"top_k {top_k}: at most {MAX_TOP_K} (two max8 rounds of 8)"))
    if top_k > experts:
        problems.append((None, f"top_k {top_k}: more than the {experts} experts"))
    group_size = None
    if router.n_group is not None:
        group_size = experts // router.n_group
        if group_size < 2 and router.group_score == "top2_sum":
            problems.append(
                (
                    None,
                    f"group_limit(groups={router.n_group}): {group_size} expert per group, but a "
                    "group's score is the sum of its top-2 experts",
                )
            )
    if problems:
        raise PlanError(*problems)

    h_tiles, h_rest = divmod(hidden, MATMUL_CONTRACTION_MAX)
    x_group = max(1, min(h_tiles, PSUM_BANK_BYTES // (TOKEN_TILE * DTYPE_BYTES[layer.dtype])))
    select_on = "scores" if (router.selection_bias or router.n_group is not None) else "logits"
    full_scores = select_on == "scores" or affinities == "all"
    weights_from = "scores" if router.selection_bias else "selected"
    store_logits = not variant.options.get("skip_logits", False)
    scatter = variant.options["scatter"]
    eager = bool(variant.options.get("eager", False))
    work_width = max(experts, MAX8_WIDTH)
    group_width = max(router.n_group or 0, MAX8_WIDTH)
    group_pad = max(group_size or 0, MAX8_WIDTH)
    rounds = ceil_div(top_k, MAX8_WIDTH)
    # a renormalised pre-norm softmax ranked on logits: the softmax's 1 / sum cancels in the L1 renormalisation
    # (p_k / sum(p) renormalised is e_k / sum over the K of e_k, e = exp(logit - max)), so the K weights and the
    # one-hot rows take exp * (1 / K sum) and no 1 / sum is computed (Qwen3 T = 4096: 75.44 -> 74.49 us modeled)
    softmax_sum_cancels = pre_norm and act == "softmax" and select_on == "logits" and not full_scores and renormalize

    in_bytes, out_bytes, f32 = DTYPE_BYTES[layer.dtype], DTYPE_BYTES[layer.out_dtype], 4
    route_group = max(1, min(ROUTE_GROUP_MAX, PSUM_BANK_BYTES // (experts * f32)))
    if variant.options["layout"] == "ht":
        route_group = 1  # x.T rows hold consecutive tokens: a group's interleaved tokens would be 2-byte runs
    if scatter == "dma":
        # one tile per group: partition p holds token t0 + p, so a tile's indirect scatters span its own rows only.
        # The timeline model orders an indirect write after every earlier write its offsets' span overlaps: with
        # interleaved tiles all K x tiles scatters of a group overlapped and ran one after another (~1.4 us each);
        # now only a tile's K do (gpt-oss-120b T = 4096: 156.5 -> 143.7 us modeled)
        route_group = 1
    x_tile_bufs = X_BUF_GROUPS * route_group
    # one-tile groups (scatter=dma) load x rows X_ROWS_AHEAD_ONE_TILE groups ahead, so the loads keep DMA queues ahead
    # of the indirect scatters that wait for each other
    x_rows_ahead = X_ROWS_AHEAD_ONE_TILE if route_group == 1 and variant.options["layout"] == "th" else X_BUF_GROUPS - 1
    x_dma_every = 0
    interleave = variant.options["layout"] == "th" and ceil_div(h_tiles, x_group) > INTERLEAVE_ABOVE_GROUPS
    if interleave and not h_rest and experts >= X_DMA_MIN_EXPERTS:
        x_dma_every = X_DMA_EVERY
    x_load_tiles = 1
    if variant.options["layout"] == "ht" and h_tiles >= X_HT_LOAD_MIN_H_TILES:
        tile_bytes = h_tiles * TOKEN_TILE * in_bytes  # per partition
        x_load_tiles = max(
            1, min(ceil_div(X_HT_RUN_BYTES, TOKEN_TILE * in_bytes), X_HT_LOAD_BUDGET // (x_tile_bufs * tile_bytes))
        )
    # bytes per partition of one token tile's outputs (the dense ones: logits, index, affinities, eager)
    out_tile_bytes = (
        experts * out_bytes * store_logits
        + top_k * 4
        + experts * out_bytes * (scatter == "onehot" or affinities == "all")
        + top_k * out_bytes * eager
    )
    out_run_tiles = route_group
    if variant.options["layout"] == "th" and scatter == "onehot":
        out_run_tiles = route_group * max(1, min(OUT_RUN_TILES_MAX, OUT_RUN_BYTES // out_tile_bytes) // route_group)
    elif scatter == "onehot":  # layout ht: an output run is one x load (its tiles take every x_load_tiles-th token)
        out_run_tiles = x_load_tiles
    buffers = [
        Buffer("logits", "psum", TOKEN_TILE, route_group * experts * f32, TILE_BUFS),
        Buffer("selection row (work)", "sbuf", TOKEN_TILE, work_width * f32),
        Buffer("expert iota", "sbuf", TOKEN_TILE, work_width * f32),
        # NaN mask of the keys (uint8), the raw row in SBUF, the K gathered values
        Buffer("key and gather rows", "sbuf", TOKEN_TILE, experts * (1 + f32) + top_k * f32),
        # the row without the chosen columns, the chosen-column mask (uint8), the weights of the whole row
        Buffer("remaining row, chosen mask, row weights", "sbuf", TOKEN_TILE, work_width * (f32 + 1) + experts * f32),
        # top values, their columns, index, weights, weights in the output dtype, row sums
        Buffer(
            "top-K rows",
            "sbuf",
            TOKEN_TILE,
            2 * rounds * MAX8_WIDTH * 4 + top_k * (4 + f32 + out_bytes) + 4 * f32,
        ),
    ]
    if h_tiles:
        buffers += [
            Buffer("w (resident)", "sbuf", PARTITIONS, h_tiles * experts * in_bytes),
            Buffer("x tile", "sbuf", PARTITIONS, x_load_tiles * h_tiles * TOKEN_TILE * in_bytes, x_tile_bufs),
        ]
    if h_rest:
        buffers += [
            Buffer("w rest rows", "sbuf", h_rest, experts * in_bytes),
            Buffer("x rest rows", "sbuf", h_rest, TOKEN_TILE * in_bytes, x_tile_bufs),
        ]
    if variant.options["layout"] == "ht" and h_tiles:
        buffers.append(
            Buffer("x.T of a partial tile (dense)", "sbuf", PARTITIONS, (TOKEN_TILE - 1) * h_tiles * in_bytes)
        )
    if variant.options["layout"] == "th":
        buffers.append(
            Buffer(
                "x rows (tokens on partitions)", "sbuf", TOKEN_TILE, route_group * hidden * in_bytes, x_rows_ahead + 1
            )
        )
        buffers.append(Buffer("x.T of a small tile (DMA)", "sbuf", PARTITIONS, (X_PE_ROWS - 1) * h_tiles * in_bytes))
        if x_dma_every:
            buffers.append(Buffer("x.T of a tile read by DMA", "sbuf", PARTITIONS, TOKEN_TILE * h_tiles * in_bytes, 2))
        if h_tiles:
            buffers.append(Buffer("x.T transpose", "psum", PARTITIONS, x_group * TOKEN_TILE * in_bytes, X_PSUM_BUFS))
        if h_rest:
            buffers.append(Buffer("x.T rest transpose", "psum", h_rest, TOKEN_TILE * in_bytes))
    if router.bias:
        buffers.append(Buffer("bias row and ones", "sbuf", 1, experts * in_bytes + TOKEN_TILE * in_bytes))
    if store_logits:
        buffers.append(Buffer("logits out", "sbuf", TOKEN_TILE, experts * out_bytes))
    if full_scores or (pre_norm and act == "softmax"):
        buffers.append(Buffer("scores (or exp scratch)", "sbuf", TOKEN_TILE, experts * f32))
    if router.selection_bias:
        buffers += [
            Buffer("selection bias row and ones", "sbuf", 1, (experts + TOKEN_TILE) * f32),
            Buffer("selection bias rows", "sbuf", TOKEN_TILE, experts * f32),
            Buffer("selection bias broadcast", "psum", TOKEN_TILE, experts * f32),
        ]
    if router.n_group is not None:
        buffers += [
            Buffer("group top-8", "sbuf", TOKEN_TILE, router.n_group * MAX8_WIDTH * f32),
            # padded group rows, halved top-2, group scores, kept-group values/index, keep row; uint8 masks
            Buffer(
                "group rows",
                "sbuf",
                TOKEN_TILE,
                (
                    router.n_group * (group_pad + 2)
                    + 2 * group_width
                    + ceil_div(router.topk_group, 8) * 8
                    + router.topk_group
                )
                * f32
                + router.topk_group * group_width
                + experts,
            ),
        ]
    if scatter == "onehot" or affinities == "all":
        buffers.append(Buffer("affinities tile", "sbuf", TOKEN_TILE, experts * out_bytes))
    else:
        buffers.append(
            Buffer("zero rows, row offsets, DMA targets", "sbuf", TOKEN_TILE, experts * out_bytes + 4 + top_k * 8)
        )

    if out_run_tiles > route_group:
        buffers.append(Buffer("output runs", "sbuf", TOKEN_TILE, out_run_tiles * out_tile_bytes, 2))

    # the routing rows of one tile exist once per tile of a routing group
    buffers = [
        replace(b, bytes_per_partition=b.bytes_per_partition * route_group) if b.name in ROUTING_ROWS else b
        for b in buffers
    ]

    overrides = [
        f"{name}={variant.options[name]}"
        for name in ("act", "norm", "renormalize", "affinities")
        if name in variant.options
    ]
    decisions = [
        (
            "pipeline",
            f"{'pre' if pre_norm else 'post'}-norm {act}"
            + (", L1 renormalised" if renormalize else "")
            + (f", scaled by {router.scaling_factor:g}" if router.scaling_factor is not None else "")
            + (f" (the variant overrides the spec's router with {' '.join(overrides)})" if overrides else ""),
        ),
        (
            "contraction",
            f"H={hidden} = {h_tiles} x 128"
            + (f" + {h_rest}" if h_rest else "")
            + f": each full tile puts h = p * {h_tiles} + j on partition p (w read once, in runs of "
            f"{h_tiles * experts} elements per partition); "
            + (
                f"layout th: a token tile of {X_PE_ROWS}+ tokens reads whole rows of x in one DMA (one run per "
                f"token) and builds x.T on the PE array, {x_group} H tiles per PSUM transpose and copy (an "
                f"x.T DMA moves {h_tiles} elements per descriptor); smaller tiles take that DMA, cheaper than "
                f"the transposes' latency; x rotates through {x_rows_ahead + 1} group buffers (loads run {x_rows_ahead} ahead), the logits of "
                f"routing groups of up to {route_group} tiles through {TILE_BUFS} PSUM buffers, the next group's "
                "logits issued before this group's routing"
                if variant.options["layout"] == "th"
                else f"layout ht: x read in runs of {x_load_tiles} full token tile(s) per row of x, one load "
                "ahead; a partial tile lands in a dense [128, H tiles, rows] tile, so with T <= 128 each "
                "partition's rows of x are one run"
            )
            + (
                f"; the last {h_rest} rows are one partial matmul on {h_rest} partitions, so H need not be a "
                "multiple of 128"
                if h_rest
                else ""
            ),
        ),
        (
            "logits",
            f"tokens on PSUM partitions (128 per tile, remainder tile for the rest), E={experts} on the free "
            f"axis; the {route_group} tiles of a routing group share one fp32 PSUM bank and partition p of its "
            + (
                "tile u holds token t0 + p * tiles + u, so each output row block is one DMA per group with one run "
                "of tiles x width per partition"
                if out_run_tiles == route_group
                else f"tile u holds token t0 + p * run + u, full tiles taken in runs of up to {out_run_tiles} tiles: a "
                "run's outputs gather in SBUF and leave in one DMA (one run per partition) after its second-to-last "
                "group, its last group alone"
            )
            + (
                "; the bias is one extra K=1 matmul of a ones row into the same PSUM accumulation"
                if router.bias
                else ""
            ),
        ),
        (
            "routing order",
            "step s transposes and multiplies group s, then routes group s - 1"
            + (
                "; TensorE takes tile i's transposes before tile i - 1's matmuls, across groups too (a group's last "
                "tile is multiplied after the next group's first transposes, so the PE array multiplies while the "
                "copies of those transposes leave PSUM); "
                if variant.options["layout"] == "th"
                else "; "
            )
            + (
                f"each step selects the previous group's experts after its first {route_split(route_group)} tiles "
                f"({ROUTE_TILES_AFTER_SELECTION} of its {route_group} tiles still to come), the last after "
                f"{LAST_ROUTE_SPLIT}, and computes their weights after all of its tiles"
                if route_group > ROUTE_TILES_AFTER_SELECTION
                else f"each step but the last selects the previous group's experts after all of its {route_group} "
                f"tiles; the last step selects them after its first {LAST_ROUTE_SPLIT} tiles and computes their "
                "weights after all of its tiles"
            )
            + (
                ""
                if eager or scatter == "dma"
                else "; the K weights stay on chip (no eager output, no DMA scatter), so only the whole-row "
                "weights are scaled by 1 / sum"
            ),
        ),
        (
            "selection",
            f"max8 ranks the {select_on}"
            + (
                " (softmax and sigmoid are increasing, so ranking the exact fp32 logits picks the same experts "
                "without depending on the activation's rounding)"
                if select_on == "logits" and pre_norm
                else ""
            )
            + (" plus the selection bias" if router.selection_bias else ""),
        ),
        (
            "ties",
            "each round of 8: max8 gives the 8 largest keys with their multiplicity, one nc_find_index8 with "
            "those 8 values finds their columns (a repeated value takes its successive occurrences in "
            "ascending order, NKI 0.6), so the lower expert wins a tie and no expert is chosen twice; "
            "nc_match_replace8 (imm=-inf) removes the chosen columns for the next round and gives the "
            "chosen-column mask (row before != row after)",
        ),
        (
            "non-finite scores",
            "max8 ranks selection keys: NaN -> the lowest finite fp32 value (below every number), -inf -> the "
            "second-lowest; the K weights come from the raw values of the chosen experts (gathered by column "
            "with nc_n_gather), so a NaN score never wins a slot, the experts stay in range and distinct, and "
            "a NaN weight stays NaN in its own expert's column",
        ),
        (
            "top-k rounds",
            f"K={top_k}: {rounds} max8 round(s) over a {work_width}-wide row"
            + (f" (E={experts} padded with -inf to max8's minimum of 8)" if work_width > experts else ""),
        ),
        (
            "scatter",
            f"none: expert_affinities holds the {act} scores of all E experts (AWS's pre-norm pipeline "
            "without L1 norm), one DMA per routing group"
            if affinities == "all"
            else "one-hot: the weight steps run on the whole row too and the chosen-column mask selects them "
            "(0 elsewhere) on chip, one DMA per routing group"
            if scatter == "onehot"
            else "indirect DMA: zero the tile's rows, then one DMA per k writes w_k at row*E + expert "
            "(vector_offset on the flattened [T*E, 1] view)",
        ),
        (
            "sharding",
            "LNC=2: core 0 takes tokens [0, ceil(T/2)), core 1 the rest (odd T: one fewer); the "
            "cores write disjoint rows of every output, so no barrier is needed"
            if variant.options["lnc"] == 2
            else "LNC=1",
        ),
        (
            "outputs",
            f"allocated in shared HBM and returned; logits, affinities and eager in {layer.out_dtype} "
            "(rounded once from fp32), expert_index int32",
        ),
    ]
    if router.n_group is not None:
        decisions.append(
            (
                "group limit",
                f"{router.n_group} groups of {group_size}: group score ({router.group_score}) = "
                f"{GROUP_SCORES[router.group_score]}, read from the group's max8 keys"
                + (
                    " (computed as top1/2 + top2/2 in fp32: the same order, no overflow)"
                    if router.group_score == "top2_sum"
                    else ""
                )
                + f"; the {router.topk_group} best groups (same tie rule) stay, the others' experts become -inf "
                "before the expert top-K",
            )
        )

    return RouterPlan(
        family="router",
        kernel_name=variant.name,
        spec_name=layer.name,
        lnc=variant.options["lnc"],
        buffers=tuple(buffers),
        decisions=tuple(decisions),
        hidden=hidden,
        experts=experts,
        top_k=top_k,
        in_dtype=layer.dtype,
        out_dtype=layer.out_dtype,
        x_layout=variant.options["layout"],
        scatter=scatter,
        eager=eager,
        store_logits=store_logits,
        act=act,
        pre_norm=pre_norm,
        renormalize=renormalize,
        scaling_factor=router.scaling_factor,
        w_bias=router.bias,
        selection_bias=router.selection_bias,
        n_group=router.n_group,
        topk_group=router.topk_group,
        group_size=group_size,
        group_score=router.group_score,
        affinities=affinities,
        softmax_sum_cancels=softmax_sum_cancels,
        k_weights_out=eager or scatter == "dma",
        h_tiles=h_tiles,
        h_rest=h_rest,
        token_tile=TOKEN_TILE,
        tile_bufs=TILE_BUFS,
        x_row_bufs=x_rows_ahead + 1,
        x_rows_ahead=x_rows_ahead,
        x_dma_every=x_dma_every,
        x_tile_bufs=x_tile_bufs,
        x_load_rows=X_LOAD_ROWS,
        x_load_tiles=x_load_tiles,
        interleave_matmuls=interleave,
        x_psum_bufs=X_PSUM_BUFS,
        route_group=route_group,
        route_split=route_split(route_group),
        last_route_split=LAST_ROUTE_SPLIT,
        out_run_tiles=out_run_tiles,
        x_pe_rows=X_PE_ROWS,
        x_group=x_group,
        x_copy_engines=X_COPY_ENGINES[experts <= LIGHT_ROUTING_EXPERTS],
        select_on=select_on,
        tile_masks=experts >= TILE_MASK_EXPERTS,
        logits_out_engine=logits_out_engine(
            variant.options["layout"], experts, pre_norm and act == "softmax" and full_scores
        ),
        keys_from_psum=select_on == "logits" and act == "softmax" and store_logits,
        full_scores=full_scores,
        weights_from=weights_from,
        topk_rounds=rounds,
        work_width=work_width,
        group_width=group_width,
        group_pad=group_pad,
        nan_key=NAN_KEY,
        key_floor=KEY_FLOOR,
        verify_tokens=variant.options.get("verify_tokens"),
    )


def _family():
    from moegen.plan import Family

    return Family(
        name="router",
        options=OPTIONS,
        plan=plan,
        doc="router top-K: logits, activation, top-K with ties to the lower expert, affinities",
    )


FAMILY = _family()
