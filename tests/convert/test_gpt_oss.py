"""The GPT-OSS MXFP4 checkpoint converter on synthetic tensors in the published layout."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from moegen.convert import gpt_oss, mx_layout


def checkpoint(rng, experts=3, hidden=640, inter=576):
    """Random tensors in the checkpoint layout (every fp4 code, scales 2^-10 .. 2^4)."""
    return {
        "mlp1_blocks": rng.integers(0, 256, (experts, 2 * inter, hidden // 32, 16), dtype=np.uint8),
        "mlp1_scales": rng.integers(117, 131, (experts, 2 * inter, hidden // 32), dtype=np.uint8),
        "mlp1_bias": rng.standard_normal((experts, 2 * inter)).astype(ml_dtypes.bfloat16),
        "mlp2_blocks": rng.integers(0, 256, (experts, hidden, inter // 32, 16), dtype=np.uint8),
        "mlp2_scales": rng.integers(117, 131, (experts, hidden, inter // 32), dtype=np.uint8),
        "mlp2_bias": rng.standard_normal((experts, hidden)).astype(ml_dtypes.bfloat16),
    }


@pytest.mark.parametrize("hidden, inter", [(640, 576), (2880 // 9, 2880 // 5), (1024, 512)])
def test_round_trip_equals_direct_dequantization(hidden, inter):
    """checkpoint -> kernel layout -> dequantized fp32 equals dequantizing the checkpoint directly (bit for bit)."""
    ck = checkpoint(np.random.default_rng(1), hidden=hidden, inter=inter)
    kernel = gpt_oss.to_kernel_layout(**ck)
    e = ck["mlp1_blocks"].shape[0]
    assert kernel["expert_gate_up_weights"].shape == (e, 128, 2, -(-hidden // 512), inter)
    assert kernel["expert_gate_up_weights"].dtype == np.uint16
    assert kernel["expert_gate_up_weights_scale"].shape == (e, 16, 2, -(-hidden // 512), inter)
    assert kernel["expert_down_weights"].shape == (e, 128, -(-inter // 512), hidden)
    assert kernel["expert_down_weights_scale"].shape == (e, 16, -(-inter // 512), hidden)
    assert kernel["expert_gate_up_bias"].shape == (e, 128, 2, -(-inter // 512), 4)

    w1 = gpt_oss.dequantize_checkpoint(ck["mlp1_blocks"], ck["mlp1_scales"])  # [E, 2I, H], rows interleaved
    w2 = gpt_oss.dequantize_checkpoint(ck["mlp2_blocks"], ck["mlp2_scales"])  # [E, H, I]
    gate_up = mx_layout.dequantize_gate_up(
        kernel["expert_gate_up_weights"], kernel["expert_gate_up_weights_scale"], hidden, "fp4_e2m1"
    )  # [E, H, 2, I]
    down = mx_layout.dequantize_down(
        kernel["expert_down_weights"], kernel["expert_down_weights_scale"], inter, "fp4_e2m1"
    )
    np.testing.assert_array_equal(gate_up[:, :, 0], w1[:, 0::2].transpose(0, 2, 1))
    np.testing.assert_array_equal(gate_up[:, :, 1], w1[:, 1::2].transpose(0, 2, 1))
    np.testing.assert_array_equal(down, w2.transpose(0, 2, 1))
    bias = mx_layout.gate_up_bias_from_kernel(kernel["expert_gate_up_bias"], inter)
    b1 = ck["mlp1_bias"].astype(np.float32)
    np.testing.assert_array_equal(bias, np.stack([b1[:, 0::2], b1[:, 1::2]], axis=1))
    np.testing.assert_array_equal(kernel["expert_down_bias"], ck["mlp2_bias"].astype(np.float32))


def test_padding_past_h_and_i_is_zero_with_unit_scales():
    ck = checkpoint(np.random.default_rng(2), hidden=640, inter=576)
    kernel = gpt_oss.to_kernel_layout(**ck)
    assert not kernel["expert_gate_up_weights"][:, 32:, :, 1].any()  # H 640: slab 1 holds 128 values = 32 partitions
    assert (kernel["expert_gate_up_weights_scale"][:, 4:, :, 1] == 127).all()
    assert not kernel["expert_down_weights"][:, 16:, 1].any()  # I 576: slab 1 holds 64 values = 16 partitions
    assert not kernel["expert_gate_up_bias"][:, 16:, :, 1].any()


def test_fp4_nibble_order_and_value_table():
    """Byte 0x21 holds value 2b = code 1 (0.5) in its low nibble and 2b + 1 = code 2 (1.0) in its high one."""
    blocks = np.zeros((1, 1, 16), dtype=np.uint8)
    blocks[0, 0, 0] = 0x21
    blocks[0, 0, 1] = 0xF9  # -0.5, -6
    values = gpt_oss.dequantize_checkpoint(blocks, np.full((1, 1), 128, dtype=np.uint8))
    np.testing.assert_array_equal(values[0, :4], [1.0, 2.0, -1.0, -12.0])
    np.testing.assert_array_equal(gpt_oss.FP4_VALUES, mx_layout.decode(np.arange(16, dtype=np.uint8), "fp4_e2m1"))


def test_expert_slice_for_expert_parallelism():
    ck = checkpoint(np.random.default_rng(3), experts=4, hidden=512, inter=512)
    full = gpt_oss.to_kernel_layout(**ck)
    rank1 = gpt_oss.to_kernel_layout(**ck, experts=slice(2, 4))
    for name, value in rank1.items():
        np.testing.assert_array_equal(value, full[name][2:4])


def test_wrong_checkpoint_shape_names_the_tensor():
    ck = checkpoint(np.random.default_rng(4), experts=2, hidden=512, inter=512)
    ck["mlp2_scales"] = ck["mlp2_scales"][:, :, :-1]
    with pytest.raises(ValueError, match="mlp2_scales: expected"):
        gpt_oss.to_kernel_layout(**ck)


@pytest.mark.parametrize("element", ["fp4_e2m1", "fp8_e4m3fn"])
def test_word_packing_round_trips(element):
    rng = np.random.default_rng(5)
    codes = rng.integers(0, 16 if element == "fp4_e2m1" else 256, (3, 64), dtype=np.uint8)
    if element == "fp8_e4m3fn":
        codes[(codes & 0x7F) == 0x7F] = 0  # e4m3fn NaN codes
    np.testing.assert_array_equal(mx_layout.unpack_words(mx_layout.pack_words(codes, element), element), codes)
    values = mx_layout.decode(codes, element)
    np.testing.assert_array_equal(mx_layout.encode(values, element), codes)
