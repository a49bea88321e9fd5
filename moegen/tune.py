"""`moegen tune`: plan choices made by the timeline model (every time printed is **modeled**).

For each tkg kernel of a spec (or the one named), the options the spec leaves at `auto` are searched one
axis at a time, in a fixed order (mode, shard, gate_up_loop, weight_buffers, down_columns): each value of
the axis is planned with the best values found so far for the earlier axes (a refused plan is listed with
its reason), rendered into a scratch folder, run on the verify harness's seeded inputs and modeled by
moegen.perf at T=1 and at the kernel's token bound (or the one `--tokens` names); the least summed time stays (ties: the earlier value). A kernel that names its
mode is still shown the modes (advice), unless it is `tuned`. The whole table is printed fastest first
("chosen", "runner-up"); `--write` records the choice of each `tuned` kernel in SPEC.choices.json
(moegen/choices.py), which builds read without simulating anything.

A coordinate search, not the full product: 3 modes x 3 shards x 2 loops x 3 depths x 2 widths would be
108 simulations per kernel; the axes are nearly independent (the mode sets the weight bytes, the rest
how fast they stream), so ~13 simulations find the same optimum on the specs we have.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from moegen import choices
from moegen.codegen.render import render
from moegen.compiler import families, load_spec
from moegen.plan.common import KernelPlan, PlanError, check_budget

CANDIDATE_MODES = ("selective", "distinct", "all_experts")
# (option, candidate option sets); an axis is searched when the spec leaves its option at auto
TKG_AXES = (
    (
        "mode",
        (
            {"mode": "selective"},
            {"mode": "distinct"},
            ({"mode": "all_experts", "mask_unselected": True}, {"mode": "all_experts"}),  # masked if it plans
        ),
    ),
    ("shard", ({"shard": "intermediate"}, {"shard": "hidden"}, {"shard": "tokens"})),
    ("gate_up_loop", ({"gate_up_loop": "h_outer"}, {"gate_up_loop": "i_outer"})),
    ("weight_buffers", ({"weight_buffers": 2}, {"weight_buffers": 4}, {"weight_buffers": 8})),
    ("down_columns", ({"down_columns": 1024}, {"down_columns": 2048})),
)


@dataclass(frozen=True)
class Candidate:
    """One option set of a kernel: its plan (None when refused) and the reason it was refused."""

    options: dict
    plan: KernelPlan | None
    refused: str = ""
    applied: dict | None = None  # every option that differs from the spec's (what a build applies)

    @property
    def label(self) -> str:
        return " ".join(f"{k}={str(v).lower()}" for k, v in sorted(self.options.items())) or "(spec)"


def axes(variant) -> list[tuple[str, tuple[dict, ...]]]:
    """The axes searched for `variant`: options it leaves at auto (mode also as advice when untuned)."""
    found = []
    for option, values in TKG_AXES:
        value = variant.options.get(option)
        if option == "mode":
            if value == "auto" or not variant.options.get("tuned"):
                found.append((option, values))
        elif option == "shard":
            if variant.options.get("lnc") == 2 and value == "auto":
                found.append((option, values))
        elif value in ("auto", None):  # weight_buffers / down_columns: unset means the plan's rule
            found.append((option, values))
    return found


def plan_candidate(spec, variant, options: dict) -> Candidate:
    """The kernel with `options` over its spec options (the tuned flag dropped: nothing to resolve)."""
    family = families()[variant.family]
    merged = {**variant.options, "tuned": False, **options}
    if merged.get("mode") != "all_experts":
        merged["mask_unselected"] = options.get("mask_unselected", False)
    else:
        merged["eager"] = False
    try:
        plan = family.plan(spec.layer, replace(variant, options=merged))
        check_budget(plan)
    except PlanError as error:
        return Candidate(options, None, "; ".join(message for _, message in error.problems))
    spec_options = variant.options
    applied = {k: v for k, v in merged.items() if k != "tuned" and v != spec_options.get(k)}
    applied = {k: v for k, v in applied.items() if not (v is False and not spec_options.get(k))}  # unset flags
    return Candidate(options, plan, applied=applied)


@dataclass(frozen=True)
class Row:
    """A candidate's modeled figures: the sum of its times over the token counts (the objective), and
    per token count (us, roofline fraction, HBM actual / minimum)."""

    candidate: Candidate
    modeled_us: float = float("inf")
    per_tokens: tuple[tuple[int, float, float, float], ...] = ()

    def record(self) -> dict:
        return {
            "options": self.candidate.options,
            "modeled_us": round(self.modeled_us, 1),
            "per_tokens": [
                {"tokens": t, "modeled_us": round(us, 1), "roofline": round(r, 3), "hbm_actual_over_min": round(h, 2)}
                for t, us, r, h in self.per_tokens
            ],
        }

    def text(self) -> str:
        return "  ".join(f"T={t}: {us:8.1f} us roofline {r:.3f} HBM {h:.2f}x" for t, us, r, h in self.per_tokens)


def search(spec, spec_path: Path, variant, tokens: tuple[int, ...], scratch: Path) -> list[Row]:
    """Every candidate the coordinate search modeled (and every refused one), fastest first."""
    from moegen.verify.profile import profile_plan

    rows: dict[str, Row] = {}
    best: dict = {}
    for _, values in axes(variant):
        axis_rows = []
        for value in values:
            for alternative in value if isinstance(value, tuple) else (value,):  # the first that plans
                candidate = plan_candidate(spec, variant, {**best, **alternative})
                if candidate.plan is not None:
                    break
            if candidate.plan is None:
                key = candidate.label
                rows.setdefault(key, Row(candidate))
            else:  # candidates that generate the same kernel are one candidate (the first label)
                key = render(candidate.plan, str(spec_path), spec.text)
            if key not in rows:
                path = scratch / f"{variant.name}_{len(rows)}.py"
                path.write_text(key)
                figures = []
                for count in tokens:
                    report, _, _ = profile_plan(candidate.plan, path, count)
                    ratio = report.hbm_bytes / max(1, report.hbm_min_bytes)
                    figures.append((count, report.modeled_us, report.roofline_fraction, ratio))
                rows[key] = Row(candidate, sum(us for _, us, _, _ in figures), tuple(figures))
            axis_rows.append(rows[key])
        winner = min(axis_rows, key=lambda row: row.modeled_us)  # min keeps the first of equals
        if winner.modeled_us < float("inf"):
            best = dict(winner.candidate.options)
    ordered = sorted(rows.values(), key=lambda row: row.modeled_us)  # stable: search order among equals
    return ordered


def tune(spec_path: Path, variant_name: str | None, tokens: int | None, out=print, write: bool = False) -> int:
    """Print the candidate table of each tkg kernel (and record tuned ones with `write`); returns the
    number of kernels tuned."""
    spec = load_spec(spec_path)
    chosen = [v for v in spec.variants if v.family == "tkg" and variant_name in (None, v.name)]
    record = choices.load(spec_path) if write else {}
    kernels = record.setdefault("kernels", {}) if write else {}
    with tempfile.TemporaryDirectory(prefix="moegen_tune_") as scratch:
        for variant in chosen:
            counts = (tokens,) if tokens else tuple(sorted({1, variant.options["tokens"]}))
            rows = search(spec, spec_path, variant, counts, Path(scratch))
            names = ", ".join(name for name, _ in axes(variant)) or "nothing left at auto"
            at = "T=" + " + ".join(str(t) for t in counts)
            out(f"{variant.name} (mode={variant.options['mode']} in the spec), {at}, trn2, modeled; searched: {names}")
            for rank, row in enumerate(rows):
                if row.candidate.plan is None:
                    out(f"  {'refused':9} {row.candidate.label}: {row.candidate.refused}")
                    continue
                mark = "chosen" if rank == 0 else ("runner-up" if rank == 1 else "")
                out(f"  {mark:9} {row.candidate.label:55} {row.modeled_us:9.1f} us  ({row.text()})")
            if write and variant.options.get("tuned") and rows and rows[0].candidate.plan is not None:
                kernels[variant.name] = {
                    "fingerprint": choices.fingerprint(spec.layer, variant),
                    "tokens": list(counts),
                    "target": "trn2",
                    "chosen": rows[0].candidate.applied,
                    "table": [row.record() for row in rows if row.candidate.plan is not None],
                }
                out(f"  recorded in {choices.choices_path(spec_path)}")
    if write:
        choices.choices_path(spec_path).write_text(choices.dump(record))
    return len(chosen)
