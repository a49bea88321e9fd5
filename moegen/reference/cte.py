"""Context-encoding MoE (SEMANTICS section 5): the blockwise math with the seed moe_cte argument
names, and the plain per-token MoE it must agree with.

Names that differ from the seed: `affinity_scale` ('none' | 'pre' | 'post') for
expert_affinities_scaling_mode, `activation_function` is a string, the quantization_config's two
scales are the keywords gate_up_proj_scale and down_proj_scale, and `checkpoint=True` returns the
seed's gate_up_activations_T and down_activations instead of writing preallocated buffers.
"""

from __future__ import annotations

import numpy as np

from moegen.reference.mlp import ExpertMLP, Precision
from moegen.reference.quant import name_of_array, round_to
from moegen.reference.tkg import AFFINITY_SCALES, run_expert


def _mlp_config(
    activation_function,
    alpha,
    gated,
    gate_clamp_lower_limit,
    gate_clamp_upper_limit,
    up_clamp_lower_limit,
    up_clamp_upper_limit,
    up_plus_one,
) -> ExpertMLP:
    return ExpertMLP(
        activation=activation_function,
        alpha=alpha,
        gated=gated,
        gate_clamp_lower_limit=gate_clamp_lower_limit,
        gate_clamp_upper_limit=gate_clamp_upper_limit,
        up_clamp_lower_limit=up_clamp_lower_limit,
        up_clamp_upper_limit=up_clamp_upper_limit,
        up_plus_one=up_plus_one,
    )


class _ExpertWeights:
    """fp32 views of one expert's weights, converted once while consecutive blocks share the expert."""

    def __init__(self, gate_up: np.ndarray, down: np.ndarray):
        self.gate_up, self.down = gate_up, down
        self.expert = -1
        self.cache: tuple[np.ndarray, np.ndarray] | None = None

    def stacks(self, e: int) -> tuple[np.ndarray, np.ndarray]:
        """[1, ...] stacks of expert e in fp32 (run_expert indexes them with 0)."""
        if e != self.expert:
            self.cache = (
                np.asarray(self.gate_up[e], dtype=np.float32)[None],
                np.asarray(self.down[e], dtype=np.float32)[None],
            )
            self.expert = e
        return self.cache


def _slice(arr, e):
    """Expert e's slice of a per-expert array, kept as a [1, ...] stack."""
    return None if arr is None else np.asarray(arr)[e : e + 1]


def moe_cte(
    hidden_states: np.ndarray,
    expert_affinities_masked: np.ndarray,
    gate_up_proj_weight: np.ndarray,
    down_proj_weight: np.ndarray,
    token_position_to_id: np.ndarray,
    block_to_expert: np.ndarray,
    block_size: int,
    *,
    conditions: np.ndarray | None = None,
    gate_and_up_proj_bias: np.ndarray | None = None,
    down_proj_bias: np.ndarray | None = None,
    gate_up_proj_scale: np.ndarray | None = None,
    down_proj_scale: np.ndarray | None = None,
    gate_up_input_scale: np.ndarray | None = None,
    down_input_scale: np.ndarray | None = None,
    activation_function: str = "silu",
    alpha: float | None = None,
    gated: bool = True,
    is_tensor_update_accumulating: bool = True,
    affinity_scale: str = "post",
    gate_clamp_upper_limit: float | None = None,
    gate_clamp_lower_limit: float | None = None,
    up_clamp_upper_limit: float | None = None,
    up_clamp_lower_limit: float | None = None,
    up_plus_one: bool = False,
    output_dtype: str | None = None,
    checkpoint: bool = False,
    precision: Precision | str | None = None,
    mx_activations: str | None = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Blockwise MoE output [T+1, H] (values of output_dtype, default hidden_states' dtype, as fp32).

    hidden_states [T+1, H] (row T zeros); expert_affinities_masked [(T+1)*E, 1]; gate_up_proj_weight
    [E, H, 2, I]; down_proj_weight [E, I, H]; token_position_to_id [N*B] (padding T or -1);
    block_to_expert [N, 1]; conditions [N+1] (blocks with condition 0 are skipped, as a hybrid
    kernel's dynamic loop skips them; None runs every block).

    For block b in order: e = block_to_expert[b], ids = its B slots; slots with id -1 are skipped
    (not read, not written); X = hidden_states[ids]; y = MLP_e(X) with affinity scaling ('pre': X*a
    rounded at precision.matmul_in, 'post': y*a, a = expert_affinities_masked[id*E + e]); then
    out[ids] = round(out[ids] + round(y)) in output_dtype (accumulating), or out[ids] = round(y)
    (is_tensor_update_accumulating=False, top-1). out starts at zero. Row T collects the padding
    slots' contributions (zero unless 'none'/'pre' scaling with biases): compare rows [:T].

    checkpoint=True returns (out, gate_up_activations_T [N, 2, I, B], down_activations [N, B, H]):
    per block the gate/up projections after dequant, bias and clamp (as AWS stores them), and the down
    projection output after its bias, before affinity scaling, both rounded to output_dtype; slots
    with id -1 and skipped blocks hold 0 there (a kernel leaves them unspecified: mask them out).

    mx_activations (e.g. 'fp8_e4m3fn'): an MX kernel's matmul inputs x (after pre-scaling) and h are
    quantized by quantize_mx's rule in blocks of 32 along the contraction; the weights then hold the
    exact fp32 values of the MX weights (any [E, ...] object indexable by expert).
    """
    if affinity_scale not in AFFINITY_SCALES:
        raise ValueError(f"affinity_scale must be one of {AFFINITY_SCALES}, not {affinity_scale!r}")
    p = Precision.of(precision)
    out_dtype = output_dtype or name_of_array(hidden_states)
    hidden = np.asarray(hidden_states, dtype=np.float32)
    rows_total, h_dim = hidden.shape
    t = rows_total - 1
    num_experts, inter = gate_up_proj_weight.shape[0], gate_up_proj_weight.shape[-1]
    parts = 2 if gated else 1
    aff = np.asarray(expert_affinities_masked, dtype=np.float32).reshape(rows_total, num_experts)
    slots_all = np.asarray(token_position_to_id).astype(np.int64).reshape(-1, block_size)
    experts = np.asarray(block_to_expert).astype(np.int64).reshape(-1)
    n = experts.shape[0]
    if slots_all.shape[0] != n:
        raise ValueError(
            f"token_position_to_id has {slots_all.shape[0]} blocks of {block_size}, block_to_expert has {n}"
        )
    if slots_all.size and (slots_all.max() > t or slots_all.min() < -1):
        raise ValueError(f"token_position_to_id values must be in [-1, T={t}]")
    run = np.ones(n, dtype=bool) if conditions is None else np.asarray(conditions).reshape(-1)[:n] != 0
    mlp = _mlp_config(
        activation_function,
        alpha,
        gated,
        gate_clamp_lower_limit,
        gate_clamp_upper_limit,
        up_clamp_lower_limit,
        up_clamp_upper_limit,
        up_plus_one,
    )
    weights = _ExpertWeights(gate_up_proj_weight, down_proj_weight)

    out = np.zeros((rows_total, h_dim), dtype=np.float32)
    gate_up_ckpt = np.zeros((n, parts, inter, block_size), dtype=np.float32) if checkpoint else None
    down_ckpt = np.zeros((n, block_size, h_dim), dtype=np.float32) if checkpoint else None
    for b in range(n):
        if not run[b]:
            continue
        e = int(experts[b])
        slots = slots_all[b]
        live = np.nonzero(slots >= 0)[0]
        if live.size == 0:
            continue
        # The MLP is row-wise: compute each distinct row once (all padding slots share row T).
        ids, inverse = np.unique(slots[live], return_inverse=True)
        a = aff[ids, e]
        x = hidden[ids]
        if affinity_scale == "pre":
            x = round_to(x * a[:, None], p.matmul_in)
        gu_stack, down_stack = weights.stacks(e)
        ck: dict = {}
        y = run_expert(
            x,
            0,
            gu_stack,
            down_stack,
            mlp=mlp,
            gate_up_bias=_slice(gate_and_up_proj_bias, e),
            down_bias=_slice(down_proj_bias, e),
            gate_up_scale=_slice(gate_up_proj_scale, e),
            down_scale=_slice(down_proj_scale, e),
            gate_up_input_scale=_slice(gate_up_input_scale, e),
            down_input_scale=_slice(down_input_scale, e),
            precision=p,
            checkpoints=ck if checkpoint else None,
            mx_activations=mx_activations,
        )
        if checkpoint:
            gate_up_ckpt[b][:, :, live] = round_to(ck["gate_up"], out_dtype)[inverse].transpose(1, 2, 0)
            down_ckpt[b][live] = round_to(y, out_dtype)[inverse]
        if affinity_scale == "post":
            y = y * a[:, None]
        contribution = round_to(y, out_dtype)
        # Each slot is one read-modify-write of its output row; only the padding row repeats.
        repeats = np.bincount(inverse, minlength=ids.size)
        for _ in range(int(repeats.max())):
            if is_tensor_update_accumulating:
                out[ids] = round_to(out[ids] + contribution, out_dtype)
            else:
                out[ids] = contribution
            keep = repeats > 1
            ids, contribution, repeats = ids[keep], contribution[keep], repeats[keep] - 1
            if not np.any(contribution):
                break
    if checkpoint:
        return out, gate_up_ckpt, down_ckpt
    return out


def moe_per_token(
    hidden: np.ndarray,
    expert_index: np.ndarray,
    expert_affinities: np.ndarray,
    gate_up_proj_weight: np.ndarray,
    down_proj_weight: np.ndarray,
    *,
    keep: np.ndarray | None = None,
    gate_and_up_proj_bias: np.ndarray | None = None,
    down_proj_bias: np.ndarray | None = None,
    gate_up_proj_scale: np.ndarray | None = None,
    down_proj_scale: np.ndarray | None = None,
    gate_up_input_scale: np.ndarray | None = None,
    down_input_scale: np.ndarray | None = None,
    activation_function: str = "silu",
    alpha: float | None = None,
    gated: bool = True,
    affinity_scale: str = "post",
    gate_clamp_upper_limit: float | None = None,
    gate_clamp_lower_limit: float | None = None,
    up_clamp_upper_limit: float | None = None,
    up_clamp_lower_limit: float | None = None,
    up_plus_one: bool = False,
    output_dtype: str | None = None,
    precision: Precision | str | None = None,
) -> np.ndarray:
    """Plain MoE [T, H]: out[t] = sum over k of scale(a_tk) MLP_{e_tk}(x_t), summed in fp32 and
    rounded once to output_dtype.

    hidden [T, H] (no padding row); expert_index [T, K]; expert_affinities [T, E] or [T, K] (in
    expert_index order); keep [T, K] bool excludes pairs (tokens dropped by a capacity limit).
    """
    if affinity_scale not in AFFINITY_SCALES:
        raise ValueError(f"affinity_scale must be one of {AFFINITY_SCALES}, not {affinity_scale!r}")
    p = Precision.of(precision)
    out_dtype = output_dtype or name_of_array(hidden)
    x_all = np.asarray(hidden, dtype=np.float32)
    index = np.asarray(expert_index).astype(np.int64)
    aff = np.asarray(expert_affinities, dtype=np.float32)
    if aff.shape != index.shape:
        aff = np.take_along_axis(aff, index, axis=1)
    mlp = _mlp_config(
        activation_function,
        alpha,
        gated,
        gate_clamp_lower_limit,
        gate_clamp_upper_limit,
        up_clamp_lower_limit,
        up_clamp_upper_limit,
        up_plus_one,
    )
    weights = _ExpertWeights(gate_up_proj_weight, down_proj_weight)
    selected = np.ones(index.shape, dtype=bool) if keep is None else np.asarray(keep, dtype=bool)
    acc = np.zeros_like(x_all)
    for e in range(gate_up_proj_weight.shape[0]):
        rows, ks = np.nonzero((index == e) & selected)
        if rows.size == 0:
            continue
        a = aff[rows, ks]
        x = x_all[rows]
        if affinity_scale == "pre":
            x = round_to(x * a[:, None], p.matmul_in)
        gu_stack, down_stack = weights.stacks(e)
        y = run_expert(
            x,
            0,
            gu_stack,
            down_stack,
            mlp=mlp,
            gate_up_bias=_slice(gate_and_up_proj_bias, e),
            down_bias=_slice(down_proj_bias, e),
            gate_up_scale=_slice(gate_up_proj_scale, e),
            down_scale=_slice(down_proj_scale, e),
            gate_up_input_scale=_slice(gate_up_input_scale, e),
            down_input_scale=_slice(down_input_scale, e),
            precision=p,
        )
        if affinity_scale == "post":
            y = y * a[:, None]
        acc[rows] += y  # a token meets each expert at most once: rows are distinct
    return round_to(acc, out_dtype)
