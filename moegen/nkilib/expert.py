"""The expert pipeline of an AWS moe_tkg / moe_cte call: activation, scaling mode, biases, clamps."""

from __future__ import annotations

import math

import numpy as np

from moegen.nkilib.enums import ActFnType, ExpertAffinityScaleMode
from moegen.nkilib.variant import UnsupportedCall

ACTIVATIONS = {
    ActFnType.SiLU: "silu",
    ActFnType.GELU: "gelu",
    ActFnType.GELU_Tanh_Approx: "gelu_tanh",
    ActFnType.Swish: "swish(1.702)",  # AWS: nl.gelu_apprx_sigmoid, x * sigmoid(1.702 x)
}


def _number(flag: str, value: float) -> str:
    if not math.isfinite(value):
        raise UnsupportedCall(f"{flag}={value}: clamp limits must be finite numbers")
    return repr(float(value))


def clamp_stage(gate_upper, gate_lower, up_upper, up_lower) -> str | None:
    """`clamp(...)` from AWS's four limits, or None without limits."""
    bounds = []
    for part, lower, upper, names in (
        ("gate", gate_lower, gate_upper, ("gate_clamp_lower_limit", "gate_clamp_upper_limit")),
        ("up", up_lower, up_upper, ("up_clamp_lower_limit", "up_clamp_upper_limit")),
    ):
        if lower is not None and upper is not None:
            bounds.append(f"{_number(names[0], lower)} <= {part} <= {_number(names[1], upper)}")
        elif upper is not None:
            bounds.append(f"{part} <= {_number(names[1], upper)}")
        elif lower is not None:
            bounds.append(f"{part} >= {_number(names[0], lower)}")
    return f"clamp({', '.join(bounds)})" if bounds else None


def expert_pipeline(
    *,
    activation_fn,
    scaling_mode,
    gate_up_bias: bool,
    down_bias: bool,
    clamp: str | None,
    supported_scaling: tuple[ExpertAffinityScaleMode, ...],
) -> str:
    """The spec's expert pipeline; NO_SCALE has no `affinity_scale`, POST_SCALE puts it last, PRE_SCALE first."""
    activation_fn, scaling_mode = ActFnType(activation_fn), ExpertAffinityScaleMode(scaling_mode)
    if scaling_mode not in supported_scaling:
        raise UnsupportedCall(
            f"expert_affinities_scaling_mode={scaling_mode.name}: moegen generates "
            + ", ".join(mode.name for mode in supported_scaling)
        )
    stages = ["affinity_scale"] if scaling_mode == ExpertAffinityScaleMode.PRE_SCALE else []
    stages.append("gate_up(bias)" if gate_up_bias else "gate_up")
    stages += [clamp] if clamp else []
    stages += [ACTIVATIONS[activation_fn], "down(bias)" if down_bias else "down"]
    stages += ["affinity_scale"] if scaling_mode == ExpertAffinityScaleMode.POST_SCALE else []
    return " -> ".join(stages)


def weight_quant(weights: np.ndarray, gate_up_scale, down_scale, intermediate: int, names: tuple[str, str]) -> str:
    """'' (no quantization), 'fp8_row' or 'fp8_static' from the weight dtype and the scale shapes.

    names: how the caller's API spells (the scales' owner, the gate/up scale), for the errors."""
    owner, gate_up_name = names
    if not np.dtype(weights.dtype).name.startswith("float8"):
        if gate_up_scale is not None or down_scale is not None:
            raise UnsupportedCall(
                f"{owner}: dequantization scales with {weights.dtype} weights; moegen dequantizes fp8 weights only"
            )
        return ""
    if gate_up_scale is None or down_scale is None:
        raise UnsupportedCall(f"{owner}: fp8 weights need both dequantization scales")
    shape = tuple(np.shape(gate_up_scale))
    if intermediate == 1 and shape[1:] == (2, 1):
        raise UnsupportedCall(f"{gate_up_name}: shape {shape} is both a per-row and a per-matrix scale when I = 1")
    return "fp8_static" if shape[1:] == (2, 1) else "fp8_row"
