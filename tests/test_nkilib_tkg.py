"""moegen.nkilib.moe_tkg: AWS's call conventions map to the tkg variant of docs/nkilib.md.

Each case calls the entry point with AWS's arguments and compares the output with the same variant
written by hand as a spec and run through the verify harness: bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest

from moegen import nkilib
from moegen.nkilib import ActFnType, ExpertAffinityScaleMode, UnsupportedCall
from moegen.verify import tkg as harness
from tests.families.support import build_spec, layer_spec

H, INTER, E, K, T = 256, 192, 8, 2, 5
NO, POST, PRE = ExpertAffinityScaleMode.NO_SCALE, ExpertAffinityScaleMode.POST_SCALE, ExpertAffinityScaleMode.PRE_SCALE

# (AWS flags, the hand-written spec: expert pipeline, kernel options, quant, dtype)
CASES = [
    (dict(is_all_expert=False, mode=NO), ("gate_up -> silu -> down", "mode=selective", "", "bf16")),
    (dict(is_all_expert=False, mode=POST), ("gate_up -> silu -> down -> scale", "", "", "bf16")),
    (dict(is_all_expert=False, mode=PRE, act=ActFnType.GELU), ("scale -> gate_up -> gelu -> down", "", "", "bf16")),
    (
        dict(is_all_expert=False, mode=POST, eager=True, act=ActFnType.Swish, bias=True),
        ("gate_up(bias) -> swish(1.702) -> down(bias) -> scale", "eager", "", "bf16"),
    ),
    (
        dict(is_all_expert=False, mode=NO, eager=True, mask=True),  # both ignored, as AWS ignores them
        ("gate_up -> silu -> down", "", "", "bf16"),
    ),
    (
        dict(is_all_expert=True, mode=POST, rank=True, mask=True, ep=2),
        ("gate_up -> silu -> down -> scale", "mode=all_experts mask_unselected ep=2", "", "bf16"),
    ),
    (
        dict(is_all_expert=True, mode=NO, act=ActFnType.GELU_Tanh_Approx, clamp=(7.0, None, 7.0, -7.0)),
        ("gate_up -> clamp(gate <= 7.0, -7.0 <= up <= 7.0) -> gelu_tanh -> down", "mode=all_experts", "", "bf16"),
    ),
    (
        dict(is_all_expert=False, mode=POST, quant="row", out="float32"),
        ("gate_up -> silu -> down -> scale", "out=fp32", "weights=fp8_row", "fp16"),
    ),
    (
        dict(is_all_expert=True, mode=POST, quant="static", rank=True),
        ("gate_up -> silu -> down -> scale", "mode=all_experts", "weights=fp8_static", "fp16"),
    ),
]


def _spec(expected) -> str:
    pipeline, options, quant, dtype = expected
    return layer_spec(
        f"kernel decode : tkg {{ {options} }}",
        hidden=H,
        intermediate=INTER,
        experts=E,
        top_k=K,
        dtype=dtype,
        quant=quant,
        expert=pipeline,
    )


@pytest.mark.parametrize("flags, expected", CASES, ids=[str(i) for i in range(len(CASES))])
def test_moe_tkg_matches_the_spec_variant(tmp_path, monkeypatch, flags, expected):
    monkeypatch.setenv("MOEGEN_NKILIB_CACHE", str(tmp_path / "cache"))
    (tmp_path / "specs").mkdir()
    generated, modules = build_spec(_spec(expected), tmp_path / "specs")
    plan = generated.plans[0]
    inputs = harness.make_inputs(plan, T, np.random.default_rng(11), aws_forms=True)
    want = harness.run(modules["decode"].decode, plan, inputs)["output"]

    rng = np.random.default_rng(11)
    full = harness.make_inputs(plan, T, rng, aws_forms=True)  # the same values, by name
    if flags.get("eager") and "expert_affinities_eager" not in full:
        index = full["expert_index"].astype(np.int64)
        full["expert_affinities_eager"] = np.take_along_axis(full["expert_affinities"], index, axis=1)
    clamp = flags.get("clamp") or (None,) * 4
    out = nkilib.moe_tkg(
        full["hidden_input"],
        full["expert_gate_up_weights"],
        full["expert_down_weights"],
        full["expert_affinities"],
        full["expert_index"],
        flags["is_all_expert"],
        rank_id=full.get("rank_id", np.zeros((1, 1), np.int32)) if flags.get("rank") else None,
        expert_gate_up_bias=full.get("expert_gate_up_bias"),
        expert_down_bias=full.get("expert_down_bias"),
        expert_gate_up_weights_scale=full.get("expert_gate_up_weights_scale"),
        expert_down_weights_scale=full.get("expert_down_weights_scale"),
        mask_unselected_experts=flags.get("mask", False),
        expert_affinities_eager=full.get("expert_affinities_eager") if flags.get("eager") else None,
        expert_affinities_scaling_mode=flags["mode"],
        activation_fn=flags.get("act", ActFnType.SiLU),
        output_dtype=np.dtype(flags["out"]) if "out" in flags else None,
        gate_clamp_upper_limit=clamp[0],
        gate_clamp_lower_limit=clamp[1],
        up_clamp_upper_limit=clamp[2],
        up_clamp_lower_limit=clamp[3],
    )
    assert out.shape == (T, H)
    assert np.array_equal(np.asarray(out, np.float32), want)


@pytest.mark.parametrize(
    "flag, value",
    [("output_in_sbuf", True), ("is_all_expert_dynamic", True), ("hidden_input_scale", np.ones((1, 1), np.float32))],
)
def test_moe_tkg_unsupported_flags_name_the_flag(tmp_path, monkeypatch, flag, value):
    monkeypatch.setenv("MOEGEN_NKILIB_CACHE", str(tmp_path))
    x = np.zeros((T, H), np.float32)
    with pytest.raises(UnsupportedCall, match=flag):
        nkilib.moe_tkg(
            x,
            np.zeros((E, H, 2, INTER)),
            np.zeros((E, INTER, H)),
            np.zeros((T, E)),
            np.zeros((T, K)),
            False,
            **{flag: value},
        )


def test_moe_tkg_eager_in_all_expert_mode_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("MOEGEN_NKILIB_CACHE", str(tmp_path))
    x = np.zeros((T, H), np.float32)
    with pytest.raises(UnsupportedCall, match="expert_affinities_eager"):
        nkilib.moe_tkg(
            x,
            np.zeros((E, H, 2, INTER)),
            np.zeros((E, INTER, H)),
            np.zeros((T, E)),
            np.zeros((T, K)),
            True,
            expert_affinities_eager=np.zeros((T, K)),
            expert_affinities_scaling_mode=POST,
        )
