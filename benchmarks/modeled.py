"""Modeled performance of every kernel in specs/ at its model's real shape (moegen.perf timeline model).

Decode kernels (tkg) at T = 1, 8, 32, 128 (up to the plan's token bound), token-parallel kernels (cte
prefill, dense mlp, activation: T = buffer rows) at T = 4096, routers at T = 1, 8, 32, 128, 4096. A
kernel planned for trn3 (mlp, MXFP8 activation) is modeled on trn3 only: its trn2 columns say "trn3 only"
and show the trn3 figures. Each kernel is simulated once on the verify harness's
seeded inputs and its trace modeled on trn2 and on trn3. Writes one Markdown table (every figure
modeled, not measured) and prints, for the Mixtral-8x7B prefill at T = 4096, the time of modeling its
trace over the time of the simulation that produced it (the model's budget: at most 1x):

    .venv/bin/python benchmarks/modeled.py [--specs specs/mixtral_8x7b.moe ...] [--out FILE]
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before NumPy loads (see benchmarks/cte_prefill.py)
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import gc  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import moegen.perf as perf  # noqa: E402
from moegen import sim  # noqa: E402
from moegen.compiler import generate  # noqa: E402
from moegen.verify.profile import profile_plan  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DECODE_TOKENS = (1, 8, 32, 128)
PREFILL_TOKENS = 4096
ROUTER_TOKENS = (1, 8, 32, 128, 4096)
PREFILL_FAMILIES = ("cte", "mlp", "activation")  # token-parallel kernels: T = tokens (activation: buffer rows)
HEADER = (
    "| spec | kernel | family | LNC | T | trn2 modeled us | trn2 roofline | trn2 bound | HBM actual / min "
    "| MACs issued / algorithmic | busy T/V/S/G/DMA % | trn3 modeled us | sim s | model s |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
)


def token_counts(plan, decode=DECODE_TOKENS, router=ROUTER_TOKENS, prefill=(PREFILL_TOKENS,)) -> tuple[int, ...]:
    if plan.family in PREFILL_FAMILIES:
        return prefill
    if plan.family == "router":
        return router
    bound = getattr(plan, "token_bound", None) or max(decode)
    return tuple(t for t in decode if t <= bound)


def kernel_label(plan, experts_used: int | str | None) -> str:
    """The kernel column: its name, and the routing's expert pool when --experts-used chose it."""
    if experts_used is None or plan.family != "cte":
        return plan.kernel_name
    used = plan.global_experts if experts_used == "all" else experts_used
    return f"{plan.kernel_name} (routed over {used} experts)"


def _experts_used(text: str) -> int | str:
    return "all" if text == "all" else int(text)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(","))


def row(spec: str, plan, tokens: int, experts_used: int | str | None = None) -> tuple[str, float, float]:
    """One table row. A kernel planned for trn3 has no trn2 figures: its trn2 columns show its trn3 model.
    experts_used (cte): the routing's expert pool; when given, the kernel column says so ("prefill (E=128)")."""
    trn3_only = plan.target == "trn3"
    path = REPO / "generated" / spec / f"{plan.kernel_name}.py"
    report, sim_s, model_s = profile_plan(
        plan, path, tokens, "trn3" if trn3_only else "trn2", experts_used=experts_used
    )
    trace = sim.last_run().trace
    trn3 = (
        report
        if trn3_only
        else perf.model(
            trace,
            "trn3",
            report.lnc,
            hbm_min_bytes=report.hbm_min_bytes,
            macs_algorithmic=report.macs_algorithmic,
            keep_events=False,
        )
    )
    busy = "/".join(f"{100 * report.engine_busy[e]:.0f}" for e in ("tensor", "vector", "scalar", "gpsimd", "dma"))
    text = (
        f"| {spec} | {kernel_label(plan, experts_used)} | {plan.family} | {report.lnc} | {tokens} "
        f"| {'trn3 only: ' if trn3_only else ''}{report.modeled_us:.1f} "
        f"| {report.roofline_fraction:.3f} | {report.bound} | {report.hbm_bytes / 1e6:.1f} MB / "
        f"{report.hbm_min_bytes / 1e6:.1f} MB ({report.hbm_bytes / max(1, report.hbm_min_bytes):.2f}x) "
        f"| {report.macs_issued / max(1, report.macs_algorithmic):.2f}x | {busy} | {trn3.modeled_us:.1f} "
        f"| {sim_s:.1f} | {model_s:.2f} |\n"
    )
    return text, sim_s, model_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--specs", nargs="*", default=None, help="spec files (default: specs/*.moe)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "modeled.md"))
    parser.add_argument("--kernels", nargs="*", default=None, help="only these kernel names")
    parser.add_argument("--skip", nargs="*", default=(), help="not these kernel names")
    parser.add_argument("--decode-tokens", type=_ints, default=DECODE_TOKENS, help="e.g. 1,32")
    parser.add_argument("--router-tokens", type=_ints, default=ROUTER_TOKENS, help="e.g. 1,4096")
    parser.add_argument("--prefill-tokens", type=_ints, default=(PREFILL_TOKENS,), help="cte / mlp / activation")
    parser.add_argument(
        "--experts-used",
        type=_experts_used,
        default=None,
        help="cte: route over N experts or 'all' (default: the verify harness's pool; labelled in the kernel column)",
    )
    parser.add_argument("--append", action="store_true", help="add rows to an existing table")
    args = parser.parse_args()
    specs = [Path(s) for s in args.specs] if args.specs else sorted((REPO / "specs").glob("*.moe"))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    ratio_line = ""
    with out.open("a" if args.append else "w") as table:
        table.write(
            ""
            if args.append
            else "# Modeled kernel performance (moegen.perf)\n\n"
            "Every figure below is **modeled** by the timeline model (docs/perf_model.md) from the simulator's "
            "instruction trace, not measured on Trainium. Regenerate with `make modeled`.\n\n"
            "Roofline = max(compute bound, HBM bound) / modeled time (trn2); HBM min = each needed expert's "
            "weights once, every other input and each output once (routers: every byte touched once); "
            "algorithmic MACs = T x K x 3 x H x I (router T x H x E). Busy: TensorE / VectorE / ScalarE / "
            "GpSimd / DMA percent of the modeled time on trn2. sim s / model s: wall seconds of the "
            "simulation and of modeling its trace (shared 2-core machine).\n\n" + HEADER
        )
        table.flush()
        for spec_path in specs:
            generated = generate(spec_path)
            for plan in generated.plans:
                if (args.kernels and plan.kernel_name not in args.kernels) or plan.kernel_name in args.skip:
                    continue
                for tokens in token_counts(plan, args.decode_tokens, args.router_tokens, args.prefill_tokens):
                    start = time.perf_counter()
                    used = args.experts_used if plan.family == "cte" else None
                    try:
                        text, sim_s, model_s = row(generated.name, plan, tokens, used)
                    except Exception as error:  # a kernel the simulator cannot run at this size: say so
                        text = (
                            f"| {generated.name} | {kernel_label(plan, used)} | {plan.family} | {plan.lnc} | {tokens} "
                        )
                        text += f"| failed: {type(error).__name__}: {str(error)[:80]} |" + " |" * 9 + "\n"
                        sim_s = model_s = 0.0
                    table.write(text)
                    table.flush()
                    print(f"{generated.name} {plan.kernel_name} T={tokens}: {time.perf_counter() - start:.1f}s")
                    if generated.name == "mixtral_8x7b" and plan.kernel_name == "prefill" and tokens == 4096:
                        ratio = model_s / sim_s if sim_s else float("nan")
                        line = (
                            f"Mixtral-8x7B prefill T=4096: simulation {sim_s:.1f} s, modeling {model_s:.1f} s, "
                            f"model / simulation = {ratio:.3f}"
                        )
                        print(line)
                        ratio_line = line
                    gc.collect()
        if ratio_line:
            table.write(f"\n{ratio_line}\n")


if __name__ == "__main__":
    main()
