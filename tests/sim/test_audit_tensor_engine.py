"""SIM AUDIT: TensorE (nc_matmul, nc_transpose, PSUM) of moegen.sim against the official NKI docs.

Independent audit (see /work/main/docs/sim_audit.md). Each test states one documented fact and the page it
comes from; the page text is the docstring of the NKI 0.6 stub `nki/api/nki/isa/__init__.py`
(aws-neuron/aws-neuron-sdk), rendered as .../nki/api/generated/nki.isa.<name>.html.
Tests marked xfail(strict=True) are discrepancies: the simulator differs from the page.
Instructions are called directly in a `moegen.sim.context(target=...)` run (the simulator's public
API for calling instructions outside a kernel); kernel-level behaviour is in test_audit_control.py.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from moegen.sim import NkiSimError, context
from moegen.sim import isa as nisa
from moegen.sim import language as nl

RNG = np.random.default_rng(2026)
BF16 = ml_dtypes.bfloat16
MM = "nki.isa.nc_matmul"


@pytest.fixture
def trn2():
    with context(target="trn2") as c:
        yield c


@pytest.fixture
def trn3():
    with context(target="trn3") as c:
        yield c


def sb(x, dtype, buffer=None):
    t = nl.ndarray(x.shape, dtype, buffer=buffer or nl.sbuf)
    t.write(np.asarray(x))
    return t


def psum(shape, dtype=None):
    return nl.ndarray(shape, dtype or nl.float32, buffer=nl.psum)


def rounded(x, npdtype):
    return np.asarray(x, np.float32).astype(npdtype).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# nc_matmul: semantics
# ------------------------------------------------------------------------------------------------
def test_matmul_computes_stationary_T_at_moving(trn2):
    """nki.isa.nc_matmul: 'dst = stationary.T @ moving', contraction on the partition dim of both,
    stationary [K, M], moving [K, N], dst [M, N]; accumulation precision fp32."""
    a = RNG.standard_normal((128, 96)).astype(np.float32)
    b = RNG.standard_normal((128, 200)).astype(np.float32)
    dst = psum((96, 200))
    nisa.nc_matmul(dst, sb(a, nl.bfloat16), sb(b, nl.bfloat16))
    ref = rounded(a, BF16).T.astype(np.float64) @ rounded(b, BF16).astype(np.float64)
    np.testing.assert_allclose(dst.read(), ref, rtol=1e-5, atol=1e-4)


def test_matmul_accumulate_false_overwrites_true_adds(trn2):
    """nki.isa.nc_matmul (Accumulation mode): accumulate=False overwrites the existing content,
    accumulate=True adds the result to the existing content."""
    a, b = RNG.standard_normal((2, 32, 16)).astype(np.float32)
    st, mv = sb(a, nl.float32), sb(b, nl.float32)
    one = a.T @ b
    dst = psum((16, 16))
    nisa.nc_matmul(dst, st, mv, accumulate=False)
    nisa.nc_matmul(dst, st, mv, accumulate=True)
    nisa.nc_matmul(dst, st, mv, accumulate=True)
    np.testing.assert_allclose(dst.read(), 3 * one, rtol=1e-5, atol=1e-5)
    nisa.nc_matmul(dst, st, mv, accumulate=False)
    np.testing.assert_allclose(dst.read(), one, rtol=1e-5, atol=1e-5)


def test_matmul_accumulate_none_is_per_location(trn2):
    """nki.isa.nc_matmul: accumulate=None auto-detects 'the first write to a PSUM location overwrites,
    and subsequent writes to the same location accumulate' (per location, not per tile)."""
    a = RNG.standard_normal((64, 8)).astype(np.float32)
    b = RNG.standard_normal((64, 32)).astype(np.float32)
    st = sb(a, nl.float32)
    dst = psum((8, 32))
    nisa.nc_matmul(dst[:, 0:16], st, sb(b[:, 0:16], nl.float32))  # first write of columns 0..15
    nisa.nc_matmul(dst, st, sb(b, nl.float32))  # 0..15 accumulate, 16..31 first write
    ref = a.T @ b
    ref[:, 0:16] *= 2
    np.testing.assert_allclose(dst.read(), ref, rtol=1e-5, atol=1e-5)


def test_matmul_k_tiling_idiom_accumulate_i_gt_0(trn2):
    """nki.isa.nc_matmul: 'Multiple nc_matmul instructions with accumulate=True can form an
    accumulation group' -- the router/expert templates use accumulate=(i > 0) over K tiles."""
    a = RNG.standard_normal((384, 64)).astype(np.float32)
    b = RNG.standard_normal((384, 512)).astype(np.float32)
    dst = psum((64, 512))
    for i in range(3):
        st = sb(a[i * 128 : (i + 1) * 128], nl.bfloat16)
        mv = sb(b[i * 128 : (i + 1) * 128], nl.bfloat16)
        nisa.nc_matmul(dst, st, mv, accumulate=(i > 0))
    ref = rounded(a, BF16).T.astype(np.float64) @ rounded(b, BF16).astype(np.float64)
    np.testing.assert_allclose(dst.read(), ref, rtol=1e-4, atol=1e-3)


def test_matmul_accumulation_is_fp32_even_for_bf16_inputs(trn2):
    """nki.isa.nc_matmul: 'The accumulation precision internal to Tensor Engine is float32' --
    1 + 2^-10 summed over K is not rounded to bf16 between products."""
    k = 128
    a = np.ones((k, 1), np.float32)
    b = np.full((k, 1), 1 + 2.0**-7, np.float32)  # exactly representable in bf16
    dst = psum((1, 1))
    nisa.nc_matmul(dst, sb(a, nl.bfloat16), sb(b, nl.bfloat16))
    assert dst.read()[0, 0] == np.float32(k * (1 + 2.0**-7))


def test_matmul_bf16_dst_on_trn3_rounds_result(trn3):
    """nki.isa.nc_matmul: 'Starting NeuronCore-v4, dst can either be a float32 or bfloat16 tile'
    (the fp32 result is written as bf16)."""
    a = RNG.standard_normal((64, 32)).astype(np.float32)
    b = RNG.standard_normal((64, 48)).astype(np.float32)
    dst = psum((32, 48), nl.bfloat16)
    nisa.nc_matmul(dst, sb(a, nl.float32), sb(b, nl.float32))
    got = np.asarray(dst.read()).astype(np.float32)
    np.testing.assert_array_equal(got, rounded(a.T @ b, BF16))


def test_matmul_mixed_fp8_and_bf16_allowed(trn2):
    """nki.isa.nc_matmul: 'The stationary and moving tiles can have different data types' except
    fp32/tf32 -- fp8_e5m2 stationary with bf16 moving is legal."""
    a = np.array([[1.0, 2.0], [3.0, -4.0]], np.float32)
    b = np.array([[0.5, 1.5, 2.0], [1.0, -1.0, 0.25]], np.float32)
    dst = psum((2, 3))
    nisa.nc_matmul(dst, sb(a, nl.float8_e5m2), sb(b, nl.bfloat16))
    np.testing.assert_allclose(dst.read(), a.T @ b, rtol=0, atol=0)


def test_matmul_double_row_fp8(trn2):
    """nki.isa.nc_matmul (Layout, double_row): the contraction is split between the partition dim
    and the first free dim, which must be 2: stationary [128, 2, M], moving [128, 2, N]."""
    a = RNG.integers(-3, 4, (128, 2, 3)).astype(np.float32)
    b = RNG.integers(-3, 4, (128, 2, 5)).astype(np.float32)
    dst = psum((3, 5))
    nisa.nc_matmul(dst, sb(a, nl.float8_e4m3), sb(b, nl.float8_e5m2), perf_mode=nisa.matmul_perf_mode.double_row)
    np.testing.assert_array_equal(dst.read(), np.einsum("kjm,kjn->mn", a, b))


def test_matmul_double_row_rejects_bf16(trn2):
    """nki.isa.nc_matmul: with double_row, 'stationary and moving tiles must be one of float8_e4m3
    or float8_e5m2' (plus e4m3fn on v4)."""
    t = sb(np.ones((128, 2, 4), np.float32), nl.bfloat16)
    with pytest.raises(NkiSimError):
        nisa.nc_matmul(psum((4, 4)), t, t, perf_mode=nisa.matmul_perf_mode.double_row)


def test_matmul_double_row_first_free_dim_must_be_2(trn2):
    """nki.isa.nc_matmul: double_row 'The first free dimension must be 2'."""
    t = sb(np.ones((128, 3, 4), np.float32), nl.float8_e4m3)
    with pytest.raises(NkiSimError):
        nisa.nc_matmul(psum((4, 4)), t, t, perf_mode=nisa.matmul_perf_mode.double_row)


# ------------------------------------------------------------------------------------------------
# nc_matmul: checks
# ------------------------------------------------------------------------------------------------
def test_matmul_operands_must_be_sbuf_dst_psum(trn2):
    """nki.isa.nc_matmul (Memory types): 'stationary and moving must be SBUF tiles, and dst tile
    must be a PSUM tile'."""
    s = sb(np.ones((8, 8), np.float32), nl.bfloat16)
    with pytest.raises(NkiSimError):
        nisa.nc_matmul(nl.ndarray((8, 8), nl.float32), s, s)  # dst in SBUF
    p = psum((8, 8), nl.float32)
    with pytest.raises(NkiSimError):
        nisa.nc_matmul(psum((8, 8)), s, p)  # moving in PSUM
    h = nl.ndarray((8, 8), nl.bfloat16, buffer=nl.hbm)
    with pytest.raises(NkiSimError):
        nisa.nc_matmul(psum((8, 8)), h, s)  # stationary in HBM


def test_matmul_fp32_pairs_only_with_fp32(trn2):
    """nki.isa.nc_matmul: 'if one of the input tiles is tfloat32/float32, the other tile must also be
    tfloat32/float32'."""
    with pytest.raises(NkiSimError):
        nisa.nc_matmul(psum((4, 4)), sb(np.ones((4, 4)), nl.float32), sb(np.ones((4, 4)), nl.bfloat16))


def test_matmul_e4m3fn_is_trn3_only(trn2):
    """nki.isa.nc_matmul: 'Starting NeuronCore-v4, float8_e4m3fn (OCP FP8) is also supported'
    -- refused on trn2 (NeuronCore-v3)."""
    t = sb(np.ones((4, 4)), nl.float8_e4m3fn)
    with pytest.raises(NkiSimError):
        nisa.nc_matmul(psum((4, 4)), t, t)


def test_matmul_e4m3_and_e4m3fn_cannot_mix(trn3):
    """nki.isa.nc_matmul: 'float8_e4m3 (legacy) and float8_e4m3fn cannot be mixed in the same
    matmul'."""
    with pytest.raises(NkiSimError):
        nisa.nc_matmul(psum((4, 4)), sb(np.ones((4, 4)), nl.float8_e4m3), sb(np.ones((4, 4)), nl.float8_e4m3fn))


def test_matmul_dst_must_be_fp32_on_trn2(trn2):
    """nki.isa.nc_matmul: 'The dst tile must be a float32 tile in NeuronCore-v2 and NeuronCore-v3'."""
    t = sb(np.ones((4, 4)), nl.bfloat16)
    with pytest.raises(NkiSimError):
        nisa.nc_matmul(psum((4, 4), nl.bfloat16), t, t)


def test_matmul_contraction_at_most_128(trn2):
    """nki.isa.nc_matmul (Tile size): partition dims of stationary and moving 'must be identical.
    They must not exceed 128' -- an SBUF tile cannot even hold 129 partitions."""
    with pytest.raises(NkiSimError):
        nl.ndarray((129, 4), nl.bfloat16)
    a = sb(np.ones((128, 4)), nl.bfloat16)
    with pytest.raises(NkiSimError):
        nisa.nc_matmul(psum((4, 4)), a, a[0:64, :])


def test_matmul_stationary_free_at_most_128(trn2):
    """nki.isa.nc_matmul: 'The free dimension size of stationary must not exceed 128'."""
    a = sb(np.ones((16, 129)), nl.bfloat16)
    with pytest.raises(NkiSimError):
        nisa.nc_matmul(psum((128, 4)), a, sb(np.ones((16, 4)), nl.bfloat16))


def test_matmul_moving_free_at_most_512_on_trn2(trn2):
    """nki.isa.nc_matmul: 'On NeuronCore-v2 and -v3, the free dimension size of moving tile must
    not exceed 512' (trn2 = NeuronCore-v3); 512 is accepted."""
    st = sb(np.ones((16, 4)), nl.bfloat16)
    nisa.nc_matmul(psum((4, 512)), st, sb(np.ones((16, 512)), nl.bfloat16))
    with pytest.raises(NkiSimError):
        nisa.nc_matmul(psum((4, 512)), st, sb(np.ones((16, 513)), nl.bfloat16))


# SIM_AUDIT #2 (trn3 PSUM tiles above one bank): fixed in moegen.sim during the audit; kept as a regression test.
def test_matmul_moving_free_up_to_4096_on_trn3(trn3):
    """nki.isa.nc_matmul: 'Starting NeuronCore-v4, the free dimension size of moving tile can go up
    to 4096 for float32 dst or 8192 for bfloat16 dst, matching the size of 8x PSUM banks'."""
    st = sb(np.ones((16, 4)), nl.bfloat16)
    dst = psum((4, 1024))
    nisa.nc_matmul(dst, st, sb(np.ones((16, 1024)), nl.bfloat16))
    np.testing.assert_array_equal(dst.read(), np.full((4, 1024), 16.0, np.float32))


def test_matmul_trn3_moving_limits(trn3):
    """nki.isa.nc_matmul: on NeuronCore-v4 moving free size 'up to 4096 for float32 dst or 8192 for
    bfloat16 dst, matching the size of 8x PSUM banks (the entire PSUM)'."""
    st = sb(np.ones((16, 4)), nl.bfloat16)
    nisa.nc_matmul(psum((4, 8192), nl.bfloat16), st, sb(np.ones((16, 8192)), nl.bfloat16))
    with pytest.raises(NkiSimError):
        psum((4, 4097))  # more than the whole PSUM partition in fp32


def test_matmul_bf16_psum_accumulate_rounds_each_step(trn3):
    """Trainium3 arch guide (PSUM): NeuronCore-v4 supports bf16 PSUM tensors -- accumulation upcasts
    to fp32, adds, and rounds back to bf16 (so 1 + 2^-9 added four times stays 1.0 in bf16)."""
    d = psum((1, 1), nl.bfloat16)
    one = sb(np.array([[1.0]]), nl.float32)
    nisa.nc_matmul(d, one, one)
    for _ in range(4):
        nisa.nc_matmul(d, one, sb(np.array([[2.0**-9]]), nl.float32), accumulate=True)
    assert float(np.asarray(d.read()).astype(np.float32)[0, 0]) == 1.0


def test_matmul_dst_shape_must_be_M_by_N(trn2):
    """nki.isa.nc_matmul (Layout): 'the free dimension of the stationary tile matches the partition
    dimension of the output dst tile in size, while the free dimension of the moving tile matches
    the free dimension of the dst tile'."""
    st = sb(np.ones((16, 4)), nl.bfloat16)
    mv = sb(np.ones((16, 8)), nl.bfloat16)
    with pytest.raises(NkiSimError):
        nisa.nc_matmul(psum((8, 8)), st, mv)
    with pytest.raises(NkiSimError):
        nisa.nc_matmul(psum((4, 16)), st, mv)


def test_matmul_row_tiling_accepted(trn2):
    """nki.isa.nc_matmul (Tiling mode): 'setting tile_position to (64, 0) and tile_size to (64, 128)
    means using the bottom half of the systolic array'; the K of such a matmul is <= 64."""
    a = RNG.standard_normal((64, 16)).astype(np.float32)
    b = RNG.standard_normal((64, 8)).astype(np.float32)
    dst = psum((16, 8))
    nisa.nc_matmul(dst, sb(a, nl.float32), sb(b, nl.float32), tile_position=(64, 0), tile_size=(64, 128))
    np.testing.assert_allclose(dst.read(), a.T @ b, rtol=1e-5, atol=1e-5)
    big = sb(np.ones((128, 16)), nl.float32)
    with pytest.raises(NkiSimError):  # K = 128 > row_size 64
        nisa.nc_matmul(psum((16, 16)), big, big, tile_position=(0, 0), tile_size=(64, 128))


def test_matmul_tiling_column_size_must_be_128(trn2):
    """nki.isa.nc_matmul (parameters): tile_position 'start_column must be 0'; tile_size 'column_size
    must be 128'."""
    a = sb(np.ones((32, 16)), nl.float32)
    with pytest.raises(NkiSimError):
        nisa.nc_matmul(psum((16, 16)), a, a, tile_position=(0, 0), tile_size=(32, 64))
    with pytest.raises(NkiSimError):
        nisa.nc_matmul(psum((16, 16)), a, a, tile_position=(0, 64), tile_size=(32, 128))
    nisa.nc_matmul(psum((16, 16)), a, a, tile_position=(96, 0), tile_size=(32, 128))


# SIM_AUDIT #15: fixed in moegen.sim by the maintainer after the audit; kept as a regression test.
def test_matmul_double_row_with_row_tiling(trn2):
    """nki.isa.nc_matmul (Performance mode): 'double_row performance mode cannot be combined with
    Tensor Engine column tiling mode' -- row tiling is not excluded (and column tiling does not exist
    here, column_size must be 128)."""
    a = RNG.integers(-2, 3, (64, 2, 4)).astype(np.float32)
    dst = psum((4, 4))
    nisa.nc_matmul(
        dst,
        sb(a, nl.float8_e4m3),
        sb(a, nl.float8_e4m3),
        perf_mode=nisa.matmul_perf_mode.double_row,
        tile_position=(64, 0),
        tile_size=(64, 128),
    )
    np.testing.assert_array_equal(dst.read(), np.einsum("kjm,kjn->mn", a, a))


def test_matmul_tiling_needs_both_fields(trn2):
    """nki.isa.nc_matmul: 'tile_position and tile_size must both be set to enable tiling mode'."""
    a = sb(np.ones((32, 16)), nl.float32)
    with pytest.raises(NkiSimError):
        nisa.nc_matmul(psum((16, 16)), a, a, tile_position=(0, 0))


# SIM_AUDIT #3 (tiling column size): fixed in moegen.sim during the audit; kept as a regression test.
def test_matmul_tiling_stationary_free_within_column_size(trn2):
    """nki.isa.nc_matmul (Tile size): 'The free dimension size of stationary must not exceed ...
    column_size in tile_size when tiling mode is on'; the parameter doc adds 'column_size must be
    128'. tile_size=(64, 64) with a 128-wide stationary is invalid either way."""
    a = sb(np.ones((64, 128)), nl.bfloat16)
    b = sb(np.ones((64, 32)), nl.bfloat16)
    with pytest.raises(NkiSimError):
        nisa.nc_matmul(psum((128, 32)), a, b, tile_position=(0, 0), tile_size=(64, 64))


def test_matmul_accumulates_onto_memset_psum_from_neuroncore_v4(trn3):
    """nki.isa.nc_matmul (Accumulation mode, note): 'On NeuronCore-v2 and NeuronCore-v3, matmul
    accumulating into a PSUM location that was value-initialized by a non-matmul instruction (e.g.,
    memset, tensor_copy) is not supported'; so on NeuronCore-v4 (trn3) accumulate=True adds onto the
    memset value, while 'accumulate=True on an uninitialized PSUM location is undefined behavior on all
    targets' stays refused. (trn2 refuses the memset case: test_tensor_engine.py::test_accumulate_rules.)"""
    a, b = RNG.standard_normal((2, 32, 16)).astype(np.float32)
    st, mv = sb(a, nl.float32), sb(b, nl.float32)
    dst = psum((16, 16))
    with pytest.raises(NkiSimError, match="no nc_matmul initialised"):
        nisa.nc_matmul(dst, st, mv, accumulate=True)
    nisa.memset(dst, 5.0)
    nisa.nc_matmul(dst, st, mv, accumulate=True)
    np.testing.assert_allclose(dst.read(), 5.0 + a.T @ b, rtol=1e-5, atol=1e-5)
    half = psum((16, 16))
    nisa.memset(half[0:16, 0:8], 1.0)  # half the tile: the other half was never written
    with pytest.raises(NkiSimError, match="no nc_matmul initialised"):
        nisa.nc_matmul(half, st, mv, accumulate=True)


# ------------------------------------------------------------------------------------------------
# transpose mode / nc_transpose
# ------------------------------------------------------------------------------------------------
def test_matmul_is_transpose_transposes_stationary(trn2):
    """nki.isa.nc_matmul (Transpose mode): 'transpose a tile in SBUF by loading it as a stationary
    tile and using an identity matrix as the moving tile'; bit-accurate from NeuronCore-v3."""
    x = RNG.standard_normal((32, 16)).astype(np.float32)
    dst = psum((16, 32), nl.bfloat16)
    nisa.nc_matmul(dst, sb(x, nl.bfloat16), sb(np.eye(32), nl.bfloat16), is_transpose=True)
    np.testing.assert_array_equal(np.asarray(dst.read()).astype(np.float32), rounded(x, BF16).T)


# SIM_AUDIT #1 (is_transpose NaN/Inf): fixed in moegen.sim during the audit; kept as a regression test.
def test_matmul_is_transpose_is_bit_accurate_with_nan_inf(trn2):
    """nki.isa.nc_matmul: 'Starting NeuronCore-v3, turning on transpose mode by setting
    is_transpose=True enables bit-accurate data transpose, which can transpose tensors with
    NaN/Inf values properly'."""
    x = np.arange(16, dtype=np.float32).reshape(4, 4)
    x[1, 2] = np.inf
    x[0, 0] = np.nan
    dst = psum((4, 4), nl.bfloat16)
    nisa.nc_matmul(dst, sb(x, nl.bfloat16), sb(np.eye(4), nl.bfloat16), is_transpose=True)
    np.testing.assert_array_equal(np.asarray(dst.read()).astype(np.float32), x.T)


def test_matmul_is_transpose_needs_the_identity_as_moving(trn2):
    """nki.isa.nc_matmul (Transpose mode): TensorE transposes 'by loading it as a stationary tile and
    using an identity matrix as the moving tile'. What transpose mode computes with any other moving
    tile is undocumented, so the simulator refuses it (an uninitialised moving tile too) rather than
    return the transpose regardless."""
    x = sb(RNG.standard_normal((8, 8)), nl.bfloat16)
    perm = np.eye(8)[::-1]
    with pytest.raises(NkiSimError, match="is not the identity"):
        nisa.nc_matmul(psum((8, 8), nl.bfloat16), x, sb(perm, nl.bfloat16), is_transpose=True)
    with pytest.raises(NkiSimError, match="is not the identity"):
        nisa.nc_matmul(psum((8, 8), nl.bfloat16), x, nl.ndarray((8, 8), nl.bfloat16), is_transpose=True)


def test_matmul_without_transpose_mode_spreads_nan_inf_ieee(trn2):
    """Trainium2 Architecture Guide, 'Built-in Transpose Support': outside transpose mode TensorE
    multiplies every element by 1.0 or 0.0 and accumulates, so 'the NaN/Inf values will propagate
    through the accumulation chain and spread across the output tensor'; nc_matmul accumulates in fp32
    (IEEE: NaN * 0 = NaN, Inf * 0 = NaN, Inf + finite = Inf). Checked on a single matmul (bf16 inputs)
    and on a deferred chain of fp32 matmuls accumulating into one PSUM tile."""
    x = np.arange(16, dtype=np.float32).reshape(4, 4)
    x[0, 1] = np.nan  # stationary row k=0, column m=1
    x[2, 3] = np.inf  # stationary row k=2, column m=3
    dst = psum((4, 4))
    nisa.nc_matmul(dst, sb(x, nl.bfloat16), sb(np.eye(4), nl.bfloat16))
    got = dst.read()
    assert np.isnan(got[1]).all()  # NaN * 0 in every column
    assert np.isnan(got[3, [0, 1, 3]]).all() and got[3, 2] == np.inf  # Inf * 0 = NaN; Inf * 1 = Inf
    finite = [0, 2]
    np.testing.assert_array_equal(got[finite], x.T[finite])

    chain = psum((4, 4))
    ones = sb(np.ones((4, 4)), nl.float32)
    nisa.nc_matmul(chain, ones, ones)  # finite start
    nisa.nc_matmul(chain, sb(x, nl.float32), sb(np.eye(4), nl.float32))  # accumulate=None: adds
    got = chain.read()
    assert np.isnan(got[1]).all() and np.isnan(got[3, [0, 1, 3]]).all() and got[3, 2] == np.inf
    np.testing.assert_array_equal(got[finite], x.T[finite] + 4.0)


def test_matmul_is_transpose_dst_dtype_equals_input(trn2):
    """nki.isa.nc_matmul / nc_transpose: a transpose keeps the data type ('The output dst tile must
    have the same data type as that of data')."""
    x = sb(np.ones((8, 8)), nl.bfloat16)
    with pytest.raises(NkiSimError):
        nisa.nc_matmul(psum((8, 8), nl.float32), x, sb(np.eye(8), nl.bfloat16), is_transpose=True)


def test_nc_transpose_tensor_engine_bit_accurate(trn2):
    """nki.isa.nc_transpose: TensorE transposes SBUF -> PSUM; 'Starting NeuronCore-v3, all Tensor
    Engine transpose is bit-accurate' (NaN/Inf included); extra free dims are flattened."""
    x = RNG.standard_normal((64, 2, 32)).astype(np.float32)
    x[3, 1, 5] = np.inf
    x[7, 0, 0] = np.nan
    dst = psum((64, 64), nl.float32)
    nisa.nc_transpose(dst, sb(x, nl.float32), engine=nisa.engine.tensor)
    np.testing.assert_array_equal(dst.read(), x.reshape(64, 64).T)


def test_nc_transpose_vector_engine_limit_32(trn2):
    """nki.isa.nc_transpose: 'Tensor Engine nc_transpose can handle an input tile of shape
    [128, 128] or smaller, while Vector Engine can handle shape [32, 32] or smaller'; Vector Engine
    reads/writes SBUF or PSUM."""
    x = RNG.standard_normal((32, 32)).astype(np.float32)
    dst = nl.ndarray((32, 32), nl.float32)
    nisa.nc_transpose(dst, sb(x, nl.float32), engine=nisa.engine.vector)
    np.testing.assert_array_equal(dst.read(), x.T)
    with pytest.raises(NkiSimError):
        nisa.nc_transpose(
            nl.ndarray((64, 64), nl.float32), sb(np.ones((64, 64)), nl.float32), engine=nisa.engine.vector
        )


def test_nc_transpose_tensor_engine_memory_types(trn2):
    """nki.isa.nc_transpose: 'Tensor Engine nc_transpose must read the input tile from SBUF and
    write the transposed result to PSUM'."""
    x = sb(np.ones((64, 64)), nl.float32)
    with pytest.raises(NkiSimError):
        nisa.nc_transpose(nl.ndarray((64, 64), nl.float32), x, engine=nisa.engine.tensor)
    with pytest.raises(NkiSimError):
        nisa.nc_transpose(psum((64, 64)), psum((64, 64)), engine=nisa.engine.tensor)


def test_nc_transpose_dtype_must_match(trn2):
    """nki.isa.nc_transpose: 'The output dst tile must have the same data type as that of data'."""
    with pytest.raises(NkiSimError):
        nisa.nc_transpose(psum((64, 64), nl.float32), sb(np.ones((64, 64)), nl.bfloat16))


def test_nc_transpose_into_3d_psum_slice(trn2):
    """CTE template: nc_transpose(dst=x_psum[:, j, :], data=x_rows[:, h0:h0 + 128]) -- a 2-D view
    of a [128, G, 128] PSUM tile is a legal TensorE destination."""
    x = RNG.standard_normal((128, 256)).astype(np.float32)
    rows = sb(x, nl.bfloat16)
    xp = psum((128, 2, 128), nl.bfloat16)
    for j in range(2):
        nisa.nc_transpose(xp[:, j, :], rows[:, j * 128 : (j + 1) * 128])
    got = np.asarray(xp.read()).astype(np.float32)
    for j in range(2):
        np.testing.assert_array_equal(got[:, j, :], rounded(x[:, j * 128 : (j + 1) * 128], BF16).T)


# ------------------------------------------------------------------------------------------------
# PSUM
# ------------------------------------------------------------------------------------------------
def test_psum_eight_banks_of_2kib(trn2):
    """Trainium2 Architecture Guide: PSUM is 2 MiB = 128 partitions x 16 KiB, 8 banks of 2 KiB
    (512 fp32) per partition; nl.tile_size.psum_num_banks = 8. Eight full-bank tiles fit, a ninth
    does not."""
    tiles = [psum((128, 512)) for _ in range(8)]
    with pytest.raises(NkiSimError):
        psum((128, 512))
    del tiles


def test_psum_tile_above_one_bank_refused_on_trn2(trn2):
    """nki.isa.nc_matmul: on NeuronCore-v3 the moving free size is limited to 512, 'matching the
    maximum number of float32 elements per PSUM bank' -- a [128, 1024] fp32 matmul tile is not
    usable on trn2 (the simulator refuses the allocation)."""
    with pytest.raises(NkiSimError):
        psum((128, 1024))


def test_nl_tile_size_constants():
    """nki.language.tile_size: pmax = 128, psum_fmax = psum_bank_fmax = 512, gemm_stationary_fmax =
    128, gemm_moving_fmax = 512, psum_bank_fmax_bytes = 2048."""
    ts = nl.tile_size
    assert ts.pmax == 128
    assert ts.psum_fmax == ts.psum_bank_fmax == 512
    assert ts.psum_bank_fmax_bytes == 2048
    assert ts.gemm_stationary_fmax == 128
    assert ts.gemm_moving_fmax == 512


# SIM_AUDIT #4 (tile_size properties): fixed in moegen.sim during the audit; kept as a regression test.
def test_nl_tile_size_psum_num_banks_is_a_property(trn2):
    """nki.language.tile_size (api.json, NKI 0.6 stub): psum_num_banks is a property, 8 ('Number of
    usable PSUM banks per partition'; 7 only with NKI_DMA_TRANSPOSE_AS_PE_TRANSPOSE=true)."""
    assert nl.tile_size.psum_num_banks == 8


# SIM_AUDIT #5 (tile_size.sbuf_size_bytes total): fixed in moegen.sim during the audit; kept as a regression test.
def test_nl_tile_size_sbuf_size_bytes_is_total(trn2):
    """nki.language.tile_size (v2.30 / v2.33 pages): 'sbuf_size_bytes: Total SBUF capacity in bytes
    (all partitions combined)' -- 28 MiB on Trn2 (Trainium2 arch guide: 128 x 224 KiB)."""
    assert nl.tile_size.sbuf_size_bytes == 128 * 224 * 1024


def test_matmul_on_strided_slab_views(trn2):
    """expert_mlp.j2: nc_matmul(stationary=w[0:h, ht, 1, 0:i], moving=x[0:h, ht, 0:n],
    accumulate=ht > 0) -- strided views of [P, H_TILES, 2, I] / [P, H_TILES, N] SBUF slabs are legal
    operands (free access patterns with strides) and accumulate over ht."""
    w = RNG.standard_normal((16, 3, 2, 6)).astype(np.float32)
    x = RNG.standard_normal((16, 3, 7)).astype(np.float32)
    W, XX = sb(w, nl.float32), sb(x, nl.float32)
    p = psum((6, 7))
    for ht in range(3):
        nisa.nc_matmul(p, W[0:16, ht, 1, 0:6], XX[0:16, ht, 0:7], accumulate=ht > 0)
    ref = sum(w[:, ht, 1, :].T @ x[:, ht, :] for ht in range(3))
    np.testing.assert_allclose(p.read(), ref, rtol=1e-5, atol=1e-5)
