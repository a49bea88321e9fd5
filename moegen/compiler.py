"""The pipeline of one spec file: read -> parse -> validate -> plan -> render."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

from moegen.codegen.render import render
from moegen.diagnostics import Diagnostic, Span, SpecError
from moegen.plan import families
from moegen.plan.common import KernelPlan, PlanError, check_budget
from moegen.spec.model import Spec, Variant
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


SPEC_FILE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\.moe")


def spec_label(path: Path) -> str:
    """`specs/name.moe`: the last two path parts, the same from any working directory.

    The label goes into a comment of the generated header, so characters that are not
    printable (a newline would end the comment) are shown as '?'.
    """
    resolved = path.resolve()
    label = f"{resolved.parent.name}/{resolved.name}"
    return "".join(c if c.isprintable() else "?" for c in label)


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
        raise SpecError(diagnostics + list(spec.warnings), spec.text)
    return tuple(plans)


def _top_level_names(source: str) -> list[str]:
    """Every name a module binds at top level (defs, classes, assignments, imports), with repeats."""
    names = []
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names += [n.id for target in targets for n in ast.walk(target) if isinstance(n, ast.Name)]
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names += [alias.asname or alias.name.split(".")[0] for alias in node.names]
    return names


def _name_clash(variant: Variant, family: str, source: str) -> Diagnostic | None:
    """The kernel function's name must not rebind a name the template defines (a helper, a constant)."""
    if _top_level_names(source).count(variant.name) <= 1:
        return None
    return Diagnostic(
        variant.span,
        f"kernel '{variant.name}': the {family} template already defines "
        f"'{variant.name}' at module level; choose another kernel name",
    )


def generate(path: Path) -> GeneratedSpec:
    """Everything a build writes for `path`; raises SpecError on any problem in the spec."""
    path = Path(path)
    if not SPEC_FILE_NAME.fullmatch(path.name):
        span = Span(str(path), 1, 1, 1, 1)
        raise SpecError(
            [
                Diagnostic(
                    span,
                    f"spec file name {path.name!r}: it names the generated folder, "
                    "so it must be NAME.moe with NAME in [A-Za-z_][A-Za-z0-9_]*",
                )
            ]
        )
    spec = load_spec(path)
    plans = plan_spec(spec)
    label = spec_label(path)
    files = {f"{plan.kernel_name}.py": render(plan, label, spec.text) for plan in plans}
    clashes = [
        _name_clash(variant, plan.family, files[f"{plan.kernel_name}.py"])
        for variant, plan in zip(spec.variants, plans)
    ]
    if any(clashes):
        raise SpecError([clash for clash in clashes if clash], spec.text)
    return GeneratedSpec(path.stem, label, spec, plans, files)
