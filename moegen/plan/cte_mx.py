"""The Trainium3 MX variants of the cte family: shard_on_block_mx, shard_on_i_mx, shard_on_i_mx_hybrid.

A cte kernel on a layer with `quant weights=mxfp4|mxfp8` keeps the family's block loop (token ids,
expert, affinities, output update, padding, hybrid loop, LNC splits) and replaces the expert MLP by the
MX stages of `templates/common/cte_mx.j2`: the block's token rows are gathered, transposed into the MX
slab layout x[t, 512 s + 4p + q] at [p, s, t, q] and quantized to MXFP8 (quantize_mx); each projection
is an nc_matmul_mx against the pre-quantized weights in the tkg MX layouts (moegen/plan/mx_expert.py,
the weights' block scales applied inside the matmul). Variants map onto the family's options:

    shard=block                           shard_on_block_mx   (blocks split between the cores at LNC 2)
    shard=intermediate                    shard_on_i_mx       (the 512-value I slabs split between the cores)
    shard=intermediate loop=hybrid        shard_on_i_mx_hybrid

This module holds the MX problems (refused at spec time with the reason) and the MX numbers of a
CtePlan; moegen/plan/cte.py calls `problems` and `specialize`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from moegen.plan.common import DTYPE_BYTES, PARTITIONS, Buffer, ceil_div
from moegen.plan.mx_expert import mx_weights_plan
from moegen.spec.model import Layer, Variant
from moegen.spec.options import OptionSpec

if TYPE_CHECKING:
    from moegen.plan.cte import CtePlan

MX_QUANT = ("mxfp4", "mxfp8")
TRANSPOSE_TOKENS = 128  # tokens per gathered tile (the nc_transpose and the down projection's stationary)

TARGET_OPTION = OptionSpec(
    "target",
    "choice",
    "hardware generation (default: trn3 for MX weights, else trn2); MX weights need trn3",
    choices=("trn2", "trn3"),
)


def is_mx(layer: Layer) -> bool:
    return layer.quant.weights in MX_QUANT


def target_of(layer: Layer, variant: Variant) -> str:
    return variant.options.get("target") or ("trn3" if is_mx(layer) else "trn2")


def problems(layer: Layer, variant: Variant) -> list[tuple[str | None, str]]:
    """What the MX cte variants do not generate, with the hardware or semantic reason."""
    target = target_of(layer, variant)
    if not is_mx(layer):
        if target != "trn2":
            return [
                (
                    "target",
                    f"target={target}: the bf16/fp8 cte kernels are sized for trn2 (the seed's Trn2 variants); "
                    "target=trn3 is for the MX variants (quant weights=mxfp4 or mxfp8)",
                )
            ]
        return []
    found: list[tuple[str | None, str]] = []
    if target != "trn3":
        found.append(
            (
                "target",
                f"target={target}: quant weights={layer.quant.weights} multiplies with nc_matmul_mx and "
                "quantize_mx, Trainium3 (NeuronCore-v4) instructions; use target=trn3 (the seed's "
                "shard_on_block_mx, shard_on_i_mx and shard_on_i_mx_hybrid are Trn3 variants)",
            )
        )
    if variant.options.get("dropping"):
        found.append(
            (
                "dropping",
                "dropping with MX weights: the seed has no MX dropping variant (its MX variants are "
                "shard_on_block_mx, shard_on_i_mx and shard_on_i_mx_hybrid); use the dropless layout",
            )
        )
    if variant["weights"] == "resident":
        found.append(
            (
                "weights",
                "weights=resident with MX weights: the MX kernels stream each expert's weight slabs per "
                "block (one (I slab, packed position) share of gate/up and one column chunk of down at a "
                "time), so no expert stays resident",
            )
        )
    lnc, shard = variant["lnc"], variant["shard"]
    i_slabs = ceil_div(layer.dims.intermediate // (variant.options.get("tp") or layer.dims.tp), 512)
    if shard == "intermediate" and lnc == 2 and i_slabs < 2:
        found.append(
            (
                "shard",
                f"shard=intermediate at lnc=2 with MX weights splits the 512-value I slabs between the cores; "
                f"I_TP has {i_slabs} slab: use shard=block",
            )
        )
    return found


def core_slabs(i_slabs: int, exchange: bool) -> tuple[tuple[int, int], ...]:
    """(first slab, slab count) of I per core: all slabs, or core 0 the first half (rounded up)."""
    if not exchange:
        return ((0, i_slabs),)
    first = ceil_div(i_slabs, 2)
    return ((0, first), (first, i_slabs - first))


def specialize(p: CtePlan, layer: Layer) -> CtePlan:
    """The bf16 plan of the same variant turned into its MX form: weights streamed per block (no
    residency, no reuse), MX slabs, MX buffers and decisions."""
    mx = mx_weights_plan(layer.quant.weights, p.hidden, p.intermediate)
    slabs = core_slabs(mx.i_slabs, p.exchange)
    dropped = {"weights", "weight reuse", "tiling", "uneven intermediate split", "padding tiles"}
    name = {"block": "shard_on_block_mx", "intermediate": "shard_on_i_mx"}[p.shard] + ("_hybrid" if p.hybrid else "")
    decisions = [d for d in p.decisions if d[0] not in dropped] + [
        (
            "mx variant",
            f"{name} on trn3: {layer.quant.weights} weights with their E8M0 block scales (the tkg MX layouts); "
            "the block's tokens are gathered, transposed into the MX slab layout (x[t, 512 s + 4p + q] at "
            "[p, s, t, q]) and quantized to MXFP8 per 128-token tile (quantize_mx); gate/up and down are "
            "nc_matmul_mx, the scales applied inside the matmul",
        ),
        (
            "mx layout",
            f"H {p.hidden} in {mx.h_slabs} slab(s) of 512 on 128 partitions, I {p.intermediate} in {mx.i_slabs}; "
            "each I slab's gate/up runs as 4 matmul pairs (column i = 512 s + 4c + q for packed position q), "
            "so PSUM row c of pair q is I index 512 s + 4c + q and h lands in the down projection's "
            "contraction layout without a transpose",
        ),
        (
            "weights",
            "streamed per block: one I slab of the gate/up weights and scales at a time (contiguous runs of the "
            "slab's columns; packed position q is read as the stride-4 view q::4), and the down weights one "
            "column chunk (<= 512) of this core's I slabs at a time; two copies of each, consecutive slabs "
            "(chunks) alternating, so a load overlaps the matmuls on the previous slab (chunk)",
        ),
    ]
    if p.skip_padding_tiles:
        decisions.append(
            (
                "padding tiles",
                "each 128-slot tile's gather, transposes and quantize_mx, its gate/up matmuls and epilogue (moving "
                "one 128-token tile: TensorE time per token is the same as at 512), its h quantize_mx and its "
                "down matmuls, partial exchange and output update run in nl.fori_loop(0, active) with active (0 or "
                "1: the tile holds a token) loaded into a register, so issued MACs follow the real tokens",
            )
        )
    if p.exchange:
        decisions.append(
            (
                "mx intermediate split",
                f"core 0 computes I slabs [0, {slabs[0][1]}), core 1 [{slabs[1][0]}, {mx.i_slabs}); each core's "
                "partial down projection of the other core's output columns goes through sendrecv",
            )
        )
    plan = replace(
        p,
        target="trn3",
        mx=mx,
        mx_core_slabs=slabs,
        i_overlap=0,  # the cores split whole I slabs
        resident_weights=False,
        reuse_weights=False,
        decisions=tuple(decisions),
    )
    return replace(plan, buffers=buffers(plan))


def buffers(p: CtePlan) -> tuple[Buffer, ...]:
    """Every on-chip allocation of one core of an MX cte kernel, per partition (templates/common/cte_mx.j2)."""
    mx = p.mx
    b, dt, out_dt, word = p.block, DTYPE_BYTES[p.dtype], DTYPE_BYTES[p.out_dtype], mx.word_bytes
    n_t = b // TRANSPOSE_TOKENS
    chunk = max(size for _, size in p.token_chunks)  # gate/up moving chunk (one 128-token tile when skipping)
    col = p.down_cols
    core_i = max(count for _, count in p.mx_core_slabs)
    sb = [
        Buffer("token_ids", "sbuf", PARTITIONS, 4 * n_t),
        Buffer("out_ids", "sbuf", PARTITIONS, 4 * n_t, 2),
        Buffer("expert_id", "sbuf", 1, 4),
        Buffer("x_rows", "sbuf", PARTITIONS, dt * p.hidden),
        Buffer("x_stage", "sbuf", PARTITIONS, dt * mx.h_slabs * b * 4),
        Buffer("x_q + x_scales", "sbuf", PARTITIONS, mx.h_slabs * b * (4 + 1)),
        Buffer(
            "w_gate_up + scales", "sbuf", PARTITIONS, mx.h_slabs * 2 * 4 * PARTITIONS * (word + 1), 2
        ),  # slabs alternate
        Buffer("gate/up/act scratch", "sbuf", PARTITIONS, 4 * chunk, 3),
        Buffer("h_il", "sbuf", PARTITIONS, dt * mx.i_slabs * b * 4),
        Buffer("h_q + h_scales", "sbuf", PARTITIONS, mx.i_slabs * b * (4 + 1)),
        Buffer(
            "w_down + scales", "sbuf", PARTITIONS, core_i * col * (word + 1), 4 if p.exchange else 2
        ),  # chunks alternate
        Buffer("y_tile", "sbuf", PARTITIONS, 4 * col),
        Buffer("y_out", "sbuf", PARTITIONS, out_dt * col),
        Buffer("zero_rows", "sbuf", PARTITIONS, out_dt * p.zero_columns),
    ]
    if p.affinity != "none":
        sb += [
            Buffer("expert_bcast", "sbuf", PARTITIONS, 4),
            Buffer("affinity_index", "sbuf", PARTITIONS, 4 * n_t),
            Buffer("affinity", "sbuf", PARTITIONS, 4 * n_t),
        ]
    if p.accumulate:
        sb.append(Buffer("out_rows", "sbuf", PARTITIONS, out_dt * col))
    if p.mlp.gate_up_bias:
        sb.append(Buffer("gate_up_bias", "sbuf", PARTITIONS, 4 * 2))
    if p.mlp.down_bias:
        sb.append(Buffer("down_bias", "sbuf", PARTITIONS, 4 * p.h_out))
    if p.exchange:
        sb += [Buffer("partial_send", "sbuf", PARTITIONS, 4 * col), Buffer("partial_recv", "sbuf", PARTITIONS, 4 * col)]
    if p.checkpoint:
        sb += [
            Buffer("gate_up_checkpoint", "sbuf", PARTITIONS, out_dt * chunk),
            Buffer("down_checkpoint", "sbuf", PARTITIONS, out_dt * col),
        ]
    sb += [x for x in p.buffers if x.name in ("conditions", "real_blocks")]  # hybrid: the bf16 plan's
    ps = [
        Buffer("gate_psum + up_psum", "psum", PARTITIONS, 4 * chunk, 2),
        Buffer("x_psum (transposes)", "psum", PARTITIONS, dt * 4 * TRANSPOSE_TOKENS),
        Buffer("down_psum", "psum", PARTITIONS, 4 * col, 2 if p.exchange else 1),
    ]
    return tuple(sb + ps)
