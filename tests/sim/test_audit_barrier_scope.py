"""SIM AUDIT #23: a core_barrier orders accesses to its `data` tensor only.

Page: nki.isa.core_barrier (https://awsdocs-neuron.readthedocs-hosted.com/en/v2.33.0/nki/api/generated/nki.isa.core_barrier.html;
also nki.lnc.core_barrier on .../en/latest/nki/api/generated/nki.lnc.core_barrier.html): "The data parameter
represents the shared data that all cores need to synchronize on"; the use case is two cores writing disjoint
portions of "a shared HBM tensor (data)" with nisa.dma_copy and then signalling "when the write operation is
complete"; "The barrier will block execution on this engine, other engines will not be blocked". So a barrier
orders the two cores' accesses to `data`, not to other shared-HBM tensors (docs/sim_audit.md #23). The rule is
MOEGEN_SIM_BARRIER_SCOPE=data (the default since templates/cte.py.j2 names `out` too, #23); these tests set it.
"""

from __future__ import annotations

import numpy as np
import pytest

import moegen.sim as sim
from moegen.sim import NkiSimError

KERNELS = """
import nki
import nki.isa as nisa
import nki.language as nl


@nki.jit
def rows_and_flags(x, barrier_on_flags, read_flags):
    # each core writes its half of two shared tensors, `rows` and `flags`; one core_barrier on `rows`
    # (and one on `flags` when barrier_on_flags); then each core reads `rows` (and `flags`) whole
    R, C = x.shape
    h = R // 2
    pid = nl.program_id(0)
    rows = nl.ndarray((R, C), dtype=x.dtype, buffer=nl.shared_hbm, name="rows")
    flags = nl.ndarray((R, C), dtype=x.dtype, buffer=nl.shared_hbm, name="flags")
    t = nl.ndarray((h, C), dtype=x.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=t, src=x[pid * h:(pid + 1) * h, :])
    nisa.dma_copy(dst=rows[pid * h:(pid + 1) * h, :], src=t)
    nisa.dma_copy(dst=flags[pid * h:(pid + 1) * h, :], src=t)
    nisa.core_barrier(data=rows, cores=(0, 1))
    if barrier_on_flags:
        nisa.core_barrier(data=flags, cores=(0, 1))
    full = nl.ndarray((R, C), dtype=x.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=full, src=rows)
    if read_flags:
        other = nl.ndarray((R, C), dtype=x.dtype, buffer=nl.sbuf)
        nisa.dma_copy(dst=other, src=flags)
        nisa.tensor_tensor(dst=full, data1=full, data2=other, op=nl.add)
    out = nl.ndarray((2, R, C), dtype=x.dtype, buffer=nl.shared_hbm)
    nisa.dma_copy(dst=out[pid], src=full)
    return out


@nki.jit
def barrier_on_a_reshape_view(x):
    # nki-library passes reshape views as data (all_expert_mx_impl.py): the barrier orders the allocation
    R, C = x.shape
    h = R // 2
    pid = nl.program_id(0)
    rows = nl.ndarray((R, C), dtype=x.dtype, buffer=nl.shared_hbm, name="rows")
    t = nl.ndarray((h, C), dtype=x.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=t, src=x[pid * h:(pid + 1) * h, :])
    nisa.dma_copy(dst=rows[pid * h:(pid + 1) * h, :], src=t)
    nisa.core_barrier(data=rows.reshape((R * C,)), cores=(0, 1))
    full = nl.ndarray((R, C), dtype=x.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=full, src=rows)
    out = nl.ndarray((2, R, C), dtype=x.dtype, buffer=nl.shared_hbm)
    nisa.dma_copy(dst=out[pid], src=full)
    return out


@nki.jit
def rewrite_after_the_barrier(x):
    # after the barrier core 0 reads `rows` whole while core 1 rewrites its half: write-after-read race
    R, C = x.shape
    h = R // 2
    pid = nl.program_id(0)
    rows = nl.ndarray((R, C), dtype=x.dtype, buffer=nl.shared_hbm, name="rows")
    t = nl.ndarray((h, C), dtype=x.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=t, src=x[pid * h:(pid + 1) * h, :])
    nisa.dma_copy(dst=rows[pid * h:(pid + 1) * h, :], src=t)
    nisa.core_barrier(data=rows, cores=(0, 1))
    full = nl.ndarray((R, C), dtype=x.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=full, src=rows)
    nisa.dma_copy(dst=rows[pid * h:(pid + 1) * h, :], src=t)
    return rows


@nki.jit
def barriers_on_different_tensors(x):
    pid = nl.program_id(0)
    a = nl.ndarray(x.shape, dtype=x.dtype, buffer=nl.shared_hbm, name="a")
    b = nl.ndarray(x.shape, dtype=x.dtype, buffer=nl.shared_hbm, name="b")
    nisa.core_barrier(data=a if pid == 0 else b, cores=(0, 1))
    return a
"""


@pytest.fixture(scope="module")
def k(tmp_path_factory):
    p = tmp_path_factory.mktemp("audit_barrier") / "audit_barrier_kernels.py"
    p.write_text(KERNELS)
    return sim.load_module(p)


@pytest.fixture(autouse=True)
def scope_data(monkeypatch):
    monkeypatch.setenv("MOEGEN_SIM_BARRIER_SCOPE", "data")


def run(kernel, *args):
    return sim.simulate(kernel, target="trn2")(*args)


X = np.arange(32, dtype=np.float32).reshape(8, 4)


def test_race_on_a_tensor_no_barrier_names_is_reported(k):
    """nki.isa.core_barrier: 'The data parameter represents the shared data that all cores need to synchronize
        on'. Each core writes half of `flags`, the only barrier names `rows`, then both read `flags` whole: the
        barrier does not order `flags`, so the read races with the partner's write (before #23 it passed). The report
    names the kernel line that allocated the tensor."""
    with pytest.raises(
        NkiSimError, match=r"tensor 'flags' \(allocated at audit_barrier_kernels.py:\d+\).*core_barrier\(data=flags\)"
    ):
        run(k.rows_and_flags[2], X, False, True)


def test_the_barriers_data_tensor_is_ordered(k):
    """nki.isa.core_barrier use case: 'both cores can perform the write to data in HBM using nisa.dma_copy, and
    then signal to each other when the write operation is complete' -- after core_barrier(data=rows) both read
    the whole of `rows`; `flags`, written the same way but never read across cores, is no race."""
    got = run(k.rows_and_flags[2], X, False, False)
    np.testing.assert_array_equal(got[0], X)
    np.testing.assert_array_equal(got[1], X)


def test_one_barrier_per_tensor_orders_both(k):
    """nki.isa.core_barrier: a barrier per shared tensor the cores exchange (nki-library's
    bwmm_shard_on_I.py issues core_barrier(output), core_barrier(gate_up_activations_T), ... back to back)."""
    got = run(k.rows_and_flags[2], X, True, True)
    np.testing.assert_array_equal(got[0], 2 * X)
    np.testing.assert_array_equal(got[1], 2 * X)


def test_a_barrier_on_a_view_orders_its_allocation(k):
    """nki.isa.core_barrier: data is 'data in shared HBM'; a reshape view of the tensor names the same data."""
    got = run(k.barrier_on_a_reshape_view[2], X)
    np.testing.assert_array_equal(got[1], X)


def test_writes_after_the_barrier_are_a_new_epoch(k):
    """nki.isa.core_barrier orders what each core did to `data` before it against what both do after it; a
    rewrite after the barrier, read by the partner with no further barrier, is a write-after-read race."""
    with pytest.raises(NkiSimError, match="LNC race on shared HBM tensor 'rows'"):
        run(k.rewrite_after_the_barrier[2], X)


def test_both_cores_must_name_the_same_data(k):
    """nki.isa.core_barrier: the barrier synchronises 'on' its data; two cores meeting at barriers on
    different tensors order neither, so the simulator refuses it naming both tensors."""
    with pytest.raises(NkiSimError, match=r"different tensors \(core 0: 'a', core 1: 'b'\)"):
        run(k.barriers_on_different_tensors[2], np.zeros((2, 2), np.float32))


def test_scope_all_keeps_the_older_reading(k, monkeypatch):
    """MOEGEN_SIM_BARRIER_SCOPE=all: every core_barrier orders every shared-HBM tensor (the reading before #23);
    unset is the faithful reading ('data'), which reports the race on the tensor no barrier names; an unknown value
    is refused."""
    monkeypatch.setenv("MOEGEN_SIM_BARRIER_SCOPE", "all")
    got = run(k.rows_and_flags[2], X, False, True)
    np.testing.assert_array_equal(got[1], 2 * X)
    monkeypatch.delenv("MOEGEN_SIM_BARRIER_SCOPE")
    with pytest.raises(NkiSimError, match="a barrier orders only its data tensor"):
        run(k.rows_and_flags[2], X, False, True)
    monkeypatch.setenv("MOEGEN_SIM_BARRIER_SCOPE", "everything")
    with pytest.raises(NkiSimError, match="MOEGEN_SIM_BARRIER_SCOPE"):
        run(k.rows_and_flags[2], X, False, True)
