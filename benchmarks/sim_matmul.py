"""Benchmark: simulate a hand-written tiled bf16 matmul [2048 x 4096] @ [4096 x 4096] with moegen.sim and
print its time divided by NumPy's fp32 matmul of the same shape (measured in the same run). Target <= 3x.

Run by hand: .venv/bin/python benchmarks/sim_matmul.py [--no-trace] [--profile] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

# BLAS threads must be fixed before NumPy loads. Default 1 on both sides: the ratio then measures the
# simulator, not thread scheduling on a shared 2-core machine (--threads N to change).
_THREADS = sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv else "1"
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, _THREADS)

import ml_dtypes  # noqa: E402 - after the BLAS thread setting
import numpy as np  # noqa: E402

import moegen.sim as sim  # noqa: E402

KERNEL = pathlib.Path(__file__).resolve().parents[1] / "tests" / "sim" / "kernels" / "tiled_matmul.py"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--m", type=int, default=2048)
    ap.add_argument("--k", type=int, default=4096)
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--no-trace", action="store_true", help="disable the instruction trace")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--threads", default="1", help="BLAS threads for both NumPy and the simulator")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    a = rng.standard_normal((args.m, args.k), dtype=np.float32)
    b = rng.standard_normal((args.k, args.n), dtype=np.float32)
    lhs_t = np.ascontiguousarray(a.T).astype(ml_dtypes.bfloat16)  # [K, M]: the kernel's stationary layout
    rhs = b.astype(ml_dtypes.bfloat16)
    a32, b32 = a, b

    t0 = time.perf_counter()
    ref = a32 @ b32
    t_np = time.perf_counter() - t0

    mod = sim.load_module(KERNEL)
    run = sim.simulate(mod.tiled_matmul, target="trn2", trace=not args.no_trace)
    if args.profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
    t0 = time.perf_counter()
    out = run(lhs_t, rhs)
    t_sim = time.perf_counter() - t0
    if args.profile:
        prof.disable()
        pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
    err = float(np.abs(out - ref).max() / np.abs(ref).max())
    n_instr = len(sim.last_run().trace)
    print(f"shape [{args.m} x {args.k}] @ [{args.k} x {args.n}] bf16; instructions traced: {n_instr}")
    print(
        f"numpy fp32 matmul: {t_np:.3f} s   simulated kernel: {t_sim:.3f} s   max rel err vs fp32: {err:.2e}"
    )
    threads = os.environ["OPENBLAS_NUM_THREADS"]
    print(f"ratio sim / numpy: {t_sim / t_np:.2f}x  (target <= 3x; BLAS threads {threads})")


if __name__ == "__main__":
    main()
