"""SIM AUDIT: Vector / Scalar / GpSimd instructions of moegen.sim against the official NKI docs.

Independent audit (see /work/main/docs/sim_audit.md). Each test states one documented fact and its page:
the API pages are the docstrings of the NKI 0.6 stub `nki/api/nki/isa/__init__.py`
(aws-neuron/aws-neuron-sdk; rendered .../nki/api/generated/nki.isa.<name>.html); "Arch guide" is
nki/guides/architecture/trainium_inferentia2_arch.rst ("Trainium/Inferentia2 Architecture Guide for
NKI"). xfail(strict=True) marks a discrepancy. Instructions are called directly in a
`moegen.sim.context(target=...)` run.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from moegen.sim import NkiSimError, context
from moegen.sim import isa as nisa
from moegen.sim import language as nl

RNG = np.random.default_rng(77)
BF16 = ml_dtypes.bfloat16


@pytest.fixture(autouse=True)
def trn2():
    with context(target="trn2") as c:
        yield c


def sb(x, dtype, buffer=None):
    x = np.asarray(x)
    t = nl.ndarray(x.shape, dtype, buffer=buffer or nl.sbuf)
    t.write(x)
    return t


def ps(x, dtype=None):
    return sb(x, dtype or nl.float32, nl.psum)


def out(shape, dtype=None, buffer=None):
    return nl.ndarray(shape, dtype or nl.float32, buffer=buffer or nl.sbuf)


def f32(t):
    return np.asarray(t.read()).astype(np.float32)


X = np.linspace(-4, 4, 32, dtype=np.float32).reshape(4, 8)


# ------------------------------------------------------------------------------------------------
# partition rules (arch guide)
# ------------------------------------------------------------------------------------------------
def test_partition_start_rules():
    """Arch guide, 'Accessing SBUF/PSUM tensors using compute engines': no P striding; 64 <
    num_partition <= 128 must start at 0, 32 < n <= 64 at 0 or 64, n <= 32 at 0/32/64/96."""
    t = sb(np.ones((128, 4)), nl.float32)
    nisa.tensor_copy(out((32, 4)), t[96:128, :])
    nisa.tensor_copy(out((64, 4)), t[64:128, :])
    for bad in (t[16:32, :], t[32:96, :], t[1:128, :], t[0:128:2, :]):
        with pytest.raises(NkiSimError):
            nisa.tensor_copy(out((bad.shape[0], 4)), bad)


# ------------------------------------------------------------------------------------------------
# activation (ScalarE)
# ------------------------------------------------------------------------------------------------
def test_activation_computes_op_of_data_times_scale_plus_bias():
    """nki.isa.activation: 'output = op(data * scale + bias)'; scale/bias [N, 1] vectors broadcast
    along the free dim; math in fp32."""
    scale = np.array([[0.5], [-1.0], [2.0], [0.25]], np.float32)
    bias = np.array([[1.0], [2.0], [-3.0], [0.0]], np.float32)
    d = out((4, 8))
    nisa.activation(d, nl.exp, sb(X, nl.float32), bias=sb(bias, nl.float32), scale=sb(scale, nl.float32))
    np.testing.assert_allclose(d.read(), np.exp(X * scale + bias), rtol=1e-6)


def test_activation_scalar_bias_allowed_on_trn2():
    """nki.isa.activation (Layout): 'starting NeuronCore-v3, bias can either be a compile-time constant
    scalar or a [N, 1] vector' -- trn2 is NeuronCore-v3 (expert_mlp.j2 passes a Python float)."""
    d = out((4, 8))
    nisa.activation(d, nl.copy, sb(X, nl.float32), bias=1.0, scale=2.0)
    np.testing.assert_allclose(d.read(), X * 2 + 1, rtol=1e-6)


@pytest.mark.parametrize(
    "op, ref",
    [
        ("silu", lambda x: x / (1 + np.exp(-x))),
        ("sigmoid", lambda x: 1 / (1 + np.exp(-x))),
        ("relu", lambda x: np.maximum(x, 0)),
        ("gelu_apprx_tanh", lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))),
        ("gelu_apprx_sigmoid", lambda x: x * (1 / (1 + np.exp(-1.702 * x)))),
        ("square", lambda x: x * x),
        ("tanh", np.tanh),
        ("copy", lambda x: x),
        ("gelu", lambda x: 0.5 * x * (1 + np.vectorize(__import__("math").erf)(x / np.sqrt(2)))),
        ("softplus", lambda x: np.log1p(np.exp(x))),
        ("erf", np.vectorize(__import__("math").erf)),
    ],
)
def test_activation_functions(op, ref):
    """NKI activation function table (nki.api.shared, 'nki-act-func'): silu, sigmoid, relu,
    gelu_apprx_tanh, gelu_apprx_sigmoid (x*sigmoid(1.702x)), square, tanh, copy (identity)."""
    d = out((4, 8))
    nisa.activation(d, getattr(nl, op), sb(X, nl.float32))
    np.testing.assert_allclose(d.read(), ref(X.astype(np.float64)), rtol=1e-5, atol=1e-6)


def test_activation_scale_must_be_fp32():
    """nki.isa.activation (Data types): 'The scale parameter must have a float32 data type'."""
    with pytest.raises(NkiSimError):
        nisa.activation(out((4, 8)), nl.copy, sb(X, nl.float32), scale=sb(np.ones((4, 1)), nl.bfloat16))


def test_activation_bias_not_tfloat32():
    """nki.isa.activation: 'the bias parameter can be any supported dtype except tfloat32'; a bf16
    bias vector is legal."""
    nisa.activation(out((4, 8)), nl.copy, sb(X, nl.float32), bias=sb(np.ones((4, 1)), nl.bfloat16))
    with pytest.raises(NkiSimError):
        nisa.activation(out((4, 8)), nl.copy, sb(X, nl.float32), bias=sb(np.ones((4, 1)), nl.tfloat32))


def test_activation_vector_operands_are_N_by_1():
    """nki.isa.activation (Layout): scale/bias vector is '[N, 1] ... N must be the same as the
    partition dimension size of data'."""
    with pytest.raises(NkiSimError):
        nisa.activation(out((4, 8)), nl.copy, sb(X, nl.float32), bias=sb(np.ones((4, 2)), nl.float32))
    with pytest.raises(NkiSimError):
        nisa.activation(out((4, 8)), nl.copy, sb(X, nl.float32), scale=sb(np.ones((2, 1)), nl.float32))


def test_activation_same_partitions_and_elements():
    """nki.isa.activation (Tile size): data and dst have the same partition size and the same number
    of elements per partition (shapes may differ)."""
    nisa.activation(out((4, 2, 4)), nl.copy, sb(X, nl.float32))
    with pytest.raises(NkiSimError):
        nisa.activation(out((2, 16)), nl.copy, sb(X, nl.float32))
    with pytest.raises(NkiSimError):
        nisa.activation(out((4, 9)), nl.copy, sb(X, nl.float32))


def test_activation_psum_in_and_out():
    """nki.isa.activation (Memory types): data may be SBUF or PSUM; dst may be SBUF or PSUM."""
    d = out((4, 8), buffer=nl.psum)
    nisa.activation(d, nl.copy, ps(X), scale=3.0)
    np.testing.assert_allclose(d.read(), 3 * X, rtol=1e-6)


def test_activation_reduce_must_be_add():
    """nki.isa.activation: 'reduce_op must be nl.add'."""
    with pytest.raises(NkiSimError):
        nisa.activation(
            out((4, 8)),
            nl.copy,
            sb(X, nl.float32),
            reduce_op=nl.maximum,
            reduce_res=out((4, 1)),
            reduce_cmd=nisa.reduce_cmd.reset_reduce,
        )


def test_activation_reduce_cmd_register_semantics():
    """nki.isa.activation: reset zeroes reduce_regs only; idle leaves them; reduce accumulates the
    free-dim sum of the activated data; reset_reduce zeroes then stores; reduce_res reads the regs;
    the state persists across activation instructions (router softmax: exp + row sum)."""
    data = sb(X, nl.float32)
    res = out((4, 1))
    s = X.sum(axis=1, keepdims=True)
    nisa.activation(out((4, 8)), nl.copy, data, reduce_op=nl.add, reduce_cmd=nisa.reduce_cmd.reset_reduce)
    nisa.activation(out((4, 8)), nl.copy, data, reduce_op=nl.add, reduce_cmd=nisa.reduce_cmd.reduce, reduce_res=res)
    np.testing.assert_allclose(res.read(), 2 * s, rtol=1e-5, atol=1e-5)
    nisa.activation(out((4, 8)), nl.copy, data, reduce_op=nl.add, reduce_cmd=nisa.reduce_cmd.idle, reduce_res=res)
    np.testing.assert_allclose(res.read(), 2 * s, rtol=1e-5, atol=1e-5)
    nisa.activation(out((4, 8)), nl.copy, data, reduce_op=nl.add, reduce_cmd=nisa.reduce_cmd.reset, reduce_res=res)
    np.testing.assert_array_equal(res.read(), np.zeros((4, 1), np.float32))


def test_activation_reduce_softmax_row_sum():
    """Router template: activation(op=nl.exp, bias=neg_max, reduce_op=nl.add,
    reduce_cmd=reset_reduce, reduce_res=...) gives exp(x - max) and its row sum in one instruction."""
    data = sb(X, nl.float32)
    neg_max = out((4, 1))
    nisa.tensor_reduce(neg_max, nl.maximum, data, axis=1, negate=True)
    e, ssum = out((4, 8)), out((4, 1))
    nisa.activation(
        e,
        nl.exp,
        data,
        bias=neg_max,
        scale=1.0,
        reduce_op=nl.add,
        reduce_cmd=nisa.reduce_cmd.reset_reduce,
        reduce_res=ssum,
    )
    ref = np.exp(X - X.max(1, keepdims=True))
    np.testing.assert_allclose(e.read(), ref, rtol=1e-6)
    np.testing.assert_allclose(ssum.read(), ref.sum(1, keepdims=True), rtol=1e-5)


def test_activation_result_rounded_to_dst_dtype():
    """nki.isa.activation (Data types): math in fp32, 'casting the float32 math results into another
    output data type in dst' (bf16: round to nearest even)."""
    d = out((4, 8), nl.bfloat16)
    nisa.activation(d, nl.exp, sb(X, nl.float32))
    np.testing.assert_array_equal(f32(d), np.exp(X).astype(BF16).astype(np.float32))


# ------------------------------------------------------------------------------------------------
# tensor_tensor / tensor_scalar / scalar_tensor_tensor
# ------------------------------------------------------------------------------------------------
def test_tensor_tensor_elementwise_fp32_math():
    """nki.isa.tensor_tensor: element-wise op; float inputs cast to fp32, result cast to dst.dtype;
    same partitions and same elements per partition (shapes may differ)."""
    a = RNG.standard_normal((4, 8)).astype(np.float32)
    b = RNG.standard_normal((4, 2, 4)).astype(np.float32)
    d = out((4, 8), nl.bfloat16)
    nisa.tensor_tensor(d, sb(a, nl.bfloat16), sb(b, nl.float32), nl.subtract)
    ref = (a.astype(BF16).astype(np.float32) - b.reshape(4, 8)).astype(BF16).astype(np.float32)
    np.testing.assert_array_equal(f32(d), ref)


def test_tensor_tensor_does_not_broadcast():
    """nki.isa.tensor_tensor: 'The two tiles must have the same partition axis size and the same
    number of elements per partition' (use tensor_scalar to broadcast)."""
    with pytest.raises(NkiSimError):
        nisa.tensor_tensor(out((4, 8)), sb(X, nl.float32), sb(np.ones((4, 1)), nl.float32), nl.add)


def test_tensor_tensor_not_both_psum():
    """nki.isa.tensor_tensor: 'the two input tiles, data1 and data2 cannot both reside in PSUM';
    one PSUM input is legal, dst may be PSUM."""
    nisa.tensor_tensor(out((4, 8), buffer=nl.psum), ps(X), sb(X, nl.float32), nl.add)
    with pytest.raises(NkiSimError):
        nisa.tensor_tensor(out((4, 8)), ps(X), ps(X), nl.add)


def test_tensor_tensor_int32_is_exact_on_gpsimd():
    """nki.isa.tensor_tensor: 'When all input/output tiles are int32 or uint32, the operation
    defaults to GpSimd Engine, which uses native integer arithmetic' (exact above 2^24)."""
    big = np.full((2, 4), 2**24 + 1, np.int32)
    d = out((2, 4), nl.int32)
    nisa.tensor_tensor(d, sb(big, nl.int32), sb(np.ones((2, 4), np.int32), nl.int32), nl.add)
    assert (d.read() == 2**24 + 2).all()


def test_tensor_tensor_int32_explicit_vector_goes_through_fp32():
    """nki.isa.tensor_tensor: int32 exact by default, 'You may override this by passing
    engine=nki.isa.engine.vector' -- then arithmetic is fp32 math (2^24 + 1 not representable)."""
    big = np.full((2, 4), 2**24 + 1, np.int32)
    d = out((2, 4), nl.int32)
    nisa.tensor_tensor(
        d, sb(big, nl.int32), sb(np.zeros((2, 4), np.int32), nl.int32), nl.add, engine=nisa.engine.vector
    )
    assert (d.read() == 2**24).all()


def test_tensor_tensor_power_cannot_touch_psum():
    """nki.isa.tensor_tensor: nl.power runs on GpSimd, 'the input/output tiles cannot be in PSUM if op
    is nl.power'."""
    with pytest.raises(NkiSimError):
        nisa.tensor_tensor(out((4, 8)), ps(X), sb(X, nl.float32), nl.power)


def test_tensor_scalar_two_ops_and_reverse():
    """nki.isa.tensor_scalar: '(data <op0> operand0) <op1> operand1'; reverse0: 'operand0 <op0> data';
    reverse1: 'operand1 <op1> tmp_res'."""
    d = out((4, 8))
    nisa.tensor_scalar(d, sb(X, nl.float32), nl.subtract, 10.0, reverse0=True, op1=nl.multiply, operand1=3.0)
    np.testing.assert_allclose(d.read(), (10 - X) * 3, rtol=1e-6)
    nisa.tensor_scalar(d, sb(X, nl.float32), nl.add, 1.0, op1=nl.subtract, operand1=2.0, reverse1=True)
    np.testing.assert_allclose(d.read(), 2 - (X + 1), rtol=1e-6)


def test_tensor_scalar_vector_operand_broadcasts_per_partition():
    """nki.isa.tensor_scalar: operands can be 'SBUF or PSUM tiles of shape (data.shape[0], 1)'
    broadcast along the free dimension (topk.j2: op1=nl.add, operand1=values[:, i:i + 1])."""
    v = np.array([[1.0], [2.0], [3.0], [4.0]], np.float32)
    d = out((4, 8))
    nisa.tensor_scalar(d, sb(X, nl.float32), nl.multiply, 0.0, op1=nl.add, operand1=sb(v, nl.float32))
    np.testing.assert_array_equal(d.read(), np.broadcast_to(v, (4, 8)))
    nisa.tensor_scalar(d, sb(X, nl.float32), nl.multiply, ps(v))
    np.testing.assert_allclose(d.read(), X * v, rtol=1e-6)


def test_tensor_scalar_equal_gives_one_zero():
    """nki.isa.tensor_scalar with nl.equal (topk.j2 one-hot: iota == column): comparison results are
    1 / 0 in the output dtype (nki.api.shared arithmetic-op table)."""
    io = out((2, 8))
    nisa.iota(io, [[1, 8]], offset=0, channel_multiplier=0)
    col = sb(np.array([[3.0], [6.0]], np.float32), nl.float32)
    d = out((2, 8))
    nisa.tensor_scalar(d, io, nl.equal, col)
    ref = np.zeros((2, 8), np.float32)
    ref[0, 3] = ref[1, 6] = 1
    np.testing.assert_array_equal(d.read(), ref)


def test_tensor_scalar_operands_must_be_fp32():
    """nki.isa.tensor_scalar: 'the operand0 and operand1 (if used) must be float32'."""
    with pytest.raises(NkiSimError):
        nisa.tensor_scalar(out((4, 8)), sb(X, nl.float32), nl.add, sb(np.ones((4, 1)), nl.bfloat16))


def test_tensor_scalar_operand_shape_P_by_1():
    """nki.isa.tensor_scalar: operand is 'a scalar constant or a tile of shape (data.shape[0], 1)'."""
    with pytest.raises(NkiSimError):
        nisa.tensor_scalar(out((4, 8)), sb(X, nl.float32), nl.add, sb(np.ones((4, 2)), nl.float32))


def test_tensor_scalar_op1_none_requires_operand1_none():
    """nki.isa.tensor_scalar: 'op1 and operand1 are optional, but must be None (default values) when
    unused'."""
    with pytest.raises(NkiSimError):
        nisa.tensor_scalar(out((4, 8)), sb(X, nl.float32), nl.add, 1.0, operand1=2.0)


def test_tensor_scalar_ops_same_kind():
    """nki.isa.tensor_scalar: 'op0 and op1 ... must be of the same type (both bitvec or both
    arithmetic)'; bitvec ops need integer dtypes and treat data as bit patterns."""
    ints = sb(np.arange(8, dtype=np.int32).reshape(2, 4), nl.int32)
    with pytest.raises(NkiSimError):
        nisa.tensor_scalar(out((2, 4), nl.int32), ints, nl.bitwise_and, 1, op1=nl.add, operand1=1)
    with pytest.raises(NkiSimError):
        nisa.tensor_scalar(out((4, 8)), sb(X, nl.float32), nl.bitwise_and, 1)
    d = out((2, 4), nl.int32)
    nisa.tensor_scalar(d, ints, nl.bitwise_and, 6, op1=nl.left_shift, operand1=1)
    np.testing.assert_array_equal(d.read(), (np.arange(8).reshape(2, 4) & 6) << 1)


def test_tensor_scalar_scalar_engine_trn2_combinations():
    """nki.isa.tensor_scalar: 'The Scalar Engine on trn2 only supports' (multiply, add),
    (multiply, None), (add, None)."""
    d = out((4, 8))
    nisa.tensor_scalar(d, sb(X, nl.float32), nl.multiply, 2.0, op1=nl.add, operand1=1.0, engine=nisa.engine.scalar)
    np.testing.assert_allclose(d.read(), 2 * X + 1, rtol=1e-6)
    with pytest.raises(NkiSimError):
        nisa.tensor_scalar(d, sb(X, nl.float32), nl.subtract, 1.0, engine=nisa.engine.scalar)
    with context(target="trn3"):  # the restriction is trn2's only
        d3 = out((4, 8))
        nisa.tensor_scalar(d3, sb(X, nl.float32), nl.subtract, 1.0, engine=nisa.engine.scalar)
        np.testing.assert_allclose(d3.read(), X - 1, rtol=1e-6)


def test_tensor_scalar_gpsimd_only_for_rsqrt():
    """nki.isa.tensor_scalar: engine 'nki.isa.engine.gpsimd (only allowed for rsqrt)'."""
    with pytest.raises(NkiSimError):
        nisa.tensor_scalar(out((4, 8)), sb(X, nl.float32), nl.add, 1.0, engine=nisa.engine.gpsimd)
    d = out((1, 2))
    nisa.tensor_scalar(d, sb(np.array([[4.0, 16.0]]), nl.float32), nl.rsqrt, None, engine=nisa.engine.gpsimd)
    np.testing.assert_allclose(d.read(), [[0.5, 0.25]], rtol=1e-6)


def test_tensor_scalar_unary_abs_operand_none():
    """nki.isa.tensor_scalar: operand0 'Must be None or 0 when op0 is a unary operator (e.g.,
    nl.abs)'."""
    d = out((4, 8))
    nisa.tensor_scalar(d, sb(X, nl.float32), nl.abs, None)
    np.testing.assert_array_equal(d.read(), np.abs(X))


def test_scalar_tensor_tensor_semantics():
    """nki.isa.scalar_tensor_tensor: '(data <op0> operand0) <op1> operand1'; operand0 scalar or
    (P, 1); operand1 a full tile; reverse flags swap operands."""
    data = RNG.standard_normal((4, 8)).astype(np.float32)
    o1 = RNG.standard_normal((4, 8)).astype(np.float32)
    v = np.array([[1.0], [2.0], [3.0], [4.0]], np.float32)
    d = out((4, 8))
    nisa.scalar_tensor_tensor(d, sb(data, nl.float32), nl.multiply, -1e30, nl.add, sb(o1, nl.float32))
    np.testing.assert_allclose(d.read(), data * np.float32(-1e30) + o1, rtol=1e-6)
    nisa.scalar_tensor_tensor(
        d,
        sb(data, nl.float32),
        nl.subtract,
        sb(v, nl.float32),
        nl.subtract,
        sb(o1, nl.float32),
        reverse0=True,
        reverse1=True,
    )
    np.testing.assert_allclose(d.read(), o1 - (v - data), rtol=1e-6, atol=1e-6)


def test_scalar_tensor_tensor_checks():
    """nki.isa.scalar_tensor_tensor: 'data and operand1 cannot both reside in PSUM'; 'Bitvec operators
    are not supported'; operand1 'must have the same shape as data' (elements per partition)."""
    with pytest.raises(NkiSimError):
        nisa.scalar_tensor_tensor(out((4, 8)), ps(X), nl.multiply, 2.0, nl.add, ps(X))
    ints = sb(np.ones((4, 8), np.int32), nl.int32)
    with pytest.raises(NkiSimError):
        nisa.scalar_tensor_tensor(out((4, 8), nl.int32), ints, nl.bitwise_and, 1, nl.add, ints)
    with pytest.raises(NkiSimError):
        nisa.scalar_tensor_tensor(out((4, 8)), sb(X, nl.float32), nl.add, 1.0, nl.add, sb(np.ones((4, 4)), nl.float32))


def test_reciprocal():
    """nki.isa.reciprocal: element-wise 1.0/x in fp32, SBUF or PSUM."""
    d = out((4, 8))
    nisa.reciprocal(d, sb(X + 10, nl.float32))
    np.testing.assert_allclose(d.read(), 1 / (X + 10), rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# tensor_reduce
# ------------------------------------------------------------------------------------------------
def test_tensor_reduce_last_axes_and_negate():
    """nki.isa.tensor_reduce: axes must be 'the last contiguous free dimension(s) ending at the final
    dim'; negate multiplies the result by -1.0."""
    x = RNG.standard_normal((2, 3, 4)).astype(np.float32)
    d = out((2, 3))
    nisa.tensor_reduce(d, nl.add, sb(x, nl.float32), axis=2)
    np.testing.assert_allclose(d.read(), x.sum(2), rtol=1e-5)
    d1 = out((2, 1))
    nisa.tensor_reduce(d1, nl.maximum, sb(x, nl.float32), axis=(1, 2), negate=True)
    np.testing.assert_array_equal(d1.read(), -x.max(axis=(1, 2)).reshape(2, 1))


def test_tensor_reduce_reads_and_writes_psum():
    """nki.isa.tensor_reduce (Memory types): 'Both the input data and dst tiles can be in SBUF or PSUM'
    (the router reduces its PSUM logits directly)."""
    d = out((4, 1), buffer=nl.psum)
    nisa.tensor_reduce(d, nl.maximum, ps(X), axis=1)
    np.testing.assert_array_equal(d.read(), X.max(1, keepdims=True))


def test_tensor_reduce_logical_reductions():
    """NKI ALU operator table (nki.api.shared, 'tbl-aluop'): logical_or / logical_and / minimum /
    multiply are legal reduction ops (arithmetic, fp32: non-zero is true)."""
    a = sb(np.array([[0, 1, 0, 0], [0, 0, 0, 0]], np.float32), nl.float32)
    d = out((2, 1))
    nisa.tensor_reduce(d, nl.logical_or, a, axis=1)
    np.testing.assert_array_equal(d.read(), [[1.0], [0.0]])
    nisa.tensor_reduce(d, nl.logical_and, a, axis=1)
    np.testing.assert_array_equal(d.read(), [[0.0], [0.0]])


def test_alu_ops_are_the_documented_table():
    """NKI ALU operator table ('Supported Math Operators for NKI ISA'): divide is not an ALU operator
    (the templates use reciprocal then multiply); comparisons give 1.0 / 0.0."""
    a = sb(np.full((2, 4), 6.0), nl.float32)
    b = sb(np.full((2, 4), 3.0), nl.float32)
    with pytest.raises(NkiSimError):
        nisa.tensor_tensor(out((2, 4)), a, b, nl.divide)
    with pytest.raises(NkiSimError):
        nisa.tensor_scalar(out((2, 4)), a, nl.divide, 3.0)
    d = out((2, 4))
    nisa.tensor_tensor(d, sb(np.arange(8, dtype=np.float32).reshape(2, 4), nl.float32), b, nl.less_equal)
    np.testing.assert_array_equal(d.read(), (np.arange(8).reshape(2, 4) <= 3).astype(np.float32))


def test_tensor_reduce_rejects_illegal_axes():
    """nki.isa.tensor_reduce: 'Axis 0 (partition axis) cannot be reduced'; axis (1,) of a 3-D tile is
    not the last contiguous axes; dst elements per partition must match axis."""
    x = sb(np.ones((2, 3, 4)), nl.float32)
    with pytest.raises(NkiSimError):
        nisa.tensor_reduce(out((1, 12)), nl.add, x, axis=0)
    with pytest.raises(NkiSimError):
        nisa.tensor_reduce(out((2, 4)), nl.add, x, axis=1)
    with pytest.raises(NkiSimError):
        nisa.tensor_reduce(out((2, 2)), nl.add, x, axis=(1, 2))


def test_tensor_reduce_bitvec_on_ints():
    """nki.isa.tensor_reduce: bitvec reduction (bitwise_or) on integer tiles treats elements as bit
    patterns."""
    d = out((1, 1), nl.int32)
    nisa.tensor_reduce(d, nl.bitwise_or, sb(np.array([[1, 2, 4, 8]], np.int32), nl.int32), axis=1)
    assert d.read()[0, 0] == 15


def test_tensor_reduce_arithmetic_is_fp32():
    """nki.isa.tensor_reduce: 'For arithmetic operators ... the engine automatically casts input data
    types to float32' -- an int32 sum is fp32 math (2^24 + 1 rounds)."""
    d = out((1, 1), nl.int32)
    nisa.tensor_reduce(d, nl.add, sb(np.array([[2**24, 1, 0, 0]], np.int32), nl.int32), axis=1)
    assert d.read()[0, 0] == 2**24


# ------------------------------------------------------------------------------------------------
# tensor_copy / memset / dtype rounding
# ------------------------------------------------------------------------------------------------
def test_tensor_copy_bit_exact_same_dtype_fp32_cast_otherwise():
    """nki.isa.tensor_copy: 'bit-accurate copy when input and output data types are the same or
    intermediate FP32 cast when input and output data types differ'."""
    v = np.array([[2**24 + 1, 5]], np.int32)
    d = out((1, 2), nl.int32)
    nisa.tensor_copy(d, sb(v, nl.int32))
    np.testing.assert_array_equal(d.read(), v)
    u = out((1, 2), nl.uint32)
    nisa.tensor_copy(u, sb(v, nl.int32))
    np.testing.assert_array_equal(u.read(), [[2**24, 5]])


def test_tensor_copy_rounds_to_nearest_even_bf16():
    """NOTES 5.2 / NKI simulator guide (precise mode): stores round to the destination dtype,
    round-to-nearest-even (1 + 2^-8 is a tie -> 1.0; 1 + 3*2^-8 -> 1 + 2^-6)."""
    d = out((1, 3), nl.bfloat16)
    nisa.tensor_copy(d, sb(np.array([[1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-8)]], np.float32), nl.float32))
    np.testing.assert_array_equal(f32(d), [[1.0, 1 + 2**-6, -1.0]])


def test_tensor_copy_float_to_int_rne_and_saturate():
    """NKI 0.6 release notes (simulator: fp32 -> int casts 'match hardware'): round to nearest even and
    saturate to the destination range."""
    d = out((1, 6), nl.int8)
    nisa.tensor_copy(d, sb(np.array([[0.5, 1.5, 2.5, -0.5, 300.0, -300.0]], np.float32), nl.float32))
    np.testing.assert_array_equal(d.read(), [[0, 2, 2, 0, 127, -128]])


def test_tensor_copy_shapes_and_psum_rules():
    """nki.isa.tensor_copy: same partitions and elements per partition; 'GpSimd Engine cannot access
    PSUM' (PSUM -> SBUF eviction is Vector/Scalar)."""
    d = out((4, 2, 4))
    nisa.tensor_copy(d, ps(X))
    np.testing.assert_array_equal(d.read().reshape(4, 8), X)
    with pytest.raises(NkiSimError):
        nisa.tensor_copy(out((8, 4)), sb(X, nl.float32))
    with pytest.raises(NkiSimError):
        nisa.tensor_copy(out((4, 8)), ps(X), engine=nisa.engine.gpsimd)


def test_memset_value_and_rules():
    """nki.isa.memset: fill dst with a compile-time constant (Vector or GpSimd; GpSimd cannot access
    PSUM); the value is rounded to dst.dtype; NKI 0.3 release notes: strict dtype match (an int
    dtype takes an int)."""
    d = out((2, 4), nl.bfloat16)
    nisa.memset(d, 1 + 2**-8)
    np.testing.assert_array_equal(f32(d), np.ones((2, 4), np.float32))
    i = out((2, 4), nl.int32)
    nisa.memset(i, -1)
    assert (i.read() == -1).all()
    with pytest.raises(NkiSimError):
        nisa.memset(i, 0.5)
    with pytest.raises(NkiSimError):
        nisa.memset(out((2, 4), buffer=nl.psum), 0.0, engine=nisa.engine.gpsimd)
    with pytest.raises(NkiSimError):
        nisa.memset(nl.ndarray((2, 4), nl.float32, buffer=nl.hbm), 0.0)


def test_new_allocations_hold_sentinels():
    """NKI CPU Simulator guide: every new allocation is filled with NaN (floats) or 4 (ints) so reads
    of uninitialised memory surface."""
    assert np.isnan(nl.ndarray((2, 2), nl.float32).read()).all()
    assert np.isnan(f32(nl.ndarray((2, 2), nl.bfloat16))).all()
    assert (nl.ndarray((2, 2), nl.int32).read() == 4).all()


# ------------------------------------------------------------------------------------------------
# iota / affine_select
# ------------------------------------------------------------------------------------------------
def test_iota_pattern_semantics():
    """nki.isa.iota: value = offset + channel_id * channel_multiplier + w*step_w + ... + x*step_x
    (int32), cast to dst.dtype; pattern padded to 4-D."""
    d = out((2, 2, 3), nl.int32)
    nisa.iota(d, [[10, 2], [1, 3]], offset=5, channel_multiplier=100)
    p, w, x = np.meshgrid(np.arange(2), np.arange(2), np.arange(3), indexing="ij")
    np.testing.assert_array_equal(d.read(), 5 + 100 * p + 10 * w + x)


def test_iota_negative_step_to_fp32():
    """TKG template: iota(token_rows, pattern=[[-1, n]], offset=0, channel_multiplier=1) gives
    p - x, cast to the fp32 dst."""
    d = out((3, 4))
    nisa.iota(d, [[-1, 4]], offset=0, channel_multiplier=1)
    np.testing.assert_array_equal(d.read(), np.arange(3)[:, None] - np.arange(4)[None, :])


def test_iota_offset_must_be_int():
    """nki.isa.iota: 'offset: an int32 offset value'; 'channel_multiplier: an int32 multiplier'."""
    with pytest.raises(NkiSimError):
        nisa.iota(out((1, 4)), [[1, 4]], offset=0.5)
    with pytest.raises(NkiSimError):
        nisa.iota(out((1, 4)), [[1, 4]], offset=0, channel_multiplier=1.5)


def test_iota_rules():
    """nki.isa.iota: 'The output dst tile must be in SBUF'; 'The total number of elements in pattern
    must match the number of elements per partition in the dst tile'."""
    with pytest.raises(NkiSimError):
        nisa.iota(out((2, 4), buffer=nl.psum), [[1, 4]])
    with pytest.raises(NkiSimError):
        nisa.iota(out((2, 4)), [[1, 5]])


def test_affine_select_semantics():
    """nki.isa.affine_select: predicate cmp_op(offset + p*channel_multiplier + pattern terms, 0);
    dst = on_true where true else on_false_value (a causal mask)."""
    d = out((3, 3))
    nisa.affine_select(d, [[-1, 3]], 1, sb(np.full((3, 3), 7.0), nl.float32), -9.0, cmp_op=nl.greater_equal)
    np.testing.assert_array_equal(d.read(), np.where(np.tril(np.ones((3, 3))) > 0, 7.0, -9.0))


def test_affine_select_memory_types():
    """nki.isa.affine_select: 'The output dst tile must be in SBUF. The input on_true_tile must also be
    in SBUF'."""
    with pytest.raises(NkiSimError):
        nisa.affine_select(out((2, 8)), [[1, 8]], 0, ps(np.ones((2, 8))), 0.0)
    with pytest.raises(NkiSimError):
        nisa.affine_select(out((2, 8), buffer=nl.psum), [[1, 8]], 0, sb(np.ones((2, 8)), nl.float32), 0.0)


# ------------------------------------------------------------------------------------------------
# max8 / nc_find_index8 / nc_match_replace8 (router top-k)
# ------------------------------------------------------------------------------------------------
ROW = np.array([[3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8]], np.float32)


def test_max8_descending_with_multiplicity():
    """nki.isa.max8: 'the 8 largest values in descending order for each partition' (fp32 internally);
    src up to 3-D."""
    d = out((1, 8))
    nisa.max8(d, sb(ROW, nl.float32))
    np.testing.assert_array_equal(d.read(), [[9, 8, 6, 5, 5, 5, 4, 3]])
    d3 = out((1, 8))
    nisa.max8(d3, sb(ROW.reshape(1, 2, 6), nl.float32))
    np.testing.assert_array_equal(d3.read(), d.read())


def test_max8_limits():
    """nki.isa.max8: 'The number of elements read per partition must be between 8 and 16,384
    inclusive'; output [par_dim, 8]."""
    with pytest.raises(NkiSimError):
        nisa.max8(out((1, 8)), sb(ROW[:, :7], nl.float32))
    with pytest.raises(NkiSimError):
        nisa.max8(out((1, 8)), out((1, 16385)))
    with pytest.raises(NkiSimError):
        nisa.max8(out((1, 4)), sb(ROW, nl.float32))


def test_nc_find_index8_first_occurrence_and_duplicates():
    """nki.isa.nc_find_index8: index of the first occurrence of each val; NKI 0.6 release notes:
    duplicate vals map to successive occurrences in ascending order; dst uint32 by default. The 0.6
    nki.isa.nc_match_replace8 page says the same of nc_find_index8 in so many words ("pairs duplicate
    vals with their matching positions in ascending order across dst_idx columns", the opposite of
    nc_match_replace8's descending order), so a repeated val does not return the first occurrence
    again. moegen's top-k reads only column 0 of a find over 8 equal vals, correct either way."""
    d = out((1, 8), nl.uint32)
    nisa.nc_find_index8(d, sb(ROW, nl.float32), sb([[9, 8, 6, 5, 5, 5, 4, 3]], nl.float32))
    np.testing.assert_array_equal(d.read(), [[5, 11, 7, 4, 8, 10, 2, 0]])


def test_nc_find_index8_dst_dtype():
    """nki.isa.nc_find_index8: output 'will be uint16 or uint32 type'."""
    with pytest.raises(NkiSimError):
        nisa.nc_find_index8(out((1, 8), nl.int32), sb(ROW, nl.float32), sb([[9] * 8], nl.float32))
    d = out((1, 8), nl.uint16)
    nisa.nc_find_index8(d, sb(ROW, nl.float32), sb([[9] * 8], nl.float32))
    assert d.read()[0, 0] == 5


def test_nc_match_replace8_reverse_tie_break():
    """nki.isa.nc_match_replace8: replace the first occurrence of each val with imm, indices to
    dst_idx; NKI 0.6 release notes: vals processed in reverse order (i = 7..0), so duplicates fill
    dst_idx in descending order."""
    d, di = out((1, 12)), out((1, 8), nl.uint32)
    nisa.nc_match_replace8(d, sb(ROW, nl.float32), sb([[9, 8, 6, 5, 5, 5, 4, 3]], nl.float32), -1.0, dst_idx=di)
    np.testing.assert_array_equal(di.read(), [[5, 11, 7, 10, 8, 4, 2, 0]])
    ref = ROW.copy()
    ref[0, [5, 11, 7, 10, 8, 4, 2, 0]] = -1
    np.testing.assert_array_equal(d.read(), ref)


# ------------------------------------------------------------------------------------------------
# other Vector / GpSimd instructions (not used by the templates today; regression protection)
# ------------------------------------------------------------------------------------------------
XP = RNG.standard_normal((4, 6)).astype(np.float32)
PRED = (RNG.random((4, 6)) > 0.5).astype(np.uint8)


def test_tensor_copy_predicated():
    """nki.isa.tensor_copy_predicated: where predicate is true copy src (tile or scalar) into dst,
    else dst is unmodified; reverse_pred inverts; predicate uint8/uint16/uint32; src and dst same dtype;
    src and predicate not both in PSUM."""
    d = sb(np.full((4, 6), 9.0), nl.float32)
    nisa.tensor_copy_predicated(d, sb(XP, nl.float32), sb(PRED, nl.uint8))
    np.testing.assert_array_equal(d.read(), np.where(PRED, XP, 9.0))
    d = sb(np.full((4, 6), 9.0), nl.float32)
    nisa.tensor_copy_predicated(d, 2.5, sb(PRED, nl.uint16), reverse_pred=True)
    np.testing.assert_array_equal(d.read(), np.where(PRED, 9.0, 2.5))
    with pytest.raises(NkiSimError):
        nisa.tensor_copy_predicated(out((4, 6)), sb(XP, nl.float32), sb(PRED, nl.int8))
    with pytest.raises(NkiSimError):
        nisa.tensor_copy_predicated(out((4, 6), nl.bfloat16), sb(XP, nl.float32), sb(PRED, nl.uint8))
    with pytest.raises(NkiSimError):
        nisa.tensor_copy_predicated(out((4, 6)), ps(XP), sb(PRED, nl.uint8, nl.psum))


def test_select_reduce():
    """nki.isa.select_reduce: np.where(predicate, on_true, on_false) and, with reduction, the row max
    into reduce_res; predicate int8/uint8/int16/uint16; on_true not tfloat32/int32/uint32."""
    d, r = out((4, 6)), out((4, 1))
    nisa.select_reduce(
        d, sb(PRED, nl.uint8), sb(XP, nl.float32), -5.0, reduce_res=r, reduce_cmd=nisa.reduce_cmd.reset_reduce
    )
    ref = np.where(PRED, XP, np.float32(-5.0))
    np.testing.assert_array_equal(d.read(), ref)
    np.testing.assert_array_equal(r.read(), ref.max(1, keepdims=True))
    with pytest.raises(NkiSimError):
        nisa.select_reduce(out((4, 6)), sb(PRED, nl.uint32), sb(XP, nl.float32), -5.0)
    with pytest.raises(NkiSimError):
        nisa.select_reduce(out((4, 6), nl.int32), sb(PRED, nl.uint8), sb(XP.astype(np.int32), nl.int32), -5.0)


def test_tensor_scalar_reduce():
    """nki.isa.tensor_scalar_reduce: dst = data op0 operand0 and reduce_res = reduce_op(dst) over the
    free axes (reset_reduce default)."""
    d, r = out((4, 6)), out((4, 1))
    nisa.tensor_scalar_reduce(d, sb(XP, nl.float32), nl.multiply, 2.0, nl.add, r)
    np.testing.assert_allclose(d.read(), 2 * XP, rtol=1e-6)
    np.testing.assert_allclose(r.read(), (2 * XP).sum(1, keepdims=True), rtol=1e-5, atol=1e-6)


def test_tensor_tensor_scan():
    """nki.isa.tensor_tensor_scan: result[:, 0] = op1(op0(data0[:, 0], initial), data1[:, 0]);
    result[:, i] = op1(op0(data0[:, i], result[:, i-1]), data1[:, i])."""
    d = out((4, 6))
    nisa.tensor_tensor_scan(d, sb(XP, nl.float32), sb(np.ones((4, 6)), nl.float32), 0.5, nl.multiply, nl.add)
    ref = np.zeros_like(XP)
    prev = np.full(4, 0.5, np.float32)
    for i in range(6):
        prev = XP[:, i] * prev + 1
        ref[:, i] = prev
    np.testing.assert_allclose(d.read(), ref, rtol=1e-5, atol=1e-6)


def test_tensor_scalar_cumulative():
    """nki.isa.tensor_scalar_cumulative: reg = op1(op0(x[i], imm0), reg); dst[i] = reg (reset_reduce
    starts add at 0); 'INT32/UINT32 are not supported as input/output dtypes'."""
    d = out((4, 6))
    nisa.tensor_scalar_cumulative(d, sb(XP, nl.float32), nl.multiply, nl.add, 2.0)
    np.testing.assert_allclose(d.read(), np.cumsum(2 * XP, axis=1), rtol=1e-5, atol=1e-6)
    with pytest.raises(NkiSimError):
        nisa.tensor_scalar_cumulative(
            out((4, 6), nl.int32), sb(XP.astype(np.int32), nl.int32), nl.multiply, nl.add, 2.0
        )


def test_nc_stream_shuffle_per_quadrant():
    """nki.isa.nc_stream_shuffle: shuffle_mask[i] names the source partition of output partition i
    within each 32-partition quadrant; the same mask applies to every quadrant."""
    src = sb(np.arange(128, dtype=np.float32).reshape(64, 2), nl.float32)
    d = out((64, 2))
    nisa.nc_stream_shuffle(d, src, [31 - i for i in range(32)])
    v = d.read()
    assert (v[0, 0], v[31, 0], v[32, 0], v[63, 0]) == (62.0, 0.0, 126.0, 64.0)


def test_nc_n_gather():
    """nki.isa.nc_n_gather: per partition, gather from the flattened free dims of data at uint32
    indices; dst dtype = data dtype; indices must be uint32."""
    d = out((2, 3))
    nisa.nc_n_gather(
        d,
        sb(np.arange(12, dtype=np.float32).reshape(2, 6), nl.float32),
        sb(np.array([[5, 0, 3], [1, 1, 4]]), nl.uint32),
    )
    np.testing.assert_array_equal(d.read(), [[5, 0, 3], [7, 7, 10]])
    with pytest.raises(NkiSimError):
        nisa.nc_n_gather(out((2, 3)), sb(np.ones((2, 6)), nl.float32), sb(np.zeros((2, 3)), nl.int32))


def test_range_select():
    """nki.isa.range_select: keep element j where comp_op0(j + range_start, bound0) and
    comp_op1(j + range_start, bound1), else on_false_value, which must be FP32_MIN (it becomes -inf in
    a bf16 dst); max-reduction into reduce_res."""
    b0, b1 = sb(np.full((4, 1), 1.0), nl.float32), sb(np.full((4, 1), 4.0), nl.float32)
    d, r = out((4, 6)), out((4, 1))
    nisa.range_select(
        d, sb(XP, nl.float32), nl.greater_equal, nl.less, b0, b1, reduce_res=r, on_false_value=-3.4028235e38
    )
    j = np.arange(6)
    ref = np.where((j >= 1) & (j < 4), XP, np.float32(-3.4028235e38))
    np.testing.assert_array_equal(d.read(), ref)
    np.testing.assert_array_equal(r.read(), ref.max(1, keepdims=True))
    bd = out((4, 6), nl.bfloat16)
    nisa.range_select(bd, sb(XP, nl.float32), nl.greater_equal, nl.less, b0, b0, on_false_value=-3.4028235e38)
    assert np.isneginf(f32(bd)).all()
    with pytest.raises(NkiSimError):
        nisa.range_select(out((4, 6)), sb(XP, nl.float32), nl.greater_equal, nl.less, b0, b1, on_false_value=0.0)


def test_dma_compute_add_only():
    """nki.isa.dma_compute: dst = reduce_op(srcs[0] * scales[0], ...) in fp32; 'only nl.add is
    supported for reduce_op'."""
    d = out((4, 6))
    nisa.dma_compute(d, [sb(XP, nl.float32), sb(XP, nl.float32)], nl.add)
    np.testing.assert_allclose(d.read(), 2 * XP, rtol=1e-6)
    with pytest.raises(NkiSimError):
        nisa.dma_compute(out((4, 6)), [sb(XP, nl.float32), sb(XP, nl.float32)], nl.multiply)


def test_trn3_only_instructions_refused_on_trn2():
    """nki.isa.activate2 / exponential / quantize_mx: 'Available only on NeuronCore-v4 and newer'."""
    one = sb(np.ones((32, 4)), nl.bfloat16)
    with pytest.raises(NkiSimError):
        nisa.activate2(out((32, 4)), nl.copy, one, 1.0, 0.0, nl.multiply, nl.add)
    with pytest.raises(NkiSimError):
        nisa.exponential(out((32, 4)), one)
    with pytest.raises(NkiSimError):
        nisa.quantize_mx(out((32, 1), nl.float8_e4m3fn_x4), one, out((32, 1), nl.uint8))


def test_exponential_on_trn3():
    """nki.isa.exponential (trn3): dst = exp(src - max_value), fp32 math."""
    with context(target="trn3"):
        d = out((1, 4))
        nisa.exponential(d, sb(np.array([[1.0, 2.0, 3.0, 4.0]]), nl.float32), max_value=1.0)
        np.testing.assert_allclose(d.read(), np.exp(np.array([[0.0, 1.0, 2.0, 3.0]])), rtol=1e-6)


def test_tensor_scalar_reduce_accumulator_commands():
    """nki.isa.tensor_scalar_reduce (Accumulator behavior): reset_reduce (default) zeroes then
    accumulates; reduce continues on the existing accumulator; load_reduce starts from reduce_init."""
    x = sb(np.arange(8, dtype=np.float32).reshape(2, 4), nl.float32)
    r = out((2, 1))
    base = (np.arange(8).reshape(2, 4) + 1).sum(1, keepdims=True).astype(np.float32)
    nisa.tensor_scalar_reduce(out((2, 4)), x, nl.add, 1.0, nl.add, None, reduce_cmd=nisa.reduce_cmd.reset_reduce)
    nisa.tensor_scalar_reduce(out((2, 4)), x, nl.add, 1.0, nl.add, r, reduce_cmd=nisa.reduce_cmd.reduce)
    np.testing.assert_array_equal(r.read(), 2 * base)
    nisa.tensor_scalar_reduce(
        out((2, 4)), x, nl.add, 1.0, nl.add, r, reduce_cmd=nisa.reduce_cmd.load_reduce, reduce_init=100.0
    )
    np.testing.assert_array_equal(r.read(), base + 100)


def test_column_slice_operands_as_templates_use_them():
    """expert_mlp.j2 / topk.j2 pass [P, 1] column slices of wider tiles as activation scale / bias
    (scale[0:rows, part:part + 1]), tensor_scalar operand1 (values[:, i:i + 1]) and
    scalar_tensor_tensor operand0; each must read its own column, broadcast along the free dim."""
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    sc = np.array([[1, 10], [2, 20], [3, 30], [4, 40]], np.float32)
    s = sb(sc, nl.float32)
    d = out((4, 3))
    nisa.activation(d, nl.copy, sb(x, nl.float32), bias=s[0:4, 0:1], scale=s[0:4, 1:2])
    np.testing.assert_array_equal(d.read(), x * sc[:, 1:2] + sc[:, 0:1])
    vals = np.arange(32, dtype=np.float32).reshape(4, 8)
    nisa.tensor_scalar(d, sb(x, nl.float32), nl.multiply, 0.0, op1=nl.add, operand1=sb(vals, nl.float32)[:, 5:6])
    np.testing.assert_array_equal(d.read(), np.broadcast_to(vals[:, 5:6], (4, 3)))
    acc = sb(np.ones((4, 3)), nl.float32)
    nisa.scalar_tensor_tensor(acc, sb(x, nl.float32), nl.multiply, s[:, 1:2], nl.add, acc)
    np.testing.assert_array_equal(acc.read(), x * sc[:, 1:2] + 1)


def test_uint32_index_to_int32_goes_through_fp32():
    """nki.isa.tensor_copy: differing dtypes convert through fp32 and saturate -- a uint32 'not found'
    index 0xFFFFFFFF (nc_find_index8) copied to int32 becomes 2^31 - 1, not -1."""
    f8 = out((4, 8), nl.uint32)
    f8.write(np.full((4, 8), 0xFFFFFFFF, np.uint32))
    idx = out((4, 3), nl.int32)
    nisa.memset(idx, 0)
    nisa.tensor_copy(idx[:, 1:2], f8[:, 0:1])
    np.testing.assert_array_equal(idx.read()[:, 1], np.full(4, 2**31 - 1))


def test_gpsimd_never_touches_psum():
    """Arch guide / nki.isa pages: 'GpSimd Engine cannot access PSUM' -- explicit engine=gpsimd
    (tensor_scalar rsqrt, tensor_tensor) and GpSimd-only instructions (nc_n_gather) refuse PSUM
    operands."""
    p = ps(np.full((2, 4), 4.0))
    with pytest.raises(NkiSimError):
        nisa.tensor_scalar(out((2, 4)), p, nl.rsqrt, None, engine=nisa.engine.gpsimd)
    with pytest.raises(NkiSimError):
        nisa.tensor_scalar(
            out((2, 4), buffer=nl.psum), sb(np.ones((2, 4)), nl.float32), nl.rsqrt, None, engine=nisa.engine.gpsimd
        )
    ints = sb(np.ones((2, 4), np.int32), nl.int32)
    with pytest.raises(NkiSimError):
        nisa.tensor_tensor(
            out((2, 4), nl.int32),
            sb(np.ones((2, 4), np.int32), nl.int32, nl.psum),
            ints,
            nl.add,
            engine=nisa.engine.gpsimd,
        )
    with pytest.raises(NkiSimError):
        nisa.nc_n_gather(out((2, 2)), p, sb(np.zeros((2, 2)), nl.uint32))


def test_strided_and_multidim_operands():
    """NKI Access Patterns / arch guide: engines read up to 4-D free access patterns with a stride per
    dim; [P, 1] vectors broadcast over every free dim (activation, tensor_scalar on 3-D tiles);
    reductions and max8 read strided views."""
    r = np.random.default_rng(3)
    x = r.standard_normal((4, 3, 5)).astype(np.float32)
    v = r.standard_normal((4, 1)).astype(np.float32)
    d = out((4, 3, 5))
    nisa.activation(d, nl.copy, sb(x, nl.float32), scale=sb(v, nl.float32))
    np.testing.assert_allclose(d.read(), x * v[:, :, None], rtol=1e-6)
    nisa.tensor_scalar(d, sb(x, nl.float32), nl.subtract, sb(v, nl.float32), reverse0=True)
    np.testing.assert_allclose(d.read(), v[:, :, None] - x, rtol=1e-6, atol=1e-6)
    big_np = r.standard_normal((4, 3, 8)).astype(np.float32)
    big = sb(big_np, nl.float32)
    red = out((4, 3))
    nisa.tensor_reduce(red, nl.add, big[:, :, 2:7:2], axis=2)
    np.testing.assert_allclose(red.read(), big_np[:, :, 2:7:2].sum(2), rtol=1e-5, atol=1e-6)
    m = out((4, 8))
    nisa.max8(m, big[:, :, 0:8:2])
    np.testing.assert_array_equal(m.read(), -np.sort(-big_np[:, :, 0:8:2].reshape(4, -1), axis=1)[:, :8])
