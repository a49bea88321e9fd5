"""`moegen import-hf`: a `.moe` spec from a Hugging Face `config.json` (docs/import_hf.md).

Each supported `model_type` has a table of the config fields that define its MoE layer (read) and of
the fields that do not concern the MoE layer (attention, embeddings, positions, training: accepted and
not used). Any other field, or a value the spec language cannot state, is an error naming the field:
nothing is dropped silently.

An imported spec has two parts. The *layer part* (a header recording the import command and the config
values read, the `moe` line, dims, dtype, quant and the pipelines) is a function of the config and the
import options alone. The *kernel part* (everything after the layer statements: kernels, defaults,
comments, the closing brace) is written once (a default set) and then kept as it is: `--refresh`
rewrites the layer part of every imported spec from its config and keeps the kernel part byte for byte.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

# Fields of every causal-LM config that say nothing about the MoE layer.
COMMON_IGNORED = frozenset(
    {
        "architectures",
        "attention_bias",
        "attention_dropout",
        "auto_map",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
        "head_dim",
        "initializer_range",
        "max_position_embeddings",
        "max_window_layers",
        "num_attention_heads",
        "num_hidden_layers",
        "num_key_value_heads",
        "rms_norm_eps",
        "rope_scaling",
        "rope_theta",
        "sliding_window",
        "use_sliding_window",
        "tie_word_embeddings",
        "torch_dtype",
        "transformers_version",
        "use_cache",
        "vocab_size",
        "output_router_logits",
        "router_aux_loss_coef",
        "model_type",
        "layer_types",
        "initial_context_length",
        "router_jitter_noise",
        "aux_loss_alpha",
        "seq_aux",
        "num_nextn_predict_layers",
        "kv_lora_rank",
        "q_lora_rank",
        "qk_nope_head_dim",
        "qk_rope_head_dim",
        "v_head_dim",
        "rope_interleave",
        "pretraining_tp",
        "first_k_dense_replace",
        "moe_layer_freq",
        "ep_size",
        "decoder_sparse_step",
        "mlp_only_layers",
        "intermediate_size_mlp",
        "interleave_moe_layer_step",
        "no_rope_layers",
        "attention_chunk_size",
        "attn_temperature_tuning",
        "attn_scale",
        "floor_scale",
        "use_qk_norm",
        "moe_layers",
    }
)
ACTIVATIONS = {
    "silu": "silu",
    "gelu": "gelu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu",
    "relu2": "squared_relu",
}
GPT_OSS_ALPHA = 1.702  # transformers' GptOssExperts: glu = gate * sigmoid(gate * 1.702)


class ConfigError(Exception):
    """A config field the importer cannot state in a spec; `field` names it."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


@dataclass(frozen=True)
class MoELayer:
    """What a spec says about one MoE layer, read from a config."""

    hidden: int
    intermediate: int
    experts: int
    top_k: int
    router: str
    expert: str
    shared_experts: int = 0
    shared_intermediate: int = 0
    shared_expert: str = ""


class _Reader:
    """Reads a config's fields, remembering which were used."""

    def __init__(self, config: dict, prefix: str = ""):
        self.config, self.prefix, self.used = config, prefix, set()

    def get(self, name: str, default: object = ...) -> object:
        self.used.add(name)
        if name not in self.config:
            if default is ...:
                raise ConfigError(self.prefix + name, "required by this model type, missing")
            return default
        return self.config[name]

    def integer(self, name: str, default: object = ...) -> int:
        value = self.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(self.prefix + name, f"expected a whole number, got {value!r}")
        return value

    def activation(self, name: str = "hidden_act") -> str:
        value = self.get(name)
        if value not in ACTIVATIONS:
            raise ConfigError(self.prefix + name, f"activation {value!r} has no spec stage ({', '.join(ACTIVATIONS)})")
        return ACTIVATIONS[value]

    def positive(self, name: str) -> float:
        value = self.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(self.prefix + name, f"expected a positive number, got {value!r}")
        return value

    def require(self, name: str, allowed: tuple, default: object = ...) -> object:
        value = self.get(name, default)
        if value not in allowed:
            raise ConfigError(self.prefix + name, f"{value!r} is not supported (supported: {allowed})")
        return value

    def values_read(self) -> list[tuple[str, object]]:
        """(field, value) of every field read that the config holds, by name."""
        return [(self.prefix + name, self.config[name]) for name in sorted(self.used) if name in self.config]

    def check_unused(self, ignored: frozenset[str]) -> None:
        for name in sorted(self.config):
            if name not in self.used and name not in ignored:
                raise ConfigError(self.prefix + name, "not supported by moegen import-hf (no spec setting states it)")


def _mixtral(c: _Reader) -> MoELayer:
    act = c.activation()
    return MoELayer(
        c.integer("hidden_size"),
        c.integer("intermediate_size"),
        c.integer("num_local_experts"),
        c.integer("num_experts_per_tok"),
        "linear -> topk -> softmax",  # softmax over all E then top-K and renormalize == softmax of the K logits
        f"gate_up -> {act} -> down -> affinity_scale",
    )


def _qwen_router(c: _Reader) -> str:
    renormalize = c.require("norm_topk_prob", (True, False), False)
    return "linear -> softmax -> topk" + (" -> renormalize" if renormalize else "")


def _qwen3_moe(c: _Reader) -> MoELayer:
    c.integer("intermediate_size")  # the dense layers' MLP (mlp_only_layers), not the experts
    act = c.activation()
    return MoELayer(
        c.integer("hidden_size"),
        c.integer("moe_intermediate_size"),
        c.integer("num_experts"),
        c.integer("num_experts_per_tok"),
        _qwen_router(c),
        f"gate_up -> {act} -> down -> affinity_scale",
    )


def _qwen2_moe(c: _Reader) -> MoELayer:
    """Qwen2-MoE: Qwen3-MoE's routed experts plus one shared expert under a sigmoid gate."""
    layer = _qwen3_moe(c)
    shared = c.integer("shared_expert_intermediate_size")
    if not shared:
        return layer
    return replace(
        layer,
        shared_experts=1,
        shared_intermediate=shared,
        shared_expert=f"gate_up -> {c.activation()} -> down -> sigmoid_gate",
    )


def _sigmoid_router(groups: int, keep: int, renormalize: bool, factor: float) -> str:
    """DeepSeek-V3's router (also Nemotron-H's): sigmoid scores, a bias for the selection only, the top `keep` of
    `groups` expert groups (by the sum of each group's top two), top-K (renormalized if asked), times `factor`."""
    router = "linear -> sigmoid -> select_bias"
    if groups > 1:
        router += f" -> group_limit(groups={groups}, keep={keep}, score=top2_sum)"
    router += " -> topk" + (" -> renormalize" if renormalize else "")
    if factor != 1:
        router += f" -> scaling_factor({factor:g})"
    return router


def _deepseek_v3(c: _Reader) -> MoELayer:
    c.integer("intermediate_size")  # the first_k_dense_replace dense layers
    act = c.activation()
    c.require("scoring_func", ("sigmoid",))
    c.require("topk_method", ("noaux_tc",))
    groups, keep = c.integer("n_group"), c.integer("topk_group")
    renormalize = c.require("norm_topk_prob", (True, False))
    factor = c.positive("routed_scaling_factor")
    router = _sigmoid_router(groups, keep, renormalize, factor)
    return _deepseek_layer(c, router, act)


def _gpt_oss(c: _Reader) -> MoELayer:
    c.require("hidden_act", ("silu",))  # transformers' GptOssExperts hard-codes swish(1.702) on the gate
    limit = c.positive("swiglu_limit")
    top_k = c.integer("num_experts_per_tok")
    if c.integer("experts_per_token", top_k) != top_k:
        raise ConfigError("experts_per_token", "differs from num_experts_per_tok")
    lim = f"{limit:g}"
    return MoELayer(
        c.integer("hidden_size"),
        c.integer("intermediate_size"),
        c.integer("num_local_experts"),
        top_k,
        "linear(bias) -> topk -> softmax",
        f"gate_up(bias) -> clamp(gate <= {lim}, -{lim} <= up <= {lim}) -> swish({GPT_OSS_ALPHA}) -> up_plus_one "
        "-> down(bias) -> affinity_scale",
    )


def _llama4(c: _Reader) -> MoELayer:
    act = c.activation()
    inter = c.integer("intermediate_size")
    return MoELayer(
        c.integer("hidden_size"),
        inter,
        c.integer("num_local_experts"),
        c.integer("num_experts_per_tok"),
        "linear -> topk -> sigmoid",
        f"affinity_scale -> gate_up -> {act} -> down",
        1,
        inter,  # Llama4TextMoe.shared_expert: a Llama4TextMLP of width intermediate_size
        f"gate_up -> {act} -> down",
    )


def _deepseek_v2(c: _Reader) -> MoELayer:
    """DeepSeek-V2 (modeling_deepseek.py published with the model): softmax scores; with
    `group_limited_greedy` a group's score is its best expert's score (V3 sums its top two)."""
    c.integer("intermediate_size")  # the first_k_dense_replace dense layers
    act = c.activation()
    c.require("scoring_func", ("softmax",))
    method = c.require("topk_method", ("greedy", "group_limited_greedy"))
    groups, keep = c.integer("n_group", 1), c.integer("topk_group", 1)  # greedy does not read them
    # Published V2 configs have norm_topk_prob false: the K weights are multiplied by routed_scaling_factor.
    # With true the published modeling code renormalises instead of scaling; that variant is not imported.
    c.require("norm_topk_prob", (False,))
    factor = c.positive("routed_scaling_factor")
    router = "linear -> softmax"
    if method == "group_limited_greedy" and groups > 1:
        router += f" -> group_limit(groups={groups}, keep={keep}, score=max)"
    router += " -> topk" + (f" -> scaling_factor({factor:g})" if factor != 1 else "")
    return _deepseek_layer(c, router, act)


NEMOTRON_H_IGNORED = frozenset(
    {  # the Mamba-2 mixer, norms and the hybrid layer pattern: not the MoE layer
        "chunk_size",
        "conv_kernel",
        "expand",
        "hidden_dropout",
        "hybrid_override_pattern",
        "layer_norm_epsilon",
        "mamba_head_dim",
        "mamba_hidden_act",
        "mamba_num_heads",
        "mamba_proj_bias",
        "mamba_ssm_cache_dtype",
        "n_groups",
        "norm_eps",
        "num_logits_to_keep",
        "partial_rotary_factor",
        "rescale_prenorm_residual",
        "residual_in_fp32",
        "ssm_state_size",
        "time_step_floor",
        "time_step_limit",
        "time_step_max",
        "time_step_min",
        "use_bias",
        "use_conv_bias",
        "use_mamba_kernels",
    }
)


def _nemotron_h(c: _Reader) -> MoELayer:
    """Nemotron-H (transformers' NemotronHMOE): DeepSeek-V3's sigmoid router, non-gated experts
    (up -> mlp_hidden_act -> down) and one non-gated shared MLP."""
    c.integer("intermediate_size")  # the dense MLP layers of the hybrid pattern, not the experts
    act = c.activation("mlp_hidden_act")
    c.require("mlp_bias", (False,), False)
    groups, keep = c.integer("n_group", 1), c.integer("topk_group", 1)
    renormalize = c.require("norm_topk_prob", (True, False))
    factor = c.positive("routed_scaling_factor")
    router = _sigmoid_router(groups, keep, renormalize, factor)
    # NemotronHMOE builds exactly one shared MLP of width moe_shared_expert_intermediate_size.
    c.require("n_shared_experts", (1,))
    # Hugging Face spells squared ReLU `relu2`; the shared pipeline says what the config says.
    shared_act = "relu2" if act == "squared_relu" else act
    return MoELayer(
        c.integer("hidden_size"),
        c.integer("moe_intermediate_size"),
        c.integer("n_routed_experts"),
        c.integer("num_experts_per_tok"),
        router,
        f"up -> {act} -> down -> affinity_scale",
        1,
        c.integer("moe_shared_expert_intermediate_size"),
        f"up -> {shared_act} -> down",
    )


FAMILIES: dict[str, Callable[[_Reader], MoELayer]] = {
    "mixtral": _mixtral,
    "qwen2_moe": _qwen2_moe,
    "qwen3_moe": _qwen3_moe,
    "deepseek_v2": _deepseek_v2,
    "deepseek_v3": _deepseek_v3,
    "gpt_oss": _gpt_oss,
    "llama4_text": _llama4,
    "nemotron_h": _nemotron_h,
}
IGNORED = {"nemotron_h": NEMOTRON_H_IGNORED}  # per model type, on top of COMMON_IGNORED
DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


@dataclass(frozen=True)
class ReadConfig:
    """A config's MoE layer, its dtype, and the (field, value) pairs that decided them."""

    layer: MoELayer
    dtype: str
    model_type: str
    values: list[tuple[str, object]]


def read_config(config: dict) -> ReadConfig:
    """The MoE layer of a config; ConfigError names the first field it cannot state."""
    model_type = config.get("model_type")
    if model_type == "llama4":
        text = config.get("text_config")
        if not isinstance(text, dict):
            raise ConfigError("text_config", "a llama4 config holds the language model in text_config")
        for name in sorted(set(config) - {"model_type", "text_config", "architectures", "torch_dtype"}):
            if name not in ("vision_config", "boi_token_index", "eoi_token_index", "image_token_index"):
                raise ConfigError(name, "not supported by moegen import-hf (no spec setting states it)")
        reader = _Reader(text, "text_config.")
        layer = _llama4(reader)
        reader.check_unused(COMMON_IGNORED | {"model_type"})
        dtype = _dtype(text.get("torch_dtype", config.get("torch_dtype")))
        return ReadConfig(layer, dtype, model_type, reader.values_read() + _dtype_value(text, "text_config."))
    if model_type not in FAMILIES:
        raise ConfigError("model_type", f"{model_type!r} is not supported (supported: {', '.join(FAMILIES)})")
    reader = _Reader(config)
    layer = FAMILIES[model_type](reader)
    reader.check_unused(COMMON_IGNORED | IGNORED.get(model_type, frozenset()))
    return ReadConfig(layer, _dtype(config.get("torch_dtype")), model_type, reader.values_read() + _dtype_value(config))


def _dtype(value: object) -> str:
    if value is None:
        return "bf16"
    if value not in DTYPES:
        raise ConfigError("torch_dtype", f"{value!r} is not supported (supported: {', '.join(DTYPES)})")
    return DTYPES[value]


def _dtype_value(config: dict, prefix: str = "") -> list[tuple[str, object]]:
    return [(prefix + "torch_dtype", config["torch_dtype"])] if "torch_dtype" in config else []


# ---------------------------------------------------------------------------------------------------
# Spec text: the layer part (from the config) and the kernel part (a default set, then kept).

RECORD = re.compile(r"^# Generated by `moegen import-hf (?P<args>[^`]+)`")
# A statement of the layer part: a setting (`dims ...`, `dtype bf16`) or a pipeline (`router = ...`).
LAYER_STATEMENT = re.compile(r"^\s*(?!kernel\b|defaults\b)[A-Za-z_]\w*\s*(=|\s\S)")
# The layer statements moegen import-hf writes, as they would appear misplaced in the kernel part.
WRITTEN_LAYER_STATEMENT = re.compile(r"^\s*((dims|dtype|quant)\s+\S|(router|expert|shared_expert)\s*=)")
MOE_LINE = re.compile(r"^\s*moe\s+\w+\s*\{\s*$")


@dataclass(frozen=True)
class ImportOptions:
    """How a spec was imported: the config (as the record names it) and the serving options."""

    config: str
    tp: int = 1
    ep: int = 1
    quant: str = ""  # the options of a `quant` statement, e.g. "weights=mxfp4 activations=mxfp8"

    def command(self) -> str:
        """The import-hf arguments that reproduce the layer part."""
        args = [self.config]
        args += ["--tp", str(self.tp)] if self.tp > 1 else []
        args += ["--ep", str(self.ep)] if self.ep > 1 else []
        args += ["--quant", self.quant] if self.quant else []
        return shlex.join(args)


def parse_record(args: str) -> ImportOptions:
    """The options of a record line's `moegen import-hf ARGS`."""
    parser = argparse.ArgumentParser(prog="moegen import-hf", add_help=False, exit_on_error=False)
    parser.add_argument("config")
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--ep", type=int, default=1)
    parser.add_argument("--quant", default="")
    try:
        known, unknown = parser.parse_known_args(shlex.split(args))
    except (argparse.ArgumentError, ValueError) as error:
        raise RecordError(f"cannot read the import record '{args}': {error}") from None
    if unknown:
        raise RecordError(f"the import record '{args}' has arguments --refresh does not know: {' '.join(unknown)}")
    return ImportOptions(known.config, known.tp, known.ep, known.quant)


class RecordError(Exception):
    """A spec whose import record or layout --refresh cannot follow."""


def _wrapped_comment(text: str, width: int = 100) -> list[str]:
    lines, line = [], "#"
    for word in text.split(" "):
        if len(line) + 1 + len(word) > width and line != "#":
            lines.append(line)
            line = "#"
        line += " " + word
    return lines + [line]


def _value(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def layer_part(config: dict, name: str, options: ImportOptions) -> str:
    """The header, `moe` line and layer statements of the spec of `config` (no kernels, no closing brace)."""
    read = read_config(config)
    layer = read.layer
    dims = f"hidden={layer.hidden} intermediate={layer.intermediate} experts={layer.experts} top_k={layer.top_k}"
    if layer.shared_experts:
        dims += f" shared_experts={layer.shared_experts} shared_intermediate={layer.shared_intermediate}"
    dims += (f" tp={options.tp}" if options.tp > 1 else "") + (f" ep={options.ep}" if options.ep > 1 else "")
    values = ", ".join(f"{field} {_value(value)}" for field, value in read.values)
    lines = [
        f"# Generated by `moegen import-hf {options.command()}`.",
        "# `moegen import-hf --refresh` rewrites this header and the layer statements from that config (its",
        "# path read from this file's folder) and keeps what follows them; `moegen check` fails when stale.",
        *_wrapped_comment(f"The MoE layer of model_type {read.model_type}: {values}."),
        f"moe {name} {{",
        f"  dims   {dims}",
        f"  dtype  {read.dtype}",
    ]
    if options.quant:
        lines.append(f"  quant  {options.quant}")
    lines += [f"  router = {layer.router}", f"  expert = {layer.expert}"]
    if layer.shared_experts:
        lines.append(f"  shared_expert = {layer.shared_expert}")
    return "\n".join(lines) + "\n"


def default_kernels(config: dict, options: ImportOptions) -> str:
    """The kernel part of a newly imported spec, a complete layer: a router, a decode tkg and a prefill cte
    kernel. A layer with shared experts has them fused into tkg and cte (`shared=auto`) when the plan fuses
    both; otherwise the routed kernels say `shared=separate` and a `shared` family kernel runs them."""
    decode = "mode=all_experts" if options.ep > 1 else ""
    fused = _kernel_lines(decode, "block=128", separate=False)
    if read_config(config).layer.shared_experts and not _plans_fuse_shared(layer_part(config, "m", options), fused):
        lines = _kernel_lines(decode, "block=128", separate=True) + ["  kernel shared_experts : shared { }"]
    else:
        lines = fused
    return "\n".join(["", *lines, "}"]) + "\n"


def _kernel_lines(decode: str, prefill: str, *, separate: bool) -> list[str]:
    """The router, decode (tkg) and prefill (cte) kernel lines, with `shared=separate` when `separate`."""
    shared = " shared=separate" if separate else ""

    def braces(options: str) -> str:
        return f"{{ {options} }}" if options else "{ }"

    return [
        "  kernel router_topk : router { }",
        f"  kernel decode : tkg {braces(decode + shared)}".replace("{  ", "{ "),
        f"  kernel prefill : cte {braces(prefill + shared)}",
    ]


def _plans_fuse_shared(layer_text: str, kernel_lines: list[str]) -> bool:
    """Whether the plan fuses the shared experts into every tkg and cte kernel of `kernel_lines` (shared=auto)
    on the layer of `layer_text`; False when the kernels do not plan (the separate set is written then)."""
    from moegen.compiler import plan_spec
    from moegen.diagnostics import SpecError
    from moegen.plan import families
    from moegen.spec.parser import parse
    from moegen.spec.validate import validate

    text = "\n".join([layer_text.rstrip("\n"), *kernel_lines, "}"]) + "\n"
    try:
        spec = validate(parse(text), {name: family.options for name, family in families().items()})
        plans = plan_spec(spec)
    except SpecError:
        return False
    return all(plan.shared is not None for plan in plans if plan.family in ("tkg", "cte"))


def spec_text(config: dict, name: str, tp: int = 1, ep: int = 1, source: str = "config.json", quant: str = "") -> str:
    """The `.moe` spec of the config's MoE layer with the default kernel set."""
    options = ImportOptions(source, tp, ep, quant)
    return layer_part(config, name, options) + default_kernels(config, options)


def split_spec(text: str) -> tuple[ImportOptions | None, str]:
    """An imported spec's options (None when the spec has no import record) and its kernel part: the text
    after the layer statements that follow the `moe` line."""
    lines = text.splitlines(keepends=True)
    match = RECORD.match(lines[0]) if lines else None
    options = parse_record(match["args"]) if match else None
    start = next((i for i, line in enumerate(lines) if MOE_LINE.match(line)), None)
    if start is None:
        raise RecordError("no 'moe NAME {' line")
    end = start + 1
    while end < len(lines) and LAYER_STATEMENT.match(lines[end]) and not lines[end].lstrip().startswith("}"):
        end += 1
    for number, line in enumerate(lines[end:], end + 1):
        if WRITTEN_LAYER_STATEMENT.match(line):
            raise RecordError(
                f"line {number}: '{line.split()[0]}' after the layer statements; the layer comes from the config, "
                "so keep no layer statement in the kernel part"
            )
    return options, "".join(lines[end:])


def load_config(path: Path) -> dict:
    """A config.json's object (json.JSONDecodeError, OSError as raised)."""
    config = json.loads(Path(path).read_text())
    if not isinstance(config, dict):
        raise ConfigError("(top level)", "a config.json is a JSON object")
    return config


def refreshed(spec: Path) -> tuple[str, ImportOptions]:
    """The text `--refresh` writes for `spec` (its layer part from the config its record names, its kernel
    part kept) and the recorded options."""
    spec = Path(spec)
    options, kernels = split_spec(spec.read_text())
    if options is None:
        raise RecordError("not imported (its first line is no '# Generated by `moegen import-hf ...`' record)")
    config = load_config(spec.parent / options.config)
    return layer_part(config, spec.stem, options) + kernels, options


def stale_line(spec: Path) -> str | None:
    """None when an imported spec equals its refresh, else where they first differ (for `moegen check`)."""
    actual = Path(spec).read_text()
    expected, options = refreshed(spec)
    if actual == expected:
        return None
    actual_lines, expected_lines = actual.splitlines(), expected.splitlines()
    for number, (have, want) in enumerate(zip(actual_lines, expected_lines), 1):
        if have != want:
            return f"{spec}:{number}: stale against {options.config}: has {have!r}, the config gives {want!r}"
    number = min(len(actual_lines), len(expected_lines)) + 1
    return f"{spec}:{number}: stale against {options.config}: the line counts differ"


def is_imported(spec: Path) -> bool:
    """Whether the spec's first line is a `moegen import-hf` record."""
    with open(spec, encoding="utf-8", errors="replace") as handle:
        return bool(RECORD.match(handle.readline()))


def spec_name(path: Path) -> str:
    """A spec name from the config's file or folder name: `deepseek_v3.json` -> `deepseek_v3`."""
    stem = path.parent.name if path.stem == "config" else path.stem
    name = re.sub(r"[^A-Za-z0-9_]", "_", stem)
    return name if re.match(r"[A-Za-z_]", name) else f"m_{name}"


def import_file(
    path: Path, tp: int = 1, ep: int = 1, name: str | None = None, output: Path | None = None, quant: str = ""
) -> str:
    """The spec of the config at `path`. With `output`, the record names the config relative to the output's
    folder, and an existing output keeps its kernel part."""
    config = load_config(path)
    if output is None:
        return spec_text(config, name or spec_name(Path(path)), tp, ep, source=str(path), quant=quant)
    output = Path(output)
    options = ImportOptions(Path(os.path.relpath(Path(path), output.parent or ".")).as_posix(), tp, ep, quant)
    kernels = split_spec(output.read_text())[1] if output.exists() else default_kernels(config, options)
    return layer_part(config, name or output.stem, options) + kernels


def _deepseek_layer(c: _Reader, router: str, act: str) -> MoELayer:
    """The MoE layer of a DeepSeek-V2/V3 config with its router statement: routed experts of
    moe_intermediate_size, and the shared experts as one gated MLP of width n_shared_experts *
    moe_intermediate_size (transformers builds them so)."""
    moe_i, shared = c.integer("moe_intermediate_size"), c.integer("n_shared_experts")
    return MoELayer(
        c.integer("hidden_size"),
        moe_i,
        c.integer("n_routed_experts"),
        c.integer("num_experts_per_tok"),
        router,
        f"gate_up -> {act} -> down -> affinity_scale",
        1 if shared else 0,
        shared * moe_i,
        f"gate_up -> {act} -> down" if shared else "",
    )
