"""NKI data types: one table, and the conversions every write goes through.

In NKI 0.3+ a dtype is a string (``nl.bfloat16 == 'bfloat16'``). `DType` is a ``str``
subclass carrying the facts the simulator needs. Storage uses NumPy / ml_dtypes:

* precise mode (default, ``NKI_PRECISE_FP=1``): each dtype is stored in its own format,
  so every write rounds (round-to-nearest-even, as the hardware default);
* precise off: every float type narrower than fp32 is stored as float32.

Float -> integer conversions round to nearest even and saturate to the integer range
(as the official simulator does since NKI 0.6). Float -> fp8 conversions saturate finite
values to the format's max (assumption: the docs do not say; ml_dtypes alone would
give inf / NaN on overflow). The ``*_x4`` packed MX types are stored as raw bit
patterns (uint32 / uint16), one storage element per packed group of four values.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np

from moegen.sim.errors import NkiSimError


class DType(str):
    """An NKI dtype: a string (its NKI name) with the table's facts as attributes."""

    info: DTypeInfo

    def __new__(cls, info: DTypeInfo) -> DType:
        obj = super().__new__(cls, info.name)
        obj.info = info
        return obj

    @property
    def name(self) -> str:
        return str.__str__(self)

    @property
    def itemsize(self) -> int:
        return self.info.itemsize

    @property
    def is_float(self) -> bool:
        return self.info.is_float

    @property
    def packed(self) -> bool:
        return self.info.packed

    @property
    def max(self) -> float:
        return self.info.max

    @property
    def np_dtype(self) -> np.dtype:
        """Storage dtype in precise mode."""
        return self.info.storage

    def storage(self, precise: bool = True) -> np.dtype:
        """NumPy dtype used to hold this dtype's values (float32 for narrow floats when not precise)."""
        if not precise and self.info.is_float and not self.info.packed and self.info.itemsize < 4:
            return np.dtype(np.float32)
        return self.info.storage

    def __repr__(self) -> str:
        return f"nl.{self.name}"

    def __reduce__(self):
        return (as_dtype, (self.name,))


@dataclass(frozen=True)
class DTypeInfo:
    """One row of the dtype table.

    name: NKI name; storage: NumPy storage dtype (precise mode); itemsize: bytes per
    storage element; is_float; max: largest finite value (ints: max integer);
    packed: values per storage element for the MX ``_x4`` types (0 otherwise).
    """

    name: str
    storage: np.dtype
    itemsize: int
    is_float: bool
    max: float
    packed: int = 0


def _info(name: str, storage, is_float: bool, packed: int = 0, maxval: float | None = None) -> DTypeInfo:
    st = np.dtype(storage)
    if maxval is None:
        maxval = float(ml_dtypes.finfo(st).max) if is_float else float(np.iinfo(st).max)
    return DTypeInfo(name, st, st.itemsize, is_float, maxval, packed)


TABLE: dict[str, DTypeInfo] = {
    i.name: i
    for i in (
        _info("bool_", np.uint8, False, maxval=1.0),
        _info("int8", np.int8, False),
        _info("int16", np.int16, False),
        _info("int32", np.int32, False),
        _info("uint8", np.uint8, False),
        _info("uint16", np.uint16, False),
        _info("uint32", np.uint32, False),
        _info("float16", np.float16, True),
        _info("bfloat16", ml_dtypes.bfloat16, True),
        # tfloat32: fp32 storage, mantissa rounded to 10 bits on write.
        _info("tfloat32", np.float32, True, maxval=float(ml_dtypes.finfo(np.float32).max)),
        _info("float32", np.float32, True),
        # Neuron's legacy fp8 e4m3: IEEE-style (has inf), max 240 -> ml_dtypes.float8_e4m3.
        _info("float8_e4m3", ml_dtypes.float8_e4m3, True),
        _info("float8_e4m3fn", ml_dtypes.float8_e4m3fn, True),
        _info("float8_e5m2", ml_dtypes.float8_e5m2, True),
        _info("float8_e8m0fnu", ml_dtypes.float8_e8m0fnu, True),
        # Packed MX types: raw bits; four fp8 in a uint32, four fp4 in a uint16.
        _info(
            "float8_e5m2_x4",
            np.uint32,
            True,
            packed=4,
            maxval=float(ml_dtypes.finfo(ml_dtypes.float8_e5m2).max),
        ),
        _info(
            "float8_e4m3fn_x4",
            np.uint32,
            True,
            packed=4,
            maxval=float(ml_dtypes.finfo(ml_dtypes.float8_e4m3fn).max),
        ),
        _info(
            "float4_e2m1fn_x4",
            np.uint16,
            True,
            packed=4,
            maxval=float(ml_dtypes.finfo(ml_dtypes.float4_e2m1fn).max),
        ),
    )
}

DTYPES: dict[str, DType] = {name: DType(info) for name, info in TABLE.items()}

bool_ = DTYPES["bool_"]
int8 = DTYPES["int8"]
int16 = DTYPES["int16"]
int32 = DTYPES["int32"]
uint8 = DTYPES["uint8"]
uint16 = DTYPES["uint16"]
uint32 = DTYPES["uint32"]
float16 = DTYPES["float16"]
bfloat16 = DTYPES["bfloat16"]
tfloat32 = DTYPES["tfloat32"]
float32 = DTYPES["float32"]
float8_e4m3 = DTYPES["float8_e4m3"]
float8_e4m3fn = DTYPES["float8_e4m3fn"]
float8_e5m2 = DTYPES["float8_e5m2"]
float8_e8m0fnu = DTYPES["float8_e8m0fnu"]
float8_e5m2_x4 = DTYPES["float8_e5m2_x4"]
float8_e4m3fn_x4 = DTYPES["float8_e4m3fn_x4"]
float4_e2m1fn_x4 = DTYPES["float4_e2m1fn_x4"]

FP8 = frozenset({"float8_e4m3", "float8_e4m3fn", "float8_e5m2"})

_FROM_NUMPY = {
    np.dtype(np.bool_): bool_,
    np.dtype(np.int8): int8,
    np.dtype(np.int16): int16,
    np.dtype(np.int32): int32,
    np.dtype(np.uint8): uint8,
    np.dtype(np.uint16): uint16,
    np.dtype(np.uint32): uint32,
    np.dtype(np.float16): float16,
    np.dtype(ml_dtypes.bfloat16): bfloat16,
    np.dtype(np.float32): float32,
    np.dtype(ml_dtypes.float8_e4m3): float8_e4m3,
    np.dtype(ml_dtypes.float8_e4m3fn): float8_e4m3fn,
    np.dtype(ml_dtypes.float8_e5m2): float8_e5m2,
    np.dtype(ml_dtypes.float8_e8m0fnu): float8_e8m0fnu,
}


def as_dtype(dtype) -> DType:
    """Resolve an NKI dtype given as DType, NKI name string, or NumPy dtype/type.

    float64 / int64 NumPy arrays are accepted as kernel arguments by mapping to
    float32 / int32 (callers convert the data).
    """
    if isinstance(dtype, DType):
        return dtype
    if isinstance(dtype, str):
        if dtype in DTYPES:
            return DTYPES[dtype]
        aliases = {"bool": "bool_", "bf16": "bfloat16", "fp32": "float32", "fp16": "float16"}
        if dtype in aliases:
            return DTYPES[aliases[dtype]]
    try:
        npd = np.dtype(dtype)
    except TypeError:
        raise NkiSimError(f"dtype: unknown data type {dtype!r} (limit: an nki.language dtype)") from None
    if npd in _FROM_NUMPY:
        return _FROM_NUMPY[npd]
    if npd == np.float64:
        return float32
    if npd == np.int64:
        return int32
    if npd == np.uint64:
        return uint32
    raise NkiSimError(f"dtype: unsupported data type {npd} (limit: an nki.language dtype)")


def sentinel(dtype: DType):
    """Fill value of a new allocation: NaN for floats, 4 for integers (raw 0xFF..FF bits for packed MX)."""
    if dtype.packed:
        return np.iinfo(dtype.info.storage).max
    return np.nan if dtype.is_float else 4


def _round_tf32(x: np.ndarray) -> np.ndarray:
    """Round float32 values to tfloat32 (10 explicit mantissa bits), nearest even."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    lsb = (bits >> 13) & 1
    rounded = (bits + np.uint32(0x0FFF) + lsb) & np.uint32(0xFFFFE000)
    finite = np.isfinite(x)
    out = np.where(finite, rounded, bits).view(np.float32)
    return out


def convert(values, dtype: DType, precise: bool = True) -> np.ndarray:
    """Convert values (any NumPy array or scalar) to the storage representation of `dtype`.

    Floats -> float: round to nearest even (fp8: finite values saturate to +-max first).
    Floats -> int: round to nearest even, saturate to the integer range, NaN -> 0.
    Int -> int: wraps like a bit-pattern truncation is NOT done; values saturate too.
    Packed MX types: values must already be raw bit patterns (integers).
    """
    arr = np.asarray(values)
    st = dtype.storage(precise)
    if arr.dtype == st and dtype.name != "tfloat32":
        return arr
    if dtype.packed:
        if arr.dtype.kind not in "iub":
            raise NkiSimError(f"convert: packed dtype {dtype.name} takes raw bit patterns, got {arr.dtype}")
        return arr.astype(st)
    if dtype.is_float:
        if st == np.float32:
            out = arr.astype(np.float32)
            if dtype.name == "tfloat32" and precise:
                out = _round_tf32(out)
            return out
        src = arr if arr.dtype == np.float32 else arr.astype(np.float32)
        if dtype.name in FP8:
            m = dtype.max
            src = np.clip(src, -m, m) if not np.isnan(src).any() else np.where(np.isnan(src), src, np.clip(src, -m, m))
        if dtype.name == "bfloat16":
            return _f32_to_bf16(src)
        return src.astype(st)
    # integer destination
    if arr.dtype.kind == "f" or arr.dtype.kind == "V" or arr.dtype not in _NATIVE_NUMERIC:
        f = arr.astype(np.float64)
        f = np.nan_to_num(np.rint(f), nan=0.0)
        info = np.iinfo(st)
        return np.clip(f, info.min, info.max).astype(st)
    if arr.dtype.kind == "b":
        return arr.astype(st)
    info = np.iinfo(st)
    ainfo = np.iinfo(arr.dtype)
    if ainfo.min >= info.min and ainfo.max <= info.max:
        return arr.astype(st)
    return np.clip(arr, info.min, info.max).astype(st)


_NATIVE_NUMERIC = {
    np.dtype(t) for t in (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64)
}


def _f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16, round to nearest even (NaN kept NaN), via integer arithmetic (fast)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    bits = x.view(np.uint32)
    lsb = (bits >> 16) & np.uint32(1)
    rounded = ((bits + np.uint32(0x7FFF) + lsb) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        rounded = np.where(nan, ((bits >> 16) | np.uint32(0x40)).astype(np.uint16), rounded)
    return rounded.view(ml_dtypes.bfloat16)


def to_f32(arr: np.ndarray) -> np.ndarray:
    """Storage values -> float32 (bfloat16 via a bit shift: exact and fast). Ints pass through unchanged."""
    if arr.dtype == np.float32:
        return arr
    if arr.dtype.kind in "iub":
        return arr
    return arr.astype(np.float32)
