"""Simulator speed on a real prefill shape: Mixtral-8x7B at TP 8 (T 4096, H 4096, I_TP 1792, E 8,
top-2, B 512), the `prefill` kernel of specs/mixtral_8x7b.moe.

Prints the wall time of the generated kernel in the simulator, the wall time of the NumPy blockwise
reference on the same inputs, and their ratio, measured in one run:

    .venv/bin/python benchmarks/cte_prefill.py [--tokens 4096] [--kernel prefill]
"""

from __future__ import annotations

import os

# One BLAS thread for both sides: on a loaded 2-core machine threaded OpenBLAS is many times slower
# for the simulator's 128-row matmuls. Must be set before NumPy loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from moegen import sim  # noqa: E402
from moegen.codegen.build import write  # noqa: E402
from moegen.compare import compare  # noqa: E402
from moegen.compiler import generate  # noqa: E402
from moegen.verify import cte as harness  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--kernel", default="prefill")
    parser.add_argument("--spec", default=str(REPO / "specs" / "mixtral_8x7b.moe"))
    args = parser.parse_args()

    generated = generate(Path(args.spec))
    plan = next(p for p in generated.plans if p.kernel_name == args.kernel)
    with tempfile.TemporaryDirectory() as folder:
        kernel = getattr(sim.load_module(write(generated, Path(folder)) / f"{plan.kernel_name}.py"), plan.kernel_name)
        inputs = harness.make_inputs(plan, args.tokens, np.random.default_rng(0))
        start = time.perf_counter()
        want = harness.expected(plan, inputs)
        reference_seconds = time.perf_counter() - start
        start = time.perf_counter()
        got = harness.run(kernel, plan, inputs)
        simulator_seconds = time.perf_counter() - start
    result = compare("out", got["out"], want["out"], kind=harness.tolerance(plan, "out"))
    blocks = inputs["block_to_expert"].shape[0]
    print(
        f"{plan.kernel_name} ({plan.variant_label}, LNC={plan.lnc}): T={args.tokens} H={plan.hidden} "
        f"I_TP={plan.intermediate} E={plan.experts} K={plan.top_k} B={plan.block} N={blocks}"
    )
    print(
        f"reference (NumPy) {reference_seconds:.2f} s, simulator {simulator_seconds:.2f} s, "
        f"ratio {simulator_seconds / reference_seconds:.1f}x; output {'matches' if result.ok else 'DIFFERS'}: {result}"
    )


if __name__ == "__main__":
    main()
