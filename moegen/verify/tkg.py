"""Verify harness of the tkg family (see moegen/verify/__init__.py for the interface).

Inputs are seeded and snapped to the dtypes the kernel reads: bf16/fp16 hidden states and weights
(or fp8 weights quantized with moegen.reference.quant, with their scales), affinities dense and
positive (so that the all-expert window and the top-K mask both matter), distinct top-K expert
ids per token, and for EP variants the last rank's id (its window starts at E - E_L).
Static fp8 input scales are powers of two, so x / s and x * (1 / s) agree exactly.
"""

from __future__ import annotations

import numpy as np

from moegen.plan.tkg import TkgPlan
from moegen.reference.mlp import Precision
from moegen.reference.quant import cast, quantize_down_fp8, quantize_gate_up_fp8, round_to
from moegen.reference.tkg import moe_tkg
from moegen.verify.work import moe_layer_macs, moe_minimum_hbm_bytes

GATE_UP_INPUT_SCALE = 2.0**-5  # |x| < 7.5 stays inside fp8 e4m3 (max 240)
DOWN_INPUT_SCALE = 2.0**-2  # |h| < 60 stays inside fp8


def argument_names(plan: TkgPlan) -> list[str]:
    """The kernel's arguments in order (the seed's names; only those the variant reads, after the five
    positional ones)."""
    names = ["hidden_input", "expert_gate_up_weights", "expert_down_weights", "expert_affinities", "expert_index"]
    m = plan.mlp
    if plan.uses_rank:
        names.append("rank_id")
    if m.gate_up_bias:
        names.append("expert_gate_up_bias")
    if m.down_bias:
        names.append("expert_down_bias")
    if m.dequant:
        names += ["expert_gate_up_weights_scale", "expert_down_weights_scale"]
    if m.input_quant == "fp8_static":
        names += ["gate_up_input_scale", "down_input_scale"]
    if plan.eager:
        names.append("expert_affinities_eager")
    return names


def make_inputs(
    plan: TkgPlan, tokens: int, rng: np.random.Generator, rank: int | None = None, *, aws_forms: bool = False
) -> dict:
    """Seeded inputs for `tokens` tokens; `rank` (EP) defaults to the last rank. aws_forms: the forms
    AWS's moe_tkg callers pass (uint32 expert_index, fp8 row scales [E_L, 1, 2I] and [E_L, 1, H]),
    same values."""
    t, h, i = tokens, plan.hidden, plan.intermediate
    e, el, k = plan.experts, plan.local_experts, plan.top_k
    m = plan.mlp
    dtype = plan.in_dtype
    inputs: dict[str, np.ndarray] = {}
    inputs["hidden_input"] = cast(rng.standard_normal((t, h)).astype(np.float32), dtype)
    # Weights expert by expert in float32 (real-model shapes hold up to ~10^9 weights).
    from moegen.reference.quant import np_dtype

    mode = {"fp8_row": "row", "fp8_static": "static"}.get(m.weight_quant)
    weight_dtype = np_dtype("fp8" if mode else dtype)
    parts = (2,) if m.gated else ()  # not gated: weights [E_L, H, I], scales and biases [E_L, I]
    gate_up = np.empty((el, h, *parts, i), dtype=weight_dtype)
    down = np.empty((el, i, h), dtype=weight_dtype)
    gate_up_scale = np.empty((el, *parts, i if mode == "row" else 1), dtype=np.float32)
    down_scale = np.empty((el, h if mode == "row" else 1), dtype=np.float32)
    for expert in range(el):
        w = rng.standard_normal((1, h, m.projections, i), dtype=np.float32) / np.float32(np.sqrt(h))
        d = rng.standard_normal((1, i, h), dtype=np.float32) / np.float32(np.sqrt(i))
        if mode:
            q, scale = quantize_gate_up_fp8(w, mode)
            gate_up[expert], gate_up_scale[expert] = (
                q[0].reshape(gate_up.shape[1:]),
                scale[0].reshape(gate_up_scale.shape[1:]),
            )
            down[expert], down_scale[expert] = (a[0] for a in quantize_down_fp8(d, mode))
        else:
            gate_up[expert], down[expert] = cast(w[0], dtype).reshape(gate_up.shape[1:]), cast(d[0], dtype)
    inputs["expert_gate_up_weights"] = gate_up
    inputs["expert_down_weights"] = down
    inputs["expert_affinities"] = cast(rng.uniform(0.05, 1.0, (t, e)).astype(np.float32), dtype)
    index = np.stack([rng.permutation(e)[:k] for _ in range(t)]).astype(np.int32)  # distinct global ids
    r = (plan.ep - 1) if rank is None else rank
    if plan.uses_rank and el < e:
        # Each token's first expert is local to the tested rank, so that every row exercises the window.
        for row in index:
            local = r * el + int(rng.integers(el))
            row[row == local] = row[0]
            row[0] = local
    inputs["expert_index"] = index
    if plan.uses_rank:
        inputs["rank_id"] = np.array([[r]], dtype=np.int32)
    if m.gate_up_bias:
        inputs["expert_gate_up_bias"] = cast((0.1 * rng.standard_normal((el, *parts, i))).astype(np.float32), dtype)
    if m.down_bias:
        inputs["expert_down_bias"] = cast((0.1 * rng.standard_normal((el, h))).astype(np.float32), dtype)
    if m.dequant:
        inputs["expert_gate_up_weights_scale"] = gate_up_scale
        inputs["expert_down_weights_scale"] = down_scale
    if m.input_quant == "fp8_static":
        inputs["gate_up_input_scale"] = np.full((el, 1), GATE_UP_INPUT_SCALE, dtype=np.float32)
        inputs["down_input_scale"] = np.full((el, 1), DOWN_INPUT_SCALE, dtype=np.float32)
    if plan.eager:
        affinities = np.asarray(inputs["expert_affinities"], dtype=np.float32)
        inputs["expert_affinities_eager"] = cast(np.take_along_axis(affinities, index, axis=1), dtype)
    if aws_forms:
        inputs["expert_index"] = inputs["expert_index"].astype(np.uint32)
        if mode == "row":
            inputs["expert_gate_up_weights_scale"] = gate_up_scale.reshape(el, 1, m.projections * i)
            inputs["expert_down_weights_scale"] = down_scale.reshape(el, 1, h)
    return {name: inputs[name] for name in argument_names(plan)}


def expected(plan: TkgPlan, inputs: dict) -> dict:
    """The reference output, rounded where the kernel rounds (x * affinity and h in the matmul input
    dtype; every other intermediate fp32)."""
    m = plan.mlp
    precision = Precision(matmul_in=plan.in_dtype)
    out = moe_tkg(
        inputs["hidden_input"],
        inputs["expert_gate_up_weights"],
        inputs["expert_down_weights"],
        inputs["expert_affinities"],
        inputs["expert_index"],
        mode=plan.mode,
        rank_id=inputs.get("rank_id"),
        expert_gate_up_bias=inputs.get("expert_gate_up_bias"),
        expert_down_bias=inputs.get("expert_down_bias"),
        expert_gate_up_weights_scale=inputs.get("expert_gate_up_weights_scale"),
        expert_down_weights_scale=inputs.get("expert_down_weights_scale"),
        gate_up_input_scale=inputs.get("gate_up_input_scale"),
        down_input_scale=inputs.get("down_input_scale"),
        mask_unselected_experts=plan.mask_unselected,
        expert_affinities_eager=inputs.get("expert_affinities_eager"),
        affinity_scale=plan.affinity_scale,
        activation_fn=m.activation,
        alpha=m.alpha,
        gated=m.gated,
        output_dtype=plan.out_dtype,
        gate_clamp_upper_limit=m.gate_upper,
        gate_clamp_lower_limit=m.gate_lower,
        up_clamp_upper_limit=_unshift(m.up_upper, m),
        up_clamp_lower_limit=_unshift(m.up_lower, m),
        up_plus_one=m.up_plus_one,
        precision=precision,
    )
    return {"output": round_to(out, plan.out_dtype)}


def _unshift(limit: float | None, mlp) -> float | None:
    """The spec's up clamp limit (the plan holds it shifted by the folded +1; the reference shifts itself)."""
    return None if limit is None else limit - mlp.up_constant


def run(kernel, plan: TkgPlan, inputs: dict) -> dict:
    """The kernel's output in the simulator (a sub-kernel with SBUF input or output runs inside a wrapper)."""
    from moegen import sim

    args = [inputs[name] for name in argument_names(plan)]
    if plan.input == "sbuf" or plan.output == "sbuf":
        kernel = sbuf_wrapper(kernel, plan)
    runner = sim.simulate(kernel[2] if plan.lnc == 2 else kernel, trace=False)  # traced under sim.recording()
    out = runner(*args)
    return {"output": np.asarray(out, dtype=np.float32)}


def sbuf_wrapper(kernel, plan: TkgPlan):
    """An @nki.jit kernel around a tkg sub-kernel: it puts hidden_input [T, H] into SBUF as [128, T, H / 128]
    (column h0 * H1 + h1 at [h0, t, h1]) when the sub-kernel reads SBUF, and copies an SBUF result to HBM [T, H]."""
    from moegen import sim

    nl, nisa = sim.language, sim.isa
    hidden = plan.hidden
    h1 = hidden // 128

    def read_back(*args):
        t = args[0].shape[0]
        if plan.input == "sbuf":
            x = nl.ndarray((128, t, h1), dtype=args[0].dtype, buffer=nl.sbuf)
            nisa.dma_copy(dst=x, src=args[0].ap(pattern=[[h1, 128], [hidden, t], [1, h1]], offset=0))
            args = (x, *args[1:])
        result = kernel(*args)
        if plan.output == "hbm":
            return result
        output = nl.ndarray((t, hidden), dtype=result.dtype, buffer=nl.shared_hbm)
        if plan.input == "sbuf":
            nisa.dma_copy(dst=output.ap(pattern=[[h1, 128], [hidden, t], [1, h1]], offset=0), src=result)
        else:
            nisa.dma_copy(dst=output[0:t, 0:hidden], src=result[0:t, 0:hidden])
        return output

    return sim.jit(read_back)


def tolerance(plan: TkgPlan, name: str) -> str:
    """The lowest-precision dtype the output goes through: the output dtype, the matmul input (h)."""
    order = ["fp32", "fp16", "bf16", "fp8"]
    kinds = [plan.out_dtype, plan.matmul_dtype]
    return max(kinds, key=order.index)


# `moegen profile`: the MoE layer's algorithmic MACs and HBM minimum (moegen/verify/work.py)
algorithmic_macs = moe_layer_macs
minimum_hbm_bytes = moe_minimum_hbm_bytes
