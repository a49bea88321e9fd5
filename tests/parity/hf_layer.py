"""What the transformers parity tests share: a tiny Hugging Face config per model family, the MoE block
transformers builds from it (seeded weights, snapped to bf16 so that both sides read the same numbers),
its weights in the argument layouts of moegen's kernels, and the layer run through the generated
router -> tkg or cte kernels in the simulator: with the shared experts fused into tkg and cte (the import's
default when the plan fuses them), or with the `shared` kernel's output added (a family with
`shared="separate"`, its spec edited as a user would).

The spec comes from the config through `moegen import-hf` (moegen/import_hf.py), as a user would make it.
Layouts (SEMANTICS.md sections 1, 3, 4, 5): router w [H, E]; routed gate/up [E, H, 2, I] (gated) or
[E, H, I] (not gated), down [E, I, H]; shared experts the same over S = 1 shared expert of width I_S.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import transformers
from torch import nn

from moegen import blocking, sim
from moegen.codegen.build import write
from moegen.compiler import GeneratedSpec, generate
from moegen.import_hf import spec_text
from moegen.reference.quant import cast
from moegen.verify import cte as cte_harness
from moegen.verify import router as router_harness
from moegen.verify import tkg as tkg_harness

SEED = 20261206
torch.set_num_threads(1)  # tiny matmuls; `make test` runs two pytest workers on two cores


@dataclass(frozen=True)
class LayerWeights:
    """One MoE layer in the kernels' layouts (float32 arrays holding bf16 values)."""

    router_w: np.ndarray  # [H, E]
    gate_up: np.ndarray  # [E, H, 2, I], or [E, H, I] for non-gated experts
    down: np.ndarray  # [E, I, H]
    router_bias: np.ndarray | None = None  # [E] (GPT-OSS)
    selection_bias: np.ndarray | None = None  # [E] (DeepSeek-V3 e_score_correction_bias)
    gate_up_bias: np.ndarray | None = None  # [E, 2, I]
    down_bias: np.ndarray | None = None  # [E, H]
    shared_gate_up: np.ndarray | None = None  # [1, H, 2, I_S] or [1, H, I_S]
    shared_down: np.ndarray | None = None  # [1, I_S, H]
    shared_gate_w: np.ndarray | None = None  # [H, 1] (Qwen2-MoE shared_expert_gate)


@dataclass(frozen=True)
class Routing:
    """The router's outputs: logits [T, E], expert_index [T, K] and affinities [T, E] (0 where unselected)."""

    logits: np.ndarray
    index: np.ndarray
    affinities: np.ndarray


def numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).numpy().copy()


def gate_up_of_halves(w: torch.Tensor) -> np.ndarray:
    """[E, 2I, H] (rows 0..I-1 gate, I..2I-1 up: Mixtral, Qwen, DeepSeek) -> [E, H, 2, I]."""
    e, two_i, h = w.shape
    return numpy(w).reshape(e, 2, two_i // 2, h).transpose(0, 3, 1, 2).copy()


def gate_up_of_mlp(mlp: nn.Module) -> np.ndarray:
    """A dense gated MLP (gate_proj, up_proj: Linear H -> I) -> [1, H, 2, I]."""
    return np.stack([numpy(mlp.gate_proj.weight).T, numpy(mlp.up_proj.weight).T], axis=1)[None]


def down_of_mlp(mlp: nn.Module) -> np.ndarray:
    """down_proj: Linear I -> H -> [1, I, H]."""
    return numpy(mlp.down_proj.weight).T[None].copy()


def _mixtral_weights(block: nn.Module) -> LayerWeights:
    return LayerWeights(
        router_w=numpy(block.gate.weight).T.copy(),
        gate_up=gate_up_of_halves(block.experts.gate_up_proj),
        down=numpy(block.experts.down_proj).transpose(0, 2, 1).copy(),  # [E, H, I] -> [E, I, H]
    )


def _qwen2_weights(block: nn.Module) -> LayerWeights:
    base = _mixtral_weights(block)
    return LayerWeights(
        base.router_w,
        base.gate_up,
        base.down,
        shared_gate_up=gate_up_of_mlp(block.shared_expert),
        shared_down=down_of_mlp(block.shared_expert),
        shared_gate_w=numpy(block.shared_expert_gate.weight).T.copy(),
    )


def _deepseek_weights(block: nn.Module) -> LayerWeights:
    base = _mixtral_weights(block)
    return LayerWeights(
        base.router_w,
        base.gate_up,
        base.down,
        selection_bias=numpy(block.gate.e_score_correction_bias),
        shared_gate_up=gate_up_of_mlp(block.shared_experts),
        shared_down=down_of_mlp(block.shared_experts),
    )


def _gpt_oss_weights(block: nn.Module) -> LayerWeights:
    """GptOssExperts interleaves gate and up along 2I (column 2i gate i, 2i + 1 up i), weights [E, H, 2I]."""
    experts = block.experts
    gate_up = numpy(experts.gate_up_proj)  # [E, H, 2I]
    bias = numpy(experts.gate_up_proj_bias)  # [E, 2I]
    return LayerWeights(
        router_w=numpy(block.router.weight).T.copy(),
        router_bias=numpy(block.router.bias),
        gate_up=np.stack([gate_up[..., 0::2], gate_up[..., 1::2]], axis=2),
        down=numpy(experts.down_proj),  # [E, I, H]
        gate_up_bias=np.stack([bias[:, 0::2], bias[:, 1::2]], axis=1),
        down_bias=numpy(experts.down_proj_bias),
    )


def _llama4_weights(block: nn.Module) -> LayerWeights:
    """Llama4TextExperts: gate_up_proj [E, H, 2I] (columns 0..I-1 gate), down_proj [E, I, H]."""
    gate_up = numpy(block.experts.gate_up_proj)
    e, h, two_i = gate_up.shape
    return LayerWeights(
        router_w=numpy(block.router.weight).T.copy(),
        gate_up=gate_up.reshape(e, h, 2, two_i // 2),
        down=numpy(block.experts.down_proj),
        shared_gate_up=gate_up_of_mlp(block.shared_expert),
        shared_down=down_of_mlp(block.shared_expert),
    )


def _nemotron_h_weights(block: nn.Module) -> LayerWeights:
    """NemotronHExperts (not gated): up_proj [E, I, H], down_proj [E, H, I]; shared NemotronHMLP up -> down."""
    shared = block.shared_experts
    return LayerWeights(
        router_w=numpy(block.gate.weight).T.copy(),
        selection_bias=numpy(block.gate.e_score_correction_bias),
        gate_up=numpy(block.experts.up_proj).transpose(0, 2, 1).copy(),
        down=numpy(block.experts.down_proj).transpose(0, 2, 1).copy(),
        shared_gate_up=numpy(shared.up_proj.weight).T[None].copy(),
        shared_down=down_of_mlp(shared),
    )


def _route_gate(block: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Routers returning (logits, top-K weights [T, K], top-K index [T, K]) from block.gate."""
    return block.gate(x)


def _route_gpt_oss(block: nn.Module, x: torch.Tensor):
    return block.router(x)


def _route_llama4(block: nn.Module, x: torch.Tensor):
    scores, logits = block.router(x)  # scores [T, E]: sigmoid of the top-K logits, 0 elsewhere
    index = torch.topk(logits, block.top_k, dim=1).indices
    return logits, scores.gather(1, index), index


@dataclass(frozen=True)
class Family:
    """A model family: its tiny config, the transformers block it builds, and the weight mapping."""

    name: str
    config: dict
    block: Callable[[transformers.PretrainedConfig], nn.Module]
    config_class: Callable[..., transformers.PretrainedConfig]
    weights: Callable[[nn.Module], LayerWeights]
    route: Callable[[nn.Module, torch.Tensor], tuple] = _route_gate
    # parameters stored [.., in, out] (x @ W) rather than nn.Linear's [.., out, in]
    input_major: tuple[str, ...] = ()
    buffers: dict[str, float] = field(default_factory=dict)  # buffer name -> uniform(-a, a) bound
    # "separate": the imported spec edited to run the shared experts in a `shared` kernel (shared=separate)
    shared: str = "auto"


def _module(path: str):
    def make(config):
        module_name, class_name = path.rsplit(".", 1)
        return getattr(__import__(f"transformers.models.{module_name}", fromlist=[class_name]), class_name)(config)

    return make


HIDDEN, TOKENS_TKG, TOKENS_CTE = 128, 4, 160
FAMILIES: dict[str, Family] = {
    f.name: f
    for f in [
        Family(
            "mixtral",
            {
                "model_type": "mixtral",
                "hidden_act": "silu",
                "hidden_size": HIDDEN,
                "intermediate_size": 64,
                "num_local_experts": 4,
                "num_experts_per_tok": 2,
                "torch_dtype": "bfloat16",
            },
            _module("mixtral.modeling_mixtral.MixtralSparseMoeBlock"),
            transformers.MixtralConfig,
            _mixtral_weights,
        ),
        Family(
            "qwen3_moe",
            {
                "model_type": "qwen3_moe",
                "hidden_act": "silu",
                "hidden_size": HIDDEN,
                "intermediate_size": 256,
                "moe_intermediate_size": 64,
                "num_experts": 8,
                "num_experts_per_tok": 2,
                "norm_topk_prob": True,
                "torch_dtype": "bfloat16",
            },
            _module("qwen3_moe.modeling_qwen3_moe.Qwen3MoeSparseMoeBlock"),
            transformers.Qwen3MoeConfig,
            _mixtral_weights,
        ),
        Family(
            "qwen2_moe",
            {
                "model_type": "qwen2_moe",
                "hidden_act": "silu",
                "hidden_size": HIDDEN,
                "intermediate_size": 256,
                "moe_intermediate_size": 64,
                "shared_expert_intermediate_size": 96,
                "num_experts": 8,
                "num_experts_per_tok": 2,
                "norm_topk_prob": False,
                "torch_dtype": "bfloat16",
            },
            _module("qwen2_moe.modeling_qwen2_moe.Qwen2MoeSparseMoeBlock"),
            transformers.Qwen2MoeConfig,
            _qwen2_weights,
        ),
        Family(
            "deepseek_v3",
            {
                "model_type": "deepseek_v3",
                "hidden_act": "silu",
                "hidden_size": HIDDEN,
                "intermediate_size": 256,
                "moe_intermediate_size": 64,
                "n_routed_experts": 8,
                "n_shared_experts": 1,
                "num_experts_per_tok": 2,
                "n_group": 4,
                "topk_group": 2,
                "norm_topk_prob": True,
                "routed_scaling_factor": 2.5,
                "scoring_func": "sigmoid",
                "topk_method": "noaux_tc",
                "torch_dtype": "bfloat16",
            },
            _module("deepseek_v3.modeling_deepseek_v3.DeepseekV3MoE"),
            transformers.DeepseekV3Config,
            _deepseek_weights,
            buffers={"gate.e_score_correction_bias": 0.1},
            shared="separate",  # the separate path stays compared with transformers too
        ),
        Family(
            "gpt_oss",
            {
                "model_type": "gpt_oss",
                "hidden_act": "silu",
                "hidden_size": HIDDEN,
                "intermediate_size": 64,
                "num_local_experts": 4,
                "num_experts_per_tok": 2,
                "swiglu_limit": 7.0,  # GptOssExperts hard-codes limit 7.0 whatever the config says
                "torch_dtype": "bfloat16",
            },
            _module("gpt_oss.modeling_gpt_oss.GptOssMLP"),
            transformers.GptOssConfig,
            _gpt_oss_weights,
            route=_route_gpt_oss,
            input_major=("experts.gate_up_proj", "experts.down_proj"),
        ),
        Family(
            "llama4",
            {
                "model_type": "llama4",
                "text_config": {
                    "model_type": "llama4_text",
                    "hidden_act": "silu",
                    "hidden_size": HIDDEN,
                    "intermediate_size": 64,
                    "num_local_experts": 4,
                    "num_experts_per_tok": 1,
                    "torch_dtype": "bfloat16",
                },
            },
            _module("llama4.modeling_llama4.Llama4TextMoe"),
            lambda **config: transformers.Llama4TextConfig(**config["text_config"]),
            _llama4_weights,
            route=_route_llama4,
            input_major=("experts.gate_up_proj", "experts.down_proj"),
        ),
        Family(
            "nemotron_h",
            {
                "model_type": "nemotron_h",
                "hidden_size": HIDDEN,
                "intermediate_size": 256,  # the hybrid pattern's dense MLP layers, not the MoE layer
                "moe_intermediate_size": 64,
                "n_routed_experts": 8,
                "num_experts_per_tok": 2,
                "n_shared_experts": 1,
                "moe_shared_expert_intermediate_size": 96,
                "mlp_hidden_act": "relu2",
                "mlp_bias": False,
                "n_group": 1,
                "topk_group": 1,
                "norm_topk_prob": True,
                "routed_scaling_factor": 2.5,
                "torch_dtype": "bfloat16",
            },
            _module("nemotron_h.modeling_nemotron_h.NemotronHMoE"),
            transformers.NemotronHConfig,
            _nemotron_h_weights,
            buffers={"gate.e_score_correction_bias": 0.1},
        ),
    ]
}


def tiny_block(family: Family) -> nn.Module:
    """The family's transformers MoE block from its tiny config, float32, with seeded weights of unit-scale
    outputs (each weight ~ N(0, 1 / fan_in), biases ~ N(0, 0.1^2)) rounded to bf16 values."""
    config = family.config_class(**family.config)
    config._experts_implementation = "eager"  # the modules' own forward (a loop over experts), not a fused kernel
    torch.manual_seed(SEED)
    block = family.block(config).to(torch.float32).eval()
    with torch.no_grad():
        for name, p in block.named_parameters():
            if p.dim() == 1:
                p.copy_(0.1 * torch.randn(p.shape))
                continue
            fan_in = p.shape[-2] if name in family.input_major else p.shape[-1]
            p.copy_(torch.randn(p.shape) / fan_in**0.5)
        for name, bound in family.buffers.items():
            block.get_buffer(name).copy_(torch.empty(block.get_buffer(name).shape).uniform_(-bound, bound))
        for p in list(block.parameters()):
            p.copy_(p.to(torch.bfloat16).to(torch.float32))
    return block


def hidden_states(tokens: int, hidden: int = HIDDEN, seed: int = SEED) -> np.ndarray:
    """Token rows [T, H] ~ N(0, 1), bf16 values in float32."""
    rng = np.random.default_rng(seed + tokens)
    return cast(rng.standard_normal((tokens, hidden)).astype(np.float32), "bf16").astype(np.float32)


def transformers_layer(family: Family, block: nn.Module, x: np.ndarray) -> tuple[np.ndarray, Routing]:
    """The block's forward output [T, H] and its router's outputs, as float32 (x is cast to the block's dtype:
    a bf16 block computes as transformers does in bf16)."""
    tokens, hidden = x.shape
    with torch.no_grad():
        xt = torch.from_numpy(x).to(next(block.parameters()).dtype)
        out = block(xt.reshape(1, tokens, hidden))
        out = out[0] if isinstance(out, tuple) else out
        logits, weights, index = family.route(block, xt)
    dense = np.zeros(tuple(logits.shape), dtype=np.float32)
    np.put_along_axis(dense, index.numpy(), numpy(weights), axis=1)
    return numpy(out).reshape(tokens, hidden), Routing(numpy(logits), index.numpy().astype(np.int32), dense)


@dataclass
class Kernels:
    """The generated kernels of a family's imported spec, loaded in the simulator, by family."""

    generated: GeneratedSpec
    modules: dict = field(default_factory=dict)

    def plan(self, family: str):
        (plan,) = [p for p in self.generated.plans if p.family == family]
        return plan

    def kernel(self, family: str):
        plan = self.plan(family)
        return getattr(self.modules[plan.kernel_name], plan.kernel_name)


def separate_shared(text: str) -> str:
    """An imported spec whose tkg and cte kernels fuse the shared experts, edited to run them separately:
    `shared=separate` on those kernels and a `shared` kernel added."""
    assert "shared=separate" not in text and " : shared {" not in text, "the import already runs them separately"
    text = re.sub(r"^(  kernel \w+ : (?:tkg|cte) \{) ?(.*?) ?\}$", r"\1 \2 shared=separate }", text, flags=re.M)
    text = text.replace("{  shared=separate }", "{ shared=separate }")
    return text.removesuffix("}\n") + "  kernel shared_experts : shared { }\n}\n"


def build_kernels(family: Family, folder: Path) -> Kernels:
    """`moegen import-hf` on the tiny config (edited by separate_shared for a family with shared="separate"),
    then build the spec into `folder` and load every kernel."""
    spec = folder / f"{family.name}.moe"
    text = spec_text(family.config, f"tiny_{family.name}")
    spec.write_text(separate_shared(text) if family.shared == "separate" else text)
    generated = generate(spec)
    out = write(generated, folder / "generated")
    modules = {p.kernel_name: sim.load_module(out / f"{p.kernel_name}.py") for p in generated.plans}
    return Kernels(generated, modules)


def bf16(a: np.ndarray) -> np.ndarray:
    return cast(np.asarray(a, dtype=np.float32), "bf16")


def run_router(kernels: Kernels, w: LayerWeights, x: np.ndarray) -> Routing:
    plan = kernels.plan("router")
    inputs = {"x": bf16(x if plan.x_layout == "th" else x.T), "w": bf16(w.router_w)}
    if plan.w_bias:
        inputs["w_bias"] = bf16(w.router_bias)
    if plan.selection_bias:
        inputs["selection_bias"] = w.selection_bias.astype(np.float32)
    out = router_harness.run(kernels.kernel("router"), plan, inputs)
    return Routing(
        np.asarray(out["router_logits"], dtype=np.float32),
        np.asarray(out["expert_index"]).astype(np.int32),
        np.asarray(out["expert_affinities"], dtype=np.float32),
    )


def shared_gate_values(w: LayerWeights, x: np.ndarray) -> np.ndarray:
    """The shared experts' scales [T, S]: Qwen2-MoE's sigmoid(x @ w_gate), computed by the caller as the kernels'
    interface says (moegen/verify/shared.py, shared_fused.py); 1 for the other families."""
    if w.shared_gate_w is None:
        return np.ones((x.shape[0], 1), dtype=np.float32)
    return 1.0 / (1.0 + np.exp(-(x @ w.shared_gate_w)))


def fused_shared_inputs(plan, w: LayerWeights, x: np.ndarray, with_shared: bool) -> dict:
    """The fused shared experts' arguments of a tkg or cte kernel (none when it does not fuse them); zero
    weights when not `with_shared` (the layer without its shared term)."""
    if plan.shared is None:
        return {}
    scale = 1.0 if with_shared else 0.0
    inputs = {
        "shared_gate_up_weights": bf16(scale * w.shared_gate_up),
        "shared_down_weights": bf16(scale * w.shared_down),
    }
    if plan.shared.gate:
        inputs["shared_gate_values"] = bf16(shared_gate_values(w, x))
    return inputs


def run_tkg(kernels: Kernels, w: LayerWeights, x: np.ndarray, routing: Routing, with_shared: bool = True) -> np.ndarray:
    """The decode kernel on the router kernel's outputs: output [T, H] of the routed experts (and of the shared
    experts, when it fuses them)."""
    plan = kernels.plan("tkg")
    inputs = {
        "hidden_input": bf16(x),
        "expert_gate_up_weights": bf16(w.gate_up),
        "expert_down_weights": bf16(w.down),
        "expert_affinities": bf16(routing.affinities),
        "expert_index": routing.index,
    }
    if plan.mlp.gate_up_bias:
        inputs["expert_gate_up_bias"] = bf16(w.gate_up_bias)
    if plan.mlp.down_bias:
        inputs["expert_down_bias"] = bf16(w.down_bias)
    inputs.update(fused_shared_inputs(plan, w, x, with_shared))
    return tkg_harness.run(kernels.kernel("tkg"), plan, inputs)["output"]


def run_cte(kernels: Kernels, w: LayerWeights, x: np.ndarray, routing: Routing, with_shared: bool = True) -> np.ndarray:
    """The prefill kernel on the router kernel's outputs, blocked by moegen.blocking: output [T, H] (with the
    shared experts' when it fuses them)."""
    plan = kernels.plan("cte")
    tokens = x.shape[0]
    selected = np.take_along_axis(routing.affinities, routing.index, axis=1)
    blocks = blocking.build_blocks(
        routing.index, bf16(selected), plan.experts, plan.block, pad_with=-1 if plan.pad_skip else "T"
    )
    rows = tokens if plan.pad_skip else tokens + 1
    hidden = np.zeros((rows, x.shape[1]), dtype=np.float32)
    hidden[:tokens] = x
    inputs = {
        "hidden_states": bf16(hidden),
        "expert_affinities_masked": blocks.expert_affinities_masked[: rows * plan.experts],
        "token_position_to_id": blocks.token_position_to_id,
        "block_to_expert": blocks.block_to_expert,
        "conditions": blocks.conditions,
        "gate_up_proj_weight": bf16(w.gate_up),
        "down_proj_weight": bf16(w.down),
    }
    if plan.mlp.gate_up_bias:
        inputs["gate_and_up_proj_bias"] = bf16(w.gate_up_bias)
    if plan.mlp.down_bias:
        inputs["down_proj_bias"] = bf16(w.down_bias)
    inputs.update(fused_shared_inputs(plan, w, x, with_shared))
    return cte_harness.run(kernels.kernel("cte"), plan, inputs)["out"][:tokens]


def run_shared(kernels: Kernels, w: LayerWeights, x: np.ndarray) -> np.ndarray:
    """The shared experts' kernel: output [T, H], with Qwen2-MoE's gate sigmoid(x @ w_gate) as its affinities
    (the caller computes the gate, as the kernel's interface says: moegen/verify/shared.py). The kernel takes
    at most plan.token_bound tokens a call, so a prefill calls it once per tile of that many tokens."""
    plan = kernels.plan("shared")
    tokens = x.shape[0]
    gate = shared_gate_values(w, x)
    tiles = []
    for start in range(0, tokens, plan.token_bound):
        rows = slice(start, min(tokens, start + plan.token_bound))
        inputs = {
            "hidden_input": bf16(x[rows]),
            "expert_gate_up_weights": bf16(w.shared_gate_up),
            "expert_down_weights": bf16(w.shared_down),
            "expert_affinities": bf16(gate[rows]),
            "expert_index": np.zeros((rows.stop - rows.start, 1), dtype=np.int32),
            "rank_id": np.zeros((1, 1), dtype=np.int32),
        }
        args = {name: inputs[name] for name in tkg_harness.argument_names(plan)}
        tiles.append(tkg_harness.run(kernels.kernel("shared"), plan, args)["output"])
    return np.concatenate(tiles)


def has_separate_shared(kernels: Kernels) -> bool:
    return any(p.family == "shared" for p in kernels.generated.plans)


def run_layer(
    kernels: Kernels, w: LayerWeights, x: np.ndarray, expert_kernel: str, with_shared: bool = True
) -> tuple[np.ndarray, Routing]:
    """router kernel -> `expert_kernel` ('tkg' or 'cte') on its routing, the shared experts fused into it or
    the `shared` kernel's output added in fp32: the layer output [T, H] and the router kernel's outputs.
    Without `with_shared`, the layer without its shared term (zero fused weights, or no shared kernel)."""
    routing = run_router(kernels, w, x)
    run = {"tkg": run_tkg, "cte": run_cte}[expert_kernel]
    out = run(kernels, w, x, routing, with_shared)
    if with_shared and has_separate_shared(kernels):
        out = out + run_shared(kernels, w, x)
    return out, routing
