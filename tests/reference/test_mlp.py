import math

import numpy as np
import pytest

from moegen.reference.mlp import ACTIVATIONS, ExpertMLP, Precision, activation, expert_mlp
from moegen.reference.quant import quantize_down_fp8, quantize_gate_up_fp8, round_to


def _sig(z):
    return 1.0 / (1.0 + math.exp(-z))


@pytest.mark.parametrize(
    "name,fn",
    [
        ("silu", lambda g: g * _sig(g)),
        ("swish", lambda g: g * _sig(1.702 * g)),
        ("gelu", lambda g: 0.5 * g * (1 + math.erf(g / math.sqrt(2)))),
        ("gelu_tanh", lambda g: 0.5 * g * (1 + math.tanh(math.sqrt(2 / math.pi) * (g + 0.044715 * g**3)))),
        ("relu", lambda g: max(g, 0.0)),
        ("squared_relu", lambda g: max(g, 0.0) ** 2),
    ],
)
def test_activations_match_scalar_formulas(name, fn):
    g = np.array([-30.0, -3.0, -0.5, 0.0, 0.25, 1.0, 4.0, 30.0])
    got = activation(g, name)
    want = np.array([fn(v) for v in g])
    assert np.allclose(got, want, rtol=1e-12, atol=1e-300)


def test_swish_alpha():
    g = np.array([0.5, -2.0])
    assert np.allclose(activation(g, "swish", 1.0), activation(g, "silu"))


def test_hand_computed_gated():
    # H = 2, I = 1: g = x @ Wg, u = x @ Wu, y = relu(g) * u * Wd
    x = np.array([[1.0, 2.0], [-1.0, 0.5]], dtype=np.float32)
    gate_up = np.array([[[1.0], [0.5]], [[1.0], [1.0]]], dtype=np.float32)  # [H=2, 2, I=1]
    down = np.array([[2.0, -1.0]], dtype=np.float32)  # [I=1, H=2]
    y = expert_mlp(x, gate_up, down, mlp=ExpertMLP(activation="relu"))
    # token 0: g = 3, u = 2.5 -> h = 7.5 -> y = [15, -7.5]; token 1: g = -0.5 -> h = 0
    assert y.tolist() == [[15.0, -7.5], [0.0, 0.0]]
    bias = np.array([[1.0], [0.0]], dtype=np.float32)
    yb = expert_mlp(
        x,
        gate_up,
        down,
        mlp=ExpertMLP(activation="relu"),
        gate_up_bias=bias,
        down_bias=np.array([0.5, 0.5], np.float32),
    )
    # token 1: g = 0.5, u = 0 -> h = 0; token 0: g = 4, u = 2.5 -> h = 10
    assert yb.tolist() == [[20.5, -9.5], [0.5, 0.5]]


def test_clamps_and_up_plus_one_equal_folded_bias():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 32)).astype(np.float32)
    gu = rng.standard_normal((32, 2, 8)).astype(np.float32)
    dn = rng.standard_normal((8, 32)).astype(np.float32)
    bias = rng.standard_normal((2, 8)).astype(np.float32)
    gpt = ExpertMLP(
        activation="swish",
        alpha=1.702,
        gate_clamp_upper_limit=1.0,
        up_clamp_lower_limit=-1.0,
        up_clamp_upper_limit=1.0,
        up_plus_one=True,
    )
    got = expert_mlp(x, gu, dn, mlp=gpt, gate_up_bias=bias)
    # by hand: (clamp(u, -1, 1) + 1) * swish(min(g, 1))
    g = np.minimum(x @ gu[:, 0] + bias[0], 1.0)
    u = np.clip(x @ gu[:, 1] + bias[1], -1.0, 1.0) + 1.0
    want = (g / (1 + np.exp(-1.702 * g)) * u) @ dn
    assert np.allclose(got, want, rtol=1e-5, atol=1e-5)
    # the caller's fold: +1 in the up bias, up window shifted by +1
    folded = bias.copy()
    folded[1] += 1.0
    fold = gpt.with_(up_plus_one=False, up_clamp_lower_limit=0.0, up_clamp_upper_limit=2.0)
    assert np.allclose(expert_mlp(x, gu, dn, mlp=fold, gate_up_bias=folded), got, rtol=1e-6, atol=1e-6)


def test_each_clamp_alone():
    x = np.eye(2, dtype=np.float32) * 10
    gu = np.ones((2, 2, 1), dtype=np.float32)
    dn = np.ones((1, 1), dtype=np.float32)
    relu = ExpertMLP(activation="relu")
    assert expert_mlp(x, gu, dn, mlp=relu).tolist() == [[100.0], [100.0]]
    assert expert_mlp(x, gu, dn, mlp=relu.with_(gate_clamp_upper_limit=3.0)).tolist() == [[30.0], [30.0]]
    assert expert_mlp(x, gu, dn, mlp=relu.with_(up_clamp_upper_limit=2.0)).tolist() == [[20.0], [20.0]]
    assert expert_mlp(-x, gu, dn, mlp=relu.with_(gate_clamp_lower_limit=1.0)).tolist() == [[-10.0], [-10.0]]
    assert expert_mlp(-x, gu, dn, mlp=relu.with_(gate_clamp_lower_limit=1.0, up_clamp_lower_limit=-4.0)).tolist() == [
        [-4.0],
        [-4.0],
    ]


def test_non_gated():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 8)).astype(np.float32)
    w1 = rng.standard_normal((8, 6)).astype(np.float32)
    w2 = rng.standard_normal((6, 8)).astype(np.float32)
    got = expert_mlp(x, w1, w2, mlp=ExpertMLP(activation="squared_relu", gated=False))
    assert np.allclose(got, np.maximum(x @ w1, 0) ** 2 @ w2, rtol=1e-5, atol=1e-5)
    got3 = expert_mlp(x, w1[:, None, :], w2, mlp=ExpertMLP(activation="squared_relu", gated=False))
    assert np.array_equal(got, got3)
    with pytest.raises(ValueError):
        ExpertMLP(gated=False, up_plus_one=True)


def test_bad_activation():
    with pytest.raises(ValueError):
        ExpertMLP(activation="tanh")
    assert "gelu_tanh" in ACTIVATIONS


@pytest.mark.parametrize("mode", ["row", "static"])
def test_fp8_scales_equal_dequantized_weights(mode):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((8, 64)).astype(np.float32)
    gu = rng.standard_normal((1, 64, 2, 16)).astype(np.float32)
    dn = rng.standard_normal((1, 16, 64)).astype(np.float32)
    qg, sg = quantize_gate_up_fp8(gu, mode)
    qd, sd = quantize_down_fp8(dn, mode)
    got = expert_mlp(x, qg[0], qd[0], gate_up_scale=sg[0], down_scale=sd[0])
    deq_g = np.asarray(qg[0], np.float32) * sg[0][None]
    deq_d = np.asarray(qd[0], np.float32) * sd[0].reshape(1, -1)
    want = expert_mlp(x, deq_g, deq_d)
    assert np.allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_static_input_scales():
    x = np.array([[0.3, -1.7]], dtype=np.float32)
    gu = np.ones((2, 2, 1), dtype=np.float32)
    dn = np.ones((1, 1), dtype=np.float32)
    relu = ExpertMLP(activation="relu")
    got = expert_mlp(x, gu, dn, mlp=relu, gate_up_input_scale=0.01, down_input_scale=0.5)
    xq = round_to(x / np.float32(0.01), "fp8") * np.float32(0.01)  # 30 and -170 -> fp8 -> back
    g = float(xq.sum())
    want = round_to(np.float32(max(g, 0) * g / 0.5), "fp8") * 0.5
    assert np.allclose(got, want, rtol=1e-6)


def test_rounding_points():
    rng = np.random.default_rng(3)
    x = round_to(rng.standard_normal((8, 32)), "bf16")
    gu = round_to(rng.standard_normal((32, 2, 16)), "bf16")
    dn = round_to(rng.standard_normal((16, 32)), "bf16")
    ck: dict = {}
    exact = expert_mlp(x, gu, dn)
    kernel = expert_mlp(x, gu, dn, precision="bf16", checkpoints=ck)
    assert np.array_equal(round_to(ck["gate_up"], "bf16"), ck["gate_up"])
    assert not np.array_equal(exact, kernel)
    assert np.allclose(exact, kernel, rtol=0.05, atol=0.05 * np.abs(exact).max())
    # rounding only h at bf16 == rounding h and the matmul input
    assert np.array_equal(
        expert_mlp(x, gu, dn, precision=Precision(h="bf16")),
        expert_mlp(x, gu, dn, precision=Precision(h="bf16", matmul_in="bf16")),
    )
    down = expert_mlp(x, gu, dn, precision=Precision(down="fp16"))
    assert np.array_equal(round_to(down, "fp16"), down)
