"""BLAS threading for simulated runs.

Each nc_matmul is a small matrix product (at most [128 x 128] @ [128 x 512] on trn2). OpenBLAS's
thread pool makes such products much slower on a loaded machine (measured: 11 ms instead of 0.14 ms
for [128,128]x[128,64] at load average 14), and LNC=2 runs two simulator threads that both call BLAS.
So while a kernel runs, the BLAS library NumPy loaded is limited to `MOEGEN_SIM_BLAS_THREADS` threads
(default 1) and restored afterwards. The library is found among the loaded shared objects; if there is
none (another BLAS, or not Linux), this does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading

import numpy as np  # noqa: F401 - NumPy must have loaded its BLAS before we look for it

_SET_NAMES = (
    "scipy_openblas_set_num_threads64_",
    "scipy_openblas_set_num_threads",
    "openblas_set_num_threads64_",
    "openblas_set_num_threads",
)
_GET_NAMES = (
    "scipy_openblas_get_num_threads64_",
    "scipy_openblas_get_num_threads",
    "openblas_get_num_threads64_",
    "openblas_get_num_threads",
)

_lock = threading.Lock()
_depth = [0]
_saved = [None]
_api: list = []  # [(setter, getter)] once looked up; [None] when unavailable


def _loaded_blas_paths() -> list[str]:
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower() and ".so" in line}
    except OSError:
        return []
    return sorted(p for p in paths if os.path.isfile(p))


def _lookup():
    if _api:
        return _api[0]
    found = None
    for path in _loaded_blas_paths():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        setter = next((getattr(lib, n) for n in _SET_NAMES if hasattr(lib, n)), None)
        getter = next((getattr(lib, n) for n in _GET_NAMES if hasattr(lib, n)), None)
        if setter is not None and getter is not None:
            setter.argtypes = [ctypes.c_int]
            setter.restype = None
            getter.argtypes = []
            getter.restype = ctypes.c_int
            found = (setter, getter)
            break
    _api.append(found)
    return found


def wanted_threads() -> int | None:
    """Threads to use while simulating: MOEGEN_SIM_BLAS_THREADS (default 1; 0 = leave BLAS alone)."""
    raw = os.environ.get("MOEGEN_SIM_BLAS_THREADS", "1").strip()
    try:
        n = int(raw)
    except ValueError:
        return 1
    return n if n > 0 else None


def get_threads() -> int | None:
    """Current BLAS thread count, or None when the BLAS library is not controllable."""
    api = _lookup()
    return int(api[1]()) if api else None


@contextlib.contextmanager
def limited_threads():
    """Limit BLAS threads while the block runs (re-entrant; restores the previous count at the end)."""
    n = wanted_threads()
    api = _lookup() if n is not None else None
    if api is None:
        yield
        return
    with _lock:
        if _depth[0] == 0:
            _saved[0] = int(api[1]())
            if _saved[0] != n:
                api[0](n)
        _depth[0] += 1
    try:
        yield
    finally:
        with _lock:
            _depth[0] -= 1
            if _depth[0] == 0 and _saved[0] is not None and _saved[0] != n:
                api[0](_saved[0])
