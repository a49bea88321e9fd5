"""`moegen tune`: the candidate decode modes of a tkg kernel, each generated and modeled at one token count.

For every tkg kernel of a spec (or the one named), the same kernel with mode=selective, mode=distinct
and mode=all_experts (with mask_unselected when the expert scales by affinity) is planned; a mode the
plan refuses is listed with its reason, the others are rendered into a scratch folder, run on the
verify harness's seeded inputs and modeled by moegen.perf. Every time printed is **modeled**.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from moegen.codegen.render import render
from moegen.compiler import families, load_spec
from moegen.plan.common import KernelPlan, PlanError, check_budget

CANDIDATE_MODES = ("selective", "distinct", "all_experts")


@dataclass(frozen=True)
class Candidate:
    """One mode of a kernel: its plan (None when refused) and the reason it was refused."""

    mode: str
    plan: KernelPlan | None
    refused: str = ""


def candidates(spec, variant) -> list[Candidate]:
    """The kernel `variant` of `spec` in each candidate mode (its other options kept)."""
    family = families()[variant.family]

    def planned(options: dict) -> KernelPlan:
        plan = family.plan(spec.layer, replace(variant, options=options))
        check_budget(plan)
        return plan

    found = []
    for mode in CANDIDATE_MODES:
        tries = [dict(variant.options, mode=mode, mask_unselected=False)]
        if mode == "all_experts":  # masked when the affinities scale (else there is nothing to mask)
            tries = [dict(variant.options, mode=mode, mask_unselected=True, eager=False), {**tries[0], "eager": False}]
        problems: list[str] = []
        for options in tries:
            try:
                found.append(Candidate(mode, planned(options)))
                break
            except PlanError as error:
                problems = [message for _, message in error.problems]
        else:
            found.append(Candidate(mode, None, "; ".join(problems)))
    return found


def tune(spec_path: Path, variant_name: str | None, tokens: int, out=print) -> int:
    """Print the candidate table of each tkg kernel; returns the number of kernels tuned."""
    from moegen.verify.profile import profile_plan

    spec = load_spec(spec_path)
    chosen = [v for v in spec.variants if v.family == "tkg" and variant_name in (None, v.name)]
    with tempfile.TemporaryDirectory(prefix="moegen_tune_") as scratch:
        for variant in chosen:
            rows = []
            for candidate in candidates(spec, variant):
                if candidate.plan is None:
                    rows.append((float("inf"), candidate.mode, f"refused: {candidate.refused}"))
                    continue
                path = Path(scratch) / f"{variant.name}_{candidate.mode}.py"
                path.write_text(render(candidate.plan, str(spec_path), spec.text))
                report, _, _ = profile_plan(candidate.plan, path, tokens)
                ratio = report.hbm_bytes / max(1, report.hbm_min_bytes)
                macs = report.macs_issued / max(1, report.macs_algorithmic)
                rows.append(
                    (
                        report.modeled_us,
                        candidate.mode,
                        f"{report.modeled_us:10.1f} us  roofline {report.roofline_fraction:.3f}  "
                        f"HBM {ratio:.2f}x min  MACs {macs:.2f}x",
                    )
                )
            rows.sort(key=lambda row: (row[0], CANDIDATE_MODES.index(row[1])))
            out(f"{variant.name} (mode={variant.options['mode']} in the spec), T={tokens}, trn2, modeled:")
            for rank, (_, mode, text) in enumerate(rows):
                mark = "chosen   " if rank == 0 else ("runner-up" if rank == 1 and rows[1][0] < float("inf") else "")
                out(f"  {mark:9} {mode:12} {text}")
    return len(chosen)
