"""`moegen profile`: run a generated kernel on the verify harness's inputs and model its trace.

This is where the MoE knowledge the timeline model must not have comes in: the algorithmic MACs
(each token times its K experts, or the router's T x H x E) are computed from the plan here and passed
to `moegen.perf`. The HBM minimum is the model's default: every distinct HBM byte the kernel touched,
once (the weights of the experts it needs, its inputs and outputs).
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
    report = perf.model(run.trace, target, run.lnc, macs_algorithmic=algorithmic_macs(plan, tokens))
    return report, simulated, time.perf_counter() - start
