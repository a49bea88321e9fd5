"""nki.isa compute instructions (moegen.sim.isa_compute) against direct NumPy, with dtype rounding, and
every check raising NkiSimError."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest

from moegen.sim import isa_compute as nisa
from moegen.sim import language_ops as nl
from moegen.sim import runtime
from moegen.sim.errors import NkiSimError
from moegen.sim.tensor import MemoryRegion, NkiTensor, allocate

BF16 = ml_dtypes.bfloat16
RNG = np.random.default_rng(0)


def empty(shape, dtype="float32", buffer="sbuf", name="dst") -> NkiTensor:
    """A new tensor (sentinel-filled) through the simulator's allocator (what nl.ndarray does)."""
    return allocate(shape, dtype, buffer=MemoryRegion[buffer], name=name)


def tile(values, dtype="float32", buffer="sbuf", name="t") -> NkiTensor:
    values = np.asarray(values)
    t = empty(values.shape, dtype, buffer, name)
    t.write(values)
    return t


def f32(t) -> np.ndarray:
    return np.asarray(t.read()).astype(np.float32)


def bf16_round(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float32).astype(BF16).astype(np.float32)


@pytest.fixture(autouse=True)
def _fresh_run():
    with runtime.context(target="trn3") as core:
        yield core


# --------------------------------------------------------------------------------------------------
# tensor_copy / memset / tensor_copy_predicated
# --------------------------------------------------------------------------------------------------


def test_tensor_copy_same_dtype_is_bit_exact_and_casts_through_fp32():
    x = RNG.standard_normal((4, 6)).astype(np.float32)
    src = tile(x)
    dst = empty((4, 2, 3))
    nisa.tensor_copy(dst, src)
    np.testing.assert_array_equal(f32(dst).reshape(4, 6), x)
    low = empty((4, 6), "bfloat16")
    nisa.tensor_copy(low, src, engine=nisa.engine.scalar)
    np.testing.assert_array_equal(f32(low), bf16_round(x))
    big = tile(np.array([[2**24 + 1, -7]], dtype=np.int32), "int32")
    same = empty((1, 2), "int32")
    nisa.tensor_copy(same, big)
    assert same.read().tolist() == [[2**24 + 1, -7]]


def test_tensor_copy_records_trace(_fresh_run):
    nisa.tensor_copy(empty((2, 2)), tile(np.ones((2, 2))))
    entry = _fresh_run.run.trace[-1]
    assert (entry["engine"], entry["opcode"]) == ("vector", "tensor_copy")


@pytest.mark.parametrize(
    "make, engine, match",
    [
        (lambda: (empty((2, 4)), tile(np.ones((2, 4)), buffer="hbm")), None, "src must be in SBUF or PSUM"),
        (lambda: (empty((2, 4)), tile(np.ones((3, 4)))), None, "same partition dimension"),
        (lambda: (empty((2, 5)), tile(np.ones((2, 4)))), None, "same number of elements per partition"),
        (lambda: (empty((2, 4)), tile(np.ones((4, 4)))[1:3]), None, "starting at partition 1"),
        (
            lambda: (empty((2, 4), buffer="psum"), tile(np.ones((2, 4)))),
            "gpsimd",
            "GpSimd engine cannot access",
        ),
        (lambda: (empty((2, 4)), tile(np.ones((2, 4)))), "tensor", "engine=tensor is not allowed"),
    ],
)
def test_tensor_copy_checks(make, engine, match):
    dst, src = make()
    kwargs = {} if engine is None else {"engine": nisa.engine[engine]}
    with pytest.raises(NkiSimError, match=match):
        nisa.tensor_copy(dst, src, **kwargs)


def test_engine_must_be_enum_member():
    with pytest.raises(NkiSimError, match="raw values are rejected"):
        nisa.tensor_copy(empty((1, 1)), tile([[1.0]]), engine=5)


def test_memset_fills_and_checks_value_type():
    dst = empty((3, 4), "bfloat16")
    nisa.memset(dst, 1.1)
    np.testing.assert_array_equal(f32(dst), bf16_round(np.full((3, 4), 1.1)))
    ints = empty((2, 2), "int32")
    nisa.memset(ints, -3, engine=nisa.engine.gpsimd)
    assert ints.read().tolist() == [[-3, -3], [-3, -3]]
    with pytest.raises(NkiSimError, match="is a float but dst dtype is int32"):
        nisa.memset(ints, 1.5)
    with pytest.raises(NkiSimError, match="GpSimd engine cannot access"):
        nisa.memset(empty((2, 2), buffer="psum"), 0.0, engine=nisa.engine.gpsimd)


def test_tensor_copy_predicated_keeps_dst_where_false():
    dst = tile(np.zeros((2, 3), np.float32))
    src = tile(np.arange(6, dtype=np.float32).reshape(2, 3))
    pred = tile(np.array([[1, 0, 1], [0, 0, 1]], np.uint8), "uint8")
    nisa.tensor_copy_predicated(dst, src, pred)
    assert f32(dst).tolist() == [[0, 0, 2], [0, 0, 5]]
    nisa.tensor_copy_predicated(dst, 9.0, pred, reverse_pred=True)
    assert f32(dst).tolist() == [[0, 9, 2], [9, 9, 5]]
    with pytest.raises(NkiSimError, match="predicate dtype must be one of"):
        nisa.tensor_copy_predicated(dst, src, tile(np.ones((2, 3)), "float32"))
    with pytest.raises(NkiSimError, match="same dtype"):
        nisa.tensor_copy_predicated(dst, tile(np.ones((2, 3)), "bfloat16"), pred)


# --------------------------------------------------------------------------------------------------
# tensor_tensor / tensor_scalar / scalar_tensor_tensor / reciprocal
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "op, ref",
    [
        (nl.add, np.add),
        (nl.subtract, np.subtract),
        (nl.multiply, np.multiply),
        (nl.maximum, np.maximum),
        (nl.minimum, np.minimum),
        (nl.greater, lambda a, b: (a > b).astype(np.float32)),
        (nl.not_equal, lambda a, b: (a != b).astype(np.float32)),
        (nl.logical_and, lambda a, b: ((a != 0) & (b != 0)).astype(np.float32)),
    ],
)
def test_tensor_tensor_arithmetic_bf16_dst(op, ref):
    a = RNG.standard_normal((8, 16)).astype(np.float32)
    b = RNG.standard_normal((8, 16)).astype(np.float32)
    b[0, :4] = a[0, :4]
    dst = empty((8, 16), "bfloat16")
    nisa.tensor_tensor(dst, tile(a, "bfloat16"), tile(b), op)
    np.testing.assert_array_equal(f32(dst), bf16_round(ref(bf16_round(a), b)))


def test_tensor_tensor_int32_is_exact_on_gpsimd_and_fp32_on_vector(_fresh_run):
    a = tile(np.array([[2**24 + 1, 5]], np.int32), "int32")
    b = tile(np.array([[2, -9]], np.int32), "int32")
    exact = empty((1, 2), "int32")
    nisa.tensor_tensor(exact, a, b, nl.add)
    assert exact.read().tolist() == [[2**24 + 3, -4]]
    assert _fresh_run.run.trace[-1]["engine"] == "gpsimd"
    rounded = empty((1, 2), "int32")
    nisa.tensor_tensor(rounded, a, b, nl.add, engine=nisa.engine.vector)
    assert rounded.read().tolist() == [[int(np.float32(2**24 + 1) + 2), -4]]


def test_tensor_tensor_bitvec_on_bit_patterns():
    a = tile(np.array([[-1, 0x0F0F, 6]], np.int16), "int16")
    b = tile(np.array([[1, 0x00FF, 1]], np.int16), "int16")
    dst = empty((1, 3), "int16")
    nisa.tensor_tensor(dst, a, b, nl.bitwise_and)
    assert dst.read().tolist() == [[1, 0x000F, 0]]
    nisa.tensor_tensor(dst, a, b, nl.right_shift)  # logical: 0xFFFF >> 1 = 0x7FFF
    assert dst.read().tolist() == [[0x7FFF, 0, 3]]  # 0x0F0F >> 255 = 0
    ints = empty((1, 2), "int32")
    nisa.tensor_tensor(ints, tile([[-1, 12]], "int32"), tile([[0x7FFFFFFF, 10]], "int32"), nl.bitwise_xor)
    assert ints.read().tolist() == [[-0x80000000, 6]]
    with pytest.raises(NkiSimError, match="bitvec operators need integer tiles"):
        nisa.tensor_tensor(empty((1, 3)), a, b, nl.bitwise_or)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            lambda: {
                "data1": tile(np.ones((2, 2)), buffer="psum"),
                "data2": tile(np.ones((2, 2)), buffer="psum"),
            },
            "cannot both be in PSUM",
        ),
        (lambda: {"data2": tile(np.ones((2, 3)))}, "same number of elements per partition"),
        (lambda: {"data1": tile(np.ones((2, 2)), buffer="shared_hbm")}, "only DMA instructions access HBM"),
        (lambda: {"op": nl.divide}, "op=divide is not a supported ALU operator"),
        (lambda: {"op": np.add}, "is not a supported ALU operator"),
        (lambda: {"op": nl.abs}, "is unary"),
        (lambda: {"op": nl.power, "dst": empty((2, 2), buffer="psum")}, "GpSimd engine cannot access"),
    ],
)
def test_tensor_tensor_checks(kwargs, match):
    args = {
        "dst": empty((2, 2)),
        "data1": tile(np.ones((2, 2))),
        "data2": tile(np.ones((2, 2))),
        "op": nl.add,
    }
    args.update(kwargs())
    with pytest.raises(NkiSimError, match=match):
        nisa.tensor_tensor(**args)


def test_abs_max_is_trn3_only():
    with runtime.context(target="trn2"):
        with pytest.raises(NkiSimError, match="requires trn3"):
            nisa.tensor_tensor(empty((1, 1)), tile([[1.0]]), tile([[-2.0]]), nl.abs_max)
    dst = empty((1, 1))
    nisa.tensor_tensor(dst, tile([[1.0]]), tile([[-2.0]]), nl.abs_max)
    assert f32(dst).tolist() == [[2.0]]


def test_tensor_scalar_scalar_vector_reverse_and_two_ops():
    x = RNG.standard_normal((4, 8)).astype(np.float32)
    v = RNG.standard_normal((4, 1)).astype(np.float32)
    dst = empty((4, 8), "bfloat16")
    nisa.tensor_scalar(dst, tile(x), nl.subtract, tile(v), reverse0=True, op1=nl.multiply, operand1=3.0)
    np.testing.assert_array_equal(f32(dst), bf16_round((v - x) * np.float32(3.0)))
    nisa.tensor_scalar(dst, tile(x), nl.abs, None, op1=nl.maximum, operand1=0.5)
    np.testing.assert_array_equal(f32(dst), bf16_round(np.maximum(np.abs(x), 0.5)))


def test_tensor_scalar_bitvec_shift():
    dst = empty((1, 2), "uint8")
    nisa.tensor_scalar(dst, tile(np.array([[0x81, 3]], np.uint8), "uint8"), nl.left_shift, 1)
    assert dst.read().tolist() == [[0x02, 6]]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (lambda: {"operand0": tile(np.ones((4, 1)), "bfloat16")}, "operand0 vector must be float32"),
        (lambda: {"operand0": tile(np.ones((4, 2)))}, r"must be a scalar or a \(4, 1\) vector"),
        (lambda: {"op1": None, "operand1": 2.0}, "operand1 must be None when op1 is None"),
        (lambda: {"op0": nl.abs, "operand0": 1.0}, "must be None or 0 for the unary operator"),
        (lambda: {"op1": nl.bitwise_and, "operand1": 1}, "must both be bitvec or both arithmetic"),
        (lambda: {"engine": nisa.engine.gpsimd}, "engine=gpsimd is only allowed for op0=nl.rsqrt"),
    ],
)
def test_tensor_scalar_checks(kwargs, match):
    args = {"dst": empty((4, 8)), "data": tile(np.ones((4, 8))), "op0": nl.multiply, "operand0": 2.0}
    args.update(kwargs())
    with pytest.raises(NkiSimError, match=match):
        nisa.tensor_scalar(**args)


def test_tensor_scalar_scalar_engine_combos_on_trn2():
    with runtime.context(target="trn2"):
        nisa.tensor_scalar(
            empty((1, 2)),
            tile([[1.0, 2.0]]),
            nl.multiply,
            2.0,
            op1=nl.add,
            operand1=1.0,
            engine=nisa.engine.scalar,
        )
        with pytest.raises(NkiSimError, match="Scalar engine on trn2 supports only"):
            nisa.tensor_scalar(empty((1, 2)), tile([[1.0, 2.0]]), nl.maximum, 2.0, engine=nisa.engine.scalar)


def test_scalar_tensor_tensor():
    x = RNG.standard_normal((4, 8)).astype(np.float32)
    y = RNG.standard_normal((4, 8)).astype(np.float32)
    v = RNG.standard_normal((4, 1)).astype(np.float32)
    dst = empty((4, 8))
    nisa.scalar_tensor_tensor(dst, tile(x), nl.multiply, tile(v), nl.subtract, tile(y), reverse1=True)
    np.testing.assert_array_equal(f32(dst), y - x * v)
    with pytest.raises(NkiSimError, match="cannot both be in PSUM"):
        nisa.scalar_tensor_tensor(dst, tile(x, buffer="psum"), nl.add, 1.0, nl.add, tile(y, buffer="psum"))
    with pytest.raises(NkiSimError, match="only arithmetic operators"):
        nisa.scalar_tensor_tensor(dst, tile(x), nl.bitwise_and, 1, nl.add, tile(y))


def test_reciprocal_vector_engine():
    x = np.array([[2.0, -4.0, 1e-20]], np.float32)
    dst = empty((1, 3))
    nisa.reciprocal(dst, tile(x))
    np.testing.assert_array_equal(f32(dst), np.float32(1.0) / x)


# --------------------------------------------------------------------------------------------------
# tensor_reduce / tensor_scalar_reduce
# --------------------------------------------------------------------------------------------------


def test_tensor_reduce_axes_negate_keepdims():
    x = RNG.standard_normal((4, 3, 5)).astype(np.float32)
    dst = empty((4, 3), "bfloat16")
    nisa.tensor_reduce(dst, nl.add, tile(x), axis=2, negate=True)
    np.testing.assert_array_equal(f32(dst), bf16_round(-np.sum(x, axis=2, dtype=np.float32)))
    dst2 = empty((4, 1, 1))
    nisa.tensor_reduce(dst2, nl.maximum, tile(x), axis=(1, 2), keepdims=True)
    np.testing.assert_array_equal(f32(dst2), np.max(x, axis=(1, 2), keepdims=True))
    dst3 = empty((4, 1))
    nisa.tensor_reduce(dst3, nl.max, tile(x), axis=[-2, -1])  # nl.max accepted as the maximum reduction
    np.testing.assert_array_equal(f32(dst3)[:, 0], np.max(x, axis=(1, 2)))


def test_tensor_reduce_bitwise_or():
    x = np.array([[1, 2, 8], [4, 4, 0]], np.int32)
    dst = empty((2, 1), "int32")
    nisa.tensor_reduce(dst, nl.bitwise_or, tile(x, "int32"), axis=1)
    assert dst.read().tolist() == [[11], [4]]


@pytest.mark.parametrize(
    "op, axis, dst_shape, match",
    [
        (nl.add, 0, (4, 1), "axis 0 \\(the partition axis\\) cannot be reduced"),
        (nl.add, 1, (4, 5), "last contiguous free axes"),
        (nl.add, 2, (4, 5), "dst must hold the reduced shape"),
        (nl.greater, 2, (4, 3), "not a legal reduction operator"),
        (nl.exp, 2, (4, 3), "not a supported ALU operator"),
    ],
)
def test_tensor_reduce_checks(op, axis, dst_shape, match):
    with pytest.raises(NkiSimError, match=match):
        nisa.tensor_reduce(empty(dst_shape), op, tile(np.ones((4, 3, 5))), axis=axis)


def test_tensor_reduce_subtract_is_not_implemented():
    with pytest.raises(NotImplementedError, match="subtract"):
        nisa.tensor_reduce(empty((4, 1)), nl.subtract, tile(np.ones((4, 3))), axis=1)


def test_tensor_scalar_reduce_accumulates_across_calls():
    x = RNG.standard_normal((4, 8)).astype(np.float32)
    res = empty((4, 1))
    nisa.tensor_scalar_reduce(empty((4, 8)), tile(x), nl.multiply, 2.0, nl.add, reduce_res=res)
    np.testing.assert_allclose(f32(res)[:, 0], np.sum(2 * x, axis=1), rtol=1e-6)
    nisa.tensor_scalar_reduce(
        empty((4, 8)),
        tile(x),
        nl.add,
        0.0,
        nl.max,
        reduce_res=res,
        reduce_cmd=nisa.reduce_cmd.load_reduce,
        reduce_init=100.0,
        reduce_res_negate=True,
    )
    np.testing.assert_array_equal(f32(res)[:, 0], -np.full(4, 100.0, np.float32))


# --------------------------------------------------------------------------------------------------
# activation / activation_reduce / exponential
# --------------------------------------------------------------------------------------------------

_SQRT2 = math.sqrt(2.0)


def _sig(x):
    return 1.0 / (1.0 + np.exp(-x.astype(np.float64)))


_ACT_REFS = [
    (nl.copy, lambda x: x),
    (nl.exp, np.exp),
    (nl.tanh, np.tanh),
    (nl.sigmoid, _sig),
    (nl.relu, lambda x: np.maximum(x, 0)),
    (nl.silu, lambda x: x * _sig(x)),
    (nl.gelu, lambda x: 0.5 * x * (1 + np.vectorize(math.erf)(x / _SQRT2))),
    (nl.gelu_apprx_tanh, lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))),
    (nl.gelu_apprx_sigmoid, lambda x: x * _sig(1.702 * x)),
    (nl.square, np.square),
    (nl.softplus, lambda x: np.log1p(np.exp(x.astype(np.float64)))),
    (nl.erf, np.vectorize(math.erf)),
    (nl.mish, lambda x: x * np.tanh(np.log1p(np.exp(x.astype(np.float64))))),
    (nl.abs, np.abs),
    (nl.sign, np.sign),
]


@pytest.mark.parametrize("op, ref", _ACT_REFS, ids=[op.__name__ for op, _ in _ACT_REFS])
def test_activation_functions_scale_bias_bf16_dst(op, ref):
    x = RNG.uniform(-4, 4, (8, 32)).astype(np.float32)
    scale = RNG.uniform(0.5, 1.5, (8, 1)).astype(np.float32)
    bias = RNG.uniform(-0.5, 0.5, (8, 1)).astype(np.float32)
    dst = empty((8, 32), "bfloat16")
    nisa.activation(dst, op, tile(x), bias=tile(bias), scale=tile(scale))
    expected = ref((x * scale + bias).astype(np.float32))
    # bf16 output: equal up to one bf16 rounding step of the fp32 result (ours is fp32-accurate)
    np.testing.assert_allclose(f32(dst), bf16_round(expected), rtol=2**-7, atol=1e-6)


def test_activation_input_range_gives_nan():
    dst = empty((1, 3))
    nisa.activation(dst, nl.log, tile([[1.0, 0.0, 2.0**70]]))
    out = f32(dst)
    assert out[0, 0] == 0.0 and np.isnan(out[0, 1]) and np.isnan(out[0, 2])


def test_activation_reduce_registers():
    x = RNG.standard_normal((4, 8)).astype(np.float32)
    res = empty((4, 1))
    nisa.activation(
        empty((4, 8)),
        nl.exp,
        tile(x),
        reduce_op=nl.add,
        reduce_res=res,
        reduce_cmd=nisa.reduce_cmd.reset_reduce,
    )
    np.testing.assert_allclose(f32(res)[:, 0], np.exp(x).sum(axis=1), rtol=1e-6)
    nisa.activation(
        empty((4, 8)),
        nl.copy,
        tile(x),
        scale=2.0,
        bias=1.0,
        reduce_op=nl.add,
        reduce_cmd=nisa.reduce_cmd.reduce,
    )
    nisa.activation(empty((4, 8)), nl.copy, tile(x), reduce_res=res)  # idle: read out only
    np.testing.assert_allclose(f32(res)[:, 0], np.exp(x).sum(1) + (2 * x + 1).sum(1), rtol=1e-5)
    with pytest.raises(NkiSimError, match="reduce_op must be nl.add"):
        nisa.activation(
            empty((4, 8)),
            nl.exp,
            tile(x),
            reduce_op=nl.maximum,
            reduce_res=res,
            reduce_cmd=nisa.reduce_cmd.reset_reduce,
        )


def test_activation_reduce_legacy_form():
    x = RNG.standard_normal((4, 8)).astype(np.float32)
    res = empty((4, 1))
    nisa.activation_reduce(empty((4, 8)), nl.square, tile(x), nl.add, res)
    np.testing.assert_allclose(f32(res)[:, 0], (x * x).sum(axis=1), rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (lambda: {"op": nl.add}, "op=add is not a supported activation function"),
        (lambda: {"op": nl.softmax}, "is not a supported activation function"),
        (lambda: {"data": tile(np.ones((4, 8)), buffer="hbm")}, "data must be in SBUF or PSUM"),
        (lambda: {"dst": empty((4, 7))}, "same number of elements per partition"),
        (lambda: {"scale": tile(np.ones((4, 1)), "bfloat16")}, "scale vector must be float32"),
        (lambda: {"bias": tile(np.ones((4, 2)))}, r"bias must be a scalar or a \(4, 1\) vector"),
    ],
)
def test_activation_checks(kwargs, match):
    args = {"dst": empty((4, 8)), "op": nl.exp, "data": tile(np.ones((4, 8)))}
    args.update(kwargs())
    with pytest.raises(NkiSimError, match=match):
        nisa.activation(**args)


def test_exponential_trn3_with_running_sum():
    x = RNG.standard_normal((4, 8)).astype(np.float32)
    m = np.max(x, axis=1, keepdims=True)
    dst, res = empty((4, 8)), empty((4, 1))
    nisa.exponential(dst, tile(x), max_value=tile(m), reduce_res=res, reduce_cmd=nisa.reduce_cmd.reset_reduce)
    np.testing.assert_allclose(f32(dst), np.exp(x - m), rtol=1e-6)
    np.testing.assert_allclose(f32(res)[:, 0], np.exp(x - m).sum(1), rtol=1e-6)
    with runtime.context(target="trn2"):
        with pytest.raises(NkiSimError, match="requires trn3"):
            nisa.exponential(dst, tile(x))


# --------------------------------------------------------------------------------------------------
# iota / affine_select / select_reduce / range_select
# --------------------------------------------------------------------------------------------------


def test_iota_pattern_and_channel_multiplier():
    dst = empty((3, 2, 4), "int32")
    nisa.iota(dst, [[10, 2], [1, 4]], offset=5, channel_multiplier=100)
    p, w, x = np.indices((3, 2, 4))
    np.testing.assert_array_equal(dst.read(), 5 + 100 * p + 10 * w + x)
    fdst = empty((2, 3), "bfloat16")
    nisa.iota(fdst, [[1, 3]], offset=255)
    np.testing.assert_array_equal(f32(fdst), bf16_round(255 + np.indices((2, 3))[1]))
    with pytest.raises(NkiSimError, match="generates 6 elements per partition but dst holds 8"):
        nisa.iota(empty((2, 8)), [[1, 6]])
    with pytest.raises(NkiSimError, match="dst must be in SBUF"):
        nisa.iota(empty((2, 6), buffer="psum"), [[1, 6]])


def test_affine_select_causal_mask():
    x = RNG.standard_normal((4, 4)).astype(np.float32)
    dst = empty((4, 4), "bfloat16")
    # keep where p - j >= 0 (lower triangle)
    nisa.affine_select(dst, [[-1, 4]], 1, tile(x), -1e9, cmp_op=nl.greater_equal)
    p, j = np.indices((4, 4))
    np.testing.assert_array_equal(f32(dst), bf16_round(np.where(p - j >= 0, x, -1e9)))
    with pytest.raises(NkiSimError, match="cmp_op must be a comparison"):
        nisa.affine_select(dst, [[-1, 4]], 1, tile(x), 0.0, cmp_op=nl.add)


def test_select_reduce_max():
    x = RNG.standard_normal((4, 6)).astype(np.float32)
    pred = (RNG.random((4, 6)) > 0.5).astype(np.uint8)
    dst, res = empty((4, 6)), empty((4, 1))
    nisa.select_reduce(dst, tile(pred, "uint8"), tile(x), -5.0, reduce_res=res, reduce_cmd=nisa.reduce_cmd.reset_reduce)
    expected = np.where(pred != 0, x, -5.0)
    np.testing.assert_array_equal(f32(dst), expected)
    np.testing.assert_array_equal(f32(res)[:, 0], expected.max(axis=1))
    with pytest.raises(NkiSimError, match="reads an undefined accumulator"):
        nisa.select_reduce(dst, tile(pred, "uint8"), tile(x), -5.0, reduce_res=res)
    with pytest.raises(NkiSimError, match="on_true dtype cannot be"):
        nisa.select_reduce(empty((4, 6), "int32"), tile(pred, "uint8"), tile(x, "int32"), 0.0)


def test_range_select():
    x = RNG.standard_normal((2, 8)).astype(np.float32)
    lo, hi = np.array([[2.0], [0.0]], np.float32), np.array([[5.0], [3.0]], np.float32)
    dst, res = empty((2, 8)), empty((2, 1))
    nisa.range_select(dst, tile(x), nl.greater_equal, nl.less, tile(lo), tile(hi), reduce_res=res, range_start=1)
    j = 1 + np.arange(8)
    keep = (j >= lo) & (j < hi)
    expected = np.where(keep, x, np.finfo(np.float32).min)
    np.testing.assert_array_equal(f32(dst), expected)
    np.testing.assert_array_equal(f32(res)[:, 0], expected.max(axis=1))
    with pytest.raises(NkiSimError, match="on_false_value must be FP32_MIN"):
        nisa.range_select(dst, tile(x), nl.equal, nl.equal, tile(lo), tile(hi), on_false_value=0.0)


# --------------------------------------------------------------------------------------------------
# max8 / nc_find_index8 / nc_match_replace8 (documented tie behaviour)
# --------------------------------------------------------------------------------------------------


def test_max8_descending_with_ties():
    x = np.array([[1, 5, 3, 5, 2, 9, 0, 7, 5, 4]], np.float32)
    dst = empty((1, 8))
    nisa.max8(dst, tile(x))
    assert f32(dst).tolist() == [[9, 7, 5, 5, 5, 4, 3, 2]]
    big = RNG.standard_normal((16, 4, 64)).astype(np.float32)
    out = empty((16, 8), "bfloat16")
    nisa.max8(out, tile(big, "bfloat16"))
    ref = -np.sort(-bf16_round(big).reshape(16, -1), axis=1)[:, :8]
    np.testing.assert_array_equal(f32(out), ref)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: (tile(np.ones((2, 7))), empty((2, 8))), "8 to 16384 elements per partition"),
        (lambda: (tile(np.ones((2, 8))), empty((2, 4))), r"dst must have shape \(2, 8\)"),
        (lambda: (tile(np.ones((2, 2, 2, 2))), empty((2, 8))), "at most 3 dimensions"),
        (lambda: (tile(np.ones((2, 8)), buffer="hbm"), empty((2, 8))), "src must be in SBUF or PSUM"),
    ],
)
def test_max8_checks(make, match):
    src, dst = make()
    with pytest.raises(NkiSimError, match=match):
        nisa.max8(dst, src)


def test_nc_find_index8_first_occurrence_duplicates_ascending_and_misses():
    data = np.array([[3, 8, 1, 8, 8, 2, 7, 6, 0, 8]], np.float32)
    vals = np.array([[8, 3, 8, 42, 6, 8, 8, 8]], np.float32)
    dst = empty((1, 8), "uint32")
    nisa.nc_find_index8(dst, tile(data), tile(vals))
    miss = 0xFFFFFFFF
    assert dst.read().tolist() == [[1, 0, 3, miss, 7, 4, 9, miss]]
    small = empty((1, 8), "uint16")
    nisa.nc_find_index8(small, tile(data), tile(vals))
    assert small.read().tolist()[0][3] == 0xFFFF
    with pytest.raises(NkiSimError, match="dst dtype must be one of uint32, uint16"):
        nisa.nc_find_index8(empty((1, 8), "int32"), tile(data), tile(vals))


@pytest.mark.parametrize(
    "call, param",
    [
        (lambda d, v: nisa.max8(empty((1, 8)), d), "src"),
        (lambda d, v: nisa.nc_find_index8(empty((1, 8), "uint32"), d, v), "data"),
        (lambda d, v: nisa.nc_match_replace8(empty((1, 10)), d, v, imm=0.0), "data"),
    ],
    ids=["max8", "nc_find_index8", "nc_match_replace8"],
)
def test_top8_instructions_refuse_nan(call, param):
    """The nki.isa.max8, nc_find_index8 and nc_match_replace8 pages say the values are compared in fp32
    and define duplicates and misses, but not how NaN is ordered or matched: a NaN operand is refused
    (it used to rank highest in max8 and never match in nc_find_index8, which is how a NaN router row
    came out as expert 2147483647), naming the operand and the first NaN."""
    data = np.array([[3, 8, 1, np.nan, 8, 2, 7, 6, 0, 8]], np.float32)
    vals = np.full((1, 8), 8.0, np.float32)
    with pytest.raises(NkiSimError, match=rf"{param} holds NaN \(partition 0, element 3; 1 in all\)"):
        call(tile(data), tile(vals))
    clean = np.nan_to_num(data, nan=-np.inf)  # -inf is an ordinary value
    with pytest.raises(NkiSimError, match=r"vals holds NaN"):
        nisa.nc_find_index8(empty((1, 8), "uint32"), tile(clean), tile(np.full((1, 8), np.nan, np.float32)))


def test_nc_match_replace8_documented_duplicate_example():
    data = np.array([[1, 2, 3, 4, 8, 8, 8, 8, 8, 8, 8]], np.float32)
    vals = np.array([[3, 8, 8, 8, 8, 8, 8, 8]], np.float32)
    dst, idx = empty((1, 11)), empty((1, 8), "uint32")
    nisa.nc_match_replace8(dst, tile(data), tile(vals), -np.inf, dst_idx=idx)
    assert idx.read().tolist() == [[2, 10, 9, 8, 7, 6, 5, 4]]
    assert f32(dst).tolist() == [[1, 2, -np.inf, 4] + [-np.inf] * 7]


def test_topk_loop_max8_match_replace8():
    """Top-16 per row: max8, replace by -inf, max8 again; indices via nc_find_index8 on the original."""
    x = RNG.permutation(64).astype(np.float32).reshape(1, 64) - 20
    work = tile(x)
    top = []
    for _ in range(2):
        m = empty((1, 8))
        nisa.max8(m, work)
        top.append(f32(m))
        nxt = empty((1, 64))
        nisa.nc_match_replace8(nxt, work, m, -np.inf)
        work = nxt
    np.testing.assert_array_equal(np.concatenate(top, axis=1)[0], np.sort(x[0])[::-1][:16])


# --------------------------------------------------------------------------------------------------
# nc_stream_shuffle / local_gather / nc_n_gather
# --------------------------------------------------------------------------------------------------


def test_nc_stream_shuffle_per_quadrant_and_255_keeps():
    x = np.arange(64 * 3, dtype=np.float32).reshape(64, 3)
    mask = [(i + 1) % 32 for i in range(32)]
    mask[5] = 255
    dst = tile(np.full((64, 3), -1.0, np.float32))
    nisa.nc_stream_shuffle(dst, tile(x), mask)
    p = np.arange(64)
    source = (p // 32) * 32 + (p + 1) % 32
    expected = x[source]
    expected[[5, 37]] = -1.0
    np.testing.assert_array_equal(f32(dst), expected)
    with pytest.raises(NkiSimError, match="32 entries"):
        nisa.nc_stream_shuffle(dst, tile(x), [0] * 31)
    with pytest.raises(NkiSimError, match="same dtype"):
        nisa.nc_stream_shuffle(dst, tile(x, "bfloat16"), mask)


def test_local_gather_documented_numpy_semantics():
    src = RNG.random((32, 64, 4)).astype(np.float32)
    per_core = RNG.integers(0, 64, (16, 2)).astype(np.uint16)
    index = np.tile(per_core, (2, 1))
    num_elem, valid = 4, 20
    dst = empty((32, valid, num_elem))
    nisa.local_gather(
        dst, tile(src), tile(index * num_elem, "uint16"), num_elem_per_idx=num_elem, num_valid_indices=valid
    )
    expected = np.empty((32, valid, num_elem), np.float32)
    for core in range(2):
        rows = slice(16 * core, 16 * core + 16)
        flat = index[rows].flatten(order="F")[:valid]
        expected[rows] = np.take(src[rows], flat, axis=1)
    np.testing.assert_array_equal(f32(dst), expected)
    with pytest.raises(NkiSimError, match="multiple of 16"):
        nisa.local_gather(empty((8, 4)), tile(np.ones((8, 4))), tile(np.zeros((8, 1)), "uint16"))
    with pytest.raises(NkiSimError, match="reads beyond src_buffer"):
        nisa.local_gather(empty((16, 16)), tile(np.ones((16, 4))), tile(np.full((16, 1), 9), "uint16"))


def test_nonzero_with_count_documented_example_and_untouched_partitions():
    src = np.zeros((32, 8), np.float32)
    src[0] = [0, 1, 1, 0, 0, 1, 0, 0]
    src[16] = [2, 0, 0, 0, 0, 0, 0, 3]
    src[5] = 1.0  # not a core's first partition: ignored
    dst = tile(np.full((32, 9), 7, np.int32), "int32")
    nisa.nonzero_with_count(dst, tile(src), index_offset=16, padding_val=-1)
    out = dst.read()
    assert out[0].tolist() == [17, 18, 21, -1, -1, -1, -1, -1, 3]
    assert out[16].tolist() == [16, 23, -1, -1, -1, -1, -1, -1, 2]
    assert (np.delete(out, [0, 16], axis=0) == 7).all()
    with pytest.raises(NkiSimError, match="one more element per partition"):
        nisa.nonzero_with_count(empty((32, 8), "int32"), tile(src))


def test_nc_n_gather():
    data = RNG.standard_normal((4, 2, 5)).astype(np.float32)
    idx = RNG.integers(0, 10, (4, 3)).astype(np.uint32)
    dst = empty((4, 3))
    nisa.nc_n_gather(dst, tile(data), tile(idx, "uint32"))
    np.testing.assert_array_equal(f32(dst), np.take_along_axis(data.reshape(4, 10), idx.astype(np.int64), axis=1))


def test_isa_namespace_exports_compute_and_stubs_the_rest():
    from moegen.sim import isa

    for name in nisa.__all__:
        assert getattr(isa, name) is getattr(nisa, name), name
    with pytest.raises(NotImplementedError, match="nki.isa.topk"):
        isa.topk(empty((16, 8), "bfloat16"), empty((16, 8), "uint32"), empty((16, 8), "bfloat16"), 128)


# --------------------------------------------------------------------------------------------------
# scans and activate2
# --------------------------------------------------------------------------------------------------


def test_tensor_tensor_scan_matches_the_documented_recurrence():
    a = RNG.uniform(0.5, 1.0, (4, 6)).astype(np.float32)
    b = RNG.standard_normal((4, 6)).astype(np.float32)
    init = RNG.standard_normal((4, 1)).astype(np.float32)
    dst = empty((4, 6))
    nisa.tensor_tensor_scan(dst, tile(a), tile(b), tile(init), nl.multiply, nl.add)
    expected = np.empty_like(a)
    prev = init[:, 0]
    for i in range(6):
        prev = a[:, i] * prev + b[:, i]
        expected[:, i] = prev
    np.testing.assert_array_equal(f32(dst), expected)
    nisa.tensor_tensor_scan(dst, tile(a), tile(b), 0.0, nl.add, nl.subtract, reverse1=True)
    prev, expected = np.zeros(4, np.float32), np.empty_like(a)
    for i in range(6):
        prev = b[:, i] - (a[:, i] + prev)
        expected[:, i] = prev
    np.testing.assert_array_equal(f32(dst), expected)


def test_tensor_scalar_cumulative_running_sum_and_continue():
    x = RNG.standard_normal((4, 5)).astype(np.float32)
    dst = empty((4, 5))
    nisa.tensor_scalar_cumulative(dst, tile(x), nl.multiply, nl.add, 2.0)
    np.testing.assert_allclose(f32(dst), np.cumsum(2 * x, axis=1), rtol=1e-6)
    nisa.tensor_scalar_cumulative(dst, tile(x), nl.add, nl.maximum, 0.0, reduce_cmd=nisa.reduce_cmd.reduce)
    expected = np.maximum.accumulate(np.concatenate([np.sum(2 * x, axis=1, keepdims=True), x], axis=1), axis=1)
    np.testing.assert_allclose(f32(dst), expected[:, 1:], rtol=1e-6)
    with pytest.raises(NkiSimError, match="no int32/uint32 I/O"):
        nisa.tensor_scalar_cumulative(empty((4, 5), "int32"), tile(x), nl.add, nl.add, 0.0)


def test_activate2_prelu_and_max_reduction():
    x = RNG.standard_normal((4, 8)).astype(np.float32)
    dst, res = empty((4, 8)), empty((4, 1))
    nisa.activate2(
        dst,
        nl.prelu,
        tile(x),
        2.0,
        0.5,
        nl.multiply,
        nl.subtract,
        relu_param=0.1,
        reduce_op=nl.maximum,
        reduce_res=res,
        reduce_cmd=nisa.reduce_cmd.reset_reduce,
    )
    y = x * np.float32(2.0) - np.float32(0.5)
    expected = np.where(y > 0, y, y * np.float32(0.1))
    np.testing.assert_array_equal(f32(dst), expected)
    np.testing.assert_array_equal(f32(res)[:, 0], expected.max(axis=1))
    nisa.activate2(dst, nl.exp, tile(x), 0.0, 0.0, nl.bypass, nl.bypass)
    np.testing.assert_allclose(f32(dst), np.exp(x), rtol=1e-6)
    with pytest.raises(NkiSimError, match="is not supported"):
        nisa.activate2(dst, nl.exp, tile(x), 1.0, 1.0, nl.add, nl.add)
    with runtime.context(target="trn2"):
        with pytest.raises(NkiSimError, match="requires trn3"):
            nisa.activate2(empty((4, 8)), nl.exp, tile(x), 1.0, 0.0, nl.multiply, nl.bypass)
