"""The tkg family: token-generation MoE (SEMANTICS sections 1, 2, 4), options and plan.

One kernel runs the expert MLPs of a decode step. The work is a list of *work items*, each one
expert applied to the token tile:
- selective: one item per (token t, k), in a device loop (nl.fori_loop over T * K): the expert id is
  read at run time from expert_index[t, k] into a register, and the expert's weights are fetched by
  a DMA whose start address is that id (scalar_offset);
  the item is computed for the whole token tile and only row t is kept: its per-token scale
  column is zero except at t (the affinity, or 1 for NO_SCALE). The TensorE cost of N tokens equals
  that of one token for N <= 64, and no partition shuffle is needed.
- all_experts: one item per local expert, in a device loop over E_L (the loop register is the
  weights' DMA offset), scale column = the token's affinity for that expert (this rank's window
  of [T, E], optionally masked to its top-K).
- distinct: one item per local expert some token of the tile selected, found on device
  (templates/common/distinct.j2) and run in a device loop whose trip count is a register: each
  selected expert's weights are read once, and the item runs the whole tile with a column that is
  the token's affinity (times how often it chose the expert), zero for the other tokens.
Weights stream through slabs: the gate/up weights of several I tiles per DMA (longer contiguous
runs), in two slabs that alternate so the next load overlaps the matmuls; DOWN_BUFFERS down slabs.
Per item: gate/up matmuls per I tile (weights stationary [H tile, I tile], x.T moving [H tile, N])
into PSUM [I tile, N]; dequant, bias (+1), clamp, activation, h = a * u; down matmuls
(h stationary [I tile, N], down weights moving [I tile, <=512]) into PSUM [N, 512] per column chunk;
acc[N, H] += scale column * (y (* down scale) (+ down bias)). The output is acc rounded to the
output dtype, written to HBM [T, H] or returned in SBUF.
Distinct mode at small token tiles (`down_transposed`, the decode kernels) turns the down projection
around: down weights stationary [I tile, 128 columns], h moving [I tile, N], into PSUM [128, N] per
chunk of output columns (H on partitions: partition p of chunk c is column p * H/128 + c), one DMA
of whole down rows per I tile; the scale column multiplies h instead of y, so every expert's down
matmuls accumulate into the same PSUM sums and no [N, H] vector work remains per expert; the gate/up
slabs then hold 4 (or 2) H rows per partition (one run of whole gate + up rows), x.T in that H order.

EP and TP: E_L = E / ep local experts, I_TP = I / tp. Both are layer dimensions (`dims`); a tkg
kernel may set its own `ep=` / `tp=` option, so the EP (or TP) variant of a model lives next to its
other variants in the same spec file, on the same layer.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from moegen.plan.common import (
    DTYPE_BYTES,
    MATMUL_MOVING_FREE_MAX,
    PARTITIONS,
    PSUM_BANK_BYTES,
    PSUM_BANKS,
    SBUF_BYTES,
    Buffer,
    KernelPlan,
    PlanError,
    ceil_div,
)
from moegen.plan.expert import ExpertMLPPlan, expert_mlp_plan
from moegen.plan.mx_expert import SLAB, MxWeightsPlan, mx_weights_plan
from moegen.plan.shared_fusion import SHARED_OPTION, FusedSharedPlan, fuse_into_tkg
from moegen.spec.model import Layer, Variant
from moegen.spec.options import OptionSpec

TOKEN_TILE = PARTITIONS  # tokens of one tile: the down results have tokens on partitions
SELECTIVE_MAX_TOKENS = 128  # the seed's decode bound; selective mode keeps one token tile
DOWN_SLAB_BYTES = 32 * 1024  # per partition: one I tile of down weights, the columns of a group
DOWN_GROUP_BANKS = 4  # PSUM banks holding one group of down columns (gate and up take 2 more)
CHUNK = MATMUL_MOVING_FREE_MAX  # down columns per matmul (one fp32 PSUM bank)
DOWN_BUFFERS = 4  # down-weight slabs: the next loads overlap the matmuls on the previous ones

OPTIONS = (
    OptionSpec(
        "tuned",
        "flag",
        "the options left at auto or unset (mode, shard, gate_up_loop, gate_up_split, weight_buffers, down_columns) "
        "take the model's "
        "choice recorded in SPEC.choices.json by `moegen tune SPEC --write` (build fails when it is missing or stale)",
    ),
    OptionSpec(
        "mode",
        "choice",
        "selective: each token runs its K experts (ids read at run time); "
        "all_experts: every local expert runs on every token; "
        "distinct: each local expert some token selected runs once on the whole token tile (the distinct "
        "ids found on device, a loop with a run-time trip count); auto: distinct where it plans, else "
        "all_experts under EP, else selective (with `tuned`: the timeline model's choice)",
        default="selective",
        choices=("selective", "all_experts", "distinct", "auto"),
    ),
    OptionSpec(
        "tokens",
        "bound",
        "the most tokens T a call may pass (buffers are sized for it)",
        default=128,
        minimum=1,
        maximum=4096,
        reason="all-expert mode tiles tokens by 128; 4096 bounds the tiles",
    ),
    OptionSpec(
        "ep",
        "int",
        "expert-parallel ranks for this kernel: it holds E_L = E / ep experts (default: the layer's dims ep)",
        minimum=1,
        maximum=1024,
    ),
    OptionSpec(
        "tp",
        "int",
        "tensor-parallel ranks for this kernel: it holds I_TP = I / tp of each expert (default: the layer's dims tp)",
        minimum=1,
        maximum=64,
    ),
    OptionSpec(
        "mask_unselected",
        "flag",
        "all-expert mode: zero the affinity of experts not in the token's top-K (mask_unselected_experts)",
    ),
    OptionSpec(
        "eager",
        "flag",
        "selective mode: affinities are the K selected values [T, K] "
        "(expert_affinities_eager) instead of the [T, E] table",
    ),
    OptionSpec(
        "out", "choice", "output dtype override (default: the layer's output dtype)", choices=("bf16", "fp16", "fp32")
    ),
    OptionSpec(
        "input",
        "choice",
        "where hidden_input is: HBM [T, H], or SBUF [H0=128, T, H1=H/128] with "
        "column h = h0 * H1 + h1 (the seed's SBUF layout, from a fused caller; the kernel is then a "
        "sub-kernel, and output=sbuf returns the same [H0, T, H1] layout)",
        default="hbm",
        choices=("hbm", "sbuf"),
    ),
    OptionSpec(
        "output",
        "choice",
        "where the result goes: HBM [T, H], or left in SBUF [T, H] for a caller "
        "that fuses (the kernel is then a sub-kernel, not @nki.jit)",
        default="hbm",
        choices=("hbm", "sbuf"),
    ),
    OptionSpec(
        "shard",
        "choice",
        "LNC=2 split: auto (the plan chooses per shape), intermediate (each core "
        "half of the I tiles; partial outputs exchanged), hidden (each core half of the down projection's "
        "columns), tokens (each core half of the token tiles), top_k (selective mode: each core half of "
        "every token's K selected experts, the seed's MX 'shard on K'; partial outputs exchanged)",
        default="auto",
        choices=("auto", "hidden", "tokens", "intermediate", "top_k"),
    ),
    OptionSpec(
        "target",
        "choice",
        "hardware generation (default: trn3 for MX weights, else trn2); MX weights need trn3",
        choices=("trn2", "trn3"),
    ),
    SHARED_OPTION,
    OptionSpec(
        "gate_up_loop",
        "choice",
        "order of the gate/up loops: h_outer (one weight DMA per H tile reads whole rows of gate and up "
        "for a pass of I tiles, accumulated in PSUM over H: long DMA runs), i_outer (per slab of I tiles, "
        "every H tile), auto (h_outer when one pass holds the core's I tiles)",
        default="auto",
        choices=("auto", "h_outer", "i_outer"),
    ),
    OptionSpec(
        "weight_buffers",
        "int",
        "gate/up weight slabs the loads rotate through (deeper: later loads wait less on the matmuls); "
        "unset: as many as SBUF holds, up to 8 (h_outer) or 2 (i_outer)",
        minimum=1,
        maximum=16,
        reason="16 slabs of one H tile's rows already cover the DMA latency many times over",
    ),
    OptionSpec(
        "gate_up_split",
        "choice",
        "LNC=2 intermediate split with the transposed down projection: how the cores share the gate/up "
        "weights. intermediate: each core its half of the I columns of every H row (two runs per row); "
        "hidden: each core half of the H rows, all I columns (whole gate + up rows, one run), the partial "
        "gate/up sums of its partner's I half exchanged (sendrecv) per expert before the activation; "
        "auto: intermediate (with `tuned`: the timeline model's choice)",
        default="auto",
        choices=("auto", "intermediate", "hidden"),
    ),
    OptionSpec(
        "down_columns",
        "int",
        "output columns per down group (PSUM banks of 512 fp32 columns; the down weights' DMA run); unset: 2048",
        minimum=512,
        maximum=2048,
        multiple_of=512,
        reason="a group's chunks are 512-column PSUM banks, at most 4 beside the gate/up sums",
    ),
)
MX_QUANT = ("mxfp4", "mxfp8")


@dataclass(frozen=True, kw_only=True)
class TkgPlan(KernelPlan):
    """Every number and choice of one tkg kernel."""

    mlp: ExpertMLPPlan
    mode: str  # 'selective' | 'all_experts' | 'distinct'
    hidden: int
    intermediate: int  # I_TP
    experts: int  # E
    local_experts: int  # E_L
    ep: int
    tp: int
    top_k: int
    in_dtype: str
    out_dtype: str
    weight_dtype: str
    matmul_dtype: str  # dtype of h (and of x): the down (and gate/up) moving/stationary operand
    affinity_scale: str  # 'none' | 'pre' | 'post'
    eager: bool
    mask_unselected: bool
    uses_affinities: bool  # expert_affinities is read
    uses_rank: bool  # rank_id is read (all-expert with affinity scaling)
    input: str  # 'hbm' | 'sbuf'
    output: str  # 'hbm' | 'sbuf'
    token_bound: int
    token_tile: int  # tokens per tile (<= 128)
    token_tiles: int  # tiles of the token bound
    h_tiles: int
    h_last: int  # rows of the last H tile (128 when H is a multiple of 128)
    i_tiles: int
    i_last: int
    down_groups: tuple[tuple[tuple[int, int], ...], ...]  # per core: (start, columns) of each group
    down_chunks: tuple[tuple[tuple[tuple[int, int], ...], ...], ...]  # per core, per group: chunks
    group_columns: int  # widest group (down slab columns)
    chunks_per_group: int  # PSUM banks for down
    shard: str  # 'none' | 'intermediate' | 'hidden' | 'tokens' | 'top_k'
    core_columns: tuple[tuple[int, int], ...]  # per core: (first column, columns) of the output it writes
    acc_columns: tuple[tuple[int, int], ...]  # per core: (first column, columns) its down projection computes
    core_i_tiles: tuple[tuple[int, int], ...]  # per core: (first I tile, I tiles) it computes (MX: I slabs)
    core_top_k: tuple[tuple[int, int], ...] = ()  # per core: (first k, count) of each token's selected experts
    down_buffers: int = DOWN_BUFFERS  # down-weight slabs, alternating by I tile
    gate_up_columns: int = PARTITIONS  # I columns of one gate/up weight slab (a group of I tiles; MX: of I slabs)
    gate_up_buffers: int = 1  # slabs the groups alternate between (the next load overlaps the matmuls)
    gate_up_group: tuple[tuple[int, int, int], ...] = ()  # per I tile (MX: I slab): (group's first, columns, slab)
    gate_up_loop: str = "i_outer"  # 'i_outer' | 'h_outer'
    x_transpose: str = "dma"  # 'dma' (x.T written by a DMA, one element per descriptor) | 'pe' (rows + nc_transpose)
    # h_outer, per core: (first I tile, I tiles, I columns) of each pass; a pass's gate and up sums sit in PSUM
    gate_up_passes: tuple[tuple[tuple[int, int, int], ...], ...] = ()
    acc_tiles: int = 1  # h_outer: I tiles per PSUM accumulator tile ([P, acc_tiles, token tile] fp32, one bank)
    acc_banks: int = 1  # h_outer: accumulator tiles per projection
    # h_outer with one pass of all I: H rows per partition in one gate/up slab (partition p, row r of slab s is
    # H row s * 128 * gate_up_rows + p * gate_up_rows + r; x.T is built in the same H order)
    gate_up_rows: int = 1
    verify_tokens: int | None = None
    mx: MxWeightsPlan | None = None  # MX weights (trn3): slabs and dtypes, templates/common/mx_expert.j2
    shared: FusedSharedPlan | None = None  # the layer's shared experts, fused (templates/common/shared_fused.j2)
    mx_epilogue_buffers: int = 1  # MX: PSUM / scratch sets the packed positions' gate/up epilogues rotate through
    # down projection with H on partitions (weights stationary, h moving): partition p of chunk c is output
    # column p * (H / 128) + c; the sums over I tiles and experts stay in PSUM ([P, down_acc_chunks, token
    # tile] fp32 per bank, down_acc_banks banks); the affinity scales h
    down_transposed: bool = False
    down_acc_chunks: int = 0
    down_acc_banks: int = 0
    # how the LNC=2 intermediate split shares the gate/up weights: 'intermediate' (each core its I tiles of
    # every H row) or 'hidden' (each core the H slabs gate_up_slabs[core], all I; the partial gate/up sums of
    # the partner's I tiles exchanged per expert before the activation)
    gate_up_split: str = "intermediate"
    gate_up_slabs: tuple[tuple[int, int], ...] = ()  # h_outer with H rows per partition, per core: (first slab, slabs)

    @property
    def argument_ranges(self) -> tuple[tuple[str, int, int | tuple[str, int]], ...]:
        """expert_index holds global expert ids (all-expert kernels only compare them, but an id outside
        [0, E) is still a bad routing); rank_id a rank of the EP group."""
        ranges = (("expert_index", 0, self.experts),)
        return ranges + ((("rank_id", 0, self.ep),) if self.uses_rank else ())

    @property
    def row_slabs(self) -> bool:
        """h_outer gate/up slabs addressed by (slab, row): several H rows per partition, or the cores' H halves."""
        return self.gate_up_loop == "h_outer" and (self.gate_up_rows > 1 or self.gate_up_split == "hidden")

    @property
    def x_group(self) -> int:
        return _x_group(self)

    @property
    def item_top_k(self) -> int:
        """Selected experts per token one core runs (all K, or its share under shard=top_k)."""
        return max(count for _, count in self.core_top_k) if self.core_top_k else self.top_k

    @property
    def core_slabs(self) -> int:
        """I tiles (MX: I slabs) one core computes."""
        return max(count for _, count in self.core_i_tiles)

    @property
    def exchanges_partials(self) -> bool:
        """LNC=2 splits whose cores each hold a partial sum of every output column (sendrecv once per tile)."""
        return self.shard in ("intermediate", "top_k")

    @property
    def reference_mode(self) -> str:
        """The reference's mode: distinct mode computes what selective mode computes (one weight read per expert)."""
        return "selective" if self.mode == "distinct" else self.mode

    @property
    def down_group_table(self) -> tuple[tuple[tuple[int, int, tuple[tuple[int, int], ...]], ...], ...]:
        """Per core: (first column, columns, chunks) of each down group, chunks = ((first column,
        columns), ...) of its matmuls: tuples, since NKI dict keys must be strings."""
        return tuple(
            tuple((start, columns, chunks) for (start, columns), chunks in zip(groups, core_chunks))
            for groups, core_chunks in zip(self.down_groups, self.down_chunks)
        )


def _distinct_problems(
    tokens: int, local_experts: int, mask: bool, eager: bool, scale: str
) -> list[tuple[str | None, str]]:
    """What distinct mode cannot take: more than one token tile, more than 128 local experts (the
    expert-id compaction puts experts on partitions), options of the other modes."""
    problems: list[tuple[str | None, str]] = []
    if tokens > SELECTIVE_MAX_TOKENS:
        problems.append(
            (
                "tokens",
                f"tokens<={tokens}: distinct mode runs one token tile of at most {SELECTIVE_MAX_TOKENS}; "
                "use mode=all_experts for larger T",
            )
        )
    if local_experts > PARTITIONS:
        problems.append(
            (
                "mode",
                f"mode=distinct: {local_experts} local experts; the on-device expert list puts experts "
                f"on partitions (at most {PARTITIONS}): use ep= to split them, or mode=selective",
            )
        )
    if mask:
        problems.append(
            ("mask_unselected", "mask_unselected applies to all-expert mode: distinct mode only runs selected experts")
        )
    if eager and scale == "none":
        problems.append(
            (
                "eager",
                "eager affinities with no affinity scaling in the expert pipeline would be read and "
                "ignored: add 'scale' to the expert pipeline or drop eager",
            )
        )
    return problems


def _auto_mode(layer: Layer, options: dict) -> str:
    """mode=auto by rule (no model): distinct where it plans (each selected expert read once), else
    all_experts under expert parallelism, else selective."""
    ep = options.get("ep") or layer.dims.ep
    experts = layer.dims.experts // ep if not layer.dims.experts % ep else layer.dims.experts
    scale = expert_mlp_plan(layer, mx=True).affinity_scale
    mask, eager = bool(options.get("mask_unselected")), bool(options.get("eager"))
    mx = layer.quant.weights in MX_QUANT
    if not mx and not _distinct_problems(options["tokens"], experts, mask, eager, scale):
        return "distinct"
    return "all_experts" if ep > 1 else "selective"


def _tiles(n: int) -> tuple[int, int]:
    tiles = ceil_div(n, PARTITIONS)
    return tiles, n - (tiles - 1) * PARTITIONS


def _groups(start: int, columns: int, group_columns: int) -> tuple[tuple[int, int], ...]:
    groups, c = [], start
    while c < start + columns:
        width = min(group_columns, start + columns - c)
        groups.append((c, width))
        c += width
    return tuple(groups)


def _chunks(group: tuple[int, int]) -> tuple[tuple[int, int], ...]:
    start, columns = group
    return tuple((c, min(CHUNK, start + columns - c)) for c in range(start, start + columns, CHUNK))


def plan(layer: Layer, variant: Variant) -> TkgPlan:
    """The routed plan, then its `shared` option resolved (moegen/plan/shared_fusion.py)."""
    return fuse_into_tkg(layer, variant.options, _routed_plan(layer, variant))


def _routed_plan(layer: Layer, variant: Variant) -> TkgPlan:
    options = variant.options
    problems: list[tuple[str | None, str]] = []
    mx = layer.quant.weights in MX_QUANT
    mlp = expert_mlp_plan(layer, mx=True)
    dims = layer.dims
    mode = options["mode"]
    lnc = options["lnc"]
    if mode == "auto":
        mode = _auto_mode(layer, options)
    target = options.get("target") or ("trn3" if mx else "trn2")
    if mx:
        problems += _mx_problems(layer, options, target, mlp)
    # A selective kernel reads each token's experts by global id and so holds all E experts: the layer's
    # dims ep applies to the all-expert kernels of the spec; an explicit ep= on a selective kernel is refused.
    ep = options.get("ep") or (1 if mode == "selective" else dims.ep)
    decisions: list[tuple[str, str]] = list(mlp.decisions)
    if options["mode"] == "auto":
        decisions.append(
            ("mode", f"auto: {mode} (the rule: distinct where it plans, else all_experts under EP, else selective)")
        )
    if mode == "selective" and not options.get("ep") and dims.ep > 1:
        decisions.append(
            (
                "expert parallelism",
                f"dims ep {dims.ep} does not apply: selective mode reads each token's experts by their global "
                "id, so this kernel holds all E experts (an EP decode kernel is mode=all_experts)",
            )
        )

    tp = options.get("tp") or dims.tp
    if dims.intermediate % tp:
        problems.append(("tp", f"tp {tp}: intermediate {dims.intermediate} is not divisible by it"))
    if dims.experts % ep:
        problems.append(("ep", f"ep {ep}: experts {dims.experts} is not divisible by it"))
    local_experts = dims.experts // ep if not dims.experts % ep else dims.experts
    if layer.dtype not in ("bf16", "fp16"):
        problems.append(
            (
                None,
                f"dtype {layer.dtype}: tkg reads bf16 or fp16 hidden states (the seed's input "
                "types); fp32 matmuls run at a quarter of the bf16 rate",
            )
        )
    out_dtype = options.get("out") or layer.out_dtype
    tokens = options["tokens"]
    scale = mlp.affinity_scale
    eager = bool(options.get("eager"))
    mask = bool(options.get("mask_unselected"))
    if mode == "distinct":
        problems += _distinct_problems(tokens, local_experts, mask, eager, scale)
    elif mode == "selective":
        if tokens > SELECTIVE_MAX_TOKENS:
            problems.append(
                (
                    "tokens",
                    f"tokens<={tokens}: selective mode runs one token tile of at most "
                    f"{SELECTIVE_MAX_TOKENS} (the decode bound); use mode=all_experts for "
                    "larger T",
                )
            )
        if ep > 1:
            problems.append(
                (
                    "ep",
                    f"ep {ep}: selective mode reads each token's experts by their global id; "
                    "with expert parallelism a rank would have to skip the tokens of other "
                    "ranks' experts: use mode=all_experts for EP (as the seed does)",
                )
            )
        if mask:
            problems.append(
                (
                    "mask_unselected",
                    "mask_unselected applies to all-expert mode: selective mode only runs the selected experts",
                )
            )
        if eager and scale == "none":
            problems.append(
                (
                    "eager",
                    "eager affinities with no affinity scaling in the expert pipeline would "
                    "be read and ignored: add 'affinity_scale' to the expert pipeline or drop eager",
                )
            )
    else:
        if eager:
            problems.append(
                (
                    "eager",
                    "eager affinities [T, K] are per selected expert: all-expert mode needs "
                    "the [T, E] table (the seed rejects eager in all-expert mode too)",
                )
            )
        if mask and scale == "none":
            problems.append(
                (
                    "mask_unselected",
                    "mask_unselected masks the affinities, and with no affinity "
                    "scaling in the expert pipeline none are read",
                )
            )
    verify_tokens = options.get("verify_tokens")
    if verify_tokens is not None and verify_tokens > tokens:
        problems.append(("verify_tokens", f"verify_tokens={verify_tokens}: the kernel takes at most tokens<={tokens}"))
    input_buffer = options["input"]
    if input_buffer == "sbuf":
        if dims.hidden % PARTITIONS:
            problems.append(("input", f"input=sbuf reads [128, T, H / 128]: H {dims.hidden} is not a multiple of 128"))
        if tokens > TOKEN_TILE:
            problems.append(("input", f"input=sbuf holds one token tile: tokens<={tokens} exceeds {TOKEN_TILE}"))
        if lnc == 2:
            problems.append(("input", "input=sbuf with lnc=2: each physical core has its own SBUF; use input=hbm"))
    output = options["output"]
    if output == "sbuf":
        if tokens > TOKEN_TILE:
            problems.append(
                (
                    "output",
                    f"output=sbuf keeps [T, H] with tokens on partitions: tokens<={tokens} "
                    f"exceeds the {TOKEN_TILE} partitions",
                )
            )
        if lnc == 2:
            problems.append(
                (
                    "output",
                    "output=sbuf with lnc=2: each physical core has its own SBUF, so the "
                    "result would be split across two memories; use output=hbm",
                )
            )
    shard = options["shard"]
    if lnc == 1 and shard != "auto":
        problems.append(("shard", f"shard={shard} splits work across the two cores of lnc=2; this kernel has lnc=1"))
    if problems:
        raise PlanError(*problems)

    hidden, inter = dims.hidden, dims.intermediate // tp
    mx_plan = mx_weights_plan(layer.quant.weights, hidden, inter) if mx else None
    h_tiles, h_last = _tiles(hidden)
    i_tiles, i_last = _tiles(inter)
    # MX: nc_matmul_mx takes an even stationary free size (h's tokens): an odd count runs with a zero token.
    token_tile = min(tokens + (tokens % 2 if mx else 0), TOKEN_TILE)
    token_tiles = ceil_div(tokens, TOKEN_TILE)
    if h_last != PARTITIONS or i_last != PARTITIONS:
        decisions.append(
            (
                "partial tiles",
                f"H {hidden} = {h_tiles - 1} x 128 + {h_last}, I {inter} = "
                f"{i_tiles - 1} x 128 + {i_last}: the last contraction tile of "
                "each is a partial matmul (fewer partitions)",
            )
        )
    weight_bytes = mx_plan.word_bytes if mx_plan else DTYPE_BYTES[mlp.weight_dtype]
    # Down columns per group: one I tile of the down weights for a group fits DOWN_SLAB_BYTES, and
    # the group's PSUM chunks fit DOWN_GROUP_BANKS banks.
    group_columns = min(DOWN_GROUP_BANKS * CHUNK, max(CHUNK, DOWN_SLAB_BYTES // weight_bytes // CHUNK * CHUNK))
    if options.get("down_columns"):
        group_columns = options["down_columns"]

    # LNC=2 sharding. shard=intermediate splits the I tiles (MX: the 512-value I slabs).
    split_units = mx_plan.i_slabs if mx_plan else i_tiles
    if lnc == 1:
        shard_kind = "none"
    elif shard != "auto":
        shard_kind = shard
        decisions.append(("shard", f"shard={shard} as the spec asks"))
    elif token_tiles > 1:
        shard_kind = "tokens"
        decisions.append(
            (
                "shard",
                f"tokens: {token_tiles} token tiles of {TOKEN_TILE} make the work "
                "compute-bound, so each core takes every other token tile (no duplicated "
                "compute, no cross-core sum)",
            )
        )
    elif split_units >= 2 and hidden % 2 == 0:
        shard_kind = "intermediate"
        decisions.append(
            (
                "shard",
                f"intermediate: one token tile of <= {token_tile} tokens is weight-bandwidth "
                "bound; each core reads half of every expert's gate/up and down weights (its "
                f"I tiles), and the two partial [T, {hidden}] sums are exchanged once per "
                "token tile (sendrecv of half the columns each way)",
            )
        )
    else:
        shard_kind = "hidden"
        decisions.append(
            (
                "shard",
                f"hidden: I {inter} is one tile, so each core takes half of the down "
                "projection's columns (halving the down weight reads, no cross-core sum)",
            )
        )
    half_i = ceil_div(split_units, 2)
    core_i_tiles = ((0, split_units),) * lnc
    core_top_k: tuple[tuple[int, int], ...] = ()
    if shard_kind == "hidden":
        if hidden < 2 * PARTITIONS:
            raise PlanError(
                ("shard", f"shard=hidden: H {hidden} is too small to split in two column ranges of at least 128")
            )
        half = ceil_div(ceil_div(hidden, 2), PARTITIONS) * PARTITIONS
        core_columns = ((0, half), (half, hidden - half))
        acc_columns = core_columns
    elif shard_kind == "intermediate":
        if split_units < 2:
            unit = "512-value MX slab" if mx_plan else "128-row tile"
            raise PlanError(
                ("shard", f"shard=intermediate: I {inter} is a single {unit}, nothing to split; use shard=hidden")
            )
        if hidden % 2:
            raise PlanError(
                (
                    "shard",
                    f"shard=intermediate: H {hidden} is odd; the cores exchange equal halves of "
                    "the output columns (sendrecv needs equal shapes)",
                )
            )
        core_columns = ((0, hidden // 2), (hidden // 2, hidden // 2))
        acc_columns = ((0, hidden),) * 2
        core_i_tiles = ((0, half_i), (half_i, split_units - half_i))
    elif shard_kind == "top_k":
        core_columns, acc_columns = _top_k_split(mode, dims.top_k, hidden)
        half_k = ceil_div(dims.top_k, 2)
        core_top_k = ((0, half_k), (half_k, dims.top_k - half_k))
        decisions.append(
            (
                "top_k split",
                f"each core runs k in [first, first + count) of every token's {dims.top_k} selected experts "
                f"({core_top_k}): whole experts, so each core reads the weights of half of the items; the "
                f"two partial [T, {hidden}] sums are exchanged once per token tile (sendrecv of half the "
                "columns each way). The seed's MX selective 'shard on K' (K = top_k, not the contraction)",
            )
        )
    else:
        core_columns = tuple((0, hidden) for _ in range(lnc))
        acc_columns = core_columns
    if shard_kind == "tokens" and token_tiles < 2 and mode == "all_experts":
        decisions.append(("token split", "one token tile: each core takes half of its tokens"))
    down_groups = tuple(_groups(start, cols, group_columns) for start, cols in acc_columns)
    group_columns = max(cols for groups in down_groups for _, cols in groups)  # the widest actual group
    down_chunks = tuple(tuple(_chunks(g) for g in groups) for groups in down_groups)
    chunks_per_group = max(len(c) for core in down_chunks for c in core)
    decisions.append(
        (
            "down groups",
            f"{group_columns} columns per group ({ceil_div(group_columns, CHUNK)} "
            f"PSUM banks of {CHUNK} fp32), one [128, {group_columns}] down-weight "
            "slab per I tile",
        )
    )
    if mode == "selective":
        decisions.append(
            (
                "selective items",
                "one work item per (token, k): the expert's weights are fetched by "
                "a DMA at a run-time offset (expert id * expert stride); the item "
                "runs on the whole token tile (TensorE time is max(64, N) cycles, "
                "so N <= 64 tokens cost what one does) and its scale column keeps "
                "row t, so no partition shuffle is needed. The T * K items "
                f"(<= {tokens * dims.top_k}) run in one device loop (nl.fori_loop): "
                "the item index is a register; a DMA at that offset copies the "
                "item's expert id into a (1, 1) tile (the scalar_offset of the "
                "weight DMAs) and its scale column into a fixed tile (runtime "
                "offsets address DMAs only)",
            )
        )
        if tokens * dims.top_k > local_experts:
            decisions.append(
                (
                    "weight reads",
                    f"up to T * K = {tokens * dims.top_k} expert weight reads per call "
                    f"against {local_experts} experts: for large T, mode=all_experts "
                    "with mask_unselected reads each expert once",
                )
            )
    elif mode == "distinct":
        decisions.append(
            (
                "distinct items",
                "one work item per local expert some token selected, each expert's weights read once: "
                "on device, routing_count[t, e] counts token t's choices of expert e (one-hot of "
                "expert_index); a matmul with a ones column sums it over tokens (used[e]), one with a "
                "strictly triangular matrix gives each used expert its slot (the used experts before "
                "it), and one with the expert-id column compacts the ids into a row; their count is a "
                "register, the trip count of the device loop (nl.fori_loop). Each item runs the whole "
                "token tile with its column of routing_scale (affinity x count, zero for tokens that "
                "did not select it)",
            )
        )
    else:
        decisions.append(
            (
                "all-expert items",
                f"one work item per local expert ({local_experts}) in one device "
                "loop (nl.fori_loop): the loop register is the weights' DMA "
                "offset and the affinity column's",
            )
        )
        if token_tiles > 1:
            decisions.append(
                ("token tiles", f"tokens<={tokens}: {token_tiles} tiles of {TOKEN_TILE}, each runs every local expert")
            )

    matmul_dtype = "fp8" if mlp.input_quant == "fp8_static" else layer.dtype
    if input_buffer == "sbuf":
        decisions.append(
            (
                "input=sbuf",
                f"contraction tile j holds H columns h0 * {hidden // PARTITIONS} + j "
                "(h0 the partition), so the weight DMAs read rows with that stride; "
                "no tile is partial",
            )
        )
    if scale == "pre":
        decisions.append(
            (
                "pre-scale",
                "x * affinity per item: the [N, 1] scale column is broadcast to a "
                "[128, N] row tile by one matmul (ones-scaled column x identity) and "
                "multiplied into x.T, rounded to the input dtype as the reference does",
            )
        )
    if mx_plan:
        decisions.append(
            (
                "mx layout",
                f"H {hidden} in {mx_plan.h_slabs} slab(s) of 512 on 128 partitions, I {inter} in "
                f"{mx_plan.i_slabs}; each I slab's gate/up runs as 4 matmuls (column i = 512 s + 4p + q for the "
                "q-th), so a(g) * u lands in packed position q of h: h is quantized to MXFP8 in the down "
                "projection's contraction layout with no transpose",
            )
        )
    tkg_plan = TkgPlan(
        family="tkg",
        kernel_name=variant.name,
        spec_name=layer.name,
        lnc=lnc,
        target=target,
        mx=mx_plan,
        decisions=tuple(decisions),
        mlp=mlp,
        mode=mode,
        hidden=hidden,
        intermediate=inter,
        experts=dims.experts,
        local_experts=local_experts,
        ep=ep,
        tp=tp,
        top_k=dims.top_k,
        in_dtype=layer.dtype,
        out_dtype=out_dtype,
        weight_dtype=mlp.weight_dtype,
        matmul_dtype=matmul_dtype,
        affinity_scale=scale,
        eager=eager,
        mask_unselected=mask,
        uses_affinities=scale != "none" and not eager,
        uses_rank=(mode == "all_experts" and scale != "none") or (mode == "distinct" and ep > 1),
        input=input_buffer,
        output=output,
        token_bound=tokens,
        token_tile=token_tile,
        token_tiles=token_tiles,
        h_tiles=h_tiles,
        h_last=h_last,
        i_tiles=i_tiles,
        i_last=i_last,
        down_groups=down_groups,
        down_chunks=down_chunks,
        group_columns=group_columns,
        chunks_per_group=chunks_per_group,
        shard=shard_kind,
        core_columns=core_columns,
        acc_columns=acc_columns,
        core_i_tiles=core_i_tiles,
        core_top_k=core_top_k,
        verify_tokens=options.get("verify_tokens"),
    )
    if tkg_plan.mx:  # the MX stage streams whole I slabs (templates/common/mx_expert.j2 gate_up_streamed)
        return _mx_streaming(tkg_plan)
    if tkg_plan.input == "hbm" and tkg_plan.h_last == PARTITIONS:
        pe = replace(tkg_plan, x_transpose="pe")
        if _other_psum_banks(pe) + tkg_plan.mlp.projections <= PSUM_BANKS:
            why = (
                f"x [n, {hidden}] arrives in one DMA of whole rows and the PE array transposes it, "
                f"{_x_group(pe)} H tiles per PSUM tile and copy (a DMA writing x.T directly moves one "
                "element per descriptor)"
            )
            tkg_plan = replace(pe, decisions=pe.decisions + (("x.T", why),))
    loop = options.get("gate_up_loop", "auto")
    depth = options.get("weight_buffers")
    # (down_columns = H asks for whole down rows, which the transposed layout reads too)
    # (a layer with shared experts keeps the [T, H] accumulation the fused shared experts add into)
    shared = layer.shared_expert is not None and bool(layer.dims.shared_experts)
    split = options.get("gate_up_split", "auto")
    transposed_applies = (
        loop != "i_outer"
        and options.get("down_columns") in (None, hidden)
        and not shared
        and _down_transposed_applies(tkg_plan)
    )
    if split == "hidden":
        return _hidden_split_plan(tkg_plan, transposed_applies, depth, loop)
    if transposed_applies:
        transposed = _down_transposed(tkg_plan)
        passes, acc_tiles, acc_banks = _h_outer_passes(transposed)
        fits = _other_psum_banks(transposed) + transposed.mlp.projections * acc_banks <= PSUM_BANKS
        if fits and all(len(core) == 1 for core in passes):
            rows = _gate_up_rows(transposed, passes)
            return _h_outer_plan(transposed, passes, acc_tiles, acc_banks, depth, loop, rows)
    passes, acc_tiles, acc_banks = _h_outer_passes(tkg_plan)
    fits = _other_psum_banks(tkg_plan) + tkg_plan.mlp.projections * acc_banks <= PSUM_BANKS
    if loop == "h_outer" or (loop == "auto" and fits and all(len(core) == 1 for core in passes)):
        return _h_outer_plan(tkg_plan, passes, acc_tiles, acc_banks, depth, loop)
    tkg_plan = replace(tkg_plan, gate_up_group=_gate_up_groups(tkg_plan, 1, 1))
    tkg_plan = replace(tkg_plan, buffers=_buffers(tkg_plan))
    tiles, slabs, why = _gate_up_slabs(tkg_plan, depth)
    tkg_plan = replace(
        tkg_plan,
        gate_up_columns=tiles * PARTITIONS,
        gate_up_buffers=slabs,
        gate_up_group=_gate_up_groups(tkg_plan, tiles, slabs),
        decisions=tkg_plan.decisions + (("gate/up slabs", why),),
    )
    return replace(tkg_plan, buffers=_buffers(tkg_plan))


def _top_k_split(mode: str, top_k: int, hidden: int) -> tuple[tuple[tuple[int, int], ...], ...]:
    """(core_columns, acc_columns) of shard=top_k; PlanError when the split does not apply."""
    problems = []
    if mode != "selective":
        problems.append(
            (
                "shard",
                f"shard=top_k splits each token's K selected experts between the cores: mode={mode} has no "
                "(token, k) items (use shard=intermediate, hidden or tokens)",
            )
        )
    if top_k < 2:
        problems.append(("shard", f"shard=top_k: top_k {top_k}, nothing to split; use shard=intermediate or hidden"))
    if hidden % 2:
        problems.append(
            (
                "shard",
                f"shard=top_k: H {hidden} is odd; the cores exchange equal halves of the output columns "
                "(sendrecv needs equal shapes)",
            )
        )
    if problems:
        raise PlanError(*problems)
    return ((0, hidden // 2), (hidden // 2, hidden // 2)), ((0, hidden),) * 2


def _mx_problems(layer: Layer, options: dict, target: str, mlp: ExpertMLPPlan) -> list[tuple[str | None, str]]:
    """What the MX tkg kernels do not generate, with the reason."""
    problems: list[tuple[str | None, str]] = []
    if target != "trn3":
        problems.append(
            (
                "target",
                f"target={target}: quant weights={layer.quant.weights} multiplies with nc_matmul_mx and "
                "quantize_mx, Trainium3 (NeuronCore-v4) instructions; use target=trn3",
            )
        )
    if options["input"] == "sbuf":
        problems.append(
            ("input", "input=sbuf with MX weights: the [128, T, H/128] SBUF layout is not the MX slab layout")
        )
    return problems


GATE_UP_RUN_BYTES = 2048  # DMA runs of at least 2 KiB move within ~11% of the peak (the DMA guide)
SBUF_HEADROOM = 16 * 1024  # per partition left free beside the plan's buffers (allocator fragmentation)


def _gate_up_slab_bytes(p: TkgPlan, tiles: int) -> int:
    return p.h_tiles * p.mlp.projections * tiles * PARTITIONS * DTYPE_BYTES[p.weight_dtype]


def _gate_up_slabs(p: TkgPlan, depth: int | None = None) -> tuple[int, int, str]:
    """(I tiles per gate/up slab, slabs, why): the gate/up weight DMA of a slab moves runs of
    tiles x 128 x weight bytes, so as many tiles as make 2 KiB runs; two slabs when the core has two
    groups or more (one loads while the matmuls read the other), both within SBUF; `depth` slabs when
    the spec (or the model's choice) names them."""
    core_tiles = max(count for _, count in p.core_i_tiles)
    want = max(1, ceil_div(GATE_UP_RUN_BYTES, PARTITIONS * DTYPE_BYTES[p.weight_dtype]))
    slabs = depth or (2 if core_tiles >= 2 else 1)
    tiles = min(want, ceil_div(core_tiles, slabs))
    other = p.sbuf_bytes() - _gate_up_slab_bytes(p, 1)
    capacity = SBUF_BYTES[p.target] - SBUF_HEADROOM
    while tiles > 1 and other + slabs * _gate_up_slab_bytes(p, tiles) > capacity:
        tiles -= 1
    if other + slabs * _gate_up_slab_bytes(p, tiles) > capacity:
        slabs = 1
    run = tiles * PARTITIONS * DTYPE_BYTES[p.weight_dtype]
    why = (
        f"{tiles} I tile(s) per gate/up weight DMA ({run}-byte contiguous runs; 2 KiB wanted), "
        f"{slabs} slab(s) of {_gate_up_slab_bytes(p, tiles)} bytes per partition"
        + (": the next group's load overlaps the matmuls on the previous one" if slabs > 1 else "")
    )
    return tiles, slabs, why


def _mx_streaming(p: TkgPlan) -> TkgPlan:
    """The MX streaming numbers: epilogue sets (the PSUM banks left), down group buffers and gate/up loads
    (SBUF), each explained."""
    p = replace(p, gate_up_columns=SLAB, gate_up_group=_mx_gate_up_groups(p, 1, 1), down_buffers=2)
    p = replace(p, buffers=_buffers(p))
    sets = max(v for v in (4, 2, 1) if v <= 1 + PSUM_BANKS - p.psum_banks())  # a divisor of the 4 positions
    p = replace(p, mx_epilogue_buffers=sets)
    p = replace(p, buffers=_buffers(p))
    if p.sbuf_bytes() > SBUF_BYTES[p.target] - SBUF_HEADROOM:
        p = replace(p, down_buffers=1)
        p = replace(p, buffers=_buffers(p))
    slabs, loads, why = _mx_gate_up_loads(p)
    p = replace(
        p,
        gate_up_columns=slabs * SLAB,
        gate_up_buffers=loads,
        gate_up_group=_mx_gate_up_groups(p, slabs, loads),
        decisions=p.decisions
        + (
            ("gate/up slabs", why),
            (
                "mx epilogues",
                f"{sets} PSUM / scratch set(s) for the 4 packed positions of a slab ({PSUM_BANKS} PSUM banks)"
                + (
                    f": the matmuls of {sets} positions run back to back, then their epilogues stage by stage "
                    "(each engine runs in order: independent instructions stream instead of waiting on one chain)"
                    if sets > 1
                    else ""
                ),
            ),
            (
                "mx down loads",
                f"one DMA per group of {p.group_columns} down columns for the core's {p.core_slabs} I slab(s) "
                f"(runs of {p.group_columns * p.mx.word_bytes} bytes) and one per scale quadrant; "
                f"{p.down_buffers} group buffer(s)"
                + (": the next group's load overlaps the matmuls on the previous one" if p.down_buffers > 1 else ""),
            ),
        ),
    )
    return replace(p, buffers=_buffers(p))


def _mx_gate_up_bytes(p: TkgPlan, slabs: int) -> int:
    """Per partition: gate and up words and their scales (a byte each) of `slabs` I slabs over all H slabs."""
    return p.mx.h_slabs * 2 * slabs * SLAB * (p.mx.word_bytes + 1)


def _mx_gate_up_loads(p: TkgPlan) -> tuple[int, int, str]:
    """(I slabs per gate/up load, buffers, why) for MX weights. A load moves, per partition, 2 x HS runs of
    slabs x 512 consecutive I columns (I is innermost in HBM), so as many slabs as make 2 KiB runs (3 KiB
    runs model slower on GPT-OSS: coarser loads pipeline worse). One buffer per load of an item when SBUF
    holds them (the next item's loads then wait on nothing but their own slab's matmuls of this item), else
    two alternating (one loads while the matmuls read the other), else one."""
    core_slabs = max(count for _, count in p.core_i_tiles)
    slabs = min(max(1, ceil_div(GATE_UP_RUN_BYTES, SLAB * p.mx.word_bytes)), core_slabs)
    other = p.sbuf_bytes() - _mx_gate_up_bytes(p, 1)
    capacity = SBUF_BYTES[p.target] - SBUF_HEADROOM

    def fits(slabs: int, loads: int) -> bool:
        return other + loads * _mx_gate_up_bytes(p, slabs) <= capacity

    while slabs > 1 and not fits(slabs, min(2, ceil_div(core_slabs, slabs))):
        slabs -= 1
    per_item = ceil_div(core_slabs, slabs)
    loads = next((n for n in (per_item, 2) if n <= per_item and fits(slabs, n)), 1)
    run = slabs * SLAB * p.mx.word_bytes
    why = (
        f"{slabs} I slab(s) of 512 columns per gate/up weight DMA ({run}-byte contiguous runs, scales "
        f"{slabs * SLAB}-byte runs; 2 KiB wanted), {loads} buffer(s) of {_mx_gate_up_bytes(p, slabs)} bytes per "
        f"partition for the item's {per_item} load(s)"
        + (": the next load overlaps the matmuls on the previous one" if loads > 1 else "")
    )
    return slabs, loads, why


def _mx_gate_up_groups(p: TkgPlan, slabs: int, loads: int) -> tuple[tuple[int, int, int], ...]:
    """Per I slab: (first slab of its load, the load's I columns, its buffer). Loads split each core's slabs
    in runs of `slabs` and alternate between the buffers."""
    table: list[tuple[int, int, int]] = []
    for first, count in sorted(set(p.core_i_tiles)):
        for index, g_first in enumerate(range(first, first + count, slabs)):
            members = range(g_first, min(g_first + slabs, first + count))
            columns = sum(4 * p.mx.i_parts[s] for s in members)
            table += [(g_first, columns, index % loads)] * len(members)
    return tuple(table)


def _x_group(p: TkgPlan) -> int:
    """H tiles transposed into one PSUM tile ([P, group, token tile] in the input dtype, one bank)."""
    return max(1, min(p.h_tiles, PSUM_BANK_BYTES // (p.token_tile * DTYPE_BYTES[p.in_dtype])))


GATE_UP_ROWS = (4, 2, 1)  # H rows per partition of a gate/up slab (h_outer, whole rows), the most that divides H
H_OUTER_MAX_BUFFERS = 8  # h_outer slabs when the spec does not say: enough loads in flight to cover the matmuls


def _other_psum_banks(p: TkgPlan) -> int:
    """PSUM banks of every buffer but the gate/up results (down groups, distinct ids, pre-scale, transpose)."""
    return sum(
        ceil_div(b.bytes_per_partition, PSUM_BANK_BYTES) * b.count
        for b in _buffers(p)
        if b.memory == "psum" and b.name not in ("gate_psum", "up_psum")
    )


def _h_outer_passes(p: TkgPlan) -> tuple[tuple[tuple[tuple[int, int, int], ...], ...], int, int]:
    """(passes per core, I tiles per accumulator tile, accumulator tiles per projection) of the h_outer loop.

    A pass keeps the gate and up sums of its I tiles in PSUM ([P, token tile] fp32 per tile, so
    2048 / (4 x token tile) tiles per bank) while the loop over H reads, per H tile, the pass's columns
    of every gate and up row in one DMA; the banks left beside the down groups (and the other PSUM
    tiles) are shared equally by the projections. The core's I tiles split into equal passes."""
    acc_tiles = max(1, PSUM_BANK_BYTES // (4 * p.token_tile))
    acc_banks = max(1, (PSUM_BANKS - _other_psum_banks(p)) // p.mlp.projections)
    per_pass = acc_tiles * acc_banks
    table = []
    for first, count in p.core_i_tiles:
        n_passes = ceil_div(count, per_pass)
        size = ceil_div(count, n_passes)
        core = []
        for start in range(first, first + count, size):
            tiles = min(size, first + count - start)
            last = start + tiles == p.i_tiles
            core.append((start, tiles, (tiles - 1) * PARTITIONS + (p.i_last if last else PARTITIONS)))
        table.append(tuple(core))
    return tuple(table), acc_tiles, min(acc_banks, ceil_div(max(t for c in table for _, t, _ in c), acc_tiles))


def _down_transposed_applies(p: TkgPlan) -> bool:
    """The transposed down projection (H on partitions, sums in PSUM over experts) covers distinct mode
    with whole H tiles, HBM input and output, no down scales or bias, no pre-scaling (its rows tile is the
    one h's scale uses), and no LNC split or the intermediate split with an even
    number of 128-column chunks (each core writes half)."""
    m = p.mlp
    chunks = p.hidden // PARTITIONS
    return (
        p.mode == "distinct"
        and not p.mx
        and p.hidden % PARTITIONS == 0
        and p.input == "hbm"
        and p.output == "hbm"
        and not m.dequant
        and not m.down_bias
        and m.input_quant != "fp8_static"
        and p.affinity_scale != "pre"
        and (p.shard == "none" or (p.shard == "intermediate" and chunks % 2 == 0))
    )


def _down_transposed(p: TkgPlan) -> TkgPlan:
    """The plan with the transposed down projection: per I tile one DMA of whole down rows ([I tile, H],
    runs of H x weight bytes); 128 output columns per matmul (weights stationary, h moving: max(64, n)
    cycles), partition p of chunk c holding column p * (H / 128) + c, so each partition writes H / 128
    contiguous output columns per token; the sums of all experts accumulate in PSUM."""
    chunks = p.hidden // PARTITIONS
    per_bank = max(1, PSUM_BANK_BYTES // (4 * p.token_tile))
    banks = ceil_div(chunks, per_bank)
    run = p.hidden * DTYPE_BYTES[p.weight_dtype]
    why = (
        f"H on partitions: per I tile one DMA of whole down rows ({run}-byte runs); 128 output columns per "
        f"matmul (down weights stationary, every {chunks}th column: partition p of chunk c is column "
        f"p * {chunks} + c, so the output leaves in runs of {chunks} columns per partition and token); each "
        f"token's affinity (or 0/1 selection) scales h, and the sums over I tiles and experts stay in PSUM ({banks} bank(s) of "
        f"{per_bank} chunks): no per-expert [T, H] accumulation"
    )
    p = replace(
        p,
        down_transposed=True,
        down_acc_chunks=min(per_bank, chunks),
        down_acc_banks=banks,
        group_columns=p.hidden,
        decisions=p.decisions + (("down projection", why),),
    )
    return replace(p, buffers=_buffers(p))


def _gate_up_rows(p: TkgPlan, passes) -> int:
    """H rows per partition in a gate/up slab: the most of GATE_UP_ROWS that divides the H tiles when one
    pass reads whole gate and up rows (back to back in HBM, so a partition's rows are one run) and x.T is
    built on the PE array (in the slabs' H order); else 1."""
    whole = all(len(core) == 1 and core[0][2] == p.intermediate for core in passes)
    if not (whole and p.x_transpose == "pe" and p.h_last == PARTITIONS):
        return 1
    return next(rows for rows in GATE_UP_ROWS if p.h_tiles % rows == 0)


def _hidden_split_plan(p: TkgPlan, transposed_applies: bool, depth: int | None, loop: str) -> TkgPlan:
    """gate_up_split=hidden: the LNC=2 intermediate split with the transposed down projection, but each core
    reads half of the H rows of the gate/up weights with all their I columns (gate and up rows back to back:
    one run of GATE_UP_ROWS whole rows per partition) and sums them over its H half in PSUM; per expert the
    cores exchange the partial sums of each other's I tiles (sendrecv) and add them before the activation.
    The down projection stays split by I. PlanError when the split does not apply."""
    problems: list[tuple[str | None, str]] = []
    if p.shard != "intermediate":
        problems.append(
            (
                "gate_up_split",
                f"gate_up_split=hidden shares the gate/up rows of the LNC=2 intermediate split (shard={p.shard})",
            )
        )
    elif not transposed_applies:
        problems.append(
            (
                "gate_up_split",
                "gate_up_split=hidden needs the transposed down projection with the h_outer gate/up loop "
                "(distinct mode, whole H tiles, down sums in PSUM: tokens<=32 at this H, no down bias or scales)",
            )
        )
    if p.i_tiles % 2 or p.i_last != PARTITIONS:
        problems.append(
            (
                "gate_up_split",
                f"gate_up_split=hidden: I {p.intermediate} is not an even number of whole 128-row tiles; the cores "
                "exchange equal halves of the gate/up sums (sendrecv shapes are equal)",
            )
        )
    if p.h_tiles % 2:
        problems.append(("gate_up_split", f"gate_up_split=hidden: H {p.hidden} is an odd number of 128-row tiles"))
    if problems:
        raise PlanError(*problems)
    transposed = _down_transposed(p)
    whole_i = replace(transposed, core_i_tiles=((0, p.i_tiles),) * p.lnc)  # every core sums all I tiles
    passes, acc_tiles, acc_banks = _h_outer_passes(whole_i)
    fits = _other_psum_banks(transposed) + transposed.mlp.projections <= PSUM_BANKS
    if p.i_tiles > acc_tiles or not fits:
        raise PlanError(
            (
                "gate_up_split",
                f"gate_up_split=hidden: the gate/up sums of all {p.i_tiles} I tiles at {p.token_tile} tokens must fit "
                f"one PSUM bank per projection ({acc_tiles} tiles per bank) beside the other PSUM tiles",
            )
        )
    core_tiles = p.h_tiles // 2
    rows = next(r for r in GATE_UP_ROWS if core_tiles % r == 0) if p.x_transpose == "pe" else 1
    slabs = core_tiles // rows
    split = replace(transposed, gate_up_split="hidden", gate_up_slabs=((0, slabs), (slabs, slabs)))
    split = _h_outer_plan(split, passes, acc_tiles, 1, depth, loop, rows)
    run = rows * p.mlp.projections * p.intermediate * DTYPE_BYTES[p.weight_dtype]
    half = p.i_tiles // 2
    why = (
        f"hidden: each core reads H rows of {slabs} slab(s) "
        f"({core_tiles} of the {p.h_tiles} H tiles) with all I columns ({run}-byte runs: whole gate + up rows) and "
        f"sums them in PSUM; per expert it sends the partner the partial sums of the partner's {half} I tiles "
        f"([128, {p.mlp.projections}, {half}, n] fp32, sendrecv) and adds the partner's partial of its own before "
        "the activation; the down projection stays split by I"
    )
    return replace(split, decisions=split.decisions + (("gate/up split", why),))


def _h_outer_slab_bytes(p: TkgPlan) -> int:
    columns = max(cols for core in p.gate_up_passes for _, _, cols in core)
    return p.gate_up_rows * p.mlp.projections * columns * DTYPE_BYTES[p.weight_dtype]


def _h_outer_plan(
    p: TkgPlan, passes, acc_tiles: int, acc_banks: int, depth: int | None, loop: str, rows: int = 1
) -> TkgPlan:
    """The plan with the h_outer gate/up loop: `depth` slabs of `rows` H tiles' rows (as many as fit, up to
    H_OUTER_MAX_BUFFERS, when depth is None)."""
    p = replace(
        p, gate_up_loop="h_outer", gate_up_passes=passes, acc_tiles=acc_tiles, acc_banks=acc_banks, gate_up_rows=rows
    )
    p = replace(p, gate_up_buffers=1, gate_up_columns=max(c for core in passes for _, _, c in core))
    if not p.gate_up_slabs:  # every core reads every H slab
        p = replace(p, gate_up_slabs=((0, p.h_tiles // rows),) * p.lnc)
    p = replace(p, buffers=_buffers(p))
    slab = _h_outer_slab_bytes(p)
    loads = max(count for _, count in p.gate_up_slabs) * max(len(core) for core in passes)
    capacity = SBUF_BYTES[p.target] - SBUF_HEADROOM - (p.sbuf_bytes() - slab)
    slabs = depth or max(1, min(H_OUTER_MAX_BUFFERS, loads, capacity // slab))
    p = replace(p, gate_up_buffers=slabs)
    p = replace(p, buffers=_buffers(p))
    core = passes[0]
    run = p.gate_up_columns * DTYPE_BYTES[p.weight_dtype]
    single = all(len(c) == 1 for c in passes) and all(cols == p.intermediate for c in passes for _, _, cols in c)
    why = (
        f"h_outer{' (the spec asks)' if loop == 'h_outer' else ''}: {len(core)} pass(es) of "
        f"{'/'.join(str(t) for _, t, _ in core)} I tiles; per {rows} H tile(s) one DMA reads the pass's gate and up "
        f"columns ({rows * p.mlp.projections * run if single else run}-byte contiguous runs"
        f"{f': {rows} H rows per partition, x.T built in the same H order' if rows > 1 else ''}"
        f"{', gate and up rows back to back' if single and p.mlp.projections == 2 else ''}) into one of "
        f"{slabs} slab(s) of {slab} bytes per partition; the sums stay in PSUM over H "
        f"({acc_banks} bank(s) per projection, {acc_tiles} I tiles per bank at {p.token_tile} tokens)"
    )
    return replace(p, decisions=p.decisions + (("gate/up loop", why),))


def _gate_up_groups(p: TkgPlan, tiles: int, slabs: int) -> tuple[tuple[int, int, int], ...]:
    """Per I tile: (first tile of its group, the group's I columns, its slab). Groups split each
    core's tiles in runs of `tiles` and alternate between the slabs."""
    table: list[tuple[int, int, int]] = []
    for first, count in sorted(set(p.core_i_tiles)):
        for index, g_first in enumerate(range(first, first + count, tiles)):
            g_tiles = min(tiles, first + count - g_first)
            last = g_first + g_tiles == p.i_tiles
            columns = (g_tiles - 1) * PARTITIONS + (p.i_last if last else PARTITIONS)
            table += [(g_first, columns, index % slabs)] * g_tiles
    return tuple(table)


def _buffers(p: TkgPlan) -> tuple[Buffer, ...]:
    """Every on-chip allocation of the template, in its order (names match the generated code)."""
    m = p.mlp
    tt, k, selective, scale = p.token_tile, p.top_k, p.mode == "selective", p.affinity_scale
    in_bytes, mm_bytes = DTYPE_BYTES[p.in_dtype], DTYPE_BYTES[p.matmul_dtype]
    weight_bytes, out_bytes = DTYPE_BYTES.get(p.weight_dtype, 0), DTYPE_BYTES[p.out_dtype]
    acc_h = max(cols for _, cols in p.acc_columns)
    buffers = list(_mx_buffers(p)) if p.mx else [Buffer("x_t", "sbuf", PARTITIONS, p.h_tiles * tt * in_bytes)]
    if p.x_transpose == "pe":
        buffers += [
            Buffer("x_rows", "sbuf", tt, p.hidden * in_bytes),
            Buffer("x_psum", "psum", PARTITIONS, _x_group(p) * tt * in_bytes),
        ]
    if scale == "pre" or p.down_transposed:
        x_item = p.mx.h_slabs * tt * 4 * in_bytes if p.mx else p.h_tiles * tt * in_bytes
        buffers += [Buffer("x_item", "sbuf", PARTITIONS, x_item)] if scale == "pre" else []
        buffers += [
            Buffer("ones + scale_rows_in", "sbuf", tt, PARTITIONS * 4, count=2),
            Buffer("scale_rows_psum", "psum", PARTITIONS, tt * 4),
        ]
    if m.input_quant == "fp8_static":
        buffers += [
            Buffer("x_quant", "sbuf", PARTITIONS, p.h_tiles * tt * mm_bytes),
            Buffer("input_scale", "sbuf", PARTITIONS, 4 * 4),
            Buffer("h_in", "sbuf", PARTITIONS, tt * in_bytes),
        ]
    if p.gate_up_loop == "h_outer":
        buffers += [
            Buffer("w_gate_up", "sbuf", PARTITIONS, _h_outer_slab_bytes(p), count=p.gate_up_buffers),
            Buffer("w_down", "sbuf", PARTITIONS, p.group_columns * weight_bytes, count=p.down_buffers),
        ]
    elif not p.mx:
        buffers += [
            Buffer(
                "w_gate_up",
                "sbuf",
                PARTITIONS,
                p.h_tiles * m.projections * p.gate_up_columns * weight_bytes,
                count=p.gate_up_buffers,
            ),
            Buffer("w_down", "sbuf", PARTITIONS, p.group_columns * weight_bytes, count=p.down_buffers),
        ]
    if m.dequant:
        buffers += [
            Buffer("gate_up_scale", "sbuf", PARTITIONS, m.projections * 4),
            Buffer("down_scale", "sbuf", tt, p.group_columns * 4),
        ]
    if m.gate_up_bias and not p.mx:
        buffers.append(Buffer("gate_up_bias", "sbuf", PARTITIONS, m.projections * 4))
    if m.down_bias:
        buffers.append(Buffer("down_bias", "sbuf", tt, p.group_columns * 4))
    if m.dequant or m.down_bias:
        buffers.append(Buffer("y", "sbuf", tt, CHUNK * 4))
    if not p.mx:  # (MX: its own epilogue sets, _mx_buffers)
        buffers += [
            Buffer(
                "gate + up + act" if m.gated else "projection + act",
                "sbuf",
                PARTITIONS,
                tt * 4,
                count=m.projections + 1,
            ),
            Buffer("h", "sbuf", PARTITIONS, p.i_tiles * tt * mm_bytes),
            *(
                [
                    Buffer(f"{name}_acc", "psum", PARTITIONS, p.acc_tiles * tt * 4, count=p.acc_banks)
                    for name in ("gate", "up")[: m.projections]
                ]
                if p.gate_up_loop == "h_outer"
                else [Buffer("gate_psum", "psum", PARTITIONS, tt * 4)]
                + ([Buffer("up_psum", "psum", PARTITIONS, tt * 4)] if m.gated else [])
            ),
        ]
    if p.gate_up_split == "hidden":
        half = p.i_tiles // 2
        buffers.append(
            Buffer(
                "gate_up_send + gate_up_recv + gate_up_sum", "sbuf", PARTITIONS, m.projections * half * tt * 4, count=3
            )
        )
    if p.down_transposed:
        chunks, out_chunks = p.hidden // PARTITIONS, p.hidden // PARTITIONS // (2 if p.exchanges_partials else 1)
        buffers.append(Buffer("down_acc", "psum", PARTITIONS, p.down_acc_chunks * tt * 4, count=p.down_acc_banks))
        buffers.append(Buffer("h_f", "sbuf", PARTITIONS, tt * 4))
        if p.exchanges_partials:
            buffers += [
                Buffer("partial_t", "sbuf", PARTITIONS, tt * chunks * 4),
                Buffer("partner_t", "sbuf", PARTITIONS, tt * out_chunks * 4),
            ]
        buffers.append(Buffer("result_t", "sbuf", PARTITIONS, tt * out_chunks * out_bytes))
    else:
        buffers += [
            Buffer("down_psum", "psum", tt, CHUNK * 4, count=p.chunks_per_group),
            Buffer("acc", "sbuf", tt, acc_h * 4),
        ]
    if selective or scale == "pre" or p.down_transposed or (p.input == "sbuf" and p.output == "sbuf"):
        buffers.append(Buffer("token_rows", "sbuf", tt, tt * 4))
    if selective:
        buffers.append(Buffer("expert_id", "sbuf", 1, 4))
        if scale != "none":
            buffers += [Buffer("selected", "sbuf", tt, k * 4), Buffer("item_scales", "sbuf", tt, tt * p.item_top_k * 4)]
        if scale != "post":
            buffers.append(Buffer("item_rows", "sbuf", tt, tt * p.item_top_k * 4))
        if p.shard == "top_k":
            buffers.append(Buffer("item_experts", "sbuf", 1, tt * p.item_top_k * 4))
    if (selective and p.uses_affinities) or p.mask_unselected:
        buffers.append(Buffer("index + index_f", "sbuf", tt, k * 4, count=2))
    if selective and p.uses_affinities:
        buffers.append(Buffer("affinities + expert_iota + onehot", "sbuf", tt, p.experts * 4, count=3))
    if scale != "none" or (selective and scale != "post"):
        # the current item's [n, 1] columns, copied by DMA from item_scales / item_rows / affinities
        count = (scale != "none") + (selective and scale != "post")
        buffers.append(Buffer("item_scale" if count == 1 else "item_scale + item_row", "sbuf", tt, 4, count=count))
    if p.uses_rank:
        buffers += [
            Buffer("rank + rank_offset", "sbuf", tt, 4, count=2),
            Buffer("affinities", "sbuf", tt, p.local_experts * 4),
        ]
    if p.mask_unselected:
        buffers += [
            Buffer("rank_offset_f", "sbuf", tt, 4),
            Buffer("expert_iota + onehot + selected_mask", "sbuf", tt, p.local_experts * 4, count=3),
        ]
    if p.mode == "distinct":
        buffers += _distinct_buffers(p)
    if p.exchanges_partials and not p.down_transposed:
        buffers.append(Buffer("partner", "sbuf", tt, p.hidden // 2 * 4))
    if p.output == "hbm" and p.out_dtype != "fp32" and not p.down_transposed:
        buffers.append(Buffer("result", "sbuf", tt, max(cols for _, cols in p.core_columns) * out_bytes))
    if p.output == "sbuf" and p.input == "hbm":
        buffers.append(Buffer("output (returned)", "sbuf", tt, p.hidden * out_bytes))
    if p.output == "sbuf" and p.input == "sbuf":
        buffers += [
            Buffer("output (returned)", "sbuf", PARTITIONS, tt * p.h_tiles * out_bytes),
            Buffer("transpose_psum", "psum", PARTITIONS, tt * 4),
        ]
    return tuple(buffers)


def _mx_buffers(p: TkgPlan) -> tuple[Buffer, ...]:
    """The MX tiles (templates/common/mx_expert.j2): x staged and quantized, one (I slab, q) share of the
    gate/up weights, a down slab, h interleaved and quantized; scales one byte per data element."""
    mx, tt = p.mx, p.token_tile
    in_bytes, word = DTYPE_BYTES[p.in_dtype], mx.word_bytes
    return (
        Buffer("x_stage", "sbuf", PARTITIONS, mx.h_slabs * tt * 4 * in_bytes),
        Buffer("x_q + x_scales", "sbuf", PARTITIONS, mx.h_slabs * tt * (4 + 1)),
        Buffer(
            "w_gate_up + scales",
            "sbuf",
            PARTITIONS,
            _mx_gate_up_bytes(p, p.gate_up_columns // SLAB),
            count=p.gate_up_buffers,
        ),
        *((Buffer("gate_up_bias_item", "sbuf", PARTITIONS, 2 * mx.i_slabs * 4 * 4),) if p.mlp.gate_up_bias else ()),
        Buffer("gate_up_psum", "psum", PARTITIONS, 2 * tt * 4, count=p.mx_epilogue_buffers),
        Buffer(
            "gate_e + up_e + act_e + bias_e",
            "sbuf",
            PARTITIONS,
            (3 * tt + 2 * p.mlp.gate_up_bias) * 4,
            count=p.mx_epilogue_buffers,
        ),
        Buffer(
            "w_down + scales", "sbuf", PARTITIONS, p.core_slabs * p.group_columns * (word + 1), count=p.down_buffers
        ),
        Buffer("h_il", "sbuf", PARTITIONS, mx.i_slabs * tt * 4 * in_bytes),
        Buffer("h_q + h_scales", "sbuf", PARTITIONS, mx.i_slabs * tt * (4 + 1)),
    )


def _distinct_buffers(p: TkgPlan) -> list[Buffer]:
    """Distinct mode's routing tables [tokens, E_L], its expert-id compaction [E_L, E_L] and the item's
    columns (templates/common/distinct.j2)."""
    tt, el, scale = p.token_tile, p.local_experts, p.affinity_scale
    buffers = [
        Buffer("index + index_f", "sbuf", tt, p.top_k * 4, count=2),
        Buffer("expert_iota + routing_count", "sbuf", tt, el * 4, count=2),
        Buffer("ones_column", "sbuf", PARTITIONS, 4),
        Buffer("used + slot + expert_column", "sbuf", el, 4, count=3),
        Buffer("earlier + slot_iota + slot_onehot", "sbuf", el, el * 4, count=3),
        Buffer("distinct_psum", "psum", el, (2 * el + 3) * 4),
        Buffer("reverse_iota + first_score", "sbuf", 1, el * 4, count=2),
        Buffer("first_max", "sbuf", 1, 4),
        Buffer("distinct_ids", "sbuf", 1, (el + 1) * 4),
        Buffer("expert_id + next_expert_id", "sbuf", 1, 4, count=2),
    ]
    if scale != "none":
        buffers.append(Buffer("routing_scale", "sbuf", tt, el * 4))
    buffers.append(Buffer("onehots", "sbuf", tt, p.top_k * el * 4))  # the one-hot of every k
    if p.eager:
        buffers.append(Buffer("eager_affinities", "sbuf", tt, p.top_k * 4))
    if p.ep > 1:
        buffers.append(Buffer("rank_offset_f", "sbuf", tt, 4))
    if scale != "post":
        buffers.append(Buffer("item_row", "sbuf", tt, 4))
    return buffers


def _family():
    from moegen.plan import Family

    return Family(
        name="tkg",
        options=OPTIONS,
        plan=plan,
        doc="token-generation MoE: selective or all-expert expert MLPs for T <= 128 decode tokens",
    )


FAMILY = _family()
assert PSUM_BANKS >= DOWN_GROUP_BANKS + 2
