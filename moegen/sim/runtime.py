"""Run context of a simulated kernel: target, precision, program id, memory accounting, trace.

One `Core` per simulated NeuronCore (program). A kernel run under LNC=2 has two cores sharing
one `Run` (shared HBM, barrier, sendrecv pipes, race log, trace). `current()` returns the core
of the calling thread; outside any run it returns a per-thread default core (target from
``NEURON_PLATFORM_TARGET_OVERRIDE``, default trn3; precision from ``NKI_PRECISE_FP``), so
instructions can be unit-tested directly. `context(...)` opens a fresh one explicitly.

Trace entries (plain dicts, appended in program order per core)::

    {"core": 0, "engine": "tensor", "opcode": "nc_matmul",
     "operands": {"dst": {"shape": (128, 512), "dtype": "float32", "buffer": "psum"}, ...},
     "bytes": 0, "line": "kernel.py:42"}

``bytes`` is the number of bytes a DMA moved (0 for compute instructions). Each tensor operand's
summary carries its memory ``region`` (`NkiTensor._region`), and ``reads`` / ``writes`` list the
regions the instruction reads and writes (``dst``, ``reduce_res``, ``dst_idx`` are written), so a
timeline model can derive read-after-write, write-after-read and write-after-write dependencies.
"""

from __future__ import annotations

import contextlib
import enum
import os
import sys
import threading
from dataclasses import dataclass, field

from moegen.sim.errors import NkiSimError
from moegen.sim.registers import VirtualRegister

TARGETS = ("trn2", "trn3")
_TARGET_ALIASES = {"trn2": "trn2", "gen3": "trn2", "trn3": "trn3", "gen4": "trn3"}

SBUF_BYTES_PER_PARTITION = {"trn2": 224 * 1024, "trn3": 256 * 1024}
PSUM_BANK_BYTES = 2048
PSUM_NUM_BANKS = 8
NUM_PARTITIONS = 128

_SIM_DIR = os.path.dirname(os.path.abspath(__file__))


def resolve_target(target: str | None) -> str:
    """Target from the argument, else NEURON_PLATFORM_TARGET_OVERRIDE, else trn3 (official default)."""
    value = target if target is not None else os.environ.get("NEURON_PLATFORM_TARGET_OVERRIDE") or "trn3"
    key = str(value).strip().lower()
    if key in ("trn1", "gen2", "inf2"):
        raise NkiSimError(f"target: {value!r} (trn1) is not simulated (limit: trn2 or trn3)")
    if key not in _TARGET_ALIASES:
        raise NkiSimError(f"target: unknown target {value!r} (limit: trn2|gen3 or trn3|gen4)")
    return _TARGET_ALIASES[key]


def resolve_precise(precise: bool | None) -> bool:
    """Precise mode from the argument, else NKI_PRECISE_FP (default 1)."""
    if precise is not None:
        return bool(precise)
    return os.environ.get("NKI_PRECISE_FP", "1").strip() not in ("0", "false", "False", "")


BARRIER_SCOPES = ("data", "all")


def resolve_barrier_scope() -> str:
    """What a core_barrier orders in the LNC=2 race check, from MOEGEN_SIM_BARRIER_SCOPE: 'data' = only accesses
    to the barrier's `data` tensor (the faithful reading, docs/sim_audit.md #23: nki.isa.core_barrier, "The data
    parameter represents the shared data that all cores need to synchronize on"); 'all' = every shared-HBM tensor.
    'data' is the default (every template names each tensor it exchanges; tests/families/test_cte_barrier_scope.py)."""
    value = os.environ.get("MOEGEN_SIM_BARRIER_SCOPE", "").strip().lower() or "data"
    if value not in BARRIER_SCOPES:
        raise NkiSimError(f"MOEGEN_SIM_BARRIER_SCOPE: {value!r} (limit: one of {', '.join(BARRIER_SCOPES)})")
    return value


def source_line() -> str:
    """'file:line' of the innermost frame outside moegen/sim (the kernel line issuing the instruction)."""
    f = sys._getframe(1)
    while f is not None and f.f_code.co_filename.startswith(_SIM_DIR):
        f = f.f_back
    if f is None:
        return "?"
    return f"{os.path.basename(f.f_code.co_filename)}:{f.f_lineno}"


@dataclass
class Run:
    """State shared by the cores of one kernel launch."""

    target: str
    precise: bool
    num_programs: int = 1
    trace: list = field(default_factory=list)
    trace_enabled: bool = True
    # trace-only: record the instruction stream without computing values (see kernel.simulate)
    trace_only: bool = False
    lock: threading.RLock = field(default_factory=threading.RLock)
    barrier: threading.Barrier | None = None
    shared_allocs: list = field(default_factory=list)  # k-th shared_hbm allocation, same for all cores
    pipes: dict = field(default_factory=dict)  # (src_rank, dst_rank, pipe_id) -> queue
    access_log: list = field(default_factory=list)  # LNC=2 shared-HBM accesses (for race detection)
    barrier_scope: str = "data"  # see resolve_barrier_scope
    barrier_data: dict = field(default_factory=dict)  # program id -> allocation of its pending core_barrier
    arg_allocs: list = field(default_factory=list)  # Allocation of each kernel array argument
    failed: bool = False


class Core:
    """One simulated NeuronCore executing one program of the kernel."""

    def __init__(self, run: Run, program_id: int = 0):
        self.run = run
        self.program_id = program_id
        # race detection: core_barriers passed, per allocation id (barrier scope 'data') or in all (key None)
        self.barriers_passed: dict[int | None, int] = {}
        self.sbuf_used = 0  # live SBUF bytes per partition
        self.sbuf_live: dict[int, tuple] = {}  # alloc id -> (name, address, bytes)
        self.psum_banks = [0] * PSUM_NUM_BANKS  # bytes used per bank (per partition)
        self.psum_live: dict[int, tuple] = {}  # alloc id -> (name, bank, bytes)
        self.shared_count = 0  # shared_hbm allocations made so far
        # On-chip allocations of the dynamic-loop (fori_loop / while_loop) iteration under way, kept
        # alive until the iteration ends: the compiler gives each allocation in a loop body its own
        # slot for the whole loop (NKI dynamic loops: allocated once, reused across iterations).
        self.loop_pins: list[list] = []
        self.next_id = 0
        self.instr_count = 0
        self.registers_traced = 0  # registers given a trace slot (their 'reg<core>' region)
        self.cur_instr = "?"

    # -- facts --------------------------------------------------------------------------
    @property
    def target(self) -> str:
        return self.run.target

    @property
    def precise(self) -> bool:
        return self.run.precise

    @property
    def num_programs(self) -> int:
        return self.run.num_programs

    @property
    def sbuf_capacity(self) -> int:
        return SBUF_BYTES_PER_PARTITION[self.run.target]

    def epoch_of(self, alloc) -> int:
        """Race-check epoch of an access to shared-HBM `alloc`: the core_barriers this core has passed that
        order it (those on `alloc` under barrier scope 'data', all of them under 'all')."""
        key = id(alloc) if self.run.barrier_scope == "data" else None
        return self.barriers_passed.get(key, 0)

    # -- trace --------------------------------------------------------------------------
    def record(
        self,
        engine: str,
        opcode: str,
        operands: dict,
        source_line: str | None = None,
        bytes_moved: int = 0,
        reg_reads: tuple = (),
        reg_writes: tuple = (),
    ) -> dict:
        """Append one executed instruction to the trace and return the entry.

        operands: name -> NkiTensor (summarised as shape/dtype/buffer) or plain value. reg_reads /
        reg_writes: registers the instruction reads / writes besides its register operands. The entry's
        ``addr_reads`` are the regions read when the instruction issues, to form its addresses or bounds:
        the registers it reads, and the tiles a runtime offset (scalar_offset, ``nl.ds`` on a tile) or an
        index vector (vector_offset) comes from; register writes join its ``writes``.
        """
        self.instr_count += 1
        if engine != "dma" and opcode not in RUNTIME_OFFSET_COMPUTE:
            _refuse_runtime_offsets(opcode, operands)
        line = source_line if source_line is not None else _caller_line()
        self.cur_instr = f"{opcode} at {line} (core {self.program_id})"
        if not self.run.trace_enabled:
            return {}
        ops = {}
        for name, value in operands.items():
            summary = getattr(value, "_summary", None)
            ops[name] = summary() if summary is not None else _plain(value)
        entry = {
            "core": self.program_id,
            "engine": engine,
            "opcode": opcode,
            "operands": ops,
            "bytes": int(bytes_moved),
            "line": line,
            "reads": [ops[k]["region"] for k in operands if k not in WRITTEN_OPERANDS and _has_region(ops[k])],
            "writes": [ops[k]["region"] for k in operands if k in WRITTEN_OPERANDS and _has_region(ops[k])]
            + [self.register_region(r) for r in reg_writes],
            "addr_reads": self._address_regions(operands, reg_reads),
        }
        self.run.trace.append(entry)
        return entry

    def register_region(self, reg: VirtualRegister) -> dict:
        """A register as a trace region: 4 bytes of this core's 'reg<core>' space, one slot per register
        (a loop's induction value is a new register each iteration)."""
        if reg.trace_slot is None:
            self.registers_traced += 1
            reg.trace_slot = self.registers_traced
        b0 = 4 * reg.trace_slot
        return {"mem": f"reg{self.program_id}", "parts": [0, 1], "bytes": [b0, b0 + 4], "contig": 4}

    def _address_regions(self, operands: dict, reg_reads: tuple) -> list:
        """Regions read at issue to form addresses / bounds: registers, runtime-offset and index tiles."""
        out = [self.register_region(r) for r in reg_reads]
        for value in operands.values():
            if isinstance(value, VirtualRegister):
                out.append(self.register_region(value))
                continue
            for src, _ in getattr(value, "_dyn", None) or ():
                if isinstance(src, VirtualRegister):
                    out.append(self.register_region(src))
                elif hasattr(src, "_region"):
                    out.append(src._region())
            vec = getattr(value, "_vec", None)
            if vec is not None and hasattr(vec[0], "_region"):
                out.append(vec[0]._region())
        return out

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id


# The one compute instruction documented with a runtime-offset access pattern: NKI 0.4.0 release
# notes, tensor_copy_dynamic_src/dst removed, "use tensor_copy with .ap(scalar_offset=...)".
RUNTIME_OFFSET_COMPUTE = frozenset({"tensor_copy"})


def _refuse_runtime_offsets(opcode: str, operands: dict) -> None:
    """Runtime-offset access patterns (``.ap(..., scalar_offset=...)`` / ``vector_offset=``) feed DMA
    instructions (and ``tensor_copy``) only: the NKI Access Patterns page describes scalar / vector
    offsets as DMA addressing (every use in nki-library is a DMA operand), and compute-engine
    indirection is ``NkiTensor.indirect`` (NeuronCore-v4). Copy the data into a fixed tile with a DMA
    and pass that tile instead. (``NkiTensor.select`` with a 1x1 index tensor is a separate view.)"""
    for name, value in operands.items():
        if getattr(value, "_ap", False) and (value._dyn or value._vec is not None):
            raise NkiSimError(
                f"{opcode}: {name} '{value.name}' is an access pattern with a runtime offset (scalar_offset / "
                "vector_offset): only DMA instructions take one (limit: DMA it into a fixed tile first)"
            )


_PLAIN = (int, float, str, bool, type(None))

# operands an instruction writes (every other tensor operand is read)
WRITTEN_OPERANDS = frozenset(("dst", "reduce_res", "dst_idx"))


def _has_region(summary) -> bool:
    return type(summary) is dict and "region" in summary


def _plain(value):
    """A trace operand as plain data: numbers / strings as is, NumPy scalars as Python numbers, enum
    members by name, registers as {"register": value at issue}, functions (ops) by name, sequences
    element-wise, anything else by repr."""
    if type(value) in _PLAIN:
        return value
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    summary = getattr(value, "_summary", None)
    if summary is not None:
        return summary()
    item = getattr(value, "item", None)
    if item is not None and getattr(value, "ndim", None) == 0:
        return item()
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, str):  # str subclasses (dtypes)
        return str(value)
    reg = getattr(value, "_get", None)
    if reg is not None and type(value).__name__ == "VirtualRegister":
        return {"register": int(reg())}
    if callable(value) and hasattr(value, "__name__"):
        return value.__name__
    return repr(value)


def _caller_line() -> str:
    f = sys._getframe(2)
    while f is not None and f.f_code.co_filename.startswith(_SIM_DIR):
        f = f.f_back
    if f is None:
        return "?"
    return f"{os.path.basename(f.f_code.co_filename)}:{f.f_lineno}"


_local = threading.local()


def current() -> Core:
    """The core of the calling thread (a default trn3/env-configured one outside any run)."""
    core = getattr(_local, "core", None)
    if core is None:
        core = Core(Run(target=resolve_target(None), precise=resolve_precise(None)))
        _local.core = core
        _local.default = core
    return core


def set_current(core: Core | None) -> Core | None:
    """Install `core` as this thread's current core; returns the previous one."""
    prev = getattr(_local, "core", None)
    _local.core = core
    return prev


@contextlib.contextmanager
def context(target: str | None = None, precise: bool | None = None, trace: bool = True):
    """A fresh single-core run context for direct use of instructions (tests). Yields the Core."""
    from moegen.sim import blas

    run = Run(target=resolve_target(target), precise=resolve_precise(precise), trace_enabled=trace)
    core = Core(run, 0)
    prev = set_current(core)
    try:
        with blas.limited_threads():
            yield core
    finally:
        set_current(prev)
