"""The tkg kernel family: options and plan. (Being written: see the tkg issue.)"""

from __future__ import annotations

from moegen.plan.common import KernelPlan, PlanError
from moegen.spec.model import Layer, Variant


def plan(layer: Layer, variant: Variant) -> KernelPlan:
    raise PlanError((None, "the tkg family is not generated yet"))


def _family():
    from moegen.plan import Family

    return Family(name="tkg", options=(), plan=plan, doc="tkg kernels")


FAMILY = _family()
