"""`moe_cte` with AWS's signature (nkilib.core.moe.moe_cte.moe_cte), backed by moegen's cte family.

The spec, skip mode and flags map to one cte variant (docs/nkilib.md); `moe_cte(...)` runs it on one
core, `moe_cte[2](...)` on LNC=2, in the simulator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moegen.nkilib.enums import ActFnType, BlockShardStrategy, ExpertAffinityScaleMode, MoECTEImplementation
from moegen.nkilib.expert import clamp_stage, expert_pipeline, weight_quant
from moegen.nkilib.router import spec_dtype
from moegen.nkilib.variant import Launchable, UnsupportedCall, spec_text, variant
from moegen.sim import simulate

SCALING = (ExpertAffinityScaleMode.NO_SCALE, ExpertAffinityScaleMode.POST_SCALE, ExpertAffinityScaleMode.PRE_SCALE)
# implementation -> the cte options it maps to
IMPLEMENTATIONS = {
    MoECTEImplementation.shard_on_block: ["shard=block"],
    MoECTEImplementation.shard_on_i: ["shard=intermediate"],
    MoECTEImplementation.shard_on_i_hybrid: ["shard=intermediate", "loop=hybrid"],
    MoECTEImplementation.shard_on_i_dropping: ["shard=intermediate", "dropping"],
}
DISTRIBUTIONS = {BlockShardStrategy.PING_PONG: "interleaved", BlockShardStrategy.HI_LO: "halves"}


@dataclass
class ShardOnBlockConfig:
    n_block_per_iter: int = 1  # how AWS's kernel pipelines blocks: moegen's plan decides (no effect here)
    block_sharding_strategy: BlockShardStrategy = BlockShardStrategy.PING_PONG
    n_static_blocks: int = -1  # MX implementations only
    n_dynamic_blocks: int = 55  # MX implementations only


@dataclass
class ShardOnIConfig:
    checkpoint_activation: bool = False
    expert_affinity_multiply_on_I: bool = False
    num_static_block: int | None = None  # moegen sizes its static loop from T and B (no effect on results)


@dataclass
class MoECTESpec:
    implementation: MoECTEImplementation
    shard_on_block: ShardOnBlockConfig | None = None
    shard_on_I: ShardOnIConfig | None = None

    def __post_init__(self):
        if self.shard_on_block is None:
            self.shard_on_block = ShardOnBlockConfig()
        if self.shard_on_I is None:
            self.shard_on_I = ShardOnIConfig()


@dataclass
class QuantizationConfig:
    gate_up_proj_scale: np.ndarray | None = None
    down_proj_scale: np.ndarray | None = None


@dataclass(frozen=True)
class SkipMode:
    skip_token: bool = False  # token ids of empty slots are -1 (skipped), no padding row
    skip_weight: bool = False  # AWS skips weight DMAs of repeated experts: moegen's plan decides


NO_SKIP = SkipMode(False, False)


def _weight_quant(weights: np.ndarray, config: QuantizationConfig, intermediate: int) -> str:
    return weight_quant(
        weights,
        config.gate_up_proj_scale,
        config.down_proj_scale,
        intermediate,
        ("quantization_config", "quantization_config.gate_up_proj_scale"),
    )


def cte_variant(
    *,
    hidden: int,
    intermediate: int,
    experts: int,
    dtype: str,
    weight_quant: str,
    block_size: int,
    spec: MoECTESpec,
    lnc: int,
    skip_token: bool,
    accumulate: bool,
    scaling_mode,
    activation_fn,
    gate_up_bias: bool,
    down_bias: bool,
    clamp: str | None,
) -> tuple[str, str]:
    """(layer name, spec text) of the variant an AWS call maps to (docs/nkilib.md)."""
    implementation = MoECTEImplementation(spec.implementation)
    if implementation not in IMPLEMENTATIONS:
        raise UnsupportedCall(
            f"spec.implementation={implementation.name}: moegen's cte family generates "
            + ", ".join(impl.name for impl in IMPLEMENTATIONS)
            + " (the MX implementations are generated from a spec on trn3, docs/moe_mx.md, but this drop-in "
            "entry does not map AWS's MX call form: its weights arrive as x4 dtypes and its hidden-state layout differs)"
        )
    if spec.shard_on_I.expert_affinity_multiply_on_I:
        raise UnsupportedCall(
            "spec.shard_on_I.expert_affinity_multiply_on_I=True: moegen scales by the affinity on H "
            "(POST_SCALE) or on the token row (PRE_SCALE)"
        )
    pipeline = expert_pipeline(
        activation_fn=activation_fn,
        scaling_mode=scaling_mode,
        gate_up_bias=gate_up_bias,
        down_bias=down_bias,
        clamp=clamp,
        supported_scaling=SCALING,
    )
    options = [f"block={block_size}", *IMPLEMENTATIONS[implementation]]
    options += [f"lnc={lnc}"] if lnc != 1 else []
    if implementation == MoECTEImplementation.shard_on_block:
        strategy = BlockShardStrategy(spec.shard_on_block.block_sharding_strategy)
        options += [f"distribute={DISTRIBUTIONS[strategy]}"] if lnc == 2 and strategy != strategy.PING_PONG else []
        options += ["output=per_core"] if accumulate else []  # AWS returns [rows, 2, H] per-core partials
    # AWS's dropping kernel always returns its checkpoints; shard_on_block has none (spec.shard_on_I unused).
    if implementation == MoECTEImplementation.shard_on_i_dropping or (
        spec.shard_on_I.checkpoint_activation and implementation != MoECTEImplementation.shard_on_block
    ):
        options.append("checkpoint")
    options.append("update=accumulate" if accumulate else "update=overwrite")
    options += ["padding=skip"] if skip_token else []
    # AWS's signature carries no K: top_k=1 only sizes the hybrid loop's static part (ceil(T/B) blocks,
    # the rest run in the runtime loop); update= is set explicitly from is_tensor_update_accumulating.
    dims = {"hidden": hidden, "intermediate": intermediate, "experts": experts, "top_k": 1}
    quant = f"weights={weight_quant}" if weight_quant else ""
    return spec_text("cte", dims, dtype, {"expert": pipeline}, options, quant=quant)


def _moe_cte(
    hidden_states,
    expert_affinities_masked,
    gate_up_proj_weight,
    down_proj_weight,
    token_position_to_id,
    block_to_expert,
    block_size,
    spec,
    conditions=None,
    gate_and_up_proj_bias=None,
    down_proj_bias=None,
    quantization_config=None,
    gate_up_activations_T=None,
    down_activations=None,
    activation_function=ActFnType.SiLU,
    skip_dma=NO_SKIP,
    compute_dtype=None,
    is_tensor_update_accumulating=True,
    expert_affinities_scaling_mode=ExpertAffinityScaleMode.POST_SCALE,
    gate_clamp_upper_limit=None,
    gate_clamp_lower_limit=None,
    up_clamp_upper_limit=None,
    up_clamp_lower_limit=None,
    *,
    lnc: int = 1,
):
    """AWS's moe_cte: hidden_states [T+1, H] ([T, H] with skip_dma.skip_token), expert_affinities_masked
    [rows*E, 1], gate_up_proj_weight [E, H, 2, I_TP], down_proj_weight [E, I_TP, H], token_position_to_id
    [N*B], block_to_expert [N, 1] or [N]. Returns out [rows, H] ([rows, 2, H] per-core partials for
    shard_on_block with accumulation), and with checkpointing (out, gate_up_activations_T,
    down_activations), also written into the given buffers."""
    hidden_states = np.asarray(hidden_states)
    dtype = spec_dtype(hidden_states, "hidden_states")
    if compute_dtype is not None and spec_dtype(np.zeros(1, dtype=compute_dtype), "compute_dtype") != dtype:
        raise UnsupportedCall(
            f"compute_dtype={compute_dtype}: moegen's cte computes in the input dtype ({dtype}); "
            "pass hidden_states in the compute dtype"
        )
    if np.ndim(gate_up_proj_weight) != 4:
        raise UnsupportedCall(f"gate_up_proj_weight: expected [E, H, 2, I_TP], got {np.shape(gate_up_proj_weight)}")
    experts, hidden, _, intermediate = np.shape(gate_up_proj_weight)
    config = quantization_config or QuantizationConfig()
    name, text = cte_variant(
        hidden=hidden,
        intermediate=intermediate,
        experts=experts,
        dtype=dtype,
        weight_quant=_weight_quant(np.asarray(gate_up_proj_weight), config, intermediate),
        block_size=int(block_size),
        spec=spec,
        lnc=lnc,
        skip_token=skip_dma.skip_token,
        accumulate=is_tensor_update_accumulating,
        scaling_mode=expert_affinities_scaling_mode,
        activation_fn=activation_function,
        gate_up_bias=gate_and_up_proj_bias is not None,
        down_bias=down_proj_bias is not None,
        clamp=clamp_stage(gate_clamp_upper_limit, gate_clamp_lower_limit, up_clamp_upper_limit, up_clamp_lower_limit),
    )
    built = variant(name, text)
    given = {
        "hidden_states": hidden_states,
        "expert_affinities_masked": expert_affinities_masked,
        "gate_up_proj_weight": gate_up_proj_weight,
        "down_proj_weight": down_proj_weight,
        "token_position_to_id": token_position_to_id,
        "block_to_expert": block_to_expert,
        "conditions": conditions,
        "gate_and_up_proj_bias": gate_and_up_proj_bias,
        "down_proj_bias": down_proj_bias,
        "gate_up_proj_scale": config.gate_up_proj_scale,
        "down_proj_scale": config.down_proj_scale,
    }
    missing = [arg for arg in built.plan.arguments if given[arg] is None]
    if missing:
        raise UnsupportedCall(f"{missing[0]}: required by {MoECTEImplementation(spec.implementation).name}, got None")
    launch = built.kernel[2] if built.plan.lnc == 2 else built.kernel
    result = simulate(launch, trace=False)(*(np.asarray(given[arg]) for arg in built.plan.arguments))
    if not built.plan.checkpoint:
        return np.asarray(result)
    out, gate_up, down = (np.asarray(value) for value in result)
    for buffer, value in ((gate_up_activations_T, gate_up), (down_activations, down)):
        if buffer is not None:
            np.copyto(buffer, value, casting="unsafe")
    return out, gate_up, down


moe_cte = Launchable(_moe_cte)
