"""`moegen profile`: run a generated kernel on the verify harness's inputs and model its trace.

The knowledge the timeline model must not have comes from each family's verify harness
(`moegen/verify/<family>.py`): `algorithmic_macs(plan, tokens)`, the multiply-accumulates the math needs,
and optionally `minimum_hbm_bytes(plan, inputs, trace, output_mems)`, the HBM bytes any kernel must move (absent or
None: every distinct HBM byte the kernel touched, once). A kernel planned for trn3 (it may use
Trainium3-only instructions: nc_matmul_mx, quantize_mx) is not modeled on the trn2 cost table:
`ProfileError` says so.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from moegen.plan.common import KernelPlan
from moegen.verify import DEFAULT_SEED, default_tokens, harness
from moegen.verify.work import needed_experts

__all__ = ["ProfileError", "algorithmic_macs", "minimum_hbm_bytes", "needed_experts", "profile_plan"]


class ProfileError(Exception):
    """A kernel that cannot be profiled on the requested target (the message says why)."""


def algorithmic_macs(plan: KernelPlan, tokens: int) -> int:
    """Multiply-accumulates the math of `plan` needs at `tokens` (its family harness's rule)."""
    return int(harness(plan.family).algorithmic_macs(plan, tokens))


def minimum_hbm_bytes(plan: KernelPlan, inputs: dict, trace: list, output_mems: list) -> int | None:
    """The HBM minimum of the family's harness, or None (the model's default: every byte touched once).
    output_mems: trace mem keys of the HBM tensors the kernel returned (`RunResult.output_mems`)."""
    rule = getattr(harness(plan.family), "minimum_hbm_bytes", None)
    return rule(plan, inputs, trace, output_mems) if rule else None


def check_target(plan: KernelPlan, target: str) -> None:
    """Refuse to model a kernel planned for trn3 on the trn2 cost table."""
    if plan.target == "trn3" and target == "trn2":
        raise ProfileError(
            f"{plan.kernel_name}: planned for trn3 (it may use Trainium3-only instructions such as nc_matmul_mx "
            "or quantize_mx, and trn3's SBUF size); a trn2 figure would describe a kernel trn2 cannot run: "
            "use --target trn3"
        )


def profile_plan(
    plan: KernelPlan,
    kernel_path: Path,
    tokens: int | None = None,
    target: str = "trn2",
    seed: int = DEFAULT_SEED,
    experts_used: int | str | None = None,
):
    """(report, simulation seconds, model seconds) of one generated kernel on seeded inputs.
    experts_used: route over this many experts, "all" = every one (cte only; default: the harness's routing
    pool, which narrows to 2K experts when all weights exceed its memory budget)."""
    import moegen.perf as perf
    from moegen import sim

    check_target(plan, target)
    family = harness(plan.family)
    module = sim.load_module(kernel_path)
    kernel = getattr(module, plan.kernel_name)
    tokens = tokens or default_tokens(plan)
    if experts_used is not None and plan.family != "cte":
        raise ProfileError(f"{plan.kernel_name}: experts used applies to cte kernels, not {plan.family}")
    if experts_used == "all":
        experts_used = plan.global_experts
    options = {} if experts_used is None else {"experts_used": experts_used}
    inputs = family.make_inputs(plan, tokens, np.random.default_rng(seed), **options)
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
        hbm_min_bytes=minimum_hbm_bytes(plan, inputs, run.trace, run.output_mems),
        macs_algorithmic=algorithmic_macs(plan, tokens),
    )
    return report, simulated, time.perf_counter() - start
