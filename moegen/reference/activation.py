"""Padding-aware activations over an expert-permuted buffer (seed padded_activations_api.txt).

The buffer x [R, F] holds the first projection (FC1) of every routed token, grouped by expert and
padded so that each expert's rows start on an alignment boundary (16 rows for bf16, 128 for MXFP8).
Row r is real when r < n_used (n_used = the inclusive expert offsets' last entry) and
permutation_map[r] != -1 (its source token); other rows are padding and are neither computed nor
written: the output keeps whatever it held (the functions take the output and return a copy).
"""

from __future__ import annotations

import numpy as np

from moegen.reference.mlp import activation
from moegen.reference.quant import name_of_array, np_dtype, quantize_mx, round_to


def live_rows(permutation_map: np.ndarray, n_used: int | np.ndarray) -> np.ndarray:
    """Boolean [R]: the rows an activation kernel computes (r < n_used and permutation_map[r] != -1)."""
    perm = np.asarray(permutation_map).reshape(-1)
    used = int(np.asarray(n_used).reshape(-1)[0])
    return (np.arange(perm.size) < used) & (perm != -1)


def padded_activation(
    x: np.ndarray,
    permutation_map: np.ndarray,
    n_used: int | np.ndarray,
    out: np.ndarray,
    *,
    activation_fn: str = "squared_relu",
    alpha: float | None = None,
) -> np.ndarray:
    """out with its live rows replaced by act(x) rounded to out's dtype (seed: padded_squared_relu)."""
    result = np.array(out, copy=True)
    live = live_rows(permutation_map, n_used)
    values = activation(np.asarray(x[live], dtype=np.float32), activation_fn, alpha)
    result[live] = round_to(values, None).astype(result.dtype)
    return result


def padded_activation_mxfp8(
    x: np.ndarray,
    permutation_map: np.ndarray,
    n_used: int | np.ndarray,
    data: np.ndarray,
    scales: np.ndarray,
    *,
    activation_fn: str = "squared_relu",
    alpha: float | None = None,
    elem: str = "fp8_e4m3fn",
) -> tuple[np.ndarray, np.ndarray]:
    """(data, scales) with the live rows replaced by MXFP8 of act(x) (seed: squared_relu_and_quantize_mxfp8).

    data [R, F/4] uint32 words (value q of word w is element 4w + q, byte q, little endian); scales
    [R, F/32] uint8 E8M0 biased exponents, one per 32 consecutive values of a row. act(x) is rounded
    to x's dtype (the quantizer reads bf16/fp16) and quantized with NKI's quantize_mx rule.
    """
    data, scales = np.array(data, copy=True), np.array(scales, copy=True)
    live = live_rows(permutation_map, n_used)
    if live.any():
        a = round_to(activation(np.asarray(x[live], dtype=np.float32), activation_fn, alpha), name_of_array(x))
        elements, block_scales = quantize_mx(a, elem, "nki", axis=-1)
        data[live] = np.ascontiguousarray(elements.astype(np_dtype(elem))).view(np.uint32)
        scales[live] = block_scales
    return data, scales
