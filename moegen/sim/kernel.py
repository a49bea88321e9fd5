"""Kernel launch: `jit`, `simulate`, `load_module`, the `nki` import hook, and run results.

* `simulate(kernel)(*arrays, **kwargs)` runs a kernel (jit-decorated or plain function) on NumPy
  arrays and returns NumPy outputs mirroring the kernel's return (tensor, tuple, list, None).
  `simulate(kernel[2])` runs LNC=2: two threads (program ids 0 and 1) sharing HBM.
  Options: target ('trn2' | 'trn3', default NEURON_PLATFORM_TARGET_OVERRIDE else trn3), precise
  (default NKI_PRECISE_FP else True), trace (record the instruction trace, default True), backend
  ('sim' | 'real', default MOEGEN_SIM_BACKEND else 'sim'), trace_only (record the trace without
  computing any value: no products, no data moved, no sentinel fills; outputs are meaningless. A
  value the kernel's addresses or control flow read from a tensor (register_load, a runtime offset
  held in a tensor, an indirect vector_offset) raises NkiSimError, so a trace it returns is always
  the real instruction stream).
* `last_run()` returns the `RunResult` of the most recent simulation in this process: outputs,
  trace, written_args (positions / keyword names of the argument arrays the kernel wrote),
  written_names (their parameter names), target, precise, lnc; `assert_wrote_only(*names)`.
* Arguments: every NumPy array becomes a simulated HBM tensor (an int64 / uint64 array is refused,
  naming the argument: NKI has no 64-bit integer tensors and narrowing would change ids; float64 is
  rounded to float32), copy-on-write (read-only inputs are
  never copied; the first write copies, so the kernel never writes the caller's memory); after a
  successful run, arrays whose tensor the kernel wrote are updated in place
  (the official simulator: "Input arrays are updated in-place if the kernel modified the
  corresponding HBM tensors"). A failed run leaves the caller's arrays untouched.
* `load_module(path)` executes a kernel file that does `import nki`, `import nki.language as nl`,
  `import nki.isa as nisa` against the simulator. The fake `nki` modules are in sys.modules only
  while the file loads and while a kernel runs; they are removed (and any real ones restored) after.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import itertools
import os
import sys
import threading
import types
from dataclasses import dataclass, field

import numpy as np

from moegen.sim import blas, races, runtime
from moegen.sim import dtypes as dt
from moegen.sim.errors import NkiSimError
from moegen.sim.tensor import MemoryRegion, NkiTensor, from_numpy


# ------------------------------------------------------------------------------------------------
# jit
# ------------------------------------------------------------------------------------------------
class Kernel:
    """A jit-decorated kernel. `kernel[2]` selects LNC=2; calling it runs the simulator."""

    def __init__(self, fn, lnc: int = 1, options: dict | None = None):
        self.fn = fn
        self.lnc = lnc
        self.options = dict(options or {})
        self.__name__ = getattr(fn, "__name__", "kernel")
        self.__doc__ = getattr(fn, "__doc__", None)
        self.__wrapped__ = fn

    def __getitem__(self, grid) -> Kernel:
        if isinstance(grid, tuple):
            if len(grid) != 1:
                raise NkiSimError(
                    f"kernel[{grid}]: only one launch dimension is allowed (limit: kernel[1] or kernel[2])"
                )
            grid = grid[0]
        if not isinstance(grid, int) or grid not in (1, 2):
            raise NkiSimError(f"kernel[{grid!r}]: LNC must be 1 or 2")
        return Kernel(self.fn, grid, self.options)

    def __call__(self, *args, **kwargs):
        if any(isinstance(a, NkiTensor) for a in itertools.chain(args, kwargs.values())):
            raise NkiSimError(
                f"{self.__name__}: a jit kernel cannot be called from inside a kernel; "
                "sub-kernels are plain (undecorated) functions"
            )
        return simulate(self)(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<nki.jit kernel {self.__name__} lnc={self.lnc}>"


def jit(fn=None, **kwargs):
    """`@nki.jit` or `@nki.jit(...)`: wraps a kernel function (options are accepted and recorded)."""
    if fn is None:
        return lambda f: Kernel(f, 1, kwargs)
    if isinstance(fn, Kernel):
        return fn
    if not callable(fn):
        raise NkiSimError(f"nki.jit: expected a function, got {type(fn).__name__}")
    return Kernel(fn, 1, kwargs)


# ------------------------------------------------------------------------------------------------
# Run results
# ------------------------------------------------------------------------------------------------
@dataclass
class RunResult:
    """What one simulation produced. trace: list of dicts (see runtime); written_args: indices of the
    positional array arguments (and names of keyword array arguments) the kernel wrote into;
    written_names: the kernel parameter names of those arguments."""

    outputs: object = None
    trace: list = field(default_factory=list)
    written_args: list = field(default_factory=list)
    target: str = "trn3"
    precise: bool = True
    lnc: int = 1
    written_names: list = field(default_factory=list)
    output_mems: list = field(default_factory=list)  # trace mem keys of the HBM tensors the kernel returned

    def assert_wrote_only(self, *names: str) -> None:
        """Raise AssertionError if the kernel wrote an argument other than the named parameters (the
        arguments it documents as outputs)."""
        extra = [n for n in self.written_names if n not in names]
        if extra:
            raise AssertionError(
                f"kernel wrote argument(s) {', '.join(extra)} besides its documented outputs "
                f"({', '.join(names) or 'none'})"
            )


_last = threading.local()
_last_global: list = [None]


def last_run() -> RunResult | None:
    """The RunResult of the most recent simulate() call (in this process)."""
    return _last_global[0]


# ------------------------------------------------------------------------------------------------
# import hook
# ------------------------------------------------------------------------------------------------
_hook_lock = threading.RLock()
_hook_depth = [0]
_saved_modules: dict = {}
_NKI_NAMES = ("nki", "nki.language", "nki.isa", "nki.collectives")


def _fake_modules() -> dict:
    from moegen.sim import collectives, isa, language

    pkg = types.ModuleType("nki")
    pkg.__path__ = []  # a package, so `import nki.language` works
    pkg.__doc__ = "moegen.sim stand-in for the nki package (active only while loading / running kernels)"
    pkg.jit = jit
    pkg.simulate = nki_simulate
    pkg.language = language
    pkg.isa = isa
    pkg.collectives = collectives
    return {"nki": pkg, "nki.language": language, "nki.isa": isa, "nki.collectives": collectives}


@contextlib.contextmanager
def nki_modules():
    """Make `import nki` (and nki.language / isa / collectives) resolve to the simulator; re-entrant."""
    with _hook_lock:
        if _hook_depth[0] == 0:
            fakes = _fake_modules()
            _saved_modules.clear()
            for name in _NKI_NAMES:
                if name in sys.modules:
                    _saved_modules[name] = sys.modules[name]
            sys.modules.update(fakes)
        _hook_depth[0] += 1
    try:
        yield
    finally:
        with _hook_lock:
            _hook_depth[0] -= 1
            if _hook_depth[0] == 0:
                for name in _NKI_NAMES:
                    sys.modules.pop(name, None)
                sys.modules.update(_saved_modules)
                _saved_modules.clear()


_module_counter = itertools.count()
_profile_counter = itertools.count()


def load_module(path, backend: str | None = None) -> types.ModuleType:
    """Execute the kernel file at `path` with `nki` bound to the simulator; returns the module object."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(path)
    stem = os.path.splitext(os.path.basename(path))[0]
    modname = f"moegen_sim_kernels.{stem}_{next(_module_counter)}"
    spec = importlib.util.spec_from_file_location(modname, path)
    module = importlib.util.module_from_spec(spec)
    if _resolve_backend(backend) == "real":
        _real_nki()
        spec.loader.exec_module(module)
        return module
    with nki_modules():
        sys.modules[modname] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(modname, None)
            raise
    return module


# ------------------------------------------------------------------------------------------------
# simulate
# ------------------------------------------------------------------------------------------------
def _resolve_backend(backend: str | None) -> str:
    b = backend if backend is not None else os.environ.get("MOEGEN_SIM_BACKEND", "sim")
    b = (b or "sim").strip().lower()
    if b not in ("sim", "real"):
        raise NkiSimError(f"backend: {b!r} (limit: 'sim' or 'real')")
    return b


def _real_nki():
    """The real `nki` package (not ours), or a clear error."""
    with _hook_lock:
        if _hook_depth[0]:
            raise NkiSimError("backend='real' cannot run while the simulator's nki modules are active")
    try:
        import nki as real  # noqa: PLC0415
    except ImportError as e:
        raise NkiSimError(
            "backend='real' requested (MOEGEN_SIM_BACKEND=real) but the real nki package is not "
            f"importable here ({e}); install the Neuron SDK or use the default backend 'sim'"
        ) from None
    if not hasattr(real, "simulate"):
        raise NkiSimError("backend='real': the importable nki package has no nki.simulate (need NKI >= 0.3)")
    return real


def nki_simulate(kernel):
    """`nki.simulate(kernel)` exactly as the real API: options come from the environment variables."""
    return simulate(kernel)


_recording = threading.local()


@contextlib.contextmanager
def recording():
    """Every `simulate` call in this block (this thread) records the trace, even one made with
    trace=False (a harness that normally skips it; `moegen profile` needs it)."""
    prev = getattr(_recording, "on", False)
    _recording.on = True
    try:
        yield
    finally:
        _recording.on = prev


def simulate(
    kernel,
    target: str | None = None,
    precise: bool | None = None,
    trace: bool = True,
    backend: str | None = None,
    trace_only: bool = False,
):
    """Return a callable running `kernel` on NumPy arrays and returning NumPy outputs (see module doc)."""
    if not isinstance(kernel, Kernel):
        if not callable(kernel):
            raise NkiSimError(f"simulate: expected a kernel function, got {type(kernel).__name__}")
        kernel = Kernel(kernel)

    def run(*args, **kwargs):
        if _resolve_backend(backend) == "real":
            return _run_real(kernel, args, kwargs, target, precise).outputs
        if trace_only and _resolve_backend(backend) == "real":
            raise NkiSimError("simulate: trace_only needs backend='sim' (the real simulator has no trace)")
        traced = trace or trace_only or getattr(_recording, "on", False)
        return _run(kernel, args, kwargs, target, precise, traced, trace_only).outputs

    run.__name__ = f"simulate({kernel.__name__})"
    return run


@contextlib.contextmanager
def _env(updates: dict):
    """Set environment variables for the duration of the block (None: leave as is)."""
    saved = {k: os.environ.get(k) for k in updates}
    try:
        for k, v in updates.items():
            if v is not None:
                os.environ[k] = v
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _run_real(kernel: Kernel, args, kwargs, target, precise) -> RunResult:
    """Run through the real package's `nki.simulate` (backend='real'). target / precise become its
    environment variables (NEURON_PLATFORM_TARGET_OVERRIDE, NKI_PRECISE_FP) for the call. The real
    simulator has no trace; written_args are the array arguments whose values changed."""
    real = _real_nki()
    fn = kernel.fn
    k = fn if hasattr(fn, "__getitem__") or kernel.lnc == 1 else real.jit(fn)
    if kernel.lnc > 1:
        k = k[kernel.lnc]
    env = {
        "NEURON_PLATFORM_TARGET_OVERRIDE": None if target is None else runtime.resolve_target(target),
        "NKI_PRECISE_FP": None if precise is None else ("1" if precise else "0"),
    }
    arrays = {i: a for i, a in enumerate(args) if isinstance(a, np.ndarray)}
    arrays.update({n: a for n, a in kwargs.items() if isinstance(a, np.ndarray)})
    before = {key: a.copy() for key, a in arrays.items()}
    with _env(env):
        out = real.simulate(k)(*args, **kwargs)
    written = [key for key, a in arrays.items() if not np.array_equal(a, before[key], equal_nan=a.dtype.kind == "f")]
    names = _param_names(getattr(fn, "__wrapped__", fn), len(args))
    res = RunResult(
        outputs=out,
        trace=[],
        written_args=written,
        target=runtime.resolve_target(target),
        precise=runtime.resolve_precise(precise),
        lnc=kernel.lnc,
        written_names=[names[key] if isinstance(key, int) else key for key in written],
    )
    _last_global[0] = res
    return res


# 64-bit integer arrays have no NKI dtype (NKI 0.6 tensors are at most 32-bit integers): converting one
# would silently change the ids it holds (2**32 + 1 becomes 2147483647), so it is refused.
_NO_NKI_DTYPE = {np.dtype(np.int64): "int32", np.dtype(np.uint64): "uint32"}


def _check_arguments(fn, args, kwargs) -> None:
    """Refuse, before any conversion, a 64-bit integer array argument and an integer argument breaking the
    kernel's ARGUMENT_RANGES (module-level {name: (low, high)}: every element in [low, high), high an int
    or (other argument, axis)), naming the argument, the element and the value."""
    names = _param_names(fn, len(args))
    values = {**dict(zip(names, args)), **kwargs}
    for name, value in values.items():
        narrower = _NO_NKI_DTYPE.get(getattr(value, "dtype", None))
        if narrower is not None:
            raise NkiSimError(
                f"simulate: argument {name} has dtype {value.dtype}, which no NKI tensor has (expected a "
                f"32-bit integer dtype such as {narrower}); convert it before the call, checking its values fit"
            )
    ranges = getattr(fn, "__globals__", {}).get("ARGUMENT_RANGES") or {}
    for name, (low, high) in ranges.items():
        ids = values.get(name)
        if not isinstance(ids, np.ndarray) or ids.dtype.kind not in "iu":
            continue  # absent or not integer: the kernel's own dtype check reports it
        if isinstance(high, tuple):
            other, axis = high
            if not isinstance(values.get(other), np.ndarray) or values[other].ndim <= axis:
                continue  # the kernel's shape checks report it
            high = values[other].shape[axis]
        bad = (ids < low) | (ids >= high)
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise NkiSimError(
                f"{getattr(fn, '__name__', 'kernel')}: {name}[{', '.join(map(str, where))}] = {ids[where]}: "
                f"out of range [{low}, {high}) ({int(bad.sum())} bad value(s); the hardware would not check)"
            )


def _returned_mems(results: list) -> list:
    """Trace mem keys ('hbm:<name>:<core>.<id>') of the HBM tensors the cores' kernel calls returned."""
    values = list(results)
    mems: list = []
    while values:
        v = values.pop(0)
        if isinstance(v, (tuple, list)):
            values.extend(v)
            continue
        alloc = getattr(v, "_alloc", None)
        if alloc is not None and alloc.pstride is None:
            key = alloc.region_key()
            if key not in mems:
                mems.append(key)
    return mems


def _run(kernel: Kernel, args, kwargs, target, precise, trace, trace_only=False) -> RunResult:
    _check_arguments(kernel.fn, args, kwargs)
    run = runtime.Run(
        target=runtime.resolve_target(target),
        precise=runtime.resolve_precise(precise),
        num_programs=kernel.lnc,
        trace_enabled=trace,
        trace_only=trace_only,
        barrier_scope=runtime.resolve_barrier_scope(),
    )
    lnc = kernel.lnc
    buffer = MemoryRegion.shared_hbm if lnc > 1 else MemoryRegion.hbm
    if lnc > 1:
        run.barrier = threading.Barrier(lnc)
    results: list = [None] * lnc
    errors: list = [None] * lnc
    wrapped: dict = {}

    def program(pid: int):
        core = runtime.Core(run, pid)
        prev = runtime.set_current(core)
        try:
            if pid == 0:
                # wrap the arguments once (shared by all cores: kernel arguments live in shared HBM)
                wrapped["args"], wrapped["kwargs"], wrapped["allocs"] = _wrap_args(
                    args, kwargs, buffer, _param_names(kernel.fn, len(args))
                )
                ready.set()
            else:
                ready.wait()
                if "args" not in wrapped:
                    return
            prof_path = os.environ.get("MOEGEN_SIM_PROFILE")
            if prof_path:  # developer aid: cProfile each core's thread (cProfile sees one thread only)
                import cProfile  # noqa: PLC0415

                prof = cProfile.Profile()
                try:
                    results[pid] = prof.runcall(kernel.fn, *wrapped["args"], **wrapped["kwargs"])
                finally:
                    prof.dump_stats(f"{prof_path}.{next(_profile_counter)}.core{pid}")
            else:
                results[pid] = kernel.fn(*wrapped["args"], **wrapped["kwargs"])
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            errors[pid] = e
            ready.set()
            if run.barrier is not None:
                run.barrier.abort()
        finally:
            runtime.set_current(prev)

    ready = threading.Event()
    with nki_modules(), blas.limited_threads():
        if lnc == 1:
            program(0)
        else:
            threads = [threading.Thread(target=program, args=(p,), name=f"nki-core{p}") for p in range(lnc)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
    _raise_first(errors)
    if lnc > 1:
        races.check_epoch(run, None)
    out = _unwrap(results[0], "return value")
    allocs = wrapped.get("allocs", {})
    written = _write_back(args, kwargs, allocs)
    res = RunResult(
        outputs=out,
        trace=run.trace,
        written_args=written,
        target=run.target,
        precise=run.precise,
        lnc=lnc,
        written_names=[allocs[k].name for k in written],
        output_mems=_returned_mems(results),
    )
    _last_global[0] = res
    return res


def _raise_first(errors: list) -> None:
    real = [e for e in errors if e is not None]
    if not real:
        return
    # prefer a root cause over "partner core failed" follow-on errors
    primary = next((e for e in real if "partner" not in str(e) and "never arrived" not in str(e)), real[0])
    raise primary


def _param_names(fn, n: int) -> list[str]:
    """Names of the first n positional parameters of the kernel function (argN beyond them)."""
    try:
        params = [
            p.name
            for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        params = []
    return [params[i] if i < len(params) else f"arg{i}" for i in range(n)]


def _wrap_args(args, kwargs, buffer, names):
    allocs: dict = {}
    new_args = []
    for i, a in enumerate(args):
        new_args.append(_wrap_one(a, buffer, names[i], i, allocs))
    new_kwargs = {k: _wrap_one(v, buffer, k, k, allocs) for k, v in kwargs.items()}
    return new_args, new_kwargs, allocs


def _wrap_one(a, buffer, name, key, allocs):
    if isinstance(a, np.ndarray) or _is_array_scalar(a):
        # copy-on-write: read-only inputs are never copied; the first write copies, so the kernel never
        # writes the caller's array (modified inputs are written back after a successful run)
        t = from_numpy(np.asarray(a), buffer, name=name, share=True)
        t._alloc.arg_index = key
        allocs[key] = t._alloc
        return t
    if isinstance(a, NkiTensor):
        raise NkiSimError(f"simulate: argument {name} is already an NkiTensor; pass NumPy arrays")
    return a


def _is_array_scalar(a) -> bool:
    return isinstance(a, np.generic) and not isinstance(a, (np.bool_,))


def _unwrap(value, what: str):
    if value is None:
        return None
    if isinstance(value, NkiTensor):
        if value._alloc.arg_index is not None and value.buffer in (MemoryRegion.private_hbm, MemoryRegion.shared_hbm):
            # returning a (written-in-place) kernel argument, as the dma_copy page's indirect scatter
            # example does: its values, as a new array
            return value.read("return")
        if value.buffer is not MemoryRegion.shared_hbm:
            raise NkiSimError(
                f"kernel {what}: returned tensor '{value.name}' is in {value.buffer.name} "
                "(limit: outputs must be allocated in nl.shared_hbm)"
            )
        if value._covers_allocation():  # the run is over: hand out the storage itself, no copy
            value._note_access("r", "return")
            return value._alloc.typed(value._alloc.data.dtype).reshape(value.shape)
        return value.read("return")
    if isinstance(value, tuple):
        return tuple(_unwrap(v, what) for v in value)
    if isinstance(value, list):
        return [_unwrap(v, what) for v in value]
    if isinstance(value, dict):
        return {k: _unwrap(v, what) for k, v in value.items()}
    if isinstance(value, (int, float, bool, str, np.generic)):
        return value
    raise NkiSimError(f"kernel {what}: cannot return {type(value).__name__} (limit: tensors, tuples, lists)")


def _write_back(args, kwargs, allocs: dict) -> list:
    """Copy modified argument tensors back into the caller's arrays; return which were written."""
    written = []
    for key, alloc in allocs.items():
        if not alloc.written:
            continue
        written.append(key)
        target = args[key] if isinstance(key, int) else kwargs[key]
        if not isinstance(target, np.ndarray) or not target.flags.writeable:
            continue
        data = alloc.data.reshape(alloc.shape)
        if data.dtype == target.dtype:
            np.copyto(target, data.reshape(target.shape))
        else:
            vals = dt.to_f32(data)
            np.copyto(target, vals.reshape(target.shape).astype(target.dtype), casting="unsafe")
    return written
