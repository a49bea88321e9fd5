"""The spec model: what a `.moe` file says, as frozen dataclasses with source positions.

Two layers: the syntax objects (`SpecSyntax` and its parts) produced by the parser, and
the checked meaning (`Layer`, `Variant`, `Spec`) produced by validation. Plans read only
the checked meaning.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from moegen.diagnostics import Diagnostic, Span

# ---------------------------------------------------------------- syntax


@dataclass(frozen=True)
class Value:
    """A literal: an int, a float or a word (identifier)."""

    value: int | float | str
    span: Span

    @property
    def is_number(self) -> bool:
        return not isinstance(self.value, str)


@dataclass(frozen=True)
class Option:
    """`name` (a flag), `name=value` or `name<=value` (op is None, '=', '<=', '<', '>=' or '>')."""

    name: str
    op: str | None
    value: Value | None
    span: Span
    name_span: Span


@dataclass(frozen=True)
class Setting:
    """A layer-level line such as `dims hidden=4096 experts=8`."""

    name: str
    options: tuple[Option, ...]
    span: Span
    name_span: Span


@dataclass(frozen=True)
class StageArg:
    """An argument of a pipeline stage: `1.702`, `groups=8`, `gate<=7` or `-7<=up<=7`."""

    name: str | None
    value: Value | None
    lower: Value | None
    upper: Value | None
    span: Span


@dataclass(frozen=True)
class Stage:
    name: str
    args: tuple[StageArg, ...]
    span: Span
    name_span: Span


@dataclass(frozen=True)
class Pipeline:
    """`router = linear -> softmax -> topk`: a named chain of stages."""

    name: str
    stages: tuple[Stage, ...]
    span: Span
    name_span: Span


@dataclass(frozen=True)
class KernelDecl:
    """`kernel NAME : BASE { options }`; BASE is a family or an earlier kernel."""

    name: str
    base: str
    options: tuple[Option, ...]
    span: Span
    name_span: Span
    base_span: Span


@dataclass(frozen=True)
class Defaults:
    """`defaults FAMILY { options }`: options every kernel of FAMILY starts from."""

    family: str
    options: tuple[Option, ...]
    span: Span
    family_span: Span


@dataclass(frozen=True)
class SpecSyntax:
    path: str
    text: str
    name: str
    name_span: Span
    settings: tuple[Setting, ...]
    pipelines: tuple[Pipeline, ...]
    kernels: tuple[KernelDecl, ...]
    defaults: tuple[Defaults, ...]


# ---------------------------------------------------------------- meaning


@dataclass(frozen=True)
class Dims:
    """Layer dimensions. I_TP = intermediate / tp, E_L = experts / ep."""

    hidden: int
    intermediate: int
    experts: int
    top_k: int
    tp: int = 1
    ep: int = 1
    shared_experts: int = 0  # S, experts every token runs (affinity 1, or the shared gate)
    shared_intermediate: int = 0  # I_S of each shared expert, before tensor parallelism

    @property
    def intermediate_tp(self) -> int:
        return self.intermediate // self.tp

    @property
    def local_experts(self) -> int:
        return self.experts // self.ep


@dataclass(frozen=True)
class Router:
    """The router stage (SEMANTICS section 3)."""

    bias: bool
    activation: str  # 'softmax' | 'sigmoid'
    pre_norm: bool  # activation before top-K
    renormalize: bool  # L1 norm of the K selected values
    selection_bias: bool  # per-expert bias used only to choose experts
    n_group: int | None
    topk_group: int | None
    group_score: str | None  # 'top2_sum' (DeepSeek-V3) | 'max' (DeepSeek-V2), with n_group
    scaling_factor: float | None
    span: Span


@dataclass(frozen=True)
class Expert:
    """The expert MLP and affinity scaling (SEMANTICS sections 1 and 2)."""

    gated: bool
    activation: str  # silu | gelu | gelu_tanh | swish | relu | squared_relu
    alpha: float | None  # swish only
    gate_up_bias: bool
    down_bias: bool
    gate_min: float | None
    gate_max: float | None
    up_min: float | None
    up_max: float | None
    up_plus_one: bool
    affinity_scale: str  # 'none' | 'pre' | 'post'
    span: Span


@dataclass(frozen=True)
class Quant:
    weights: str = "none"  # none | fp8_row | fp8_static | mxfp4 | mxfp8
    activations: str = "none"  # none | fp8_static | mxfp8


@dataclass(frozen=True)
class Layer:
    name: str
    path: str
    dims: Dims
    dtype: str  # input dtype: bf16 | fp16 | fp32
    out_dtype: str
    router: Router | None
    expert: Expert | None
    quant: Quant
    span: Span
    shared_expert: Expert | None = None  # the shared experts' MLP; affinity_scale 'post' = sigmoid gate


@dataclass(frozen=True)
class Variant:
    """One kernel to generate: a family plus its resolved options (defaults applied)."""

    name: str
    family: str
    options: Mapping[str, object]
    option_spans: Mapping[str, Span] = field(compare=False)
    span: Span = field(compare=False)

    def __getitem__(self, name: str) -> object:
        return self.options[name]

    def span_of(self, name: str | None) -> Span:
        """The span of the option that set `name`, or the kernel declaration."""
        return self.option_spans.get(name, self.span) if name else self.span


@dataclass(frozen=True)
class Spec:
    path: str
    text: str
    layer: Layer
    variants: tuple[Variant, ...]
    warnings: tuple[Diagnostic, ...] = ()  # severity 'warning': printed, the spec still builds
