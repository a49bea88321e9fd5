"""moegen.sim: a CPU simulator of NKI (Neuron Kernel Interface, NKI 0.6 API) faithful to the documented API.

Public API (see README.md in this folder):
    simulate(kernel, target=None, precise=None, trace=True, backend=None, trace_only=False)(*arrays) -> outputs
    recording()                      (context: every simulate in it records the trace)
    load_module(path) -> module      (executes a kernel file importing nki / nki.language / nki.isa)
    jit                              (nki.jit)
    last_run() -> RunResult          (outputs, trace, written_args of the latest simulation)
    static_check(source_or_path)     (the NKI Python subset check)
    context(target=, precise=)       (a run context for calling instructions directly)
    moegen.sim.language / moegen.sim.isa / moegen.sim.collectives: the nki.* namespaces
"""

from moegen.sim.errors import NkiSimError
from moegen.sim.kernel import Kernel, RunResult, jit, last_run, load_module, nki_modules, recording, simulate
from moegen.sim.runtime import context

__all__ = [
    "NkiSimError",
    "Kernel",
    "RunResult",
    "jit",
    "last_run",
    "load_module",
    "nki_modules",
    "simulate",
    "recording",
    "context",
    "static_check",
]


def static_check(source_or_path, filename: str | None = None, strict: bool = False):
    """Check kernel source (text or a path) against the NKI Python subset; returns a list of findings
    (strict=True raises NkiSimError on errors). See moegen/sim/subset_check.py for the rules."""
    from moegen.sim.subset_check import static_check as _check

    return _check(source_or_path, filename, strict)
