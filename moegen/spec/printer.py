"""SpecSyntax -> canonical `.moe` text: `parse(format_spec(s))` equals `s` apart from spans.

Comments are not part of the syntax objects, so they are not reproduced. Statements come
out grouped: settings, pipelines, defaults, kernels (each group in source order).
"""

from __future__ import annotations

import math

from moegen.spec.model import Defaults, KernelDecl, Option, Pipeline, Setting, SpecSyntax, Stage, StageArg, Value


def format_value(value: Value) -> str:
    """`4096`, `1.702`, `-7`, `1e+16`, `bf16`; an infinite float prints as `1e999`."""
    raw = value.value
    if isinstance(raw, str):
        return raw
    sign = "-" if raw < 0 else ""
    magnitude = abs(raw)
    if isinstance(magnitude, float) and math.isinf(magnitude):
        return f"{sign}1e999"
    return f"{sign}{magnitude!r}"


def format_option(option: Option) -> str:
    if option.op is None:
        return option.name
    return f"{option.name}{option.op}{format_value(option.value)}"


def format_arg(arg: StageArg) -> str:
    if arg.value is not None:
        return format_value(arg.value) if arg.name is None else f"{arg.name}={format_value(arg.value)}"
    if arg.lower is not None and arg.upper is not None:
        return f"{format_value(arg.lower)} <= {arg.name} <= {format_value(arg.upper)}"
    if arg.upper is not None:
        return f"{arg.name} <= {format_value(arg.upper)}"
    return f"{arg.name} >= {format_value(arg.lower)}"


def format_stage(stage: Stage) -> str:
    if not stage.args:
        return stage.name
    return f"{stage.name}({', '.join(format_arg(arg) for arg in stage.args)})"


def format_setting(setting: Setting) -> str:
    return " ".join([setting.name, *(format_option(option) for option in setting.options)])


def format_pipeline(pipeline: Pipeline) -> str:
    return f"{pipeline.name} = " + " -> ".join(format_stage(stage) for stage in pipeline.stages)


def _body(options: tuple[Option, ...]) -> str:
    return "{ " + " ".join(format_option(option) for option in options) + " }" if options else "{ }"


def format_kernel(kernel: KernelDecl) -> str:
    return f"kernel {kernel.name} : {kernel.base} {_body(kernel.options)}"


def format_defaults(defaults: Defaults) -> str:
    return f"defaults {defaults.family} {_body(defaults.options)}"


def format_spec(syntax: SpecSyntax) -> str:
    """The spec as canonical text, one statement per line."""
    statements = [
        *(format_setting(s) for s in syntax.settings),
        *(format_pipeline(p) for p in syntax.pipelines),
        *(format_defaults(d) for d in syntax.defaults),
        *(format_kernel(k) for k in syntax.kernels),
    ]
    return f"moe {syntax.name} {{\n" + "".join(f"  {line}\n" for line in statements) + "}\n"
