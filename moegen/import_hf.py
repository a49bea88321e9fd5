"""`moegen import-hf`: a `.moe` spec from a Hugging Face `config.json` (docs/import_hf.md).

Each supported `model_type` has a table of the config fields that define its MoE layer (read) and of
the fields that do not concern the MoE layer (attention, embeddings, positions, training: accepted and
not used). Any other field, or a value the spec language cannot state, is an error naming the field:
nothing is dropped silently.
"""

from __future__ import annotations

import json
import re
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

    def require(self, name: str, allowed: tuple, default: object = ...) -> object:
        value = self.get(name, default)
        if value not in allowed:
            raise ConfigError(self.prefix + name, f"{value!r} is not supported (supported: {allowed})")
        return value

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


def _deepseek_v3(c: _Reader) -> MoELayer:
    c.integer("intermediate_size")  # the first_k_dense_replace dense layers
    act = c.activation()
    c.require("scoring_func", ("sigmoid",))
    c.require("topk_method", ("noaux_tc",))
    groups, keep = c.integer("n_group"), c.integer("topk_group")
    renormalize = c.require("norm_topk_prob", (True, False))
    factor = c.get("routed_scaling_factor")
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor <= 0:
        raise ConfigError("routed_scaling_factor", f"expected a positive number, got {factor!r}")
    router = "linear -> sigmoid -> select_bias"
    if groups > 1:
        router += f" -> group_limit(groups={groups}, keep={keep}, score=top2_sum)"
    router += " -> topk" + (" -> renormalize" if renormalize else "")
    if factor != 1:
        router += f" -> scaling_factor({factor!r})"
    moe_i, shared = c.integer("moe_intermediate_size"), c.integer("n_shared_experts")
    return MoELayer(
        c.integer("hidden_size"),
        moe_i,
        c.integer("n_routed_experts"),
        c.integer("num_experts_per_tok"),
        router,
        f"gate_up -> {act} -> down -> affinity_scale",
        1 if shared else 0,
        shared * moe_i,  # transformers builds one MLP of width n_shared_experts * moe_intermediate_size
        f"gate_up -> {act} -> down" if shared else "",
    )


def _gpt_oss(c: _Reader) -> MoELayer:
    c.require("hidden_act", ("silu",))  # transformers' GptOssExperts hard-codes swish(1.702) on the gate
    limit = c.get("swiglu_limit")
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit <= 0:
        raise ConfigError("swiglu_limit", f"expected a positive number, got {limit!r}")
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


FAMILIES: dict[str, Callable[[_Reader], MoELayer]] = {
    "mixtral": _mixtral,
    "qwen2_moe": _qwen2_moe,
    "qwen3_moe": _qwen3_moe,
    "deepseek_v3": _deepseek_v3,
    "gpt_oss": _gpt_oss,
    "llama4_text": _llama4,
}
DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


def read_layer(config: dict) -> tuple[MoELayer, str]:
    """The MoE layer of a config and its dtype; ConfigError names the first field it cannot state."""
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
        return layer, _dtype(text.get("torch_dtype", config.get("torch_dtype")))
    if model_type not in FAMILIES:
        raise ConfigError("model_type", f"{model_type!r} is not supported (supported: {', '.join(FAMILIES)})")
    reader = _Reader(config)
    layer = FAMILIES[model_type](reader)
    reader.check_unused(COMMON_IGNORED)
    return layer, _dtype(config.get("torch_dtype"))


def _dtype(value: object) -> str:
    if value is None:
        return "bf16"
    if value not in DTYPES:
        raise ConfigError("torch_dtype", f"{value!r} is not supported (supported: {', '.join(DTYPES)})")
    return DTYPES[value]


def spec_text(config: dict, name: str, tp: int = 1, ep: int = 1, source: str = "config.json") -> str:
    """The `.moe` spec of the config's MoE layer with a default router, tkg and cte kernel (and the
    shared experts' kernel)."""
    layer, dtype = read_layer(config)
    dims = f"hidden={layer.hidden} intermediate={layer.intermediate} experts={layer.experts} top_k={layer.top_k}"
    if layer.shared_experts:
        dims += f" shared_experts={layer.shared_experts} shared_intermediate={layer.shared_intermediate}"
    dims += (f" tp={tp}" if tp > 1 else "") + (f" ep={ep}" if ep > 1 else "")
    lines = [
        f"# Generated by moegen import-hf from {source}: the MoE layer of model_type {config.get('model_type')!s}.",
        f"moe {name} {{",
        f"  dims   {dims}",
        f"  dtype  {dtype}",
        f"  router = {layer.router}",
        f"  expert = {layer.expert}",
    ]
    if layer.shared_experts:
        lines.append(f"  shared_expert = {layer.shared_expert}")
    lines += [
        "",
        "  kernel router_topk : router { }",
        "  kernel decode : tkg { mode=all_experts }" if ep > 1 else "  kernel decode : tkg { }",
        "  kernel prefill : cte { block=128 }",
    ]
    if layer.shared_experts:
        lines.append("  kernel shared_experts : shared { }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def spec_name(path: Path) -> str:
    """A spec name from the config's file or folder name: `deepseek_v3.json` -> `deepseek_v3`."""
    stem = path.parent.name if path.stem == "config" else path.stem
    name = re.sub(r"[^A-Za-z0-9_]", "_", stem)
    return name if re.match(r"[A-Za-z_]", name) else f"m_{name}"


def import_file(path: Path, tp: int = 1, ep: int = 1, name: str | None = None) -> str:
    config = json.loads(Path(path).read_text())
    if not isinstance(config, dict):
        raise ConfigError("(top level)", "a config.json is a JSON object")
    return spec_text(config, name or spec_name(Path(path)), tp, ep, source=Path(path).name)
