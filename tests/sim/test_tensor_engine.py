"""nc_matmul / nc_transpose of moegen.sim against NumPy, accumulation rules and every TensorE check."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from moegen.sim import NkiSimError, context
from moegen.sim import isa as nisa
from moegen.sim import language as nl
from moegen.sim.tensor import read_f32

RNG = np.random.default_rng(7)
BF16 = ml_dtypes.bfloat16


@pytest.fixture
def trn2():
    with context(target="trn2") as c:
        yield c


def sb(x, dtype):
    t = nl.ndarray(x.shape, dtype)
    t.write(x)
    return t


def test_matmul_matches_numpy_bf16(trn2):
    a = RNG.standard_normal((128, 96)).astype(np.float32)
    b = RNG.standard_normal((128, 512)).astype(np.float32)
    dst = nl.ndarray((96, 512), nl.float32, buffer=nl.psum)
    nisa.nc_matmul(dst, sb(a, nl.bfloat16), sb(b, nl.bfloat16))
    ref = a.astype(BF16).astype(np.float32).T @ b.astype(BF16).astype(np.float32)
    np.testing.assert_allclose(dst.read(), ref, rtol=1e-5, atol=1e-4)
    assert trn2.run.trace[-1]["engine"] == "tensor"


def test_accumulate_rules(trn2):
    a, b = RNG.standard_normal((2, 64, 32)).astype(np.float32)
    st, mv = sb(a, nl.float32), sb(b, nl.float32)
    one = a.T @ b
    dst = nl.ndarray((32, 32), nl.float32, buffer=nl.psum)
    with pytest.raises(NkiSimError, match="accumulate=True onto dst .* that no nc_matmul initialised"):
        nisa.nc_matmul(dst, st, mv, accumulate=True)
    nisa.nc_matmul(dst, st, mv)  # None: first write overwrites (sentinel NaN gone)
    nisa.nc_matmul(dst, st, mv)  # None: then accumulates
    np.testing.assert_allclose(dst.read(), 2 * one, rtol=1e-5, atol=1e-5)
    nisa.nc_matmul(dst, st, mv, accumulate=True)
    np.testing.assert_allclose(dst.read(), 3 * one, rtol=1e-5, atol=1e-5)
    nisa.nc_matmul(dst, st, mv, accumulate=False)
    np.testing.assert_allclose(dst.read(), one, rtol=1e-5, atol=1e-5)
    nisa.memset(dst, 0.0)  # a non-matmul write: PSUM no longer holds matmul output
    with pytest.raises(NkiSimError, match="a non-matmul instruction wrote .* NeuronCore-v2/v3"):
        nisa.nc_matmul(dst, st, mv, accumulate=True)
    nisa.nc_matmul(dst, st, mv)
    np.testing.assert_allclose(dst.read(), one, rtol=1e-5, atol=1e-5)


def test_matmul_limits_trn2(trn2):
    k = sb(np.ones((128, 128), np.float32), nl.bfloat16)
    big = sb(np.ones((128, 513), np.float32), nl.bfloat16)
    with pytest.raises(NkiSimError, match="moving free size 513 exceeds maximum 512 on trn2"):
        nisa.nc_matmul(nl.ndarray((128, 512), nl.float32, buffer=nl.psum), k, big)
    wide = nl.ndarray((128, 2, 129), nl.bfloat16)
    with pytest.raises(NkiSimError, match="stationary free size 258 exceeds maximum 128"):
        nisa.nc_matmul(nl.ndarray((128, 128), nl.float32, buffer=nl.psum), wide, k)
    with pytest.raises(NkiSimError, match="contraction .* sizes differ"):
        nisa.nc_matmul(nl.ndarray((128, 128), nl.float32, buffer=nl.psum), k, k[0:64, :])
    with pytest.raises(NkiSimError, match="moving .* is in sbuf|dst .* is in sbuf"):
        nisa.nc_matmul(nl.ndarray((128, 128), nl.float32), k, k)
    with pytest.raises(NkiSimError, match="stationary .* is in psum"):
        nisa.nc_matmul(
            nl.ndarray((128, 128), nl.float32, buffer=nl.psum),
            nl.ndarray((128, 128), nl.float32, buffer=nl.psum),
            k,
        )
    with pytest.raises(NkiSimError, match="dst dtype bfloat16 not supported on trn2"):
        nisa.nc_matmul(nl.ndarray((128, 128), nl.bfloat16, buffer=nl.psum), k, k)
    with pytest.raises(NkiSimError, match="float32/tfloat32 only pair"):
        nisa.nc_matmul(
            nl.ndarray((128, 128), nl.float32, buffer=nl.psum),
            k,
            sb(np.ones((128, 128), np.float32), nl.float32),
        )
    with pytest.raises(NkiSimError, match="dtype int8 not supported"):
        nisa.nc_matmul(nl.ndarray((128, 128), nl.float32, buffer=nl.psum), k, nl.zeros((128, 128), nl.int8))
    with pytest.raises(NkiSimError, match="float8_e4m3fn not supported on trn2"):
        nisa.nc_matmul(nl.ndarray((128, 128), nl.float32, buffer=nl.psum), k, nl.zeros((128, 128), nl.float8_e4m3fn))


def test_matmul_trn3_limits_and_bf16_dst():
    with context(target="trn3"):
        a = RNG.standard_normal((128, 64)).astype(np.float32)
        b = RNG.standard_normal((128, 1024)).astype(np.float32)
        dst = nl.ndarray((64, 1024), nl.bfloat16, buffer=nl.psum)  # 2 KiB: one bank
        nisa.nc_matmul(dst, sb(a, nl.bfloat16), sb(b, nl.bfloat16))
        ref = (a.astype(BF16).astype(np.float32).T @ b.astype(BF16).astype(np.float32)).astype(BF16)
        np.testing.assert_allclose(read_f32(dst), ref.astype(np.float32), rtol=1e-2, atol=1e-2)
        with pytest.raises(NkiSimError, match="moving free size 8193 exceeds maximum 8192"):
            nisa.nc_matmul(dst, sb(a, nl.bfloat16), nl.ndarray((128, 8193), nl.bfloat16))


def test_double_row_fp8(trn2):
    a = RNG.uniform(-2, 2, (128, 2, 32)).astype(np.float32)
    b = RNG.uniform(-2, 2, (128, 2, 64)).astype(np.float32)
    st, mv = sb(a, nl.float8_e4m3), sb(b, nl.float8_e5m2)
    dst = nl.ndarray((32, 64), nl.float32, buffer=nl.psum)
    nisa.nc_matmul(dst, st, mv, perf_mode=nisa.matmul_perf_mode.double_row)
    ra = read_f32(st).reshape(256, 32)
    rb = read_f32(mv).reshape(256, 64)
    np.testing.assert_allclose(dst.read(), ra.T @ rb, rtol=1e-5, atol=1e-4)
    with pytest.raises(NkiSimError, match="double_row needs FP8"):
        nisa.nc_matmul(dst, sb(a, nl.bfloat16), mv, perf_mode=nisa.matmul_perf_mode.double_row)


def test_is_transpose_and_nc_transpose(trn2):
    x = RNG.standard_normal((64, 96)).astype(np.float32)
    data = sb(x, nl.bfloat16)
    ident = sb(np.eye(64, dtype=np.float32), nl.bfloat16)
    dst = nl.ndarray((96, 64), nl.bfloat16, buffer=nl.psum)
    nisa.nc_matmul(dst, data, ident, is_transpose=True)
    np.testing.assert_array_equal(dst.read(), x.astype(BF16).T)
    d2 = nl.ndarray((96, 64), nl.bfloat16, buffer=nl.psum)
    nisa.nc_transpose(d2, data)
    np.testing.assert_array_equal(d2.read(), x.astype(BF16).T)
    assert trn2.run.trace[-1]["engine"] == "tensor"
    small = sb(x[:32, :16], nl.float32)
    d3 = nl.ndarray((16, 32), nl.float32)
    nisa.nc_transpose(d3, small)
    assert trn2.run.trace[-1]["engine"] == "vector"
    np.testing.assert_array_equal(d3.read(), x[:32, :16].T)
    with pytest.raises(NkiSimError, match="exceeds the vector engine maximum"):
        nisa.nc_transpose(nl.ndarray((96, 64), nl.bfloat16), data, engine=nisa.engine.vector)
    with pytest.raises(NkiSimError, match="dst dtype float32 must equal data dtype bfloat16"):
        nisa.nc_transpose(nl.ndarray((96, 64), nl.float32, buffer=nl.psum), data)


def test_partition_start_rules(trn2):
    t = sb(np.ones((128, 64), np.float32), nl.bfloat16)
    dst = nl.ndarray((64, 64), nl.float32, buffer=nl.psum)
    nisa.nc_matmul(dst, t[64:128, :], t[64:128, :])
    with pytest.raises(NkiSimError, match="spans 64 partitions starting at partition 32"):
        nisa.nc_matmul(dst, t[32:96, :], t[32:96, :])
    with pytest.raises(NkiSimError, match="contiguous partitions"):
        nisa.nc_matmul(dst, t[0:128:2, :], t[0:128:2, :])
    with pytest.raises(NkiSimError, match="spans 1 partitions starting at partition 5"):
        nisa.nc_transpose(nl.ndarray((64, 1), nl.bfloat16, buffer=nl.psum), t[5:6, :])


def test_trn3_only_refused_on_trn2(trn2):
    with pytest.raises(NkiSimError, match="nc_matmul_mx: not available on trn2"):
        nisa.nc_matmul_mx(None, None, None, None, None)
    with pytest.raises(NkiSimError, match="quantize_mx: not available on trn2"):
        nisa.quantize_mx(None, None, None)


def test_only_dma_touches_hbm(trn2):
    from moegen.sim.tensor import from_numpy

    h = from_numpy(np.ones((4, 4), np.float32), nl.shared_hbm)
    with pytest.raises(NkiSimError, match="only DMA instructions access HBM"):
        nisa.nc_transpose(nl.ndarray((4, 4), nl.float32), h)
    with pytest.raises(NkiSimError, match="hbm|HBM"):
        nisa.nc_matmul(nl.ndarray((4, 4), nl.float32, buffer=nl.psum), h, h)
