"""MXFP8 MLP harness for `moegen verify` and the mlp tests (see moegen/verify/__init__.py).

Inputs sit on grids that MX-quantize without loss: x holds multiples of 1/8 in [-1, 1] and the weights
integers in [-8, 8] times 2^-s, so every block of 32 maps onto fp8 elements exactly (e4m3fn and e5m2)
and the gate/up sums are exact in fp32. Pre-quantized operands are made on the host with the OCP
sample rule (a different rule from the kernel's quantize_mx, as host tools may use), packed into
uint32 words (value q of a word in byte q) with uint8 E8M0 scales per 32 consecutive values.
Rounding the reference shares with the kernel: act(g) in fp32, h in the input dtype, h quantized by
quantize_mx, out and the checkpoints in the output dtype.
"""

from __future__ import annotations

import math

import numpy as np

from moegen.compare import TOLERANCES, Tolerance
from moegen.plan.mlp import MlpPlan
from moegen.reference import dense_mlp_mx, dequantize_mx, np_dtype, quantize_mx

CHECKPOINT_OUTPUTS = {
    "save_gate_pre": "gate_pre",
    "save_gate_act": "gate_act",
    "save_up": "up",
    "save_hidden": "hidden",
}


def _weight_exponent(contraction: int) -> int:
    """s such that sums of `contraction` grid products have a standard deviation near 2."""
    return max(0, round(math.log2(1.5 * math.sqrt(contraction))))


def _packed(values: np.ndarray, elem: str) -> tuple[np.ndarray, np.ndarray]:
    """Host-side MXFP8 of values [rows, K] (OCP sample rule): uint32 words [rows, K/4], uint8 scales."""
    elements, scales = quantize_mx(values, elem, "ocp", axis=-1)
    words = np.ascontiguousarray(elements.astype(np_dtype(elem))).view(np.uint32)
    return words, scales.astype(np.uint8)


def _unpacked(words: np.ndarray, elem: str) -> np.ndarray:
    """uint32 words [rows, K/4] -> element values [rows, K] float32."""
    return np.ascontiguousarray(words).view(np_dtype(elem)).astype(np.float32)


def swizzle(values: np.ndarray) -> np.ndarray:
    """[rows, K] -> [K/4, rows*4] with out[k // 4, 4r + k % 4] = values[r, k] (the seed's swizzled layout)."""
    rows, k = values.shape
    return np.ascontiguousarray(values.reshape(rows, k // 4, 4).transpose(1, 0, 2).reshape(k // 4, rows * 4))


def unswizzle(values: np.ndarray) -> np.ndarray:
    """The inverse of `swizzle`."""
    k4, rows4 = values.shape
    return np.ascontiguousarray(values.reshape(k4, rows4 // 4, 4).transpose(1, 0, 2).reshape(rows4 // 4, 4 * k4))


def make_inputs(plan: MlpPlan, tokens: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Seeded grid inputs by kernel argument name."""
    dtype = np_dtype(plan.in_dtype)
    hidden, inter = plan.hidden, plan.intermediate
    x = rng.integers(-8, 9, size=(tokens, hidden)) / 8.0
    gate_up = rng.integers(-8, 9, size=(2 * inter, hidden)) * 2.0 ** -_weight_exponent(hidden)
    down = rng.integers(-8, 9, size=(hidden, inter)) * 2.0 ** -_weight_exponent(inter)
    inputs = {}
    if plan.input_mx:
        inputs["x"], inputs["x_scales"] = _packed(x, plan.elem)
    else:
        inputs["x"] = (swizzle(x) if plan.x_swizzled else x).astype(dtype)
    if plan.weights_mx:
        inputs["gate_up"], inputs["gate_up_scales"] = _packed(gate_up, plan.elem)
        inputs["down"], inputs["down_scales"] = _packed(down, plan.elem)
    elif plan.weights_swizzled:
        inputs["gate_up"], inputs["down"] = swizzle(gate_up).astype(dtype), swizzle(down).astype(dtype)
    else:
        inputs["gate_up"], inputs["down"] = gate_up.astype(dtype), down.astype(dtype)
    return inputs


def _logical(inputs: dict[str, np.ndarray], name: str, plan: MlpPlan) -> tuple[np.ndarray, np.ndarray | None]:
    scales = inputs.get(f"{name}_scales")
    if scales is None:
        swizzled = plan.x_swizzled if name == "x" else plan.weights_swizzled
        values = inputs[name].astype(np.float32)
        return (unswizzle(values) if swizzled else values), None
    return _unpacked(inputs[name], plan.elem), scales


def _reference(plan: MlpPlan, inputs: dict[str, np.ndarray], out_dtype: str) -> dict[str, np.ndarray]:
    """dense_mlp_mx on the logical (unswizzled, unpacked) inputs, its outputs rounded to out_dtype."""
    x, xs = _logical(inputs, "x", plan)
    gu, gus = _logical(inputs, "gate_up", plan)
    dn, dns = _logical(inputs, "down", plan)
    return dense_mlp_mx(
        x,
        gu,
        dn,
        act=plan.act,
        elem=plan.elem,
        h_dtype=plan.in_dtype,
        out_dtype=out_dtype,
        x_scales=xs,
        gate_up_scales=gus,
        down_scales=dns,
    )


def expected(plan: MlpPlan, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The reference outputs the kernel returns, by name."""
    ref = _reference(plan, inputs, plan.out_dtype)
    return {name: ref[name] for name in output_names(plan)}


def output_names(plan: MlpPlan) -> tuple[str, ...]:
    """The names of the kernel's returned tensors, in return order."""
    return ("out", *(CHECKPOINT_OUTPUTS[name] for name in plan.checkpoints))


def run(kernel, plan: MlpPlan, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run the kernel in the simulator on trn3; outputs by name."""
    from moegen.sim import last_run, simulate

    order = ("x", "x_scales", "gate_up", "gate_up_scales", "down", "down_scales")
    args = [inputs[name] for name in order if name in inputs]
    launched = kernel[plan.lnc] if plan.lnc > 1 else kernel
    results = simulate(launched, target=plan.target)(*args)
    last_run().assert_wrote_only()
    if not isinstance(results, (tuple, list)):
        results = (results,)
    names = output_names(plan)
    if len(results) != len(names):
        raise AssertionError(f"the kernel returned {len(results)} tensors, expected {len(names)}: {', '.join(names)}")
    return {name: np.asarray(value) for name, value in zip(names, results)}


def tolerance(plan: MlpPlan, name: str) -> str:
    """Every output within the rounding of its dtype: the reference rounds where the kernel rounds."""
    return plan.out_dtype


# Relative spacing of the MXFP8 elements in the top binade quantize_mx fills (e4m3fn [128, 256) in
# steps of 16; e5m2 [2^14, 2^15) in steps of 2^12): one element step = 2^(floor(log2 amax) - k).
ELEMENT_STEP_SHIFT = {"e4m3fn": 3, "e5m2": 2}


def data_tolerance(plan: MlpPlan, name: str, inputs: dict[str, np.ndarray]) -> Tolerance | None:
    """`out`: its dtype's tolerance plus, per token row, one MXFP8 element step of that row's largest h
    value times max |W_down|. act(g) is computed by the engine (an approximation on hardware, fp32 in
    the simulator) and differs from the reference's in the last bits; h is stored in bf16 and
    quantized again for the down projection, so a rare h that lands on the other side of an fp8
    rounding boundary moves its element by one step. Other outputs: their dtype's tolerance (None)."""
    if name != "out":
        return None
    ref = _reference(plan, inputs, "fp32")
    dn, dns = _logical(inputs, "down", plan)
    if dns is not None:
        dn = dequantize_mx(dn, dns, axis=-1)
    amax = np.max(np.abs(ref["hidden"]), axis=1, keepdims=True).astype(np.float64)
    _, exp = np.frexp(np.where(amax > 0, amax, 1.0))
    step = np.where(amax > 0, np.exp2(exp - 1 - ELEMENT_STEP_SHIFT[plan.fp8]), 0.0)
    base = TOLERANCES[plan.out_dtype]
    return Tolerance(base.rtol, base.atol + step * float(np.max(np.abs(dn))))


def algorithmic_macs(plan: MlpPlan, tokens: int) -> int:
    """`moegen profile`: gate, up and down projections of S tokens, S x 3 x H x I."""
    return tokens * 3 * plan.hidden * plan.intermediate


def minimum_hbm_bytes(plan: MlpPlan, inputs: dict[str, np.ndarray], trace: list, output_mems: list) -> int:
    """`moegen profile`: every input once (x, weights, scales) and each returned tensor once (out [S, H],
    each checkpoint [S, I]), sized from the plan (trace, output_mems unused); the HBM scratch of
    intermediate=hbm is not needed."""
    tokens = inputs["x"].shape[0] if not plan.x_swizzled or plan.input_mx else inputs["x"].shape[1] // 4
    returned = tokens * (plan.hidden + plan.intermediate * len(plan.checkpoints)) * np_dtype(plan.out_dtype).itemsize
    return sum(a.nbytes for a in inputs.values()) + returned
