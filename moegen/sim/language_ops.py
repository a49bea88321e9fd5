"""The math of ``nki.language``: operator and activation tables, and the callable math functions.

Two roles, one set of objects (as in NKI):

* every ``nl.<op>`` function below is a *value* passed as ``op=`` / ``op0=`` / ``reduce_op=`` to the
  ``nki.isa`` compute instructions (``moegen.sim.isa_compute``); the tables ``ALU_OPS`` and
  ``ACTIVATIONS`` map each of them to a vectorised NumPy implementation on float32 (or integer bit
  pattern) arrays, as data, not branches;
* each is also callable as the ``nki.language`` convenience op (NKI 0.3+, "experimental"): it
  allocates a new SBUF tile and lowers to one ISA instruction (``activation``, ``tensor_tensor``,
  ``tensor_scalar``, ``tensor_reduce``, ``tensor_copy``).

Facts (NKI 0.6 docs, "Supported Math Operators for NKI ISA" and "Supported Activation Functions"):

* ALU operators are *bitvec* (integer bit patterns: invert, bitwise_and/or/xor, left_shift, logical
  right_shift) or *arithmetic* (inputs cast to float32, math in float32, result cast to the dst dtype).
  ``nl.divide`` is NOT an ALU operator: the device compiler rejects ``op=nl.divide`` ("unsupported
  operator 'divide'"), so the simulator rejects it too (use ``reciprocal`` then ``multiply``).
* legal reduction operators: bitwise_and/or/xor, add, subtract, multiply, maximum, minimum,
  logical_and/or/xor.
* activation functions run on the Scalar Engine as piece-wise polynomial approximations; outside the
  documented valid input range the hardware "generates invalid output results": the simulator writes
  NaN for those elements, so the invalid values surface wherever they are used.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from moegen.sim.errors import NkiSimError

F32 = np.float32


# ---------------------------------------------------------------------------------------------------
# NumPy implementations (float32 in, float32 out; float64 only inside erf for accuracy)
# ---------------------------------------------------------------------------------------------------

_ERF_TAYLOR = (1.0, -1.0 / 3.0, 1.0 / 10.0, -1.0 / 42.0, 1.0 / 216.0, -1.0 / 1320.0, 1.0 / 9360.0)
_ERFC_COEF = (
    -1.26551223,
    1.00002368,
    0.37409196,
    0.09678418,
    -0.18628806,
    0.27886807,
    -1.13520398,
    1.48851587,
    -0.82215223,
    0.17087277,
)


def _erf(x: np.ndarray) -> np.ndarray:
    """erf, vectorised (NumPy has none): Taylor series for |x| < 0.5, else 1 - erfc with the
    Chebyshev fit of Numerical Recipes (relative error < 1.2e-7); float64 inside, float32 out."""
    x64 = np.asarray(x, dtype=np.float64)
    ax = np.abs(x64)
    x2 = x64 * x64
    series = np.zeros_like(x64)
    for k, c in enumerate(_ERF_TAYLOR):  # 7 terms, not a loop over elements
        series = series + c * x64 * x2**k
    series = series * (2.0 / math.sqrt(math.pi))
    t = 1.0 / (1.0 + 0.5 * ax)
    poly = np.zeros_like(x64)
    for c in reversed(_ERFC_COEF[1:]):
        poly = (poly + c) * t
    erfc = t * np.exp(-ax * ax + _ERFC_COEF[0] + poly)
    tail = np.sign(x64) * (1.0 - erfc)
    return np.where(ax < 0.5, series, tail).astype(F32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)), accurate in relative terms on both tails."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(F32)


def _gelu(x: np.ndarray) -> np.ndarray:
    return (0.5 * x * (1.0 + _erf(x / F32(math.sqrt(2.0))))).astype(F32)


def _gelu_dx(x: np.ndarray) -> np.ndarray:
    cdf = 0.5 * (1.0 + _erf(x / F32(math.sqrt(2.0))))
    pdf = np.exp(-0.5 * x * x) / F32(math.sqrt(2.0 * math.pi))
    return (cdf + x * pdf).astype(F32)


def _gelu_apprx_tanh(x: np.ndarray) -> np.ndarray:
    inner = F32(math.sqrt(2.0 / math.pi)) * (x + F32(0.044715) * x * x * x)
    return (0.5 * x * (1.0 + np.tanh(inner))).astype(F32)


def _gelu_apprx_sigmoid(x: np.ndarray) -> np.ndarray:
    return (x * _sigmoid(F32(1.702) * x)).astype(F32)


def _gelu_apprx_sigmoid_dx(x: np.ndarray) -> np.ndarray:
    s = _sigmoid(F32(1.702) * x)
    return (s + F32(1.702) * x * s * (1.0 - s)).astype(F32)


def _silu(x: np.ndarray) -> np.ndarray:
    return (x * _sigmoid(x)).astype(F32)


def _silu_dx(x: np.ndarray) -> np.ndarray:
    s = _sigmoid(x)
    return (s * (1.0 + x * (1.0 - s))).astype(F32)


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(F32(0.0), x).astype(F32)


def _mish(x: np.ndarray) -> np.ndarray:
    return (x * np.tanh(_softplus(x))).astype(F32)


def _erf_dx(x: np.ndarray) -> np.ndarray:
    return (F32(2.0 / math.sqrt(math.pi)) * np.exp(-x * x)).astype(F32)


def _rsqrt(x: np.ndarray) -> np.ndarray:
    return (F32(1.0) / np.sqrt(x)).astype(F32)


def _reciprocal(x: np.ndarray) -> np.ndarray:
    return (F32(1.0) / x).astype(F32)


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, F32(0.0)).astype(F32)


def _as_f32(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    """fn with a float32 result (predicates become 1.0 where true, 0.0 where false, as the hardware
    writes them)."""

    def wrapped(*args: np.ndarray) -> np.ndarray:
        return np.asarray(fn(*args)).astype(F32)

    return wrapped


_flag = _as_f32


# ---------------------------------------------------------------------------------------------------
# The operator table (ALU ops: the `op` of tensor_tensor / tensor_scalar / tensor_reduce / ...)
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AluOp:
    """One ALU operator: ``fn`` works on float32 arrays (arithmetic) or uint64 bit patterns (bitvec).

    ``reduce`` (arithmetic: float32 array, axes -> float32) is set for the legal reduction operators;
    ``identity`` is the accumulator reset value of that reduction."""

    name: str
    kind: str  # "arithmetic" | "bitvec"
    arity: int  # 1 (unary: operand ignored) or 2
    fn: Callable[..., np.ndarray]
    reduce: Callable[[np.ndarray, tuple[int, ...]], np.ndarray] | None = None
    identity: float | None = None
    trn3_only: bool = False


def _sum(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    return np.sum(x, axis=axes, dtype=F32)


def _prod(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    return np.prod(x, axis=axes, dtype=F32)


def _max(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    return np.max(x, axis=axes).astype(F32)


def _min(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    return np.min(x, axis=axes).astype(F32)


def _all(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    return np.all(x != 0, axis=axes).astype(F32)


def _any(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    return np.any(x != 0, axis=axes).astype(F32)


def _parity(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    return (np.count_nonzero(x, axis=axes) % 2).astype(F32)


def _bit_reduce(ufunc: np.ufunc) -> Callable[[np.ndarray, tuple[int, ...]], np.ndarray]:
    def reduce(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
        return ufunc.reduce(x, axis=axes)

    return reduce


def _shift_left(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    b = np.asarray(b, dtype=np.uint64)
    return np.where(b >= 64, np.uint64(0), np.left_shift(a, np.minimum(b, np.uint64(63))))


def _shift_right(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    b = np.asarray(b, dtype=np.uint64)
    return np.where(b >= 64, np.uint64(0), np.right_shift(a, np.minimum(b, np.uint64(63))))


ALU_BY_NAME: dict[str, AluOp] = {
    op.name: op
    for op in (
        # bitvec: integer bit patterns (uint64 holding the zero-extended pattern of the input width)
        AluOp("invert", "bitvec", 1, lambda a, _b=None: np.invert(a)),
        AluOp("bitwise_and", "bitvec", 2, np.bitwise_and, _bit_reduce(np.bitwise_and)),
        AluOp("bitwise_or", "bitvec", 2, np.bitwise_or, _bit_reduce(np.bitwise_or)),
        AluOp("bitwise_xor", "bitvec", 2, np.bitwise_xor, _bit_reduce(np.bitwise_xor)),
        AluOp("left_shift", "bitvec", 2, _shift_left),
        AluOp("right_shift", "bitvec", 2, _shift_right),  # logical; arithmetic right shift unsupported
        # arithmetic: float32 in, float32 out
        AluOp("add", "arithmetic", 2, _as_f32(np.add), _sum, 0.0),
        AluOp("subtract", "arithmetic", 2, _as_f32(np.subtract), None, 0.0),  # reduction order undocumented
        AluOp("multiply", "arithmetic", 2, _as_f32(np.multiply), _prod, 1.0),
        AluOp("maximum", "arithmetic", 2, _as_f32(np.maximum), _max, -math.inf),
        AluOp("minimum", "arithmetic", 2, _as_f32(np.minimum), _min, math.inf),
        AluOp("equal", "arithmetic", 2, _flag(np.equal)),
        AluOp("not_equal", "arithmetic", 2, _flag(np.not_equal)),
        AluOp("greater_equal", "arithmetic", 2, _flag(np.greater_equal)),
        AluOp("greater", "arithmetic", 2, _flag(np.greater)),
        AluOp("less_equal", "arithmetic", 2, _flag(np.less_equal)),
        AluOp("less", "arithmetic", 2, _flag(np.less)),
        AluOp("logical_and", "arithmetic", 2, _flag(lambda a, b: (a != 0) & (b != 0)), _all),
        AluOp("logical_or", "arithmetic", 2, _flag(lambda a, b: (a != 0) | (b != 0)), _any),
        AluOp("logical_xor", "arithmetic", 2, _flag(lambda a, b: (a != 0) ^ (b != 0)), _parity),
        AluOp("power", "arithmetic", 2, _as_f32(np.power)),
        AluOp("rsqrt", "arithmetic", 1, lambda a, _b=None: _rsqrt(a)),
        AluOp("reciprocal", "arithmetic", 1, lambda a, _b=None: _reciprocal(a)),
        AluOp("abs", "arithmetic", 1, lambda a, _b=None: np.abs(a).astype(F32)),
        # NeuronCore-v4 (trn3) additions
        AluOp("abs_max", "arithmetic", 2, _as_f32(lambda a, b: np.maximum(np.abs(a), np.abs(b))), trn3_only=True),
        AluOp("abs_min", "arithmetic", 2, _as_f32(lambda a, b: np.minimum(np.abs(a), np.abs(b))), trn3_only=True),
        AluOp("square", "arithmetic", 1, lambda a, _b=None: (a * a).astype(F32), trn3_only=True),
        AluOp("relu", "arithmetic", 1, lambda a, _b=None: _relu(a), trn3_only=True),
    )
}


# ---------------------------------------------------------------------------------------------------
# The activation table (the `op` of nisa.activation / activation_reduce / activate2)
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Activation:
    """One Scalar Engine activation function on float32 arrays, with its documented valid input range
    (``low <= x <= high``; ``symmetric`` means ``low <= |x| <= high``). ``None``: whole real line."""

    name: str
    fn: Callable[[np.ndarray], np.ndarray]
    valid_range: tuple[float, float] | None = None
    symmetric: bool = False
    trn3_only: bool = False

    def apply(self, x: np.ndarray) -> np.ndarray:
        """op(x) in float32; NaN where x is outside the documented valid input range."""
        with np.errstate(all="ignore"):
            out = np.asarray(self.fn(x)).astype(F32)
        if self.valid_range is None:
            return out
        low, high = self.valid_range
        probe = np.abs(x) if self.symmetric else x
        return np.where((probe >= low) & (probe <= high), out, F32(np.nan)).astype(F32)


ACTIVATION_BY_NAME: dict[str, Activation] = {
    act.name: act
    for act in (
        Activation("copy", lambda x: x),
        Activation("square", lambda x: x * x),
        Activation("sigmoid", _sigmoid),
        Activation("relu", _relu),
        Activation("gelu", _gelu),
        Activation("gelu_dx", _gelu_dx),
        Activation("gelu_apprx_tanh", _gelu_apprx_tanh),
        Activation("gelu_apprx_sigmoid", _gelu_apprx_sigmoid),
        Activation("gelu_apprx_sigmoid_dx", _gelu_apprx_sigmoid_dx),
        Activation("silu", _silu),
        Activation("silu_dx", _silu_dx),
        Activation("tanh", np.tanh),
        Activation("softplus", _softplus),
        Activation("mish", _mish),
        Activation("erf", _erf),
        Activation("erf_dx", _erf_dx),
        Activation("exp", np.exp),
        Activation("log", np.log, (2.0**-64, 2.0**64)),
        # sin: valid [-pi, pi]; outside it the hardware extrapolates its polynomial (the official
        # simulator reproduces that); we compute the true sine, so results there are not hardware's.
        Activation("sin", np.sin),
        Activation("arctan", np.arctan, (-math.pi / 2, math.pi / 2)),
        Activation("sqrt", np.sqrt, (2.0**-116, 2.0**118)),
        Activation("rsqrt", _rsqrt, (2.0**-87, 2.0**97)),
        Activation("reciprocal", _reciprocal, (2.0**-42, 2.0**42), symmetric=True),
        Activation("sign", np.sign),
        Activation("abs", np.abs),
        Activation("bypass", lambda x: x, trn3_only=True),
    )
}

# prelu (activate2 only; slope = relu_param) is handled by activate2 itself.


# ---------------------------------------------------------------------------------------------------
# Op values that are not functions in nki.language (api.json lists them as plain values)
# ---------------------------------------------------------------------------------------------------


class _OpValue:
    """A named operator value of nki.language that is not a callable function."""

    def __init__(self, name: str) -> None:
        self.__name__ = name

    def __repr__(self) -> str:
        return f"nl.{self.__name__}"


bypass = _OpValue("bypass")
"""No-op stage of activate2's tensor-scalar pipeline (and identity activation on trn3)."""

prelu = _OpValue("prelu")
"""Parametric ReLU activation of activate2 (slope in ``relu_param``)."""

average = _OpValue("average")
"""Averaging reduction of tensor_partition_reduce."""


# ---------------------------------------------------------------------------------------------------
# Callable nki.language math functions (each returns a new SBUF tile)
# ---------------------------------------------------------------------------------------------------

# Lowering of the unary functions: the activation table name, or a direct NumPy function for the
# functions that are not Scalar Engine activations (recorded as one Vector Engine instruction).
_UNARY_NUMPY: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "cos": np.cos,
    "tan": np.tan,
    "ceil": np.ceil,
    "floor": np.floor,
    "trunc": np.trunc,
    "negative": np.negative,
    "logical_not": lambda x: (x == 0).astype(F32),
}

# nki.language functions the hardware does not support (docs: "not supported on HW" / simulation only)
_UNSUPPORTED_ON_HARDWARE = {"divide", "fmod", "mod"}


def abs(x, dtype=None):  # noqa: A001 - the NKI name
    """|x| element-wise; x: tile [P, ...] -> new SBUF tile."""
    return _unary("abs", x, dtype)


def arctan(x, dtype=None):
    """arctan(x) element-wise (Scalar Engine; valid input [-pi/2, pi/2])."""
    return _unary("arctan", x, dtype)


def ceil(x, dtype=None):
    """ceil(x) element-wise."""
    return _unary("ceil", x, dtype)


def copy(x, dtype=None):
    """A copy of x in a new SBUF tile (Vector Engine tensor_copy; bit-exact when dtypes match)."""
    return _copy(x, dtype)


def cos(x, dtype=None):
    """cos(x) element-wise."""
    return _unary("cos", x, dtype)


def erf(x, dtype=None):
    """erf(x) element-wise."""
    return _unary("erf", x, dtype)


def erf_dx(x, dtype=None):
    """d/dx erf(x) = 2/sqrt(pi) * exp(-x^2), element-wise."""
    return _unary("erf_dx", x, dtype)


def exp(x, dtype=None):
    """exp(x) element-wise."""
    return _unary("exp", x, dtype)


def floor(x, dtype=None):
    """floor(x) element-wise."""
    return _unary("floor", x, dtype)


def gelu(x, dtype=None):
    """Exact GELU: 0.5 * x * (1 + erf(x / sqrt(2))), element-wise."""
    return _unary("gelu", x, dtype)


def gelu_apprx_sigmoid(x, dtype=None):
    """GELU with sigmoid approximation: x * sigmoid(1.702 * x), element-wise."""
    return _unary("gelu_apprx_sigmoid", x, dtype)


def gelu_apprx_sigmoid_dx(x, dtype=None):
    """Derivative of x * sigmoid(1.702 * x), element-wise."""
    return _unary("gelu_apprx_sigmoid_dx", x, dtype)


def gelu_apprx_tanh(x, dtype=None):
    """GELU with tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    return _unary("gelu_apprx_tanh", x, dtype)


def gelu_dx(x, dtype=None):
    """Derivative of exact GELU, element-wise."""
    return _unary("gelu_dx", x, dtype)


def invert(x, dtype=None):
    """Bitwise NOT of an integer tile."""
    return _bitwise_unary("invert", x, dtype)


def log(x, dtype=None):
    """Natural log element-wise (valid input [2^-64, 2^64])."""
    return _unary("log", x, dtype)


def logical_not(x, dtype=None):
    """1 where x == 0, else 0."""
    return _unary("logical_not", x, dtype)


def mish(x, dtype=None):
    """x * tanh(softplus(x)), element-wise."""
    return _unary("mish", x, dtype)


def negative(x, dtype=None):
    """-x element-wise."""
    return _unary("negative", x, dtype)


def reciprocal(x, dtype=None):
    """1 / x element-wise (valid input |x| in [2^-42, 2^42])."""
    return _unary("reciprocal", x, dtype)


def relu(x, dtype=None):
    """max(x, 0) element-wise."""
    return _unary("relu", x, dtype)


def rsqrt(x, dtype=None):
    """1 / sqrt(x) element-wise (valid input [2^-87, 2^97])."""
    return _unary("rsqrt", x, dtype)


def sigmoid(x, dtype=None):
    """1 / (1 + exp(-x)) element-wise."""
    return _unary("sigmoid", x, dtype)


def sign(x, dtype=None):
    """sign(x) element-wise."""
    return _unary("sign", x, dtype)


def silu(x, dtype=None):
    """x * sigmoid(x) element-wise."""
    return _unary("silu", x, dtype)


def silu_dx(x, dtype=None):
    """Derivative of silu, element-wise."""
    return _unary("silu_dx", x, dtype)


def sin(x, dtype=None):
    """sin(x) element-wise."""
    return _unary("sin", x, dtype)


def softplus(x, dtype=None):
    """log(1 + exp(x)) element-wise."""
    return _unary("softplus", x, dtype)


def sqrt(x, dtype=None):
    """sqrt(x) element-wise (valid input [2^-116, 2^118])."""
    return _unary("sqrt", x, dtype)


def square(x, dtype=None):
    """x * x element-wise."""
    return _unary("square", x, dtype)


def tan(x, dtype=None):
    """tan(x) element-wise."""
    return _unary("tan", x, dtype)


def tanh(x, dtype=None):
    """tanh(x) element-wise."""
    return _unary("tanh", x, dtype)


def trunc(x, dtype=None):
    """trunc(x) element-wise."""
    return _unary("trunc", x, dtype)


# binary


def abs_max(x, y, dtype=None):
    """max(|x|, |y|) element-wise (NeuronCore-v4 and newer)."""
    return _binary("abs_max", x, y, dtype)


def abs_min(x, y, dtype=None):
    """min(|x|, |y|) element-wise (NeuronCore-v4 and newer)."""
    return _binary("abs_min", x, y, dtype)


def add(x, y, dtype=None):
    """x + y element-wise; x, y: tiles of equal shape or one a scalar."""
    return _binary("add", x, y, dtype)


def bitwise_and(x, y, dtype=None):
    """x & y on integer bit patterns."""
    return _binary("bitwise_and", x, y, dtype)


def bitwise_or(x, y, dtype=None):
    """x | y on integer bit patterns."""
    return _binary("bitwise_or", x, y, dtype)


def bitwise_xor(x, y, dtype=None):
    """x ^ y on integer bit patterns."""
    return _binary("bitwise_xor", x, y, dtype)


def divide(x, y, dtype=None):
    """x / y: not supported on hardware (the compiler rejects it); raises NkiSimError."""
    return _binary("divide", x, y, dtype)


def equal(x, y, dtype=None):
    """1 where x == y else 0 (in the input dtype unless ``dtype``)."""
    return _binary("equal", x, y, dtype)


def fmod(x, y, dtype=None):
    """Not supported on hardware; raises NkiSimError."""
    return _binary("fmod", x, y, dtype)


def greater(x, y, dtype=None):
    """1 where x > y else 0."""
    return _binary("greater", x, y, dtype)


def greater_equal(x, y, dtype=None):
    """1 where x >= y else 0."""
    return _binary("greater_equal", x, y, dtype)


def left_shift(x, y, dtype=None):
    """x << y on integer bit patterns."""
    return _binary("left_shift", x, y, dtype)


def less(x, y, dtype=None):
    """1 where x < y else 0."""
    return _binary("less", x, y, dtype)


def less_equal(x, y, dtype=None):
    """1 where x <= y else 0."""
    return _binary("less_equal", x, y, dtype)


def logical_and(x, y, dtype=None):
    """1 where x != 0 and y != 0 else 0."""
    return _binary("logical_and", x, y, dtype)


def logical_or(x, y, dtype=None):
    """1 where x != 0 or y != 0 else 0."""
    return _binary("logical_or", x, y, dtype)


def logical_xor(x, y, dtype=None):
    """1 where exactly one of x, y is nonzero else 0."""
    return _binary("logical_xor", x, y, dtype)


def maximum(x, y, dtype=None):
    """max(x, y) element-wise."""
    return _binary("maximum", x, y, dtype)


def minimum(x, y, dtype=None):
    """min(x, y) element-wise."""
    return _binary("minimum", x, y, dtype)


def mod(x, y, dtype=None):
    """Not supported on hardware; raises NkiSimError."""
    return _binary("mod", x, y, dtype)


def multiply(x, y, dtype=None):
    """x * y element-wise."""
    return _binary("multiply", x, y, dtype)


def not_equal(x, y, dtype=None):
    """1 where x != y else 0."""
    return _binary("not_equal", x, y, dtype)


def power(x, y, dtype=None):
    """x ** y element-wise; y must be a tile (power(tile, scalar) is unsupported on hardware)."""
    return _binary("power", x, y, dtype)


def right_shift(x, y, dtype=None):
    """Logical x >> y on integer bit patterns."""
    return _binary("right_shift", x, y, dtype)


def subtract(x, y, dtype=None):
    """x - y element-wise."""
    return _binary("subtract", x, y, dtype)


# reductions over the last contiguous free axes


def all(x, axis, dtype=None):  # noqa: A001 - the NKI name
    """1 where every element along ``axis`` is nonzero, else 0."""
    return _reduce("logical_and", x, axis, dtype, keepdims=False)


def max(x, axis, dtype=None, keepdims=False):  # noqa: A001 - the NKI name
    """Maximum along the free ``axis`` (last contiguous free axes)."""
    return _reduce("maximum", x, axis, dtype, keepdims)


def mean(x, axis, dtype=None, keepdims=False):
    """Mean along the free ``axis``: fp32 sum then multiply by 1/n."""
    return _mean(x, axis, dtype, keepdims)


def min(x, axis, dtype=None, keepdims=False):  # noqa: A001 - the NKI name
    """Minimum along the free ``axis``."""
    return _reduce("minimum", x, axis, dtype, keepdims)


def prod(x, axis, dtype=None, keepdims=False):
    """Product along the free ``axis``."""
    return _reduce("multiply", x, axis, dtype, keepdims)


def sum(x, axis, dtype=None, keepdims=False):  # noqa: A001 - the NKI name
    """Sum along the free ``axis`` (fp32 accumulation)."""
    return _reduce("add", x, axis, dtype, keepdims)


def var(x, axis, dtype=None, keepdims=False):
    """Population variance along the free ``axis`` (``keepdims`` is ignored, as documented:
    the result keeps the reduced axes as size 1)."""
    return _var(x, axis, dtype)


def softmax(x, axis=-1, dtype=None):
    """exp(x - max) / sum(exp(x - max)) along the last free axis."""
    return _softmax(x, axis, dtype)


def where(condition, x, y, dtype=None):
    """x where condition != 0 else y; condition: tile of 1.0/0.0; x, y: tiles or scalars."""
    return _where(condition, x, y, dtype)


# ---------------------------------------------------------------------------------------------------
# Lookup used by the ISA instructions
# ---------------------------------------------------------------------------------------------------

ALU_OPS: dict[Callable, AluOp] = {globals()[name]: spec for name, spec in ALU_BY_NAME.items()}
"""nl function -> its ALU operator (the `op` of tensor_tensor, tensor_scalar, tensor_reduce, ...)."""

ACTIVATIONS: dict[object, Activation] = {
    (bypass if name == "bypass" else globals()[name]): spec for name, spec in ACTIVATION_BY_NAME.items()
}
"""nl function (or nl.bypass) -> its Scalar Engine activation."""

REDUCE_ALIASES: dict[Callable, Callable] = {max: maximum, min: minimum, sum: add, prod: multiply}
"""nl reduction functions accepted where a reduction operator is expected (e.g. tensor_scalar_reduce
documents ``nl.max`` / ``nl.min``), mapped to their ALU operator."""


# ---------------------------------------------------------------------------------------------------
# Lowering of the callable functions to ISA instructions (each allocates a new SBUF tile)
# ---------------------------------------------------------------------------------------------------

_PRECISION_ORDER = (
    "float32",
    "tfloat32",
    "float16",
    "bfloat16",
    "float8_e4m3fn",
    "float8_e4m3",
    "float8_e5m2",
    "int32",
    "uint32",
    "int16",
    "uint16",
    "int8",
    "uint8",
    "bool_",
)


def _isa():
    from moegen.sim import isa_compute

    return isa_compute


def _new_tile(shape, dtype):
    """A new SBUF tile (what nl.ndarray(shape, dtype, buffer=nl.sbuf) allocates)."""
    from moegen.sim.tensor import MemoryRegion, allocate

    return allocate(tuple(shape), dtype, buffer=MemoryRegion.sbuf)


def _is_tile(x: object) -> bool:
    return hasattr(x, "shape") and hasattr(x, "buffer")


def _require_tile(fn: str, param: str, x: object) -> None:
    if not _is_tile(x):
        raise NkiSimError(f"nl.{fn}: {param} must be a tile, got {type(x).__name__}")


def _promote(a, b):
    """The higher-precision dtype of two tiles (NKI type promotion, simplified)."""
    rank = {name: i for i, name in enumerate(_PRECISION_ORDER)}
    na, nb = _isa()._dtype_name(a), _isa()._dtype_name(b)
    return a.dtype if rank.get(na, 99) <= rank.get(nb, 99) else b.dtype


def _direct(fn: str, out, inputs: dict, values: np.ndarray):
    """Write values computed directly with NumPy into out and record one Vector engine instruction."""
    isa = _isa()
    for param, t in inputs.items():
        if _is_tile(t):
            isa._check_tensor(f"nl.{fn}", param, t)
    isa._write(out, values)
    isa._record(f"nl.{fn}", "vector", out, inputs, None)
    return out


def _unary(fn: str, x, dtype):
    _require_tile(fn, "x", x)
    isa = _isa()
    out = _new_tile(x.shape, dtype if dtype is not None else x.dtype)
    if fn in _UNARY_NUMPY:
        isa._check_tensor(f"nl.{fn}", "x", x)
        with np.errstate(all="ignore"):
            values = np.asarray(_UNARY_NUMPY[fn](isa._read_f32(x))).astype(F32)
        return _direct(fn, out, {"x": x}, values)
    if fn == "rsqrt":  # GpSimd since NKI 0.5 (more precise than the ScalarE table), no PSUM input
        isa.tensor_scalar(out, x, rsqrt, None, engine=isa.engine.gpsimd)
        return out
    isa.activation(out, globals()[fn], x)
    return out


def _bitwise_unary(fn: str, x, dtype):
    _require_tile(fn, "x", x)
    isa = _isa()
    out = _new_tile(x.shape, dtype if dtype is not None else x.dtype)
    isa.tensor_scalar(out, x, globals()[fn], None, engine=isa.engine.vector)
    return out


def _binary(fn: str, x, y, dtype):
    if fn in _UNSUPPORTED_ON_HARDWARE:
        raise NkiSimError(
            f"nl.{fn}: not supported on hardware (the NKI compiler rejects it); "
            "for division multiply by nl.reciprocal(y)"
        )
    isa = _isa()
    op = globals()[fn]
    if _is_tile(x) and _is_tile(y):
        if tuple(x.shape) != tuple(y.shape):
            raise NkiSimError(
                f"nl.{fn}: x{tuple(x.shape)} and y{tuple(y.shape)} must have the same shape "
                "(nki.language binary ops do not broadcast)"
            )
        out = _new_tile(x.shape, dtype if dtype is not None else _promote(x, y))
        isa.tensor_tensor(out, x, y, op)
        return out
    if fn == "power":
        raise NkiSimError("nl.power: power(tile, scalar) is not supported on hardware; pass two tiles")
    if _is_tile(x) and isa._is_scalar(y):
        out = _new_tile(x.shape, dtype if dtype is not None else x.dtype)
        isa.tensor_scalar(out, x, op, y)
        return out
    if isa._is_scalar(x) and _is_tile(y):
        out = _new_tile(y.shape, dtype if dtype is not None else y.dtype)
        isa.tensor_scalar(out, y, op, x, reverse0=True)
        return out
    raise NkiSimError(
        f"nl.{fn}: x and y must be tiles or one tile and one scalar, got {type(x).__name__} and {type(y).__name__}"
    )


def _reduced_shape(fn: str, x, axis, keepdims: bool) -> tuple[tuple[int, ...], tuple[int, ...]]:
    shape = tuple(x.shape)
    axes = _isa()._reduce_axes(f"nl.{fn}", axis, len(shape))
    kept = shape[: axes[0]] + ((1,) * len(axes) if keepdims else ())
    if len(kept) < 2:  # an on-chip tile keeps a free dim: reducing every free axis gives [P, 1]
        kept = kept + (1,)
    return axes, kept


def _reduce(opname: str, x, axis, dtype, keepdims):
    _require_tile(opname, "x", x)
    _, shape = _reduced_shape(opname, x, axis, keepdims)
    out = _new_tile(shape, dtype if dtype is not None else x.dtype)
    _isa().tensor_reduce(out, globals()[opname], x, axis, keepdims=keepdims)
    return out


def _mean(x, axis, dtype, keepdims):
    _require_tile("mean", "x", x)
    isa = _isa()
    axes, shape = _reduced_shape("mean", x, axis, keepdims)
    count = int(np.prod([x.shape[a] for a in axes]))
    total = _new_tile(shape, "float32")
    isa.tensor_reduce(total, add, x, axis, keepdims=keepdims)
    out = _new_tile(shape, dtype if dtype is not None else x.dtype)
    isa.tensor_scalar(out, total, multiply, 1.0 / count)
    return out


def _var(x, axis, dtype):
    _require_tile("var", "x", x)
    isa = _isa()
    axes, shape = _reduced_shape("var", x, axis, True)
    isa._check_tensor("nl.var", "x", x)
    values = isa._read_f32(x)
    out = _new_tile(shape, dtype if dtype is not None else x.dtype)
    return _direct("var", out, {"x": x}, np.var(values, axis=axes, keepdims=True).astype(F32))


def _softmax(x, axis, dtype):
    _require_tile("softmax", "x", x)
    isa = _isa()
    isa._reduce_axes("nl.softmax", axis, len(x.shape))
    isa._check_tensor("nl.softmax", "x", x)
    values = isa._read_f32(x)
    with np.errstate(all="ignore"):
        shifted = np.exp(values - np.max(values, axis=axis, keepdims=True))
        result = shifted / np.sum(shifted, axis=axis, keepdims=True, dtype=F32)
    out = _new_tile(x.shape, dtype if dtype is not None else x.dtype)
    return _direct("softmax", out, {"x": x}, result.astype(F32))


def _where(condition, x, y, dtype):
    _require_tile("where", "condition", condition)
    isa = _isa()
    values = []
    for param, v in (("x", x), ("y", y)):
        if _is_tile(v):
            isa._check_tensor("nl.where", param, v)
            if tuple(v.shape) != tuple(condition.shape):
                raise NkiSimError(
                    f"nl.where: {param}{tuple(v.shape)} must have condition's shape {tuple(condition.shape)}"
                )
            values.append(isa._read_f32(v))
        elif isa._is_scalar(v):
            values.append(F32(v))
        else:
            raise NkiSimError(f"nl.where: {param} must be a tile or a scalar, got {type(v).__name__}")
    isa._check_tensor("nl.where", "condition", condition)
    if dtype is None:
        dtype = x.dtype if _is_tile(x) else (y.dtype if _is_tile(y) else condition.dtype)
    out = _new_tile(condition.shape, dtype)
    mask = isa._read_f32(condition) != 0
    return _direct("where", out, {"condition": condition, "x": x, "y": y}, np.where(mask, values[0], values[1]))


def _copy(x, dtype):
    _require_tile("copy", "x", x)
    out = _new_tile(x.shape, dtype if dtype is not None else x.dtype)
    _isa().tensor_copy(out, x)
    return out


__all__ = [
    # op values that are not functions
    "average", "bypass", "prelu",
    # unary math / activations
    "abs", "arctan", "ceil", "copy", "cos", "erf", "erf_dx", "exp", "floor", "gelu", "gelu_apprx_sigmoid",
    "gelu_apprx_sigmoid_dx", "gelu_apprx_tanh", "gelu_dx", "invert", "log", "logical_not", "mish", "negative",
    "reciprocal", "relu", "rsqrt", "sigmoid", "sign", "silu", "silu_dx", "sin", "softplus", "sqrt", "square",
    "tan", "tanh", "trunc",
    # binary operators
    "abs_max", "abs_min", "add", "bitwise_and", "bitwise_or", "bitwise_xor", "divide", "equal", "fmod",
    "greater", "greater_equal", "left_shift", "less", "less_equal", "logical_and", "logical_or",
    "logical_xor", "maximum", "minimum", "mod", "multiply", "not_equal", "power", "right_shift", "subtract",
    # reductions and composites
    "all", "max", "mean", "min", "prod", "softmax", "sum", "var", "where",
]  # fmt: skip
