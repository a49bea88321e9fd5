"""`--plot`: a roofline chart (the kernel as a point) and per-engine busy bars, as one PNG (matplotlib,
the optional `plot` extra)."""

from __future__ import annotations

from pathlib import Path

from moegen.perf.costs import Costs
from moegen.perf.report import LABEL, Report


def write(report: Report, path: str | Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("--plot needs matplotlib: pip install 'moegen[plot]'") from None
    costs = Costs.of(report.target)
    cores = report.lnc
    peak = costs.macs_per_ns_bf16 * 2 * cores  # GFLOP/s at bf16 peak (2 FLOP per MAC, per ns = GFLOP/s)
    bandwidth = min(costs.dma_bytes_per_ns, costs.hbm_core_bytes_per_ns) * cores  # GB/s
    flops = 2 * report.macs_algorithmic
    intensity = flops / max(1, report.hbm_bytes)
    achieved = flops / max(report.modeled_us * 1000.0, 1e-9)
    fig, (roof, bars) = plt.subplots(1, 2, figsize=(11, 4.2))
    lo, hi = 0.01, 10000.0
    xs = [lo * (hi / lo) ** (i / 200) for i in range(201)]
    roof.loglog(xs, [min(peak, bandwidth * x) for x in xs], color="black", label="roofline (bf16 peak, HBM)")
    roof.loglog([intensity], [achieved], "o", color="tab:red", label="kernel (modeled)")
    roof.set_xlabel("arithmetic intensity (FLOP / HBM byte moved)")
    roof.set_ylabel("throughput (GFLOP/s)")
    roof.set_title(f"roofline, {report.target}, LNC={report.lnc}")
    roof.legend(loc="lower right", fontsize=8)
    engines = list(report.engine_busy)
    bars.bar(engines, [100 * report.engine_busy[e] for e in engines], color="tab:blue")
    bars.set_ylim(0, 100)
    bars.set_ylabel("busy (% of modeled time)")
    bars.set_title(f"engine utilisation, {report.modeled_us:.1f} us")
    fig.suptitle(LABEL, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
