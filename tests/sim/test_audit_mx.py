"""SIM AUDIT: Trainium3 microscaling (quantize_mx, nc_matmul_mx, the x4 packed types, E8M0 scales).

Each test states one documented fact and names its page: the NKI 0.6 stub docstrings of
`nki.isa.quantize_mx` and `nki.isa.nc_matmul_mx` (aws-neuron/aws-neuron-sdk `nki/api/nki/isa/__init__.py`,
rendered as .../nki/api/generated/nki.isa.<name>.html), the deep dive "MXFP Matrix Multiplication with
NKI on AWS Neuron" (`nki/deep-dives/mxfp-matmul.rst`) and its helpers (`src/mxfp-matmul/mx_cpu_utils.py`).
Where a page is silent the test says "assumption" (listed in moegen/sim/README.md).
"""

from __future__ import annotations

import pathlib

import ml_dtypes
import numpy as np
import pytest

import moegen.sim as sim
from moegen.reference import quant
from moegen.sim import NkiSimError, context
from moegen.sim import isa as nisa
from moegen.sim import language as nl
from moegen.sim.isa_mx import pack_x4, unpack_x4

RNG = np.random.default_rng(12)
BF16 = ml_dtypes.bfloat16
E4 = ml_dtypes.float8_e4m3fn
KERNELS = pathlib.Path(__file__).parent / "kernels"


@pytest.fixture
def trn3():
    with context(target="trn3") as c:
        yield c


def sb(x, dtype, buffer=None):
    t = nl.ndarray(x.shape, dtype, buffer=buffer or nl.sbuf)
    t.write(np.asarray(x))
    return t


def quantize(src: np.ndarray, dtype=nl.float8_e4m3fn_x4, scale_dtype=nl.float8_e8m0fnu, scale_parts=None):
    """quantize_mx of a [P, F] array; returns (dst, scale) tensors (scale tile [P, F/4] unless given)."""
    p, f = src.shape
    s = sb(src.astype(BF16), nl.bfloat16)
    d = nl.ndarray((p, f // 4), dtype, buffer=nl.sbuf)
    sc = nl.ndarray((scale_parts or p, f // 4), scale_dtype, buffer=nl.sbuf)
    nisa.quantize_mx(d, s, sc)
    return d, sc


def scale_bytes(sc) -> np.ndarray:
    raw = sc.read()
    return (
        raw.astype(np.uint8)
        if raw.dtype == np.uint8
        else raw.astype(np.float32).astype(ml_dtypes.float8_e8m0fnu).view(np.uint8)
    )


# ------------------------------------------------------------------------------------------------
# targets
# ------------------------------------------------------------------------------------------------
def test_refused_on_trn2():
    """quantize_mx / nc_matmul_mx pages: 'Available only on NeuronCore-v4 and newer' (trn2 is v3)."""
    with context(target="trn2"):
        with pytest.raises(NkiSimError, match="quantize_mx: not available on trn2"):
            nisa.quantize_mx(None, None, None)
        with pytest.raises(NkiSimError, match="nc_matmul_mx: not available on trn2"):
            nisa.nc_matmul_mx(None, None, None, None, None)


# ------------------------------------------------------------------------------------------------
# packing and quantize_mx numerics
# ------------------------------------------------------------------------------------------------
def test_x4_packs_four_consecutive_values(trn3):
    """quantize_mx page, Layout: dst 'packs four contiguous FP8 elements into a single x4 element', so
    dst has a quarter of the elements per partition; mx_cpu_utils.pack_mx_data_into_x4: element q in
    byte q of the uint32 (little endian)."""
    src = np.zeros((32, 8), np.float32)
    src[:, :4] = [1.0, 2.0, -4.0, 0.5]  # block max 4: NKI scale 2^(2 - 7)
    d, sc = quantize(src)
    assert d.shape == (32, 2)
    bits = int(d.read()[0, 0])
    codes = [(bits >> (8 * q)) & 0xFF for q in range(4)]
    expect = (np.array([1.0, 2.0, -4.0, 0.5]) / 2.0**-5).astype(E4).view(np.uint8)
    assert codes == list(expect)
    assert scale_bytes(sc)[0, 0] == 127 - 5


def test_fp4_x4_nibbles_round_trip():
    """Deep dive, Data Tensor: 'The float4_*_x4 type is 16-bits wide and physically contains four float4
    elements'; packing order low nibble first (mx_cpu_utils pack: byte = e0 | e1 << 4)."""
    vals = np.array([[0.5, -1.0, 6.0, -0.0]], np.float32)[:, None, :]
    bits = pack_x4(vals, "float4_e2m1fn_x4")
    assert bits.dtype == np.uint16
    codes = [int(c) for c in vals.astype(ml_dtypes.float4_e2m1fn).view(np.uint8).ravel()]
    assert int(bits[0, 0]) == codes[0] | codes[1] << 4 | codes[2] << 8 | codes[3] << 12
    np.testing.assert_array_equal(unpack_x4(bits, "float4_e2m1fn_x4"), vals)


@pytest.mark.parametrize("dtype, elem", [("float8_e4m3fn_x4", "fp8_e4m3fn"), ("float8_e5m2_x4", "fp8_e5m2")])
def test_quantize_scale_rule_matches_reference(trn3, dtype, elem):
    """quantize_mx page: 'calculates the required scales for each group of 32 values ... divides them by
    the calculated scale, and casts'; the block scale is 'two times larger' than the OCP sample
    algorithm: 2^(floor(log2 amax) - (Emax - 1)). Checked against moegen.reference.quant ('nki' rule)
    with blocks of 8 partitions x 4 values; rounding to nearest even is an assumption."""
    src = (RNG.standard_normal((64, 32)) * np.exp2(RNG.integers(-20, 20, (64, 1)))).astype(BF16).astype(np.float32)
    d, sc = quantize(src, dtype)
    # reference blocks: the 32 values of 8 partitions x 4 consecutive columns, as one axis
    blocks = src.reshape(8, 8, 8, 4).transpose(0, 2, 1, 3).reshape(8, 8, 32)
    ref_el, ref_sc = quant.quantize_mx(blocks, elem, "nki", axis=-1, block=32)
    np.testing.assert_array_equal(scale_bytes(sc)[[0, 1, 2, 3, 32, 33, 34, 35]], ref_sc[..., 0])
    got = unpack_x4(d.read(), dtype).reshape(8, 8, 8, 4).transpose(0, 2, 1, 3).reshape(8, 8, 32)
    np.testing.assert_array_equal(got, ref_el)


def test_nki_and_ocp_rules_differ_on_power_of_two_block_max(trn3):
    """quantize_mx page (v2.32): 'this instruction uses a block scale that is two times larger' than the
    OCP sample conversion (2^(floor(log2 amax) - Emax), elements clipped to the max). A block whose max
    is exactly 2^k gets element 2^Emax / 2 = 128 with scale 2^(k-7) (NKI) and 256 with 2^(k-8) (OCP);
    1.9 * 2^k becomes 240 (NKI, RNE on the 16-step grid) versus 448 after clipping (OCP)."""
    src = np.full((32, 4), 0.25, np.float32)
    src[0, 0] = 2.0**3
    src[8, 0] = 1.9 * 2.0**3
    d, sc = quantize(src)
    el = unpack_x4(d.read(), "float8_e4m3fn_x4")
    assert list(scale_bytes(sc)[:2, 0]) == [127 + 3 - 7, 127 + 3 - 7]
    assert el[0, 0, 0] == 128.0 and el[8, 0, 0] == 240.0
    ocp_el, ocp_sc = quant.quantize_mx(np.array([[2.0**3] + [0.25] * 31, [1.9 * 8] + [0.25] * 31]), "fp8_e4m3fn", "ocp")
    assert list(ocp_sc[:, 0]) == [127 + 3 - 8] * 2
    assert list(ocp_el[:, 0]) == [256.0, 448.0]
    # both dequantise close to the input; the NKI rule never saturates
    assert el[8, 0, 0] * 2.0**-4 == pytest.approx(15.0) and ocp_el[1, 0] * 2.0**-5 == 14.0


def test_all_zero_block_scale_byte_zero(trn3):
    """0.5 release notes / quantize_mx: an all-zero block gets the smallest scale, 2^-127 (byte 0)."""
    d, sc = quantize(np.zeros((32, 4), np.float32))
    assert scale_bytes(sc)[0, 0] == 0
    assert np.all(unpack_x4(d.read(), "float8_e4m3fn_x4") == 0)


def test_uint8_scale_accepted(trn3):
    """quantize_mx page (v2.32): dst_scale 'must be float8_e8m0fnu or uint8'; both hold the same byte."""
    src = RNG.standard_normal((32, 16)).astype(np.float32)
    _, s8 = quantize(src, scale_dtype=nl.uint8, scale_parts=4)
    _, se = quantize(src, scale_dtype=nl.float8_e8m0fnu, scale_parts=4)
    np.testing.assert_array_equal(s8.read(), scale_bytes(se))


# ------------------------------------------------------------------------------------------------
# scale placement
# ------------------------------------------------------------------------------------------------
def test_scales_fill_first_partitions_of_each_quadrant(trn3):
    """quantize_mx page, Layout: 'a 32-partition slice of src produces 4 partitions worth of scale ...
    written to the first (or second) 8 partitions of each SBUF quadrant'; deep dive, Scale Tensor: if
    P > 32 the scale tile is [P, F//4]; mx_cpu_utils.get_p_contiguous_scale: row i at (i//4)*32 + i%4.
    Other partitions of the scale tile are not written."""
    src = RNG.standard_normal((128, 8)).astype(np.float32)
    s = sb(src.astype(BF16), nl.bfloat16)
    d = nl.ndarray((128, 2), nl.float8_e4m3fn_x4, buffer=nl.sbuf)
    sc = sb(np.full((128, 2), 7, np.uint8), nl.uint8)
    nisa.quantize_mx(d, s, sc)
    got = sc.read()
    rows = [q * 32 + r for q in range(4) for r in range(4)]
    untouched = np.setdiff1d(np.arange(128), rows)
    assert np.all(got[untouched] == 7)
    amax = np.abs(src.astype(BF16).astype(np.float32)).reshape(16, 8, 2, 4).max(axis=(1, 3))
    np.testing.assert_array_equal(got[rows], quant.mx_scale_exponent(amax, "fp8_e4m3fn", "nki") + 127)


def test_scale_packing_at_partition_offset(trn3):
    """quantize_mx page: scales of a quadrant go to 'the first 16 partitions of each SBUF quadrant' at 'the
    same partition offset at each quadrant': a view starting at offset 4 holds a second tensor's
    scales; offset 16 is refused."""
    src = RNG.standard_normal((64, 8)).astype(np.float32)
    s = sb(src.astype(BF16), nl.bfloat16)
    d = nl.ndarray((64, 2), nl.float8_e4m3fn_x4, buffer=nl.sbuf)
    sc = sb(np.zeros((64, 2), np.uint8), nl.uint8)
    nisa.quantize_mx(d, s, sc[4:64])
    got = sc.read()
    assert np.all(got[[4, 5, 6, 7, 36, 37, 38, 39]] > 0) and np.all(got[[0, 1, 2, 3, 32, 33]] == 0)
    with pytest.raises(NkiSimError, match="quantize_mx: dst_scale .* offset 16 in its quadrant"):
        nisa.quantize_mx(d, s, sc[16:64])


def test_scale_must_share_quadrants_with_data(trn3):
    """quantize_mx page, Memory types: 'The dst and dst_scale tiles must reside in the same SBUF
    quadrant(s) as each other'."""
    s = sb(np.ones((128, 8)), nl.bfloat16)
    big = nl.ndarray((128, 2), nl.float8_e4m3fn_x4, buffer=nl.sbuf)
    sc = nl.ndarray((128, 2), nl.uint8, buffer=nl.sbuf)
    with pytest.raises(NkiSimError, match="quantize_mx: dst_scale .* quadrant 0, dst .* quadrant 2"):
        nisa.quantize_mx(big[64:128], s[64:128], sc[0:64])
    nisa.quantize_mx(big[64:128], s[64:128], sc[64:128])


def test_scale_tile_partition_count(trn3):
    """quantize_mx page, Tile size: 'If src occupies only 32 partitions, dst_scale will occupy 4
    partitions. Otherwise, dst_scale will occupy the same number of partitions as src'."""
    s = sb(np.ones((64, 8)), nl.bfloat16)
    d = nl.ndarray((64, 2), nl.float8_e4m3fn_x4, buffer=nl.sbuf)
    with pytest.raises(NkiSimError, match="quantize_mx: dst_scale .* spans 8 partitions .*limit: 36..64"):
        nisa.quantize_mx(d, s, nl.ndarray((8, 2), nl.uint8, buffer=nl.sbuf))
    with pytest.raises(NkiSimError, match="dst_scale .* 4 elements per partition .*limit: 2,"):
        nisa.quantize_mx(d, s, nl.ndarray((64, 4), nl.uint8, buffer=nl.sbuf))


# ------------------------------------------------------------------------------------------------
# quantize_mx limits
# ------------------------------------------------------------------------------------------------
def test_quantize_limits(trn3):
    """quantize_mx page: src float16/bfloat16 in SBUF, partition size a multiple of 32 at most 128, free
    size a multiple of 4; dst float8_e5m2_x4 / float8_e4m3fn_x4 ('Quantize-MX does not support an FP4
    output', deep dive) with the same partitions and a quarter of the free size."""
    ok_scale = nl.ndarray((4, 2), nl.uint8, buffer=nl.sbuf)
    dst = nl.ndarray((32, 2), nl.float8_e4m3fn_x4, buffer=nl.sbuf)
    cases = [
        (dst, sb(np.ones((32, 8)), nl.float32), "src .* dtype float32 not supported"),
        (nl.ndarray((32, 2), nl.float4_e2m1fn_x4, buffer=nl.sbuf), sb(np.ones((32, 8)), nl.bfloat16), "dst .* float4"),
        (dst, sb(np.ones((32, 8)), nl.bfloat16, buffer=nl.psum), "src .* is in psum"),
        (nl.ndarray((16, 2), nl.float8_e4m3fn_x4, buffer=nl.sbuf), sb(np.ones((16, 8)), nl.bfloat16), "multiple of 32"),
        (nl.ndarray((32, 2), nl.float8_e4m3fn_x4, buffer=nl.sbuf), sb(np.ones((32, 6)), nl.bfloat16), "multiple of 4"),
        (nl.ndarray((32, 3), nl.float8_e4m3fn_x4, buffer=nl.sbuf), sb(np.ones((32, 8)), nl.bfloat16), "dst .* shape"),
    ]
    for d, s, msg in cases:
        with pytest.raises(NkiSimError, match="quantize_mx:? .*" + msg):
            nisa.quantize_mx(d, s, ok_scale)


# ------------------------------------------------------------------------------------------------
# nc_matmul_mx
# ------------------------------------------------------------------------------------------------
def mx_operand(p: int, f: int, dtype: str, scale_lo=120, scale_hi=130):
    """Random packed data [p, f] and scale bytes [p//8, f] (scale tile [p, f] with rows in quadrants)."""
    code_type = {
        "float8_e4m3fn_x4": E4,
        "float8_e5m2_x4": ml_dtypes.float8_e5m2,
        "float4_e2m1fn_x4": ml_dtypes.float4_e2m1fn,
    }[dtype]
    vals = RNG.uniform(-4, 4, (p, f, 4)).astype(code_type).astype(np.float32)
    sbytes = RNG.integers(scale_lo, scale_hi, (p // 8, f)).astype(np.uint8)
    data = sb(pack_x4(vals, dtype), getattr(nl, dtype))
    tile = np.zeros((max(p, 4), f), np.uint8)
    for i in range(p // 8):
        tile[(i // 4) * 32 + i % 4] = sbytes[i]
    scale = sb(tile, nl.uint8)
    deq = vals * np.exp2(np.repeat(sbytes.astype(np.float64) - 127, 8, axis=0))[:, :, None]
    return data, scale, deq


@pytest.mark.parametrize(
    "st_dtype, mv_dtype",
    [
        ("float8_e4m3fn_x4", "float8_e4m3fn_x4"),
        ("float8_e5m2_x4", "float8_e5m2_x4"),
        ("float4_e2m1fn_x4", "float8_e5m2_x4"),
    ],
)
def test_matmul_mx_dequantises_exactly(trn3, st_dtype, mv_dtype):
    """nc_matmul_mx page, Layout: 'The contraction dimension ... is along the partition dimension of
    stationary and moving tensors and also the x4 dimension within each packed data type element';
    dequantisation value * 2^(scale - 127) (mx_cpu_utils nc_matmul_mx_golden: einsum('kiq,kjq->ij')).
    fp8 x fp4 mixing is allowed (deep dive example). fp32 sums of exact products: tight tolerance."""
    st, st_s, st_v = mx_operand(128, 64, st_dtype)
    mv, mv_s, mv_v = mx_operand(128, 256, mv_dtype)
    dst = nl.ndarray((64, 256), nl.float32, buffer=nl.psum)
    nisa.nc_matmul_mx(dst, st, mv, st_s, mv_s)
    ref = np.einsum("kiq,kjq->ij", st_v, mv_v)
    np.testing.assert_allclose(dst.read(), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_matmul_mx_accumulate_and_bf16_dst(trn3):
    """nc_matmul_mx page: accumulate True adds into the PSUM tile, False overwrites, None auto-detects;
    'The dst tile can be float32 or bfloat16' (bf16: the result rounded once)."""
    st, st_s, st_v = mx_operand(32, 16, "float8_e4m3fn_x4")
    mv, mv_s, mv_v = mx_operand(32, 64, "float8_e4m3fn_x4")
    ref = np.einsum("kiq,kjq->ij", st_v, mv_v)
    acc = nl.ndarray((16, 64), nl.float32, buffer=nl.psum)
    nisa.nc_matmul_mx(acc, st, mv, st_s[0:4], mv_s[0:4])
    nisa.nc_matmul_mx(acc, st, mv, st_s[0:4], mv_s[0:4], accumulate=True)
    np.testing.assert_allclose(acc.read(), 2 * ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())
    nisa.nc_matmul_mx(acc, st, mv, st_s[0:4], mv_s[0:4], accumulate=False)
    np.testing.assert_allclose(acc.read(), ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())
    bf = nl.ndarray((16, 64), nl.bfloat16, buffer=nl.psum)
    nisa.nc_matmul_mx(bf, st, mv, st_s[0:4], mv_s[0:4])
    np.testing.assert_array_equal(bf.read().astype(np.float32), ref.astype(np.float32).astype(BF16).astype(np.float32))


def test_matmul_mx_nan_scale(trn3):
    """float8_e8m0fnu: byte 0xFF is NaN (OCP MX; 'fnu' = finite, NaN, unsigned): a NaN scale makes the
    products it scales NaN."""
    st, st_s, _ = mx_operand(32, 2, "float8_e4m3fn_x4")
    mv, mv_s, _ = mx_operand(32, 4, "float8_e4m3fn_x4")
    st_s[0:1, 0:1].write(np.full((1, 1), 255, np.uint8))
    dst = nl.ndarray((2, 4), nl.float32, buffer=nl.psum)
    nisa.nc_matmul_mx(dst, st, mv, st_s[0:4], mv_s[0:4])
    out = dst.read()
    assert np.all(np.isnan(out[0])) and not np.any(np.isnan(out[1]))


def test_matmul_mx_limits(trn3):
    """nc_matmul_mx page: inputs in SBUF, dst in PSUM; data x4 types only, dst float32 / bfloat16;
    partition sizes identical, a multiple of 32, at most 128; stationary free size even, at most 128;
    moving free size at most 512 (fp32 dst) / 1024 (bf16 dst); row tiling only (column_size 128,
    start_column 0)."""
    st, st_s, _ = mx_operand(64, 32, "float8_e4m3fn_x4")
    mv, mv_s, _ = mx_operand(64, 64, "float8_e4m3fn_x4")
    dst = nl.ndarray((32, 64), nl.float32, buffer=nl.psum)

    def bad(msg, **kw):
        args = dict(dst=dst, stationary=st, moving=mv, stationary_scale=st_s, moving_scale=mv_s)
        args.update(kw)
        with pytest.raises(NkiSimError, match="nc_matmul_mx:? .*" + msg):
            nisa.nc_matmul_mx(**args)

    bad("dst .* is in sbuf", dst=nl.ndarray((32, 64), nl.float32, buffer=nl.sbuf))
    bad("dst .* dtype float16 not supported", dst=nl.ndarray((32, 64), nl.float16, buffer=nl.psum))
    bad("stationary .* dtype bfloat16 not supported", stationary=sb(np.ones((64, 32)), nl.bfloat16))
    bad("partition size 64 and moving partition size 32 differ", moving=mv[0:32], moving_scale=mv_s[0:4])
    s2, s2_s, _ = mx_operand(64, 33, "float8_e4m3fn_x4")
    bad(
        "stationary .* free size 33 .* even",
        stationary=s2,
        stationary_scale=s2_s,
        dst=nl.ndarray((33, 64), nl.float32, buffer=nl.psum),
    )
    wide, wide_s, _ = mx_operand(32, 1024, "float8_e4m3fn_x4")
    st32, st32_s, _ = mx_operand(32, 32, "float8_e4m3fn_x4")
    bad(
        "moving .* free size 1024 exceeds maximum 512",
        stationary=st32,
        stationary_scale=st32_s[0:4],
        moving=wide,
        moving_scale=wide_s[0:4],
        dst=nl.ndarray((32, 1024), nl.float32, buffer=nl.psum),
    )
    nisa.nc_matmul_mx(nl.ndarray((32, 1024), nl.bfloat16, buffer=nl.psum), st32, wide, st32_s[0:4], wide_s[0:4])
    bad("tile_size", tile_position=(0, 0), tile_size=(64, 64))
    bad("tile_position", tile_position=(0, 64), tile_size=(64, 128))
    nisa.nc_matmul_mx(dst, st, mv, st_s, mv_s, tile_position=(64, 0), tile_size=(64, 128))
    bad("stationary_scale .* spans 8 partitions", stationary_scale=st_s[0:8])


# ------------------------------------------------------------------------------------------------
# independent check: a hand-written kernel against NumPy's OCP MX matmul
# ------------------------------------------------------------------------------------------------
def ocp_mx_quantize(x: np.ndarray, elem, emax: int, scale_shift: int) -> np.ndarray:
    """OCP MX (v1.0, section 6.3) along axis 0 of x [K, F] in blocks of 32 consecutive rows:
    X = 2^(floor(log2 max|V|) - emax + scale_shift), P_i = cast(V_i / X) (RNE, clipped to the max).
    scale_shift 0 is the OCP sample algorithm, 1 the quantize_mx page's two-times-larger scale.
    Returns the dequantised values X * P_i as float64. Written from the definition, not from moegen."""
    k, f = x.shape
    blocks = x.astype(np.float64).reshape(k // 32, 32, f)
    amax = np.abs(blocks).max(axis=1, keepdims=True)
    shared = np.floor(np.log2(np.where(amax > 0, amax, 1.0))) - emax + scale_shift
    shared = np.where(amax > 0, shared, -127)
    top = float(ml_dtypes.finfo(elem).max)
    p = np.clip(blocks / np.exp2(shared), -top, top).astype(elem).astype(np.float64)
    return (p * np.exp2(shared)).reshape(k, f)


@pytest.mark.parametrize(
    "mx_dtype, elem, emax", [("float8_e4m3fn_x4", E4, 8), ("float8_e5m2_x4", ml_dtypes.float8_e5m2, 15)]
)
def test_hand_written_mx_kernel_matches_ocp_numpy(mx_dtype, elem, emax):
    """Independent check (issue 12): tests/sim/kernels/mx_matmul.py quantizes two bf16 matrices with
    quantize_mx and multiplies them with nc_matmul_mx. NumPy from the OCP definition, blocks of 32
    consecutive contraction rows, with the quantize_mx page's scale (one above the OCP sample rule):
    equal up to fp32 accumulation. Against the OCP sample rule the two differ only by element rounding
    (both OCP-compliant): within the element type's half-ulp (2^-4 e4m3fn, 2^-3 e5m2) per operand."""
    lhsT = (RNG.standard_normal((1024, 64)) * np.exp2(RNG.integers(-6, 6, (1024, 1)))).astype(BF16)
    rhs = RNG.standard_normal((1024, 256)).astype(BF16)
    out = sim.simulate(sim.load_module(KERNELS / "mx_matmul.py").mx_matmul, target="trn3")(lhsT, rhs, mx_dtype)
    a, b = lhsT.astype(np.float64), rhs.astype(np.float64)
    nki_rule = ocp_mx_quantize(a, elem, emax, 1).T @ ocp_mx_quantize(b, elem, emax, 1)
    mag = np.abs(a).T @ np.abs(b)
    np.testing.assert_array_less(np.abs(out - nki_rule), 1e-5 * mag + 1e-30)
    sample_rule = ocp_mx_quantize(a, elem, emax, 0).T @ ocp_mx_quantize(b, elem, emax, 0)
    u = 2.0 ** -(4 if emax == 8 else 3)
    bound = 2 * (2 * u + u * u) * mag  # both results within (1+u)^2 of the exact product
    assert np.all(np.abs(out - sample_rule) <= bound)
    assert np.all(np.abs(out - a.T @ b) <= (2 * u + u * u) * mag * (1 + 1e-5))


def test_hand_written_mx_kernel_same_with_precise_off():
    """Simulator guide: NKI_PRECISE_FP=0 stores narrow floats as fp32; the packed x4 data keep their
    bits and E8M0 scales their powers of two, so MX results do not change."""
    lhsT = RNG.standard_normal((512, 32)).astype(BF16)
    rhs = RNG.standard_normal((512, 64)).astype(BF16)
    kernel = sim.load_module(KERNELS / "mx_matmul.py").mx_matmul
    on = sim.simulate(kernel, target="trn3", precise=True)(lhsT, rhs, "float8_e4m3fn_x4")
    off = sim.simulate(kernel, target="trn3", precise=False)(lhsT, rhs, "float8_e4m3fn_x4")
    np.testing.assert_array_equal(on, off)
