"""Allocation, sentinels, capacity accounting, lifetime, views and dtypes of moegen.sim."""

from __future__ import annotations

import gc

import ml_dtypes
import numpy as np
import pytest

from moegen.sim import NkiSimError, context
from moegen.sim import dtypes as dt
from moegen.sim import language as nl
from moegen.sim.tensor import read_f32


@pytest.fixture
def trn2():
    with context(target="trn2") as core:
        yield core


def test_new_allocations_hold_sentinels(trn2):
    f = nl.ndarray((4, 8), nl.bfloat16)
    i = nl.ndarray((4, 8), nl.int32)
    assert np.isnan(read_f32(f)).all()
    assert (i.read() == 4).all()
    assert f.read().dtype == ml_dtypes.bfloat16


def test_zeros_full_like(trn2):
    z = nl.zeros((2, 3), nl.float32)
    f = nl.full((2, 3), 2.5, nl.bfloat16)
    o = nl.ones((2, 3), nl.int8, buffer=nl.shared_hbm)
    e = nl.empty_like(f)
    assert (z.read() == 0).all() and (read_f32(f) == 2.5).all() and (o.read() == 1).all()
    assert e.shape == f.shape and e.dtype == nl.bfloat16 and e.buffer is nl.sbuf
    assert nl.zeros_like(o).buffer is nl.shared_hbm


def test_dtype_is_string_and_table():
    assert nl.bfloat16 == "bfloat16" and nl.float8_e4m3.max == 240.0 and nl.float8_e4m3fn.max == 448.0
    assert nl.float8_e5m2_x4.itemsize == 4 and nl.float4_e2m1fn_x4.itemsize == 2
    assert dt.as_dtype(np.float32) is nl.float32


@pytest.mark.parametrize("name", ["bfloat16", "float16", "float8_e4m3", "float8_e4m3fn", "float8_e5m2"])
def test_writes_round_to_nearest_even(trn2, name):
    x = np.random.default_rng(1).standard_normal((8, 64)).astype(np.float32) * 3
    t = nl.ndarray((8, 64), name)
    t.write(x)
    expect = x.astype(dt.as_dtype(name).np_dtype).astype(np.float32)
    np.testing.assert_array_equal(read_f32(t), expect)


def test_fp8_saturates_and_int_saturates(trn2):
    t = nl.ndarray((1, 3), nl.float8_e4m3)
    t.write(np.array([[1000.0, -1000.0, 1.0]], np.float32))
    assert read_f32(t).tolist() == [[240.0, -240.0, 1.0]]
    i = nl.ndarray((1, 4), nl.int8)
    i.write(np.array([[300.0, -300.0, 2.5, 3.5]], np.float32))
    assert i.read().tolist() == [[127, -128, 2, 4]]


def test_tfloat32_rounding(trn2):
    t = nl.ndarray((1, 1), nl.tfloat32)
    t.write(np.array([[1.0 + 2.0**-12]], np.float32))
    assert read_f32(t)[0, 0] == 1.0


def test_precise_off_keeps_fp32():
    with context(target="trn2", precise=False):
        t = nl.ndarray((1, 1), nl.bfloat16)
        t.write(np.array([[1.0 + 2.0**-12]], np.float32))
        assert t.read().dtype == np.float32 and t.read()[0, 0] == np.float32(1.0 + 2.0**-12)


def test_partition_dim_limit(trn2):
    with pytest.raises(NkiSimError, match="partition dimension 256 exceeds maximum 128"):
        nl.ndarray((256, 4), nl.float32)


def test_sbuf_capacity_trn2_vs_trn3():
    with context(target="trn2"):
        keep = [nl.ndarray((128, 50 * 1024), nl.float32)]  # 200 KiB per partition
        with pytest.raises(NkiSimError, match=r"SBUF capacity exceeded.*limit 229376"):
            keep.append(nl.ndarray((128, 8 * 1024), nl.float32))  # +32 KiB > 224 KiB
    with context(target="trn3"):
        keep = [nl.ndarray((128, 50 * 1024), nl.float32), nl.ndarray((128, 8 * 1024), nl.float32)]
        assert len(keep) == 2


def test_sbuf_released_when_unreferenced(trn2):
    for _ in range(20):  # 20 x 100 KiB would overflow if loop-body tiles leaked
        t = nl.ndarray((128, 25 * 1024), nl.float32)
        t.write(0.0)
    del t
    gc.collect()
    assert trn2.sbuf_used == 0


def test_psum_bank_limits(trn2):
    with pytest.raises(NkiSimError, match="exceeds one bank limit 2048 bytes on trn2"):
        nl.ndarray((128, 513), nl.float32, buffer=nl.psum)
    tiles = [nl.ndarray((128, 512), nl.float32, buffer=nl.psum) for _ in range(8)]
    with pytest.raises(NkiSimError, match="8 of limit 8 banks"):
        nl.ndarray((128, 512), nl.float32, buffer=nl.psum)
    del tiles
    small = [nl.ndarray((128, 256), nl.float32, buffer=nl.psum) for _ in range(16)]  # two per bank
    assert len(small) == 16


def test_psum_multi_bank_tiles_on_trn3():
    with context(target="trn3"):
        big = nl.ndarray((128, 2048), nl.float32, buffer=nl.psum)  # 4 banks
        other = nl.ndarray((128, 4096), nl.bfloat16, buffer=nl.psum)  # the other 4 banks
        with pytest.raises(NkiSimError, match="PSUM full"):
            nl.ndarray((128, 1), nl.float32, buffer=nl.psum)
        with pytest.raises(NkiSimError, match="all banks limit 16384"):
            nl.ndarray((128, 4097), nl.float32, buffer=nl.psum)
        del big, other


def test_psum_address_must_be_bank_aligned(trn2):
    with pytest.raises(NkiSimError, match="bank boundary"):
        nl.ndarray((128, 128), nl.float32, buffer=nl.psum, address=(0, 100))
    nl.ndarray((128, 128), nl.float32, buffer=nl.psum, address=(0, 2048))


def test_on_chip_needs_2d_and_region_objects(trn2):
    with pytest.raises(NkiSimError, match="at least 2-D"):
        nl.ndarray((128,), nl.float32)
    with pytest.raises(NkiSimError, match="not the string"):
        nl.ndarray((2, 2), nl.float32, buffer="sbuf")


# -- views ---------------------------------------------------------------------------------------------------
def _iota(shape, buffer=nl.sbuf, dtype=nl.float32):
    t = nl.ndarray(shape, dtype, buffer=buffer)
    t.write(np.arange(np.prod(shape), dtype=np.float32).reshape(shape))
    return t, np.arange(np.prod(shape), dtype=np.float32).reshape(shape)


def test_slicing_on_chip_keeps_partition_and_2d(trn2):
    t, ref = _iota((16, 4, 8))
    assert t[3].shape == (1, 4, 8)
    assert t[:, 2, 5].shape == (16, 1)
    assert t[:, 1].shape == (16, 8)
    np.testing.assert_array_equal(t[2:6, 1, ::2].read(), ref[2:6, 1, ::2])
    np.testing.assert_array_equal(t[..., -1].read(), ref[..., -1])
    np.testing.assert_array_equal(t[nl.ds(4, 4), nl.ds(1, 2)].read(), ref[4:8, 1:3])


def test_slicing_hbm_drops_indexed_dims(trn2):
    t, ref = _iota((6, 5, 4), buffer=nl.shared_hbm)
    assert t[1].shape == (5, 4) and t[1, 2].shape == (4,)
    np.testing.assert_array_equal(t[1, :, 3].read(), ref[1, :, 3])


def test_view_methods(trn2):
    t, ref = _iota((4, 6, 8), buffer=nl.shared_hbm)
    np.testing.assert_array_equal(t.permute((2, 0, 1)).read(), ref.transpose(2, 0, 1))
    np.testing.assert_array_equal(t.reshape((4, 48)).read(), ref.reshape(4, 48))
    np.testing.assert_array_equal(t.reshape_dim(1, (2, 3)).read(), ref.reshape(4, 2, 3, 8))
    np.testing.assert_array_equal(t.flatten_dims(1, 2).read(), ref.reshape(4, 48))
    np.testing.assert_array_equal(t.select(1, 2).read(), ref[:, 2])
    np.testing.assert_array_equal(t.slice(2, 1, 7, 2).read(), ref[:, :, 1:7:2])
    np.testing.assert_array_equal(t[:, 0:1, :].broadcast(1, 3).read(), np.repeat(ref[:, 0:1], 3, axis=1))
    np.testing.assert_array_equal(t.expand_dim(0).squeeze_dim(0).read(), ref)
    np.testing.assert_array_equal(
        t.rearrange(("a", "b", "c"), ("c", ("a", "b"))).read(), ref.transpose(2, 0, 1).reshape(8, 24)
    )
    with pytest.raises(NkiSimError, match="without moving data"):
        t.permute((0, 2, 1)).reshape((4, 48))


def test_on_chip_views_keep_partition_dim(trn2):
    t, _ = _iota((8, 4))
    with pytest.raises(NkiSimError, match="partition dim"):
        t.permute((1, 0))
    with pytest.raises(NkiSimError, match="partition dim"):
        t.reshape((4, 8))


def test_bitcast_view(trn2):
    t = nl.ndarray((2, 4), nl.float32)
    t.write(np.array([[1.0, 2.0, -1.0, 0.5]] * 2, np.float32))
    u = t.view(nl.uint16)
    assert u.shape == (2, 8)
    np.testing.assert_array_equal(u.read(), np.array([[1.0, 2.0, -1.0, 0.5]] * 2, np.float32).view(np.uint16))
    back = u.view(nl.int32)
    assert back.shape == (2, 4) and back.read()[0, 0] == np.float32(1.0).view(np.int32)


def test_access_pattern(trn2):
    t, ref = _iota((4, 16), buffer=nl.shared_hbm)
    v = t.ap([[16, 4], [2, 8]], offset=1)
    np.testing.assert_array_equal(v.read(), ref[:, 1::2])
    s, sref = _iota((8, 16))
    w = s.ap([[16, 4], [1, 4]], offset=2 * 16 + 3)
    np.testing.assert_array_equal(w.read(), sref[2:6, 3:7])
    with pytest.raises(NkiSimError, match="partition stride"):
        s.ap([[8, 4], [1, 4]])


def test_dynamic_scalar_offset_reads_register_at_access(trn2):
    from moegen.sim import isa as nisa

    t, ref = _iota((10, 4), buffer=nl.shared_hbm)
    r = nisa.register_alloc(2)
    v = t.ap([[4, 3], [1, 4]], offset=0, scalar_offset=r, indirect_dim=0)
    np.testing.assert_array_equal(v.read(), ref[2:5])
    nisa.register_move(r, 7)
    np.testing.assert_array_equal(v.read(), ref[7:10])
    nisa.register_move(r, 8)
    with pytest.raises(NkiSimError, match="out of bounds"):
        v.read()


def test_out_of_bounds_views(trn2):
    t, _ = _iota((8, 4))
    with pytest.raises(NkiSimError, match="out of bounds"):
        t[8]
    with pytest.raises(NkiSimError, match="out of bounds"):
        t.ap([[4, 4], [1, 5]])
    with pytest.raises(NkiSimError, match="out of bounds"):
        t[nl.ds(6, 4)]


def test_write_shape_mismatch(trn2):
    t = nl.ndarray((4, 4), nl.float32)
    with pytest.raises(NkiSimError, match="does not match"):
        t.write(np.zeros((3, 4), np.float32))


def test_tile_size_constants(trn2):
    assert nl.tile_size.pmax == 128 and nl.tile_size.gemm_moving_fmax == 512
    assert nl.tile_size.psum_num_banks == 8 and nl.tile_size.sbuf_size_bytes == 128 * 224 * 1024
