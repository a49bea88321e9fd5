import ml_dtypes
import numpy as np
import pytest

from moegen.reference import quant


def test_round_to_bf16_and_fp16():
    x = np.array([1.0, 1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8, 1.0 + 2.0**-11], dtype=np.float32)
    # bf16 keeps 7 mantissa bits: 1 + 2^-8 is a tie that rounds to even (1.0); 1 + 3*2^-8 rounds up.
    assert quant.round_to(x, "bf16").tolist() == [1.0, 1.0, 1.0 + 2.0**-6, 1.0]
    assert quant.round_to(x, "fp16").tolist() == [1.0, 1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8, 1.0]
    assert quant.round_to(x, None).dtype == np.float32
    assert quant.round_to(x, "fp32").tolist() == x.tolist()


@pytest.mark.parametrize(
    "name,top",
    [("fp8", 240.0), ("fp8_e4m3", 240.0), ("e4m3fn", 448.0), ("fp8_e5m2", 57344.0), ("fp4_e2m1", 6.0)],
)
def test_fp8_casts_saturate(name, top):
    assert quant.max_finite(name) == top
    got = quant.round_to(np.array([1e6, -1e6, top, np.nan], dtype=np.float32), name)
    assert got[:3].tolist() == [top, -top, top]
    assert np.isnan(got[3])


def test_dtype_names():
    assert quant.dtype_name(ml_dtypes.bfloat16) == "bf16"
    assert quant.dtype_name(np.float32) == "fp32"
    assert quant.dtype_name("float8_e4m3") == "fp8_e4m3"
    assert quant.np_dtype("fp8") == np.dtype(ml_dtypes.float8_e4m3)
    with pytest.raises(ValueError):
        quant.dtype_name("fp7")


@pytest.mark.parametrize("mode", ["row", "static"])
def test_fp8_weight_round_trip(mode):
    rng = np.random.default_rng(1)
    gu = rng.standard_normal((3, 64, 2, 16)).astype(np.float32)
    dn = rng.standard_normal((3, 16, 64)).astype(np.float32)
    gu[1, :, 0, 3] = 0.0  # an all-zero channel gets scale 1
    q, s = quant.quantize_gate_up_fp8(gu, mode)
    assert q.dtype == np.dtype(ml_dtypes.float8_e4m3)
    assert s.shape == ((3, 2, 16) if mode == "row" else (3, 2, 1))
    back = quant.dequantize_gate_up(q, s)
    # e4m3 has 3 mantissa bits: relative error <= 2^-4 for normal values; the max maps to 240 exactly
    assert np.all(np.abs(back - gu) <= 2.0**-4 * np.abs(gu) + 1e-3 * np.max(np.abs(gu)))
    if mode == "row":
        assert s[1, 0, 3] == 1.0
        assert np.allclose(np.max(np.abs(np.asarray(q, np.float32)), axis=1)[0], 240.0)
    qd, sd = quant.quantize_down_fp8(dn, mode)
    assert sd.shape == ((3, 64) if mode == "row" else (3, 1))
    backd = quant.dequantize_down(qd, sd)
    assert np.all(np.abs(backd - dn) <= 2.0**-4 * np.abs(dn) + 1e-3 * np.max(np.abs(dn)))


def test_gate_up_scale_layouts_agree():
    rng = np.random.default_rng(2)
    s = rng.random((2, 2, 8)).astype(np.float32)
    flat = s.reshape(2, 1, 16)  # [E, 1, 2I]: gate channels then up channels
    for e in range(2):
        assert np.array_equal(quant.gate_up_scale_of_expert(s, e), quant.gate_up_scale_of_expert(flat, e))
    static = rng.random((2, 2, 1)).astype(np.float32)
    assert quant.gate_up_scale_of_expert(static, 1).shape == (2, 1)
    assert quant.down_scale_of_expert(rng.random((2, 1)), 0).shape == (1,)


def test_static_input_quant():
    x = np.array([[1.0, 500.0, -0.3]], dtype=np.float32)
    got = quant.quantize_static_input(x, 2.0)
    assert got.tolist() == [[0.5, 240.0, quant.round_to(np.float32(-0.15), "fp8").item()]]


def test_mx_scale_rules():
    amax = np.array([1.0, 3.0, 448.0, 500.0, 0.0])
    ocp = quant.mx_scale_exponent(amax, "fp8_e4m3fn", "ocp")
    nki = quant.mx_scale_exponent(amax, "fp8_e4m3fn", "nki")
    meg = quant.mx_scale_exponent(amax, "fp8_e4m3fn", "megatron")
    assert ocp.tolist() == [-8, -7, 0, 0, -127]
    assert nki.tolist() == [-7, -6, 1, 1, -127]
    # Megatron: smallest power of two with amax / 2^s <= 448
    assert meg.tolist() == [-8, -7, 0, 1, -127]


@pytest.mark.parametrize("rule", quant.MX_RULES)
@pytest.mark.parametrize("elem", ["fp8_e4m3fn", "fp8_e5m2", "fp4_e2m1"])
def test_mx_round_trip(rule, elem):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((4, 96)) * np.exp2(rng.integers(-6, 6, size=(4, 1)))).astype(np.float32)
    x[2, 32:64] = 0.0  # an all-zero block
    q, s = quant.quantize_mx(x, elem, rule)
    assert q.shape == x.shape and s.shape == (4, 3) and s.dtype == np.uint8
    assert s[2, 1] == 0
    assert np.array_equal(quant.round_to(q, elem), q)  # elements representable in the element type
    back = quant.dequantize_mx(q, s)
    amax = np.repeat(np.max(np.abs(x.reshape(4, 3, 32)), axis=-1), 32, axis=1)
    mant = {"fp8_e4m3fn": 3, "fp8_e5m2": 2, "fp4_e2m1": 1}[elem]
    # error within half an element ulp at the block's top binade (plus the OCP clip of the top value)
    bound = amax * 2.0**-mant * (1.0 if rule == "ocp" else 0.5) + 1e-30
    assert np.all(np.abs(back - x) <= bound)


def test_mx_axis():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((64, 3)).astype(np.float32)
    q0, s0 = quant.quantize_mx(x, axis=0)
    q1, s1 = quant.quantize_mx(x.T, axis=-1)
    assert np.array_equal(q0, q1.T) and np.array_equal(s0, s1.T)
    assert np.array_equal(quant.dequantize_mx(q0, s0, axis=0), quant.dequantize_mx(q1, s1).T)
