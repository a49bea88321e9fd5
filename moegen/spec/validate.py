"""SpecSyntax -> Spec: every rule of the language, each error located and explained.

All problems of a file are collected and raised together as one SpecError.
"""

from __future__ import annotations

import builtins
import keyword
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace

from moegen.diagnostics import Diagnostic, Span, SpecError, did_you_mean
from moegen.spec.model import (
    Dims,
    Expert,
    KernelDecl,
    Layer,
    Option,
    Pipeline,
    Quant,
    Router,
    Spec,
    SpecSyntax,
    Stage,
    Variant,
)
from moegen.spec.options import COMMON_OPTIONS, OptionSpec, convert
from moegen.spec.printer import format_stage

DTYPES = ("bf16", "fp16", "fp32")
WEIGHT_QUANT = ("none", "fp8_row", "fp8_static", "mxfp4", "mxfp8")
ACTIVATION_QUANT = ("none", "fp8_static", "mxfp8")
ACTIVATIONS = ("silu", "gelu", "gelu_tanh", "swish", "relu", "squared_relu")
DIMS = {
    # name: (required, maximum, why)
    "hidden": (True, 65536, "hidden sizes beyond 64K are outside every template's tiling"),
    "intermediate": (True, 262144, "intermediate sizes beyond 256K are outside every template's tiling"),
    "experts": (True, 1024, "expert counts beyond 1024 are outside every template"),
    "top_k": (True, 64, "top_k beyond 64 is outside every template"),
    "tp": (False, 64, "tensor parallelism beyond 64 ranks is not modelled"),
    "ep": (False, 1024, "expert parallelism beyond 1024 ranks is not modelled"),
    "shared_experts": (False, 64, "more than 64 shared experts is outside every template"),
    "shared_intermediate": (False, 262144, "intermediate sizes beyond 256K are outside every template's tiling"),
}
SETTINGS = ("dims", "dtype", "quant")
PIPELINES = ("router", "expert", "shared_expert")
ROUTER_STAGES = (
    "linear",
    "softmax",
    "sigmoid",
    "select_bias",
    "group_limit",
    "topk",
    "renormalize",
    "scaling_factor",
)
EXPERT_STAGES = ("affinity_scale", "gate_up", "up", "clamp", "down", "up_plus_one") + ACTIVATIONS
# The shared experts' MLP: the expert stages without affinity scaling (every token runs them with
# weight 1), and Qwen2-MoE's optional sigmoid gate on their output, last.
SHARED_EXPERT_STAGES = tuple(s for s in EXPERT_STAGES if s != "affinity_scale") + ("sigmoid_gate",)
# Old stage spellings, per pipeline: still accepted, with a warning naming the new one. `scale` meant
# the routed scaling factor in a router and the affinity-scaling position in an expert pipeline.
RENAMED_STAGES = {
    "router": {"scale": "scaling_factor"},
    "expert": {"scale": "affinity_scale"},
}
# Other names of a stage, accepted silently: Hugging Face configs call squared ReLU `relu2`
# (Nemotron-H's mlp_hidden_act), and `moegen import-hf` writes what the config says.
STAGE_ALIASES = {"relu2": "squared_relu"}
# Names a kernel may not take: Python keywords, builtins (a module-level `def range` would
# shadow the builtin the kernel body calls) and the module aliases of generated code.
RESERVED_NAMES = frozenset(keyword.kwlist) | frozenset(dir(builtins)) | {"nki", "nl", "nisa", "np", "numpy"}
# A kernel's file is generated/<spec>/<kernel>.py, and file systems cap a file name at 255 bytes
# (names are ASCII, one byte a character).
MAX_KERNEL_NAME = 255 - len(".py")


def _to_float(value: int | float) -> float:
    """float(value), with integers too large for a float becoming infinity (then refused as not finite)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf


class _Collector:
    def __init__(self):
        self.diagnostics: list[Diagnostic] = []
        self.warnings: list[Diagnostic] = []

    def error(self, span: Span, message: str, hint: str | None = None) -> None:
        self.diagnostics.append(Diagnostic(span, message, hint))

    def warn(self, span: Span, message: str, hint: str | None = None) -> None:
        self.warnings.append(Diagnostic(span, message, hint, severity="warning"))


def _unknown(report: _Collector, span: Span, what: str, name: str, known: Sequence[str]) -> None:
    report.error(span, f"unknown {what} '{name}'", did_you_mean(name, known))


# ---------------------------------------------------------------- settings


def _dims(syntax: SpecSyntax, report: _Collector) -> Dims | None:
    settings = [s for s in syntax.settings if s.name == "dims"]
    if not settings:
        report.error(syntax.name_span, "missing 'dims' (hidden, intermediate, experts, top_k)")
        return None
    values: dict[str, int] = {}
    spans: dict[str, Span] = {}
    given: set[str] = set()
    for option in settings[0].options:
        if option.name not in DIMS:
            _unknown(report, option.name_span, "dimension", option.name, list(DIMS))
            continue
        if option.name in given:
            report.error(option.name_span, f"dimension '{option.name}' is given twice")
            continue
        given.add(option.name)
        raw = option.value.value if option.value is not None else None
        if option.op != "=" or not isinstance(raw, int):
            report.error(option.span, f"{option.name} needs a whole number: write '{option.name}=N'")
            continue
        _, maximum, why = DIMS[option.name]
        if raw < 1 or raw > maximum:
            report.error(option.value.span, f"{option.name} {raw}: must be between 1 and {maximum} ({why})")
            continue
        values[option.name] = raw
        spans[option.name] = option.value.span
    missing = [name for name, (required, _, _) in DIMS.items() if required and name not in given]
    if missing:
        report.error(settings[0].name_span, f"dims is missing {', '.join(missing)}")
    if given != set(values) or missing:  # an invalid dimension is already reported
        return None
    dims = Dims(**values)
    if dims.intermediate % dims.tp:
        report.error(
            spans.get("tp", spans["intermediate"]),
            f"tp {dims.tp}: intermediate {dims.intermediate} is not divisible by it",
        )
        return None
    if dims.experts % dims.ep:
        report.error(spans.get("ep", spans["experts"]), f"ep {dims.ep}: experts {dims.experts} is not divisible by it")
        return None
    if dims.top_k > dims.experts:
        report.error(spans["top_k"], f"top_k {dims.top_k}: a token cannot pick more than the {dims.experts} experts")
        return None
    if ("shared_experts" in values) != ("shared_intermediate" in values):
        given_name = "shared_experts" if "shared_experts" in values else "shared_intermediate"
        report.error(
            spans[given_name], "shared experts need both 'shared_experts=S' and 'shared_intermediate=I' in dims"
        )
        return None
    if dims.shared_intermediate % dims.tp:
        report.error(
            spans.get("tp", spans["shared_intermediate"]),
            f"tp {dims.tp}: shared_intermediate {dims.shared_intermediate} is not divisible by it",
        )
        return None
    return dims


def _dtypes(syntax: SpecSyntax, report: _Collector) -> tuple[str, str] | None:
    settings = [s for s in syntax.settings if s.name == "dtype"]
    if not settings:
        report.error(syntax.name_span, "missing 'dtype' (e.g. 'dtype bf16' or 'dtype in=bf16 out=fp32')")
        return None
    found: dict[str, str] = {}
    for option in settings[0].options:
        if option.op is None:
            key, value, span = "in", option.name, option.name_span
        elif option.name in ("in", "out") and option.op == "=":
            key, value, span = option.name, str(option.value.value), option.value.span
        else:
            report.error(option.span, "dtype reads 'dtype bf16' or 'dtype in=bf16 out=fp32'")
            continue
        if value not in DTYPES:
            _unknown(report, span, "dtype", value, DTYPES)
            continue
        if key in found:
            report.error(option.span, f"the {key}put dtype is given twice")
            continue
        found[key] = value
    if "in" not in found:
        if "out" in found:
            report.error(settings[0].span, "dtype gives 'out' without 'in': write 'dtype in=bf16 out=fp32'")
        return None
    return found["in"], found.get("out", found["in"])


def _quant(syntax: SpecSyntax, report: _Collector) -> Quant:
    settings = [s for s in syntax.settings if s.name == "quant"]
    if not settings:
        return Quant()
    allowed = {"weights": WEIGHT_QUANT, "activations": ACTIVATION_QUANT}
    found: dict[str, str] = {}
    for option in settings[0].options:
        if option.name not in allowed:
            _unknown(report, option.name_span, "quantization target", option.name, list(allowed))
            continue
        if option.op != "=" or option.value is None or option.value.value not in allowed[option.name]:
            value = option.value.value if option.value is not None else ""
            hint = did_you_mean(str(value), allowed[option.name])
            report.error(option.span, f"quant {option.name}: expected one of {', '.join(allowed[option.name])}", hint)
            continue
        found[option.name] = str(option.value.value)
    return Quant(**found)


# ---------------------------------------------------------------- pipelines


def _number_arg(stage: Stage, report: _Collector, name: str | None = None) -> float | None:
    """The single numeric argument of a stage (positional, or `name=`)."""
    if len(stage.args) != 1 or stage.args[0].value is None or not stage.args[0].value.is_number:
        report.error(stage.span, f"'{stage.name}' takes one number, e.g. {stage.name}(1.702)")
        return None
    arg = stage.args[0]
    if arg.name is not None and arg.name != name:
        report.error(arg.span, f"'{stage.name}' has no argument '{arg.name}'")
        return None
    value = _to_float(arg.value.value)
    if not math.isfinite(value):
        report.error(arg.span, f"'{stage.name}' needs a finite number")
        return None
    return value


def _flag_args(stage: Stage, report: _Collector, allowed: Sequence[str]) -> set[str]:
    """Word arguments such as `gate_up(bias)`."""
    flags: set[str] = set()
    for arg in stage.args:
        word = arg.value.value if arg.value is not None and arg.name is None else None
        if not isinstance(word, str) or word not in allowed:
            text = word if isinstance(word, str) else "this argument"
            report.error(
                arg.span,
                f"'{stage.name}' does not take {text!r}; it takes {', '.join(allowed) or 'nothing'}",
                did_you_mean(str(word), allowed) if isinstance(word, str) else None,
            )
            continue
        flags.add(word)
    return flags


def _check_order(pipeline: Pipeline, report: _Collector, known: Sequence[str]) -> dict[str, int] | None:
    """Positions of known stages; reports unknown and repeated stages.

    None when a stage is unknown: the unknown name is the error to show, not the
    missing-stage errors it would cause.
    """
    positions: dict[str, int] = {}
    for index, stage in enumerate(pipeline.stages):
        if stage.name not in known:
            _unknown(report, stage.name_span, f"{pipeline.name} stage", stage.name, known)
        elif stage.name in positions:
            report.error(stage.name_span, f"stage '{stage.name}' appears twice")
        else:
            positions[stage.name] = index
    if any(stage.name not in known for stage in pipeline.stages):
        return None
    return positions


def _renamed(pipeline: Pipeline, report: _Collector) -> Pipeline:
    """The pipeline with old stage spellings replaced by the new ones, each with a warning."""
    renames = RENAMED_STAGES.get(pipeline.name, {})
    stages = []
    for stage in pipeline.stages:
        if pipeline.name != "router" and stage.name in STAGE_ALIASES:
            stage = replace(stage, name=STAGE_ALIASES[stage.name])
        new = renames.get(stage.name)
        if new is not None:
            example = format_stage(replace(stage, name=new))
            report.warn(
                stage.name_span,
                f"'{stage.name}' in the {pipeline.name} pipeline is now spelled '{new}': write '{example}'",
            )
            stage = replace(stage, name=new)
        stages.append(stage)
    return replace(pipeline, stages=tuple(stages))


def _router(pipeline: Pipeline, dims: Dims | None, report: _Collector) -> Router | None:
    pipeline = _renamed(pipeline, report)
    at = _check_order(pipeline, report, ROUTER_STAGES)
    if at is None:
        return None
    stages = {s.name: s for s in pipeline.stages}
    before = len(report.diagnostics)
    if pipeline.stages and pipeline.stages[0].name != "linear":
        report.error(pipeline.stages[0].span, "a router starts with 'linear' (the logits x @ w)")
    activations = [name for name in ("softmax", "sigmoid") if name in at]
    if len(activations) != 1:
        report.error(pipeline.span, "a router has exactly one activation: softmax or sigmoid")
    if "topk" not in at:
        report.error(pipeline.span, "a router needs a 'topk' stage")
    if len(report.diagnostics) > before:
        return None
    activation = activations[0]
    pre_norm = at[activation] < at["topk"]
    bias = "bias" in _flag_args(stages["linear"], report, ("bias",))
    for name in ("topk", "renormalize", "select_bias", activation):
        if name in stages and stages[name].args:
            report.error(stages[name].span, f"'{name}' takes no arguments")
    if "renormalize" in at:
        if at["renormalize"] < max(at["topk"], at[activation]):
            report.error(stages["renormalize"].span, "'renormalize' comes after topk and the activation")
        elif not pre_norm and activation == "softmax":
            report.error(
                stages["renormalize"].span,
                "'renormalize' after a post-topk softmax does nothing: the K weights already sum to 1",
            )
    for name in ("select_bias", "group_limit"):
        if name in at and at[name] > at["topk"]:
            report.error(stages[name].span, f"'{name}' changes which experts are chosen: put it before topk")
    if "select_bias" in at and not pre_norm:
        report.error(stages["select_bias"].span, "a selection bias applies to activated scores: activate before topk")
    n_group = topk_group = group_score = None
    if "group_limit" in at:
        n_group, topk_group, group_score = _group_limit(stages["group_limit"], dims, report)
        if not pre_norm:
            report.error(stages["group_limit"].span, "group-limited top-K ranks activated scores: activate before topk")
    scaling = None
    if "scaling_factor" in at:
        stage = stages["scaling_factor"]
        if at["scaling_factor"] != len(pipeline.stages) - 1:
            report.error(stage.span, "the routed scaling factor 'scaling_factor(F)' is the last router stage")
        scaling = _number_arg(stage, report)
        if scaling is not None and scaling <= 0:
            report.error(stage.span, "the routed scaling factor must be positive")
    return Router(
        bias=bias,
        activation=activation,
        pre_norm=pre_norm,
        renormalize="renormalize" in at,
        selection_bias="select_bias" in at,
        n_group=n_group,
        topk_group=topk_group,
        group_score=group_score,
        scaling_factor=scaling,
        span=pipeline.span,
    )


GROUP_SCORES = {
    "top2_sum": "the sum of the group's two best scores (DeepSeek-V3, topk_method noaux_tc)",
    "max": "the group's best score (DeepSeek-V2, topk_method group_limited_greedy)",
}
GROUP_LIMIT_USAGE = "group_limit reads 'group_limit(groups=G, keep=N, score=top2_sum|max)'"


def _group_limit(stage: Stage, dims: Dims | None, report: _Collector) -> tuple[int | None, int | None, str | None]:
    """(groups, keep, score) of `group_limit(groups=G, keep=N, score=top2_sum|max)`; the score rule is required."""
    args = {arg.name: arg for arg in stage.args}
    if set(args) - {"groups", "keep", "score"} or not {"groups", "keep"} <= set(args) or len(stage.args) != len(args):
        report.error(stage.span, GROUP_LIMIT_USAGE)
        return None, None, None
    if "score" not in args:
        report.error(
            stage.span,
            "group_limit needs the group score rule: 'score=top2_sum' (DeepSeek-V3: sum of the group's two best "
            "scores) or 'score=max' (DeepSeek-V2: the group's best score)",
        )
        return None, None, None
    score = args["score"].value
    if score is None or score.value not in GROUP_SCORES:
        where = score.span if score is not None else stage.span
        shown = score.value if score is not None else "?"
        report.error(where, f"unknown group score '{shown}': use one of {', '.join(GROUP_SCORES)}")
        return None, None, None
    groups, keep = args["groups"].value, args["keep"].value
    if groups is None or keep is None or not isinstance(groups.value, int) or not isinstance(keep.value, int):
        report.error(stage.span, "group_limit takes whole numbers: 'group_limit(groups=8, keep=4, score=top2_sum)'")
        return None, None, None
    if groups.value < 1 or keep.value < 1 or keep.value > groups.value:
        report.error(keep.span, f"keep {keep.value}: must be between 1 and groups ({groups.value})")
        return None, None, None
    if dims is not None:
        if dims.experts % groups.value:
            report.error(groups.span, f"groups {groups.value}: experts {dims.experts} is not divisible by it")
        elif keep.value * (dims.experts // groups.value) < dims.top_k:
            report.error(keep.span, f"keep {keep.value}: the kept groups hold fewer than top_k {dims.top_k} experts")
    return groups.value, keep.value, score.value


def _expert(pipeline: Pipeline, report: _Collector, shared: bool = False) -> Expert | None:
    """The routed expert (`expert = ...`) or, with shared=True, the shared experts' MLP (`shared_expert = ...`)."""
    pipeline = _renamed(pipeline, report)
    at = _check_order(pipeline, report, SHARED_EXPERT_STAGES if shared else EXPERT_STAGES)
    if at is None:
        return None
    stages = {s.name: s for s in pipeline.stages}
    before = len(report.diagnostics)
    projections = [name for name in ("gate_up", "up") if name in at]
    if len(projections) != 1:
        report.error(pipeline.span, "an expert has one input projection: 'gate_up' (gated) or 'up' (not gated)")
    activations = [name for name in ACTIVATIONS if name in at]
    if len(activations) != 1:
        report.error(pipeline.span, f"an expert has exactly one activation: {', '.join(ACTIVATIONS)}")
    if "down" not in at:
        report.error(pipeline.span, "an expert needs a 'down' projection")
    if len(report.diagnostics) > before:
        return None
    projection, activation = projections[0], activations[0]
    gated = projection == "gate_up"
    order = [projection, activation, "down"]
    if not at[projection] < at[activation] < at["down"]:
        report.error(pipeline.span, f"expert stages run in the order {' -> '.join(order)}")
    gate_up_bias = "bias" in _flag_args(stages[projection], report, ("bias",))
    down_bias = "bias" in _flag_args(stages["down"], report, ("bias",))
    alpha = None
    if activation == "swish":
        alpha = _number_arg(stages["swish"], report, "alpha")
    elif stages[activation].args:
        report.error(stages[activation].span, f"'{activation}' takes no arguments")
    scale = "none"
    if "affinity_scale" in at:
        stage = stages["affinity_scale"]
        if stage.args:
            report.error(stage.span, "'affinity_scale' takes no arguments: its position says pre or post")
        if at["affinity_scale"] == 0:
            scale = "pre"
        elif at["affinity_scale"] == len(pipeline.stages) - 1:
            scale = "post"
        else:
            report.error(
                stage.span,
                "'affinity_scale' goes first (scale the input: PRE_SCALE) or last (scale the output: POST_SCALE)",
            )
    if "sigmoid_gate" in at:
        if stages["sigmoid_gate"].args:
            report.error(stages["sigmoid_gate"].span, "'sigmoid_gate' takes no arguments")
        if at["sigmoid_gate"] != len(pipeline.stages) - 1:
            report.error(
                stages["sigmoid_gate"].span, "'sigmoid_gate' multiplies the shared output: it is the last stage"
            )
        scale = "post"
    if "up_plus_one" in at:
        if not gated:
            report.error(stages["up_plus_one"].span, "'up_plus_one' needs a gated expert (gate_up)")
        elif not at[activation] < at["up_plus_one"] < at["down"]:
            report.error(stages["up_plus_one"].span, "'up_plus_one' goes between the activation and 'down'")
    clamps = _clamps(stages.get("clamp"), gated, report)
    if "clamp" in at and not at[projection] < at["clamp"] < at[activation]:
        report.error(stages["clamp"].span, "'clamp' goes between the projection and the activation")
    return Expert(
        gated=gated,
        activation=activation,
        alpha=alpha,
        gate_up_bias=gate_up_bias,
        down_bias=down_bias,
        up_plus_one="up_plus_one" in at,
        affinity_scale=scale,
        span=pipeline.span,
        **clamps,
    )


def _clamps(stage: Stage | None, gated: bool, report: _Collector) -> dict[str, float | None]:
    clamps = {"gate_min": None, "gate_max": None, "up_min": None, "up_max": None}
    if stage is None:
        return clamps
    if not stage.args:
        report.error(stage.span, "clamp reads 'clamp(gate <= 7, -7 <= up <= 7)'")
    targets = ("gate", "up") if gated else ("gate",)
    for arg in stage.args:
        if arg.name not in targets or arg.value is not None:
            report.error(
                arg.span,
                f"clamp takes bounds on {' and '.join(targets)}, e.g. 'gate <= 7'",
                did_you_mean(str(arg.name), targets) if arg.name else None,
            )
            continue
        for side, bound in (("min", arg.lower), ("max", arg.upper)):
            if bound is None:
                continue
            if not bound.is_number or not math.isfinite(_to_float(bound.value)):
                report.error(bound.span, "a clamp bound is a finite number")
                continue
            key = f"{arg.name}_{side}"
            if clamps[key] is not None:
                report.error(arg.span, f"the {side} clamp of {arg.name} is given twice")
            clamps[key] = float(bound.value)
        low, high = clamps[f"{arg.name}_min"], clamps[f"{arg.name}_max"]
        if low is not None and high is not None and low > high:
            report.error(arg.span, f"empty clamp window: {low:g} > {high:g}")
    return clamps


# ---------------------------------------------------------------- kernels


def _resolve_options(
    options: Sequence[Option], specs: Mapping[str, OptionSpec], family: str, report: _Collector
) -> tuple[dict[str, object], dict[str, Span]]:
    values: dict[str, object] = {}
    spans: dict[str, Span] = {}
    for option in options:
        spec = specs.get(option.name)
        if spec is None:
            _unknown(report, option.name_span, f"{family} option", option.name, list(specs))
            continue
        if option.name in spans:
            report.error(option.name_span, f"option '{option.name}' is given twice")
            continue
        value, problem = convert(option, spec)
        if problem is not None:
            report.diagnostics.append(problem)
            continue
        values[option.name] = value
        spans[option.name] = option.span
    return values, spans


def _variants(
    syntax: SpecSyntax, families: Mapping[str, Sequence[OptionSpec]], report: _Collector
) -> tuple[Variant, ...]:
    schemas = {name: {s.name: s for s in (*COMMON_OPTIONS, *specs)} for name, specs in families.items()}
    defaults: dict[str, tuple[dict, dict]] = {}
    for block in syntax.defaults:
        if block.family not in families:
            _unknown(report, block.family_span, "kernel family", block.family, list(families))
            continue
        if block.family in defaults:
            report.error(block.family_span, f"'defaults {block.family}' is given twice")
            continue
        defaults[block.family] = _resolve_options(block.options, schemas[block.family], block.family, report)
    declared: dict[str, tuple[str, dict, dict]] = {}
    lowered: dict[str, str] = {}  # lower-case name -> the declared kernel (names that differ only in case collide)
    all_names = {k.name for k in syntax.kernels}
    variants = []
    for decl in syntax.kernels:
        resolved = _kernel(decl, families, schemas, defaults, declared, lowered, report, all_names)
        if resolved is None:
            continue
        family, values, spans = resolved
        declared[decl.name] = resolved
        lowered[decl.name.lower()] = decl.name
        variants.append(Variant(decl.name, family, values, spans, decl.span))
    if not syntax.kernels:
        report.error(syntax.name_span, "the layer declares no kernel: add 'kernel NAME : FAMILY { ... }'")
    return tuple(variants)


def _kernel(decl: KernelDecl, families, schemas, defaults, declared, lowered, report: _Collector, all_names: set[str]):
    if decl.name in RESERVED_NAMES or decl.name in families or decl.name.startswith("__"):
        report.error(decl.name_span, f"'{decl.name}' cannot name a kernel: it is a reserved word")
        return None
    if len(decl.name) > MAX_KERNEL_NAME:
        report.error(
            decl.name_span,
            f"kernel name of {len(decl.name)} characters: its file '<name>.py' would exceed the "
            f"255-byte file name limit (at most {MAX_KERNEL_NAME} characters)",
        )
        return None
    if decl.name in declared:
        report.error(decl.name_span, f"kernel '{decl.name}' is declared twice")
        return None
    same_file = lowered.get(decl.name.lower())
    if same_file:
        report.error(
            decl.name_span,
            f"kernel '{decl.name}' differs from kernel '{same_file}' only in case: "
            "their files would collide on case-insensitive file systems",
        )
        return None
    if decl.base in families:
        family = decl.base
        start = {s.name: s.default for s in schemas[family].values() if s.default is not None}
        start_spans: dict[str, Span] = {}
        family_values, family_spans = defaults.get(family, ({}, {}))
        start.update(family_values)
        start_spans.update(family_spans)
    elif decl.base in declared:
        family, base_values, base_spans = declared[decl.base]
        start, start_spans = dict(base_values), dict(base_spans)
    elif decl.base == decl.name:
        report.error(decl.base_span, f"kernel '{decl.name}' cannot extend itself")
        return None
    elif decl.base in all_names:
        report.error(decl.base_span, f"kernel '{decl.base}' is declared further down: a kernel extends an earlier one")
        return None
    else:
        _unknown(report, decl.base_span, "kernel family or kernel", decl.base, [*families, *declared])
        return None
    values, spans = _resolve_options(decl.options, schemas[family], family, report)
    start.update(values)
    start_spans.update(spans)
    return family, start, start_spans


# ---------------------------------------------------------------- the layer


def validate(syntax: SpecSyntax, families: Mapping[str, Sequence[OptionSpec]]) -> Spec:
    """Check everything the language defines; `families` maps a family name to its option specs."""
    report = _Collector()
    seen: set[str] = set()
    for setting in syntax.settings:
        if setting.name in PIPELINES:
            report.error(setting.name_span, f"'{setting.name}' is a pipeline: write '{setting.name} = STAGE -> ...'")
        elif setting.name not in SETTINGS:
            _unknown(report, setting.name_span, "setting", setting.name, [*SETTINGS, *PIPELINES])
        elif setting.name in seen:
            report.error(setting.name_span, f"'{setting.name}' is given twice")
        else:
            seen.add(setting.name)
    dims = _dims(syntax, report)
    dtypes = _dtypes(syntax, report)
    quant = _quant(syntax, report)
    router = expert = shared_expert = None
    shared_pipeline = None
    for pipeline in syntax.pipelines:
        if pipeline.name not in PIPELINES:
            _unknown(report, pipeline.name_span, "pipeline", pipeline.name, PIPELINES)
        elif pipeline.name in seen:
            report.error(pipeline.name_span, f"'{pipeline.name}' is given twice")
        elif pipeline.name == "router":
            router = _router(pipeline, dims, report)
        elif pipeline.name == "shared_expert":
            shared_pipeline = pipeline
            shared_expert = _expert(pipeline, report, shared=True)
        else:
            expert = _expert(pipeline, report)
        if pipeline.name in PIPELINES:
            seen.add(pipeline.name)
    if dims is not None and dims.shared_experts and shared_pipeline is None:
        report.error(
            syntax.name_span,
            f"dims has shared_experts={dims.shared_experts}: add their MLP, e.g. 'shared_expert = gate_up -> silu -> down'",
        )
    if dims is not None and shared_pipeline is not None and not dims.shared_experts:
        report.error(
            shared_pipeline.name_span,
            "'shared_expert' needs 'shared_experts=S shared_intermediate=I' in dims",
        )
    variants = _variants(syntax, families, report)
    if report.diagnostics:
        raise SpecError(report.diagnostics + report.warnings, syntax.text)
    layer = Layer(
        name=syntax.name,
        path=syntax.path,
        dims=dims,
        dtype=dtypes[0],
        out_dtype=dtypes[1],
        router=router,
        expert=expert,
        quant=quant,
        span=syntax.name_span,
        shared_expert=shared_expert,
    )
    return Spec(syntax.path, syntax.text, layer, variants, tuple(sorted(report.warnings, key=lambda d: d.span)))
