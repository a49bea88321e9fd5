"""Verify harness of the tkg family (see moegen/verify/__init__.py for the interface).

Inputs are seeded and snapped to the dtypes the kernel reads: bf16/fp16 hidden states and weights
(or fp8 weights quantized with moegen.reference.quant, with their scales), affinities dense and
positive (so that the all-expert window and the top-K mask both matter), distinct top-K expert
ids per token, and for EP variants the last rank's id (its window starts at E - E_L).
Static fp8 input scales are powers of two, so x / s and x * (1 / s) agree exactly.
"""

from __future__ import annotations

import inspect

import numpy as np

from moegen.compare import TOLERANCES, Tolerance
from moegen.convert import mx_layout
from moegen.plan.tkg import TkgPlan
from moegen.reference.mlp import Precision
from moegen.reference.quant import cast, quantize_down_fp8, quantize_gate_up_fp8, round_to
from moegen.reference.tkg import moe_tkg
from moegen.verify import shared_fused
from moegen.verify.expert_mlp import unshift as _unshift
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
    if m.dequant or plan.mx:
        names += ["expert_gate_up_weights_scale", "expert_down_weights_scale"]
    if m.input_quant == "fp8_static":
        names += ["gate_up_input_scale", "down_input_scale"]
    if plan.eager:
        names.append("expert_affinities_eager")
    if plan.shared:
        names += plan.shared.argument_names
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
    for expert in range(0 if plan.mx else el):
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
    if not plan.mx:
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
    if plan.mx:
        inputs.update(_mx_weights(plan, rng, used_experts(plan, index, inputs.get("rank_id"))))
    if m.gate_up_bias:
        inputs["expert_gate_up_bias"] = cast((0.1 * rng.standard_normal((el, *parts, i))).astype(np.float32), dtype)
        if plan.mx:
            inputs["expert_gate_up_bias"] = mx_layout.gate_up_bias_to_kernel(inputs["expert_gate_up_bias"])
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
    if plan.shared:
        inputs.update(shared_fused.make_inputs(plan.shared, inputs["hidden_input"], rng))
    if aws_forms:
        inputs["expert_index"] = inputs["expert_index"].astype(np.uint32)
        if mode == "row":
            inputs["expert_gate_up_weights_scale"] = gate_up_scale.reshape(el, 1, m.projections * i)
            inputs["expert_down_weights_scale"] = down_scale.reshape(el, 1, h)
    return {name: inputs[name] for name in argument_names(plan)}


def used_experts(plan: TkgPlan, index: np.ndarray, rank_id: np.ndarray | None = None) -> list[int]:
    """The local experts a call reads: the selected ids in selective and distinct mode (distinct under EP:
    the ids in rank_id's window, as local ids), every local expert in all-expert mode."""
    if plan.mode == "all_experts":
        return list(range(plan.local_experts))
    first = int(np.asarray(rank_id).reshape(-1)[0]) * plan.local_experts if rank_id is not None else 0
    ids = np.unique(np.asarray(index)) - first
    return sorted(int(e) for e in ids if 0 <= e < plan.local_experts)


def _mx_weights(plan: TkgPlan, rng: np.random.Generator, experts: list[int]) -> dict[str, np.ndarray]:
    """MX weights in the tkg argument names (mx_expert_weights) for the experts the call reads: real-model
    shapes hold many experts (GPT-OSS-120B: 128 of 2.5 * 10^7 weights), a selective call reads T * K."""
    gate_up, gate_up_scale, down, down_scale = mx_expert_weights(
        plan.mx, plan.local_experts, plan.hidden, plan.intermediate, rng, experts
    )
    return {
        "expert_gate_up_weights": gate_up,
        "expert_gate_up_weights_scale": gate_up_scale,
        "expert_down_weights": down,
        "expert_down_weights_scale": down_scale,
    }


def mx_expert_weights(mx, experts: int, hidden: int, intermediate: int, rng: np.random.Generator, used) -> tuple:
    """(gate_up [E, 128, 2, H slabs, I], its scales [E, 16, 2, H slabs, I], down [E, 128, I slabs, H], its
    scales [E, 16, I slabs, H]) in the MX kernel layouts (moegen/convert/mx_layout.py): random element
    codes (every fp4 code; fp8 e4m3fn values of a normal sample) and block scales 2^-7 .. 2^-3 (fp4) or
    2^-9 .. 2^-6 (fp8) for the experts in `used`; the others are zero words with unit scales (np.zeros
    commits memory only where written)."""
    h, i = hidden, intermediate
    low, high = (120, 125) if mx.weights == "mxfp4" else (118, 122)
    word = np.dtype(mx.word_dtype)
    gate_up = np.zeros((experts, 128, 2, mx.h_slabs, i), dtype=word)
    gate_up_scale = np.full((experts, 16, 2, mx.h_slabs, i), 127, dtype=np.uint8)
    down = np.zeros((experts, 128, mx.i_slabs, h), dtype=word)
    down_scale = np.full((experts, 16, mx.i_slabs, h), 127, dtype=np.uint8)

    def codes(shape):
        if mx.weights == "mxfp4":
            return rng.integers(0, 16, shape, dtype=np.uint8)
        return mx_layout.encode(cast(rng.standard_normal(shape, dtype=np.float32) * 8, "fp8_e4m3fn"), mx.element)

    for e in (int(x) for x in used):
        gate_up[e : e + 1], gate_up_scale[e : e + 1] = mx_layout.gate_up_to_kernel(
            codes((1, 2, i, h)), rng.integers(low, high, (1, 2, i, h // 32), dtype=np.uint8), mx.element
        )
        down[e : e + 1], down_scale[e : e + 1] = mx_layout.down_to_kernel(
            codes((1, h, i)), rng.integers(low, high, (1, h, i // 32), dtype=np.uint8), mx.element
        )
    return gate_up, gate_up_scale, down, down_scale


def logical_weights(plan: TkgPlan, inputs: dict) -> dict:
    """The weights (and gate/up bias) as the reference reads them: MX layouts dequantized exactly to fp32
    [E_L, H, 2, I], [E_L, I, H], bias [E_L, 2, I], scale arguments dropped; other plans unchanged.
    Only the experts the call reads are dequantized (the others stay zero, never touched)."""
    if not plan.mx:
        return inputs
    mx, out = plan.mx, dict(inputs)
    el, h, i = plan.local_experts, plan.hidden, plan.intermediate
    gate_up = np.zeros((el, h, 2, i), dtype=np.float32)
    down = np.zeros((el, i, h), dtype=np.float32)
    for e in used_experts(plan, inputs["expert_index"], inputs.get("rank_id")):
        gate_up[e] = mx_layout.dequantize_gate_up(
            inputs["expert_gate_up_weights"][e : e + 1],
            inputs["expert_gate_up_weights_scale"][e : e + 1],
            h,
            mx.element,
        )[0]
        down[e] = mx_layout.dequantize_down(
            inputs["expert_down_weights"][e : e + 1], inputs["expert_down_weights_scale"][e : e + 1], i, mx.element
        )[0]
    out["expert_gate_up_weights"], out["expert_down_weights"] = gate_up, down
    del out["expert_gate_up_weights_scale"], out["expert_down_weights_scale"]
    if "expert_gate_up_bias" in inputs:
        out["expert_gate_up_bias"] = mx_layout.gate_up_bias_from_kernel(
            inputs["expert_gate_up_bias"], plan.intermediate
        )
    return out


def expected(plan: TkgPlan, inputs: dict) -> dict:
    """The reference output, rounded where the kernel rounds (x * affinity and h in the matmul input
    dtype; every other intermediate fp32; MX: x and h MXFP8-quantized before their matmuls)."""
    arguments = _reference_arguments(plan, inputs)
    if plan.shared:  # the routed and shared sums meet in one fp32 accumulator, rounded once
        arguments["output_dtype"] = "fp32"
    out = moe_tkg(**arguments)
    if plan.shared:
        out = out + shared_fused.expected(plan.shared, inputs, plan.in_dtype)
    return {"output": round_to(out, plan.out_dtype)}


def _reference_arguments(plan: TkgPlan, inputs: dict) -> dict:
    m = plan.mlp
    inputs = logical_weights(plan, inputs)
    return dict(
        hidden_input=inputs["hidden_input"],
        expert_gate_up_weights=inputs["expert_gate_up_weights"],
        expert_down_weights=inputs["expert_down_weights"],
        expert_affinities=inputs["expert_affinities"],
        expert_index=inputs["expert_index"],
        mode=plan.reference_mode,
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
        precision=Precision(matmul_in=plan.in_dtype),
        mx_activations=plan.mx.activation_element if plan.mx else None,
    )


def run(kernel, plan: TkgPlan, inputs: dict) -> dict:
    """The kernel's output in the simulator (a sub-kernel with SBUF input or output runs inside a wrapper)."""
    from moegen import sim

    args = [inputs[name] for name in argument_names(plan)]
    if plan.input == "sbuf" or plan.output == "sbuf":
        kernel = sbuf_wrapper(kernel, plan)
    runner = sim.simulate(  # traced under sim.recording()
        kernel[2] if plan.lnc == 2 else kernel, trace=False, target=plan.target if plan.mx else None
    )
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

    # the kernel's argument names, so that the trace names the HBM inputs (hbm:<name>:...) as an unwrapped
    # kernel's do: the HBM minimum (moe_minimum_hbm_bytes) finds each input by that name
    read_back.__signature__ = inspect.Signature(
        [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in argument_names(plan)]
    )
    return sim.jit(read_back)


def tolerance(plan: TkgPlan, name: str) -> str:
    """The lowest-precision dtype the output goes through: the output dtype, the matmul input (h)."""
    order = ["fp32", "fp16", "bf16", "fp8"]
    kinds = [plan.out_dtype, plan.matmul_dtype]
    return max(kinds, key=order.index)


MXFP8_STEP_SHIFT = 3  # e4m3fn: quantize_mx fills [128, 256) * 2^k in steps of 16, one step = 2^(floor(log2 amax) - 3)


def data_tolerance(plan: TkgPlan, name: str, inputs: dict) -> Tolerance | None:
    """MX plans: the output dtype's tolerance plus, per token, one MXFP8 element step of the token's
    largest |h| (over the local experts) times max |W_down| times max affinity (1 without scaling),
    for each work item that reaches the token (`contributing_items`: K, or E_L for all-expert mode
    without mask_unselected). Why: a(g) is the engine's and
    may differ from the reference's in the last fp32 bits, which can move h's bf16 rounding, and an h
    on an fp8 rounding boundary then moves one element of quantize_mx's output by one step (as in the
    mlp family, moegen/verify/mlp.py). Other plans: None (the dtype tolerance)."""
    if not plan.mx:
        return None
    args = _reference_arguments(plan, inputs)
    x = moe_tkg_mx_hidden(plan, args)  # [E_L, T, I]
    amax = np.max(np.abs(x), axis=(0, 2))[:, None].astype(np.float64)
    _, exp = np.frexp(np.where(amax > 0, amax, 1.0))
    step = np.where(amax > 0, np.exp2(exp - 1 - MXFP8_STEP_SHIFT), 0.0)
    scale = float(np.max(np.abs(args["expert_affinities"]))) if plan.affinity_scale != "none" else 1.0
    base = TOLERANCES[plan.out_dtype]
    used = used_experts(plan, args["expert_index"], args["rank_id"])
    bound = step * contributing_items(plan) * float(np.max(np.abs(args["expert_down_weights"][used]))) * max(scale, 1.0)
    return Tolerance(base.rtol, base.atol + bound)


def contributing_items(plan: TkgPlan) -> int:
    """Work items whose output reaches one token: its K selected experts (selective and distinct mode, and
    all-expert mode with mask_unselected and POST_SCALE: every other item's column is exactly zero in that
    token's row, so it adds exactly 0), else every local expert (all-expert NO/PRE_SCALE: an unselected
    expert still adds its MLP of x * 0 or of x)."""
    if plan.mode != "all_experts" or (plan.mask_unselected and plan.affinity_scale == "post"):
        return min(plan.top_k, plan.local_experts)
    return plan.local_experts


def moe_tkg_mx_hidden(plan: TkgPlan, args: dict) -> np.ndarray:
    """h = a(g) * u of every expert the call reads on every token [experts, T, I] (bf16-rounded)."""
    from moegen.reference.mlp import _mx_round, activation

    m = plan.mlp
    x = _mx_round(np.asarray(args["hidden_input"], dtype=np.float32), plan.mx.activation_element)
    hs = []
    for e in used_experts(plan, args["expert_index"], args["rank_id"]):
        gu = np.einsum("th,hji->tji", x, args["expert_gate_up_weights"][e])
        if args["expert_gate_up_bias"] is not None:
            gu = gu + np.asarray(args["expert_gate_up_bias"][e], dtype=np.float32)
        g = np.clip(gu[:, 0], _limit(m.gate_lower, -np.inf), _limit(m.gate_upper, np.inf))
        u = np.clip(gu[:, 1] + m.up_constant, _limit(m.up_lower, -np.inf), _limit(m.up_upper, np.inf))
        hs.append(round_to(activation(g, m.activation, m.alpha) * u, plan.in_dtype))
    return np.stack(hs)


def _limit(value: float | None, default: float) -> float:
    return default if value is None else value


# `moegen profile`: the MoE layer's algorithmic MACs and HBM minimum (moegen/verify/work.py)
algorithmic_macs = moe_layer_macs
minimum_hbm_bytes = moe_minimum_hbm_bytes
