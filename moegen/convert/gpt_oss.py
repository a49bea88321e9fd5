"""GPT-OSS MXFP4 expert weights (as published with the checkpoint) -> the tkg kernels' MX layouts.

Checkpoint layout of one MoE layer (original `block.{n}.mlp.*` names; Hugging Face spells them
`gate_up_proj_blocks` / `_scales` / `_bias` and `down_proj_*`):

    mlp1_weight.blocks [E, 2I, H/32, 16] uint8   two fp4 e2m1 values per byte, the low nibble first
    mlp1_weight.scales [E, 2I, H/32]     uint8   E8M0 scale 2^(s - 127) of each 32-value block
    mlp1_bias          [E, 2I]                   rows interleaved: 2i is gate i, 2i + 1 is up i
    mlp2_weight.blocks [E, H, I/32, 16]  uint8
    mlp2_weight.scales [E, H, I/32]      uint8
    mlp2_bias          [E, H]

(each row's blocks run along the contraction: H for mlp1, I for mlp2). `to_kernel_layout` returns the
arguments of the MXFP4 tkg kernels (moegen/plan/mx_expert.py); `dequantize_checkpoint` is the direct
dequantization (a lookup of the 16 fp4 codes times 2^(s - 127)) the round-trip test compares with.
"""

from __future__ import annotations

import numpy as np

from moegen.convert import mx_layout

ELEMENT = "fp4_e2m1"
FP4_VALUES = np.array(
    [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0], dtype=np.float32
)


def _check(name: str, arr: np.ndarray, shape: tuple[int, ...], dtype=np.uint8) -> None:
    if tuple(arr.shape) != shape or (dtype is not None and arr.dtype != dtype):
        raise ValueError(
            f"{name}: expected {np.dtype(dtype) if dtype else 'any'} {list(shape)}, got {arr.dtype} {list(arr.shape)}"
        )


def _codes(blocks: np.ndarray) -> np.ndarray:
    """blocks [..., K/32, 16] -> fp4 codes [..., K] (the low nibble of byte b is value 2b)."""
    lo, hi = blocks & np.uint8(0x0F), blocks >> np.uint8(4)
    return np.stack([lo, hi], axis=-1).reshape(*blocks.shape[:-2], -1)


def dequantize_checkpoint(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """fp32 [..., K] of a checkpoint weight: FP4_VALUES[code] * 2^(scale - 127)."""
    values = FP4_VALUES[_codes(blocks)].reshape(*blocks.shape[:-1], 32)
    factor = np.exp2(scales.astype(np.float64) - 127).astype(np.float32)
    return (values * factor[..., None]).reshape(*blocks.shape[:-2], -1)


def to_kernel_layout(
    mlp1_blocks: np.ndarray,
    mlp1_scales: np.ndarray,
    mlp1_bias: np.ndarray,
    mlp2_blocks: np.ndarray,
    mlp2_scales: np.ndarray,
    mlp2_bias: np.ndarray,
    experts: slice | None = None,
) -> dict[str, np.ndarray]:
    """One layer's checkpoint tensors -> the MXFP4 tkg kernel's arguments, by the kernel's names:
    expert_gate_up_weights [E, 128, 2, HS, I] uint16, expert_gate_up_weights_scale [E, 16, 2, HS, I],
    expert_down_weights [E, 128, IS, H] uint16, expert_down_weights_scale [E, 16, IS, H],
    expert_gate_up_bias [E, 128, 2, IS, 4] and expert_down_bias [E, H] (float32).
    `experts` selects this rank's experts (expert parallelism)."""
    e, rows, h_blocks, _ = mlp1_blocks.shape
    inter, hidden = rows // 2, 32 * h_blocks
    _check("mlp1_blocks", mlp1_blocks, (e, 2 * inter, hidden // 32, 16))
    _check("mlp1_scales", mlp1_scales, (e, 2 * inter, hidden // 32))
    _check("mlp1_bias", mlp1_bias, (e, 2 * inter), None)
    _check("mlp2_blocks", mlp2_blocks, (e, hidden, inter // 32, 16))
    _check("mlp2_scales", mlp2_scales, (e, hidden, inter // 32))
    _check("mlp2_bias", mlp2_bias, (e, hidden), None)
    pick = experts or slice(None)

    def split(a: np.ndarray) -> np.ndarray:  # interleaved rows [E, 2I, ...] -> [E, 2, I, ...]
        a = a[pick]
        return np.stack([a[:, 0::2], a[:, 1::2]], axis=1)

    gate_up, gate_up_scale = mx_layout.gate_up_to_kernel(_codes(split(mlp1_blocks)), split(mlp1_scales), ELEMENT)
    down, down_scale = mx_layout.down_to_kernel(_codes(mlp2_blocks[pick]), mlp2_scales[pick], ELEMENT)
    return {
        "expert_gate_up_weights": gate_up,
        "expert_gate_up_weights_scale": gate_up_scale,
        "expert_down_weights": down,
        "expert_down_weights_scale": down_scale,
        "expert_gate_up_bias": mx_layout.gate_up_bias_to_kernel(split(np.asarray(mlp1_bias, dtype=np.float32))),
        "expert_down_bias": np.ascontiguousarray(np.asarray(mlp2_bias, dtype=np.float32)[pick]),
    }
