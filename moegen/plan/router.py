"""The router kernel family: options and plan. (Being written: see the router issue.)"""

from __future__ import annotations

from moegen.plan.common import KernelPlan, PlanError
from moegen.spec.model import Layer, Variant


def plan(layer: Layer, variant: Variant) -> KernelPlan:
    raise PlanError((None, "the router family is not generated yet"))


def _family():
    from moegen.plan import Family

    return Family(name="router", options=(), plan=plan, doc="router kernels")


FAMILY = _family()
