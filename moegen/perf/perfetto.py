"""The modeled timeline as Chrome trace-event JSON (opens in Perfetto / chrome://tracing).

One process per core, one thread (track) per engine and DMA queue; each instruction is a complete
event ("ph": "X") named after its opcode and source line, times in microseconds.
"""

from __future__ import annotations

import json
from pathlib import Path

from moegen.perf.report import LABEL, Report

TRACK_ORDER = ("tensor", "vector", "scalar", "gpsimd", "sync")


def _tid(track: str) -> int:
    if track in TRACK_ORDER:
        return TRACK_ORDER.index(track)
    return 100 + int(track[3:])  # dma<q>


def trace_events(report: Report) -> dict:
    """The Chrome trace-event object of a report (its timeline must have kept its events)."""
    tl = report.timeline
    if tl is None:
        raise ValueError("the report has no timeline (model it with keep_events=True)")
    events = []
    tracks = sorted({(e.core, e.track) for e in tl.events}, key=lambda ct: (ct[0], _tid(ct[1])))
    for core in sorted({c for c, _ in tracks}):
        events.append({"ph": "M", "name": "process_name", "pid": core, "tid": 0, "args": {"name": f"core {core}"}})
    for core, track in tracks:
        name = f"{track} (DMA queue)" if track.startswith("dma") else f"{track} engine"
        events.append({"ph": "M", "name": "thread_name", "pid": core, "tid": _tid(track), "args": {"name": name}})
    for e in tl.events:
        events.append(
            {
                "ph": "X",
                "name": f"{e.opcode} {e.line}",
                "cat": e.track,
                "pid": e.core,
                "tid": _tid(e.track),
                "ts": e.start / 1000.0,
                "dur": max(0.0, e.end - e.start) / 1000.0,
                "args": {"opcode": e.opcode, "line": e.line},
            }
        )
    return {
        "traceEvents": events,
        "displayTimeUnit": "ns",
        "otherData": {"label": LABEL, "target": report.target, "modeled_us": report.modeled_us},
    }


def write(report: Report, path: str | Path) -> None:
    Path(path).write_text(json.dumps(trace_events(report)))
