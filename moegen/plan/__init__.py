"""Kernel families: each module `moegen/plan/<family>.py` exports a `FAMILY`.

A family is its options (data, validated by the spec layer) and a plan function from
a checked layer and variant to a `KernelPlan`, rendered by `templates/<family>.py.j2`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from moegen.plan.common import KernelPlan, PlanError
from moegen.spec.model import Layer, Variant
from moegen.spec.options import OptionSpec

FAMILY_MODULES = ("router", "tkg", "cte", "mlp", "activation")


@dataclass(frozen=True)
class Family:
    name: str
    options: tuple[OptionSpec, ...]
    plan: Callable[[Layer, Variant], KernelPlan]
    doc: str


def families() -> dict[str, Family]:
    """Every known family by name."""
    found = {}
    for module_name in FAMILY_MODULES:
        family = importlib.import_module(f"moegen.plan.{module_name}").FAMILY
        found[family.name] = family
    return found


__all__ = ["Family", "KernelPlan", "PlanError", "families"]
