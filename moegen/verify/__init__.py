"""`moegen verify`: run generated kernels in the simulator and compare with the reference.

Each family has a harness module `moegen/verify/<family>.py` with:
- `make_inputs(plan, tokens, rng) -> dict[str, np.ndarray]`: seeded random inputs at a test
  shape, snapped to the dtypes the kernel reads;
- `expected(plan, inputs) -> dict[str, np.ndarray]`: the reference outputs by name;
- `run(kernel, plan, inputs) -> dict[str, np.ndarray]`: the kernel's outputs by the same names
  (it calls `moegen.sim.simulate`, with `kernel[2]` for LNC=2);
- `tolerance(plan, name) -> str`: the compare kind of an output (`moegen.compare`); a harness may
  also define `data_tolerance(plan, name, inputs) -> Tolerance | None`, a tolerance that depends on
  the inputs (None: use `tolerance`).
This module is where the compiler, the simulator and the reference meet.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moegen.compare import compare
from moegen.plan.common import KernelPlan

DEFAULT_SEED = 20261123


@dataclass(frozen=True)
class OutputCheck:
    name: str
    max_abs: float
    max_rel: float
    ok: bool
    detail: str
    criterion: str = ""  # what each element is judged by, e.g. "bf16: |got - want| <= 0.0156 + 0.0156*|want|"


def criterion(kind: str, rtol: float, atol: float | np.ndarray) -> str:
    """The per-element pass rule of a comparison, in words: max_rel alone does not decide it.

    atol is a number, or an array of per-element allowances (shown by its largest value)."""
    if np.ndim(atol):
        return f"{kind}: |got - want| <= atol[i] (per element, up to {float(np.max(atol)):.3g}) + {rtol:.3g}*|want|"
    if rtol == 0 and atol == 0:
        return f"{kind}: got == want"
    return f"{kind}: |got - want| <= {atol:.3g} + {rtol:.3g}*|want|"


def harness(family: str):
    return importlib.import_module(f"moegen.verify.{family}")


def default_tokens(plan: KernelPlan) -> int:
    return getattr(plan, "verify_tokens", None) or 4


def verify_plan(
    plan: KernelPlan, kernel_path: Path, tokens: int | None = None, seed: int = DEFAULT_SEED
) -> list[OutputCheck]:
    """Run one generated kernel on seeded inputs and compare every output per element."""
    from moegen import sim

    family = harness(plan.family)
    module = sim.load_module(kernel_path)
    kernel = getattr(module, plan.kernel_name)
    rng = np.random.default_rng(seed)
    inputs = family.make_inputs(plan, tokens or default_tokens(plan), rng)
    want = family.expected(plan, inputs)
    got = family.run(kernel, plan, inputs)
    checks = []
    data_tolerance = getattr(family, "data_tolerance", None)
    for name in want:
        kind = data_tolerance(plan, name, inputs) if data_tolerance else None
        result = compare(name, got[name], want[name], kind=kind or family.tolerance(plan, name))
        checks.append(
            OutputCheck(
                name,
                float(result.max_abs),
                float(result.max_rel),
                bool(result.ok),
                str(result),
                criterion(result.kind, result.rtol, result.atol),
            )
        )
    return checks


def verify_plans(
    plans: list[KernelPlan], kernel_dir: Path, out: Callable[[str], None] = print, tokens: int | None = None
) -> bool:
    """Verify each plan's generated kernel in kernel_dir; print a line per variant and output."""
    all_ok = True
    for index, plan in enumerate(plans, 1):
        path = kernel_dir / f"{plan.kernel_name}.py"
        start = time.perf_counter()
        out(f"[{index}/{len(plans)}] {plan.kernel_name} ({plan.family}) ...")
        try:
            checks = verify_plan(plan, path, tokens)
        except Exception as error:  # a kernel that crashes is a failed verification, reported as such
            out(f"    FAIL {type(error).__name__}: {error}")
            all_ok = False
            continue
        for check in checks:
            status = "ok  " if check.ok else "FAIL"
            out(
                f"    {status} {check.name:<24} max_abs={check.max_abs:.3e} max_rel={check.max_rel:.3e}"
                f"  [per element, {check.criterion}]" + ("" if check.ok else f"  {check.detail}")
            )
            all_ok &= check.ok
        out(f"    {time.perf_counter() - start:.1f}s")
    return all_ok
