"""Shared experts fused into the routed kernel vs separate, modeled (moegen.perf timeline model, not measured).

For each real-model routed kernel of specs/ whose shared experts `shared=auto` fuses, the same kernel with
`shared=separate` and a `shared` family kernel holding the same slice of the shared experts (I_S / (tp x ep)
per rank) are generated beside it; all three are simulated on the verify inputs at one token count and
modeled on trn2. Prints one Markdown row per case: fused us, routed-only us, shared-kernel us, and
separate / fused = (routed-only + shared) / fused (above 1: fusing is faster; the separate path's extra
launch and the caller's add are not modeled, so the ratio understates fusion):

    .venv/bin/python benchmarks/shared_fusion.py [--cases NAME ...]
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before NumPy loads (see benchmarks/cte_prefill.py)

import argparse  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

from moegen.codegen.build import write  # noqa: E402
from moegen.compiler import generate  # noqa: E402
from moegen.verify.profile import profile_plan  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# name: (spec, fused routed kernel, options of the equal-slice shared kernel, tokens)
CASES = {
    "llama4_decode": ("llama4_scout", "tkg_selective_tp8", "tp=8", 4),
    "nemotron_decode": ("nemotron3_nano_30b_a3b", "tkg_all_ep8", "lnc=2 tp=8", 4),
    "deepseek_decode": ("deepseek_v3", "tkg_ep8", "tp=64", 4),
    "nemotron_prefill": ("nemotron3_nano_30b_a3b", "prefill", "lnc=2 shard=intermediate tokens<=256", 128),
}


def case_spec(spec: str, kernel: str, shared_options: str, folder: Path) -> Path:
    """The spec with the routed kernel's separate twin and the shared kernel added."""
    text = (REPO / "specs" / f"{spec}.moe").read_text()
    end = text.rindex("}")
    extra = f"  kernel bench_separate : {kernel} {{ shared=separate }}\n  kernel bench_shared : shared {{ {shared_options} }}\n"
    path = folder / f"{spec}.moe"
    path.write_text(text[:end] + extra + text[end:])
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    args = parser.parse_args()
    print("| case | kernel | T | fused us | routed only us | shared kernel us | separate / fused |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.cases:
            spec, kernel, shared_options, tokens = CASES[name]
            folder = Path(tmp) / name
            folder.mkdir()
            generated = generate(case_spec(spec, kernel, shared_options, folder))
            out = write(generated, folder / "generated")
            plans = {plan.kernel_name: plan for plan in generated.plans}
            assert plans[kernel].shared is not None, f"{spec}/{kernel}: shared=auto did not fuse"
            us = {}
            for label in (kernel, "bench_separate", "bench_shared"):
                report, _, _ = profile_plan(plans[label], out / f"{label}.py", tokens, "trn2")
                us[label] = report.modeled_us
            ratio = (us["bench_separate"] + us["bench_shared"]) / us[kernel]
            print(
                f"| {name} | {spec}/{kernel} | {tokens} | {us[kernel]:.1f} | {us['bench_separate']:.1f} "
                f"| {us['bench_shared']:.1f} | {ratio:.3f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
