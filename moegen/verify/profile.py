"""`moegen profile`: run a generated kernel on the verify harness's inputs and model its trace.

This is where the MoE knowledge the timeline model must not have comes in: the algorithmic MACs
(each token times its K experts, or the router's T x H x E) from the plan, and the minimum HBM traffic
(the weights of the experts some token selects, once; every other input and each output once) from the
inputs and the trace, passed to `moegen.perf`.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from moegen.plan.common import KernelPlan
from moegen.verify import DEFAULT_SEED, default_tokens, harness


def algorithmic_macs(plan: KernelPlan, tokens: int) -> int:
    """Multiply-accumulates the math needs: router T x H x E; an MoE layer T x K x (gate/up + down) =
    T x K x 3 x H x I (2 x H x I without the gate), scaled by the share of experts local to this rank."""
    if plan.family == "router":
        return tokens * plan.hidden * plan.experts
    projections = 3 if getattr(plan.mlp, "gated", True) else 2
    local = getattr(plan, "local_experts", plan.experts) / plan.experts
    return int(round(tokens * plan.top_k * projections * plan.hidden * plan.intermediate * local))


PER_EXPERT_WORDS = ("weight", "bias", "scale")


def needed_experts(plan: KernelPlan, inputs: dict) -> tuple[int, int] | None:
    """(experts some token selects on this rank, experts per-expert arrays hold), or None (router)."""
    if plan.family == "router" or "expert_index" not in inputs:
        return None
    held = getattr(plan, "local_experts", plan.experts)
    ids = np.unique(np.asarray(inputs["expert_index"]))
    if held < plan.experts:  # EP: the rank the harness runs (the last one) holds a window of experts
        first = (plan.ep - 1) * held
        ids = ids[(ids >= first) & (ids < first + held)]
    return int(ids.size), held


def minimum_hbm_bytes(plan: KernelPlan, inputs: dict, trace: list) -> int | None:
    """HBM bytes any kernel must move: each needed expert's weights (and biases, scales) once, every other
    input once, and what the kernel writes to its own HBM tensors once. None: the model's default."""
    import moegen.perf as perf

    need = needed_experts(plan, inputs)
    if need is None:
        return None
    used, held = need
    touched = perf.report.touched_hbm_bytes(trace)
    total = 0
    for mem, nbytes in touched.items():
        name = mem.split(":")[1]
        array = inputs.get(name)
        if array is None:  # a tensor the kernel allocated (its output): as much as it touched
            total += nbytes
        elif array.ndim and array.shape[0] == held and any(w in name for w in PER_EXPERT_WORDS):
            total += array.nbytes * used // held
        else:
            total += array.nbytes
    return total


def profile_plan(
    plan: KernelPlan,
    kernel_path: Path,
    tokens: int | None = None,
    target: str = "trn2",
    seed: int = DEFAULT_SEED,
):
    """(report, simulation seconds, model seconds) of one generated kernel on seeded inputs."""
    import moegen.perf as perf
    from moegen import sim

    family = harness(plan.family)
    module = sim.load_module(kernel_path)
    kernel = getattr(module, plan.kernel_name)
    tokens = tokens or default_tokens(plan)
    inputs = family.make_inputs(plan, tokens, np.random.default_rng(seed))
    start = time.perf_counter()
    with sim.recording():
        family.run(kernel, plan, inputs)
    simulated = time.perf_counter() - start
    run = sim.last_run()
    start = time.perf_counter()
    report = perf.model(
        run.trace,
        target,
        run.lnc,
        hbm_min_bytes=minimum_hbm_bytes(plan, inputs, run.trace),
        macs_algorithmic=algorithmic_macs(plan, tokens),
    )
    return report, simulated, time.perf_counter() - start
