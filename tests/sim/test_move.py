"""DMA instructions, registers and runtime loops of moegen.sim against direct NumPy."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from moegen.sim import NkiSimError, context
from moegen.sim import isa as nisa
from moegen.sim import language as nl
from moegen.sim.tensor import from_numpy, read_f32

RNG = np.random.default_rng(3)


@pytest.fixture
def core():
    with context(target="trn2") as c:
        yield c


def hbm(arr, dtype=None):
    return from_numpy(np.asarray(arr), nl.shared_hbm, dtype=dtype)


def test_dma_copy_roundtrip_and_trace(core):
    x = RNG.standard_normal((128, 64)).astype(np.float32)
    src = hbm(x)
    t = nl.ndarray((128, 64), nl.float32)
    nisa.dma_copy(t, src)
    out = nl.ndarray((128, 64), nl.float32, buffer=nl.shared_hbm)
    nisa.dma_copy(out, t)
    np.testing.assert_array_equal(out.read(), x)
    e = core.run.trace[-1]
    assert e["engine"] == "dma" and e["opcode"] == "dma_copy" and e["bytes"] == 128 * 64 * 4
    assert e["operands"]["dst"]["buffer"] == "shared_hbm" and e["line"].startswith("test_move.py:")


def test_dma_copy_converts_through_fp32_and_rounds(core):
    x = RNG.standard_normal((4, 32)).astype(np.float32)
    t = nl.ndarray((4, 32), nl.bfloat16)
    nisa.dma_copy(t, hbm(x))
    np.testing.assert_array_equal(t.read(), x.astype(ml_dtypes.bfloat16))
    big = nl.ndarray((1, 1), nl.int32)
    nisa.dma_copy(big, hbm(np.array([[2**24 + 1]], np.int32)))
    f = nl.ndarray((1, 1), nl.float32)
    nisa.dma_copy(f, big)
    assert f.read()[0, 0] == 2.0**24  # int32 -> fp32 loses the low bit


def test_dma_copy_element_count_reshape(core):
    x = np.arange(64, dtype=np.float32).reshape(8, 8)
    t = nl.ndarray((2, 32), nl.float32)
    nisa.dma_copy(t, hbm(x))
    np.testing.assert_array_equal(t.read(), x.reshape(2, 32))
    with pytest.raises(NkiSimError, match="total elements"):
        nisa.dma_copy(nl.ndarray((2, 31), nl.float32), hbm(x))


def test_dma_copy_checks(core):
    p = nl.ndarray((4, 4), nl.float32, buffer=nl.psum)
    with pytest.raises(NkiSimError, match="src 'psum|is in psum"):
        nisa.dma_copy(nl.ndarray((4, 4), nl.float32), p)
    with pytest.raises(NkiSimError, match="hwdge src dtype float32 must equal dst dtype bfloat16"):
        nisa.dma_copy(nl.ndarray((4, 4), nl.bfloat16), hbm(np.zeros((4, 4), np.float32)), dge_mode=nisa.dge_mode.hwdge)
    with pytest.raises(NkiSimError, match="oob_mode must be a nki.isa.oob_mode"):
        nisa.dma_copy(nl.ndarray((4, 4), nl.float32), hbm(np.zeros((4, 4), np.float32)), oob_mode=0)


def test_indirect_gather_and_oob_modes(core):
    table = RNG.standard_normal((10, 6)).astype(np.float32)
    src = hbm(table)
    idx = nl.ndarray((4, 1), nl.int32)
    idx.write(np.array([[3], [0], [9], [5]]))
    dst = nl.ndarray((4, 6), nl.float32)
    nisa.dma_copy(dst, src.ap([[6, 4], [1, 6]], vector_offset=idx, indirect_dim=0))
    np.testing.assert_array_equal(dst.read(), table[[3, 0, 9, 5]])
    idx.write(np.array([[3], [12], [1], [-1]]))
    with pytest.raises(NkiSimError, match="out of bounds at partition 1"):
        nisa.dma_copy(dst, src.ap([[6, 4], [1, 6]], vector_offset=idx, indirect_dim=0))
    dst.write(0.0)
    nisa.dma_copy(dst, src.ap([[6, 4], [1, 6]], vector_offset=idx, indirect_dim=0), oob_mode=nisa.oob_mode.skip)
    np.testing.assert_array_equal(dst.read(), np.stack([table[3], np.zeros(6), table[1], np.zeros(6)]))


def test_indirect_row_past_the_tensor_after_the_offset_is_out_of_bounds(core):
    """nki.isa.dma_copy page: in the dynamic DGE modes "out-of-bound address checking is turned on automatically";
    the address is the pattern's offset plus the row index, so a row index in range that lands past the tensor once
    the offset is added is out of bounds: a named error with oob_mode=error (not a raw IndexError), skipped with
    oob_mode=skip, for a gather and for a scatter."""
    table = hbm(np.arange(30, dtype=np.float32).reshape(10, 3))
    idx = nl.ndarray((2, 1), nl.int32)
    idx.write(np.array([[1], [8]]))
    dst = nl.ndarray((2, 3), nl.float32)
    with pytest.raises(NkiSimError, match="indirect row index 8 out of bounds at partition 1"):
        nisa.dma_copy(dst, table.ap([[3, 2], [1, 3]], offset=6, vector_offset=idx, indirect_dim=0))
    dst.write(0.0)
    nisa.dma_copy(
        dst, table.ap([[3, 2], [1, 3]], offset=6, vector_offset=idx, indirect_dim=0), oob_mode=nisa.oob_mode.skip
    )
    np.testing.assert_array_equal(dst.read(), [[9, 10, 11], [0, 0, 0]])
    vals = nl.ndarray((2, 3), nl.float32)
    vals.write(np.ones((2, 3), np.float32))
    with pytest.raises(NkiSimError, match="dst 't.*' indirect row index 8 out of bounds"):
        nisa.dma_copy(table.ap([[3, 2], [1, 3]], offset=6, vector_offset=idx, indirect_dim=0), vals)
    nisa.dma_copy(
        table.ap([[3, 2], [1, 3]], offset=6, vector_offset=idx, indirect_dim=0), vals, oob_mode=nisa.oob_mode.skip
    )
    assert table.read()[3].tolist() == [1, 1, 1] and table.read()[9].tolist() == [27, 28, 29]


def test_indirect_scatter_and_vector_select(core):
    out = hbm(np.zeros((8, 3), np.float32))
    vals = nl.ndarray((3, 3), nl.float32)
    vals.write(np.arange(9, dtype=np.float32).reshape(3, 3))
    idx = nl.ndarray((3, 1), nl.uint32)
    idx.write(np.array([[7], [2], [40]]))
    nisa.dma_copy(out.vector_select(0, idx), vals, oob_mode=nisa.oob_mode.skip)
    ref = np.zeros((8, 3), np.float32)
    ref[7], ref[2] = [0, 1, 2], [3, 4, 5]
    np.testing.assert_array_equal(out.read(), ref)
    with pytest.raises(NkiSimError, match="gather/scatter"):
        nisa.dma_copy(out.vector_select(0, idx), vals, dge_mode=nisa.dge_mode.hwdge)


def test_scalar_offset_from_sbuf_tile_and_skip(core):
    table = np.arange(40, dtype=np.float32).reshape(10, 4)
    src = hbm(table)
    pos = nl.ndarray((1, 1), nl.int32)
    pos.write(np.array([[6]]))
    dst = nl.ndarray((2, 4), nl.float32)
    nisa.dma_copy(dst, src.ap([[4, 2], [1, 4]], offset=0, scalar_offset=pos, indirect_dim=0))
    np.testing.assert_array_equal(dst.read(), table[6:8])
    pos.write(np.array([[9]]))
    dst.write(-1.0)
    nisa.dma_copy(dst, src.ap([[4, 2], [1, 4]], offset=0, scalar_offset=pos), oob_mode=nisa.oob_mode.skip)
    assert (dst.read() == -1).all()
    with pytest.raises(NkiSimError, match="out of bounds"):
        nisa.dma_copy(dst, src.ap([[4, 2], [1, 4]], offset=0, scalar_offset=pos))


def test_skipped_transfers_move_no_bytes(core):
    """nki.isa.dma_copy (oob_mode.skip): out-of-bounds rows of an indirect access, or a whole out-of-bounds
    scalar-offset transfer, are skipped; the trace records only the bytes moved, so the timeline model
    charges a skipped weight load or padding row no bandwidth."""
    table = RNG.standard_normal((10, 6)).astype(np.float32)
    idx = nl.ndarray((4, 1), nl.int32)
    idx.write(np.array([[3], [-1], [1], [-1]]))
    dst = nl.ndarray((4, 6), nl.float32)
    nisa.dma_copy(dst, hbm(table).ap([[6, 4], [1, 6]], vector_offset=idx, indirect_dim=0), oob_mode=nisa.oob_mode.skip)
    assert core.run.trace[-1]["bytes"] == 2 * 6 * 4
    out = hbm(np.zeros((10, 6), np.float32))
    nisa.dma_copy(out.ap([[6, 4], [1, 6]], vector_offset=idx, indirect_dim=0), dst, oob_mode=nisa.oob_mode.skip)
    assert core.run.trace[-1]["bytes"] == 2 * 6 * 4
    pos = nl.ndarray((1, 1), nl.int32)
    pos.write(np.array([[9]]))
    nisa.dma_copy(dst[0:2], hbm(table).ap([[6, 2], [1, 6]], offset=0, scalar_offset=pos), oob_mode=nisa.oob_mode.skip)
    assert core.run.trace[-1]["bytes"] == 0
    pos.write(np.array([[2]]))
    nisa.dma_copy(dst[0:2], hbm(table).ap([[6, 2], [1, 6]], offset=0, scalar_offset=pos), oob_mode=nisa.oob_mode.skip)
    assert core.run.trace[-1]["bytes"] == 2 * 6 * 4


def test_dma_transpose(core):
    x = RNG.standard_normal((16, 32)).astype(ml_dtypes.bfloat16)
    dst = nl.ndarray((32, 16), nl.bfloat16)
    nisa.dma_transpose(dst, hbm(x))
    np.testing.assert_array_equal(dst.read(), x.T)
    x3 = RNG.standard_normal((2, 8, 4)).astype(np.float32)
    d3 = nl.ndarray((4, 8, 2), nl.float32)
    nisa.dma_transpose(d3, hbm(x3))
    np.testing.assert_array_equal(d3.read(), x3.transpose(2, 1, 0))
    with pytest.raises(NkiSimError, match="must equal transposed src shape"):
        nisa.dma_transpose(nl.ndarray((16, 32), nl.bfloat16), hbm(x))
    with pytest.raises(NkiSimError, match="hwdge 2-D src.shape\\[0\\] must be 16"):
        nisa.dma_transpose(nl.ndarray((32, 8), nl.bfloat16), hbm(x[:8]), dge_mode=nisa.dge_mode.hwdge)


def test_dma_compute_scatter_add(core):
    acc = hbm(np.ones((6, 4), np.float32))
    src = nl.ndarray((2, 4), nl.float32)
    src.write(np.full((2, 4), 2.0, np.float32))
    idx = nl.ndarray((2, 1), nl.int32)
    idx.write(np.array([[1], [4]]))
    view = acc.ap([[4, 2], [1, 4]], vector_offset=idx, indirect_dim=0)
    nisa.dma_compute(view, [view, src], nl.add)
    ref = np.ones((6, 4), np.float32)
    ref[[1, 4]] += 2
    np.testing.assert_array_equal(acc.read(), ref)
    with pytest.raises(NkiSimError, match="nl.add only"):
        nisa.dma_compute(view, [view, src], nl.multiply)


def test_dma_compute_skipped_rows_move_no_bytes(core):
    """nki.isa.dma_compute takes the same oob_mode as nki.isa.dma_copy: with oob_mode.skip the out-of-bounds
    rows of an indirect destination are skipped (neither read nor written), so the trace records only the
    rows moved, as it does for dma_copy (test_skipped_transfers_move_no_bytes)."""
    acc = hbm(np.ones((6, 4), np.float32))
    src = nl.ndarray((4, 4), nl.float32)
    src.write(np.full((4, 4), 2.0, np.float32))
    idx = nl.ndarray((4, 1), nl.int32)
    idx.write(np.array([[1], [-1], [4], [-1]]))
    view = acc.ap([[4, 4], [1, 4]], vector_offset=idx, indirect_dim=0)
    nisa.dma_compute(view, [view, src], nl.add, oob_mode=nisa.oob_mode.skip)
    assert core.run.trace[-1]["bytes"] == 2 * 4 * 4
    ref = np.ones((6, 4), np.float32)
    ref[[1, 4]] += 2
    np.testing.assert_array_equal(acc.read(), ref)


def test_setitem_copies(core):
    t = nl.ndarray((4, 4), nl.float32)
    t[...] = 0.0
    t[1:3, :] = hbm(np.ones((2, 4), np.float32))
    assert read_f32(t).sum() == 8


def test_registers_and_loops(core):
    r = nisa.register_alloc(3)
    seen = []
    nl.fori_loop(0, r, lambda i: seen.append(i._get()))
    assert seen == [0, 1, 2]
    cnt = nl.ndarray((1, 1), nl.int32)
    cnt.write(np.array([[4]]))
    nisa.register_load(r, cnt)
    steps = []

    def body(cond):
        steps.append(cond._get())
        nxt = nisa.register_alloc()
        nisa.register_move(nxt, cond._get() - 1)
        return nxt

    nl.while_loop(r, body)
    assert steps == [4, 3, 2, 1]
    out = nl.ndarray((1, 1), nl.int32)
    nisa.register_store(out, nisa.register_alloc(42))
    assert out.read()[0, 0] == 42
    assert [i._get() for i in nl.dynamic_range(1, r, 1)] == [1, 2, 3]
    assert list(nl.affine_range(3)) == [0, 1, 2] and list(nl.static_range(1, 4, 2)) == [1, 3]
    frozen = next(iter(nl.dynamic_range(2)))
    with pytest.raises(NkiSimError, match="read-only"):
        nisa.register_move(frozen, 1)
    with pytest.raises(TypeError):
        bool(r)
    with pytest.raises(NkiSimError, match="must return None"):
        nl.fori_loop(0, 1, lambda i: 1)


def test_register_indexing_in_fori_loop(core):
    table = np.arange(32, dtype=np.float32).reshape(8, 4)
    src = hbm(table)
    out = hbm(np.zeros((8, 4), np.float32))

    def body(i):
        t = nl.ndarray((1, 4), nl.float32)
        nisa.dma_copy(t, src[i, :])
        nisa.dma_copy(out[nl.ds(i, 1), :], t)

    nl.fori_loop(0, 8, body)
    np.testing.assert_array_equal(out.read(), table)
