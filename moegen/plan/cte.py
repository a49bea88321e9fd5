"""The cte kernel family: options and plan. (Being written: see the cte issue.)"""

from __future__ import annotations

from moegen.plan.common import KernelPlan, PlanError
from moegen.spec.model import Layer, Variant


def plan(layer: Layer, variant: Variant) -> KernelPlan:
    raise PlanError((None, "the cte family is not generated yet"))


def _family():
    from moegen.plan import Family

    return Family(name="cte", options=(), plan=plan, doc="cte kernels")


FAMILY = _family()
