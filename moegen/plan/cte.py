"""The cte family: blockwise context-encoding (prefill) MoE kernels (SEMANTICS sections 1, 2, 5).

Tokens arrive grouped per expert into blocks of B slots (`moegen.blocking`). For every block the
kernel gathers the B token rows, runs the expert MLP on them and adds each token's result into the
output. Variants (the seed's four Trn2 kernels) are options:

    shard=block          blocks split across the two cores of an LNC=2 logical core, each core
                         accumulating into its own partial output, added at the end;
    shard=intermediate   the intermediate dimension split across the cores, partial down
                         projections exchanged with sendrecv and added;
    loop=hybrid          static loop over the blocks that surely hold tokens, then `nl.fori_loop`
                         up to sum(conditions) (a register), so fully padded blocks cost nothing;
                         with shard=block at LNC=2 each core loops over its own blocks (c, c+2, ...),
                         so the cores' trip counts differ; neither loop holds a cross-core
                         instruction (an LNC=2 program holds one instruction stream per core; the
                         only core_barrier is after both loops);
    dropping             N = E blocks, block i is expert i (token-dropping layer).

With MX weights (quant weights=mxfp4|mxfp8, trn3) the same options give the seed's three Trn3
variants shard_on_block_mx, shard_on_i_mx and shard_on_i_mx_hybrid (moegen/plan/cte_mx.py).

The plan resolves every tile, chunk and buffer to numbers; the template only spells them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from moegen.plan import cte_mx
from moegen.plan.common import (
    DTYPE_BYTES,
    EP_OPTION,
    MATMUL_MOVING_FREE_MAX,
    PARTITIONS,
    PSUM_BANK_BYTES,
    SBUF_BYTES,
    SBUF_RESERVED,
    TP_OPTION,
    Buffer,
    KernelPlan,
    PlanError,
    ceil_div,
    kernel_layer,
)
from moegen.plan.expert import ExpertMLPPlan, expert_mlp_plan
from moegen.plan.mx_expert import MxWeightsPlan
from moegen.plan.shared_fusion import SHARED_OPTION, FusedSharedPlan, fuse_into_cte
from moegen.spec.model import Layer, Variant
from moegen.spec.options import OptionSpec

GATHER_PIECES = 4  # column pieces of an in-block token-row gather (pipelined static loops; 1 KiB+ runs at H 2048)
TUNE_TOKENS = 4096  # the real-shape prefill T of benchmarks/modeled.py
# What `auto` means without `tuned` (the rule: the values these options defaulted to before `auto`)
AUTO_RULES = {"block": 512, "shard": "block", "loop": "static"}
# Streamed weights, options at auto: the first (gate/up I tiles, down columns) pair that fits SBUF, at the
# rule's depth (copies per chunk); a narrower chunk than fits only leaves SBUF unused.
STREAM_RULE = ((8, 512), (4, 512), (3, 512), (2, 512), (2, 256), (1, 256), (1, 128))
STREAM_DEPTH_RULE = 2
STREAM_OPTIONS = ("gate_up_tiles", "down_columns", "weight_buffers")
DEPTH_WORDS = {2: "double", 3: "triple"}

OPTIONS = (
    OptionSpec(
        "tuned",
        "flag",
        "the options left at auto (block, shard, loop, weights, tail, weight_buffers, gate_up_tiles, down_columns) "
        "take "
        "the model's choice recorded in "
        "SPEC.choices.json by `moegen tune SPEC --write` (build fails when it is missing or stale)",
    ),
    OptionSpec(
        "tune_tokens",
        "int",
        "token count T at which `moegen tune` compares this kernel's candidates (the kernel still takes any T "
        "up to 32768)",
        default=TUNE_TOKENS,
        minimum=1,
        maximum=32768,
    ),
    OptionSpec(
        "shard",
        "choice",
        "how an LNC=2 kernel splits the work between its two cores; auto: block (with `tuned`: the model's choice)",
        default="block",
        choices=("block", "intermediate", "auto"),
    ),
    OptionSpec(
        "distribute",
        "choice",
        "shard=block at lnc=2: core c takes blocks c, c+2, ... (interleaved, the "
        "seed's PING_PONG) or the c-th half of the blocks (halves, HI_LO: consecutive blocks of one expert "
        "stay on one core and reuse its resident weights)",
        default="interleaved",
        choices=("interleaved", "halves"),
    ),
    OptionSpec(
        "loop",
        "choice",
        "static: every block in a trace-time loop; hybrid: a static loop over the "
        "blocks that surely hold tokens, then a runtime loop bounded by sum(conditions); auto: static (with "
        "`tuned`: the model's choice)",
        default="static",
        choices=("static", "hybrid", "auto"),
    ),
    OptionSpec("dropping", "flag", "token-dropping layout: N = E blocks, block i is expert i"),
    OptionSpec(
        "block",
        "int",
        "tokens per block B; auto: 512 (with `tuned`: the model's choice)",
        default=512,
        minimum=128,
        maximum=1024,
        multiple_of=128,
        auto=True,
        reason="a block is whole 128-token tiles (tokens sit on the 128 partitions for the gather and "
        "the down projection) and at most 1024 tokens, the block layer of the seed",
    ),
    OptionSpec(
        "update",
        "choice",
        "accumulate each block into the output (top-K) or overwrite (top-1); auto picks overwrite for top_k 1",
        default="auto",
        choices=("auto", "accumulate", "overwrite"),
    ),
    OptionSpec(
        "padding",
        "choice",
        "empty block slots hold T (row: hidden_states [T+1, H] with a zero row T, out [T+1, H]) or -1 "
        "(skip: skipped by out-of-bounds DMA; AWS's shapes hidden_states [T, H], expert_affinities_masked "
        "[T*E, 1], out [T, H])",
        default="row",
        choices=("row", "skip"),
    ),
    OptionSpec(
        "output",
        "choice",
        "sum: out [rows, H] holds the finished sum; per_core: out [rows, 2, H] holds core c's partial sum "
        "in [:, c, :] for the caller to add (AWS's shard_on_block with accumulation; at lnc=1 [:, 1, :] is 0)",
        default="sum",
        choices=("sum", "per_core"),
    ),
    OptionSpec(
        "checkpoint",
        "flag",
        "also return gate/up pre-activations [N, 2, I, B] and down outputs [N, B, H] (activation checkpointing)",
    ),
    OptionSpec(
        "gate_up_tiles",
        "int",
        "streamed weights: I tiles (128 columns) per gate/up weight chunk; auto: the widest of 8, 4, 3, 2, 1 that "
        "fits SBUF (with `tuned`: the model's choice)",
        default="auto",
        minimum=1,
        maximum=16,
        auto=True,
        reason="a chunk of 16 I tiles already moves 2048-column runs per H row",
    ),
    OptionSpec(
        "down_columns",
        "int",
        "streamed weights: output columns per down weight chunk (and per down PSUM tile); auto: 512, or 256 / 128 "
        "when SBUF is short (with `tuned`: the model's choice)",
        default="auto",
        minimum=128,
        maximum=512,
        multiple_of=128,
        auto=True,
        reason="a down chunk's fp32 sums fill at most one 2 KiB PSUM bank (512 columns), in 128-column steps",
    ),
    OptionSpec(
        "weight_buffers",
        "int",
        "streamed weights: copies each weight chunk (and a prefetched chunk of output rows) rotates through, "
        "the loads running weight_buffers - 1 chunks ahead; auto: 2 (with `tuned`: the model's choice)",
        default="auto",
        minimum=2,
        maximum=3,
        auto=True,
        reason="two copies overlap one load with the matmuls; a third lets two loads be in flight, more than "
        "that leaves no SBUF for wide chunks",
    ),
    OptionSpec(
        "weights",
        "choice",
        "resident: an expert's whole weights stay in SBUF and are not loaded "
        "again when the next block has the same expert; stream: weights are loaded in chunks for "
        "every block; auto: resident when it fits",
        default="auto",
        choices=("auto", "resident", "stream"),
    ),
    OptionSpec(
        "tail",
        "choice",
        "absorb: a block whose next block has the same expert and at most 128 tokens (an expert's tail) runs that "
        "tile in its own weight passes, so the tail does not reload the expert's weights (pipelined static loops with "
        "streamed weights; x^T, h^T and the read-ahead output rows take one more token tile of SBUF); block: every "
        "block runs its own tiles; auto: absorb where the kernel can",
        default="auto",
        choices=("auto", "absorb", "block"),
    ),
    EP_OPTION,
    TP_OPTION,
    SHARED_OPTION,
    cte_mx.TARGET_OPTION,
)

T_MAX = 32768  # tokens per call the cte kernels are sized for (the seed's limit)
ZERO_COLUMNS_MAX = 2048  # width of the zero tile that clears output rows
TOUCHED_FILL = 16  # int32 columns of the -1 tile that clears a core's touched-row list (128 x 16 rows per DMA)
FINAL_SUM_GROUP = 8  # row tiles of the final sum whose row lists load and combine together (two groups in turn)
FINAL_SUM_FIRST_GROUP = 2  # row tiles of the final sum's first group (short: its lists land soon after the barrier)
# parts of the final sum's row lists per row tile: both cores' entries and the rows both touched; after the barrier
# the copy adds the rows only core 1 touched, the row numbers and the rows neither touched
FINAL_SUM_LIST_PARTS = {False: 3, True: 6}
TOKEN_TILE = PARTITIONS  # tokens per gather / down-projection tile
# nc_matmul streams max(64, N) moving columns per pass (nki.isa.nc_matmul page; moegen.perf.costs
# matmul_min_cycles): a tile holding tokens in its first 64 slots only runs gate/up 64 columns wide, half the
# TensorE time of a full tile; below 64 a narrower matmul saves nothing.
NARROW_COLUMNS = 64
CONTRACTION_TILE = PARTITIONS  # rows of a matmul operand (H for gate/up, I for down)


@dataclass(frozen=True, kw_only=True)
class CtePlan(KernelPlan):
    """Everything a cte kernel needs, as plain numbers.

    Tiles are (offset, size) pairs. `i_*` ranges are relative to this core's share of I
    (shard=intermediate at LNC=2 gives each core I_CORE columns starting at core * (I_TP - I_CORE);
    I_CORE = I_TP / 2 rounded up to 16, the shares overlapping in i_overlap columns).
    """

    # layer
    hidden: int
    intermediate: int  # I_TP
    experts: int  # E_L (local experts: the kernel's weights and block_to_expert ids)
    ep: int  # expert-parallel ranks: E_L = global_experts / ep (the host builds this rank's blocks)
    global_experts: int  # E, the router's experts
    top_k: int
    dtype: str
    out_dtype: str
    weight_dtype: str  # dtype of the weights in HBM (fp8 when quantized)
    # variant
    shard: str
    distribute: str  # shard=block at lnc=2: 'interleaved' | 'halves'
    hybrid: bool
    dropping: bool
    block: int
    accumulate: bool
    pad_skip: bool
    checkpoint: bool
    resident_weights: bool
    reuse_weights: bool
    skip_padding_tiles: bool  # 128-slot tiles holding only padding skip their work (a 0/1 runtime trip count)
    skip_empty_weights: bool  # a block holding no token skips its streamed weight loads (out-of-bounds expert)
    block_slots: int  # copies of the per-block metadata tiles: 2 in static block loops (blocks alternate), else 1
    # copies of the block's token and output row id tiles: 3 in pipelined static loops, so the block after an empty
    # block (which runs nothing) fills its own copy while the block before the empty one still writes its output rows
    # with its ids; else block_slots
    row_id_slots: int
    x_psum_slots: int  # PSUM banks of the token transposes (groups of four alternate): 2, or 1 when exchanging
    x_psum_groups_per_bank: int  # groups of four transposes in flight per PSUM bank (2: each bank's two halves)
    x_copy_engines: tuple[str, ...]  # engines evacuating the transposes' PSUM groups, alternating
    down_scale_on_scalar: bool  # one ScalarE activation: y_out = round(down PSUM * affinity), no fp32 copy
    # Static block loops (streamed weights): the next block starts inside this one
    out_prefetch: bool  # accumulating: a down chunk's output rows (every token tile) are read one chunk ahead
    serpentine: bool  # pipelined: consecutive blocks run weight chunks in opposite orders (reuse on a repeated expert)
    pipeline_blocks: bool  # metadata, first gathers and weights of a block start in the previous one
    stream_depth: int  # copies each prefetched chunk rotates through (streamed weights, read-ahead output rows)
    zero_in_first_block: bool  # the accumulator's zero fill goes out between the first block's gate/up weight loads
    # pipelined static loops: a block runs the next block's only token tile as one more tile of its own weight passes
    # when that block has the same expert and at most 128 tokens (the next block then runs nothing, loads nothing)
    absorb_tail: bool = False
    # (column offset, columns) per DMA of an in-block token-row gather: pieces let the transposes start on the first
    gather_pieces: tuple[tuple[int, int], ...] = ()  # (empty: one DMA of whole rows)
    # pipelined serpentine loops: a core's first block (the kernel's head: no previous block to overlap) loads the gate/up
    # chunk it runs first before the other of its first two, which goes out after the block's token-row gathers (the
    # later blocks load that other chunk first, when they start inside the previous block)
    head_chunk_first: bool = False
    # Hybrid-loop pipelining (one program for every block, so the next block's metadata shares this block's tiles):
    weight_dma_tiles: int = 0  # resident weights: contraction tiles per weight DMA (0: one DMA per tensor)
    output_dma_add: bool = False  # accumulate into the output rows with dma_compute (scatter read-modify-write)
    down_ids_copy: bool = False  # the down phase reads its own copy of the output row ids (made before it)
    metadata_prefetch: bool = False  # each block DMAs the next block's ids and expert into *_next tiles
    down_whole_rows: bool = False  # per token tile all output columns, then one dma_compute of whole rows
    gather_prefetch: bool = False  # each block gathers the next block's token rows (one x_rows tile per token tile)
    # hybrid gathers move only the real rows: padding slots (id T) get id T + 1, out of bounds, and oob_mode=skip
    # leaves their x_rows rows as they were (zeroed once before the loop, later an earlier block's finite rows)
    gather_real_rows: bool = False
    # narrow tiles: with padding tiles, a tile whose slots narrow_columns.. are padding runs its gate/up matmuls and
    # their epilogue narrow_columns wide (two runtime trip counts per tile); 0: off (MX kernels: nc_matmul_mx)
    narrow_columns: int = 0
    # resident weights with reuse: each block computes the next block's weight_expert (GpSimd), so the next block's
    # weight DMAs wait only for this block's matmuls on their buffer, not for the in-order VectorE metadata chain
    weight_expert_ahead: bool = False
    verify_tokens: int
    # tiling
    token_tiles: int  # B / 128
    token_chunks: tuple[tuple[int, int], ...]  # gate/up moving chunks of a block (the 128-slot tiles when skipping)
    h_tiles: tuple[tuple[int, int], ...]  # contraction tiles over H
    h_full_tiles: int  # number of full 128-row H tiles (a tail tile, if any, is h_tiles[-1])
    i_core: int  # I per core
    i_overlap: int  # shard=intermediate with I_TP / 2 not a multiple of 16: columns both cores compute
    i_tiles: tuple[tuple[int, int], ...]  # intermediate tiles of this core's I share
    i_full_tiles: int
    gate_up_chunks: tuple[tuple[int, int, int, int], ...]  # (I offset, columns, first tile, tiles) per weight load
    # resident weights in parts of H tiles (first H tile, tiles) per load, whole rows; () = parts of I (gate_up_chunks)
    gate_up_h_parts: tuple[tuple[int, int], ...] = ()
    gate_up_chunk_cols: int  # widest chunk in I columns (buffer width)
    h_out: int  # output columns this core finishes (H, or H / 2 for shard=intermediate at LNC=2)
    down_chunks: tuple[tuple[int, int], ...]  # output column chunks (<= 512) within this core's H share
    down_cols: int  # widest output column chunk
    zero_columns: int  # width of the zero tile that clears output rows
    max_tokens: int  # T per call the buffers are sized for
    exchange: bool  # shard=intermediate at LNC=2: partial down projections go through sendrecv
    # epilogue: the shared expert-MLP plan (activation steps, clamps, +1, dequant, affinity scale)
    mlp: ExpertMLPPlan
    zero_output: bool  # zero-fill out before the blocks (accumulation, or dropped tokens never written)
    partial_output: bool  # shard=block at LNC=2 with accumulation: each core accumulates into its own copy
    # partial_output in a static loop: core 0 accumulates into out itself (clearing rows at first touch), core 1 into
    # one partial-sum buffer and writes the rows core 0 never touches before the barrier; each core records the rows
    # its blocks touch, and after the barrier only the rows both touched are summed
    final_sum_touched: bool = False
    # with tail tiles (an absorbed tile's rows go to the other core than its block's): core 1 writes the rows core 0
    # never touched after the barrier, the two cores taking every other 128-row tile, read from core 0's row list
    copy_after_barrier: bool = False
    per_core_output: bool  # out is [rows, 2, H], core c's partial sums in [:, c, :], not added by the kernel
    shared: FusedSharedPlan | None = None  # the layer's shared experts, fused (templates/common/shared_fused.j2)
    # MX variants (trn3, moegen/plan/cte_mx.py): the weights' slabs, and (first I slab, count) per core
    mx: MxWeightsPlan | None = None
    mx_core_slabs: tuple[tuple[int, int], ...] = ()

    @property
    def touched_fill(self) -> int:
        """int32 columns of the -1 tile that clears a core's touched-row list (final_sum_touched)."""
        return TOUCHED_FILL

    @property
    def final_sum_group(self) -> int:
        """Row tiles of the final sum whose row lists load and combine together (final_sum_touched)."""
        return FINAL_SUM_GROUP

    @property
    def final_sum_first_group(self) -> int:
        """Row tiles of the final sum's first group (final_sum_touched; the later groups load a group ahead)."""
        return FINAL_SUM_FIRST_GROUP

    @property
    def final_sum_list_parts(self) -> int:
        """[128, final_sum_group] int32 parts of the final sum's row lists per group (final_sum_touched)."""
        return FINAL_SUM_LIST_PARTS[self.copy_after_barrier]

    @property
    def quantized(self) -> bool:
        return self.mlp.weight_quant != "none"

    @property
    def gate_scale(self) -> str:
        """'none' | 'row' | 'static' | 'mx': the dequant scale layout the kernel loads ('mx': E8M0 block
        scales, applied inside nc_matmul_mx)."""
        return {"none": "none", "fp8_row": "row", "fp8_static": "static", "mxfp4": "mx", "mxfp8": "mx"}[
            self.mlp.weight_quant
        ]

    @property
    def gate_up_first_loads(self) -> tuple[int, ...]:
        """Gate/up chunk positions a block loads before its first chunk's matmuls (pipelined blocks: the
        first two were loaded during the previous block)."""
        return tuple(range(2 if self.pipeline_blocks else 0, self.stream_depth))

    @property
    def down_first_loads(self) -> tuple[int, ...]:
        """Down chunk positions loaded before the first down chunk's matmuls (pipelined blocks: all of them
        during the last gate/up chunk)."""
        return () if self.pipeline_blocks else tuple(range(self.stream_depth))

    @property
    def affinity(self) -> str:
        return self.mlp.affinity_scale

    @property
    def clamped(self) -> bool:
        return self.mlp.has_gate_clamp or self.mlp.has_up_clamp

    @property
    def argument_ranges(self) -> tuple[tuple[str, int, int | tuple[str, int]], ...]:
        """block_to_expert indexes the weights; token_position_to_id the rows of hidden_states (and of the
        affinity table), -1 allowed only where padding is skipped; conditions are flags."""
        ranges = (
            ("token_position_to_id", -1 if self.pad_skip else 0, ("hidden_states", 0)),
            ("block_to_expert", 0, self.experts),
        )
        return ranges + ((("conditions", 0, 2),) if self.hybrid else ())

    @property
    def arguments(self) -> tuple[str, ...]:
        """The kernel's parameters: the seed's tensor arguments in its order, those this variant reads."""
        names = [
            "hidden_states",
            "expert_affinities_masked",
            "gate_up_proj_weight",
            "down_proj_weight",
            "token_position_to_id",
            "block_to_expert",
        ]
        if self.hybrid:
            names.append("conditions")
        if self.mlp.gate_up_bias:
            names.append("gate_and_up_proj_bias")
        if self.mlp.down_bias:
            names.append("down_proj_bias")
        if self.quantized:
            names += ["gate_up_proj_scale", "down_proj_scale"]
        if self.shared:
            names += self.shared.argument_names
        return tuple(names)

    @property
    def variant_label(self) -> str:
        """The seed's name of this variant."""
        name = {"block": "shard_on_block", "intermediate": "shard_on_i"}[self.shard] + ("_mx" if self.mx else "")
        return name + ("_hybrid" if self.hybrid else "") + ("_dropping" if self.dropping else "")

    @property
    def summary(self) -> str:
        scale = {"pre": "PRE_SCALE", "post": "POST_SCALE", "none": "NO_SCALE"}[self.affinity]
        quant = {
            "none": self.weight_dtype,
            "row": "fp8 row-dequantized",
            "static": "fp8 static-dequantized",
            "mx": f"{self.weight_dtype} (E8M0 block scales, activations quantized on chip to MXFP8)",
        }
        return (
            f"MoE CTE {self.variant_label} (LNC={self.lnc}), {quant[self.gate_scale]} weights, "
            f"{self.mlp.activation}, {scale}, {'top-K accumulate' if self.accumulate else 'top-1 overwrite'}."
        )

    @property
    def pseudocode(self) -> tuple[str, ...]:
        mine = "b = c, c+2, ..." if self.distribute == "interleaved" else "the c-th half of range(N)"
        blocks = {
            ("block", 2): f"for b in blocks of this core (core c: {mine}):",
            ("intermediate", 2): "for b in range(N):  # each core computes its half of I",
        }.get((self.shard, self.lnc), "for b in range(N):")
        if self.hybrid:
            blocks = "for b in range(ceil(T*K/B)), then nl.fori_loop(.., sum(conditions)):"
            if (self.shard, self.lnc) == ("block", 2):
                blocks = "for b in range(c, ceil(T*K/B), 2), then nl.fori_loop(.., sum(conditions), step=2):"
        lines = [
            blocks,
            "    ids = token_position_to_id[b*B:(b+1)*B]; e = " + ("b" if self.dropping else "block_to_expert[b]"),
            *(
                [
                    "    (tail: if block b+1 has expert e and tokens in its first 128 slots only, and b in slots 128..255,",
                    "     ids also takes those 128 slots and block b+1 runs nothing)",
                ]
                if self.absorb_tail
                else []
            ),
            "    x = hidden_states[ids]" + ("  (-1 slots skipped: zero rows)" if self.pad_skip else ""),
        ]
        if self.affinity == "pre":
            lines.append("    x = x * affinity[ids, e]")
        dq = " * scale[e]" if self.gate_scale in ("row", "static") else ""
        if self.mx:
            lines.append(
                "    x = mxfp8(x) (quantize_mx per 128-token tile); W*[e] are MX weights with E8M0 block scales"
            )
        mlp = self.mlp
        if not mlp.gated:
            lines.append(f"    u = x @ Wu[e]{dq}" + (" + bu[e]" if mlp.gate_up_bias else "") + "  (not gated: no gate)")
            if self.clamped:
                lines.append(f"    u = clamp(u, {mlp.gate_lower}, {mlp.gate_upper})")
            lines.append(f"    h = {mlp.activation}(u)")
        else:
            lines += [
                f"    g, u = x @ Wg[e]{dq}"
                + (" + bg[e]" if mlp.gate_up_bias else "")
                + f", x @ Wu[e]{dq}"
                + (" + bu[e]" if mlp.gate_up_bias else "")
                + (f" + {mlp.up_constant:g}" if mlp.up_constant else "")
            ]
            if self.clamped:
                lines.append(
                    f"    g = clamp(g, {mlp.gate_lower}, {mlp.gate_upper}); u = clamp(u, {mlp.up_lower}, {mlp.up_upper})"
                )
            lines.append(f"    h = {mlp.activation}(g) * u")
        if self.mx:
            lines.append("    h = mxfp8(h)")
        if self.exchange:
            lines.append("    y = h[:, my I half] @ Wd[e][my I half] + the other core's partial (sendrecv)")
        else:
            lines.append("    y = h @ Wd[e]" + dq + (" + bd[e]" if mlp.down_bias else ""))
        if self.checkpoint:
            saved = "[g, u]^T" if mlp.gated else "[u]^T"
            lines.append(f"    gate_up_activations_T[b] = {saved} (after clamp); down_activations[b] = y")
        scaled = "y * affinity[ids, e]" if self.affinity == "post" else "y"
        lines.append(f"    out[ids] {'+=' if self.accumulate else '='} round_{self.out_dtype}({scaled})")
        if self.per_core_output:
            lines[-1] = lines[-1].replace("out[ids]", "out[ids, core]")
        if self.final_sum_touched:
            lines[-1] = lines[-1].replace("out[ids] +=", "acc[ids] +=")
            lines.append("(acc: out on core 0, partial on core 1)")
            if self.copy_after_barrier:
                lines.append("core barrier; then out[r] = partial[r] for the rows r only core 1 touched, out[r] = 0")
                lines.append("for the rows neither touched, out[r] += partial[r] for the rows r both cores touched")
            else:
                lines.append("core 1, rows r core 0 never touches: out[r] = partial[r]; then a core barrier")
                lines.append("out[r] += partial[r] for the rows r both cores touched")
        elif self.partial_output:
            lines.append("out = partial(core 0) + partial(core 1)")
        if self.shared:
            gate = "shared_gate_values[r, s] * " if self.shared.gate else ""
            lines.append(
                f"for r in 128-row tiles of the T tokens, s in range(S): out[r] += round({gate}shared_s(x[r]))"
            )
        if not self.pad_skip:
            lines.append("out[T] = 0")
        return tuple(lines)


def _tiles(total: int, size: int) -> tuple[tuple[int, int], ...]:
    return tuple((start, min(size, total - start)) for start in range(0, total, size))


def _layer_problems(layer: Layer, variant: Variant) -> list[tuple[str | None, str]]:
    problems: list[tuple[str | None, str]] = []
    dims = layer.dims
    if layer.dtype not in ("bf16", "fp16"):
        problems.append(
            (
                None,
                f"dtype {layer.dtype}: cte kernels run their matmuls in bf16 or fp16 "
                "(fp32 operands are 4x slower on TensorE and the seed accepts bf16/fp16 only)",
            )
        )
    if layer.quant.activations != "none" and not (cte_mx.is_mx(layer) and layer.quant.activations == "mxfp8"):
        problems.append(
            (
                None,
                f"quant activations={layer.quant.activations}: cte kernels keep the matmul inputs "
                f"in {layer.dtype}; static fp8 input quantization is not generated for cte (the "
                "moe_cte seed's QuantizationConfig carries weight scales only)",
            )
        )
    if dims.hidden % 16 or not 128 <= dims.hidden <= 8192:
        problems.append(
            (
                None,
                f"hidden {dims.hidden}: cte kernels take H from 128 to 8192 in multiples of 16 "
                "(a gathered token row and its transpose must fit a 128-partition SBUF tile)",
            )
        )
    if dims.intermediate_tp % 16:
        problems.append(
            (
                None,
                f"I_TP {dims.intermediate_tp}: must be a multiple of 16 (DMA rows of the "
                "weights and the checkpoint layout [N, 2, I, B])",
            )
        )
    if not 2 <= dims.local_experts <= 512:
        problems.append((None, f"{dims.local_experts} local experts: cte kernels take 2 to 512"))
    return problems


def _variant_problems(layer: Layer, variant: Variant) -> list[tuple[str | None, str]]:
    problems: list[tuple[str | None, str]] = []
    lnc, shard = variant["lnc"], variant["shard"]
    if variant["loop"] == "hybrid":
        if shard == "block" and lnc == 2 and variant["distribute"] == "halves":
            problems.append(
                (
                    "distribute",
                    "distribute=halves cannot take loop=hybrid: the halves of the blocks that hold tokens are "
                    "known only at run time; loop=hybrid at lnc=2 splits blocks interleaved (core c: c, c+2, ...)",
                )
            )
        if variant.options.get("dropping"):
            problems.append(
                (
                    "loop",
                    "loop=hybrid cannot drop tokens: the dropping layout has one block per expert "
                    "in expert order, so its empty blocks are not at the end where a runtime trip "
                    "count could skip them",
                )
            )
    if "distribute" in variant.option_spans and not (shard == "block" and lnc == 2):
        problems.append(
            ("distribute", "distribute splits blocks between the two cores: it needs shard=block and lnc=2")
        )
    if variant["update"] == "overwrite" and layer.dims.top_k > 1:
        problems.append(
            (
                "update",
                f"update=overwrite needs top_k 1 (top_k is {layer.dims.top_k}): a token's "
                "results from its several experts must be added",
            )
        )
    accumulates = variant["update"] == "accumulate" or (variant["update"] == "auto" and layer.dims.top_k > 1)
    if variant["output"] == "per_core" and not (shard == "block" and accumulates):
        problems.append(
            (
                "output",
                "output=per_core returns each core's accumulated partial sums: it needs shard=block and "
                "update=accumulate (top_k > 1)",
            )
        )
    if shard == "intermediate" and lnc == 2 and layer.dims.intermediate_tp % 32 and variant.options.get("checkpoint"):
        problems.append(
            (
                "checkpoint",
                f"checkpoint with shard=intermediate at lnc=2 needs I_TP a multiple of 32 (I_TP is "
                f"{layer.dims.intermediate_tp}): the cores' I shares overlap in 16 columns, and both cores "
                "would write those columns of gate_up_activations_T (the two cores may not write the same "
                "HBM bytes without a barrier)",
            )
        )
    if variant.options.get("dropping") and layer.dims.ep > 1:
        problems.append(
            (
                "dropping",
                f"dropping with ep {layer.dims.ep}: the token-dropping layout of one rank's experts is not built "
                "by moegen.blocking (only the dropless one, build_blocks_local)",
            )
        )
    if shard == "intermediate" and lnc == 2 and layer.dims.hidden % 32:
        problems.append(
            (
                "shard",
                f"shard=intermediate at lnc=2 needs H a multiple of 32: each core finishes half "
                f"of the output columns (H is {layer.dims.hidden})",
            )
        )
    return problems


def copies_after_barrier(final_sum_touched: bool, extra_tiles: int) -> bool:
    """Whether the rows core 0 never touched are copied into out after the barrier (plan.copy_after_barrier): with
    tail tiles (extra_tiles, the absorbed tile) an absorbed tile's rows go to the other core than its block's, so
    core 1 cannot list core 0's rows from the block ids before the barrier."""
    return final_sum_touched and extra_tiles > 0


def _buffers(
    *,
    h: int,
    i_core: int,
    b: int,
    dt: int,
    wdt: int,
    out_dt: int,
    chunk_cols: int,
    weight_count: int,
    down_chunk: int,
    resident: bool,
    h_out: int,
    exchange: bool,
    mlp: ExpertMLPPlan,
    checkpoint: bool,
    accumulate: bool,
    hybrid: bool,
    hybrid_blocks: int,
    skip_tiles: bool,
    out_prefetch: bool,
    scale_on_scalar: bool,
    whole_rows: bool,
    x_psum_groups: int,
    hybrid_pipelined: bool,
    gather_real_rows: bool,
    static_pipelined: bool = False,
    extra_tiles: int = 0,
    final_sum_touched: bool = False,
) -> tuple[Buffer, ...]:
    """Every on-chip allocation of one core, per partition (extra_tiles: token tiles a block may run beyond its
    own B slots, the next block's absorbed tile)."""
    n_h, n_i, n_t = ceil_div(h, CONTRACTION_TILE), ceil_div(i_core, CONTRACTION_TILE), b // TOKEN_TILE + extra_tiles
    chunk = TOKEN_TILE if skip_tiles else min(b, MATMUL_MOVING_FREE_MAX)  # gate/up moving chunk
    col = min(h_out, down_chunk)
    # resident: all H columns (shard=intermediate needs the other core's columns too); streamed: one
    # chunk, and a second for the other core's columns when partial projections are exchanged
    down_cols = h if resident else col * (2 if exchange else 1)
    slots = 1 if hybrid else 2  # per-block metadata: consecutive blocks of a static loop alternate copies
    id_slots = 3 if static_pipelined and not resident else slots  # row ids: plan.row_id_slots
    sb = [
        Buffer("token_ids", "sbuf", PARTITIONS, 4 * n_t, id_slots),
        Buffer("out_ids", "sbuf", PARTITIONS, 4 * n_t, 2 * id_slots),  # and the padding shift
        Buffer("expert_id", "sbuf", 1, 4, 4 * slots),  # expert, previous expert, same-expert flag, weight expert
        Buffer("x_rows", "sbuf", PARTITIONS, dt * h, max(2, n_t) if hybrid_pipelined else 2),  # hybrid: one per tile
        Buffer("xT", "sbuf", PARTITIONS, dt * n_h * n_t * TOKEN_TILE),
        Buffer("w_gate_up", "sbuf", PARTITIONS, wdt * n_h * mlp.projections * chunk_cols, weight_count),
        Buffer("gate_up_act_scratch", "sbuf", PARTITIONS, 4 * chunk, 2 * (mlp.projections + 1)),  # two steps
        Buffer("hT", "sbuf", PARTITIONS, dt * n_i * n_t * TOKEN_TILE),
        Buffer("w_down", "sbuf", PARTITIONS, wdt * n_i * down_cols, weight_count),
        *([] if scale_on_scalar else [Buffer("y_sb", "sbuf", PARTITIONS, 4 * col, 2)]),  # token tiles alternate
        # (whole rows: [128, H_OUT] per token tile)
        Buffer("y_out", "sbuf", PARTITIONS, out_dt * (h_out if whole_rows else col), 2),
        Buffer("zero_rows", "sbuf", PARTITIONS, out_dt * min(h_out, ZERO_COLUMNS_MAX)),
    ]
    if mlp.affinity_scale != "none":
        sb += [
            Buffer("expert_bcast", "sbuf", PARTITIONS, 4, slots),
            Buffer("affinity_index", "sbuf", PARTITIONS, 4 * n_t, slots),
            Buffer("affinity", "sbuf", PARTITIONS, 4 * n_t, slots),
        ]
    if out_prefetch:  # a chunk's rows of every token tile, as many chunks as the weights' copies (read ahead)
        sb.append(Buffer("out_rows", "sbuf", PARTITIONS, out_dt * n_t * col, max(2, weight_count)))
    elif accumulate and not hybrid_pipelined:  # hybrid: dma_compute adds y_out into the rows in HBM
        sb.append(Buffer("out_rows", "sbuf", PARTITIONS, out_dt * col, 2))
    if hybrid_pipelined:
        sb += [
            Buffer("out_ids_down", "sbuf", PARTITIONS, 4 * n_t),  # the down phase's copy of the row ids
            # the next block's prefetched metadata: token ids, expert broadcast; slot ids and expert on one partition
            Buffer("metadata_next", "sbuf", PARTITIONS, 4 * n_t + 4),
            Buffer("metadata_next_row", "sbuf", 1, 4 * b + 4),
        ]
    if static_pipelined and not resident:
        # the pipelined static loop's GpSimd metadata operands: padding id, -(T + 1) and E per slot (and 1), the expert
        # on every slot (a copy per block); an empty block's redirect flag and expert and the first gate/up chunks'
        # address (a copy per block each), the following block's first slot flag
        sb += [
            Buffer("metadata_constants", "sbuf", PARTITIONS, 4 * n_t, 3),
            Buffer("expert_wide", "sbuf", PARTITIONS, 4 * n_t, slots),
            Buffer("redirect", "sbuf", 1, 4, 3 * slots + 2),
        ]
    if gather_real_rows:  # the next block's gather ids (padding out of bounds), its padding flags, the padding id T
        sb.append(Buffer("gather_ids", "sbuf", PARTITIONS, 4 * n_t, 3))
    if mlp.weight_quant == "fp8_row":
        sb += [
            Buffer("gate_up_scale", "sbuf", PARTITIONS, 4 * n_i * mlp.projections),
            Buffer("down_scale", "sbuf", PARTITIONS, 4 * h_out),
        ]
    elif mlp.weight_quant == "fp8_static":
        sb += [
            Buffer("gate_up_scale", "sbuf", PARTITIONS, 4 * mlp.projections),
            Buffer("down_scale", "sbuf", PARTITIONS, 4),
        ]
    if mlp.gate_up_bias:
        sb.append(Buffer("gate_up_bias", "sbuf", PARTITIONS, 4 * n_i * mlp.projections))
    if mlp.down_bias:
        sb.append(Buffer("down_bias", "sbuf", PARTITIONS, 4 * h_out))
    if exchange:
        sb += [Buffer("partial_send", "sbuf", PARTITIONS, 4 * col), Buffer("partial_recv", "sbuf", PARTITIONS, 4 * col)]
    if checkpoint:
        sb += [
            Buffer("gate_up_checkpoint", "sbuf", PARTITIONS, out_dt * chunk),
            Buffer("down_checkpoint", "sbuf", PARTITIONS, out_dt * col),
        ]
    if skip_tiles:
        # the block's slot ids (then, in place, their token flags) on one partition [1, B], the per-tile flags
        sb.append(Buffer("padding_flags", "sbuf", 1, 4 * (b + n_t), slots))
    if extra_tiles:  # the neighbour blocks' expert and tile flags, the absorb flags (scratch, and one per block)
        sb.append(Buffer("absorb_flags", "sbuf", 1, 4 * (n_t + 4) + 4 * slots + 4 * TOKEN_TILE))  # + block - 1's slots
    if final_sum_touched:
        # the -1 and row-number fills of the row lists; a block's ids before it (then its first-touch ids) and core
        # 0's block ids (core 1)
        sb += [
            Buffer("row_list_fill", "sbuf", PARTITIONS, 4 * TOUCHED_FILL, 2),
            # and a tile of int32 ones; with tail tiles the ids of the tiles a block runs instead of core 0's block ids
            Buffer("row_list_ids", "sbuf", PARTITIONS, 4 * n_t, 4),
            # the final sum's row lists, FINAL_SUM_GROUP row tiles at a time, two groups in turn
            Buffer(
                "sum_lists",
                "sbuf",
                PARTITIONS,
                4 * FINAL_SUM_GROUP * FINAL_SUM_LIST_PARTS[copies_after_barrier(final_sum_touched, extra_tiles)],
                2,
            ),
        ]
    if hybrid:
        # conditions [N+1] on one partition, N at most the dropless budget of T_MAX tokens
        sb += [Buffer("conditions", "sbuf", 1, 4 * (hybrid_blocks + 1)), Buffer("real_blocks", "sbuf", 1, 4)]
    ps = [
        Buffer("gate_up_psum", "psum", PARTITIONS, 4 * chunk, 2 * mlp.projections),  # gate (and up), double-buffered
        # x_psum_groups groups of four 128x128 transposes per bank, the groups in turn; two banks (one when
        # exchanging: its PSUM goes to other_psum)
        Buffer("transpose_psum", "psum", PARTITIONS, dt * 4 * TOKEN_TILE * x_psum_groups, 1 if exchange else 2),
        Buffer("down_psum", "psum", PARTITIONS, 4 * col, 3 if exchange else 2),  # two alternating (+ the other core's)
    ]
    return tuple(sb + ps)


def plan(layer: Layer, variant: Variant) -> CtePlan:
    """The routed plan, then its `shared` option resolved (moegen/plan/shared_fusion.py)."""
    variant, rules = _auto_by_rule(variant)
    routed = _routed_plan(layer, variant)
    if rules:
        routed = replace(routed, decisions=(*rules, *routed.decisions))
    return fuse_into_cte(kernel_layer(layer, variant), variant.options, routed)


def _auto_by_rule(variant: Variant) -> tuple[Variant, tuple[tuple[str, str], ...]]:
    """Options still at auto take the rule's value (a `tuned` kernel's record has replaced them before)."""
    rules = {name: value for name, value in AUTO_RULES.items() if variant.options.get(name) == "auto"}
    if not rules:
        return variant, ()
    spelled = ", ".join(f"{name}={value}" for name, value in rules.items())
    decision = ("auto by rule", f"{spelled} (untuned: `tuned` takes the timeline model's choice from moegen tune)")
    return replace(variant, options={**variant.options, **rules}), (decision,)


def _routed_plan(layer: Layer, variant: Variant) -> CtePlan:
    global_experts = layer.dims.experts
    layer = kernel_layer(layer, variant)
    mx = cte_mx.is_mx(layer)
    problems = _layer_problems(layer, variant) + _variant_problems(layer, variant) + cte_mx.problems(layer, variant)
    if mx:
        problems += [
            (
                name,
                f"{name}={variant[name]}: MX weights stream one I slab per load (moegen/plan/cte_mx.py); "
                "the streamed chunk options apply to bf16 and fp8 weights",
            )
            for name in STREAM_OPTIONS
            if variant[name] != "auto"
        ]
    try:
        mlp = expert_mlp_plan(layer, mx=mx)
    except PlanError as error:
        problems = error.problems + problems
    if problems:
        raise PlanError(*problems)
    dims = layer.dims
    lnc, shard, b = variant["lnc"], variant["shard"], variant["block"]
    h, i_tp, k = dims.hidden, dims.intermediate_tp, dims.top_k
    exchange = shard == "intermediate" and lnc == 2
    # Each core takes I_CORE = I_TP / 2 rounded up to 16 (the weights' DMA row multiple): with I_TP an odd
    # multiple of 16 (gpt-oss at TP 4: 720) the shares [0, I_CORE) and [I_TP - I_CORE, I_TP) overlap in
    # 16 columns, which core 1 zeroes in h so that the down projection counts them once.
    i_core = ceil_div(i_tp, 32) * 16 if exchange else i_tp
    i_overlap = 2 * i_core - i_tp if exchange else 0
    h_out = h // 2 if exchange else h
    accumulate = variant["update"] == "accumulate" or (variant["update"] == "auto" and k > 1)
    dropping = bool(variant.options.get("dropping"))
    pad_skip = variant["padding"] == "skip"
    checkpoint = bool(variant.options.get("checkpoint"))
    hybrid = variant["loop"] == "hybrid"
    dt, out_dt = DTYPE_BYTES[layer.dtype], DTYPE_BYTES[layer.out_dtype]
    weight_dtype = mlp.weight_dtype
    wdt = 1 if mx else DTYPE_BYTES[weight_dtype]  # MX: the bf16 sizing below is replaced by cte_mx.specialize
    i_tiles = _tiles(i_core, CONTRACTION_TILE)
    capacity = SBUF_BYTES["trn2"] - SBUF_RESERVED
    hybrid_blocks = ceil_div(T_MAX * k - (dims.local_experts - 1), b) + dims.local_experts - 1
    # The hybrid body is one program for every block: its per-block tiles have one copy, so the next block's
    # metadata waits for the last reader of this block's. Keep the block's tail off VectorE and those tiles: the
    # output rows are updated by dma_compute (read-modify-write inside the DMA), the down phase reads its own copy
    # of the row ids, and the next block's metadata and token rows are fetched one block ahead.
    hybrid_pipelined = hybrid and not mx
    # The hybrid gathers skip padding slots (id T made out of bounds) instead of reading the zero row T for them;
    # with padding=skip the ids are already -1 and skipped. Not with checkpointing: its activations of every slot
    # are outputs, a padding slot's computed from the zero row.
    gather_real_rows = hybrid_pipelined and not pad_skip and not checkpoint
    # ScalarE evacuates the down PSUM with the affinity scale (any loop), unless an epilogue step sits between
    scale_on_scalar = not (exchange or checkpoint or mx or mlp.down_bias) and mlp.weight_quant not in (
        "fp8_row",
        "fp8_static",
    )
    whole_rows_possible = hybrid_pipelined and scale_on_scalar and accumulate and mlp.affinity_scale in ("post", "none")
    # Static loops with partial sums at LNC 2: core 0 accumulates into out, core 1 into a partial-sum buffer, and the
    # final sum after the barrier moves only the rows both cores' blocks touched (the others move no bytes). With tail
    # tiles an absorbed tile's rows go to the row list of the core that runs it (blocks alternate between the cores),
    # and core 1 notes which tiles moved when it lists the rows core 0 never touches.
    # Untuned, tail=auto takes the tail tiles where they can be built; a `tuned` kernel takes `tail` from the model
    # (moegen tune's tail axis: which is faster depends on the run-time routing and the shape; docs/faster_prefill.md).
    tail_tiles_possible = variant["weights"] != "resident" and _absorbs_tails(
        variant, b, hybrid=hybrid, mx=mx, exchange=exchange
    )
    # (the rows both cores touched are added from SBUF through a token-row tile: the output dtype must be its dtype)
    final_sum_touched = (
        shard == "block"
        and lnc == 2
        and accumulate
        and variant["output"] != "per_core"
        and not (hybrid or mx)
        and layer.out_dtype == layer.dtype
    )
    common = dict(
        h=h,
        i_core=i_core,
        b=b,
        dt=dt,
        wdt=wdt,
        out_dt=out_dt,
        h_out=h_out,
        exchange=exchange,
        hybrid_blocks=hybrid_blocks,
        mlp=mlp,
        checkpoint=checkpoint,
        accumulate=accumulate,
        hybrid=hybrid,
        skip_tiles=not checkpoint,
        # static loops: the output rows read a chunk ahead (the hybrid body adds them by dma_compute instead)
        out_prefetch=accumulate and not (exchange or mx or hybrid),
        scale_on_scalar=scale_on_scalar,
        x_psum_groups=1 if mx else 2,
        hybrid_pipelined=hybrid_pipelined,
        gather_real_rows=gather_real_rows,
        final_sum_touched=final_sum_touched,
        static_pipelined=not (hybrid or mx),  # with streamed weights: the pipelined static block loop
    )

    # Weights: resident (whole expert, reused across blocks of the same expert) or streamed in
    # chunks of I tiles, the widest chunk that fits SBUF (two buffers, so loads overlap compute).
    decisions = list(mlp.decisions)
    if dims.ep > 1:
        decisions.append(
            (
                "expert parallelism",
                f"ep {dims.ep}: this rank holds E_L = {dims.local_experts} of the {global_experts} experts; the host "
                "builds blocks of the pairs routed to them only (moegen.blocking.build_blocks_local: local ids, the "
                "rank's window of the affinities), so tokens routed elsewhere are in no block and add nothing",
            )
        )
    if i_overlap:
        decisions.append(
            (
                "uneven intermediate split",
                f"I_TP {i_tp} / 2 = {i_tp / 2:g} is not a multiple of 16 (the weights' DMA rows): core 0 "
                f"computes I columns [0, {i_core}), core 1 [{i_tp - i_core}, {i_tp}); core 1 zeroes its h "
                f"rows of the {i_overlap} shared columns so the down projection adds them once "
                f"({i_overlap} of {i_tp} columns computed twice, {100 * i_overlap / i_tp:.1f}% more gate/up work)",
            )
        )
    full_chunk = MATMUL_MOVING_FREE_MAX
    resident_buffers = _buffers(
        chunk_cols=i_core,
        weight_count=1,
        resident=True,
        down_chunk=full_chunk,
        whole_rows=whole_rows_possible,
        **common,
    )
    fits_resident = sum(x.total_per_partition for x in resident_buffers if x.memory == "sbuf") <= capacity
    want = variant["weights"]
    if want == "resident" and not fits_resident:
        need = sum(x.total_per_partition for x in resident_buffers if x.memory == "sbuf")
        raise PlanError(
            (
                "weights",
                f"weights=resident: one expert's weights with the block's buffers need {need} "
                f"bytes per partition, more than the {capacity} usable on trn2 (use "
                "weights=stream or a smaller block)",
            )
        )
    resident = want == "resident" or (want == "auto" and fits_resident)
    if resident and variant["tail"] == "absorb":
        raise PlanError(
            (
                "tail",
                "tail=absorb runs an expert's tail tile in its previous block's streamed weight passes; this kernel's "
                "weights are resident"
                + ("" if want == "resident" else " (weights=auto: they fit SBUF)")
                + ", so a tail block of a repeated expert already skips their loads: write weights=stream or leave "
                "tail at auto",
            )
        )
    depth = STREAM_DEPTH_RULE  # copies of a prefetched chunk (resident weights: the output rows read ahead)
    streamed_options = [name for name in STREAM_OPTIONS if variant[name] != "auto"]
    if resident and streamed_options:
        raise PlanError(
            *(
                (
                    name,
                    f"{name}={variant[name]} sets how streamed weights are chunked, but this kernel's weights are "
                    + (
                        "resident (weights=resident)"
                        if want == "resident"
                        else "resident (weights=auto: they fit SBUF)"
                    )
                    + ": write weights=stream, or leave it at auto",
                )
                for name in streamed_options
            )
        )
    gate_up_h_parts: tuple[tuple[int, int], ...] = ()
    if resident:
        # hybrid: the gate/up weights in two parts of I tiles, so the next block's load of the first part
        # overlaps this block's matmuls on the second (and its down phase)
        parts = 2 if hybrid_pipelined and len(i_tiles) > 1 else 1
        buffers, chunk_tiles = resident_buffers, ceil_div(len(i_tiles), parts)
        # Parts of H tiles instead: each weight row (PJ x I_CORE elements) moves as one contiguous run, 4x
        # longer than a part's share of I at 2 parts (the DMA cost per run: moegen/perf/costs.py). Every I tile's
        # gate/up sums then stay open in PSUM across the parts, so only for one-tile blocks, plain weights.
        h_tiles_full = h // CONTRACTION_TILE
        if (
            parts > 1
            and not exchange
            and h % CONTRACTION_TILE == 0
            and b == TOKEN_TILE
            and common["skip_tiles"]
            and mlp.weight_quant == "none"
            and not mlp.gate_up_bias
        ):
            half = ceil_div(h_tiles_full, parts)
            gate_up_h_parts = tuple((first, min(half, h_tiles_full - first)) for first in range(0, h_tiles_full, half))
            chunk_tiles = len(i_tiles)
            accumulators = len(i_tiles) * mlp.projections
            buffers = [x for x in buffers if x.name != "gate_up_psum"] + [
                Buffer("gate_up_psum", "psum", PARTITIONS, PSUM_BANK_BYTES, ceil_div(accumulators, 4))
            ]
        detail = (
            f"; gate/up in {len(gate_up_h_parts)} parts of {gate_up_h_parts[0][1]} H tiles (whole rows: runs of "
            f"{mlp.projections * i_core * wdt} B), each loaded before its matmuls; every I tile's sums stay in PSUM "
            "across the parts"
            if gate_up_h_parts
            else f"; gate/up in {parts} parts of {chunk_tiles} I tiles, each loaded before its matmuls"
            if parts > 1
            else ""
        )
        decisions.append(
            ("weights", "resident: the expert's gate/up and down weights fit SBUF with the block buffers" + detail)
        )
    else:
        # Pipelined blocks absorb a same-expert next block of one token tile (a tail): its tile's x^T, h^T and output
        # rows take one more token tile in the block buffers.
        absorb = tail_tiles_possible
        common["extra_tiles"] = 1 if absorb else 0
        try:
            chunk_tiles, full_chunk, depth, buffers = _streamed_chunks(variant, len(i_tiles), capacity, common)
        except PlanError:
            if not absorb or variant["tail"] == "absorb":
                raise
            common["extra_tiles"] = 0  # tail=auto yields to chunk widths the spec sets that fit only without it
            chunk_tiles, full_chunk, depth, buffers = _streamed_chunks(variant, len(i_tiles), capacity, common)
        decisions.append(
            (
                "weights",
                f"streamed in chunks of {chunk_tiles} I tiles and {min(h_out, full_chunk)} output "
                f"columns ({DEPTH_WORDS[depth]}-buffered): "
                + (
                    "asked for by weights=stream"
                    if want == "stream"
                    else "one expert's weights do not fit SBUF with the block buffers"
                )
                + _spec_chunk_note(variant),
            )
        )
    reuse = resident and not dropping
    absorb = not resident and bool(common.get("extra_tiles"))
    # Padding tiles: a 128-slot tile of only padding runs none of its gathers, matmuls or output updates
    # (a runtime trip count of 0 or 1 per tile). Not with checkpointing: its outputs hold every slot.
    skip_tiles = common["skip_tiles"]
    skip_empty = skip_tiles and not resident and not dropping
    if skip_tiles:
        decisions.append(
            (
                "padding tiles",
                "each 128-slot tile's gather, gate/up and down work runs in nl.fori_loop(0, active) with active "
                "(0 or 1: the tile holds a token) loaded into a register, so issued MACs follow the real tokens; "
                "gate/up matmuls move one 128-token tile at a time (TensorE time per token is the same as at 512)"
                + (
                    "; a block holding no token also skips its weight loads (its expert index made out of "
                    "bounds, oob_mode=skip)"
                    if skip_empty
                    else ""
                ),
            )
        )
    narrow_columns = NARROW_COLUMNS if skip_tiles and not mx else 0
    if narrow_columns:
        decisions.append(
            (
                "narrow tiles",
                f"a token tile holding tokens in its first {narrow_columns} slots only (an expert's last tile) runs "
                f"its gate/up matmuls {narrow_columns} columns wide instead of {TOKEN_TILE}: a matmul streams "
                f"max(64, N) moving columns, so such a tile takes half the gate/up TensorE time (two runtime trip "
                f"counts per tile, from each half tile's slot ids: their min, or max with -1 padding)",
            )
        )
    if absorb:
        decisions.append(
            (
                "tail tiles",
                "a block whose next block (in block order) has the same expert and holds at most 128 tokens runs that "
                "block's tile as one more token tile of its own weight passes (the next block then runs no tile and "
                "skips its weight loads), so an expert's last few tokens do not reload its weights; x^T, h^T and the "
                "read-ahead output rows hold one more token tile"
                + (
                    "; the absorbed tile's rows go into the row list of the core that runs it (blocks alternate "
                    "between the cores) and the absorbed block records none, so the final sum follows the tiles"
                    if final_sum_touched
                    else ""
                ),
            )
        )
    if reuse:
        decisions.append(
            (
                "weight reuse",
                "a block whose expert equals the previous block's skips the weight "
                "DMA (its expert index is made out of bounds, oob_mode=skip)",
            )
        )
    pipeline_blocks = not (hybrid or mx or resident)
    # Pipelined static loops gather a block's later token tiles (after the first tiles' transposes free their x_rows)
    # in column pieces of >= 2 KiB runs: the transposes of a tile start when its first piece lands instead of after
    # the whole 128-row gather, which takes longer than the previous tile's transposes.
    gather_pieces = _tiles(h, ceil_div(ceil_div(h, GATHER_PIECES), CONTRACTION_TILE) * CONTRACTION_TILE)
    gather_pieces = gather_pieces if pipeline_blocks and len(gather_pieces) > 1 else ()
    if gather_real_rows:
        decisions.append(
            (
                "token rows",
                "each block gathers the next block's rows of real tokens only: padding slots (id T) get id T + 1, "
                "out of bounds, and oob_mode=skip moves nothing for them; their rows of the x_rows tiles, zeroed "
                "once before the loop, keep an earlier block's finite rows (a transpose on the PE array "
                "multiplies every row by the identity, so a non-finite padding row would reach every token)",
            )
        )
    if gather_pieces:
        decisions.append(
            (
                "token rows",
                f"the gathers of a block's token tiles after the first {min(2, b // TOKEN_TILE)} go out in "
                f"{len(gather_pieces)} column pieces, so a tile's transposes start when its first piece lands",
            )
        )
    if pipeline_blocks:
        decisions.append(
            (
                "block pipeline",
                "three copies of a block's token and output row ids, so the block after an empty block fills its own "
                "while the block before the empty one still writes its output rows"
                + (
                    "; a core's first block loads the gate/up chunk it runs first, then its token rows, then its second "
                    "chunk (the later blocks load that second chunk first, inside the previous block)"
                    if skip_empty
                    else ""
                ),
            )
        )
    gate_up_chunks = []
    for first in range(0, len(i_tiles), chunk_tiles):
        tiles = i_tiles[first : first + chunk_tiles]
        gate_up_chunks.append((tiles[0][0], sum(size for _, size in tiles), first, len(tiles)))
    chunk_cols = max(cols for _, cols, _, _ in gate_up_chunks)

    zero_output = accumulate or dropping
    per_core_output = variant["output"] == "per_core"
    partial_output = shard == "block" and lnc == 2 and accumulate and not per_core_output
    decisions += [
        (
            "sharding",
            {
                ("block", 1): "one core runs every block",
                ("block", 2): (
                    "core c runs blocks c, c+2, ...; "
                    if variant["distribute"] == "interleaved"
                    else "core c runs the c-th half of the blocks; "
                )
                + (
                    "each core accumulates into its own slot of out [rows, 2, H]; the caller adds them"
                    if per_core_output
                    else "core 0 accumulates into out, clearing a row when a block first adds into it; core 1 "
                    "accumulates into a partial-sum buffer; each core records the rows its blocks add into (an HBM "
                    "list of row ids); after a core barrier the two cores, every other 128-row tile each, add "
                    "out += partial in the rows both touched (dma_compute, other rows skipped) and copy out = partial "
                    "into the rows core 0 never touched (with tail tiles core 1 cannot list those before the barrier "
                    "without following the absorbed tiles)"
                    if final_sum_touched and absorb
                    else "core 0 accumulates into out, clearing a row when a block first adds into it; core 1 "
                    "accumulates into a partial-sum buffer and, before a core barrier, writes the rows core 0 never "
                    "touches; each core records the rows its blocks add into (an HBM list of row ids), and after the "
                    "barrier only the rows both cores touched get out += partial (dma_compute, other rows skipped)"
                    if final_sum_touched
                    else "each core accumulates into its own copy of the output, the two are added after a core barrier"
                    if partial_output
                    else "top-1: each token row is written by one core"
                ),
                ("intermediate", 1): "one core runs the whole intermediate dimension",
                ("intermediate", 2): f"core c computes I columns [c*{i_core}, (c+1)*{i_core}) and finishes "
                f"output columns [c*{h_out}, (c+1)*{h_out}); partial down projections "
                "of the other half go through sendrecv",
            }[(shard, lnc)],
        ),
        (
            "output update",
            "read-modify-write: each block's contribution is rounded to the output dtype and added"
            if accumulate
            else "overwrite: top-1, each token row is written once",
        ),
        (
            "padding",
            "slots holding -1 are skipped by the gathers and scatters (oob_mode=skip); AWS's shapes: "
            "hidden_states [T, H], expert_affinities_masked [T*E, 1] and out [T, H], no padding row"
            if pad_skip
            else (
                "slots holding T are skipped by the row gathers (see token rows)"
                if gather_real_rows
                else "slots holding T read the zero row T of hidden_states"
            )
            + "; their output DMAs are skipped (id T becomes -1, oob_mode=skip), so no core ever writes row T, which "
            "is zeroed once at the end",
        ),
    ]
    decisions.append(
        (
            "tiling",
            f"block {b} = {b // TOKEN_TILE} token tiles of 128 (tokens on partitions for the "
            f"row gather, the transposes and the down projection) and {ceil_div(b, 512)} "
            f"moving chunk(s) of at most 512 tokens for the gate/up matmuls (one PSUM bank); "
            f"H in {len(_tiles(h, CONTRACTION_TILE))} contraction tiles, this core's I in "
            f"{len(i_tiles)}",
        )
    )
    if hybrid:
        decisions.append(
            (
                "loop",
                "static loop over ceil(T*K/B) blocks (they surely hold tokens), then nl.fori_loop "
                "up to sum(conditions) held in a register",
            )
        )
    result = CtePlan(
        family="cte",
        kernel_name=variant.name,
        spec_name=layer.name,
        lnc=lnc,
        buffers=buffers,
        decisions=tuple(decisions),
        hidden=h,
        intermediate=i_tp,
        experts=dims.local_experts,
        ep=dims.ep,
        global_experts=global_experts,
        top_k=k,
        dtype=layer.dtype,
        out_dtype=layer.out_dtype,
        weight_dtype=weight_dtype,
        shard=shard,
        distribute=variant["distribute"],
        hybrid=hybrid,
        dropping=dropping,
        block=b,
        accumulate=accumulate,
        pad_skip=pad_skip,
        checkpoint=checkpoint,
        resident_weights=resident,
        reuse_weights=reuse,
        skip_padding_tiles=skip_tiles,
        narrow_columns=narrow_columns,
        skip_empty_weights=skip_empty,
        block_slots=1 if hybrid else 2,
        row_id_slots=3 if pipeline_blocks else (1 if hybrid else 2),
        x_psum_slots=1 if exchange else 2,
        x_psum_groups_per_bank=common["x_psum_groups"],
        x_copy_engines=("vector",) if mx else ("vector", "scalar"),
        down_scale_on_scalar=scale_on_scalar,
        out_prefetch=common["out_prefetch"],
        pipeline_blocks=pipeline_blocks,
        stream_depth=depth,
        gather_pieces=gather_pieces,
        serpentine=pipeline_blocks and skip_empty,
        head_chunk_first=pipeline_blocks and skip_empty,
        absorb_tail=absorb,
        # not with a barrier after the fill (top-1 shard=block at LNC 2: the cores clear each other's rows); in a
        # hybrid loop the pieces go out in this core's first trace-time block
        zero_in_first_block=zero_output
        and not mx
        and (hybrid_pipelined or not hybrid)
        and not (shard == "block" and lnc == 2 and not (partial_output or per_core_output)),
        weight_dma_tiles=4 if hybrid_pipelined and resident else 0,
        output_dma_add=hybrid_pipelined and accumulate,
        down_ids_copy=hybrid_pipelined,
        metadata_prefetch=hybrid_pipelined,
        gather_prefetch=hybrid_pipelined,
        gather_real_rows=gather_real_rows,
        weight_expert_ahead=hybrid_pipelined and reuse,
        down_whole_rows=whole_rows_possible and resident,
        verify_tokens=variant.options.get("verify_tokens") or max(b // 2, 64),
        token_tiles=b // TOKEN_TILE,
        token_chunks=_tiles(b, TOKEN_TILE if skip_tiles else MATMUL_MOVING_FREE_MAX),
        h_tiles=_tiles(h, CONTRACTION_TILE),
        h_full_tiles=h // CONTRACTION_TILE,
        i_core=i_core,
        i_overlap=i_overlap,
        i_tiles=i_tiles,
        i_full_tiles=i_core // CONTRACTION_TILE,
        gate_up_chunks=tuple(gate_up_chunks),
        gate_up_h_parts=gate_up_h_parts,
        gate_up_chunk_cols=chunk_cols,
        h_out=h_out,
        down_chunks=_tiles(h_out, full_chunk),
        exchange=exchange,
        down_cols=min(h_out, full_chunk),
        zero_columns=min(h_out, ZERO_COLUMNS_MAX),
        max_tokens=T_MAX,
        zero_output=zero_output,
        partial_output=partial_output,
        final_sum_touched=final_sum_touched,
        copy_after_barrier=copies_after_barrier(final_sum_touched, int(absorb)),
        per_core_output=per_core_output,
        mlp=mlp,
    )
    return cte_mx.specialize(result, layer) if mx else result


def _streamed_chunks(variant: Variant, i_tile_count: int, capacity: int, common: dict) -> tuple[int, int, int, tuple]:
    """(gate/up I tiles per chunk, down columns per chunk, copies per chunk, buffers) of streamed weights: the
    spec's values, and for those at auto the first of STREAM_RULE (widest first) that fits SBUF. PlanError
    naming the option (and the bytes over) when the spec's values do not fit."""
    asked = {name: variant[name] for name in STREAM_OPTIONS}
    depth = STREAM_DEPTH_RULE if asked["weight_buffers"] == "auto" else asked["weight_buffers"]
    if asked["gate_up_tiles"] != "auto" and asked["gate_up_tiles"] > i_tile_count:
        raise PlanError(
            (
                "gate_up_tiles",
                f"gate_up_tiles={asked['gate_up_tiles']}: this core's share of I ({common['i_core']} columns) has "
                f"{i_tile_count} I tile(s) of 128; a chunk holds at most that many",
            )
        )
    if asked["down_columns"] != "auto" and asked["down_columns"] > common["h_out"]:
        raise PlanError(
            (
                "down_columns",
                f"down_columns={asked['down_columns']}: this core finishes {common['h_out']} output columns; a down "
                "chunk holds at most that many",
            )
        )
    pairs = list(STREAM_RULE)
    if asked["gate_up_tiles"] != "auto" or asked["down_columns"] != "auto":  # the other width: widest that fits
        tiles_list = [asked["gate_up_tiles"]] if asked["gate_up_tiles"] != "auto" else [8, 4, 3, 2, 1]
        columns_list = [asked["down_columns"]] if asked["down_columns"] != "auto" else [512, 256, 128]
        pairs = [(tiles, columns) for tiles in tiles_list for columns in columns_list]
    needed = None
    for tiles, columns in pairs:
        tiles = min(tiles, i_tile_count)
        candidate = _buffers(
            chunk_cols=min(common["i_core"], tiles * CONTRACTION_TILE),
            weight_count=depth,
            resident=False,
            down_chunk=columns,
            whole_rows=False,
            **common,
        )
        total = sum(x.total_per_partition for x in candidate if x.memory == "sbuf")
        if total <= capacity:
            return tiles, columns, depth, candidate
        needed = total if needed is None else min(needed, total)
    spec_values = [f"{name}={value}" for name, value in asked.items() if value != "auto"]
    if spec_values:
        option = next(name for name, value in reversed(asked.items()) if value != "auto")
        raise PlanError(
            (
                option,
                f"{' '.join(spec_values)}: the streamed weight chunks with the block's buffers need {needed} bytes "
                f"per partition, {needed - capacity} more than the {capacity} usable on trn2 (narrower chunks, "
                "fewer weight_buffers or a smaller block)",
            )
        )
    raise PlanError(
        (
            "block",
            f"block {common['b']}: even streaming one 128-column weight chunk at a time, the "
            f"block's buffers (x^T and h^T hold B columns per H and I tile) exceed the "
            f"{capacity} bytes per partition of trn2 SBUF; use a smaller block",
        )
    )


def _absorbs_tails(variant: Variant, b: int, *, hybrid: bool, mx: bool, exchange: bool) -> bool:
    """Whether a streamed-weight kernel absorbs tail tiles (option tail): where it can unless tail=block.
    PlanError naming the reason when tail=absorb asks for it where it cannot."""
    reasons = []
    if hybrid:
        reasons.append("loop=hybrid (the runtime loop's body is one program for every block)")
    if mx:
        reasons.append("MX weights (streamed one I slab per block by their own block program)")
    if variant.options.get("dropping"):
        reasons.append("dropping (one block per expert: no two blocks share an expert)")
    if exchange:
        reasons.append("shard=intermediate at lnc=2 (partial projections are exchanged per token tile)")
    if variant.options.get("checkpoint"):
        reasons.append("checkpoint (its outputs hold every slot of every block)")
    if b < 2 * TOKEN_TILE:
        reasons.append(f"block {b} (one token tile: every block would be a tail)")
    if variant["tail"] == "absorb" and reasons:
        raise PlanError(("tail", "tail=absorb cannot be built with " + "; ".join(reasons)))
    return variant["tail"] != "block" and not reasons


def _spec_chunk_note(variant: Variant) -> str:
    """The streamed-chunk options the spec (or the model's record) set, for the weights decision."""
    set_values = [f"{name}={variant[name]}" for name in STREAM_OPTIONS]
    set_values = [value for value in set_values if not value.endswith("=auto")]
    return f" ({' '.join(set_values)} from the spec or the model's record)" if set_values else ""


def _family():
    from moegen.plan import Family

    return Family(
        name="cte",
        options=OPTIONS,
        plan=plan,
        doc="blockwise context-encoding (prefill) MoE: shard_on_block, shard_on_i, hybrid, dropping; "
        "MX on trn3: shard_on_block_mx, shard_on_i_mx, shard_on_i_mx_hybrid",
    )


FAMILY = _family()
