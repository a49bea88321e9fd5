"""The op tables and callable math functions of nki.language (moegen.sim.language_ops), and the
signatures of this domain's functions against api.json."""

from __future__ import annotations

import inspect
import math

import ml_dtypes
import numpy as np
import pytest

from moegen.conformance import api_table
from moegen.sim import isa_compute as nisa
from moegen.sim import language_ops as nl
from moegen.sim import runtime
from moegen.sim.errors import NkiSimError
from moegen.sim.tensor import MemoryRegion, allocate

RNG = np.random.default_rng(1)


@pytest.fixture(autouse=True)
def _fresh_run():
    with runtime.context(target="trn3") as core:
        yield core


def tile(values, dtype="float32", buffer="sbuf"):
    values = np.asarray(values)
    t = allocate(values.shape, dtype, buffer=MemoryRegion[buffer])
    t.write(values)
    return t


def f32(t) -> np.ndarray:
    return np.asarray(t.read()).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Signatures against api.json
# --------------------------------------------------------------------------------------------------


def _api(module: str) -> dict:
    return api_table()[module]["functions"]


def _default_text(value) -> str | None:
    if value is inspect.Parameter.empty:
        return None
    if value is Ellipsis:
        return "..."
    if callable(value) and hasattr(value, "__name__"):
        return value.__name__
    return str(value)


def _signature(fn) -> list[tuple[str, str | None]]:
    return [(p.name, _default_text(p.default)) for p in inspect.signature(fn).parameters.values()]


def _expected(params: list[dict]) -> list[tuple[str, str | None]]:
    return [(p["name"], p.get("default")) for p in params]


def test_isa_signatures_match_api_json():
    api = _api("nki.isa")
    for name in nisa.__all__:
        assert name in api, f"nki.isa.{name} is not in api.json"
        assert _signature(getattr(nisa, name)) == _expected(api[name]), name


LANGUAGE_MATH = [
    "abs",
    "abs_max",
    "abs_min",
    "add",
    "all",
    "arctan",
    "bitwise_and",
    "bitwise_or",
    "bitwise_xor",
    "ceil",
    "copy",
    "cos",
    "divide",
    "equal",
    "erf",
    "erf_dx",
    "exp",
    "floor",
    "fmod",
    "gelu",
    "gelu_apprx_sigmoid",
    "gelu_apprx_sigmoid_dx",
    "gelu_apprx_tanh",
    "gelu_dx",
    "greater",
    "greater_equal",
    "invert",
    "left_shift",
    "less",
    "less_equal",
    "log",
    "logical_and",
    "logical_not",
    "logical_or",
    "logical_xor",
    "max",
    "maximum",
    "mean",
    "min",
    "minimum",
    "mish",
    "mod",
    "multiply",
    "negative",
    "not_equal",
    "power",
    "prod",
    "reciprocal",
    "relu",
    "right_shift",
    "rsqrt",
    "sigmoid",
    "sign",
    "silu",
    "silu_dx",
    "sin",
    "softmax",
    "softplus",
    "sqrt",
    "square",
    "subtract",
    "sum",
    "tan",
    "tanh",
    "trunc",
    "var",
    "where",
]


def test_language_signatures_match_api_json():
    api = _api("nki.language")
    for name in LANGUAGE_MATH:
        assert name in api, f"nki.language.{name} is not in api.json"
        assert _signature(getattr(nl, name)) == _expected(api[name]), name


def test_op_tables_name_real_nki_language_functions():
    api = _api("nki.language")
    for op, spec in nl.ALU_OPS.items():
        assert op.__name__ == spec.name and spec.name in api
    for op, spec in nl.ACTIVATIONS.items():
        assert op.__name__ == spec.name
    assert nl.divide not in nl.ALU_OPS  # the device compiler rejects op=nl.divide


# --------------------------------------------------------------------------------------------------
# NumPy implementations
# --------------------------------------------------------------------------------------------------


def test_erf_matches_math_erf():
    x = np.linspace(-6, 6, 2001, dtype=np.float32)
    ref = np.array([math.erf(float(v)) for v in x])
    got = nl._erf(x).astype(np.float64)
    np.testing.assert_allclose(got, ref, rtol=3e-7, atol=1e-9)


def test_gelu_apprx_sigmoid_is_x_sigmoid_1702x():
    x = np.linspace(-8, 8, 101, dtype=np.float32)
    expected = x / (1 + np.exp(-1.702 * x.astype(np.float64)))
    np.testing.assert_allclose(nl.ACTIVATIONS[nl.gelu_apprx_sigmoid].apply(x), expected, rtol=1e-6, atol=1e-7)


def test_activation_valid_ranges():
    rec = nl.ACTIVATIONS[nl.reciprocal].apply(np.array([2.0, -2.0, 0.0, 2.0**50], np.float32))
    assert rec[:2].tolist() == [0.5, -0.5] and np.isnan(rec[2:]).all()
    sq = nl.ACTIVATIONS[nl.sqrt].apply(np.array([4.0, 2.0**-120], np.float32))
    assert sq[0] == 2.0 and np.isnan(sq[1])


def test_reduce_op_lookup():
    assert nisa._reduce_op(nl.max, "t", "op").name == "maximum"
    assert nisa._reduce_op(nl.bitwise_xor, "t", "op").kind == "bitvec"
    with pytest.raises(NkiSimError, match="not a legal reduction operator"):
        nisa._reduce_op(nl.power, "t", "op")


# --------------------------------------------------------------------------------------------------
# Callable nl functions (new SBUF tile, lowered to one instruction)
# --------------------------------------------------------------------------------------------------


def test_nl_unary_functions_return_new_sbuf_tiles(_fresh_run):
    x = RNG.uniform(-2, 2, (4, 8)).astype(np.float32)
    t = tile(x)
    out = nl.exp(t)
    assert out.buffer is MemoryRegion.sbuf and out.shape == (4, 8)
    np.testing.assert_allclose(f32(out), np.exp(x), rtol=1e-6)
    assert _fresh_run.run.trace[-1]["opcode"] == "activation"
    low = nl.silu(t, dtype="bfloat16")
    np.testing.assert_allclose(f32(low), x / (1 + np.exp(-x)), rtol=2**-7, atol=1e-6)
    np.testing.assert_array_equal(f32(nl.floor(t)), np.floor(x))
    pos = tile(np.abs(x) + 0.5)
    np.testing.assert_allclose(f32(nl.rsqrt(pos)), 1 / np.sqrt(np.abs(x) + 0.5), rtol=1e-6)
    assert _fresh_run.run.trace[-1]["engine"] == "gpsimd"


def test_nl_binary_functions():
    a = RNG.standard_normal((4, 8)).astype(np.float32)
    b = RNG.standard_normal((4, 8)).astype(np.float32)
    ta, tb = tile(a), tile(b)
    np.testing.assert_array_equal(f32(nl.add(ta, tb)), a + b)
    np.testing.assert_array_equal(f32(nl.subtract(ta, 1.5)), a - np.float32(1.5))
    np.testing.assert_array_equal(f32(nl.subtract(1.5, ta)), np.float32(1.5) - a)
    np.testing.assert_array_equal(f32(nl.greater(ta, tb)), (a > b).astype(np.float32))
    mixed = nl.multiply(tile(a, "bfloat16"), tb)
    assert mixed.dtype == "float32"
    with pytest.raises(NkiSimError, match="not supported on hardware"):
        nl.divide(ta, tb)
    with pytest.raises(NkiSimError, match="do not broadcast"):
        nl.add(ta, tile(np.ones((4, 1))))


def test_nl_reductions_softmax_where_copy():
    x = RNG.standard_normal((4, 3, 5)).astype(np.float32)
    t = tile(x)
    np.testing.assert_allclose(f32(nl.sum(t, axis=2)), x.sum(axis=2), rtol=1e-6)
    np.testing.assert_array_equal(f32(nl.max(t, axis=(1, 2), keepdims=True)), x.max(axis=(1, 2), keepdims=True))
    np.testing.assert_allclose(f32(nl.mean(t, axis=2)), x.mean(axis=2), rtol=1e-6)
    np.testing.assert_allclose(f32(nl.var(t, axis=2)), x.var(axis=2, keepdims=True), rtol=1e-5)
    sm = f32(nl.softmax(t, axis=-1))
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    np.testing.assert_allclose(sm, e / e.sum(axis=-1, keepdims=True), rtol=1e-6)
    cond = tile((x > 0).astype(np.float32))
    np.testing.assert_array_equal(f32(nl.where(cond, t, 0.0)), np.where(x > 0, x, 0))
    c = nl.copy(tile(x, "bfloat16"))
    assert c.dtype == "bfloat16"
    np.testing.assert_array_equal(f32(c), x.astype(ml_dtypes.bfloat16).astype(np.float32))
    flat = tile(x.reshape(4, 15))
    assert nl.sum(flat, axis=1).shape == (4, 1)  # all free axes reduced: still a [P, 1] tile
    with pytest.raises(NkiSimError, match="cannot be reduced"):
        nl.sum(t, axis=0)
