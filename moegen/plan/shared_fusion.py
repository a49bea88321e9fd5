"""Shared experts fused into a routed kernel (docs/shared_experts.md, "Fused"): the plan data and the rule.

A routed tkg or cte kernel of a layer with shared experts can run them itself: one more expert that every
token selected, with weight 1 (or its sigmoid gate value), its own weights `shared_gate_up_weights
[S, H, (2,) I_F]` and `shared_down_weights [S, I_F, H]` passed as extra arguments. tkg runs them after the
routed items of each token block, into the same fp32 accumulator (rounded once); cte after the routed
blocks, on groups of 128-row tiles of the tokens (out += round(shared), as a routed expert's update).
I_F = I_S / (tp * ep): tensor parallelism splits I_S as it splits I, and with expert parallelism every
rank also takes an I_S / ep slice (the ranks' outputs are summed by the caller's all-reduce as the routed
ones are), so the shared work is spread over the ranks instead of repeated on each.

The option `shared=auto|fused|separate` of the tkg and cte families decides; `auto` fuses whenever the
kernel can (FUSED_REASON; modeled evidence in docs/shared_experts.md, benchmarks/shared_fusion.py) and
says why not otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from moegen.plan.common import (
    DTYPE_BYTES,
    PARTITIONS,
    PSUM_BANK_BYTES,
    PSUM_BANKS,
    SBUF_BYTES,
    SBUF_RESERVED,
    Buffer,
    PlanError,
)
from moegen.plan.expert import ExpertMLPPlan, expert_mlp_plan
from moegen.spec.model import Layer, Quant
from moegen.spec.options import OptionSpec

SHARED_OPTION = OptionSpec(
    "shared",
    "choice",
    "the layer's shared experts: fused (run inside this kernel as one more expert on every token, weight 1 "
    "or the sigmoid gate; extra arguments shared_gate_up_weights, shared_down_weights (, shared_gate_values)), "
    "separate (the `shared` family kernel runs them; this kernel's arguments are unchanged), auto (fused when "
    "the kernel can, else separate; `moegen explain` says which and why)",
    default="auto",
    choices=("auto", "fused", "separate"),
)

FUSED_REASON = (
    "fused: the shared experts move the same weight bytes and issue the same matmuls either way (every "
    "token of the block, N <= 128 per weight tile), so fusing only removes work: the separate kernel's "
    "launch, its load of x, its [T, H] output write and the caller's add; and the shared weights' DMA "
    "overlaps the routed experts' matmuls instead of running alone (modeled in docs/shared_experts.md)"
)
SEPARATE_REASON = (
    "separate (shared=separate): the `shared` family kernel runs them; this kernel's arguments are unchanged"
)


@dataclass(frozen=True)
class FusedSharedPlan:
    """The numbers of shared experts fused into a routed kernel (templates/common/shared_fused.j2)."""

    mlp: ExpertMLPPlan  # the shared experts' MLP (gated or not, activation, clamps)
    experts: int  # S
    intermediate: int  # I_F = I_S / (tp * ep), this rank's slice of each shared expert
    i_tiles: int
    i_last: int  # rows of the last I_F tile
    core_i_tiles: tuple[tuple[int, int], ...]  # per core: (first tile, tiles) it computes
    gate: bool  # the output of shared expert s is scaled by shared_gate_values[t, s]
    up_psum: bool  # a PSUM tile of its own for the up projection (the routed kernel has none)
    weight_dtype: str
    gate_up_tiles: int = 1  # I_F tiles per gate/up weight slab (one DMA: runs of tiles x 128 elements)
    gate_up_buffers: int = 1  # slabs alternating by group (the next group's load overlaps the matmuls)
    reuse_routed_slabs: bool = False  # the slabs are the routed experts' gate/up weight tiles, free after them
    # cte: 0, or the tokens of one pass when the shared experts run on the routed kernel's tiles (x.T, h.T, the
    # gate/up and down weight slots, free once the routed blocks are done): each pass reads the shared weights once
    cte_rows: int = 0
    row_tiles: int = 1  # cte without cte_rows: 128-row token tiles that share one pass over the shared weights
    row_split: bool = False  # cte shard=intermediate at LNC 2: each core whole rows of every other row group

    def __str__(self) -> str:
        """One line for `moegen explain`."""
        kind = "gated" if self.mlp.gated else "not gated"
        gate = ", sigmoid gate" if self.gate else ""
        rows = f", {self.row_tiles} row tiles of 128 per pass over the weights" if self.row_tiles > 1 else ""
        split = ", cores take every other row group (whole rows)" if self.row_split else ""
        return (
            f"fused: S={self.experts}, I_F={self.intermediate} ({self.i_tiles} tiles, per core {self.core_i_tiles}), "
            f"{kind} {self.mlp.activation}{gate}{rows}{split}"
        )

    @property
    def projections(self) -> int:
        return self.mlp.projections

    @property
    def argument_names(self) -> tuple[str, ...]:
        return ("shared_gate_up_weights", "shared_down_weights") + (("shared_gate_values",) if self.gate else ())

    def buffers(self, token_tile: int, h_tiles: int) -> tuple[Buffer, ...]:
        """The tiles templates/common/shared_fused.j2 adds to the routed kernel's (the down-weight slabs,
        PSUM tiles and fp32 scratch of the routed experts are reused)."""
        w = DTYPE_BYTES[self.weight_dtype]
        slab = h_tiles * self.projections * self.gate_up_tiles * PARTITIONS * w
        buffers = (
            []
            if self.reuse_routed_slabs
            else [Buffer("shared_w_gate_up", "sbuf", PARTITIONS, slab, self.gate_up_buffers)]
        )
        if not self.cte_rows:  # else h.T goes to the routed kernel's hT
            buffers.append(Buffer("shared_h", "sbuf", PARTITIONS, self.i_tiles * self.row_tiles * token_tile * w))
        if self.gate:  # the gate values of a pass, one column per 128-token tile
            tiles = max(1, self.cte_rows // PARTITIONS) if self.cte_rows else self.row_tiles
            buffers.append(Buffer("shared_scale", "sbuf", token_tile, 4 * tiles))
        if self.up_psum:
            buffers += [
                Buffer("shared_up", "sbuf", PARTITIONS, token_tile * 4),
                Buffer("shared_up_psum", "psum", PARTITIONS, token_tile * 4),
            ]
        return tuple(buffers)


def fusion_blocker(layer: Layer, *, mx: bool, tp: int, ep: int, split_i: bool, sbuf_input: bool) -> str | None:
    """Why the shared experts of `layer` cannot run inside this routed kernel, or None."""
    expert, dims = layer.shared_expert, layer.dims
    if layer.quant != Quant():
        return "the layer's weights are quantized: shared experts are generated with bf16/fp16 weights only"
    if mx:
        return "MX routed kernels stage x in the MX layout (no bf16 x tile for the shared matmuls)"
    if sbuf_input:
        return "input=sbuf: x arrives in the [128, T, H / 128] layout, whose weight row order is not generated for them"
    if expert.gate_up_bias or expert.down_bias:
        return "shared experts with biases are not fused (a bias would be added once per rank or core slice)"
    if dims.shared_intermediate % (tp * ep):
        return f"shared_intermediate {dims.shared_intermediate} is not divisible by tp {tp} x ep {ep}"
    if split_i and dims.shared_intermediate // (tp * ep) <= PARTITIONS:
        return "shard=intermediate splits the I tiles over the two cores, and I_S / (tp x ep) is one tile"
    return None


def plan_fusion(
    layer: Layer,
    options,
    *,
    mx: bool,
    tp: int,
    ep: int,
    lnc: int,
    split_i: bool,
    sbuf_input: bool,
    token_tile: int,
    routed_gated: bool,
    sbuf_used: int,
    psum_used: int,
    h_tiles: int,
    sbuf_capacity: int,
    extra_blocker: str | None = None,
    extra_tiles: tuple[Buffer, ...] = (),
    routed_slabs: tuple[int, int, int] | None = None,
    cte_rows: int = 0,
    row_tiles: int = 1,
    row_split: bool = False,
):
    """(FusedSharedPlan or None, decision): the `shared` option of a routed kernel resolved. sbuf_capacity: the
    SBUF bytes per partition the routed kernel may use (its own budget's limit).

    PlanError when shared=fused cannot be honoured or the layer has no shared experts to fuse."""
    choice = options.get("shared", "auto")
    if layer.shared_expert is None or not layer.dims.shared_experts:
        if choice == "fused":
            raise PlanError(("shared", "shared=fused: the layer has no shared experts (dims shared_experts=S)"))
        return None, None
    if choice == "separate":
        return None, ("shared experts", SEPARATE_REASON)
    blocker = extra_blocker or fusion_blocker(layer, mx=mx, tp=tp, ep=ep, split_i=split_i, sbuf_input=sbuf_input)
    fused = None if blocker else _fused_plan(layer, tp=tp, ep=ep, lnc=lnc, split_i=split_i, routed_gated=routed_gated)
    if fused:
        fused = replace(fused, row_tiles=row_tiles, row_split=row_split)
    if fused and routed_slabs and routed_slabs[0] == fused.projections:
        # the routed gate/up slabs (projections, I tiles, count) are free once the routed items are done
        _, tiles, count = routed_slabs
        fused = replace(fused, gate_up_tiles=tiles, gate_up_buffers=count, reuse_routed_slabs=True, cte_rows=cte_rows)
        extra = fused.buffers(token_tile, h_tiles) + extra_tiles
        sbuf = sbuf_used + sum(b.total_per_partition for b in extra if b.memory == "sbuf")
        if sbuf > sbuf_capacity:
            blocker = f"SBUF: {sbuf} bytes per partition with the shared experts' tiles, {sbuf_capacity} usable"
    elif fused:
        fused, sbuf, extra = _slabs(fused, token_tile, h_tiles, extra_tiles, sbuf_used, sbuf_capacity)
        psum = psum_used + sum(-(-b.bytes_per_partition // PSUM_BANK_BYTES) for b in extra if b.memory == "psum")
        if sbuf > sbuf_capacity:
            blocker = f"SBUF: {sbuf} bytes per partition with the shared experts' tiles, {sbuf_capacity} usable"
        elif psum > PSUM_BANKS:
            blocker = f"PSUM: {psum} banks with the shared experts' up projection, {PSUM_BANKS} available"
    if blocker:
        if choice == "fused":
            raise PlanError(("shared", f"shared=fused: {blocker}"))
        return None, ("shared experts", f"separate (auto): {blocker}; the `shared` family kernel runs them")
    what = "gate values shared_gate_values [T, S]" if fused.gate else "weight 1"
    slice_ = f"I_S {layer.dims.shared_intermediate} / (tp {tp} x ep {ep}) = {fused.intermediate} per rank"
    return fused, ("shared experts", f"{FUSED_REASON}. {fused.experts} x {slice_}, {what}")


def _slabs(fused: FusedSharedPlan, token_tile: int, h_tiles: int, extra_tiles, sbuf_used: int, capacity: int):
    """(plan, SBUF bytes, extra buffers) with the gate/up weight slabs chosen as the routed tkg slabs are:
    two slabs when a core has more than one group (one loads while the matmuls read the other), each of as
    many I_F tiles as make 2 KiB runs (a DMA run under 2 KiB pays the descriptor overhead), shrunk to fit."""
    core_tiles = max(count for _, count in fused.core_i_tiles)
    want = min(core_tiles, max(1, 2048 // (PARTITIONS * DTYPE_BYTES[fused.weight_dtype])))
    for buffers in (2, 1):
        for tiles in range(want, 0, -1):
            if buffers == 2 and tiles >= core_tiles:
                continue  # one group per core: a second slab would never be used
            candidate = replace(fused, gate_up_tiles=tiles, gate_up_buffers=buffers)
            extra = candidate.buffers(token_tile, h_tiles) + extra_tiles
            sbuf = sbuf_used + sum(b.total_per_partition for b in extra if b.memory == "sbuf")
            if sbuf <= capacity:
                return candidate, sbuf, extra
    return candidate, sbuf, extra


def _fused_plan(layer: Layer, *, tp: int, ep: int, lnc: int, split_i: bool, routed_gated: bool) -> FusedSharedPlan:
    mlp = expert_mlp_plan(replace(layer, expert=layer.shared_expert, quant=Quant()))
    inter = layer.dims.shared_intermediate // (tp * ep)
    tiles, last = -(-inter // PARTITIONS), inter - (-(-inter // PARTITIONS) - 1) * PARTITIONS
    if lnc == 2 and split_i:
        first_half = (tiles + 1) // 2
        core_i_tiles = ((0, first_half), (first_half, tiles - first_half))
    else:
        core_i_tiles = ((0, tiles),) * lnc
    return FusedSharedPlan(
        mlp=mlp,
        experts=layer.dims.shared_experts,
        intermediate=inter,
        i_tiles=tiles,
        i_last=last,
        core_i_tiles=core_i_tiles,
        gate=layer.shared_expert.affinity_scale == "post",
        up_psum=mlp.gated and not routed_gated,
        weight_dtype=layer.dtype,
    )


def fuse_into_tkg(layer: Layer, options, plan):
    """The tkg plan with its `shared` option resolved: `shared` set (a FusedSharedPlan) or None, the
    decision added, the shared tiles added to its buffers."""
    fused, decision = plan_fusion(
        layer,
        options,
        mx=plan.mx is not None,
        tp=plan.tp,
        ep=plan.ep,
        lnc=plan.lnc,
        split_i=plan.lnc == 2 and plan.shard == "intermediate",
        sbuf_input=plan.input == "sbuf",
        token_tile=plan.token_tile,
        routed_gated=plan.mlp.gated,
        sbuf_used=plan.sbuf_bytes(),
        psum_used=plan.psum_banks(),
        h_tiles=plan.h_tiles,
        sbuf_capacity=SBUF_BYTES[plan.target],
        extra_blocker="shard=top_k: both cores run every token's rows, so each would add the shared experts"
        if plan.lnc == 2 and plan.shard == "top_k"
        else None,
        routed_slabs=None
        if plan.mx or plan.gate_up_loop == "h_outer"
        else (plan.mlp.projections, plan.gate_up_columns // PARTITIONS, plan.gate_up_buffers),
    )
    if decision is None:
        return plan
    buffers = plan.buffers + (fused.buffers(plan.token_tile, plan.h_tiles) if fused else ())
    return replace(plan, shared=fused, buffers=buffers, decisions=plan.decisions + (decision,))


def fuse_into_cte(layer: Layer, options, plan):
    """The cte plan with its `shared` option resolved. The shared experts run after the routed blocks, on
    contiguous row tiles: out[rows] += round(shared(x[rows])), one more expert that every token selected
    (the routed experts' updates are rounded the same way). Where the routed tiles can hold them
    (cte_routed_rows), a pass covers a whole block of rows on those tiles, so the shared weights are read T / B
    times instead of T / 128; otherwise groups of `row_tiles` 128-row tiles share one pass, and at LNC=2 each
    core takes every other row tile, whole rows."""
    blocker = None
    if plan.per_core_output:
        blocker = "output=per_core leaves the cores' partial sums to the caller"
    elif plan.checkpoint:
        blocker = "checkpoint (training) saves the routed activations only"
    w = DTYPE_BYTES[layer.dtype]
    rows = cte_routed_rows(layer, plan)
    tiles = (
        ()  # the out rows are added on the DMA engines (dma_compute)
        if rows
        else (
            Buffer("shared_w_down", "sbuf", PARTITIONS, plan.down_cols * w, count=2),
            Buffer("shared_rows", "sbuf", PARTITIONS, plan.down_cols * DTYPE_BYTES[plan.out_dtype]),
        )
    )
    # The shared weights stream once per row group: up to two 128-row tiles (xT holds a block's B tokens, two
    # down PSUM accumulators alternate) share one pass; one tile when the larger shared_h does not fit SBUF.
    # shard=intermediate at LNC 2: the cores take every other row group, whole rows (all H columns, after a
    # barrier), instead of both computing every row's gate/up for half the down columns.
    row_split = plan.lnc == 2 and plan.shard == "intermediate"
    candidates = (1,) if rows else sorted({min(plan.token_tiles, 2), 1}, reverse=True)
    for row_tiles in candidates:
        try:
            fused, decision = plan_fusion(
                layer,
                options,
                mx=False,
                tp=layer.dims.tp,
                ep=plan.ep,
                lnc=plan.lnc,
                split_i=False,
                sbuf_input=False,
                token_tile=PARTITIONS,
                routed_gated=plan.mlp.gated,
                sbuf_used=plan.sbuf_bytes(),
                psum_used=plan.psum_banks(),
                h_tiles=len(plan.h_tiles),
                sbuf_capacity=SBUF_BYTES["trn2"] - SBUF_RESERVED,
                extra_blocker=blocker,
                extra_tiles=tiles,
                routed_slabs=(plan.mlp.projections, plan.gate_up_chunk_cols // PARTITIONS, plan.stream_depth)
                if rows
                else None,
                cte_rows=rows,
                row_tiles=row_tiles,
                row_split=row_split and not rows,
            )
        except PlanError:
            if row_tiles == candidates[-1]:
                raise
            continue
        if fused:
            break
    if decision is None:
        return plan
    buffers = plan.buffers + ((*fused.buffers(PARTITIONS, len(plan.h_tiles)), *tiles) if fused else ())
    if fused and rows:
        decision = (
            decision[0],
            f"{decision[1]}; passes of {rows} token rows on the routed tiles (x.T, h.T, the weight slots), "
            "each reading the shared weights once",
        )
    return replace(plan, shared=fused, buffers=buffers, decisions=plan.decisions + (decision,))


def cte_routed_rows(layer: Layer, plan) -> int:
    """Token rows per shared pass on the routed kernel's tiles (the block B), or 0 where they cannot hold it:
    hT [128, I tiles, B (+ 128 with tail tiles)] needs every shared I_F tile, the gate/up weight slots whole 128-column tiles of the
    same projections, and streamed weights (resident weights have no slots)."""
    i_tiles = -(-(layer.dims.shared_intermediate or 0) // (layer.dims.tp * plan.ep * PARTITIONS))
    mlp = expert_mlp_plan(replace(layer, expert=layer.shared_expert, quant=Quant())) if layer.shared_expert else None
    fits = (
        mlp is not None
        and not plan.resident_weights
        and not plan.gate_up_h_parts
        and not plan.mx
        and plan.block % PARTITIONS == 0
        and plan.gate_up_chunk_cols % PARTITIONS == 0
        and mlp.projections == plan.mlp.projections
        and layer.dtype == plan.weight_dtype
        and 0 < i_tiles <= len(plan.i_tiles)
    )
    return plan.block if fits else 0
