"""The modeled report: time, engine busy fractions, roofline bounds, HBM traffic, MACs, longest stalls."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from moegen.perf.costs import Costs, assumptions
from moegen.perf.timeline import COMPUTE_ENGINES, Timeline

LABEL = "modeled (moegen.perf timeline model, not a measurement)"


@dataclass
class Report:
    """What `moegen profile --json` prints. Times in microseconds, traffic in bytes."""

    modeled_us: float
    roofline_fraction: float
    hbm_bytes: int
    hbm_min_bytes: int
    macs_issued: int
    macs_algorithmic: int
    engine_busy: dict  # engine -> busy fraction of the modeled time (mean over cores)
    bound: str  # the engine with the highest busy fraction
    compute_bound_us: float
    hbm_bound_us: float
    target: str
    lnc: int
    instructions: int
    stalls: list  # the five longest: stall_us, engine, opcode, line, waits_on, dependency, memory
    assumptions: dict
    label: str = LABEL
    timeline: Timeline | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("timeline")
        return d

    def text(self) -> str:
        """A human-readable summary (every figure is modeled)."""
        lines = [
            f"{LABEL}; target {self.target}, LNC={self.lnc}, {self.instructions} instructions",
            f"  modeled time      {self.modeled_us:12.2f} us",
            f"  compute bound     {self.compute_bound_us:12.2f} us  (algorithmic MACs at TensorE peak)",
            f"  HBM bound         {self.hbm_bound_us:12.2f} us  (minimum bytes at HBM bandwidth)",
            f"  roofline fraction {self.roofline_fraction:12.3f}",
            f"  HBM bytes         {self.hbm_bytes:12d}  vs minimum {self.hbm_min_bytes} "
            f"({self.hbm_bytes / max(1, self.hbm_min_bytes):.2f}x)",
            f"  MACs issued       {self.macs_issued:12d}  vs algorithmic {self.macs_algorithmic} "
            f"({self.macs_issued / max(1, self.macs_algorithmic):.2f}x)",
            "  engine busy       "
            + ", ".join(f"{e} {100 * f:.1f}%" for e, f in self.engine_busy.items())
            + f"  -> bound: {self.bound}",
        ]
        if self.stalls:
            lines.append("  longest stalls:")
            for s in self.stalls:
                lines.append(
                    f"    {s['stall_us']:9.2f} us  {s['engine']:<6} {s['opcode']} at {s['line']} waits on "
                    f"{s['waits_on']} [{s['dependency']} {s['memory']}]"
                )
        if self.assumptions:
            lines.append("  assumptions: " + ", ".join(sorted(self.assumptions)))
        return "\n".join(lines)


def union_bytes(ranges: list) -> int:
    """Bytes covered by a list of [b0, b1) ranges."""
    total, cur0, cur1 = 0, None, None
    for b0, b1 in sorted(ranges):
        if cur1 is None or b0 > cur1:
            if cur1 is not None:
                total += cur1 - cur0
            cur0, cur1 = b0, b1
        else:
            cur1 = max(cur1, b1)
    if cur1 is not None:
        total += cur1 - cur0
    return total


def touched_hbm_bytes(trace: list) -> dict:
    """Distinct bytes each HBM allocation of a trace was touched in (mem key -> bytes)."""
    ranges: dict = {}
    for rec in trace:
        for r in (*rec.get("reads", ()), *rec.get("writes", ())):
            if r["mem"].startswith("hbm"):
                ranges.setdefault(r["mem"], []).append(r["bytes"])
    return {mem: union_bytes(rs) for mem, rs in ranges.items()}


def build(
    tl: Timeline,
    costs: Costs,
    lnc: int,
    hbm_min_bytes: int | None = None,
    macs_algorithmic: int | None = None,
) -> Report:
    """The report of a scheduled timeline. Defaults: the HBM minimum is every distinct HBM byte the kernel
    touched, once; the algorithmic MACs are the issued ones (callers that know the math pass both)."""
    total = max(tl.end_ns, 1e-9)
    engines = (*COMPUTE_ENGINES, "dma")
    busy = {e: sum(tl.busy_ns.get((c, e), 0.0) for c in range(tl.cores)) / tl.cores / total for e in engines}
    bound = max(busy, key=busy.get)
    if hbm_min_bytes is None:
        hbm_min_bytes = sum(union_bytes(r) for r in tl.touched_hbm.values())
    if macs_algorithmic is None:
        macs_algorithmic = tl.macs
    per_mac_ns = tl.ideal_tensor_ns / tl.macs if tl.macs else 1.0 / costs.macs_per_ns_bf16
    compute_ns = macs_algorithmic * per_mac_ns / tl.cores
    hbm_rate = min(costs.dma_bytes_per_ns, costs.hbm_core_bytes_per_ns) * tl.cores
    hbm_ns = hbm_min_bytes / hbm_rate
    return Report(
        modeled_us=tl.end_ns / 1000.0,
        roofline_fraction=max(compute_ns, hbm_ns) / total,
        hbm_bytes=int(tl.hbm_bytes),
        hbm_min_bytes=int(hbm_min_bytes),
        macs_issued=int(tl.macs),
        macs_algorithmic=int(macs_algorithmic),
        engine_busy={e: round(f, 6) for e, f in busy.items()},
        bound=bound,
        compute_bound_us=compute_ns / 1000.0,
        hbm_bound_us=hbm_ns / 1000.0,
        target=costs.target,
        lnc=lnc,
        instructions=tl.instructions,
        stalls=tl.stalls,
        assumptions=assumptions(costs.target),
        timeline=tl,
    )
