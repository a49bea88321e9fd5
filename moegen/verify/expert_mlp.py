"""The reference's ExpertMLP of a plan's ExpertMLPPlan (moegen/plan/expert.py): one mapping for every
harness that runs an expert MLP through moegen.reference."""

from __future__ import annotations

from moegen.plan.expert import ExpertMLPPlan
from moegen.reference.mlp import ExpertMLP


def unshift(limit: float | None, mlp: ExpertMLPPlan) -> float | None:
    """The spec's up clamp limit (the plan holds it shifted by the folded +1; the reference shifts itself)."""
    return None if limit is None else limit - mlp.up_constant


def reference_mlp(m: ExpertMLPPlan) -> ExpertMLP:
    """The ExpertMLP the reference runs for the plan's MLP `m` (clamp limits as the spec wrote them)."""
    return ExpertMLP(
        activation=m.activation,
        alpha=m.alpha,
        gated=m.gated,
        gate_clamp_lower_limit=m.gate_lower,
        gate_clamp_upper_limit=m.gate_upper,
        up_clamp_lower_limit=unshift(m.up_lower, m),
        up_clamp_upper_limit=unshift(m.up_upper, m),
        up_plus_one=m.up_plus_one,
    )
