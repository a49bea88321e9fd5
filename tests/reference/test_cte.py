import numpy as np
import pytest

from moegen.blocking import build_blocks
from moegen.compare import compare
from moegen.reference.cte import moe_cte, moe_per_token
from moegen.reference.mlp import ExpertMLP, expert_mlp
from moegen.reference.quant import quantize_down_fp8, quantize_gate_up_fp8, round_to

from .conftest import make_moe


def run_both(m, b, *, pad_with="T", dtype="fp32", precision=None, is_tensor_update_accumulating=True, **kw):
    t, e = m["aff"].shape
    blocks = build_blocks(m["index"], m["aff"], e, b, pad_with=pad_with)
    hidden = np.concatenate([m["x"], np.zeros((1, m["x"].shape[1]), np.float32)])
    blockwise = moe_cte(
        hidden,
        blocks.expert_affinities_masked,
        m["gu"],
        m["dn"],
        blocks.token_position_to_id,
        blocks.block_to_expert,
        b,
        conditions=blocks.conditions,
        output_dtype=dtype,
        precision=precision,
        is_tensor_update_accumulating=is_tensor_update_accumulating,
        **kw,
    )
    per_token = moe_per_token(
        m["x"], m["index"], m["aff"], m["gu"], m["dn"], output_dtype=dtype, precision=precision, **kw
    )
    return blockwise, per_token, blocks


def test_hand_computed_blocks():
    # T=3, E=2, B=2: expert 0 gets tokens 0, 2; expert 1 gets tokens 1, 2
    x = np.array([[1.0], [2.0], [3.0]], np.float32)
    gu = np.ones((2, 1, 2, 1), np.float32)
    gu[1] *= 2.0
    dn = np.ones((2, 1, 1), np.float32)
    aff = np.array([[0.5, 0], [0, 1.0], [0.25, 0.75]], np.float32)
    blocks_slots = np.array([0, 2, 1, 2], np.int32)  # block 0 expert 0, block 1 expert 1
    b2e = np.array([[0], [1]], np.int32)
    hidden = np.concatenate([x, np.zeros((1, 1), np.float32)])
    table = np.concatenate([aff, np.zeros((1, 2), np.float32)]).reshape(-1, 1)
    out = moe_cte(hidden, table, gu, dn, blocks_slots, b2e, 2, activation_function="relu", output_dtype="fp32")
    # expert 0: y = relu(x) * x = x^2; expert 1: y = relu(2x) * 2x = 4x^2
    assert out[:3, 0].tolist() == [0.5 * 1, 1.0 * 16, 0.25 * 9 + 0.75 * 36]


@pytest.mark.parametrize("pad_with", ["T", -1])
@pytest.mark.parametrize("scale", ["none", "pre", "post"])
@pytest.mark.parametrize("b", [4, 16, 64])
def test_blockwise_equals_per_token(rng, pad_with, scale, b):
    m = make_moe(rng, t=37, e=8, k=2, biases=True)
    got, want, _ = run_both(
        m,
        b,
        pad_with=pad_with,
        affinity_scale=scale,
        gate_and_up_proj_bias=m["gu_bias"],
        down_proj_bias=m["dn_bias"],
    )
    assert compare("out", got[:37], want, kind="fp32")


@pytest.mark.parametrize("act", ["silu", "gelu", "gelu_tanh", "swish", "relu", "squared_relu"])
def test_activations_bf16_kernel_precision(rng, act):
    m = make_moe(rng, t=50, e=4, k=2)
    got, want, _ = run_both(m, 16, dtype="bf16", precision="bf16", activation_function=act)
    # blockwise rounds each block's contribution and each sum to bf16; per-token rounds once
    assert compare("out", got[:50], want, kind="bf16")
    assert np.array_equal(round_to(got, "bf16"), got)


def test_clamps_fp8_and_up_plus_one(rng):
    m = make_moe(rng, t=40, e=4, k=2, biases=True)
    qg, sg = quantize_gate_up_fp8(m["gu"], "row")
    qd, sd = quantize_down_fp8(m["dn"], "static")
    m = dict(m, gu=qg, dn=qd)
    kw = dict(
        gate_up_proj_scale=sg,
        down_proj_scale=sd,
        gate_and_up_proj_bias=m["gu_bias"],
        activation_function="swish",
        gate_clamp_upper_limit=0.5,
        up_clamp_lower_limit=-0.5,
        up_clamp_upper_limit=0.5,
        up_plus_one=True,
    )
    got, want, _ = run_both(m, 8, **kw)
    assert compare("out", got[:40], want, kind="fp32")


def test_top1_overwrite_equals_accumulate(rng):
    m = make_moe(rng, t=30, e=4, k=1)
    acc, want, _ = run_both(m, 8)
    over, _, _ = run_both(m, 8, is_tensor_update_accumulating=False)
    assert np.array_equal(acc[:30], over[:30])
    assert compare("out", over[:30], want, kind="fp32")


def test_contributions_rounded_before_adding():
    # one token, two experts, bf16 output: blockwise out = bf16(bf16(y0) + bf16(y1))
    x = np.array([[1.0]], np.float32)
    gu = np.ones((2, 1, 2, 1), np.float32)
    dn = np.array([[[1.0 + 0.4 * 2.0**-7]], [[-0.5]]], np.float32)  # y0 rounds to 1.0 in bf16
    aff = np.array([[1.0, 1.0]], np.float32)
    blocks = build_blocks(np.array([[0, 1]], np.int32), aff, 2, 1)
    hidden = np.zeros((2, 1), np.float32)
    hidden[0] = x
    out = moe_cte(
        hidden,
        blocks.expert_affinities_masked,
        gu,
        dn,
        blocks.token_position_to_id,
        blocks.block_to_expert,
        1,
        activation_function="relu",
        output_dtype="bf16",
    )
    assert out[0, 0] == 0.5
    # the plain MoE sums in fp32 and rounds once: 0.5 + 0.8 ulp(0.5) -> 0.5 + 2^-8
    per_token = moe_per_token(x, np.array([[0, 1]]), aff, gu, dn, activation_function="relu", output_dtype="bf16")
    assert per_token[0, 0] == 0.5 + 2.0**-8


def test_dropping_matches_per_token_with_keep(rng):
    m = make_moe(rng, t=40, e=4, k=2)
    blocks = build_blocks(m["index"], m["aff"], 4, 12, dropless=False)
    assert blocks.dropped.any()
    hidden = np.concatenate([m["x"], np.zeros((1, m["x"].shape[1]), np.float32)])
    got = moe_cte(
        hidden,
        blocks.expert_affinities_masked,
        m["gu"],
        m["dn"],
        blocks.token_position_to_id,
        blocks.block_to_expert,
        12,
        output_dtype="fp32",
    )
    want = moe_per_token(m["x"], m["index"], m["aff"], m["gu"], m["dn"], keep=~blocks.dropped, output_dtype="fp32")
    assert compare("out", got[:40], want, kind="fp32")


@pytest.mark.parametrize("pad_with", ["T", -1])
def test_checkpoints(rng, pad_with):
    m = make_moe(rng, t=20, e=4, k=2, biases=True)
    blocks = build_blocks(m["index"], m["aff"], 4, 8, pad_with=pad_with)
    hidden = np.concatenate([m["x"], np.zeros((1, m["x"].shape[1]), np.float32)])
    out, gate_up, down = moe_cte(
        hidden,
        blocks.expert_affinities_masked,
        m["gu"],
        m["dn"],
        blocks.token_position_to_id,
        blocks.block_to_expert,
        8,
        gate_and_up_proj_bias=m["gu_bias"],
        down_proj_bias=m["dn_bias"],
        gate_clamp_upper_limit=0.1,
        output_dtype="bf16",
        checkpoint=True,
    )
    n, i, h = blocks.num_blocks, m["gu"].shape[-1], m["x"].shape[1]
    assert gate_up.shape == (n, 2, i, 8) and down.shape == (n, 8, h)
    slots = blocks.token_position_to_id.reshape(n, 8)
    for blk in range(blocks.num_real_blocks):
        e = int(blocks.block_to_expert[blk, 0])
        for s in range(8):
            tok = slots[blk, s]
            if tok < 0:
                assert not gate_up[blk, :, :, s].any() and not down[blk, s].any()
                continue
            ck: dict = {}
            y = expert_mlp(
                hidden[tok : tok + 1],
                m["gu"][e],
                m["dn"][e],
                gate_up_bias=m["gu_bias"][e],
                down_bias=m["dn_bias"][e],
                mlp=ExpertMLP(gate_clamp_upper_limit=0.1),
                checkpoints=ck,
            )
            assert np.array_equal(gate_up[blk, :, :, s], round_to(ck["gate_up"][0], "bf16"))  # before the clamp
            assert np.array_equal(down[blk, s], round_to(y[0], "bf16"))
    assert gate_up[:, 0].max() > 0.1


def test_conditions_skip_padding_blocks(rng):
    # NO_SCALE with biases: padding rows produce MLP(0) != 0, so skipping shows in row T only
    m = make_moe(rng, t=10, e=4, k=1, biases=True)
    m["index"][:] = 1  # 3 real blocks out of a budget of 5
    m["aff"][:] = 0
    m["aff"][:, 1] = 1.0
    blocks = build_blocks(m["index"], m["aff"], 4, 4)
    assert blocks.num_blocks > blocks.num_real_blocks
    hidden = np.concatenate([m["x"], np.zeros((1, m["x"].shape[1]), np.float32)])
    args = (
        hidden,
        blocks.expert_affinities_masked,
        m["gu"],
        m["dn"],
        blocks.token_position_to_id,
        blocks.block_to_expert,
        4,
    )
    kw = dict(
        affinity_scale="none",
        gate_and_up_proj_bias=m["gu_bias"],
        down_proj_bias=m["dn_bias"],
        output_dtype="fp32",
    )
    every = moe_cte(*args, **kw)
    skip = moe_cte(*args, conditions=blocks.conditions, **kw)
    assert np.array_equal(every[:10], skip[:10])
    assert not np.array_equal(every[10], skip[10])


@pytest.mark.slow
def test_mixtral_prefill_shape_runs_in_seconds():
    import time

    import ml_dtypes

    rng = np.random.default_rng(0)
    t, h, i, e, k, b = 4096, 4096, 1792, 8, 2, 512
    bf = ml_dtypes.bfloat16
    x = rng.standard_normal((t, h), dtype=np.float32).astype(bf)
    gu = (rng.standard_normal((e, h, 2, i), dtype=np.float32) * 0.02).astype(bf)
    dn = (rng.standard_normal((e, i, h), dtype=np.float32) * 0.02).astype(bf)
    index = np.argsort(-rng.standard_normal((t, e)), axis=1)[:, :k].astype(np.int32)
    aff = np.zeros((t, e), np.float32)
    np.put_along_axis(aff, index.astype(np.int64), 0.5, axis=1)
    blocks = build_blocks(index, aff.astype(bf), e, b)
    hidden = np.concatenate([x, np.zeros((1, h), bf)])
    start = time.perf_counter()
    out = moe_cte(
        hidden,
        blocks.expert_affinities_masked,
        gu,
        dn,
        blocks.token_position_to_id,
        blocks.block_to_expert,
        b,
        conditions=blocks.conditions,
        precision="bf16",
    )
    assert time.perf_counter() - start < 60
    assert out.shape == (t + 1, h) and np.isfinite(out).all()
