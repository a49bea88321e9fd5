"""Run-level behaviour of moegen.sim: BLAS threading while simulating, kernel arguments (copy in, written
back, written_args), the backend / target / precision switches."""

from __future__ import annotations

import numpy as np
import pytest

import moegen.sim as sim
from moegen.sim import blas
from moegen.sim import isa as nisa
from moegen.sim import language as nl


# -- BLAS threads (SIM_REQUESTS tkg/cte: OpenBLAS threads make small matmuls ~80x slower under load) ----
def test_blas_limited_to_one_thread_while_a_kernel_runs(monkeypatch):
    if blas.get_threads() is None:
        pytest.skip("BLAS library not controllable here")
    seen = []

    def k(x):
        seen.append(blas.get_threads())
        return None

    monkeypatch.delenv("MOEGEN_SIM_BLAS_THREADS", raising=False)
    before = blas.get_threads()
    sim.simulate(k)(np.zeros((1, 1), np.float32))
    assert seen == [1]
    assert blas.get_threads() == before
    with sim.context():
        assert blas.get_threads() == 1
    assert blas.get_threads() == before


def test_blas_thread_setting_from_environment(monkeypatch):
    monkeypatch.setenv("MOEGEN_SIM_BLAS_THREADS", "0")
    assert blas.wanted_threads() is None
    monkeypatch.setenv("MOEGEN_SIM_BLAS_THREADS", "3")
    assert blas.wanted_threads() == 3


# -- `while reg:` (SIM_AUDIT #8): documented in the NKI 0.6 VirtualRegister docstring, deprecated ----------
def test_while_register_loop_runs_but_if_register_is_refused():
    seen = []
    with sim.context(target="trn2"):
        c = nl.ndarray((1, 1), nl.int32)
        nisa.memset(c, 3)
        reg = nisa.register_alloc()
        nisa.register_load(reg, c)
        while reg:
            seen.append(1)
            nisa.tensor_scalar(dst=c, data=c, op0=nl.subtract, operand0=1.0)
            nisa.register_load(reg, c)
        with pytest.raises(TypeError, match="no compile-time value"):
            if reg:
                pass
    assert len(seen) == 3


# -- kernel arguments: copied in, written back, recorded ----------------------------------------------
def _writes_second(x, scratch):
    t = nl.ndarray(x.shape, x.dtype, buffer=nl.sbuf)
    nisa.dma_copy(t, x)
    nisa.dma_copy(scratch, t)
    out = nl.ndarray(x.shape, x.dtype, buffer=nl.shared_hbm)
    nisa.dma_copy(out, scratch)  # the kernel sees its own write
    return out


def test_arguments_do_not_alias_caller_arrays_during_the_run():
    seen = {}

    def k(x):
        t = nl.ndarray(x.shape, x.dtype, buffer=nl.sbuf)
        nisa.memset(t, 5.0)
        nisa.dma_copy(x, t)
        seen["caller_during_run"] = float(caller[0, 0])
        return None

    caller = np.zeros((2, 2), np.float32)
    sim.simulate(k)(caller)
    assert seen["caller_during_run"] == 0.0  # the kernel wrote its own copy
    np.testing.assert_array_equal(caller, 5.0)  # written back after the run (documented)


def test_failed_run_leaves_caller_arrays_untouched():
    def k(x):
        t = nl.ndarray(x.shape, x.dtype, buffer=nl.sbuf)
        nisa.memset(t, 5.0)
        nisa.dma_copy(x, t)
        nl.ndarray((256, 2), nl.float32)  # partition dim > 128: error after the write
        return None

    caller = np.zeros((2, 2), np.float32)
    with pytest.raises(sim.NkiSimError):
        sim.simulate(k)(caller)
    np.testing.assert_array_equal(caller, 0.0)


def test_same_array_passed_twice_gives_two_tensors():
    x = np.ones((2, 2), np.float32)
    out = sim.simulate(_writes_second)(x, x)
    np.testing.assert_array_equal(out, 1.0)
    res = sim.last_run()
    assert res.written_args == [1] and res.written_names == ["scratch"]


def test_written_names_and_assert_wrote_only():
    x = np.ones((2, 3), np.float32)
    scratch = np.zeros((2, 3), np.float32)
    sim.simulate(_writes_second)(x, scratch)
    res = sim.last_run()
    assert res.written_names == ["scratch"] and res.written_args == [1]
    res.assert_wrote_only("scratch")
    with pytest.raises(AssertionError, match="wrote argument.*scratch"):
        res.assert_wrote_only()
    np.testing.assert_array_equal(scratch, x)
    sim.simulate(_writes_second)(x, scratch=scratch)
    assert sim.last_run().written_args == ["scratch"] and sim.last_run().written_names == ["scratch"]


def test_kernel_may_return_its_argument():
    def k(x, output):
        t = nl.ndarray(x.shape, x.dtype, buffer=nl.sbuf)
        nisa.dma_copy(t, x)
        nisa.dma_copy(output, t)
        return output

    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    output = np.zeros((2, 3), np.float32)
    got = sim.simulate(k)(x, output)
    np.testing.assert_array_equal(got, x)
    np.testing.assert_array_equal(output, x)
    assert got is not output


def test_argument_tensors_are_named_after_parameters():
    def k(hidden):
        t = nl.ndarray((2, 2), nl.float32, buffer=nl.sbuf)
        nisa.dma_copy(t, hidden)
        return None

    sim.simulate(k)(np.zeros((2, 2), np.float32))
    assert sim.last_run().trace[0]["operands"]["src"]["name"] == "hidden"


# -- the trace is plain data --------------------------------------------------------------------------
def test_trace_is_plain_data_with_the_documented_fields():
    import json

    def k(x):
        t = nl.ndarray(x.shape, x.dtype, buffer=nl.sbuf)
        nisa.dma_copy(t, x, dge_mode=nisa.dge_mode.swdge)
        u = nl.ndarray(x.shape, x.dtype, buffer=nl.sbuf)
        nisa.activation(u, nl.exp, t, scale=np.float32(2.0))
        reg = nisa.register_alloc(1)
        v = nl.ndarray((x.shape[0], 2), x.dtype, buffer=nl.sbuf)
        nisa.tensor_copy(v, u.ap([[x.shape[1], x.shape[0]], [1, 2]], offset=0, scalar_offset=reg, indirect_dim=1))
        out = nl.ndarray(x.shape, x.dtype, buffer=nl.shared_hbm)
        nisa.dma_copy(out, u)
        return out

    sim.simulate(k, target="trn2")(np.zeros((4, 4), np.float32))
    trace = sim.last_run().trace
    assert json.loads(json.dumps(trace))  # only builtins
    for e in trace:
        assert set(e) == {"core", "engine", "opcode", "operands", "bytes", "line"}
        assert e["line"].startswith("test_runtime.py:")
    dma = trace[0]
    assert dma["engine"] == "dma" and dma["bytes"] == 64
    assert dma["operands"]["src"] == {"shape": (4, 4), "dtype": "float32", "buffer": "private_hbm", "name": "x"}


# -- backend switch: the real nki.simulate when the real package is importable ------------------------
class _FakeRealNki:
    """Stands in for an installed Neuron `nki` package (records how it was called)."""

    def __init__(self):
        import types

        self.calls = []
        mod = types.ModuleType("nki")

        def simulate(kernel):
            def run(*args, **kwargs):
                import os

                self.calls.append(
                    (kernel, os.environ.get("NEURON_PLATFORM_TARGET_OVERRIDE"), os.environ.get("NKI_PRECISE_FP"))
                )
                args[1][...] = 7.0  # the real simulator writes modified inputs back in place
                return args[0] * 2

            return run

        class Jit:
            def __init__(self, fn):
                self.fn = fn

            def __getitem__(self, lnc):
                return ("lnc", lnc, self.fn)

        mod.simulate = simulate
        mod.jit = Jit
        self.module = mod


def test_real_backend_by_argument_and_environment(monkeypatch):
    import sys

    fake = _FakeRealNki()
    monkeypatch.setitem(sys.modules, "nki", fake.module)
    monkeypatch.delenv("NEURON_PLATFORM_TARGET_OVERRIDE", raising=False)

    def kern(x, out):
        return None

    x, out = np.ones(3, np.float32), np.zeros(3, np.float32)
    got = sim.simulate(kern, backend="real", target="trn2", precise=False)(x, out)
    np.testing.assert_array_equal(got, 2 * x)
    assert fake.calls[-1] == (kern, "trn2", "0")
    res = sim.last_run()
    assert res.written_names == ["out"] and res.trace == [] and res.target == "trn2"
    assert "NEURON_PLATFORM_TARGET_OVERRIDE" not in __import__("os").environ  # restored
    monkeypatch.setenv("MOEGEN_SIM_BACKEND", "real")
    sim.simulate(sim.jit(kern)[2])(x, out)
    assert fake.calls[-1][0] == ("lnc", 2, kern)
    monkeypatch.setenv("MOEGEN_SIM_BACKEND", "sim")
    sim.simulate(kern)(x, out)  # ours again
    assert len(fake.calls) == 2
