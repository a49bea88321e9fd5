"""MX (microscaling) expert weights on Trainium3 as plan data: the seed moe_tkg MX layouts.

A contraction dimension of length K is cut into slabs of 512 values; slab s, partition p, packed
position q holds index s * 512 + 4p + q (the nc_matmul_mx layout, `templates/common/mx.j2`). So a
scaling block (8 partitions x 4 values) is 32 consecutive indices, the OCP block of a checkpoint.
HBM layouts (x4 words: uint16 for MXFP4, uint32 for MXFP8; scales uint8 E8M0):

    gate/up weights  [E_L, 128, 2, HS, I]     word [e, p, j, s, i] = W_j[e, s*512 + 4p .. +3, i]
    gate/up scales   [E_L, 16, 2, HS, I]      scale row r covers partitions 8r .. 8r+7
    down weights     [E_L, 128, IS, H]        word [e, p, s, h] = W_down[e, s*512 + 4p .. +3, h]
    down scales      [E_L, 16, IS, H]
    gate/up bias     [E_L, 128, 2, IS, 4]     bias [e, p, j, s, q] = b_j[e, s*512 + 4p + q]
    down bias        [E_L, H]

HS = ceil(H / 512), IS = ceil(I / 512); I_p (the seed's partition count of the down weights and the
bias) is 128 here. Past the end of H (or I) the words and biases are zero and the scales finite
(the converter writes 0 and 127): the kernel contracts every slab over all 128 partitions.
"""

from __future__ import annotations

from dataclasses import dataclass

from moegen.plan.common import PARTITIONS, PlanError, ceil_div

SLAB = 4 * PARTITIONS  # contraction values per slab
MX_BLOCK = 32  # values per E8M0 scale
# weights quant -> (element dtype name of the reference, NKI x4 dtype, host word dtype, bytes per word)
MX_WEIGHTS = {
    "mxfp4": ("fp4_e2m1", "nl.float4_e2m1fn_x4", "uint16", 2),
    "mxfp8": ("fp8_e4m3fn", "nl.float8_e4m3fn_x4", "uint32", 4),
}
ACTIVATION_ELEMENT = "fp8_e4m3fn"  # activations are quantized on chip to MXFP8 (quantize_mx has no fp4 output)
ACTIVATION_X4 = "nl.float8_e4m3fn_x4"


@dataclass(frozen=True)
class MxWeightsPlan:
    """The MX numbers of an expert kernel: element types and slabs of H and I."""

    weights: str  # 'mxfp4' | 'mxfp8'
    element: str  # reference dtype name of a weight value
    weight_x4: str  # NKI x4 dtype of the weight words
    word_dtype: str  # host dtype of a weight word
    word_bytes: int
    h_slabs: int  # HS
    h_parts: tuple[int, ...]  # partitions holding values of H, per slab (the rest is zero padding)
    i_slabs: int  # IS
    i_parts: tuple[int, ...]  # partitions holding values of I, per slab

    @property
    def activation_element(self) -> str:
        return ACTIVATION_ELEMENT

    @property
    def activation_x4(self) -> str:
        return ACTIVATION_X4


def _parts(length: int) -> tuple[int, ...]:
    return tuple(min(PARTITIONS, (length - s * SLAB) // 4) for s in range(ceil_div(length, SLAB)))


def mx_weights_plan(weights: str, hidden: int, intermediate: int) -> MxWeightsPlan:
    """The slabs of H and I for MX weights; PlanError when a dimension is not made of whole MX blocks."""
    problems = [
        (None, f"{name} {n} is not a multiple of {MX_BLOCK}: MX weights come in blocks of {MX_BLOCK} values")
        for name, n in (("hidden", hidden), ("intermediate (per TP rank)", intermediate))
        if n % MX_BLOCK
    ]
    if problems:
        raise PlanError(*problems)
    element, x4, word, word_bytes = MX_WEIGHTS[weights]
    return MxWeightsPlan(
        weights=weights,
        element=element,
        weight_x4=x4,
        word_dtype=word,
        word_bytes=word_bytes,
        h_slabs=ceil_div(hidden, SLAB),
        h_parts=_parts(hidden),
        i_slabs=ceil_div(intermediate, SLAB),
        i_parts=_parts(intermediate),
    )
