"""MX tkg decode kernels before and after a change, modeled on trn3 in one run (moegen.perf, not measured).

Profiles each GPT-OSS MXFP4 decode kernel of specs/ at its real shape on the verify harness's seeded inputs,
twice: the kernel file as generated at git revision BEFORE (read with `git show`) and as generated now
(generated/). Prints one Markdown table with both modeled times on trn3, their roofline fractions and the
speedup; a kernel the BEFORE revision did not generate shows "-":

    .venv/bin/python benchmarks/mx_decode.py --before 74510ad [--tokens 1,8] [--kernels ...]
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

from moegen.compiler import generate  # noqa: E402
from moegen.verify.profile import profile_plan  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SPECS = ("specs/gpt_oss_20b_mxfp4.moe", "specs/gpt_oss_120b_mxfp4.moe")


def old_kernel(revision: str, relative: str, folder: Path) -> Path | None:
    """The generated file at `revision`, written under `folder`; None if that revision has no such file."""
    shown = subprocess.run(["git", "show", f"{revision}:{relative}"], cwd=REPO, capture_output=True, text=True)
    if shown.returncode:
        return None
    path = folder / relative.replace("/", "__")
    path.write_text(shown.stdout)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="git revision of the 'before' generated kernels")
    parser.add_argument("--tokens", default="1", help="comma-separated token counts")
    parser.add_argument("--kernels", nargs="*", default=None, help="only these kernel names")
    args = parser.parse_args()
    tokens = [int(t) for t in args.tokens.split(",")]
    print(f"MX tkg decode, modeled on trn3 (moegen.perf timeline model, not measured); before = {args.before}\n")
    print("| spec | kernel | LNC | T | before us | before roofline | after us | after roofline | speedup |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as scratch:
        for spec in SPECS:
            generated = generate(REPO / spec)
            for plan in generated.plans:
                if args.kernels and plan.kernel_name not in args.kernels:
                    continue
                relative = f"generated/{generated.name}/{plan.kernel_name}.py"
                before_path = old_kernel(args.before, relative, Path(scratch))
                for t in tokens:
                    after, _, _ = profile_plan(plan, REPO / relative, t, "trn3")
                    if before_path is not None:
                        before, _, _ = profile_plan(plan, before_path, t, "trn3")
                        old = f"{before.modeled_us:.1f} | {before.roofline_fraction:.3f}"
                        ratio = f"{before.modeled_us / after.modeled_us:.1f}x"
                    else:
                        old, ratio = "- | -", "-"
                    print(
                        f"| {generated.name} | {plan.kernel_name} | {plan.lnc} | {t} | {old} "
                        f"| {after.modeled_us:.1f} | {after.roofline_fraction:.3f} | {ratio} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
