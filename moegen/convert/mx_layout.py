"""The MX expert-weight layouts of the tkg kernels (moegen/plan/mx_expert.py), to and from plain form.

Plain form: element *codes* along the contraction axis (uint8, one value each: an fp4 e2m1 nibble in
the low 4 bits, or an fp8 e4m3fn byte) with one uint8 E8M0 scale per 32 consecutive values, the
OCP layout a checkpoint ships. Kernel form: x4 words (four consecutive values, value q in nibble q of a
uint16 for fp4, byte q of a uint32 for fp8) arranged in 512-value slabs on 128 partitions; past the
end of the contraction the words are 0 and the scales 127 (2^0).

    gate_up_to_kernel(codes [E, 2, I, H], scales [E, 2, I, H/32]) -> ([E, 128, 2, HS, I], [E, 16, 2, HS, I])
    down_to_kernel(codes [E, H, I], scales [E, H, I/32])           -> ([E, 128, IS, H], [E, 16, IS, H])
    gate_up_bias_to_kernel(bias [E, 2, I])                         -> [E, 128, 2, IS, 4]
and dequantize_gate_up / dequantize_down / gate_up_bias_from_kernel back to fp32 [E, H, 2, I],
[E, I, H] and [E, 2, I] (exact: MX values are exact in fp32).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

SLAB = 512
PARTITIONS = 128
BLOCK = 32
ELEMENTS = {"fp4_e2m1": (ml_dtypes.float4_e2m1fn, 4, np.uint16), "fp8_e4m3fn": (ml_dtypes.float8_e4m3fn, 8, np.uint32)}


def slabs(length: int) -> int:
    return -(-length // SLAB)


def encode(values: np.ndarray, element: str) -> np.ndarray:
    """Element codes (uint8) of values exactly representable in `element` (checked)."""
    dtype, bits, _ = ELEMENTS[element]
    v = np.asarray(values, dtype=np.float32)
    cast = v.astype(dtype)
    if not np.array_equal(cast.astype(np.float32), v, equal_nan=True):
        raise ValueError(f"values are not exactly representable in {element}")
    return cast.view(np.uint8) & np.uint8((1 << bits) - 1)


def decode(codes: np.ndarray, element: str) -> np.ndarray:
    """float32 values of element codes (uint8)."""
    dtype, _, _ = ELEMENTS[element]
    return np.asarray(codes, dtype=np.uint8).view(dtype).astype(np.float32)


def pack_words(codes: np.ndarray, element: str) -> np.ndarray:
    """codes [..., K] -> x4 words [..., K/4]: value 4w + q in nibble / byte q of word w."""
    _, bits, word = ELEMENTS[element]
    c = np.asarray(codes, dtype=np.uint8).astype(word).reshape(*codes.shape[:-1], -1, 4)
    return sum(c[..., q] << word(bits * q) for q in range(4)).astype(word)


def unpack_words(words: np.ndarray, element: str) -> np.ndarray:
    """x4 words [..., W] -> codes [..., 4W]."""
    _, bits, word = ELEMENTS[element]
    w = np.asarray(words).astype(word)
    mask = word((1 << bits) - 1)
    return (
        np.stack([(w >> word(bits * q)) & mask for q in range(4)], axis=-1).reshape(*w.shape[:-1], -1).astype(np.uint8)
    )


def _slab_words(words: np.ndarray, length: int) -> np.ndarray:
    """[..., length/4] words -> [..., S, 128] with zero padding."""
    s = slabs(length)
    out = np.zeros((*words.shape[:-1], s * PARTITIONS), dtype=words.dtype)
    out[..., : words.shape[-1]] = words
    return out.reshape(*words.shape[:-1], s, PARTITIONS)


def _slab_scales(scales: np.ndarray, length: int) -> np.ndarray:
    """[..., length/32] scales -> [..., S, 16] with 127 (2^0) padding."""
    s = slabs(length)
    out = np.full((*scales.shape[:-1], s * PARTITIONS // 8), 127, dtype=np.uint8)
    out[..., : scales.shape[-1]] = scales
    return out.reshape(*scales.shape[:-1], s, PARTITIONS // 8)


def gate_up_to_kernel(codes: np.ndarray, scales: np.ndarray, element: str) -> tuple[np.ndarray, np.ndarray]:
    """codes [E, 2, I, H] and scales [E, 2, I, H/32] -> words [E, 128, 2, HS, I], scales [E, 16, 2, HS, I]."""
    hidden = codes.shape[-1]
    words = _slab_words(pack_words(codes, element), hidden)  # [E, 2, I, HS, 128]
    return (
        np.ascontiguousarray(words.transpose(0, 4, 1, 3, 2)),
        np.ascontiguousarray(_slab_scales(scales, hidden).transpose(0, 4, 1, 3, 2)),
    )


def down_to_kernel(codes: np.ndarray, scales: np.ndarray, element: str) -> tuple[np.ndarray, np.ndarray]:
    """codes [E, H, I] and scales [E, H, I/32] -> words [E, 128, IS, H], scales [E, 16, IS, H]."""
    inter = codes.shape[-1]
    words = _slab_words(pack_words(codes, element), inter)  # [E, H, IS, 128]
    return (
        np.ascontiguousarray(words.transpose(0, 3, 2, 1)),
        np.ascontiguousarray(_slab_scales(scales, inter).transpose(0, 3, 2, 1)),
    )


def gate_up_bias_to_kernel(bias: np.ndarray) -> np.ndarray:
    """bias [E, 2, I] -> [E, 128, 2, IS, 4] (value i = s*512 + 4p + q at [e, p, j, s, q]; zero padded)."""
    e, parts, inter = bias.shape
    out = np.zeros((e, parts, slabs(inter) * SLAB), dtype=bias.dtype)
    out[..., :inter] = bias
    return np.ascontiguousarray(out.reshape(e, parts, -1, PARTITIONS, 4).transpose(0, 3, 1, 2, 4))


def _dequantize(words: np.ndarray, scales: np.ndarray, element: str) -> np.ndarray:
    """words [..., S, 128] and scales [..., S, 16] -> fp32 values [..., S * 512]."""
    values = decode(unpack_words(words, element), element)  # [..., S, 512]
    factor = np.exp2(scales.astype(np.float64) - 127).astype(np.float32)
    values = values.reshape(*values.shape[:-1], PARTITIONS // 8, BLOCK) * factor[..., None]
    return values.reshape(*words.shape[:-2], -1)


def dequantize_gate_up(words: np.ndarray, scales: np.ndarray, hidden: int, element: str) -> np.ndarray:
    """Kernel-form gate/up -> fp32 [E, H, 2, I]."""
    w = _dequantize(words.transpose(0, 2, 4, 3, 1), scales.transpose(0, 2, 4, 3, 1), element)  # [E, 2, I, HS*512]
    return np.ascontiguousarray(w[..., :hidden].transpose(0, 3, 1, 2))


def dequantize_down(words: np.ndarray, scales: np.ndarray, inter: int, element: str) -> np.ndarray:
    """Kernel-form down -> fp32 [E, I, H]."""
    w = _dequantize(words.transpose(0, 3, 2, 1), scales.transpose(0, 3, 2, 1), element)  # [E, H, IS*512]
    return np.ascontiguousarray(w[..., :inter].transpose(0, 2, 1))


def gate_up_bias_from_kernel(bias: np.ndarray, inter: int) -> np.ndarray:
    """Kernel-form gate/up bias [E, 128, 2, IS, 4] -> [E, 2, I]."""
    e = bias.shape[0]
    return np.ascontiguousarray(bias.transpose(0, 2, 3, 1, 4).reshape(e, 2, -1)[..., :inter])
