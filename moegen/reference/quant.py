"""Dtype rounding and quantization helpers for the reference (ml_dtypes based).

Every helper returns float32 values unless it says otherwise: the reference computes in
fp32 (or fp64 where that is cheaper than being careful) and calls `round_to` at each point
where a kernel stores a value in a narrower dtype.

dtype names: 'fp32', 'bf16', 'fp16', 'fp8' (= 'fp8_e4m3', NKI's legacy `float8_e4m3`: IEEE-style
e4m3, max 240), 'fp8_e4m3fn' (OCP, max 448), 'fp8_e5m2' (max 57344), 'fp4_e2m1' (max 6),
'e8m0' (MX scale). Casts to the fp8/fp4 types saturate to the type's largest finite value, as
the hardware does; ml_dtypes alone would give inf or NaN.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

DTYPES: dict[str, np.dtype] = {
    "fp32": np.dtype(np.float32),
    "bf16": np.dtype(ml_dtypes.bfloat16),
    "fp16": np.dtype(np.float16),
    "fp8": np.dtype(ml_dtypes.float8_e4m3),
    "fp8_e4m3": np.dtype(ml_dtypes.float8_e4m3),
    "fp8_e4m3fn": np.dtype(ml_dtypes.float8_e4m3fn),
    "fp8_e5m2": np.dtype(ml_dtypes.float8_e5m2),
    "fp4_e2m1": np.dtype(ml_dtypes.float4_e2m1fn),
    "e8m0": np.dtype(ml_dtypes.float8_e8m0fnu),
    "int32": np.dtype(np.int32),
}
ALIASES = {
    "float32": "fp32",
    "bfloat16": "bf16",
    "float16": "fp16",
    "float8_e4m3": "fp8_e4m3",
    "e4m3": "fp8_e4m3",
    "float8_e4m3fn": "fp8_e4m3fn",
    "e4m3fn": "fp8_e4m3fn",
    "float8_e5m2": "fp8_e5m2",
    "e5m2": "fp8_e5m2",
    "float4_e2m1fn": "fp4_e2m1",
    "e2m1": "fp4_e2m1",
    "float8_e8m0fnu": "e8m0",
}
# Types whose casts saturate (narrow floats with no useful infinity on the hardware).
SATURATING = ("fp8", "fp8_e4m3", "fp8_e4m3fn", "fp8_e5m2", "fp4_e2m1")


def dtype_name(dtype: str | np.dtype | type) -> str:
    """Canonical name ('bf16', 'fp8_e4m3fn', ...) of a name, alias or NumPy/ml_dtypes dtype."""
    if isinstance(dtype, str):
        name = ALIASES.get(dtype, dtype)
        if name not in DTYPES:
            raise ValueError(f"unknown dtype name {dtype!r}; known: {', '.join(DTYPES)}")
        return name
    dt = np.dtype(dtype)
    for name, known in DTYPES.items():
        if known == dt and name != "fp8":  # 'fp8_e4m3' is the canonical spelling of that type
            return name
    if dt == np.float64:
        return "fp32"  # the reference's own fp64 arrays are treated as fp32 values
    raise ValueError(f"no moegen name for dtype {dt}")


def name_of_array(arr: np.ndarray) -> str:
    """dtype name of an array's dtype; 'fp32' for anything without one (fp64, integers)."""
    try:
        return dtype_name(np.asarray(arr).dtype)
    except ValueError:
        return "fp32"


def np_dtype(name: str | np.dtype | type) -> np.dtype:
    """The NumPy/ml_dtypes dtype of a moegen dtype name."""
    return DTYPES[dtype_name(name)]


def max_finite(name: str) -> float:
    """Largest finite value of a float dtype (240 for NKI's fp8 e4m3, 448 for e4m3fn, ...)."""
    return float(ml_dtypes.finfo(np_dtype(name)).max)


def cast(x: np.ndarray, name: str) -> np.ndarray:
    """x stored in dtype `name` (round to nearest even; fp8/fp4 saturate to the max finite value)."""
    canon = dtype_name(name)
    x = np.asarray(x)
    if canon in SATURATING:
        top = max_finite(canon)
        x = np.clip(np.asarray(x, dtype=np.float32), -top, top)  # NaN stays NaN
    return x.astype(DTYPES[canon])


def round_to(x: np.ndarray, name: str | None) -> np.ndarray:
    """x rounded to dtype `name` and returned as float32; None or 'fp32' only converts to fp32."""
    if name is None or dtype_name(name) == "fp32":
        return np.asarray(x, dtype=np.float32)
    out = cast(x, name).astype(np.float32)
    if dtype_name(name) == "fp4_e2m1":  # no NaN encoding: keep NaN visible in the reference
        out = np.where(np.isnan(np.asarray(x, dtype=np.float32)), np.float32(np.nan), out)
    return out


# ----------------------------------------------------------------------------------------------
# FP8 weight quantization in the seed kernels' layouts. Dequantized value = stored fp8 value * scale.
# ----------------------------------------------------------------------------------------------


def _scale_from_amax(amax: np.ndarray, dtype: str) -> np.ndarray:
    """fp32 scale mapping amax onto the fp8 max; all-zero channels get scale 1."""
    amax = np.asarray(amax, dtype=np.float32)
    scale = amax / np.float32(max_finite(dtype))
    return np.where(amax > 0, scale, np.float32(1.0)).astype(np.float32)


def quantize_fp8(w: np.ndarray, reduce_axes: tuple[int, ...], dtype: str = "fp8") -> tuple[np.ndarray, np.ndarray]:
    """Quantize w to fp8 with one scale per slice over `reduce_axes` (kept as size-1 axes).

    Returns (w_fp8 in the fp8 dtype, scale fp32 with w's shape but 1 on reduce_axes).
    """
    w32 = np.asarray(w, dtype=np.float32)
    scale = _scale_from_amax(np.max(np.abs(w32), axis=reduce_axes, keepdims=True), dtype)
    return cast(w32 / scale, dtype), scale


def quantize_gate_up_fp8(w: np.ndarray, mode: str = "row", dtype: str = "fp8") -> tuple[np.ndarray, np.ndarray]:
    """Gate/up weights [E, H, 2, I] -> (fp8 [E, H, 2, I], scale).

    mode 'row': one scale per output channel, scale [E, 2, I]; 'static': one per matrix, [E, 2, 1].
    """
    if mode == "row":
        q, scale = quantize_fp8(w, (1,), dtype)
        return q, scale[:, 0]  # [E, 2, I]
    if mode == "static":
        q, scale = quantize_fp8(w, (1, 3), dtype)
        return q, scale[:, 0]  # [E, 2, 1]
    raise ValueError(f"fp8 mode must be 'row' or 'static', not {mode!r}")


def quantize_down_fp8(w: np.ndarray, mode: str = "row", dtype: str = "fp8") -> tuple[np.ndarray, np.ndarray]:
    """Down weights [E, I, H] -> (fp8 [E, I, H], scale [E, H] for 'row' or [E, 1] for 'static')."""
    if mode == "row":
        q, scale = quantize_fp8(w, (1,), dtype)
        return q, scale[:, 0]  # [E, H]
    if mode == "static":
        q, scale = quantize_fp8(w, (1, 2), dtype)
        return q, scale[:, 0]  # [E, 1]
    raise ValueError(f"fp8 mode must be 'row' or 'static', not {mode!r}")


def gate_up_scale_of_expert(scale: np.ndarray, e: int) -> np.ndarray:
    """Expert e's gate/up scale as an array broadcastable to [2, I].

    Accepts [E, 2, I] (row), [E, 1, 2I] (row, flattened: gate then up), [E, 2, 1] (static),
    [E, 1] or [E] (one scale for both).
    """
    s = np.asarray(scale, dtype=np.float32)[e]
    if s.ndim == 2 and s.shape[0] == 1 and s.shape[1] > 1:
        return s.reshape(2, -1)
    return s.reshape(-1, 1) if s.ndim <= 1 else s


def down_scale_of_expert(scale: np.ndarray, e: int) -> np.ndarray:
    """Expert e's down scale, broadcastable to [H]: accepts [E, H], [E, 1, H], [E, 1] or [E]."""
    return np.asarray(scale, dtype=np.float32)[e].reshape(-1)


def dequantize_gate_up(w: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """fp8 gate/up [E, H, 2, I] and its scale (any layout above) -> fp32 [E, H, 2, I]."""
    w32 = np.asarray(w, dtype=np.float32)
    return np.stack([w32[e] * gate_up_scale_of_expert(scale, e)[None] for e in range(w32.shape[0])])


def dequantize_down(w: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """fp8 down [E, I, H] and its scale ([E, H], [E, 1, H], [E, 1]) -> fp32 [E, I, H]."""
    w32 = np.asarray(w, dtype=np.float32)
    return np.stack([w32[e] * down_scale_of_expert(scale, e)[None] for e in range(w32.shape[0])])


def quantize_static_input(x: np.ndarray, input_scale: float | np.ndarray, dtype: str = "fp8") -> np.ndarray:
    """Static activation quantization: fp8(x / input_scale) as float32 values (saturating)."""
    return round_to(np.asarray(x, dtype=np.float32) / np.float32(np.asarray(input_scale).reshape(())), dtype)


# ----------------------------------------------------------------------------------------------
# MX (microscaling): blocks of 32 values along one axis share an E8M0 scale 2^(s - 127).
# This is the logical form (consecutive blocks along `axis`); the on-chip 8x4 packing and the
# swizzled scale layout belong to the kernels and the simulator, not to the math.
# ----------------------------------------------------------------------------------------------

# Largest unbiased exponent of each MX element type (SEMANTICS section 6: Emax).
MX_EMAX = {"fp8_e4m3fn": 8, "fp8_e5m2": 15, "fp4_e2m1": 2}
MX_RULES = ("ocp", "nki", "megatron")


def _floor_log2(a: np.ndarray) -> np.ndarray:
    """floor(log2(a)) for a > 0, exact (also for subnormals); 0 where a == 0."""
    _, exp = np.frexp(np.asarray(a, dtype=np.float64))
    return np.where(a > 0, exp - 1, 0).astype(np.int64)


def mx_scale_exponent(amax: np.ndarray, elem: str, rule: str) -> np.ndarray:
    """Unbiased block scale exponent for block maxima `amax` under a scale rule.

    'ocp': floor(log2 amax) - Emax (elements then clipped to the type's max);
    'nki': floor(log2 amax) - (Emax - 1), NKI `quantize_mx` since 0.5 (no clipping needed);
    'megatron': ceil(log2(amax / max_finite)), the smallest power of two that avoids overflow.
    All-zero blocks get exponent -127 (scale byte 0) under every rule.
    """
    elem = dtype_name(elem)
    amax = np.asarray(amax, dtype=np.float64)
    if rule == "ocp":
        exp = _floor_log2(amax) - MX_EMAX[elem]
    elif rule == "nki":
        exp = _floor_log2(amax) - (MX_EMAX[elem] - 1)
    elif rule == "megatron":
        with np.errstate(divide="ignore"):
            exp = np.ceil(np.log2(np.where(amax > 0, amax, 1.0) / max_finite(elem))).astype(np.int64)
    else:
        raise ValueError(f"MX scale rule must be one of {MX_RULES}, not {rule!r}")
    return np.where(amax > 0, np.clip(exp, -127, 127), -127).astype(np.int64)


def quantize_mx(
    x: np.ndarray, elem: str = "fp8_e4m3fn", rule: str = "nki", axis: int = -1, block: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """MX-quantize x along `axis` in blocks of `block` values.

    Returns (elements: float32 values exactly representable in `elem`, same shape as x;
    scales: uint8 biased exponents, shape of x with `axis` divided by `block`).
    """
    x32 = np.moveaxis(np.asarray(x, dtype=np.float32), axis, -1)
    if x32.shape[-1] % block:
        raise ValueError(f"MX axis length {x32.shape[-1]} is not a multiple of {block}")
    blocks = x32.reshape(*x32.shape[:-1], -1, block)
    exp = mx_scale_exponent(np.max(np.abs(blocks), axis=-1), elem, rule)
    scaled = blocks / np.exp2(exp.astype(np.float64))[..., None]
    elements = round_to(scaled, elem)  # saturating cast: the OCP rule's clip
    scales = (exp + 127).astype(np.uint8)
    return (
        np.moveaxis(elements.reshape(x32.shape), -1, axis),
        np.moveaxis(scales, -1, axis),
    )


def dequantize_mx(elements: np.ndarray, scales: np.ndarray, axis: int = -1, block: int = 32) -> np.ndarray:
    """elements * 2^(scale - 127), each scale covering `block` consecutive values along `axis`."""
    e = np.moveaxis(np.asarray(elements, dtype=np.float32), axis, -1)
    s = np.moveaxis(np.asarray(scales).astype(np.int64), axis, -1)
    factor = np.exp2((s - 127).astype(np.float64)).astype(np.float32)
    return np.moveaxis((e.reshape(*e.shape[:-1], -1, block) * factor[..., None]).reshape(e.shape), -1, axis)
