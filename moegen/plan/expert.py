"""The expert MLP as plan data, shared by the tkg and cte families (SEMANTICS sections 1, 2).

Interface (small on purpose; the cte family uses it too):

    mlp = expert_mlp_plan(layer)          # ExpertMLPPlan, or PlanError with the reason
    mlp.activation_steps                  # how the template spells a(g): see ActivationStep
    mlp.gated / projections               # gate and up (2) or the up projection only (1: weights [E, H, I])
    mlp.gate_lower / gate_upper           # gate clamp limits (None = no limit)
    mlp.up_lower / up_upper               # up clamp limits, ALREADY shifted by +1 when up_plus_one
    mlp.up_constant                       # 1.0 when the GPT-OSS +1 is folded into the up bias, else 0.0
    mlp.weight_quant                      # 'none' | 'fp8_row' | 'fp8_static' | 'mxfp4' | 'mxfp8' (mx=True)
    mlp.input_quant                       # 'none' | 'fp8_static' (static input scales, needs fp8 weights)
                                          # | 'mxfp8' (MX weights: x and h quantized on chip)
    mlp.affinity_scale                    # 'none' | 'pre' | 'post'
    mlp.weight_dtype                      # dtype name of the weights in HBM ('bf16', 'fp16', 'fp8')
    mlp.decisions                         # (what, why) pairs to append to a plan's decisions

`templates/common/expert_mlp.j2` spells these as NKI (its macros take an ExpertMLPPlan as `mlp`).
The +1 of GPT-OSS ((u + 1) * a(g)) is folded: the kernel adds `up_constant` to the up projection
together with the up bias, and clamps u+1 to the window shifted by +1, which equals clamp(u) + 1.
"""

from __future__ import annotations

from dataclasses import dataclass

from moegen.plan.common import PlanError
from moegen.spec.model import Layer

# The NKI ScalarE op of each activation that has one. Swish is NKI's gelu_apprx_sigmoid,
# x * sigmoid(1.702 x), only for alpha 1.702; other alphas are composed from a sigmoid.
NKI_ACTIVATION = {
    "silu": "nl.silu",
    "gelu": "nl.gelu",
    "gelu_tanh": "nl.gelu_apprx_tanh",
    "relu": "nl.relu",
}
NKI_SWISH_ALPHA = 1.702


@dataclass(frozen=True)
class ActivationStep:
    """One instruction of the activation epilogue.

    kind 'act': dst = op(src * scale) on ScalarE (op an `nl.*` name, scale a float);
    kind 'mul_src': dst = dst * src (the x * sigmoid(alpha x) of a swish with another alpha);
    kind 'square': dst = dst * dst (squared ReLU after the ReLU).
    """

    kind: str
    op: str = ""
    scale: float = 1.0


@dataclass(frozen=True)
class ExpertMLPPlan:
    gated: bool
    activation: str
    alpha: float | None
    activation_steps: tuple[ActivationStep, ...]
    gate_up_bias: bool
    down_bias: bool
    gate_lower: float | None
    gate_upper: float | None
    up_lower: float | None
    up_upper: float | None
    up_plus_one: bool
    up_constant: float
    weight_quant: str
    input_quant: str
    affinity_scale: str
    weight_dtype: str
    decisions: tuple[tuple[str, str], ...]
    mx: bool = False  # MX weights: the scales are applied inside nc_matmul_mx (no dequant step)

    def __str__(self) -> str:
        parts = [] if self.gated else ["not gated"]
        parts += [self.activation if self.alpha is None else f"{self.activation}({self.alpha:g})"]
        if self.gate_up_bias or self.down_bias:
            parts.append(
                "bias " + "+".join(n for n, on in (("gate_up", self.gate_up_bias), ("down", self.down_bias)) if on)
            )
        for name, lo, hi in (("gate", self.gate_lower, self.gate_upper), ("up", self.up_lower, self.up_upper)):
            if lo is not None or hi is not None:
                parts.append(
                    f"clamp {name} [{'-inf' if lo is None else f'{lo:g}'}, {'inf' if hi is None else f'{hi:g}'}]"
                )
        if self.up_plus_one:
            parts.append("up +1 folded")
        if self.weight_quant != "none":
            parts.append(f"weights {self.weight_quant}")
        if self.input_quant != "none":
            parts.append(f"inputs {self.input_quant}")
        parts.append(f"scale {self.affinity_scale}")
        return ", ".join(parts)

    @property
    def projections(self) -> int:
        """Input projections in the weights' third axis: 2 (gate, up) when gated, else 1 (up)."""
        return 2 if self.gated else 1

    @property
    def has_gate_clamp(self) -> bool:
        return self.gate_lower is not None or self.gate_upper is not None

    @property
    def has_up_clamp(self) -> bool:
        return self.up_lower is not None or self.up_upper is not None

    @property
    def dequant(self) -> bool:
        """The matmul results are multiplied by a weight (and input) scale at PSUM evacuation."""
        return self.weight_quant in ("fp8_row", "fp8_static")


def activation_steps(activation: str, alpha: float | None) -> tuple[tuple[ActivationStep, ...], str]:
    """The instructions computing a(g) and the reason for that spelling."""
    if activation in NKI_ACTIVATION:
        op = NKI_ACTIVATION[activation]
        return (ActivationStep("act", op),), f"{activation} is the ScalarE op {op}"
    if activation == "swish":
        alpha = NKI_SWISH_ALPHA if alpha is None else alpha
        if alpha == NKI_SWISH_ALPHA:
            return (
                (ActivationStep("act", "nl.gelu_apprx_sigmoid"),),
                "swish(1.702) is NKI's gelu_apprx_sigmoid, x * sigmoid(1.702 x), one ScalarE op",
            )
        return (
            (ActivationStep("act", "nl.sigmoid", scale=float(alpha)), ActivationStep("mul_src")),
            f"swish({alpha:g}) has no NKI op (gelu_apprx_sigmoid fixes alpha 1.702): "
            f"sigmoid({alpha:g} x) on ScalarE, then times x",
        )
    if activation == "squared_relu":
        return (
            (ActivationStep("act", "nl.relu"), ActivationStep("square")),
            "squared_relu has no NKI op: relu on ScalarE, then squared (x * x)",
        )
    raise PlanError((None, f"activation {activation!r} has no NKI spelling"))


def expert_mlp_plan(layer: Layer, mx: bool = False) -> ExpertMLPPlan:
    """The expert MLP of `layer` as plan data; PlanError for what no template can build. mx: the
    family generates MX weights (mxfp4 / mxfp8, Trn3) for this variant."""
    expert = layer.expert
    if expert is None:
        raise PlanError((None, "the layer has no 'expert = ...' pipeline: an expert kernel needs one"))
    problems: list[tuple[str | None, str]] = []
    mx_weights = layer.quant.weights in ("mxfp4", "mxfp8")
    if mx_weights and mx:
        if not expert.gated:
            problems.append(
                (
                    None,
                    "non-gated experts with MX weights are not generated yet: the MX gate/up stage "
                    "(templates/common/mx_expert.j2) reads the fused [gate, up] weight layout",
                )
            )
        if layer.quant.activations not in ("none", "mxfp8"):
            problems.append(
                (
                    None,
                    f"quant activations={layer.quant.activations} with MX weights: the activations are "
                    "quantized on chip to MXFP8 (quant activations=mxfp8, or none)",
                )
            )
    elif layer.quant.weights not in ("none", "fp8_row", "fp8_static"):
        problems.append(
            (
                None,
                f"quant weights={layer.quant.weights}: MX weights need nc_matmul_mx (Trn3) and the "
                "MX layouts; this family's MX variants are not generated (the tkg family generates them)",
            )
        )
    if not mx_weights and layer.quant.activations not in ("none", "fp8_static"):
        problems.append(
            (None, f"quant activations={layer.quant.activations}: only static fp8 input scales are generated")
        )
    if layer.quant.activations == "fp8_static" and layer.quant.weights == "none":
        problems.append(
            (
                None,
                "quant activations=fp8_static needs fp8 weights (weights=fp8_row or fp8_static): "
                "an fp8 input against bf16 weights is not a TensorE operand pair",
            )
        )
    if problems:
        raise PlanError(*problems)
    steps, why = activation_steps(expert.activation, expert.alpha)
    decisions = [("activation", why)]
    if not expert.gated:
        decisions.append(
            (
                "projections",
                "not gated: one input projection, weights [E, H, I] (no gate slab, no gate matmul); "
                "h = a(x @ W_up), the activation's last instruction writes h",
            )
        )
    shift = 1.0 if expert.up_plus_one else 0.0
    up_lower = None if expert.up_min is None else expert.up_min + shift
    up_upper = None if expert.up_max is None else expert.up_max + shift
    if expert.up_plus_one:
        decisions.append(
            (
                "up_plus_one",
                "the GPT-OSS (u + 1) is folded into the up bias (+1.0 added with it) "
                "and the up clamp window is shifted by +1: clamp(u) + 1 exactly",
            )
        )
    if layer.quant.weights != "none":
        kind = "per output channel" if layer.quant.weights == "fp8_row" else "per matrix"
        decisions.append(
            (
                "dequant",
                f"fp8 weights ({kind} scales): the fp32 matmul result is multiplied by "
                "the scale when PSUM is evacuated, (x @ Wq) * s = x @ (Wq * s)",
            )
        )
    if mx_weights and mx:
        decisions.append(
            (
                "mx",
                f"{layer.quant.weights} weights with their E8M0 block scales: every projection is an "
                "nc_matmul_mx with the activations (x, then h) quantized on chip to MXFP8 by quantize_mx; "
                "the block scales are applied inside the matmul, so there is no dequant step",
            )
        )
    if layer.quant.activations == "fp8_static":
        decisions.append(
            (
                "input quant",
                "static input scales: the matmul input is quantized to fp8 as x / s "
                "and the result multiplied back by s with the weight scale",
            )
        )
    return ExpertMLPPlan(
        gated=expert.gated,
        activation=expert.activation,
        alpha=expert.alpha,
        activation_steps=steps,
        gate_up_bias=expert.gate_up_bias,
        down_bias=expert.down_bias,
        gate_lower=expert.gate_min,
        gate_upper=expert.gate_max,
        up_lower=up_lower,
        up_upper=up_upper,
        up_plus_one=expert.up_plus_one,
        up_constant=shift,
        weight_quant=layer.quant.weights,
        input_quant="mxfp8" if mx_weights else layer.quant.activations,
        affinity_scale=expert.affinity_scale,
        weight_dtype=layer.quant.weights if mx_weights else ("fp8" if layer.quant.weights != "none" else layer.dtype),
        decisions=tuple(decisions),
        mx=mx_weights,
    )
