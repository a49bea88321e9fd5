"""Benchmark: simulate a hand-written tiled bf16 matmul [2048 x 4096] @ [4096 x 4096] with moegen.sim and
print its time divided by NumPy's fp32 matmul of the same shape (measured in the same run). Target <= 3x.

Run by hand: .venv/bin/python benchmarks/sim_matmul.py [--no-trace] [--profile] [--threads N] [--repeat R]

Both timings are the best of R runs (default 3) made in this process, so that a busy machine disturbs the
ratio less; every run's time is printed too.
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
    ap.add_argument("--repeat", type=int, default=3, help="runs of each side; the best one counts")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    a = rng.standard_normal((args.m, args.k), dtype=np.float32)
    b = rng.standard_normal((args.k, args.n), dtype=np.float32)
    lhs_t = np.ascontiguousarray(a.T).astype(ml_dtypes.bfloat16)  # [K, M]: the kernel's stationary layout
    rhs = b.astype(ml_dtypes.bfloat16)
    a32, b32 = a, b

    mod = sim.load_module(KERNEL)
    # the simulator limits BLAS to one thread itself (moegen/sim/blas.py): with --threads N say so
    os.environ.setdefault("MOEGEN_SIM_BLAS_THREADS", _THREADS)
    run = sim.simulate(mod.tiled_matmul, target="trn2", trace=not args.no_trace)
    np_times, sim_times = [], []
    for _ in range(max(1, args.repeat)):
        t0 = time.perf_counter()
        ref = a32 @ b32
        np_times.append(time.perf_counter() - t0)
        if args.profile:
            import cProfile
            import pstats

            prof = cProfile.Profile()
            prof.enable()
        t0 = time.perf_counter()
        out = run(lhs_t, rhs)
        sim_times.append(time.perf_counter() - t0)
        if args.profile:
            prof.disable()
            pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
            break
    t_np, t_sim = min(np_times), min(sim_times)
    err = float(np.abs(out - ref).max() / np.abs(ref).max())
    n_instr = len(sim.last_run().trace)
    print(f"shape [{args.m} x {args.k}] @ [{args.k} x {args.n}] bf16; instructions traced: {n_instr}")
    print(f"numpy fp32 matmul: {t_np:.3f} s   simulated kernel: {t_sim:.3f} s   max rel err vs fp32: {err:.2e}")
    threads = os.environ["OPENBLAS_NUM_THREADS"]
    print(
        "runs: numpy "
        + " ".join(f"{t:.3f}" for t in np_times)
        + " s; sim "
        + " ".join(f"{t:.3f}" for t in sim_times)
        + " s"
    )
    print(f"ratio sim / numpy (best of each): {t_sim / t_np:.2f}x  (target <= 3x; BLAS threads {threads})")


if __name__ == "__main__":
    main()
