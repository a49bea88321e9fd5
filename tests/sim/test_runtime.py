"""Run-level behaviour of moegen.sim: BLAS threading while simulating, kernel arguments (copy in, written
back, written_args), the backend / target / precision switches."""

from __future__ import annotations

import numpy as np
import pytest

import moegen.sim as sim
from moegen.sim import blas
from moegen.sim import isa as nisa
from moegen.sim import language as nl


# -- BLAS threads (OpenBLAS threads make small matmuls ~80x slower under load) ----
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
        assert set(e) == {"core", "engine", "opcode", "operands", "bytes", "line", "reads", "writes", "addr_reads"}
        assert e["line"].startswith("test_runtime.py:")
    dma = trace[0]
    assert dma["engine"] == "dma" and dma["bytes"] == 64
    assert dma["operands"]["src"] == {
        "shape": (4, 4),
        "dtype": "float32",
        "buffer": "private_hbm",
        "name": "x",
        "region": {
            "mem": "hbm:x:0.1",
            "parts": [0, 1],
            "bytes": [0, 64],
            "pitch": 16,
            "row_bytes": 16,
            "rows": 4,
            "contig": 64,
        },
    }
    assert dma["reads"] == [dma["operands"]["src"]["region"]]
    # the register: written by register_alloc, read (at issue) by the copy whose offset it holds
    alloc, copy = trace[2], trace[3]
    reg_region = {"mem": "reg0", "parts": [0, 1], "bytes": [4, 8], "contig": 4}
    assert alloc["opcode"] == "register_alloc" and alloc["writes"] == [reg_region]
    assert copy["opcode"] == "tensor_copy" and copy["addr_reads"] == [reg_region]


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


# -- LNC=2 race check: byte-exact on interleaved (strided) accesses -----------------------------------
def _interleaved(x, clash):
    out = nl.ndarray(x.shape, x.dtype, buffer=nl.shared_hbm)
    pid = nl.program_id(0)
    t = nl.ndarray((x.shape[0] // 2, x.shape[1]), x.dtype, buffer=nl.sbuf)
    row0 = 0 if clash else pid
    nisa.dma_copy(t, x[row0 : x.shape[0] : 2, :])
    nisa.dma_copy(out[row0 : x.shape[0] : 2, :], t)  # core 0 even rows, core 1 odd rows (or both even)
    if clash:
        nisa.core_barrier(out, (0, 1))
        nisa.dma_copy(t, x[1 : x.shape[0] : 2, :])
        nisa.dma_copy(out[1 : x.shape[0] : 2, :], t)
    return out


def test_lnc2_interleaved_rows_are_not_a_race_but_shared_rows_are():
    x = np.arange(32, dtype=np.float32).reshape(8, 4)
    np.testing.assert_array_equal(sim.simulate(sim.jit(_interleaved)[2])(x, False), x)
    with pytest.raises(sim.NkiSimError, match="LNC race on shared HBM tensor .* core 0 writes .* core 1 writes"):
        sim.simulate(sim.jit(_interleaved)[2])(x, True)


def test_read_only_arguments_are_not_copied_and_writes_copy_first():
    seen = {}

    def k(x, y):
        seen["x_shared"] = np.shares_memory(x._alloc.data, caller_x)
        t = nl.ndarray(y.shape, y.dtype, buffer=nl.sbuf)
        nisa.memset(t, 3.0)
        nisa.dma_copy(y, t)  # first write to y: copied before it
        seen["y_shared_after_write"] = np.shares_memory(y._alloc.data, caller_y)
        seen["caller_y_during_run"] = float(caller_y[0, 0])
        return None

    caller_x = np.ones((64, 64), np.float32)
    caller_x.flags.writeable = False  # read-only caller arrays are fine too
    caller_y = np.zeros((2, 2), np.float32)
    sim.simulate(k)(caller_x, caller_y)
    assert seen == {"x_shared": True, "y_shared_after_write": False, "caller_y_during_run": 0.0}
    np.testing.assert_array_equal(caller_y, 3.0)
    assert sim.last_run().written_names == ["y"]


def _dyn_rows(x, same):
    out = nl.ndarray(x.shape, x.dtype, buffer=nl.shared_hbm)
    pid = nl.program_id(0)
    row = nisa.register_alloc(0 if same else pid)
    t = nl.ndarray((1, x.shape[1]), x.dtype, buffer=nl.sbuf)
    nisa.dma_copy(t, x[0:1, :])
    nisa.dma_copy(out.ap([[x.shape[1], 1], [1, x.shape[1]]], offset=0, scalar_offset=row), t)
    nisa.core_barrier(out, (0, 1))
    return out


def test_lnc2_race_check_on_dynamic_offsets():
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    sim.simulate(sim.jit(_dyn_rows)[2])(x, False)  # rows 0 and 1: no race
    with pytest.raises(sim.NkiSimError, match="LNC race"):
        sim.simulate(sim.jit(_dyn_rows)[2])(x, True)


def test_race_sets_injective_layouts():
    from moegen.sim.races import _injective

    assert _injective((4, 8), (8, 1)) and _injective((4, 2), (1, 4)) and _injective((3,), (-2,))
    assert not _injective((4, 4), (1, 1)) and not _injective((4, 3), (0, 1))


def _bitcast_clash(x):
    out = nl.ndarray((2, 4), nl.float32, buffer=nl.shared_hbm)
    pid = nl.program_id(0)
    t = nl.ndarray((1, 4), nl.float32, buffer=nl.sbuf)
    nisa.dma_copy(t, x[0:1, :])
    if pid == 0:
        nisa.dma_copy(out[0:1, :], t)  # float32 row 0
    else:
        u = nl.ndarray((1, 2), nl.bfloat16, buffer=nl.sbuf)
        nisa.memset(u, 1.0)
        nisa.dma_copy(out.view(nl.bfloat16)[0:1, 6:8], u)  # bytes 12..15 of row 0: the same float
    nisa.core_barrier(out, (0, 1))
    return out


def test_lnc2_race_between_different_dtype_views():
    with pytest.raises(sim.NkiSimError, match="LNC race"):
        sim.simulate(sim.jit(_bitcast_clash)[2])(np.zeros((2, 4), np.float32))
