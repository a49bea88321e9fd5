"""nc_matmul chains accumulating into one PSUM tile are computed lazily as one product (speed); these tests
pin that the result, errors, trace and accumulate rules are those of issuing each matmul on its own."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from moegen.sim import NkiSimError, context
from moegen.sim import isa as nisa
from moegen.sim import language as nl

RNG = np.random.default_rng(5)
BF16 = ml_dtypes.bfloat16


def q(x, dtype=BF16):
    return x.astype(dtype).astype(np.float32)


def sb(x, dtype):
    t = nl.ndarray(x.shape, dtype)
    t.write(x)
    return t


@pytest.fixture
def trn2():
    with context(target="trn2") as c:
        yield c


def test_chain_equals_sum_of_products_and_traces_each_matmul(trn2):
    a = RNG.standard_normal((128, 4, 96)).astype(np.float32)  # [K, tiles, M]
    b = RNG.standard_normal((128, 4, 256)).astype(np.float32)
    sa, sb_ = sb(a, nl.bfloat16), sb(b, nl.bfloat16)
    acc = nl.ndarray((96, 256), nl.float32, buffer=nl.psum)
    n0 = len(trn2.run.trace)
    for k in range(4):
        nisa.nc_matmul(acc, sa[:, k, :], sb_[:, k, :], accumulate=(k > 0))
    assert [e["opcode"] for e in trn2.run.trace[n0:]] == ["nc_matmul"] * 4
    ref = sum(q(a[:, k, :]).T @ q(b[:, k, :]) for k in range(4))
    np.testing.assert_allclose(acc.read(), ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("dtype", [nl.bfloat16, nl.float32])
def test_operand_rewritten_before_the_psum_is_read(trn2, dtype):
    a = RNG.standard_normal((64, 32)).astype(np.float32)
    b = RNG.standard_normal((64, 48)).astype(np.float32)
    sa, sbb = sb(a, dtype), sb(b, dtype)
    acc = nl.ndarray((32, 48), nl.float32, buffer=nl.psum)
    nisa.nc_matmul(acc, sa, sbb)
    sa.write(2 * a)  # after the first matmul: the second one sees the new values
    nisa.memset(sbb, 1.0)
    nisa.nc_matmul(acc, sa, sbb, accumulate=True)
    qq = (lambda x: q(x)) if dtype == nl.bfloat16 else (lambda x: x)
    ref = qq(a).T @ qq(b) + qq(2 * a).T @ np.ones_like(b)
    np.testing.assert_allclose(acc.read(), ref, rtol=1e-5, atol=1e-4)


def test_accumulate_true_onto_uninitialised_psum_fails_at_issue(trn2):
    a = sb(np.ones((8, 8), np.float32), nl.bfloat16)
    acc = nl.ndarray((8, 8), nl.float32, buffer=nl.psum)
    with pytest.raises(NkiSimError, match="no nc_matmul initialised"):
        nisa.nc_matmul(acc, a, a, accumulate=True)
    nisa.nc_matmul(acc[:, 0:4], a, a[:, 0:4])
    with pytest.raises(NkiSimError, match="no nc_matmul initialised"):
        nisa.nc_matmul(acc, a, a, accumulate=True)  # half of the tile is still uninitialised


def test_accumulate_false_restarts_and_none_follows_the_state(trn2):
    x = np.eye(8, dtype=np.float32)
    a = sb(x, nl.bfloat16)
    acc = nl.ndarray((8, 8), nl.float32, buffer=nl.psum)
    nisa.nc_matmul(acc, a, a)  # None on a fresh tile: overwrite
    nisa.nc_matmul(acc, a, a)  # None on matmul output: accumulate
    nisa.nc_matmul(acc, a, a, accumulate=False)  # restart
    nisa.nc_matmul(acc, a, a, accumulate=None)
    np.testing.assert_array_equal(acc.read(), 2 * x)
    nisa.memset(acc, 5.0)  # a non-matmul write: None overwrites again
    nisa.nc_matmul(acc, a, a)
    np.testing.assert_array_equal(acc.read(), x)


def test_mixed_state_tile_accumulates_per_element(trn2):
    x = np.ones((8, 8), np.float32)
    a = sb(x, nl.bfloat16)
    acc = nl.ndarray((8, 8), nl.float32, buffer=nl.psum)
    nisa.memset(acc, 100.0)
    nisa.nc_matmul(acc[:, 0:4], a, a[:, 0:4])  # columns 0..3 initialised by a matmul
    nisa.nc_matmul(acc, a, a)  # None: adds on 0..3, overwrites 4..7
    ref = np.full((8, 8), 8.0, np.float32)
    ref[:, 0:4] = 16.0
    np.testing.assert_array_equal(acc.read(), ref)


def test_partial_reads_and_interleaved_tiles(trn2):
    a = RNG.standard_normal((32, 16)).astype(np.float32)
    b = RNG.standard_normal((32, 64)).astype(np.float32)
    sa, sbb = sb(a, nl.float32), sb(b, nl.float32)
    acc = nl.ndarray((16, 128), nl.float32, buffer=nl.psum)
    left, right = acc[:, 0:64], acc[:, 64:128]
    for _ in range(3):
        nisa.nc_matmul(left, sa, sbb)
        nisa.nc_matmul(right, sa, sbb)
    one = a.T @ b
    np.testing.assert_allclose(left.read(), 3 * one, rtol=1e-5, atol=1e-5)
    nisa.nc_matmul(right, sa, sbb)
    np.testing.assert_allclose(acc[:, 64:96].read(), 4 * one[:, 0:32], rtol=1e-5, atol=1e-5)
    res = nl.ndarray((16, 128), nl.float32)
    nisa.tensor_copy(res, acc)
    np.testing.assert_allclose(res.read()[:, 64:], 4 * one, rtol=1e-5, atol=1e-5)


def test_double_row_chain(trn2):
    a = RNG.uniform(-2, 2, (128, 2, 32)).astype(np.float32)
    b = RNG.uniform(-2, 2, (128, 2, 64)).astype(np.float32)
    sa, sbb = sb(a, nl.float8_e4m3), sb(b, nl.float8_e4m3)
    acc = nl.ndarray((32, 64), nl.float32, buffer=nl.psum)
    for _ in range(2):
        nisa.nc_matmul(acc, sa, sbb, perf_mode=nisa.matmul_perf_mode.double_row)
    fa, fb = q(a, ml_dtypes.float8_e4m3), q(b, ml_dtypes.float8_e4m3)
    ref = 2 * np.einsum("kjm,kjn->mn", fa, fb)
    np.testing.assert_allclose(acc.read(), ref, rtol=1e-5, atol=1e-3)


def test_precise_off_chain():
    with context(target="trn2", precise=False):
        a = RNG.standard_normal((16, 8)).astype(np.float32)
        sa = sb(a, nl.bfloat16)  # stored as fp32 when precise mode is off
        acc = nl.ndarray((8, 8), nl.float32, buffer=nl.psum)
        nisa.nc_matmul(acc, sa, sa[:, 0:8])
        sa.write(np.zeros_like(a))
        nisa.nc_matmul(acc, sa, sa[:, 0:8])
        np.testing.assert_allclose(acc.read(), a.T @ a[:, 0:8], rtol=1e-5, atol=1e-5)


def test_pending_psum_tiles_are_released(trn2):
    a = sb(np.ones((8, 8), np.float32), nl.bfloat16)
    for _ in range(3 * 8):  # more tiles than banks, each left with a pending chain (no cycle: freed
        acc = nl.ndarray((8, 512), nl.float32, buffer=nl.psum)  # by reference counting, no gc needed)
        nisa.nc_matmul(acc[:, 0:8], a, a)
    del acc
    assert sum(trn2.psum_banks) == 0


def test_tile_rewritten_between_reads(trn2):
    """A big bf16 tile rewritten slice by slice between matmul reads (the per-view conversion path of
    the fp32 operand cache) and read twice at one version (the whole-tile cache path)."""
    w = RNG.standard_normal((64, 8, 32)).astype(np.float32)
    x = RNG.standard_normal((64, 16)).astype(np.float32)
    big = nl.ndarray((64, 8, 32), nl.bfloat16)
    nisa.memset(big, 0.0)
    sx = sb(x, nl.bfloat16)
    acc = nl.ndarray((16, 32), nl.float32, buffer=nl.psum)
    for k in range(8):
        big[:, k, :].write(w[:, k, :])
        nisa.nc_matmul(acc, sx, big[:, k, :], accumulate=k > 0)
    nisa.nc_matmul(acc, sx, big[:, 0, :])  # two reads at the same version
    nisa.nc_matmul(acc, sx, big[:, 1, :])
    ref = sum(q(x).T @ q(w[:, k, :]) for k in range(8)) + q(x).T @ (q(w[:, 0, :]) + q(w[:, 1, :]))
    np.testing.assert_allclose(acc.read(), ref, rtol=1e-5, atol=1e-4)
