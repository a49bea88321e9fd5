"""Router harness for `moegen verify` and the router tests (see moegen/verify/__init__.py).

Inputs sit on a grid that makes every logit exact in fp32 whatever the summation order: x holds
multiples of 1/8 in [-1, 1], w multiples of 2^-s in [-16, 16] * 2^-s with s chosen so that the logits
have a standard deviation near 1, and the bias a multiple of 2^-s too. Each product is a multiple of
2^-(s+3) and |logit| <= 16 H 2^-s, so a logit needs log2(16 H) + 3 < 24 significant bits (H < 2^17).
The kernel's fp32 PSUM then holds the reference's logits bit for bit, and the selected experts can be
compared exactly.
"""

from __future__ import annotations

import math

import numpy as np

from moegen.plan.router import RouterPlan
from moegen.reference import np_dtype, round_to, router_topk

OUTPUT_NAMES = ("router_logits", "expert_index", "expert_affinities", "expert_affinities_eager")


def weight_exponent(hidden: int) -> int:
    """s such that logits of grid inputs have a standard deviation near 1 (see the module docstring)."""
    return max(0, round(math.log2(5.7 * math.sqrt(hidden))))


def make_inputs(
    plan: RouterPlan, tokens: int, rng: np.random.Generator, *, ties: bool = False
) -> dict[str, np.ndarray]:
    """Seeded grid inputs by kernel argument name. ties=True makes every row of w repeat a few values
    across experts, so that many tokens have equal logits (and scores) for several experts."""
    dtype = np_dtype(plan.in_dtype)
    s = weight_exponent(plan.hidden)
    x = rng.integers(-8, 9, size=(tokens, plan.hidden)) / 8.0
    if ties:
        distinct = rng.integers(-16, 17, size=(plan.hidden, max(1, plan.experts // 4)))
        w = distinct[:, rng.integers(0, distinct.shape[1], size=plan.experts)] * 2.0**-s
    else:
        w = rng.integers(-16, 17, size=(plan.hidden, plan.experts)) * 2.0**-s
    inputs = {
        "x": (x if plan.x_layout == "th" else x.T).astype(dtype),
        "w": w.astype(dtype),
    }
    if plan.w_bias:
        inputs["w_bias"] = (rng.integers(-16, 17, size=(plan.experts,)) * 2.0**-s).astype(dtype)
    if plan.selection_bias:
        inputs["selection_bias"] = rng.uniform(-0.25, 0.25, size=(plan.experts,)).astype(np.float32)
    return inputs


def expected(plan: RouterPlan, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The reference outputs the kernel returns, rounded to the kernel's output dtype."""
    logits, index, affinities, eager = router_topk(
        inputs["x"].astype(np.float32),
        inputs["w"].astype(np.float32),
        inputs["w_bias"].astype(np.float32) if plan.w_bias else None,
        act_fn=plan.act,
        k=plan.top_k,
        x_layout=plan.x_layout,
        router_pre_norm=plan.pre_norm,
        norm_topk_prob=plan.renormalize,
        selection_bias=inputs.get("selection_bias"),
        n_group=plan.n_group,
        topk_group=plan.topk_group,
        group_score=plan.group_score or "top2_sum",
        routed_scaling_factor=plan.scaling_factor,
        return_eager_affi=True,
        affinities=plan.affinities,
    )
    out = {}
    if plan.store_logits:
        out["router_logits"] = round_to(logits, plan.out_dtype)
    out["expert_index"] = index.astype(np.int32)
    out["expert_affinities"] = round_to(affinities, plan.out_dtype)
    if plan.eager:
        out["expert_affinities_eager"] = round_to(eager, plan.out_dtype)
    return out


def output_names(plan: RouterPlan) -> tuple[str, ...]:
    """The names of the kernel's returned tensors, in return order."""
    return tuple(
        name
        for name in OUTPUT_NAMES
        if (name != "router_logits" or plan.store_logits) and (name != "expert_affinities_eager" or plan.eager)
    )


def run(kernel, plan: RouterPlan, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run the kernel in the simulator, on the plan's target (its limits are checked); outputs by name."""
    from moegen.sim import simulate

    args = [inputs["x"], inputs["w"]]
    if plan.w_bias:
        args.append(inputs["w_bias"])
    if plan.selection_bias:
        args.append(inputs["selection_bias"])
    launched = kernel[plan.lnc] if plan.lnc > 1 else kernel
    results = simulate(launched, target=plan.target, trace=False)(*args)  # trace only under sim.recording()
    if not isinstance(results, (tuple, list)):
        results = (results,)
    names = output_names(plan)
    if len(results) != len(names):
        raise AssertionError(f"the kernel returned {len(results)} tensors, expected {len(names)}: {', '.join(names)}")
    return {name: np.asarray(value) for name, value in zip(names, results)}


def tolerance(plan: RouterPlan, name: str) -> str:
    """Indices exactly; float outputs within the output dtype's rounding."""
    return "exact" if name == "expert_index" else plan.out_dtype


def algorithmic_macs(plan: RouterPlan, tokens: int) -> int:
    """`moegen profile`: the router's logits, T x H x E (its HBM minimum is every byte touched once)."""
    return tokens * plan.hidden * plan.experts
