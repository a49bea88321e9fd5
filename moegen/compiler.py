"""The pipeline of one spec file: read -> parse -> validate -> plan -> render."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, replace
from pathlib import Path

from moegen import choices
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
# The build's staging folder `.<name>.old.XXXXXXXX` must fit the 255-byte file name limit.
MAX_SPEC_NAME = 255 - len("..old.XXXXXXXX")


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
            tuned, decision = choices.resolve(spec.path, spec.layer, variant)
        except choices.StaleChoice as stale:
            diagnostics.append(Diagnostic(variant.span_of("tuned"), f"kernel '{variant.name}': {stale}"))
            continue
        try:
            plan = known[variant.family].plan(spec.layer, tuned)
            check_budget(plan)
            if decision:
                plan = replace(plan, decisions=plan.decisions + (decision,))
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


def _kernel_name_bound_twice(source: str, kernel: str) -> bool:
    """True when the module binds `kernel` at top level besides the kernel's own def.

    A full parse costs more than rendering the file, so when the kernel function is the file's last
    top-level statement (every generated file today) only the part before its `def` is read, and
    only parsed when the name occurs in it. Any other layout is parsed whole.
    """
    lines = source.split("\n")
    header = f"def {kernel}("
    at = next((i for i, line in enumerate(lines) if line.startswith(header)), None)
    if at is None or any(line[:1] not in ("", " ", "\t", "#") for line in lines[at + 1 :]):
        return _top_level_names(source).count(kernel) > 1
    while at > 0 and lines[at - 1].startswith("@"):  # the decorators belong to the def
        at -= 1
    before = "\n".join(lines[:at])
    if not re.search(rf"\b{re.escape(kernel)}\b", before):
        return False
    try:
        return kernel in _top_level_names(before)
    except SyntaxError:  # the def line was inside a string of the part before it
        return _top_level_names(source).count(kernel) > 1


def _name_clash(variant: Variant, family: str, source: str) -> Diagnostic | None:
    """The kernel function's name must not rebind a name the template defines (a helper, a constant)."""
    if not _kernel_name_bound_twice(source, variant.name):
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
    if len(path.stem) > MAX_SPEC_NAME:
        span = Span(str(path), 1, 1, 1, 1)
        raise SpecError(
            [
                Diagnostic(
                    span,
                    f"spec file name of {len(path.stem)} characters before '.moe': it names the generated "
                    f"folder, whose build folders must fit the 255-byte file name limit (at most {MAX_SPEC_NAME})",
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
