"""SIM AUDIT: kernel launch, LNC=2, registers and runtime loops of moegen.sim against the NKI docs.

Independent audit (see /work/main/docs/sim_audit.md). Pages: the NKI 0.6 stub docstrings
(`nki/api/nki/isa/__init__.py`, `nki/api/nki/language/__init__.py` of aws-neuron/aws-neuron-sdk:
nki.isa.core_barrier, sendrecv, register_*, VirtualRegister, nki.language.fori_loop / while_loop /
program_id), the NKI CPU Simulator guide (nki/guides/nki_simulator.rst) and the migration guide.
xfail(strict=True) marks a discrepancy. Kernels are written to a file and loaded with
`moegen.sim.load_module`, then run with `moegen.sim.simulate` (kernel[2] for LNC=2).
"""

from __future__ import annotations

import numpy as np
import pytest

import moegen.sim as sim
from moegen.sim import NkiSimError
from moegen.sim import isa as sim_isa
from moegen.sim import language as sim_nl

KERNELS = """
import nki
import nki.isa as nisa
import nki.language as nl


@nki.jit
def ids(x):
    out = nl.ndarray((2, 2), dtype=nl.int32, buffer=nl.shared_hbm)
    t = nl.ndarray((1, 2), dtype=nl.int32, buffer=nl.sbuf)
    nisa.memset(dst=t, value=0)
    nisa.iota(dst=t, pattern=[[0, 2]], offset=nl.program_id(0) * 10 + nl.num_programs(), channel_multiplier=0)
    nisa.dma_copy(dst=out[nl.program_id(axis=0):nl.program_id(axis=0) + 1, :], src=t)
    return out


@nki.jit
def halves_with_barrier(x):
    # core_barrier docstring example: each core writes its half of a shared tensor, barrier, then
    # both read the whole tensor
    R, C = x.shape
    h = R // 2
    pid = nl.program_id(0)
    shared = nl.ndarray((R, C), dtype=x.dtype, buffer=nl.shared_hbm)
    t = nl.ndarray((h, C), dtype=x.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=t, src=x[pid * h:(pid + 1) * h, :])
    nisa.tensor_scalar(dst=t, data=t, op0=nl.multiply, operand0=2.0)
    nisa.dma_copy(dst=shared[pid * h:(pid + 1) * h, :], src=t)
    nisa.core_barrier(data=shared, cores=(0, 1))
    full = nl.ndarray((R, C), dtype=x.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=full, src=shared)
    out = nl.ndarray((2, R, C), dtype=x.dtype, buffer=nl.shared_hbm)
    nisa.dma_copy(dst=out[pid], src=full)
    return out


@nki.jit
def halves_without_barrier(x):
    R, C = x.shape
    h = R // 2
    pid = nl.program_id(0)
    shared = nl.ndarray((R, C), dtype=x.dtype, buffer=nl.shared_hbm)
    t = nl.ndarray((h, C), dtype=x.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=t, src=x[pid * h:(pid + 1) * h, :])
    nisa.dma_copy(dst=shared[pid * h:(pid + 1) * h, :], src=t)
    full = nl.ndarray((R, C), dtype=x.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=full, src=shared)
    return shared


@nki.jit
def halves_exchanged_by_sendrecv(x):
    # each core writes its half of a shared tensor, exchanges a tile with sendrecv, then reads the
    # whole tensor: sendrecv orders the exchange, not the earlier HBM writes
    R, C = x.shape
    h = R // 2
    pid = nl.program_id(0)
    shared = nl.ndarray((R, C), dtype=x.dtype, buffer=nl.shared_hbm)
    t = nl.ndarray((h, C), dtype=x.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=t, src=x[pid * h:(pid + 1) * h, :])
    nisa.dma_copy(dst=shared[pid * h:(pid + 1) * h, :], src=t)
    got = nl.ndarray((h, C), dtype=x.dtype, buffer=nl.sbuf)
    nisa.sendrecv(src=t, dst=got, send_to_rank=1 - pid, recv_from_rank=1 - pid, pipe_id=0)
    full = nl.ndarray((R, C), dtype=x.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=full, src=shared)
    return shared


@nki.jit
def disjoint_writes(x):
    # both cores read the same input and write disjoint halves of the output: no conflict
    R, C = x.shape
    h = R // 2
    pid = nl.program_id(0)
    out = nl.ndarray((R, C), dtype=x.dtype, buffer=nl.shared_hbm)
    t = nl.ndarray((h, C), dtype=x.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=t, src=x[pid * h:(pid + 1) * h, :])
    nisa.dma_copy(dst=out[pid * h:(pid + 1) * h, :], src=t)
    return out


@nki.jit
def both_write_everything(x):
    out = nl.ndarray(x.shape, dtype=x.dtype, buffer=nl.shared_hbm)
    t = nl.ndarray(x.shape, dtype=x.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=t, src=x)
    nisa.dma_copy(dst=out, src=t)
    return out


@nki.jit
def private_per_core(x):
    pid = nl.program_id(0)
    t = nl.ndarray((1, 4), dtype=nl.float32, buffer=nl.sbuf)
    nisa.memset(dst=t, value=0.0)
    nisa.tensor_scalar(dst=t, data=t, op0=nl.add, operand0=1.0 + pid)
    priv = nl.ndarray((1, 4), dtype=nl.float32, buffer=nl.hbm)
    nisa.dma_copy(dst=priv, src=t)
    nisa.core_barrier(data=x, cores=(0, 1))
    back = nl.ndarray((1, 4), dtype=nl.float32, buffer=nl.sbuf)
    nisa.dma_copy(dst=back, src=priv)
    out = nl.ndarray((2, 4), dtype=nl.float32, buffer=nl.shared_hbm)
    nisa.dma_copy(dst=out[pid:pid + 1, :], src=back)
    return out


@nki.jit
def barrier_on_sbuf(x):
    t = nl.ndarray((2, 2), dtype=nl.float32, buffer=nl.sbuf)
    nisa.core_barrier(data=t, cores=(0, 1))
    return None


@nki.jit
def barrier_wrong_cores(x):
    s = nl.ndarray((2, 2), dtype=nl.float32, buffer=nl.shared_hbm)
    nisa.core_barrier(data=s, cores=(1, 2))
    return None


@nki.jit
def exchange(x):
    # sendrecv docstring example: ring exchange between the two cores of an LNC=2 pair
    R, C = x.shape
    pid = nl.program_id(0)
    send = nl.ndarray((R, C), dtype=x.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=send, src=x)
    nisa.tensor_scalar(dst=send, data=send, op0=nl.add, operand0=100.0 * pid)
    recv = nl.ndarray((R, C), dtype=x.dtype, buffer=nl.sbuf)
    nisa.sendrecv(src=send, dst=recv, send_to_rank=(pid + 1) % 2, recv_from_rank=(pid + 1) % 2, pipe_id=0)
    out = nl.ndarray((2, R, C), dtype=x.dtype, buffer=nl.shared_hbm)
    nisa.dma_copy(dst=out[pid], src=recv)
    return out


@nki.jit
def sendrecv_dtype_mismatch(x):
    pid = nl.program_id(0)
    send = nl.ndarray((2, 2), dtype=nl.float32, buffer=nl.sbuf)
    recv = nl.ndarray((2, 2), dtype=nl.bfloat16, buffer=nl.sbuf)
    nisa.sendrecv(src=send, dst=recv, send_to_rank=1 - pid, recv_from_rank=1 - pid, pipe_id=0)
    return None


@nki.jit
def sendrecv_gpsimd_dma(x, cols):
    pid = nl.program_id(0)
    send = nl.ndarray((2, cols), dtype=nl.float32, buffer=nl.sbuf)
    nisa.memset(dst=send, value=1.0)
    recv = nl.ndarray((2, cols), dtype=nl.float32, buffer=nl.sbuf)
    nisa.sendrecv(src=send, dst=recv, send_to_rank=1 - pid, recv_from_rank=1 - pid, pipe_id=0,
                  dma_engine=nisa.dma_engine.gpsimd_dma)
    out = nl.ndarray((2, 2, cols), dtype=nl.float32, buffer=nl.shared_hbm)
    nisa.dma_copy(dst=out[pid], src=recv)
    return out


@nki.jit
def sendrecv_hbm(x):
    pid = nl.program_id(0)
    recv = nl.ndarray((2, 2), dtype=nl.float32, buffer=nl.sbuf)
    nisa.sendrecv(src=x, dst=recv, send_to_rank=1 - pid, recv_from_rank=1 - pid, pipe_id=0)
    return None


@nki.jit
def fori_rows(table, n):
    # hybrid CTE pattern: the loop bound is a register loaded from an SBUF tensor, the induction
    # register is used as a scalar_offset
    V, H = table.shape
    out = nl.ndarray((V, H), dtype=table.dtype, buffer=nl.shared_hbm)
    zero = nl.ndarray((V, H), dtype=table.dtype, buffer=nl.sbuf)
    nisa.memset(dst=zero, value=0.0)
    nisa.dma_copy(dst=out, src=zero)
    count = nl.ndarray((1, 1), dtype=nl.int32, buffer=nl.sbuf)
    nisa.dma_copy(dst=count, src=n)
    upper = nisa.register_alloc(0)
    nisa.register_load(upper, count)
    row = nl.ndarray((1, H), dtype=table.dtype, buffer=nl.sbuf)

    def body(i):
        nisa.dma_copy(dst=row, src=table.ap(pattern=[[H, 1], [1, H]], offset=0, scalar_offset=i, indirect_dim=0))
        nisa.tensor_scalar(dst=row, data=row, op0=nl.multiply, operand0=-1.0)
        nisa.dma_copy(dst=out.ap(pattern=[[H, 1], [1, H]], offset=0, scalar_offset=i, indirect_dim=0), src=row)

    nl.fori_loop(1, upper, body)
    return out


@nki.jit
def fori_writes_induction(x):
    def body(i):
        nisa.register_move(i, 3)

    nl.fori_loop(0, 2, body)
    return None


@nki.jit
def while_countdown(n):
    # while_loop: r = init; while r != 0: r = body(r); the body reloads the condition register
    c = nl.ndarray((1, 1), dtype=nl.int32, buffer=nl.sbuf)
    nisa.dma_copy(dst=c, src=n)
    acc = nl.ndarray((1, 1), dtype=nl.float32, buffer=nl.sbuf)
    nisa.memset(dst=acc, value=0.0)
    reg = nisa.register_alloc()
    nisa.register_load(reg, c)

    def body(r):
        nisa.tensor_scalar(dst=c, data=c, op0=nl.subtract, operand0=1.0)
        nisa.tensor_scalar(dst=acc, data=acc, op0=nl.add, operand0=1.0)
        nisa.register_load(r, c)
        return r

    nl.while_loop(reg, body)
    out = nl.ndarray((1, 1), dtype=nl.float32, buffer=nl.shared_hbm)
    nisa.dma_copy(dst=out, src=acc)
    return out


@nki.jit
def legacy_while_reg(n):
    # nki.isa.VirtualRegister docstring (NKI 0.6, deprecated): `while reg:` with a register_load in
    # the body
    c = nl.ndarray((1, 1), dtype=nl.int32, buffer=nl.sbuf)
    nisa.dma_copy(dst=c, src=n)
    reg = nisa.register_alloc()
    nisa.register_load(reg, c)
    while reg:
        nisa.tensor_scalar(dst=c, data=c, op0=nl.subtract, operand0=1.0)
        nisa.register_load(reg, c)
    out = nl.ndarray((1, 1), dtype=nl.int32, buffer=nl.shared_hbm)
    nisa.dma_copy(dst=out, src=c)
    return out


@nki.jit
def register_roundtrip(x):
    a = nisa.register_alloc(0)
    nisa.register_move(a, 7)
    b = nisa.register_alloc()
    nisa.register_move(b, a)
    t = nl.ndarray((1, 1), dtype=nl.int32, buffer=nl.sbuf)
    nisa.register_store(t, b)
    out = nl.ndarray((1, 1), dtype=nl.int32, buffer=nl.shared_hbm)
    nisa.dma_copy(dst=out, src=t)
    return out


@nki.jit
def register_load_two_elements(x):
    t = nl.ndarray((1, 2), dtype=nl.int32, buffer=nl.sbuf)
    nisa.memset(dst=t, value=1)
    r = nisa.register_alloc()
    nisa.register_load(r, t)
    return None


@nki.jit
def dynamic_range_sum(x):
    acc = nl.ndarray((1, 1), dtype=nl.float32, buffer=nl.sbuf)
    nisa.memset(dst=acc, value=0.0)
    for _ in nl.dynamic_range(nisa.register_alloc(4)):
        nisa.tensor_scalar(dst=acc, data=acc, op0=nl.add, operand0=1.0)
    out = nl.ndarray((1, 1), dtype=nl.float32, buffer=nl.shared_hbm)
    nisa.dma_copy(dst=out, src=acc)
    return out


@nki.jit
def deprecated_ranges(x):
    acc = nl.ndarray((1, 1), dtype=nl.float32, buffer=nl.sbuf)
    nisa.memset(dst=acc, value=0.0)
    for i in nl.affine_range(3):
        nisa.tensor_scalar(dst=acc, data=acc, op0=nl.multiply, operand0=10.0, op1=nl.add, operand1=float(i))
    for i in nl.sequential_range(1, 3):
        nisa.tensor_scalar(dst=acc, data=acc, op0=nl.multiply, operand0=10.0, op1=nl.add, operand1=float(i))
    for i in nl.static_range(0, 4, 3):
        nisa.tensor_scalar(dst=acc, data=acc, op0=nl.multiply, operand0=10.0, op1=nl.add, operand1=float(i))
    out = nl.ndarray((1, 1), dtype=nl.float32, buffer=nl.shared_hbm)
    nisa.dma_copy(dst=out, src=acc)
    return out


@nki.jit
def to_bf16_and_back(x):
    t = nl.ndarray(x.shape, dtype=nl.bfloat16, buffer=nl.sbuf)
    nisa.dma_copy(dst=t, src=x)
    out = nl.ndarray(x.shape, dtype=nl.float32, buffer=nl.shared_hbm)
    nisa.dma_copy(dst=out, src=t)
    return out


@nki.jit
def nc_version(x):
    out = nl.ndarray((1, 1), dtype=nl.int32, buffer=nl.shared_hbm)
    t = nl.ndarray((1, 1), dtype=nl.int32, buffer=nl.sbuf)
    nisa.memset(dst=t, value=3 if nisa.get_nc_version() == nisa.nc_version.gen3 else 4)
    nisa.dma_copy(dst=out, src=t)
    return out


@nki.jit(platform_target="trn2")
def jit_with_args(x):
    out = nl.ndarray(x.shape, dtype=x.dtype, buffer=nl.shared_hbm)
    nisa.dma_copy(dst=out, src=x)
    return out


@nki.jit
def nl_convenience(x, y):
    a = nl.load(x)
    b = nl.load(y)
    p = nl.matmul(a, b, transpose_x=True)
    s = nl.copy(p)
    e = nl.exp(s)
    z = nl.add(e, e)
    out = nl.ndarray(z.shape, dtype=nl.float32, buffer=nl.shared_hbm)
    nl.store(out, z)
    return out


@nki.jit
def nl_store_psum(x, y):
    p = nl.matmul(nl.load(x), nl.load(y), transpose_x=True)
    out = nl.ndarray(p.shape, dtype=nl.float32, buffer=nl.shared_hbm)
    nl.store(out, p)
    return out


@nki.jit
def nl_add_broadcast(x, y):
    z = nl.add(nl.load(x), nl.load(x[:, 0:1]))
    return None


@nki.jit
def unwritten_outputs(x):
    a = nl.ndarray((2, 2), dtype=nl.float32, buffer=nl.shared_hbm)
    b = nl.ndarray((2, 2), dtype=nl.int32, buffer=nl.shared_hbm)
    p = nl.ndarray((2, 2), dtype=nl.float32, buffer=nl.psum)
    s = nl.ndarray((2, 2), dtype=nl.float32, buffer=nl.sbuf)
    nisa.tensor_copy(dst=s, src=p)
    c = nl.ndarray((2, 2), dtype=nl.float32, buffer=nl.shared_hbm)
    nisa.dma_copy(dst=c, src=s)
    return a, b, c


def undecorated(x):
    out = nl.ndarray(x.shape, dtype=x.dtype, buffer=nl.shared_hbm)
    nisa.dma_copy(dst=out, src=x)
    return out
"""


@pytest.fixture(scope="module")
def k(tmp_path_factory):
    p = tmp_path_factory.mktemp("audit_ctl") / "audit_control_kernels.py"
    p.write_text(KERNELS)
    return sim.load_module(p)


def run(kernel, *args, target="trn2", **kw):
    return sim.simulate(kernel, target=target)(*args, **kw)


Z = np.zeros((2, 2), np.float32)


# ------------------------------------------------------------------------------------------------
# launch
# ------------------------------------------------------------------------------------------------
def test_program_id_and_num_programs(k):
    """nki.language.program_id / num_programs: under kernel[2] (LNC=2) the two programs see ids 0 and 1
    and num_programs() == 2; under LNC=1, id 0 and 1 program."""
    got = run(k.ids[2], Z)
    np.testing.assert_array_equal(got, [[2, 2], [12, 12]])
    got1 = run(k.ids, Z)
    np.testing.assert_array_equal(got1[0], [1, 1])


def test_simulate_entry_points(k):
    """NKI CPU Simulator guide: nki.simulate(kernel)(*arrays) returns NumPy outputs; nki.jit works
    with and without arguments; a plain function is accepted."""
    x = np.arange(4, dtype=np.float32).reshape(2, 2)
    np.testing.assert_array_equal(run(k.jit_with_args, x), x)
    np.testing.assert_array_equal(run(k.undecorated, x), x)
    np.testing.assert_array_equal(k.jit_with_args(x), x)


def test_default_target_is_trn3_without_override(k, monkeypatch):
    """NKI CPU Simulator guide: NEURON_PLATFORM_TARGET_OVERRIDE selects trn2/trn3; without it and
    without a Neuron device the simulator defaults to trn3."""
    monkeypatch.delenv("NEURON_PLATFORM_TARGET_OVERRIDE", raising=False)
    assert sim.simulate(k.nc_version)(Z)[0, 0] == 4
    monkeypatch.setenv("NEURON_PLATFORM_TARGET_OVERRIDE", "trn2")
    assert sim.simulate(k.nc_version)(Z)[0, 0] == 3


def test_unwritten_memory_reads_as_sentinels(k):
    """NKI CPU Simulator guide: every new allocation (HBM outputs, SBUF, PSUM) is filled with NaN
    (floats) or 4 (integers) so reads of uninitialised memory surface in the outputs."""
    a, b, c = run(k.unwritten_outputs, Z)
    assert np.isnan(a).all() and (b == 4).all() and np.isnan(c).all()


def test_precise_switch(k, monkeypatch):
    """NKI CPU Simulator guide: NKI_PRECISE_FP=1 (default) stores bf16 with rounding; NKI_PRECISE_FP=0
    keeps everything in fp32."""
    x = np.array([[1 + 2.0**-12]], np.float32)
    monkeypatch.setenv("NKI_PRECISE_FP", "1")
    assert sim.simulate(k.to_bf16_and_back, target="trn2")(x)[0, 0] == 1.0
    monkeypatch.setenv("NKI_PRECISE_FP", "0")
    assert sim.simulate(k.to_bf16_and_back, target="trn2")(x)[0, 0] == x[0, 0]


def test_nl_convenience_ops(k):
    """nki.language (0.3+ convenience ops): nl.load (HBM -> new SBUF tile), nl.matmul(x, y,
    transpose_x=True) = x.T @ y into PSUM, nl.copy (-> SBUF), nl.exp / nl.add element-wise, nl.store
    (SBUF -> HBM). Known issues (0.4-0.6 notes): binary ops do not broadcast; nl.store does not take
    PSUM values."""
    x = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32) * 0.1
    y = np.random.default_rng(1).standard_normal((8, 5)).astype(np.float32) * 0.1
    np.testing.assert_allclose(run(k.nl_convenience, x, y), 2 * np.exp(x.T @ y), rtol=1e-5)
    with pytest.raises(NkiSimError):
        run(k.nl_store_psum, x, y)
    with pytest.raises(NkiSimError):
        run(k.nl_add_broadcast, x, y)


# ------------------------------------------------------------------------------------------------
# core_barrier / sendrecv / races
# ------------------------------------------------------------------------------------------------
def test_core_barrier_orders_shared_hbm(k):
    """nki.isa.core_barrier: 'both cores can perform the write to data in HBM using nisa.dma_copy, and
    then signal to each other' -- after the barrier both read the complete tensor."""
    x = np.arange(16, dtype=np.float32).reshape(4, 4)
    got = run(k.halves_with_barrier[2], x)
    np.testing.assert_array_equal(got[0], 2 * x)
    np.testing.assert_array_equal(got[1], 2 * x)


def test_unordered_shared_hbm_access_is_a_race(k):
    """Issue 3 (beyond the official simulator): in LNC=2, one core reading bytes the other writes with
    no core_barrier/sendrecv between them is reported as an error."""
    with pytest.raises(NkiSimError):
        run(k.halves_without_barrier[2], np.zeros((4, 4), np.float32))


def test_sendrecv_is_not_a_shared_hbm_fence(k):
    """nki.isa.sendrecv: it 'sends its src tile to the dst location of the target NeuronCore' (both SBUF)
    and pipe_id groups sendrecv operations so that 'all operations in the group must complete before any
    can proceed'; unlike nki.isa.core_barrier ('both cores can perform the write to data in HBM ... and
    then signal to each other when the write operation is complete') the page promises nothing about
    other HBM writes. So reading the partner's shared-HBM half after only a sendrecv is a race."""
    x = np.arange(16, dtype=np.float32).reshape(4, 4)
    with pytest.raises(NkiSimError, match="LNC race on shared HBM tensor"):
        run(k.halves_exchanged_by_sendrecv[2], x)


def test_disjoint_shared_writes_are_not_a_race(k):
    """core_barrier docstring use case: two cores writing disjoint portions of a shared HBM tensor need
    no synchronisation among themselves (only before reading each other's part)."""
    x = np.arange(16, dtype=np.float32).reshape(4, 4)
    np.testing.assert_array_equal(run(k.disjoint_writes[2], x), x)


def test_overlapping_unordered_writes_are_a_race(k):
    """Issue 3 (beyond the official simulator): two cores writing the same shared-HBM bytes in the same
    barrier epoch conflict (write/write), even when the values happen to agree."""
    with pytest.raises(NkiSimError):
        run(k.both_write_everything[2], np.zeros((4, 4), np.float32))


def test_hbm_is_private_per_core(k):
    """nki.language.hbm: 'HBM - Alias of private_hbm'; private_hbm: 'Only visible to each individual
    kernel instance in the SPMD grid'; shared_hbm: 'Visible to all kernel instances'."""
    assert sim.language.hbm == sim.language.private_hbm
    got = run(k.private_per_core[2], np.zeros((2, 2), np.float32))
    np.testing.assert_array_equal(got, [[1.0] * 4, [2.0] * 4])


def test_core_barrier_rules(k):
    """nki.isa.core_barrier: data 'must be data in shared HBM'; 'only cores=(0, 1) is supported'; only
    allowed 'when LNC (Logical NeuronCore) is enabled'."""
    with pytest.raises(NkiSimError):
        run(k.barrier_on_sbuf[2], Z)
    with pytest.raises(NkiSimError):
        run(k.barrier_wrong_cores[2], Z)
    with pytest.raises(NkiSimError):
        run(k.barrier_wrong_cores, Z)


def test_sendrecv_exchange(k):
    """nki.isa.sendrecv: 'The current NeuronCore sends its src tile to the dst location of the target
    NeuronCore ... while simultaneously receiving data from recv_from_rank into its own dst tile'."""
    x = np.arange(4, dtype=np.float32).reshape(2, 2)
    got = run(k.exchange[2], x)
    np.testing.assert_array_equal(got[0], x + 100)
    np.testing.assert_array_equal(got[1], x)


def test_sendrecv_constraints(k):
    """nki.isa.sendrecv (Constraints): 'src and dst tiles must both be in SBUF'; 'src and dst must have
    the same data type'."""
    with pytest.raises(NkiSimError):
        run(k.sendrecv_dtype_mismatch[2], Z)
    with pytest.raises(NkiSimError):
        run(k.sendrecv_hbm[2], Z)


def test_sendrecv_gpsimd_dma_within_limit(k):
    """nki.isa.sendrecv: dma_engine=gpsimd_dma (GpSimd's internal DMA, SB-to-SB in LNC=2) moves up to
    1024 bytes per partition of a 32-bit type."""
    got = run(k.sendrecv_gpsimd_dma[2], Z, 256)
    np.testing.assert_array_equal(got, np.ones((2, 2, 256), np.float32))


# SIM_AUDIT #12: fixed in moegen.sim during the audit; kept as a regression test.
def test_sendrecv_gpsimd_dma_size_limit(k):
    """nki.isa.sendrecv: gpsimd_dma 'restricts the data size per partition to not exceed: 1024 bytes for
    32-bit types, 512 bytes for 16-bit types, 256 bytes for 8-bit types' -- 300 fp32 = 1200 bytes."""
    with pytest.raises(NkiSimError):
        run(k.sendrecv_gpsimd_dma[2], Z, 300)


# ------------------------------------------------------------------------------------------------
# registers and runtime loops
# ------------------------------------------------------------------------------------------------
def test_fori_loop_with_register_bound_and_scalar_offset(k):
    """nki.language.fori_loop(lower, upper, body_fun): 'for i in range(lower, upper, step):
    body_fun(i)' with register bounds (register_load from a 1x1 SBUF tensor); the induction value is a
    register usable as a dynamic offset."""
    table = np.arange(1, 21, dtype=np.float32).reshape(5, 4)
    got = run(k.fori_rows, table, np.array([[4]], np.int32))
    ref = np.zeros((5, 4), np.float32)
    ref[1:4] = -table[1:4]
    np.testing.assert_array_equal(got, ref)


def test_fori_loop_induction_is_read_only(k):
    """NKI 0.6 migration guide (compiled loops): 'the induction value is read-only'."""
    with pytest.raises(NkiSimError):
        run(k.fori_writes_induction, Z)


def test_while_loop(k):
    """nki.language.while_loop(init, body_fun): 'r = init; while r != 0: r = body_fun(r)'."""
    assert run(k.while_countdown, np.array([[3]], np.int32))[0, 0] == 3.0
    assert run(k.while_countdown, np.array([[0]], np.int32))[0, 0] == 0.0


# SIM_AUDIT #8: fixed in moegen.sim during the audit; kept as a regression test.
def test_legacy_while_register(k):
    """nki.isa.VirtualRegister (NKI 0.6 docstring, 'Using a register in a dynamic while loop'):
    `while reg:` runs while the register is non-zero, the body register_loads the new condition
    (deprecated in 0.6, removed in 0.7)."""
    assert run(k.legacy_while_reg, np.array([[3]], np.int32))[0, 0] == 0


def test_register_move_store(k):
    """nki.isa.register_alloc / register_move / register_store: alloc with an immediate, move an
    immediate int (cte.py.j2: register_move(block_register, b)) and another register, store into a
    one-element tensor."""
    assert run(k.register_roundtrip, Z)[0, 0] == 7


def test_fori_loop_rules():
    """nki.language.fori_loop (NKI 0.6): counts up only (positive compile-time step); the body returns
    nothing (state is carried through tensors); lower >= upper runs zero iterations."""
    calls = []
    with sim.context(target="trn2"):
        with pytest.raises(NkiSimError):
            sim.language.fori_loop(5, 0, lambda i: None, step=-1)
        with pytest.raises(NkiSimError):
            sim.language.fori_loop(0, 2, lambda i: 1)
        sim.language.fori_loop(3, 1, lambda i: calls.append(i))
    assert calls == []


def _nine_psum_tiles(i=None):
    """Nine one-bank PSUM tiles allocated one after another under the same name (8 banks per core)."""
    for _ in range(9):
        tile = sim_nl.ndarray((128, 512), dtype=sim_nl.float32, buffer=sim_nl.psum)
        sim_isa.memset(dst=tile, value=0.0)


def test_dynamic_loop_body_allocations_hold_their_slots_for_the_whole_loop():
    """NKI Dynamic Loops (nki/deep-dives/nki-dynamic-loops): the body of a dynamic loop is emitted once
    and the tensors it allocates are allocated once and reused across iterations, so every allocation in
    the body holds its own slot for the whole loop. Nine one-bank PSUM tiles fit one after another in
    unrolled Python (each is released when its name is rebound) but not in a fori_loop / while_loop /
    dynamic_range body: the simulator refuses the body and says why."""
    nl = sim_nl
    with sim.context(target="trn2"):
        _nine_psum_tiles()  # Python code: the tiles reuse banks
        with pytest.raises(NkiSimError, match="PSUM full.*dynamic-loop body"):
            nl.fori_loop(0, 2, _nine_psum_tiles)
        for _ in nl.dynamic_range(1):
            with pytest.raises(NkiSimError, match="PSUM full.*dynamic-loop body"):
                _nine_psum_tiles()
        flag = sim_isa.register_alloc(1)

        def body(r):
            _nine_psum_tiles()
            return r

        with pytest.raises(NkiSimError, match="PSUM full.*dynamic-loop body"):
            nl.while_loop(flag, body)
        # after the loops, their tiles are released again
        _nine_psum_tiles()


def test_register_load_needs_one_element(k):
    """nki.isa.register_load: 'The source must be a NKI tensor with exactly one element (shape [1] or
    [1, 1])'."""
    with pytest.raises(NkiSimError):
        run(k.register_load_two_elements, Z)


def test_dynamic_range_still_runs(k):
    """nki.language.dynamic_range (NKI 0.6, deprecated): a runtime loop with a register bound."""
    assert run(k.dynamic_range_sum, Z)[0, 0] == 4.0


def test_deprecated_ranges_are_python_range(k):
    """nki.language.affine_range / sequential_range / static_range (NKI 0.6 docstrings): deprecated
    aliases of Python range(), fully unrolled, program order."""
    # affine_range(3): 0, 1, 2 -> 12; sequential_range(1, 3): 1, 2 -> 1212; static_range(0, 4, 3): 0, 3 -> 121203
    assert run(k.deprecated_ranges, Z)[0, 0] == 121203.0


# ------------------------------------------------------------------------------------------------
# static subset check (the compiler's Python subset; the simulator itself runs any Python)
# ------------------------------------------------------------------------------------------------
SUBSET = """
import nki
import nki.isa as nisa
import nki.language as nl


class Cfg:
    pass


class Good(nl.NKIObject):
    pass


CHUNKS_BY_START = {0: (0, 512), 512: (512, 512)}
CHUNKS = ((0, 512), (512, 512))
NAMES = {"gate": 0, "up": 1}


@nki.jit
def helper_jit(x):
    return x


def helper(x):
    return x


@nki.jit
def bad_star(x, *, y=1):
    return None


@nki.jit
def bad_is(x, y=None):
    if y is None:
        pass
    return None


@nki.jit
def bad_list_default(x, dims=[1, 2]):
    return None


@nki.jit
def bad_dict_key(x):
    d = {1: 2}
    return None


@nki.jit
def bad_nested_jit(x):
    helper_jit(x)
    return None


@nki.jit
def bad_class(x):
    c = Cfg()
    return None


@nki.jit
def bad_module_dict(x):
    first = CHUNKS_BY_START[0]
    return None


@nki.jit
def bad_raise(x):
    if x.shape[0] != 4:
        raise ValueError("x: 4 rows")
    return None


def allocating_helper():
    return nl.ndarray((1, 1), dtype=nl.float32, buffer=nl.sbuf)


@nki.jit
def bad_loop_alloc(x):
    def body(i):
        scratch = nl.ndarray((1, 1), dtype=nl.float32, buffer=nl.sbuf)
    nl.fori_loop(0, 2, body)

    def body_via_helper(i):
        scratch = allocating_helper()
    nl.fori_loop(0, 2, body_via_helper)
    for i in nl.dynamic_range(2):
        other = nl.zeros((1, 1), dtype=nl.float32, buffer=nl.sbuf)
    return None


@nki.jit
def good(x, shape=(1, 2)):
    assert x.shape[0] == 4, f"x: 4 rows, got {x.shape[0]}"
    first = CHUNKS[0]
    gate = NAMES["gate"]
    g = Good()
    d = {"a": 1}
    helper(x)
    print("compile time", x.shape)
    t = nl.ndarray((1, 1), dtype=nl.float32, buffer=nl.sbuf)
    def body(i):
        nisa.memset(dst=t, value=0.0)
    nl.fori_loop(0, 2, body)
    return None
"""


def test_static_check_flags_documented_subset_violations(tmp_path):
    """NKI 0.3-0.6 migration guide / language guide (NOTES 1.1): no '*' separator in kernel signatures,
    no list arguments (tuples), no 'is' / 'is not', classes derive from nl.NKIObject only, dict keys are
    strings, only the top-level kernel carries @nki.jit. The simulator itself runs any Python
    (NKI CPU Simulator guide: it 'accepts Python the real compiler rejects'), so moegen.sim.static_check
    must flag each of these, and nothing in a valid kernel."""
    p = tmp_path / "subset_kernels.py"
    p.write_text(SUBSET)
    errors = [f for f in sim.static_check(p) if f.severity == "error"]
    lines = {f.line for f in errors}
    src = SUBSET.splitlines()

    def line_of(text):
        return next(i for i, ln in enumerate(src, 1) if text in ln)

    for text in (
        "class Cfg:",
        "def bad_star",
        "if y is None",
        "def bad_list_default",
        "d = {1: 2}",
        "    helper_jit(x)",
    ):
        assert line_of(text) in lines, (text, sorted(lines))
    good_start = line_of("def good(")
    assert not [f for f in errors if f.line >= good_start]


def test_static_check_flags_module_dicts_raise_and_loop_allocations(tmp_path):
    """Rules the generated kernels once broke (issue 9):
    - NKI language guide (NOTES 1.1): dictionary keys must be strings -- also for a module-level dict a
      kernel reads (the compiler sees its value), not only for one written inside it;
    - raise is not documented inside kernels; nki-library checks arguments with assert;
    - NKI Dynamic Loops (nki/deep-dives/nki-dynamic-loops): a dynamic-loop body is emitted once and the
      tensors it allocates are allocated once for the whole loop: no nl.ndarray / nl.zeros / ... inside a
      nl.fori_loop / nl.while_loop body, a helper it calls, or a nl.dynamic_range loop."""
    p = tmp_path / "subset_kernels.py"
    p.write_text(SUBSET)
    errors = [f for f in sim.static_check(p) if f.severity == "error"]
    src = SUBSET.splitlines()

    def line_of(text):
        return next(i for i, ln in enumerate(src, 1) if text in ln)

    by_line = {(f.line, f.rule) for f in errors}
    assert (line_of("first = CHUNKS_BY_START[0]"), "dict") in by_line
    assert (line_of('raise ValueError("x: 4 rows")'), "raise") in by_line
    assert (line_of("        scratch = nl.ndarray((1, 1)"), "loop-alloc") in by_line
    assert (line_of("    return nl.ndarray((1, 1)"), "loop-alloc") in by_line
    assert (line_of("other = nl.zeros("), "loop-alloc") in by_line
