"""The fused shared experts' part of a routed kernel's verify harness (moegen/plan/shared_fusion.py).

Inputs: this rank's slice of the S shared experts' weights, shared_gate_up_weights [S, H, (2,) I_F] and
shared_down_weights [S, I_F, H] (random, as the routed experts'), and with `sigmoid_gate` the gate values
sigmoid(x @ w_gate) [T, S] from a random w_gate. The expected contribution is moegen.reference.shared in
fp32: the routed kernel adds it to the routed sum before its one rounding.
"""

from __future__ import annotations

import numpy as np

from moegen.plan.shared_fusion import FusedSharedPlan
from moegen.reference.mlp import Precision
from moegen.reference.quant import cast, name_of_array
from moegen.reference.shared import shared_experts, shared_gate
from moegen.verify.expert_mlp import reference_mlp


def make_inputs(shared: FusedSharedPlan, hidden_input: np.ndarray, rng: np.random.Generator) -> dict:
    """The shared arguments for the tokens hidden_input [T, H]."""
    s, h, i = shared.experts, hidden_input.shape[1], shared.intermediate
    parts = (2,) if shared.mlp.gated else ()
    gate_up = rng.standard_normal((s, h, *parts, i), dtype=np.float32) / np.float32(np.sqrt(h))
    down = rng.standard_normal((s, i, h), dtype=np.float32) / np.float32(np.sqrt(i))
    inputs = {
        "shared_gate_up_weights": cast(gate_up, shared.weight_dtype),
        "shared_down_weights": cast(down, shared.weight_dtype),
    }
    if shared.gate:
        w_gate = rng.standard_normal((h, s)).astype(np.float32) / np.float32(np.sqrt(h))
        gate = shared_gate(np.asarray(hidden_input, dtype=np.float32), w_gate)
        inputs["shared_gate_values"] = cast(gate, name_of_array(hidden_input))
    return inputs


def expected(
    shared: FusedSharedPlan, inputs: dict, matmul_in: str, *, hidden: str = "hidden_input", experts: slice = slice(None)
) -> np.ndarray:
    """The output [T, H] of the shared experts `experts` (default all, summed) in fp32, not rounded; x is
    inputs[hidden][:T] (a cte kernel's hidden_states has a zero padding row T)."""
    m = shared.mlp
    mlp = reference_mlp(m)
    gate = inputs.get("shared_gate_values")
    x = inputs[hidden][: gate.shape[0]] if gate is not None else inputs[hidden]
    return shared_experts(
        x,
        inputs["shared_gate_up_weights"][experts],
        inputs["shared_down_weights"][experts],
        gate_values=None if gate is None else gate[:, experts],
        mlp=mlp,
        output_dtype="fp32",
        precision=Precision(matmul_in=matmul_in),
    )
