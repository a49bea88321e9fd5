"""Build and check time per variant for a large spec: Mixtral-8x7B's seven kernels (tkg, cte and
router) repeated under new names until the spec has N variants.

Each measurement is one fresh `python -m moegen build|check` process (what a user runs), so the
time includes interpreter start and imports. Prints milliseconds per variant for each size, and
the ratio between sizes (linear growth keeps ms/variant flat):

    .venv/bin/python benchmarks/build_time.py [--variants 50 200] [--repeat 3]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KERNEL_LINE = re.compile(r"^\s*kernel\s+(\w+)\s*:\s*(\w+)(.*)$")


def big_spec(source: Path, variants: int) -> str:
    """The source spec with its kernel lines repeated (names suffixed _r<copy>) until `variants` kernels."""
    lines = source.read_text().splitlines()
    kernels = [KERNEL_LINE.match(line) for line in lines]
    kernels = [m for m in kernels if m]
    names = {m[1] for m in kernels}
    head = [line for line in lines if not KERNEL_LINE.match(line) and line.strip() != "}"]
    body = []
    for index in range(variants):
        match = kernels[index % len(kernels)]
        copy = index // len(kernels)
        base = f"{match[2]}_r{copy}" if match[2] in names else match[2]
        body.append(f"  kernel {match[1]}_r{copy} : {base}{match[3].split('#')[0].rstrip()}")
    return "\n".join(head + body + ["}"]) + "\n"


def timed(command: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    parser.add_argument("--spec", default=str(REPO / "specs" / "mixtral_8x7b.moe"))
    args = parser.parse_args()
    per_variant = {}
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        for count in args.variants:
            spec = root / f"big{count}.moe"
            spec.write_text(big_spec(Path(args.spec), count))
            build = [sys.executable, "-m", "moegen", "build", spec.name, "--out", "out", "--force"]
            check = [sys.executable, "-m", "moegen", "check", spec.name, "--out", "out"]
            build_s = min(timed(build, root) for _ in range(args.repeat))
            check_s = min(timed(check, root) for _ in range(args.repeat))
            per_variant[count] = build_s / count
            print(
                f"{count:5d} variants: build {build_s:7.2f} s = {1000 * build_s / count:6.2f} ms/variant, "
                f"check {check_s:7.2f} s = {1000 * check_s / count:6.2f} ms/variant"
            )
    sizes = sorted(per_variant)
    if len(sizes) > 1:
        small, large = sizes[0], sizes[-1]
        print(
            f"build ms/variant at {large} / at {small} variants: {per_variant[large] / per_variant[small]:.2f} "
            "(1.0 = linear; process start-up is shared by more variants at the larger size)"
        )


if __name__ == "__main__":
    main()
