"""The expert MLP of SEMANTICS section 1, for one expert, in NumPy.

Pipeline for token rows x [M, H] (every step optional except the matmuls):

    x  -> (static input quant) -> G, U = x @ Wg, x @ Wu      fp32 accumulation
       -> * weight scale (fp8 row/static) -> + bias (+1 on up: GPT-OSS) -> checkpoint "gate_up"
       -> clamp -> round[gate_up]
       -> a = act(g) -> round[act] -> h = a * u -> round[h]
       -> (static input quant) -> y = h @ Wd -> * weight scale -> + bias -> round[down]

round[...] are the rounding points of `Precision`: each one is where a kernel stores the value
in SBUF in a narrower dtype. Elementwise math is done in fp64 and rounded to fp32 (the engines
compute elementwise ops in fp32; fp64 keeps the reference's own error far below that).
FP8 scales are applied to the matmul result (x @ Wq) * scale, as a kernel does when it evacuates
PSUM; this equals dequantizing the weights first up to fp32 rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from moegen.reference.quant import dequantize_mx, quantize_mx, quantize_static_input, round_to

ACTIVATIONS = ("silu", "gelu", "gelu_tanh", "swish", "relu", "squared_relu")
SWISH_ALPHA = 1.702  # GPT-OSS; NKI's `gelu_apprx_sigmoid` is x * sigmoid(1.702 x)


@dataclass(frozen=True)
class Precision:
    """Where the reference rounds intermediate values (a dtype name, or None to keep fp32).

    matmul_in: matmul operands built inside the kernel: the pre-scaled input x*affinity and h.
    gate_up: g and u after dequant, bias and clamp (PSUM evacuated to SBUF).
    act: a(g) before the multiply (None models a fused activation-multiply).
    h: the product a(g) * u (the down projection's input).
    down: y after the down bias, before affinity scaling (None: scaling fused into the evacuation).
    accumulate: the running sum over a token's experts in TKG (None: fp32, rounded once at the end).
    The final output is always rounded to the output dtype.
    """

    matmul_in: str | None = None
    gate_up: str | None = None
    act: str | None = None
    h: str | None = None
    down: str | None = None
    accumulate: str | None = None

    @classmethod
    def stores(cls, dtype: str) -> Precision:
        """A kernel keeping every SBUF intermediate in `dtype` (bf16 for a bf16 kernel); fp32 PSUM."""
        return cls(matmul_in=dtype, gate_up=dtype, act=dtype, h=dtype)

    @classmethod
    def of(cls, precision: Precision | str | None) -> Precision:
        """Normalise an argument: None -> all fp32; a dtype name -> `stores(name)`."""
        if precision is None:
            return cls()
        if isinstance(precision, str):
            return cls.stores(precision)
        return precision


@dataclass(frozen=True)
class ExpertMLP:
    """Shape of the expert MLP computation (everything but the tensors).

    gated: gate and up projections (weights [H, 2, I]); False: a single projection [H, I] or [H, 1, I].
    alpha: swish's alpha (default 1.702).
    up_plus_one: GPT-OSS (u + 1) * swish(g); computed as a +1 folded into the up bias with the up clamp
    window shifted by +1, which is exactly clamp(u) + 1.
    """

    activation: str = "silu"
    alpha: float | None = None
    gated: bool = True
    gate_clamp_lower_limit: float | None = None
    gate_clamp_upper_limit: float | None = None
    up_clamp_lower_limit: float | None = None
    up_clamp_upper_limit: float | None = None
    up_plus_one: bool = False

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, not {self.activation!r}")
        if not self.gated and (
            self.up_plus_one or self.up_clamp_lower_limit is not None or self.up_clamp_upper_limit is not None
        ):
            raise ValueError("a non-gated MLP has no up projection: no up clamp, no +1 on up")

    def with_(self, **changes) -> ExpertMLP:
        return replace(self, **changes)


_erf = np.frompyfunc(math.erf, 1, 1)


def activation(g: np.ndarray, name: str, alpha: float | None = None) -> np.ndarray:
    """a(g) elementwise in fp64 (returned as fp64): silu, gelu (erf), gelu_tanh, swish(alpha), relu,
    squared_relu."""
    g = np.asarray(g, dtype=np.float64)
    if name == "silu":
        return g * _sigmoid(g)
    if name == "swish":
        return g * _sigmoid((SWISH_ALPHA if alpha is None else alpha) * g)
    if name == "gelu":
        return 0.5 * g * (1.0 + _erf(g / math.sqrt(2.0)).astype(np.float64))
    if name == "gelu_tanh":
        return 0.5 * g * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (g + 0.044715 * g**3)))
    if name == "relu":
        return np.maximum(g, 0.0)
    if name == "squared_relu":
        return np.maximum(g, 0.0) ** 2
    raise ValueError(f"unknown activation {name!r}")


def _sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-z)) without overflow, accurate in both tails."""
    ez = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + ez), ez / (1.0 + ez))


def _clamp(v: np.ndarray, lo: float | None, hi: float | None) -> np.ndarray:
    if hi is not None:
        v = np.minimum(v, hi)
    if lo is not None:
        v = np.maximum(v, lo)
    return v


def _gate_up_scale(scale, parts: int, inter: int) -> np.ndarray:
    """A gate/up scale ([parts, I] / [1, parts*I] row, [parts, 1] static, or one value) as [parts, I|1]."""
    s = np.asarray(scale, dtype=np.float32)
    if s.size == parts * inter:
        return s.reshape(parts, inter)
    if s.size in (1, parts):
        return s.reshape(-1, 1)
    raise ValueError(f"gate/up scale of shape {s.shape} fits neither [{parts}, {inter}] nor [{parts}, 1]")


def _scalar(v) -> np.float32:
    return np.float32(np.asarray(v, dtype=np.float32).reshape(-1)[0])


def expert_mlp(
    x: np.ndarray,
    gate_up_weight: np.ndarray,
    down_weight: np.ndarray,
    *,
    mlp: ExpertMLP = ExpertMLP(),
    gate_up_bias: np.ndarray | None = None,
    down_bias: np.ndarray | None = None,
    gate_up_scale: np.ndarray | None = None,
    down_scale: np.ndarray | None = None,
    gate_up_input_scale: float | np.ndarray | None = None,
    down_input_scale: float | np.ndarray | None = None,
    fp8_dtype: str = "fp8",
    precision: Precision | str | None = None,
    checkpoints: dict | None = None,
    mx_activations: str | None = None,
) -> np.ndarray:
    """One expert on token rows x [M, H] -> y [M, H] float32 (before affinity post-scaling).

    gate_up_weight [H, 2, I] ([:, 0] gate, [:, 1] up), or [H, I] / [H, 1, I] when not gated;
    down_weight [I, H]; biases [2, I] (or [I]) and [H]. FP8: weights hold fp8 values, gate_up_scale
    broadcasts to [2, I] (row [2, I], static [2, 1]) and down_scale to [H]. Static input scales
    quantize the matmul input to fp8 first: x_q = fp8(x / s) and the result is multiplied back by s.
    If `checkpoints` is a dict it receives 'gate_up' [M, 2, I] (or [M, 1, I]): the projections after
    dequant, bias (with the +1 of up_plus_one) and clamp, at the gate_up rounding: what AWS's cte
    kernel stores in gate_up_activations_T for the backward pass.
    mx_activations (an element dtype, e.g. 'fp8_e4m3fn'): both matmul inputs, x and h (after its
    rounding), are MX-quantized by quantize_mx's rule in blocks of 32 along the contraction, as an
    MX kernel does on chip before nc_matmul_mx (the weights then hold exact dequantized MX values).
    """
    p = Precision.of(precision)
    x = np.asarray(x, dtype=np.float32)
    w = np.asarray(gate_up_weight, dtype=np.float32)
    if mlp.gated:
        if w.ndim != 3 or w.shape[1] != 2:
            raise ValueError(f"gated gate_up_weight must be [H, 2, I], got {w.shape}")
    else:
        w = w.reshape(w.shape[0], 1, w.shape[-1])
    hidden, parts, inter = w.shape

    # Gate/up projection: fp32 accumulation (PSUM), then dequant scale, bias, +1, clamp.
    lhs, in_scale = x, np.float32(1.0)
    if mx_activations is not None:
        lhs = _mx_round(x, mx_activations)
    if gate_up_input_scale is not None:
        in_scale = _scalar(gate_up_input_scale)
        lhs = quantize_static_input(x, in_scale, fp8_dtype)
    gu = (lhs @ w.reshape(hidden, parts * inter)).reshape(-1, parts, inter)
    if gate_up_scale is not None:
        gu = gu * (_gate_up_scale(gate_up_scale, parts, inter) * in_scale)
    elif gate_up_input_scale is not None:
        gu = gu * in_scale
    if gate_up_bias is not None:
        gu = gu + np.asarray(gate_up_bias, dtype=np.float32).reshape(parts, inter)
    if mlp.up_plus_one:
        gu[:, 1] += np.float32(1.0)
    g = round_to(_clamp(gu[:, 0], mlp.gate_clamp_lower_limit, mlp.gate_clamp_upper_limit), p.gate_up)

    # Activation and gating product.
    a = round_to(activation(g, mlp.activation, mlp.alpha), p.act)
    if mlp.gated:
        shift = 1.0 if mlp.up_plus_one else 0.0
        lo = None if mlp.up_clamp_lower_limit is None else mlp.up_clamp_lower_limit + shift
        hi = None if mlp.up_clamp_upper_limit is None else mlp.up_clamp_upper_limit + shift
        u = round_to(_clamp(gu[:, 1], lo, hi), p.gate_up)
        h = round_to(a.astype(np.float64) * u, p.h)
    else:
        h = a
    if checkpoints is not None:
        checkpoints["gate_up"] = np.stack([g, u], axis=1) if mlp.gated else g[:, None, :]
    h = round_to(h, p.matmul_in)
    if mx_activations is not None:
        h = _mx_round(h, mx_activations)

    # Down projection.
    d = np.asarray(down_weight, dtype=np.float32)
    if d.shape[0] != inter:
        raise ValueError(f"down_weight must be [I={inter}, H], got {d.shape}")
    d_scale = np.float32(1.0)
    if down_input_scale is not None:
        d_scale = _scalar(down_input_scale)
        h = quantize_static_input(h, d_scale, fp8_dtype)
    y = h @ d
    if down_scale is not None:
        y = y * (np.asarray(down_scale, dtype=np.float32).reshape(-1) * d_scale)
    elif down_input_scale is not None:
        y = y * d_scale
    if down_bias is not None:
        y = y + np.asarray(down_bias, dtype=np.float32).reshape(-1)
    return round_to(y, p.down)


def _mx_round(v: np.ndarray, elem: str) -> np.ndarray:
    """v quantized by quantize_mx ('nki' rule, blocks of 32 along the last axis) and dequantized (fp32)."""
    return dequantize_mx(*quantize_mx(v, elem, "nki", axis=-1), axis=-1)


def dense_mlp_mx(
    x: np.ndarray,
    gate_up: np.ndarray,
    down: np.ndarray,
    *,
    act: str = "silu",
    elem: str = "fp8_e4m3fn",
    h_dtype: str = "bf16",
    out_dtype: str = "bf16",
    x_scales: np.ndarray | None = None,
    gate_up_scales: np.ndarray | None = None,
    down_scales: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The dense gated MLP with MXFP8 matmuls (SEMANTICS section 6, seed mlp_mxfp8).

    x [S, H], gate_up [2I, H] (rows 0..I-1 gate, I..2I-1 up), down [H, I]. An operand given with its
    scales (uint8, one per 32 consecutive values of its last axis) holds MXFP8 element values and is
    only dequantized; one given without is quantized on chip by quantize_mx (the 'nki' rule, blocks
    along the last axis). g, u: fp32 sums of the dequantized products; a = act(g) in fp32; h = a * u
    stored in h_dtype, quantized again by quantize_mx for the down projection; out in out_dtype.
    Returns out [S, H] and the checkpoints gate_pre, gate_act, up, hidden [S, I] in out_dtype.
    """

    def operand(values, scales):
        if scales is None:
            values, scales = quantize_mx(values, elem, "nki", axis=-1)
        return dequantize_mx(values, scales, axis=-1).astype(np.float64)

    xd = operand(x, x_scales)
    w = operand(gate_up, gate_up_scales)
    inter = w.shape[0] // 2
    g = round_to(xd @ w[:inter].T, "fp32")
    u = round_to(xd @ w[inter:].T, "fp32")
    a = round_to(activation(g, act), "fp32")
    h = round_to(a.astype(np.float64) * u, h_dtype)
    y = operand(h, None) @ operand(down, down_scales).T
    return {
        "out": round_to(y, out_dtype),
        "gate_pre": round_to(g, out_dtype),
        "gate_act": round_to(a, out_dtype),
        "up": round_to(u, out_dtype),
        "hidden": round_to(h, out_dtype),
    }
