"""Token-generation MoE (SEMANTICS sections 2 and 4) with the seed moe_tkg argument names.

Two names differ from the seed, as the spec model spells them: `mode` ('selective' |
'all_experts') for is_all_expert, and `affinity_scale` ('none' | 'pre' | 'post') for
expert_affinities_scaling_mode. `activation_fn` is a string (see mlp.ACTIVATIONS).
"""

from __future__ import annotations

import numpy as np

from moegen.reference.mlp import ExpertMLP, Precision, expert_mlp
from moegen.reference.quant import down_scale_of_expert, gate_up_scale_of_expert, name_of_array, round_to

AFFINITY_SCALES = ("none", "pre", "post")


def _rank(rank_id) -> int | None:
    return None if rank_id is None else int(np.asarray(rank_id).reshape(-1)[0])


def _per_expert(arr, e):
    return None if arr is None else np.asarray(arr)[e]


def run_expert(
    x,
    e,
    gate_up,
    down,
    *,
    mlp,
    gate_up_bias,
    down_bias,
    gate_up_scale,
    down_scale,
    gate_up_input_scale,
    down_input_scale,
    precision,
    checkpoints=None,
    mx_activations=None,
):
    """expert_mlp for expert e of [E, ...] weight stacks (scales and biases sliced per expert)."""
    return expert_mlp(
        x,
        gate_up[e],
        down[e],
        mlp=mlp,
        gate_up_bias=_per_expert(gate_up_bias, e),
        down_bias=_per_expert(down_bias, e),
        gate_up_scale=None if gate_up_scale is None else gate_up_scale_of_expert(gate_up_scale, e),
        down_scale=None if down_scale is None else down_scale_of_expert(down_scale, e),
        gate_up_input_scale=_per_expert(gate_up_input_scale, e),
        down_input_scale=_per_expert(down_input_scale, e),
        precision=precision,
        checkpoints=checkpoints,
        mx_activations=mx_activations,
    )


def moe_tkg(
    hidden_input: np.ndarray,
    expert_gate_up_weights: np.ndarray,
    expert_down_weights: np.ndarray,
    expert_affinities: np.ndarray,
    expert_index: np.ndarray,
    *,
    mode: str = "selective",
    rank_id: np.ndarray | int | None = None,
    expert_gate_up_bias: np.ndarray | None = None,
    expert_down_bias: np.ndarray | None = None,
    expert_gate_up_weights_scale: np.ndarray | None = None,
    expert_down_weights_scale: np.ndarray | None = None,
    hidden_input_scale: float | np.ndarray | None = None,
    gate_up_input_scale: np.ndarray | None = None,
    down_input_scale: np.ndarray | None = None,
    mask_unselected_experts: bool = False,
    expert_affinities_eager: np.ndarray | None = None,
    affinity_scale: str = "none",
    activation_fn: str = "silu",
    alpha: float | None = None,
    gated: bool = True,
    output_dtype: str | None = None,
    gate_clamp_upper_limit: float | None = None,
    gate_clamp_lower_limit: float | None = None,
    up_clamp_upper_limit: float | None = None,
    up_clamp_lower_limit: float | None = None,
    up_plus_one: bool = False,
    precision: Precision | str | None = None,
    mx_activations: str | None = None,
) -> np.ndarray:
    """MoE layer output [T, H] (values rounded to output_dtype, returned as float32).

    hidden_input [T, H]; expert_gate_up_weights [E_L, H, 2, I]; expert_down_weights [E_L, I, H];
    expert_affinities [T, E]; expert_index [T, K] (global expert ids); rank_id [1, 1] or int: this
    rank owns experts [rank_id*E_L, (rank_id+1)*E_L).

    selective: out[t] = sum_k s(t, e_k) * MLP_e_k(x_t) over the K experts, in k order; experts not
      local to this rank (when rank_id is given) are skipped; without rank_id the ids must be < E_L.
      s = expert_affinities_eager[t, k] if given, else expert_affinities[t, e_k].
    all_experts: every local expert on every token, in expert order; s = the rank's window of
      expert_affinities, zeroed where the expert is not in the token's top-K if
      mask_unselected_experts. Summing the outputs of all ranks gives the full layer.
    affinity_scale 'post' multiplies y by s, 'pre' multiplies x by s (rounded at precision.matmul_in)
    before the projections, 'none' adds the unscaled expert outputs.
    hidden_input_scale dequantizes an fp8 hidden input (x = hidden * scale); gate_up_input_scale and
    down_input_scale [E_L, 1] are static fp8 input scales (see mlp.expert_mlp).
    mx_activations: MX weights (given here dequantized, exact): x and h are MXFP8-quantized before their
    matmuls (see mlp.expert_mlp).
    Accumulation over experts is fp32 unless precision.accumulate names a dtype (a running sum
    stored at that dtype); the result is rounded to output_dtype (default: hidden_input's dtype).
    """
    if mode not in ("selective", "all_experts"):
        raise ValueError(f"mode must be 'selective' or 'all_experts', not {mode!r}")
    if affinity_scale not in AFFINITY_SCALES:
        raise ValueError(f"affinity_scale must be one of {AFFINITY_SCALES}, not {affinity_scale!r}")
    p = Precision.of(precision)
    out_dtype = output_dtype or name_of_array(hidden_input)
    x = np.asarray(hidden_input, dtype=np.float32)
    if hidden_input_scale is not None:
        x = x * np.asarray(hidden_input_scale, dtype=np.float32)
    index = np.asarray(expert_index).astype(np.int64)
    aff = np.asarray(expert_affinities, dtype=np.float32)
    t = x.shape[0]
    e_local = expert_gate_up_weights.shape[0]
    rank = _rank(rank_id)
    base = 0 if rank is None else rank * e_local
    mlp = ExpertMLP(
        activation=activation_fn,
        alpha=alpha,
        gated=gated,
        gate_clamp_lower_limit=gate_clamp_lower_limit,
        gate_clamp_upper_limit=gate_clamp_upper_limit,
        up_clamp_lower_limit=up_clamp_lower_limit,
        up_clamp_upper_limit=up_clamp_upper_limit,
        up_plus_one=up_plus_one,
    )
    weights = dict(
        mlp=mlp,
        gate_up_bias=expert_gate_up_bias,
        down_bias=expert_down_bias,
        gate_up_scale=expert_gate_up_weights_scale,
        down_scale=expert_down_weights_scale,
        gate_up_input_scale=gate_up_input_scale,
        down_input_scale=down_input_scale,
        precision=p,
        mx_activations=mx_activations,
    )

    # (token rows, local expert, per-row affinity) work items, in accumulation order.
    items: list[tuple[np.ndarray, int, np.ndarray]] = []
    if mode == "selective":
        if rank is None and index.size and index.max() >= e_local:
            raise ValueError(f"expert_index holds ids >= E_L={e_local}: pass rank_id for expert parallelism")
        for k in range(index.shape[1]):
            for e in range(e_local):
                rows = np.nonzero(index[:, k] == base + e)[0]
                if rows.size == 0:
                    continue
                if expert_affinities_eager is not None:
                    s = np.asarray(expert_affinities_eager, dtype=np.float32)[rows, k]
                else:
                    s = aff[rows, base + e]
                items.append((rows, e, s))
    else:
        if affinity_scale != "none" and rank is None and aff.shape[1] != e_local:
            raise ValueError("all_experts mode with affinity scaling needs rank_id when E_L < E")
        window = aff[:, base : base + e_local]
        if mask_unselected_experts:
            selected = np.zeros((t, aff.shape[1]), dtype=bool)
            np.put_along_axis(selected, index, True, axis=1)
            window = np.where(selected[:, base : base + e_local], window, np.float32(0.0))
        all_rows = np.arange(t)
        items = [(all_rows, e, window[:, e]) for e in range(e_local)]

    acc = np.zeros_like(x, dtype=np.float32)
    for rows, e, s in items:
        xin = x[rows]
        if affinity_scale == "pre":
            xin = round_to(xin * s[:, None], p.matmul_in)
        y = run_expert(xin, e, expert_gate_up_weights, expert_down_weights, **weights)
        if affinity_scale == "post":
            y = y * s[:, None]
        acc[rows] = round_to(acc[rows] + y, p.accumulate)
    return round_to(acc, out_dtype)
