"""`moe_tkg` with AWS's signature (nkilib.core.moe_tkg.moe_tkg), backed by moegen's tkg family.

The flags map to one tkg variant (docs/nkilib.md); the generated kernel runs in the simulator and
the output [T, H] is returned.
"""

from __future__ import annotations

import numpy as np

from moegen.nkilib.enums import ActFnType, ExpertAffinityScaleMode
from moegen.nkilib.expert import clamp_stage, expert_pipeline, weight_quant
from moegen.nkilib.router import spec_dtype
from moegen.nkilib.variant import UnsupportedCall, spec_text, variant
from moegen.sim import simulate
from moegen.verify.tkg import argument_names

SCALING = (ExpertAffinityScaleMode.NO_SCALE, ExpertAffinityScaleMode.POST_SCALE, ExpertAffinityScaleMode.PRE_SCALE)


def _output_dtype(output_dtype, input_dtype: str) -> str:
    if output_dtype is None:
        return input_dtype
    name = getattr(output_dtype, "name", None) or np.dtype(output_dtype).name
    names = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
    if name not in names:
        raise UnsupportedCall(f"output_dtype={output_dtype}: bf16, fp16 or fp32")
    return names[name]


def _weight_quant(weights: np.ndarray, gate_up_scale, down_scale, intermediate: int) -> str:
    return weight_quant(
        weights,
        gate_up_scale,
        down_scale,
        intermediate,
        ("expert_gate_up_weights_scale", "expert_gate_up_weights_scale"),
    )


def tkg_variant(
    *,
    tokens_bound: int,
    hidden: int,
    intermediate: int,
    experts: int,
    local_experts: int,
    top_k: int,
    in_dtype: str,
    out_dtype: str,
    weight_quant: str,
    input_quant: bool,
    is_all_expert: bool,
    gate_up_bias: bool,
    down_bias: bool,
    eager: bool,
    mask_unselected_experts: bool,
    scaling_mode,
    activation_fn,
    clamp: str | None,
) -> tuple[str, str]:
    """(layer name, spec text) of the variant an AWS call maps to (docs/nkilib.md)."""
    scaling_mode = ExpertAffinityScaleMode(scaling_mode)
    scaled = scaling_mode != ExpertAffinityScaleMode.NO_SCALE
    pipeline = expert_pipeline(
        activation_fn=activation_fn,
        scaling_mode=scaling_mode,
        gate_up_bias=gate_up_bias,
        down_bias=down_bias,
        clamp=clamp,
        supported_scaling=SCALING,
    )
    if experts % local_experts:
        raise UnsupportedCall(
            f"expert_gate_up_weights: {local_experts} local experts do not divide the {experts} experts of "
            "expert_affinities [T, E]"
        )
    options = [f"mode={'all_experts' if is_all_expert else 'selective'}"]
    options += [f"tokens<={tokens_bound}"] if tokens_bound > 128 else []  # 128: the family's default
    if is_all_expert:
        if eager:
            raise UnsupportedCall("expert_affinities_eager: all-expert mode reads the [T, E] affinities (as AWS's)")
        options += [f"ep={experts // local_experts}"] if local_experts < experts else []
        # AWS reads mask_unselected_experts only with affinity scaling; without it the flag does nothing.
        options += ["mask_unselected"] if mask_unselected_experts and scaled else []
    else:
        if local_experts != experts:
            raise UnsupportedCall(
                f"expert_gate_up_weights: selective mode needs all {experts} experts' weights, got {local_experts}"
            )
        # AWS ignores mask_unselected_experts in selective mode, and eager affinities without scaling.
        options += ["eager"] if eager and scaled else []
    if out_dtype != in_dtype:
        options.append(f"out={out_dtype}")
    quant = " ".join(
        part
        for part in (f"weights={weight_quant}" if weight_quant else "", "activations=fp8_static" if input_quant else "")
        if part
    )
    dims = {"hidden": hidden, "intermediate": intermediate, "experts": experts, "top_k": top_k}
    return spec_text("tkg", dims, in_dtype, {"expert": pipeline}, options, quant=quant)


def moe_tkg(
    hidden_input,
    expert_gate_up_weights,
    expert_down_weights,
    expert_affinities,
    expert_index,
    is_all_expert,
    rank_id=None,
    expert_gate_up_bias=None,
    expert_down_bias=None,
    expert_gate_up_weights_scale=None,
    expert_down_weights_scale=None,
    hidden_input_scale=None,
    gate_up_input_scale=None,
    down_input_scale=None,
    mask_unselected_experts=False,
    expert_affinities_eager=None,
    expert_affinities_scaling_mode=ExpertAffinityScaleMode.NO_SCALE,
    activation_fn=ActFnType.SiLU,
    output_dtype=None,
    gate_clamp_upper_limit=None,
    gate_clamp_lower_limit=None,
    up_clamp_upper_limit=None,
    up_clamp_lower_limit=None,
    output_in_sbuf=False,
    is_all_expert_dynamic=False,
):
    """AWS's moe_tkg: hidden_input [T, H] in HBM, expert_gate_up_weights [E_L, H, 2, I],
    expert_down_weights [E_L, I, H], expert_affinities [T, E], expert_index [T, K] (int32 or uint32);
    returns the output [T, H] in output_dtype (default: hidden_input's dtype)."""
    for flag, value, reason in (
        ("output_in_sbuf", output_in_sbuf, "moegen.nkilib runs whole kernels: the output goes to HBM"),
        ("is_all_expert_dynamic", is_all_expert_dynamic, "moegen's all-expert kernels run every local expert"),
        ("hidden_input_scale", hidden_input_scale is not None, "moegen quantizes inputs per expert only"),
    ):
        if value:
            raise UnsupportedCall(f"{flag}: {reason}")
    hidden_input = np.asarray(hidden_input)
    if hidden_input.ndim != 2:
        raise UnsupportedCall(f"hidden_input: expected [T, H] in HBM, got shape {hidden_input.shape}")
    if np.ndim(expert_gate_up_weights) != 4:
        raise UnsupportedCall(
            f"expert_gate_up_weights: expected [E_L, H, 2, I], got shape {np.shape(expert_gate_up_weights)}"
        )
    local_experts, hidden, _, intermediate = np.shape(expert_gate_up_weights)
    if np.ndim(expert_affinities) != 2 or np.ndim(expert_index) != 2:
        raise UnsupportedCall(
            f"expert_affinities, expert_index: expected [T, E] and [T, K], got {np.shape(expert_affinities)} "
            f"and {np.shape(expert_index)}"
        )
    tokens, experts = np.shape(expert_affinities)
    in_dtype = spec_dtype(hidden_input, "hidden_input")
    name, text = tkg_variant(
        tokens_bound=tokens,
        hidden=hidden,
        intermediate=intermediate,
        experts=experts,
        local_experts=local_experts,
        top_k=np.shape(expert_index)[1],
        in_dtype=in_dtype,
        out_dtype=_output_dtype(output_dtype, in_dtype),
        weight_quant=_weight_quant(
            np.asarray(expert_gate_up_weights), expert_gate_up_weights_scale, expert_down_weights_scale, intermediate
        ),
        input_quant=gate_up_input_scale is not None or down_input_scale is not None,
        is_all_expert=is_all_expert,
        gate_up_bias=expert_gate_up_bias is not None,
        down_bias=expert_down_bias is not None,
        eager=expert_affinities_eager is not None,
        mask_unselected_experts=mask_unselected_experts,
        scaling_mode=expert_affinities_scaling_mode,
        activation_fn=activation_fn,
        clamp=clamp_stage(gate_clamp_upper_limit, gate_clamp_lower_limit, up_clamp_upper_limit, up_clamp_lower_limit),
    )
    built = variant(name, text)

    given = {
        "hidden_input": hidden_input,
        "expert_gate_up_weights": expert_gate_up_weights,
        "expert_down_weights": expert_down_weights,
        "expert_affinities": expert_affinities,
        "expert_index": expert_index,
        "rank_id": rank_id,
        "expert_gate_up_bias": expert_gate_up_bias,
        "expert_down_bias": expert_down_bias,
        "expert_gate_up_weights_scale": expert_gate_up_weights_scale,
        "expert_down_weights_scale": expert_down_weights_scale,
        "gate_up_input_scale": gate_up_input_scale,
        "down_input_scale": down_input_scale,
        "expert_affinities_eager": expert_affinities_eager,
    }
    names = argument_names(built.plan)
    missing = [name for name in names if given[name] is None]
    if missing:
        raise UnsupportedCall(f"{missing[0]}: required by this call's flags (see docs/nkilib.md), got None")
    launch = built.kernel[2] if built.plan.lnc == 2 else built.kernel
    return np.asarray(simulate(launch, target=built.plan.target)(*(np.asarray(given[name]) for name in names)))
