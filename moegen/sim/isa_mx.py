"""Trainium3 microscaling (MX): nc_matmul_mx (TensorE) and quantize_mx (VectorE).

Sources: the nki.isa.nc_matmul_mx and nki.isa.quantize_mx pages (NKI 0.6 stub docstrings) and the
"MXFP Matrix Multiplication" deep dive (nki/deep-dives/mxfp-matmul.rst).

Layout (both instructions). An x4 element packs four values that are consecutive in the unpacked
free dim: element [p, f] holds values q = 0..3 of unpacked column 4f + q. fp8 x4 = uint32, value q
in byte q (little endian); fp4 x4 = uint16, value q in nibble q (low nibble first). A scaling block
is 8 partitions x 1 x4 element (= 8 x 4 values) of one free column; the contraction of
nc_matmul_mx runs over the partitions and over the 4 values of each element. Scale row i (covering
data partitions 8i..8i+7) sits at partition (i // 4) * 32 + i % 4 of the scale view: scales fill
the first partitions of each 32-partition quadrant, so data spanning more than one quadrant needs a
scale tile spanning the same quadrants. Scale value = 2^(s - 127); 0xFF is NaN.

Numerics: dequantisation is exact (element * 2^(s - 127), in float32); the matmul sums in fp32 and
writes PSUM like nc_matmul (fp32, or bf16 rounded once per instruction). quantize_mx scale (page:
"two times larger" than the OCP sample algorithm): s = floor(log2(amax)) - (Emax - 1) + 127 with
Emax = 8 (e4m3fn) / 15 (e5m2); all-zero block -> s = 0; element = value / 2^(s - 127) rounded to
nearest even (assumption: rounding not stated) and saturated to the type's max (never reached:
|value / scale| < 2^Emax). Assumption: a block holding NaN or inf gets scale 0xFF and NaN elements.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

from moegen.sim import dtypes as dt
from moegen.sim import runtime
from moegen.sim.checks import check_buffer, check_partition, check_target, check_tensor
from moegen.sim.enums import NkiInstruction
from moegen.sim.errors import NkiSimError
from moegen.sim.isa_tensor_engine import _accumulate_into, _check_tiling, _defer
from moegen.sim.tensor import NkiTensor

QUADRANT = 32  # partitions per SBUF quadrant
BLOCK_PARTITIONS = 8  # partitions of one scaling block (x 4 values per partition)
SCALE_ROWS_PER_QUADRANT = QUADRANT // BLOCK_PARTITIONS  # 4
MAX_SCALE_OFFSET = 12  # scales live in the first 16 partitions of a quadrant (quantize_mx page)

MX_DATA_DTYPES = ("float8_e5m2_x4", "float8_e4m3fn_x4", "float4_e2m1fn_x4")
QUANTIZE_DST_DTYPES = ("float8_e5m2_x4", "float8_e4m3fn_x4")
QUANTIZE_SRC_DTYPES = ("float16", "bfloat16")
SCALE_DTYPES = ("float8_e8m0fnu", "uint8")
MX_DST_DTYPES = ("float32", "bfloat16")
MX_MAX_STATIONARY_FREE = 128
MX_MAX_MOVING_FREE = {"float32": 512, "bfloat16": 1024}

# element type of each packed type, its ml_dtypes code type, bits per value, Emax (largest exponent)
_ELEMENT = {
    "float8_e5m2_x4": (ml_dtypes.float8_e5m2, 8, 15),
    "float8_e4m3fn_x4": (ml_dtypes.float8_e4m3fn, 8, 8),
    "float4_e2m1fn_x4": (ml_dtypes.float4_e2m1fn, 4, 2),
}


# ------------------------------------------------------------------------------------------------
# Packing
# ------------------------------------------------------------------------------------------------
def unpack_x4(bits: np.ndarray, dtype: str) -> np.ndarray:
    """Raw x4 bits [..., F] -> float32 values [..., F, 4] (value q of each element on the last axis)."""
    code_type, width, _ = _ELEMENT[dtype]
    raw = np.asarray(bits).astype(np.uint32)
    mask = np.uint32((1 << width) - 1)
    codes = np.stack([(raw >> np.uint32(width * q)) & mask for q in range(4)], axis=-1).astype(np.uint8)
    return codes.view(code_type).astype(np.float32)


def pack_x4(values: np.ndarray, dtype: str) -> np.ndarray:
    """float values [..., F, 4], already representable in the element type -> raw x4 bits [..., F]."""
    code_type, width, _ = _ELEMENT[dtype]
    codes = np.ascontiguousarray(np.asarray(values, dtype=np.float32).astype(code_type)).view(np.uint8)
    codes = codes.astype(np.uint32) & np.uint32((1 << width) - 1)
    out = np.zeros(codes.shape[:-1], dtype=np.uint32)
    for q in range(4):
        out |= codes[..., q] << np.uint32(width * q)
    return out.astype(dt.DTYPES[dtype].np_dtype)


def scale_factors(scale_bits: np.ndarray) -> np.ndarray:
    """E8M0 scale bytes -> float32 factors 2^(s - 127) (0xFF -> NaN); exact."""
    s = np.asarray(scale_bits).astype(np.uint8)
    return s.view(ml_dtypes.float8_e8m0fnu).astype(np.float32)


def scale_partition(row: int) -> int:
    """Partition (relative to the scale view) of scale row `row` (data partitions 8*row..8*row+7)."""
    return (row // SCALE_ROWS_PER_QUADRANT) * QUADRANT + row % SCALE_ROWS_PER_QUADRANT


# ------------------------------------------------------------------------------------------------
# Checks
# ------------------------------------------------------------------------------------------------
def _check_dtype(instr: str, operand: str, t: NkiTensor, allowed: tuple[str, ...]) -> None:
    if t.dtype.name not in allowed:
        raise NkiSimError(
            f"{instr}: {operand} '{t.name}' dtype {t.dtype.name} not supported (limit: {', '.join(allowed)})"
        )


def _check_data_partitions(instr: str, operand: str, t: NkiTensor) -> int:
    p = t.shape[0]
    if p % QUADRANT or p > 128:
        raise NkiSimError(
            f"{instr}: {operand} '{t.name}' partition dimension {p} (limit: a multiple of 32, at most 128)"
        )
    return p


def _check_scale(instr: str, operand: str, scale: NkiTensor, data_operand: str, data: NkiTensor) -> None:
    """Scale view placement for `data` ([P, F] x4): see the module docstring."""
    check_tensor(instr, operand, scale)
    check_buffer(instr, operand, scale, ("sbuf",))
    check_partition(instr, operand, scale, start_rule=False)
    _check_dtype(instr, operand, scale, SCALE_DTYPES)
    p, f = data.shape[0], data.free_size
    rows = p // BLOCK_PARTITIONS
    need = scale_partition(rows - 1) + 1
    sp = scale.shape[0]
    if sp < need or sp > max(p, SCALE_ROWS_PER_QUADRANT):
        raise NkiSimError(
            f"{instr}: {operand} '{scale.name}' spans {sp} partitions for {data_operand} of {p} partitions "
            f"(limit: {need}..{max(p, SCALE_ROWS_PER_QUADRANT)}: scale row i at partition (i//4)*32 + i%4)"
        )
    if scale.free_size != f:
        raise NkiSimError(
            f"{instr}: {operand} '{scale.name}' has {scale.free_size} elements per partition "
            f"(limit: {f}, one scale per x4 element column of {data_operand})"
        )
    start = scale.partition_start()
    if start % QUADRANT > MAX_SCALE_OFFSET:
        raise NkiSimError(
            f"{instr}: {operand} '{scale.name}' starts at partition {start}, offset {start % QUADRANT} in its "
            f"quadrant (limit: offset at most {MAX_SCALE_OFFSET}: scales live in the first 16 partitions of "
            "each quadrant)"
        )
    if p > QUADRANT and start // QUADRANT != data.partition_start() // QUADRANT:
        raise NkiSimError(
            f"{instr}: {operand} '{scale.name}' starts in quadrant {start // QUADRANT}, {data_operand} "
            f"'{data.name}' in quadrant {data.partition_start() // QUADRANT} (limit: scales in the same "
            "quadrants as their data)"
        )


def _scale_view_rows(scale: NkiTensor, rows: int) -> list[tuple[NkiTensor, int, int]]:
    """(sub-view, first row, row count) per quadrant for `rows` scale rows of a scale view."""
    out = []
    for q0 in range(0, rows, SCALE_ROWS_PER_QUADRANT):
        n = min(SCALE_ROWS_PER_QUADRANT, rows - q0)
        p0 = scale_partition(q0)
        out.append((scale[p0 : p0 + n], q0, n))
    return out


def _read_scales(instr: str, operand: str, scale: NkiTensor, rows: int, f: int) -> np.ndarray:
    """[rows, f] scale bytes gathered from their quadrant partitions."""
    parts = []
    for view, _, n in _scale_view_rows(scale, rows):
        raw = np.asarray(view.read(instr, operand))
        if scale.dtype.name == "uint8":
            parts.append(raw.astype(np.uint8).reshape(n, f))
        else:  # float8_e8m0fnu, stored as itself or (precise off) as float32
            codes = raw.astype(np.float32).astype(ml_dtypes.float8_e8m0fnu)
            parts.append(codes.view(np.uint8).reshape(n, f))
    return np.concatenate(parts, axis=0)


def _write_scales(instr: str, operand: str, scale: NkiTensor, bits: np.ndarray) -> None:
    """Write [rows, f] scale bytes to their quadrant partitions of the scale view."""
    for view, q0, n in _scale_view_rows(scale, bits.shape[0]):
        rows = bits[q0 : q0 + n]
        vals = rows if scale.dtype.name == "uint8" else scale_factors(rows)  # e8m0: exact powers of two
        view.write(vals.reshape(view.shape), instr, operand)


# ------------------------------------------------------------------------------------------------
# quantize_mx
# ------------------------------------------------------------------------------------------------
def quantize_block_exponent(amax: np.ndarray, emax: int) -> np.ndarray:
    """Biased E8M0 scale byte of blocks with max magnitude `amax` (quantize_mx page rule):
    floor(log2 amax) - (Emax - 1) + 127, clipped to 0..254; 0 for an all-zero block; 255 (NaN) for a
    block holding NaN or inf."""
    a = np.asarray(amax, dtype=np.float64)
    finite = np.isfinite(a)
    _, e = np.frexp(np.where(finite & (a > 0), a, 1.0))
    unbiased = (e - 1) - (emax - 1)
    biased = np.clip(unbiased + 127, 0, 254)
    biased = np.where(a > 0, biased, 0)
    return np.where(finite, biased, 255).astype(np.uint8)


def quantize_mx_values(src: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """quantize_mx math on a [P, F] float32 array (P % 8 == 0, F % 4 == 0).

    Returns (raw x4 bits [P, F // 4] of `dtype`, scale bytes [P // 8, F // 4] uint8).
    """
    code_type, _, emax = _ELEMENT[dtype]
    p, f = src.shape
    blocks = src.reshape(p // BLOCK_PARTITIONS, BLOCK_PARTITIONS, f // 4, 4)
    with np.errstate(invalid="ignore"):
        amax = np.max(np.abs(blocks), axis=(1, 3))
    amax = np.where(np.isnan(blocks).any(axis=(1, 3)), np.inf, amax)
    sbytes = quantize_block_exponent(amax, emax)
    factor = scale_factors(sbytes)  # NaN for 255
    scaled = blocks / factor[:, None, :, None]
    top = float(ml_dtypes.finfo(code_type).max)
    scaled = np.where(np.isnan(scaled), scaled, np.clip(scaled, -top, top))
    vals = scaled.astype(code_type).astype(np.float32).reshape(p, f // 4, 4)
    return pack_x4(vals, dtype), sbytes


def quantize_mx(dst, src, dst_scale, name=None):
    """MX-quantize src [P, F] (bf16/fp16, SBUF) into dst [P, F/4] (fp8 x4) and dst_scale (E8M0)."""
    instr = "quantize_mx"
    check_target(instr, ("trn3",))
    for nm, t in (("dst", dst), ("src", src)):
        check_tensor(instr, nm, t)
        check_buffer(instr, nm, t, ("sbuf",))
        check_partition(instr, nm, t)
    _check_dtype(instr, "src", src, QUANTIZE_SRC_DTYPES)
    _check_dtype(instr, "dst", dst, QUANTIZE_DST_DTYPES)
    p = _check_data_partitions(instr, "src", src)
    f = src.free_size
    if f % 4:
        raise NkiSimError(f"{instr}: src '{src.name}' free size {f} (limit: a multiple of 4)")
    if dst.shape[0] != p or dst.free_size * 4 != f:
        raise NkiSimError(
            f"{instr}: dst '{dst.name}' shape {dst.shape} (limit: {p} partitions and {f // 4} x4 elements per "
            f"partition for src {src.shape})"
        )
    if dst.partition_start() != src.partition_start():
        raise NkiSimError(
            f"{instr}: dst '{dst.name}' starts at partition {dst.partition_start()}, src at "
            f"{src.partition_start()} (limit: the same partitions: quantization keeps the layout)"
        )
    _check_scale(instr, "dst_scale", dst_scale, "dst", dst)
    runtime.current().record("vector", instr, {"dst": dst, "src": src, "dst_scale": dst_scale})
    vals = src.f32(instr, "src").reshape(p, f).astype(np.float32)
    bits, sbytes = quantize_mx_values(vals, dst.dtype.name)
    dst.write(bits.reshape(dst.shape), instr, "dst")
    _write_scales(instr, "dst_scale", dst_scale, sbytes)
    return NkiInstruction(instr)


# ------------------------------------------------------------------------------------------------
# nc_matmul_mx
# ------------------------------------------------------------------------------------------------
def dequantize_operand(instr: str, operand: str, data: NkiTensor, scale: NkiTensor) -> np.ndarray:
    """Dequantised [4P, F] float32 operand (row q*P + p = value q of partition p); exact."""
    p, f = data.shape[0], data.free_size
    bits = data.read(instr, operand).reshape(p, f)
    vals = unpack_x4(bits, data.dtype.name)  # [P, F, 4]
    sbytes = _read_scales(instr, f"{operand}_scale", scale, p // BLOCK_PARTITIONS, f)
    factor = np.repeat(scale_factors(sbytes), BLOCK_PARTITIONS, axis=0)  # [P, F]
    deq = vals * factor[:, :, None]
    return np.ascontiguousarray(deq.transpose(2, 0, 1)).reshape(4 * p, f)


def nc_matmul_mx(
    dst,
    stationary,
    moving,
    stationary_scale,
    moving_scale,
    tile_position=None,
    tile_size=None,
    accumulate=None,
    name=None,
):
    """dst[M, N] (PSUM) (+)= dequant(stationary)[4K, M].T @ dequant(moving)[4K, N], fp32 accumulate."""
    instr = "nc_matmul_mx"
    check_target(instr, ("trn3",))
    core = runtime.current()
    for nm, t in (("dst", dst), ("stationary", stationary), ("moving", moving)):
        check_tensor(instr, nm, t)
        check_partition(instr, nm, t)
    check_buffer(instr, "stationary", stationary, ("sbuf",))
    check_buffer(instr, "moving", moving, ("sbuf",))
    check_buffer(instr, "dst", dst, ("psum",))
    _check_dtype(instr, "stationary", stationary, MX_DATA_DTYPES)
    _check_dtype(instr, "moving", moving, MX_DATA_DTYPES)
    _check_dtype(instr, "dst", dst, MX_DST_DTYPES)
    if accumulate not in (None, True, False):
        raise NkiSimError(f"{instr}: accumulate must be None, True or False, got {accumulate!r}")
    k = _check_data_partitions(instr, "stationary", stationary)
    _check_data_partitions(instr, "moving", moving)
    if moving.shape[0] != k:
        raise NkiSimError(
            f"{instr}: stationary partition size {k} and moving partition size {moving.shape[0]} differ "
            "(limit: identical)"
        )
    m, n = stationary.free_size, moving.free_size
    if m % 2 or m > MX_MAX_STATIONARY_FREE:
        raise NkiSimError(
            f"{instr}: stationary '{stationary.name}' free size {m} (limit: even, at most {MX_MAX_STATIONARY_FREE})"
        )
    nmax = MX_MAX_MOVING_FREE[dst.dtype.name]
    if n > nmax:
        raise NkiSimError(
            f"{instr}: moving '{moving.name}' free size {n} exceeds maximum {nmax} for a {dst.dtype.name} dst"
        )
    if dst.shape[0] != m or dst.free_size != n:
        raise NkiSimError(
            f"{instr}: dst shape {dst.shape} must be [M={m}, N={n}] for stationary {stationary.shape} "
            f"and moving {moving.shape}"
        )
    _check_mx_tiling(instr, tile_position, tile_size, k, m)
    _check_scale(instr, "stationary_scale", stationary_scale, "stationary", stationary)
    _check_scale(instr, "moving_scale", moving_scale, "moving", moving)
    core.record(
        "tensor",
        instr,
        {
            "dst": dst,
            "stationary": stationary,
            "moving": moving,
            "stationary_scale": stationary_scale,
            "moving_scale": moving_scale,
        },
    )
    st = dequantize_operand(instr, "stationary", stationary, stationary_scale)
    mv = dequantize_operand(instr, "moving", moving, moving_scale)
    if _defer(dst, st, mv, accumulate):
        return NkiInstruction(instr)
    res = st.T @ mv
    _accumulate_into(instr, dst, res.reshape(dst.shape), accumulate, core.target, exact=False)
    return NkiInstruction(instr)


def _check_mx_tiling(instr: str, tile_position, tile_size, k: int, m: int) -> None:
    """Row tiling only (nc_matmul_mx page): tile_size (row, 128), tile_position (row, 0), both or neither."""
    pos = tuple(tile_position) if tile_position is not None else ()
    size = tuple(tile_size) if tile_size is not None else ()
    _check_tiling(instr, pos, size, None, k, m)
