"""Build and check time per variant for a large spec: Mixtral-8x7B's seven kernels (tkg, cte and
router) repeated under new names until the spec has N variants.

Each measurement is one fresh `python -m moegen build|check` process (what a user runs), so the
time includes interpreter start, imports and compiling the templates. Prints, for each size, wall
and CPU (user + system) milliseconds per variant, best of --repeat runs; then the CPU cost of one
more variant (the slope between the smallest and largest size), which stays flat when the build
is linear. On a shared, loaded machine the CPU times are the steadier numbers:

    .venv/bin/python benchmarks/build_time.py [--variants 50 200] [--repeat 3]
"""

from __future__ import annotations

import argparse
import re
import resource
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


def timed(command: list[str], cwd: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run of command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def best(command: list[str], cwd: Path, repeat: int) -> tuple[float, float]:
    runs = [timed(command, cwd) for _ in range(repeat)]
    return min(wall for wall, _ in runs), min(cpu for _, cpu in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    parser.add_argument("--spec", default=str(REPO / "specs" / "mixtral_8x7b.moe"))
    args = parser.parse_args()
    build_cpu = {}
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        for count in args.variants:
            spec = root / f"big{count}.moe"
            spec.write_text(big_spec(Path(args.spec), count))
            build = [sys.executable, "-m", "moegen", "build", spec.name, "--out", "out", "--force"]
            check = [sys.executable, "-m", "moegen", "check", spec.name, "--out", "out"]
            build_wall, build_cpu[count] = best(build, root, args.repeat)
            check_wall, check_cpu = best(check, root, args.repeat)
            print(
                f"{count:5d} variants: build {build_wall:6.2f} s wall = {1000 * build_wall / count:6.2f} ms/variant, "
                f"{build_cpu[count]:6.2f} s CPU = {1000 * build_cpu[count] / count:6.2f} ms/variant; "
                f"check {check_wall:6.2f} s wall = {1000 * check_wall / count:6.2f} ms/variant, "
                f"{check_cpu:6.2f} s CPU = {1000 * check_cpu / count:6.2f} ms/variant"
            )
    sizes = sorted(build_cpu)
    if len(sizes) > 1:
        small, large = sizes[0], sizes[-1]
        slope = (build_cpu[large] - build_cpu[small]) / (large - small)
        print(f"CPU cost of one more variant, {small} -> {large} variants: {1000 * slope:.2f} ms")


if __name__ == "__main__":
    main()
