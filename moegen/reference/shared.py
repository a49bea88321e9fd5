"""The shared experts of an MoE layer (docs/shared_experts.md), in NumPy.

DeepSeek-V3 (n_shared_experts, one MLP of width n_shared_experts * moe_intermediate_size), Llama-4
(shared_expert, intermediate_size) and Qwen2-MoE (shared_expert with shared_expert_gate) add to the
routed output, for every token t:

    shared[t] = sum_s g[t, s] * MLP_s(x[t])

with MLP_s the expert MLP of moegen.reference.mlp on shared expert s's weights and g = 1, or
g[t, s] = sigmoid(x[t] @ w_gate_s) (Qwen2-MoE, S = 1) passed as gate values.
"""

from __future__ import annotations

import numpy as np

from moegen.reference.mlp import ExpertMLP, Precision, _sigmoid, expert_mlp
from moegen.reference.quant import name_of_array, round_to


def shared_gate(hidden_input: np.ndarray, gate_weight: np.ndarray) -> np.ndarray:
    """Qwen2-MoE's gate values sigmoid(x @ w) [T, S] from x [T, H] and w [H, S], fp32."""
    logits = np.asarray(hidden_input, dtype=np.float64) @ np.asarray(gate_weight, dtype=np.float64)
    return _sigmoid(logits).astype(np.float32)


def shared_experts(
    hidden_input: np.ndarray,
    shared_gate_up_weights: np.ndarray,
    shared_down_weights: np.ndarray,
    *,
    gate_values: np.ndarray | None = None,
    mlp: ExpertMLP | None = None,
    gate_up_bias: np.ndarray | None = None,
    down_bias: np.ndarray | None = None,
    output_dtype: str | None = None,
    precision: Precision | str | None = None,
) -> np.ndarray:
    """The shared experts' output [T, H] (rounded to output_dtype, returned as float32).

    hidden_input [T, H]; shared_gate_up_weights [S, H, 2, I_S] (gated) or [S, H, I_S] (not gated, mlp.gated
    False: up -> act -> down, Nemotron-H); shared_down_weights [S, I_S, H]; gate_values [T, S] or None
    (weight 1); mlp: the MLP's shape (default: gated SiLU); biases [S, 2, I_S] (or [S, I_S]) and [S, H].
    The sum over s is fp32.
    """
    x = np.asarray(hidden_input, dtype=np.float32)
    count = shared_gate_up_weights.shape[0]
    if gate_values is not None and np.asarray(gate_values).shape != (x.shape[0], count):
        raise ValueError(f"gate_values: expected {(x.shape[0], count)}, got {np.asarray(gate_values).shape}")
    acc = np.zeros_like(x)
    for s in range(count):
        y = expert_mlp(
            x,
            shared_gate_up_weights[s],
            shared_down_weights[s],
            mlp=mlp or ExpertMLP(),
            gate_up_bias=None if gate_up_bias is None else gate_up_bias[s],
            down_bias=None if down_bias is None else down_bias[s],
            precision=precision,
        )
        if gate_values is not None:
            y = y * np.asarray(gate_values, dtype=np.float32)[:, s : s + 1]
        acc = acc + y
    return round_to(acc, output_dtype or name_of_array(hidden_input))
