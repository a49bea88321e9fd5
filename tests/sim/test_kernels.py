"""End to end: kernel files through load_module + simulate, jit forms, LNC=2 (barrier, sendrecv, races),
targets, precision switch, written-argument tracking, trace, backend switch, static check."""

from __future__ import annotations

import pathlib
import sys

import ml_dtypes
import numpy as np
import pytest

import moegen.sim as sim
from moegen.sim import NkiSimError
from moegen.sim import isa as nisa
from moegen.sim import language as nl

KERNELS = pathlib.Path(__file__).parent / "kernels"
RNG = np.random.default_rng(11)
BF16 = ml_dtypes.bfloat16


def load(name):
    return sim.load_module(KERNELS / f"{name}.py")


def test_load_module_leaves_no_fake_nki():
    before = sys.modules.get("nki")
    mod = load("tiled_matmul")
    assert sys.modules.get("nki") is before
    assert isinstance(mod.tiled_matmul, sim.Kernel)


@pytest.mark.parametrize("target", ["trn2", "trn3"])
def test_tiled_matmul_kernel(target):
    a = RNG.standard_normal((256, 128)).astype(BF16)  # lhsT [K, M]
    b = RNG.standard_normal((256, 1024)).astype(BF16)
    out = sim.simulate(load("tiled_matmul").tiled_matmul, target=target)(a, b)
    ref = a.astype(np.float32).T @ b.astype(np.float32)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-3)
    res = sim.last_run()
    assert res.target == target and res.written_args == []
    assert {e["opcode"] for e in res.trace} >= {"dma_copy", "nc_matmul", "tensor_copy"}


def test_softmax_rows_kernel():
    x = RNG.standard_normal((256, 64)).astype(np.float32)
    out = sim.simulate(load("softmax_rows").softmax_rows, target="trn2")(x)
    e = np.exp(x - x.max(1, keepdims=True))
    np.testing.assert_allclose(out, e / e.sum(1, keepdims=True), rtol=1e-5, atol=1e-6)


def test_transpose_kernel():
    x = RNG.standard_normal((128, 256)).astype(BF16)
    np.testing.assert_array_equal(sim.simulate(load("transpose2d").transpose2d, target="trn2")(x), x.T)


def test_indirect_gather_kernel():
    table = RNG.standard_normal((50, 16)).astype(np.float32)
    ids = np.array([3, 49, 60, 0, -2], np.int32)
    out = sim.simulate(load("indirect_gather").indirect_gather, target="trn2")(table, ids)
    ref = np.zeros((5, 16), np.float32)
    ref[[0, 1, 3]] = table[[3, 49, 0]]
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("path", sorted(KERNELS.glob("*.py")), ids=lambda p: p.stem)
def test_kernel_files_pass_static_check(path):
    assert [f for f in sim.static_check(path) if f.severity == "error"] == []


def test_jit_forms_and_call():
    def body(x):
        out = nl.ndarray(x.shape, x.dtype, buffer=nl.shared_hbm)
        nisa.dma_copy(out, x)
        return out, (out,)

    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    for k in (sim.jit(body), sim.jit()(body), sim.jit(platform_target="trn2")(body)):
        a, (b,) = k(x)
        np.testing.assert_array_equal(a, x)
        np.testing.assert_array_equal(b, x)
    with pytest.raises(NkiSimError, match="LNC must be 1 or 2"):
        sim.jit(body)[4]


def test_outputs_must_be_shared_hbm():
    def k(x):
        out = nl.ndarray(x.shape, x.dtype, buffer=nl.hbm)
        nisa.dma_copy(out, x)
        return out

    with pytest.raises(NkiSimError, match="must be allocated in nl.shared_hbm"):
        sim.simulate(k)(np.zeros((2, 2), np.float32))


def test_written_inputs_are_recorded_and_written_back():
    def k(x, scratch):
        t = nl.ndarray(x.shape, x.dtype, buffer=nl.sbuf)
        nisa.dma_copy(t, x)
        nisa.dma_copy(scratch, t)
        return None

    x = np.ones((4, 4), np.float32)
    scratch = np.zeros((4, 4), np.float32)
    assert sim.simulate(k)(x, scratch=scratch) is None
    assert sim.last_run().written_args == ["scratch"]
    np.testing.assert_array_equal(scratch, x)


def test_target_and_precision_from_environment(monkeypatch):
    def k(x):
        out = nl.ndarray((1, 1), nl.float32, buffer=nl.shared_hbm)
        t = nl.ndarray((1, 1), nl.bfloat16, buffer=nl.sbuf)
        nisa.dma_copy(t, x)
        nisa.dma_copy(out, t)
        return out

    x = np.array([[1.0 + 2.0**-12]], np.float32)
    monkeypatch.setenv("NEURON_PLATFORM_TARGET_OVERRIDE", "trn2")
    monkeypatch.setenv("NKI_PRECISE_FP", "0")
    assert sim.simulate(k)(x)[0, 0] == x[0, 0]
    assert sim.last_run().target == "trn2" and not sim.last_run().precise
    monkeypatch.setenv("NKI_PRECISE_FP", "1")
    assert sim.simulate(k)(x)[0, 0] == 1.0
    monkeypatch.delenv("NEURON_PLATFORM_TARGET_OVERRIDE")
    sim.simulate(k)(x)
    assert sim.last_run().target == "trn3"


def test_real_backend_reports_clearly(monkeypatch):
    monkeypatch.setenv("MOEGEN_SIM_BACKEND", "real")
    with pytest.raises(NkiSimError, match="real nki package is not importable"):
        sim.simulate(lambda x: x)(np.zeros(1))


# -- LNC=2 ------------------------------------------------------------------------------------------
def _halves(x):
    out = nl.ndarray(x.shape, x.dtype, buffer=nl.shared_hbm)
    pid = nl.program_id(0)
    n = nl.num_programs()
    rows = x.shape[0] // n
    t = nl.ndarray((rows, x.shape[1]), x.dtype, buffer=nl.sbuf)
    nisa.dma_copy(t, x[pid * rows : (pid + 1) * rows, :])
    nisa.dma_copy(out[pid * rows : (pid + 1) * rows, :], t)
    nisa.core_barrier(out, (0, 1))
    # after the barrier each core reads the half the other core wrote
    u = nl.ndarray((rows, x.shape[1]), x.dtype, buffer=nl.sbuf)
    other = 1 - pid
    nisa.dma_copy(u, out[other * rows : (other + 1) * rows, :])
    got = nl.ndarray((rows, x.shape[1]), x.dtype, buffer=nl.sbuf)
    nisa.sendrecv(u, got, send_to_rank=other, recv_from_rank=other, pipe_id=0)
    nisa.core_barrier(out, (0, 1))
    nisa.dma_copy(out[pid * rows : (pid + 1) * rows, :], got)  # own half again, via the partner
    return out


def test_lnc2_barrier_and_sendrecv():
    x = RNG.standard_normal((256, 8)).astype(np.float32)
    out = sim.simulate(sim.jit(_halves)[2])(x)
    np.testing.assert_array_equal(out, x)
    res = sim.last_run()
    assert res.lnc == 2 and {e["core"] for e in res.trace} == {0, 1}


def test_lnc1_program_ids():
    seen = []

    def k(x):
        seen.append((nl.program_id(0), nl.num_programs(), nl.program_ndim()))
        return None

    sim.simulate(k)(np.zeros(1, np.float32))
    sim.simulate(sim.jit(k)[2])(np.zeros(1, np.float32))
    assert seen[0] == (0, 1, 0) and sorted(seen[1:]) == [(0, 2, 1), (1, 2, 1)]


def test_lnc2_race_is_reported_with_both_instructions():
    def racy(x):
        out = nl.ndarray(x.shape, x.dtype, buffer=nl.shared_hbm)
        t = nl.ndarray((4, 4), x.dtype, buffer=nl.sbuf)
        nisa.dma_copy(t, x[0:4, :])
        if nl.program_id(0) == 0:
            nisa.dma_copy(out[0:4, :], t)  # core 0 writes rows 0-3
        else:
            nisa.dma_copy(t, out[2:6, :])  # core 1 reads rows 2-5, unordered
        return out

    with pytest.raises(NkiSimError, match=r"LNC race .* core 0 writes it in dma_copy .* core 1 reads"):
        sim.simulate(sim.jit(racy)[2])(np.zeros((8, 4), np.float32))


def test_lnc2_disjoint_writes_are_not_races():
    def ok(x):
        out = nl.ndarray(x.shape, x.dtype, buffer=nl.shared_hbm)
        t = nl.ndarray((4, 4), x.dtype, buffer=nl.sbuf)
        pid = nl.program_id(0)
        nisa.dma_copy(t, x[pid * 4 : (pid + 1) * 4, :])
        nisa.dma_copy(out[pid * 4 : (pid + 1) * 4, :], t)
        return out

    x = RNG.standard_normal((8, 4)).astype(np.float32)
    np.testing.assert_array_equal(sim.simulate(sim.jit(ok)[2])(x), x)


def test_barrier_needs_lnc2_and_errors_propagate():
    def k(x):
        nisa.core_barrier(x, (0, 1))

    with pytest.raises(NkiSimError, match="LNC=1"):
        sim.simulate(k)(np.zeros((2, 2), np.float32))

    def bad(x):
        if nl.program_id(0) == 1:
            nl.ndarray((256, 2), nl.float32)
        nisa.core_barrier(x, (0, 1))

    with pytest.raises(NkiSimError, match="partition dimension 256"):
        sim.simulate(sim.jit(bad)[2])(np.zeros((2, 2), np.float32))


# -- static check --------------------------------------------------------------------------------------
BAD_KERNEL = """
import nki
import nki.language as nl
import nki.isa as nisa
import numpy as np


@nki.jit
def k(a, *, b=[1]):
    t = nl.ndarray((128, 128), nl.float32, buffer=nl.sbuf)
    r = nisa.register_alloc(0)
    if t:
        pass
    while r:
        pass
    if a.shape[0] > 3:
        pass
    x = nl.foo(t)
    nisa.dma_copy(t, a, bogus=1)
    for i in nl.affine_range(3):
        pass
    if a is None:
        pass
    try:
        pass
    except Exception:
        pass
    return {1: t}
"""


def test_static_check_rules():
    found = {(f.line, f.rule, f.severity) for f in sim.static_check(BAD_KERNEL)}
    assert (5, "import", "error") in found
    assert (9, "signature", "error") in found
    assert (12, "control-flow", "error") in found
    assert (14, "deprecated", "warning") in found  # `while reg:` (NKI 0.6 docstring, deprecated)
    assert not any(line == 16 for line, _, _ in found)  # shape checks are compile time
    assert (18, "api", "error") in found and (19, "api", "error") in found
    assert (20, "deprecated", "warning") in found
    assert (22, "is", "error") in found and (24, "try", "error") in found and (28, "dict", "error") in found
    with pytest.raises(NkiSimError, match="NKI compiler rejects"):
        sim.static_check(BAD_KERNEL, strict=True)
