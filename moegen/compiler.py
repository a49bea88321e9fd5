"""The pipeline of one spec file: read -> parse -> validate -> plan -> render."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from moegen.codegen.render import render
from moegen.diagnostics import Diagnostic, Span, SpecError
from moegen.plan import families
from moegen.plan.common import KernelPlan, PlanError, check_budget
from moegen.spec.model import Spec
from moegen.spec.parser import parse
from moegen.spec.validate import validate


@dataclass(frozen=True)
class GeneratedSpec:
    """What `moegen build` writes for one spec: `files` maps a file name to its text."""

    name: str
    label: str
    spec: Spec
    plans: tuple[KernelPlan, ...]
    files: dict[str, str]


def read_spec_text(path: Path) -> str:
    """The spec's text; bytes that are not UTF-8 are a located error, not a traceback."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        before = data[: error.start].decode("utf-8", errors="replace")
        line = before.count("\n") + 1
        column = len(before) - (before.rfind("\n") + 1) + 1
        span = Span(str(path), line, column, line, column + 1)
        text = data.decode("utf-8", errors="replace")
        raise SpecError([Diagnostic(span, f"byte 0x{data[error.start]:02x} is not UTF-8")], text) from None


def spec_label(path: Path) -> str:
    """`specs/name.moe`: the last two path parts, the same from any working directory."""
    resolved = path.resolve()
    return f"{resolved.parent.name}/{resolved.name}"


def load_spec(path: Path) -> Spec:
    text = read_spec_text(path)
    syntax = parse(text, str(path))
    return validate(syntax, {name: family.options for name, family in families().items()})


def plan_spec(spec: Spec) -> tuple[KernelPlan, ...]:
    """One plan per variant; every variant's problems are reported together."""
    known = families()
    plans, diagnostics = [], []
    for variant in spec.variants:
        try:
            plan = known[variant.family].plan(spec.layer, variant)
            check_budget(plan)
        except PlanError as error:
            for option, message in error.problems:
                span = variant.span_of(option)
                diagnostics.append(Diagnostic(span, f"kernel '{variant.name}': {message}"))
            continue
        plans.append(plan)
    if diagnostics:
        raise SpecError(diagnostics, spec.text)
    return tuple(plans)


def generate(path: Path) -> GeneratedSpec:
    """Everything a build writes for `path`; raises SpecError on any problem in the spec."""
    path = Path(path)
    spec = load_spec(path)
    plans = plan_spec(spec)
    label = spec_label(path)
    files = {f"{plan.kernel_name}.py": render(plan, label, spec.text) for plan in plans}
    return GeneratedSpec(path.stem, label, spec, plans, files)
