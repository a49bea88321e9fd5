"""Verify harness of the cte family (see moegen/verify/__init__.py for the interface).

Inputs come from a random top-K routing turned into block metadata by `moegen.blocking` (dropless,
or the dropping layout), padded with T or -1 as the plan reads them. Values are snapped to the
kernel's dtypes (fp8 weights through `moegen.reference.quant`).
"""

from __future__ import annotations

import numpy as np

from moegen import blocking
from moegen.convert import mx_layout
from moegen.plan.cte import CtePlan
from moegen.reference import cte as cte_reference
from moegen.reference import quant
from moegen.reference.mlp import Precision
from moegen.verify import cte_mx, shared_fused
from moegen.verify.work import moe_layer_macs, moe_minimum_hbm_bytes

OUTPUTS = ("out", "gate_up_activations_T", "down_activations")
WEIGHT_BYTES_RESIDENT = 1 << 30  # random weights for every expert up to this size (the machine is shared)


def routing(
    tokens: int, experts: int, top_k: int, rng: np.random.Generator, experts_used: int | None = None
) -> np.ndarray:
    """expert_index [T, K] int32: K distinct experts per token, drawn from the first `experts_used`."""
    pool = experts if experts_used is None else experts_used
    if pool < top_k:
        raise ValueError(f"cannot pick {top_k} distinct experts out of {pool}")
    keys = rng.random((tokens, pool))
    return np.argsort(keys, axis=1)[:, :top_k].astype(np.int32)


def make_inputs(
    plan: CtePlan,
    tokens: int,
    rng: np.random.Generator,
    *,
    expert_index: np.ndarray | None = None,
    num_blocks: int | None = None,
    aws_forms: bool = False,
    experts_used: int | None = None,
) -> dict[str, np.ndarray]:
    """Kernel arguments by name (plan.arguments), plus `expert_index`, `expert_affinities` [T, K] and
    `dropped` [T, K] for the per-token reference. `num_blocks` overrides the dropless block budget.
    experts_used: the random routing draws from this many experts instead of `routing_pool(plan)` (all E:
    the real routing of a layer whose weights exceed WEIGHT_BYTES_RESIDENT, at the cost of their memory).
    aws_forms: the forms AWS's moe_cte tests pass (block_to_expert [N], fp8 row scales [E, 1, 2I] and
    [E, 1, H]), same values."""
    h, i, e, k = plan.hidden, plan.intermediate, plan.experts, plan.top_k
    dt = quant.np_dtype(plan.dtype)
    if expert_index is None:
        # EP: global ids over all E experts (the rank stores only its E_L experts' weights)
        pool = plan.global_experts if plan.ep > 1 else routing_pool(plan)
        if experts_used is not None:
            if not plan.top_k <= experts_used <= plan.global_experts:
                raise ValueError(f"experts_used={experts_used}: must be in [top_k={plan.top_k}, {plan.global_experts}]")
            pool = experts_used
        expert_index = routing(tokens, plan.global_experts, k, rng, experts_used=pool)
    tokens = expert_index.shape[0]
    raw = rng.random((tokens, k)) + 0.25
    affinities = quant.cast(raw / raw.sum(axis=1, keepdims=True), plan.dtype)
    if plan.ep > 1:
        blocks = blocking.build_blocks_local(
            expert_index,
            affinities,
            plan.global_experts,
            plan.block,
            rank=ep_rank(plan),
            local_experts=e,
            pad_with=-1 if plan.pad_skip else "T",
            num_blocks=num_blocks,
        )
    else:
        blocks = blocking.build_blocks(
            expert_index,
            affinities,
            e,
            plan.block,
            pad_with=-1 if plan.pad_skip else "T",
            dropless=not plan.dropping,
            num_blocks=None if plan.dropping else num_blocks,
        )
    rows = tokens if plan.pad_skip else tokens + 1  # padding=skip: AWS's shapes, no zero row T
    hidden = np.zeros((rows, h), dtype=dt)
    hidden[:tokens] = quant.cast(rng.standard_normal((tokens, h)), plan.dtype)
    inputs: dict[str, np.ndarray] = {
        "hidden_states": hidden,
        "expert_affinities_masked": blocks.expert_affinities_masked[: rows * e],
        "token_position_to_id": blocks.token_position_to_id,
        "block_to_expert": blocks.block_to_expert,
        "conditions": blocks.conditions,
        "expert_index": expert_index,
        "expert_affinities": affinities,
        "dropped": blocks.dropped,
    }
    inputs.update(_weights(plan, rng, np.unique(local_ids(plan, expert_index))))
    if plan.mlp.gate_up_bias:
        inputs["gate_and_up_proj_bias"] = quant.cast(0.5 * rng.standard_normal((e, *_parts(plan), i)), plan.dtype)
        if plan.mx:
            inputs["gate_and_up_proj_bias"] = mx_layout.gate_up_bias_to_kernel(inputs["gate_and_up_proj_bias"])
    if plan.mlp.down_bias:
        inputs["down_proj_bias"] = quant.cast(0.5 * rng.standard_normal((e, h)), plan.dtype)
    if plan.shared:
        inputs.update(shared_fused.make_inputs(plan.shared, hidden[:tokens], rng))
    if aws_forms:
        inputs["block_to_expert"] = inputs["block_to_expert"].reshape(-1)
        if plan.gate_scale == "row":
            inputs["gate_up_proj_scale"] = inputs["gate_up_proj_scale"].reshape(e, 1, plan.mlp.projections * i)
            inputs["down_proj_scale"] = inputs["down_proj_scale"].reshape(e, 1, h)
    return inputs


def ep_rank(plan: CtePlan) -> int:
    """The rank an EP kernel is verified as: the last one (its window starts at E - E_L, so global and
    local ids differ)."""
    return plan.ep - 1


def local_ids(plan: CtePlan, expert_index: np.ndarray) -> np.ndarray:
    """The local ids of this rank's experts in expert_index (all of them without EP)."""
    if plan.ep == 1:
        return np.asarray(expert_index).reshape(-1)
    first = ep_rank(plan) * plan.experts
    index = np.asarray(expert_index).reshape(-1)
    return index[(index >= first) & (index < first + plan.experts)] - first


def routing_pool(plan: CtePlan) -> int:
    """Experts the random routing draws from: all of them, unless their weights exceed
    WEIGHT_BYTES_RESIDENT; then 2K (at least 4), so that a 256-expert layer fits in memory."""
    if plan.experts * _expert_bytes(plan) <= WEIGHT_BYTES_RESIDENT:
        return plan.experts
    return min(plan.experts, max(2 * plan.top_k, 4))


def _expert_bytes(plan: CtePlan) -> int:
    if plan.mx:
        return (plan.mlp.projections + 1) * plan.hidden * plan.intermediate * plan.mx.word_bytes // 4
    return (plan.mlp.projections + 1) * plan.hidden * plan.intermediate * quant.np_dtype(plan.weight_dtype).itemsize


def _parts(plan: CtePlan) -> tuple[int, ...]:
    """The projection axis of the gate/up weights, scales and biases: (2,) gated, () not gated ([E, H, I])."""
    return (2,) if plan.mlp.gated else ()


def _weights(plan: CtePlan, rng: np.random.Generator, used: np.ndarray) -> dict[str, np.ndarray]:
    """Weights (and fp8 scales) of the experts in `used`; the others stay zero. np.zeros memory is
    only committed where written, so the full [E, ...] tensors cost memory only for used experts."""
    if plan.mx:
        return cte_mx.mx_weights(plan, rng, used)
    h, i, e = plan.hidden, plan.intermediate, plan.experts
    wdt = quant.np_dtype(plan.weight_dtype)
    arrays = {
        "gate_up_proj_weight": np.zeros((e, h, *_parts(plan), i), dtype=wdt),
        "down_proj_weight": np.zeros((e, i, h), dtype=wdt),
    }
    if plan.quantized:
        rows = plan.gate_scale == "row"
        arrays["gate_up_proj_scale"] = np.ones((e, *_parts(plan), i if rows else 1), dtype=np.float32)
        arrays["down_proj_scale"] = np.ones((e, h if rows else 1), dtype=np.float32)
    for expert in used:
        gate_up = rng.standard_normal((1, h, plan.mlp.projections, i), dtype=np.float32) / np.float32(np.sqrt(h))
        shape, scale_shape = (
            arrays["gate_up_proj_weight"].shape[1:],
            arrays.get("gate_up_proj_scale", gate_up).shape[1:],
        )
        down = rng.standard_normal((1, i, h), dtype=np.float32) / np.float32(np.sqrt(i))
        if plan.quantized:
            q, scale = quant.quantize_gate_up_fp8(gate_up, plan.gate_scale)
            arrays["gate_up_proj_weight"][expert] = q[0].reshape(shape)
            arrays["gate_up_proj_scale"][expert] = scale[0].reshape(scale_shape)
            q, scale = quant.quantize_down_fp8(down, plan.gate_scale)
            arrays["down_proj_weight"][expert], arrays["down_proj_scale"][expert] = q[0], scale[0]
        else:
            arrays["gate_up_proj_weight"][expert] = quant.cast(gate_up[0], plan.dtype).reshape(shape)
            arrays["down_proj_weight"][expert] = quant.cast(down[0], plan.dtype)
    return arrays


def kernel_arguments(plan: CtePlan, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    return [inputs[name] for name in plan.arguments]


def reference_precision(plan: CtePlan) -> Precision:
    """Where the kernel rounds: the pre-scaled x and h are stored in the input dtype; gate, up and
    a(g) stay fp32 in SBUF; y stays fp32 until each block's contribution is rounded to out_dtype."""
    return Precision(matmul_in=plan.dtype, h=plan.dtype)


def expected(plan: CtePlan, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The blockwise reference on the same metadata; with padding=row, row T of out is 0 (the kernel zeroes it)."""
    mlp = plan.mlp
    shift = mlp.up_constant
    if plan.mx:
        inputs = cte_mx.logical_inputs(plan, inputs)
    result = cte_reference.moe_cte(
        *(
            inputs[name]
            for name in (
                "hidden_states",
                "expert_affinities_masked",
                "gate_up_proj_weight",
                "down_proj_weight",
                "token_position_to_id",
                "block_to_expert",
            )
        ),
        plan.block,
        conditions=inputs["conditions"] if plan.hybrid else None,
        gate_and_up_proj_bias=inputs.get("gate_and_up_proj_bias"),
        down_proj_bias=inputs.get("down_proj_bias"),
        gate_up_proj_scale=inputs.get("gate_up_proj_scale"),
        down_proj_scale=inputs.get("down_proj_scale"),
        activation_function=mlp.activation,
        alpha=mlp.alpha,
        gated=mlp.gated,
        is_tensor_update_accumulating=plan.accumulate,
        affinity_scale=mlp.affinity_scale,
        gate_clamp_lower_limit=mlp.gate_lower,
        gate_clamp_upper_limit=mlp.gate_upper,
        up_clamp_lower_limit=None if mlp.up_lower is None else mlp.up_lower - shift,
        up_clamp_upper_limit=None if mlp.up_upper is None else mlp.up_upper - shift,
        up_plus_one=mlp.up_plus_one,
        output_dtype=plan.out_dtype,
        checkpoint=plan.checkpoint,
        precision=reference_precision(plan),
        mx_activations=plan.mx.activation_element if plan.mx else None,
    )
    outputs = dict(zip(OUTPUTS, result if plan.checkpoint else (result,)))
    outputs["out"] = np.array(outputs["out"], dtype=np.float32)
    if plan.shared:  # one more expert every token selected, each added (and rounded) after the routed blocks
        tokens = inputs["expert_index"].shape[0]
        for s in range(plan.shared.experts):
            y = shared_fused.expected(plan.shared, inputs, plan.dtype, hidden="hidden_states", experts=slice(s, s + 1))[
                :tokens
            ]
            outputs["out"][:tokens] = quant.round_to(
                outputs["out"][:tokens] + quant.round_to(y, plan.out_dtype), plan.out_dtype
            )
    if not plan.pad_skip:
        outputs["out"][-1] = 0.0  # the padding row T
    return outputs


PRECISION_ORDER = ("fp32", "fp16", "bf16")  # finer to coarser


def tolerance(plan: CtePlan, name: str) -> str:
    """The coarser of the input dtype (x and h are stored in it) and the output dtype."""
    return max(plan.dtype, plan.out_dtype, key=PRECISION_ORDER.index)


def run(kernel, plan: CtePlan, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from moegen import sim

    launch = kernel[2] if plan.lnc == 2 else kernel
    result = sim.simulate(launch, trace=False, target=plan.target)(
        *kernel_arguments(plan, inputs)
    )  # no trace: tiles freed per block
    outputs = dict(zip(OUTPUTS, result if isinstance(result, tuple) else (result,)))
    if plan.per_core_output:  # [rows, 2, H]: the caller adds the cores' partial sums
        outputs["out"] = np.asarray(outputs["out"], dtype=np.float32).sum(axis=1)
    return {
        name: mask_unspecified(plan, inputs, name, np.asarray(value, dtype=np.float32))
        for name, value in outputs.items()
    }


def mask_unspecified(plan: CtePlan, inputs: dict[str, np.ndarray], name: str, value: np.ndarray) -> np.ndarray:
    """Zero the checkpoint entries the kernel leaves unspecified (the reference holds 0 there):
    slots skipped by -1 padding, and blocks a hybrid kernel's runtime loop does not run."""
    if name == "out":
        return value
    value = value.copy()
    slots = np.asarray(inputs["token_position_to_id"]).reshape(-1, plan.block)
    skipped = slots < 0
    if plan.hybrid:
        ran = np.asarray(inputs["conditions"]).reshape(-1)[: slots.shape[0]] != 0
        skipped |= ~ran[:, None]
    if name == "gate_up_activations_T":
        value[np.broadcast_to(skipped[:, None, None, :], value.shape)] = 0.0
    else:
        value[skipped] = 0.0
    return value


def data_tolerance(plan: CtePlan, name: str, inputs: dict[str, np.ndarray]):
    """MX plans: the dtype tolerance plus the per-row MX allowance (moegen/verify/cte_mx.py); else None."""
    return cte_mx.data_tolerance(plan, name, inputs) if plan.mx else None


# `moegen profile`: the MoE layer's algorithmic MACs and HBM minimum (moegen/verify/work.py)
algorithmic_macs = moe_layer_macs
minimum_hbm_bytes = moe_minimum_hbm_bytes
