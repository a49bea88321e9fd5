"""The MX parts of the cte verify harness (moegen/verify/cte.py): seeded MX weights in the kernel layouts
(the tkg MX layouts, moegen/convert/mx_layout.py), their exact fp32 dequantization for the reference,
and the input-dependent tolerance (the rule of moegen/verify/tkg.py's data_tolerance, per token)."""

from __future__ import annotations

import numpy as np

from moegen.compare import TOLERANCES, Tolerance
from moegen.convert import mx_layout
from moegen.plan.cte import CtePlan
from moegen.reference.mlp import _mx_round, activation
from moegen.reference.quant import round_to
from moegen.verify.tkg import MXFP8_STEP_SHIFT, mx_expert_weights


def mx_weights(plan: CtePlan, rng: np.random.Generator, used) -> dict[str, np.ndarray]:
    """MX weights of the experts in `used` in the kernel layouts (moegen/verify/tkg.py mx_expert_weights),
    under the cte argument names."""
    gate_up, gate_up_scale, down, down_scale = mx_expert_weights(
        plan.mx, plan.experts, plan.hidden, plan.intermediate, rng, used
    )
    return {
        "gate_up_proj_weight": gate_up,
        "down_proj_weight": down,
        "gate_up_proj_scale": gate_up_scale,
        "down_proj_scale": down_scale,
    }


class DequantizedExperts:
    """[E, ...] fp32 view of kernel-layout MX weights, one expert dequantized (exactly) when indexed:
    the reference reads expert by expert, so real-model layers never hold every expert in fp32."""

    def __init__(self, plan: CtePlan, words: np.ndarray, scales: np.ndarray, part: str):
        self.plan, self.words, self.scales, self.part = plan, words, scales, part
        h, i = plan.hidden, plan.intermediate
        self.shape = (plan.experts, h, 2, i) if part == "gate_up" else (plan.experts, i, h)

    def __getitem__(self, e: int) -> np.ndarray:
        e = int(e)
        words, scales, element = self.words[e : e + 1], self.scales[e : e + 1], self.plan.mx.element
        if self.part == "gate_up":
            return mx_layout.dequantize_gate_up(words, scales, self.plan.hidden, element)[0]
        return mx_layout.dequantize_down(words, scales, self.plan.intermediate, element)[0]


def logical_inputs(plan: CtePlan, inputs: dict) -> dict:
    """The arguments as the reference reads them: weights dequantized exactly to fp32 [E, H, 2, I] and
    [E, I, H] (lazily, per expert), gate/up bias back to [E, 2, I], the scale arguments dropped."""
    out = dict(inputs)
    out["gate_up_proj_weight"] = DequantizedExperts(
        plan, inputs["gate_up_proj_weight"], inputs["gate_up_proj_scale"], "gate_up"
    )
    out["down_proj_weight"] = DequantizedExperts(plan, inputs["down_proj_weight"], inputs["down_proj_scale"], "down")
    del out["gate_up_proj_scale"], out["down_proj_scale"]
    if "gate_and_up_proj_bias" in inputs:
        out["gate_and_up_proj_bias"] = mx_layout.gate_up_bias_from_kernel(
            inputs["gate_and_up_proj_bias"], plan.intermediate
        )
    return out


def row_allowance(plan: CtePlan, inputs: dict) -> np.ndarray:
    """Per row of hidden_states [rows] the MX allowance: (the token's blocks, at most K) x one MXFP8
    element step of the token's largest |h| over its experts x max |W_down| of those experts x max(1,
    max affinity). Why (as for tkg MX): a(g) is the engine's and may differ from the reference's in the
    last fp32 bits; an h that then rounds to the other bf16 neighbour and sits on an fp8 rounding
    boundary moves one quantized element of h by one step."""
    args = logical_inputs(plan, inputs)
    m = plan.mlp
    hidden = np.asarray(inputs["hidden_states"], dtype=np.float32)
    rows = hidden.shape[0]
    slots = np.asarray(inputs["token_position_to_id"]).reshape(-1, plan.block)
    experts = np.asarray(inputs["block_to_expert"]).reshape(-1)
    affinities = np.asarray(inputs["expert_affinities_masked"], dtype=np.float32).reshape(rows, plan.experts)
    amax = np.zeros(rows)
    items = np.zeros(rows)
    w_down = np.zeros(rows)
    bias = args.get("gate_and_up_proj_bias")
    for e in np.unique(experts):
        ids = np.unique(slots[experts == e])
        ids = ids[ids >= 0]
        if ids.size == 0:
            continue
        x = hidden[ids]
        if m.affinity_scale == "pre":
            x = round_to(x * affinities[ids, e][:, None], plan.dtype)
        gate_up = np.asarray(args["gate_up_proj_weight"][e], dtype=np.float32)
        gu = (_mx_round(x, plan.mx.activation_element) @ gate_up.reshape(plan.hidden, -1)).reshape(
            -1, 2, plan.intermediate
        )
        if bias is not None:
            gu = gu + np.asarray(bias[e], dtype=np.float32)
        g = np.clip(gu[:, 0], _limit(m.gate_lower, -np.inf), _limit(m.gate_upper, np.inf))
        u = np.clip(gu[:, 1] + m.up_constant, _limit(m.up_lower, -np.inf), _limit(m.up_upper, np.inf))
        h = round_to(activation(g, m.activation, m.alpha) * u, plan.dtype)
        amax[ids] = np.maximum(amax[ids], np.max(np.abs(h), axis=1))
        items[ids] += 1
        w_down[ids] = np.maximum(w_down[ids], float(np.max(np.abs(args["down_proj_weight"][e]))))
    _, exp = np.frexp(np.where(amax > 0, amax, 1.0))
    step = np.where(amax > 0, np.exp2(exp - 1 - MXFP8_STEP_SHIFT), 0.0)
    scale = float(np.max(np.abs(affinities))) if m.affinity_scale != "none" else 1.0
    return step * items * w_down * max(scale, 1.0)


def data_tolerance(plan: CtePlan, name: str, inputs: dict) -> Tolerance | None:
    """out and down_activations: the output dtype's tolerance plus the row's MX allowance; the gate/up
    checkpoint: None (x is quantized identically, so g and u differ only by the fp32 summation order)."""
    if name == "gate_up_activations_T":
        return None
    allowance = row_allowance(plan, inputs)
    base = TOLERANCES[max(plan.dtype, plan.out_dtype, key=("fp32", "fp16", "bf16").index)]
    if name == "out":
        return Tolerance(base.rtol, base.atol + allowance[:, None])
    slots = np.asarray(inputs["token_position_to_id"]).reshape(-1, plan.block)
    per_slot = np.where(slots >= 0, allowance[np.clip(slots, 0, None)], 0.0)
    return Tolerance(base.rtol, base.atol + per_slot[:, :, None])


def _limit(value: float | None, default: float) -> float:
    return default if value is None else value
