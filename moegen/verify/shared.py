"""Verify harness of the shared family (see moegen/verify/__init__.py for the interface).

The kernel is the tkg all-expert kernel over the S shared experts, so its arguments are tkg's:
expert_gate_up_weights [S, H, 2, I_S] (gated) or [S, H, I_S]
(not gated: the up projection only), expert_down_weights [S, I_S, H], expert_affinities [T, S]
(the gate values when the spec has 'sigmoid_gate', computed here from a random w_gate as
Qwen2-MoE does; otherwise not read) and expert_index [T, S] (not read). The expected output comes
from moegen.reference.shared, which knows nothing of the tkg kernel.
"""

from __future__ import annotations

import numpy as np

from moegen.plan.shared import SharedPlan
from moegen.reference.mlp import Precision
from moegen.reference.quant import cast, round_to
from moegen.reference.shared import shared_experts, shared_gate
from moegen.verify import tkg
from moegen.verify.expert_mlp import reference_mlp
from moegen.verify.work import moe_layer_macs


def make_inputs(plan: SharedPlan, tokens: int, rng: np.random.Generator) -> dict:
    inputs = tkg.make_inputs(plan, tokens, rng, rank=0)
    if plan.gate:
        w_gate = rng.standard_normal((plan.hidden, plan.shared_experts)).astype(np.float32) / np.sqrt(plan.hidden)
        gate = shared_gate(np.asarray(inputs["hidden_input"], dtype=np.float32), w_gate)
        inputs["expert_affinities"] = cast(gate, plan.in_dtype)
    return inputs


def expected(plan: SharedPlan, inputs: dict) -> dict:
    m = plan.mlp
    mlp = reference_mlp(m)
    out = shared_experts(
        inputs["hidden_input"],
        inputs["expert_gate_up_weights"],
        inputs["expert_down_weights"],
        gate_values=inputs["expert_affinities"] if plan.gate else None,
        mlp=mlp,
        gate_up_bias=inputs.get("expert_gate_up_bias"),
        down_bias=inputs.get("expert_down_bias"),
        output_dtype=plan.out_dtype,
        precision=Precision(matmul_in=plan.in_dtype),
    )
    return {"output": round_to(out, plan.out_dtype)}


run = tkg.run
tolerance = tkg.tolerance
# T x S x (projections + down) x H x I_S: the plan's experts and top_k are both S. The HBM minimum is the
# model's default (every byte the kernel touches, once): every token runs every shared expert.
algorithmic_macs = moe_layer_macs
