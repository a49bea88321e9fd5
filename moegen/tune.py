"""`moegen tune`: plan choices made by the timeline model (every time printed is **modeled**).

For each tkg kernel and each `tuned` cte kernel of a spec, or the one kernel named, the
options the spec leaves at `auto` are searched one axis at a time, in a fixed order (tkg: mode, shard,
gate_up_loop, gate_up_split, weight_buffers, down_columns; cte: shard, block, loop, weights, then, when the best plan
so far streams its weights, tail, weight_buffers, gate_up_tiles, down_columns): each value of the axis is
planned with the best values found so far for the earlier axes (a refused plan is listed with its
reason), rendered into a scratch folder, run on the verify harness's seeded inputs and modeled by
moegen.perf at the token counts (tkg: T=1 and the kernel's token bound; cte: its `tune_tokens`, 4096 by
default; or the one `--tokens` names); the least summed time stays (ties: the earlier value).
Candidates that generate the same kernel are one row. A tkg kernel that names its mode is still shown the
modes, and an untuned cte kernel named by `--variant` every cte axis (advice), unless it is `tuned`. The
whole table is printed fastest first ("chosen", "runner-up"); `--write` records the choice of each
`tuned` kernel in SPEC.choices.json (moegen/choices.py), which builds read without simulating anything.

A coordinate search, not the full product: 3 modes x 3 shards x 2 loops x 3 depths x 2 widths would be
108 simulations per tkg kernel; the axes are nearly independent (the mode sets the weight bytes, the rest
how fast they stream), so ~13 simulations find the same optimum on the specs we have. A cte kernel at
LNC 2 has at most 14 distinct candidates, so at most 14 simulations per token count (each axis's value equal
to the best so far is not simulated again; refused candidates are not simulated): 7 for shard, block, loop
and weights, then 1 for the tail value the plan's rule did not take (tail tiles, or none and the final sum the
plan takes then), 1 for weight_buffers 3 (its widths refitted by the rule), at most 3 for gate_up_tiles 2, 4,
8 and 2 for down_columns 256, 512 (each axis also holds the plan's own value, kept on ties; it is simulated
already), against 32 x 2 x 2 x 4 x 3 = 1536 in the product. A real-shape prefill simulation takes minutes on a loaded machine."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from moegen import choices
from moegen.codegen.render import render
from moegen.compiler import families, load_spec
from moegen.plan.common import KernelPlan, PlanError, check_budget
from moegen.plan.cte import AUTO_RULES, STREAM_OPTIONS

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
    ("gate_up_split", ({"gate_up_split": "intermediate"}, {"gate_up_split": "hidden"})),
    ("weight_buffers", ({"weight_buffers": 2}, {"weight_buffers": 4}, {"weight_buffers": 8})),
    ("down_columns", ({"down_columns": 1024}, {"down_columns": 2048})),
)
# cte (prefill): the LNC split first (it sets each core's share of the work), then the block size, the
# loop, and whether an expert's weights stay resident (one buffer) or stream in chunks.
# Block 128..1024: the option's legal range (the plan refuses one whose buffers do not fit SBUF).
# Streamed weights (searched only when the best plan so far streams them): the tail tiles first (one more token
# tile in the block buffers narrows the widths that fit, and the final sum follows from the plan), then the copies
# per chunk, its chunk widths at the rule's (the widest that fits at that depth), then the gate/up and down widths.
CTE_AXES = (
    ("shard", ({"shard": "block"}, {"shard": "intermediate"})),
    ("block", ({"block": 128}, {"block": 256}, {"block": 512}, {"block": 1024})),
    ("loop", ({"loop": "static"}, {"loop": "hybrid"})),
    ("weights", ({"weights": "resident"}, {"weights": "stream"})),
    ("tail", ({"tail": "absorb"}, {"tail": "block"})),
    ("weight_buffers", ({"weight_buffers": 2}, {"weight_buffers": 3})),
    ("gate_up_tiles", ({"gate_up_tiles": 2}, {"gate_up_tiles": 4}, {"gate_up_tiles": 8})),
    ("down_columns", ({"down_columns": 256}, {"down_columns": 512})),
)
STREAMED_AXES = ("tail", *STREAM_OPTIONS)  # cte axes that only streamed weights have
TUNED_FAMILIES = ("tkg", "cte")


@dataclass(frozen=True)
class Candidate:
    """One option set of a kernel: its plan (None when refused) and the reason it was refused."""

    options: dict
    plan: KernelPlan | None
    refused: str = ""
    applied: dict | None = None  # every option that differs from the spec's (what a build applies)

    @property
    def label(self) -> str:
        if self.plan is not None and self.plan.family == "cte":  # the plan's values, rules resolved
            return cte_label(self.plan)
        return " ".join(f"{k}={str(v).lower()}" for k, v in sorted(self.options.items())) or "(spec)"


def cte_label(plan) -> str:
    """What the cte axes resolved to in `plan` (streamed weights: the chunk widths and copies the plan took)."""
    weights = "resident" if plan.resident_weights else f"stream {stream_label(plan)} tail={tail_value(plan)}"
    loop = "hybrid" if plan.hybrid else "static"
    return f"shard={plan.shard} block={plan.block} loop={loop} weights={weights}"


def stream_values(plan) -> dict:
    """The streamed-weight options `plan` resolved to (gate/up I tiles per chunk, down columns, copies)."""
    return {
        "weight_buffers": plan.stream_depth,
        "gate_up_tiles": max(tiles for _, _, _, tiles in plan.gate_up_chunks),
        "down_columns": plan.down_cols,
    }


def stream_label(plan) -> str:
    return " ".join(f"{name}={value}" for name, value in stream_values(plan).items())


def tail_value(plan) -> str:
    """The `tail` option value `plan` resolved to: absorb (it runs tail tiles) or block."""
    return "absorb" if plan.absorb_tail else "block"


def axes(variant) -> list[tuple[str, tuple[dict, ...]]]:
    """The axes searched for `variant`: options it leaves at auto (mode also as advice when untuned; a cte
    kernel that is not tuned is shown every axis as advice)."""
    if variant.family == "cte":
        tuned = variant.options.get("tuned")
        return [
            (option, values)
            for option, values in CTE_AXES
            if (variant.options.get(option) == "auto" or not tuned)
            and (option != "shard" or variant["lnc"] == 2)
            and (option not in STREAMED_AXES or variant["weights"] != "resident")  # (resident: no chunks, no tails)
        ]
    found = []
    for option, values in TKG_AXES:
        value = variant.options.get(option)
        if option == "mode":
            if value == "auto" or not variant.options.get("tuned"):
                found.append((option, values))
        elif option in ("shard", "gate_up_split"):  # LNC=2 splits
            if variant.options.get("lnc") == 2 and value == "auto":
                found.append((option, values))
        elif value in ("auto", None):  # weight_buffers / down_columns: unset means the plan's rule
            found.append((option, values))
    return found


def start_values(variant) -> dict:
    """The values a search starts from: a cte kernel's searched options at the spec's values, or the rule's
    for those at auto, so every candidate (and so the recorded choice) names them and an untuned kernel's
    first candidate is its own plan; a tkg search starts from the spec's options."""
    if variant.family != "cte":
        return {}
    searched = {name for name, _ in axes(variant)}
    start = {name: variant.options.get(name) for name in AUTO_RULES if name in searched}
    return {name: AUTO_RULES[name] if value == "auto" else value for name, value in start.items()}


def plan_candidate(spec, variant, options: dict) -> Candidate:
    """The kernel with `options` over its spec options (the tuned flag dropped: nothing to resolve)."""
    family = families()[variant.family]
    merged = {**variant.options, "tuned": False, **options}
    if variant.family == "tkg":
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
    per token count (us, roofline fraction, HBM actual / minimum, bounding engine)."""

    candidate: Candidate
    modeled_us: float = float("inf")
    per_tokens: tuple[tuple[int, float, float, float, str], ...] = ()

    def record(self) -> dict:
        return {
            "options": self.candidate.options,
            **({"label": self.candidate.label} if self.candidate.plan.family == "cte" else {}),
            "modeled_us": round(self.modeled_us, 1),
            "per_tokens": [
                {
                    "tokens": t,
                    "modeled_us": round(us, 1),
                    "roofline": round(r, 3),
                    "hbm_actual_over_min": round(h, 2),
                    "bound": bound,
                }
                for t, us, r, h, bound in self.per_tokens
            ],
        }

    def text(self) -> str:
        return "  ".join(
            f"T={t}: {us:8.1f} us roofline {r:.3f} bound {bound} HBM {h:.2f}x" for t, us, r, h, bound in self.per_tokens
        )


def search(spec, spec_path: Path, variant, tokens: tuple[int, ...], scratch: Path) -> list[Row]:
    """Every candidate the coordinate search modeled (and every refused one), fastest first."""
    from moegen.verify.profile import profile_plan

    rows: dict[str, Row] = {}
    best = start_values(variant)
    best_plan = None
    kept: dict = {}  # values later axes keep spelled (a row's options are those of its first candidate)
    for name, values in axes(variant):
        if variant.family == "cte" and name in STREAMED_AXES:  # (tkg has its own weight_buffers / down_columns axes)
            best_plan = best_plan or plan_candidate(spec, variant, best).plan
            if best_plan is None or best_plan.resident_weights or best_plan.mx:
                continue  # not_searched() names it: no streamed weight chunks to size
            if name == "tail":  # the value the plan's rule took first (it wins ties; it is simulated already)
                values = tuple(sorted(values, key=lambda value: value["tail"] != tail_value(best_plan)))
            elif name != "weight_buffers":  # the widths the best plan fitted at its depth, so candidates name them
                resolved = stream_values(best_plan)
                best = {**{k: resolved[k] for k in STREAM_OPTIONS if variant.options.get(k) == "auto"}, **best}
            if name in best and {name: best[name]} not in values:  # the value the plan has now (first: wins ties)
                values = ({name: best[name]}, *values)
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
                    report, _, _ = profile_plan(candidate.plan, path, count, candidate.plan.target)
                    ratio = report.hbm_bytes / max(1, report.hbm_min_bytes)
                    figures.append((count, report.modeled_us, report.roofline_fraction, ratio, report.bound))
                rows[key] = Row(candidate, sum(figure[1] for figure in figures), tuple(figures))
            axis_rows.append(rows[key])
        winner = min(axis_rows, key=lambda row: row.modeled_us)  # min keeps the first of equals
        if winner.modeled_us < float("inf"):
            if name == "tail":  # kept for the later axes (tail=auto would yield to widths that fit only without it)
                kept["tail"] = tail_value(winner.candidate.plan)
            best, best_plan = {**winner.candidate.options, **kept}, winner.candidate.plan
    ordered = sorted(rows.values(), key=lambda row: row.modeled_us)  # stable: search order among equals
    return ordered


def not_searched(variant, rows: list[Row]) -> tuple[list[str], str]:
    """The streamed-weight axes the search skipped (the best plan keeps its weights resident, or streams MX
    slabs), and why."""
    stream_axes = [name for name, _ in axes(variant) if name in STREAMED_AXES]
    best = next((row.candidate.plan for row in rows if row.candidate.plan is not None), None)
    if variant.family != "cte" or not stream_axes or (best is not None and not best.resident_weights and not best.mx):
        return [], ""
    if best is None:
        return stream_axes, "no candidate planned"
    return (
        stream_axes,
        "MX weights stream one I slab per load" if best.mx else "the chosen plan keeps its weights resident",
    )


def chosen_options(variant, row: Row, searched: list[str]) -> dict:
    """What a build of a tuned kernel applies: the options the chosen candidate sets over the spec's, and `tail` as
    its plan resolved it when that axis was searched (so a later change of the tail rule cannot change the
    recorded kernel unseen)."""
    chosen = dict(row.candidate.applied)
    plan = row.candidate.plan
    if plan.family == "cte" and "tail" in searched and not plan.resident_weights:
        chosen["tail"] = tail_value(plan)
    return chosen


def token_counts(variant, tokens: int | None) -> tuple[int, ...]:
    """The token counts a kernel's candidates are modeled at: `--tokens`, else T=1 and the tkg kernel's
    bound (decode), or the cte kernel's `tune_tokens` (prefill)."""
    if tokens:
        return (tokens,)
    if variant.family == "cte":
        return (variant["tune_tokens"],)
    return tuple(sorted({1, variant.options["tokens"]}))


def kernels_to_tune(spec, variant_name: str | None) -> list:
    """The named kernel (tkg or cte), else every tkg kernel and every `tuned` cte kernel (a real-shape
    prefill simulation takes about a minute: untuned cte kernels are shown their candidates when named)."""
    if variant_name is not None:
        return [v for v in spec.variants if v.family in TUNED_FAMILIES and v.name == variant_name]
    return [v for v in spec.variants if v.family == "tkg" or (v.family == "cte" and v.options.get("tuned"))]


def tune(spec_path: Path, variant_name: str | None, tokens: int | None, out=print, write: bool = False) -> int:
    """Print the candidate table of each kernel (and record tuned ones with `write`); returns the number of
    kernels tuned."""
    spec = load_spec(spec_path)
    chosen = kernels_to_tune(spec, variant_name)
    record = choices.load(spec_path) if write else {}
    kernels = record.setdefault("kernels", {}) if write else {}
    with tempfile.TemporaryDirectory(prefix="moegen_tune_") as scratch:
        for variant in chosen:
            counts = token_counts(variant, tokens)
            rows = search(spec, spec_path, variant, counts, Path(scratch))
            skipped, why = not_searched(variant, rows)
            searched = [(name, values) for name, values in axes(variant) if name not in skipped]
            names = ", ".join(name for name, _ in searched) or "nothing left at auto"
            if skipped:
                names += f"; not searched: {', '.join(skipped)} ({why})"
            at = "T=" + " + ".join(str(t) for t in counts)
            shown = ("mode",) if variant.family == "tkg" else tuple(name for name, _ in searched)
            in_spec = " ".join(f"{name}={variant.options.get(name)}" for name in shown)
            target = next((row.candidate.plan.target for row in rows if row.candidate.plan), "trn2")
            out(f"{variant.name} ({in_spec} in the spec), {at}, {target}, modeled; searched: {names}")
            width = max([55] + [len(row.candidate.label) for row in rows if row.candidate.plan is not None])
            for rank, row in enumerate(rows):
                if row.candidate.plan is None:
                    out(f"  {'refused':9} {row.candidate.label}: {row.candidate.refused}")
                    continue
                mark = "chosen" if rank == 0 else ("runner-up" if rank == 1 else "")
                out(f"  {mark:9} {row.candidate.label:{width}} {row.modeled_us:9.1f} us  ({row.text()})")
            if write and variant.options.get("tuned") and rows and rows[0].candidate.plan is not None:
                kernels[variant.name] = {
                    "fingerprint": choices.fingerprint(spec.layer, variant),
                    "tokens": list(counts),
                    "target": target,
                    "chosen": chosen_options(variant, rows[0], [name for name, _ in searched]),
                    "table": [row.record() for row in rows if row.candidate.plan is not None],
                }
                out(f"  recorded in {choices.choices_path(spec_path)}")
    if write:
        choices.choices_path(spec_path).write_text(choices.dump(record))
    return len(chosen)
