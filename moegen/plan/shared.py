"""The shared family: a layer's shared experts (docs/shared_experts.md), options and plan.

Every token runs the S shared experts with weight 1 (DeepSeek-V3, Llama-4) or with Qwen2-MoE's sigmoid
gate, and their sum is added to the routed experts' output:

    shared(x)[t] = g[t] * sum_s MLP_s(x[t])     g = 1, or sigmoid(x[t] @ w_gate) given as gate values

The plan runs them as their own dense kernel: the tkg template in all-expert mode over a view of the
layer whose experts are the S shared experts (weights [S, H, 2, I_S / tp]), every expert on every token,
with no affinity scaling (or POST_SCALE by the gate values). The routed tkg / cte kernels run them
inside instead when their `shared` option fuses them (moegen/plan/shared_fusion.py).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from moegen.plan import tkg
from moegen.plan.common import PlanError
from moegen.spec.model import Dims, Layer, Quant, Variant

# The tkg options that mean something for a dense kernel over the shared experts (mode is all_experts,
# ep is 1: every rank holds the shared experts, split by tensor parallelism).
SHARED_OPTION_NAMES = ("tokens", "tp", "out", "input", "output", "shard")
OPTIONS = tuple(option for option in tkg.OPTIONS if option.name in SHARED_OPTION_NAMES)

FUSION_DECISION = (
    "own kernel, the separate path",
    "the routed tkg / cte kernels with shared=separate, or shared=auto when they cannot fuse the shared "
    "experts (their `moegen explain` says why), leave them to this kernel, which runs every shared expert "
    "on every token (an all-expert pass, N <= 128 tokens per weight tile); the caller adds its output to the "
    "routed output. A fused routed kernel (shared=fused, or auto when it can) makes this kernel unnecessary",
)


@dataclass(frozen=True, kw_only=True)
class SharedPlan(tkg.TkgPlan):
    """A tkg all-expert plan over the shared experts; `gate`: the output is scaled by the gate values."""

    shared_experts: int
    gate: bool

    @property
    def template(self) -> str:
        return "tkg.py.j2"


def shared_layer(layer: Layer, tp: int) -> Layer:
    """The layer as the tkg family sees the shared experts: E = K = S experts of width I_S, no EP."""
    dims = layer.dims
    shared_dims = Dims(
        hidden=dims.hidden,
        intermediate=dims.shared_intermediate,
        experts=dims.shared_experts,
        top_k=dims.shared_experts,
        tp=tp,
    )
    return Layer(
        name=layer.name,
        path=layer.path,
        dims=shared_dims,
        dtype=layer.dtype,
        out_dtype=layer.out_dtype,
        router=None,
        expert=layer.shared_expert,
        quant=layer.quant,
        span=layer.span,
    )


def plan(layer: Layer, variant: Variant) -> SharedPlan:
    if layer.shared_expert is None or not layer.dims.shared_experts:
        raise PlanError(
            (
                None,
                "the shared family runs the layer's shared experts: add 'shared_experts=S shared_intermediate=I' "
                "to dims and a 'shared_expert = ...' pipeline",
            )
        )
    if layer.quant != Quant():
        raise PlanError(
            (None, "shared experts are generated with bf16/fp16 weights only (the layer's quant setting is not none)")
        )
    options = dict(variant.options, mode="all_experts", ep=1)
    tp = options.get("tp") or layer.dims.tp
    tkg_variant = Variant(variant.name, "tkg", options, variant.option_spans, variant.span)
    base = tkg.plan(shared_layer(layer, tp), tkg_variant)
    values = {f.name: getattr(base, f.name) for f in fields(base)}
    gate = layer.shared_expert.affinity_scale == "post"
    what = "the gate values sigmoid(x @ w_gate) [T, S] in expert_affinities" if gate else "affinity 1"
    values.update(
        family="shared",
        shared_experts=layer.dims.shared_experts,
        gate=gate,
        decisions=(
            *base.decisions,
            ("shared experts", f"{layer.dims.shared_experts} x I_S {base.intermediate} per rank, {what}"),
            FUSION_DECISION,
        ),
    )
    return SharedPlan(**values)


def _family():
    from moegen.plan import Family

    return Family(
        name="shared",
        options=OPTIONS,
        plan=plan,
        doc="the layer's shared experts: a dense all-expert kernel over the S shared experts (weight 1 or a sigmoid gate)",
    )


FAMILY = _family()
