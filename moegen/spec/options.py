"""Kernel variant options as data: each family lists its `OptionSpec`s, validation reads them."""

from __future__ import annotations

import math
from dataclasses import dataclass

from moegen.diagnostics import Diagnostic, did_you_mean
from moegen.spec.model import Option

KINDS = ("flag", "int", "float", "choice", "bound")


@dataclass(frozen=True)
class OptionSpec:
    """One option a kernel family accepts.

    kind: 'flag' (`selective`), 'int' (`block=512`), 'float', 'choice' (`shard=block`),
    'bound' (`tokens<=32`, an upper bound). `reason` explains the limits in errors.
    """

    name: str
    kind: str
    doc: str
    default: object = None
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    multiple_of: int | None = None
    reason: str = ""
    auto: bool = False  # an 'int' option that also takes `auto` (the plan's rule, or the model's choice)

    def __post_init__(self):
        assert self.kind in KINDS, self.kind


# Options every family accepts.
COMMON_OPTIONS = (
    OptionSpec(
        "lnc",
        "int",
        "logical NeuronCores the kernel runs on",
        default=1,
        minimum=1,
        maximum=2,
        reason="a Trn2/Trn3 logical core pairs at most 2 physical cores",
    ),
    OptionSpec("verify_tokens", "int", "token count `moegen verify` runs the kernel at", minimum=1, maximum=1 << 16),
)


def _limit_text(spec: OptionSpec) -> str:
    return f" ({spec.reason})" if spec.reason else ""


def convert(option: Option, spec: OptionSpec) -> tuple[object, Diagnostic | None]:
    """The Python value of `option` under `spec`, or a diagnostic saying why it is invalid."""
    where = option.value.span if option.value is not None else option.span
    if spec.kind == "flag":
        if option.op is not None:
            return None, Diagnostic(option.span, f"'{spec.name}' is a flag: write just '{spec.name}'")
        return True, None
    if option.op is None:
        form = f"{spec.name}<=N" if spec.kind == "bound" else f"{spec.name}=VALUE"
        return None, Diagnostic(option.span, f"'{spec.name}' needs a value: write '{form}'")
    if spec.kind == "bound" and option.op not in ("<=", "="):
        return None, Diagnostic(option.span, f"'{spec.name}' is an upper bound: write '{spec.name}<=N'")
    if spec.kind != "bound" and option.op != "=":
        return None, Diagnostic(option.span, f"'{spec.name}' takes '=', not '{option.op}'")
    raw = option.value.value
    if spec.auto and raw == "auto":
        return "auto", None
    if spec.kind == "choice":
        if str(raw) not in spec.choices:
            hint = did_you_mean(str(raw), spec.choices)
            allowed = ", ".join(spec.choices)
            return None, Diagnostic(where, f"{spec.name}={raw}: expected one of {allowed}", hint)
        return str(raw), None
    if isinstance(raw, str):
        expected = "a number or auto" if spec.auto else "a number"
        return None, Diagnostic(where, f"{spec.name}={raw}: expected {expected}")
    if spec.kind in ("int", "bound") and not isinstance(raw, int):
        return None, Diagnostic(where, f"{spec.name}={raw}: expected a whole number")
    if spec.kind == "float":  # plans get a float, even from `eps=1`
        try:
            raw = float(raw)
        except OverflowError:  # an integer beyond the float range
            raw = math.inf
    if isinstance(raw, float) and not math.isfinite(raw):
        return None, Diagnostic(where, f"{spec.name}={raw}: expected a finite number")
    return _check_range(raw, spec, where)


def _check_range(value, spec: OptionSpec, where) -> tuple[object, Diagnostic | None]:
    if spec.minimum is not None and value < spec.minimum:
        return None, Diagnostic(where, f"{spec.name} {value}: must be at least {spec.minimum:g}{_limit_text(spec)}")
    if spec.maximum is not None and value > spec.maximum:
        return None, Diagnostic(where, f"{spec.name} {value}: must be at most {spec.maximum:g}{_limit_text(spec)}")
    if spec.multiple_of and value % spec.multiple_of:
        return None, Diagnostic(
            where, f"{spec.name} {value}: must be a multiple of {spec.multiple_of}{_limit_text(spec)}"
        )
    return value, None
