"""moegen.perf: a timeline model of NKI kernels driven by the simulator's instruction trace.

    report = moegen.perf.profile(kernel, *arrays, target="trn2")      # kernel[2] for LNC=2
    report = moegen.perf.model(trace, target="trn2", lnc=1)           # a trace you already have
    report.modeled_us, report.roofline_fraction, report.engine_busy, report.to_dict(), report.text()

Everything it reports is modeled, not measured: costs come from the documented facts and named
assumptions in `moegen.perf.costs`. It knows nothing of MoE; callers that know the algorithm pass
`hbm_min_bytes` (e.g. each needed weight once) and `macs_algorithmic`.
"""

from __future__ import annotations

from moegen.perf.costs import Costs, Fact, assumptions, table
from moegen.perf.report import LABEL, Report, build
from moegen.perf.timeline import Timeline, schedule

__all__ = ["LABEL", "Costs", "Fact", "Report", "Timeline", "assumptions", "model", "profile", "schedule", "table"]


def model(
    trace: list,
    target: str = "trn2",
    lnc: int = 1,
    hbm_min_bytes: int | None = None,
    macs_algorithmic: int | None = None,
    keep_events: bool = True,
) -> Report:
    """Model a simulator trace (`moegen.sim.last_run().trace`) on `target`."""
    costs = Costs.of(target)
    tl = schedule(trace, costs, keep_events=keep_events)
    return build(tl, costs, lnc, hbm_min_bytes, macs_algorithmic)


def profile(
    kernel,
    *arrays,
    target: str = "trn2",
    trace_only: bool = False,
    hbm_min_bytes: int | None = None,
    macs_algorithmic: int | None = None,
    **kwargs,
) -> Report:
    """Run `kernel` (a jit kernel or function; `kernel[2]` for LNC=2) in the simulator on `arrays` and
    model its trace. trace_only=True skips the arithmetic (fast; refuses kernels whose addresses or
    control flow read tensor values)."""
    from moegen import sim

    sim.simulate(kernel, target=target, trace=True, trace_only=trace_only)(*arrays, **kwargs)
    run = sim.last_run()
    return model(run.trace, target, run.lnc, hbm_min_bytes, macs_algorithmic)
