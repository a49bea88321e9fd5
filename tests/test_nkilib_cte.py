"""moegen.nkilib.moe_cte: AWS's call conventions map to the cte variant of docs/nkilib.md.

Each case calls the entry point (`moe_cte(...)` or `moe_cte[2](...)`) with AWS's arguments and
compares every output with the same variant written by hand as a spec: bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest

from moegen import nkilib, sim
from moegen.nkilib import (
    ActFnType,
    BlockShardStrategy,
    ExpertAffinityScaleMode,
    MoECTEImplementation,
    MoECTESpec,
    QuantizationConfig,
    ShardOnBlockConfig,
    ShardOnIConfig,
    SkipMode,
    UnsupportedCall,
)
from moegen.verify import cte as harness
from tests.families.support import build_spec, layer_spec

H, INTER, E, T, B = 256, 128, 4, 60, 128
POST, PRE, NO = ExpertAffinityScaleMode.POST_SCALE, ExpertAffinityScaleMode.PRE_SCALE, ExpertAffinityScaleMode.NO_SCALE
Impl = MoECTEImplementation
SILU = "gate_up -> silu -> down -> scale"

# (AWS call: implementation, lnc, flags), (hand-written spec: top_k, options, expert pipeline, quant)
CASES = [
    ((Impl.shard_on_block, 1, {}), (2, "shard=block output=per_core", SILU, "")),
    (
        (Impl.shard_on_block, 2, dict(strategy=BlockShardStrategy.HI_LO, skip=True)),
        (2, "shard=block lnc=2 distribute=halves output=per_core padding=skip", SILU, ""),
    ),
    ((Impl.shard_on_block, 2, dict(accumulate=False)), (1, "shard=block lnc=2 update=overwrite", SILU, "")),
    (
        (Impl.shard_on_i, 2, dict(checkpoint=True, bias=True, clamp=(0.5, None, 0.5, -0.5))),
        (
            2,
            "shard=intermediate lnc=2 checkpoint",
            "gate_up(bias) -> clamp(gate <= 0.5, -0.5 <= up <= 0.5) -> silu -> down(bias) -> scale",
            "",
        ),
    ),
    (
        (Impl.shard_on_i_hybrid, 2, dict(mode=PRE)),
        (2, "shard=intermediate lnc=2 loop=hybrid", "scale -> gate_up -> silu -> down", ""),
    ),
    (
        (Impl.shard_on_i_dropping, 1, dict(mode=NO, act=ActFnType.GELU)),
        (2, "shard=intermediate dropping checkpoint", "gate_up -> gelu -> down", ""),
    ),
    ((Impl.shard_on_i, 1, dict(quant=True)), (2, "shard=intermediate", SILU, "weights=fp8_row")),
    (
        (Impl.shard_on_i, 2, dict(quant=True, skip=True, act=ActFnType.Swish)),
        (2, "shard=intermediate lnc=2 padding=skip", "gate_up -> swish(1.702) -> down -> scale", "weights=fp8_static"),
    ),
]


def _hand_written(top_k: int, options: str, pipeline: str, quant: str, tmp_path):
    text = layer_spec(
        f"kernel prefill : cte {{ block={B} {options} }}",
        hidden=H,
        intermediate=INTER,
        experts=E,
        top_k=top_k,
        expert=pipeline,
        quant=quant,
    )
    (tmp_path / "specs").mkdir()
    generated, modules = build_spec(text, tmp_path / "specs")
    return generated.plans[0], modules["prefill"].prefill


@pytest.mark.parametrize("call, expected", CASES, ids=[str(i) for i in range(len(CASES))])
def test_moe_cte_matches_the_spec_variant(tmp_path, monkeypatch, call, expected):
    monkeypatch.setenv("MOEGEN_NKILIB_CACHE", str(tmp_path / "cache"))
    implementation, lnc, flags = call
    plan, kernel = _hand_written(*expected, tmp_path)
    # the seed page's forms (block_to_expert [N, 1], scales [E, 2, I]) or AWS's tests' ([N], [E, 1, 2I])
    aws_forms = flags.get("skip", False) or flags.get("quant", False)
    inputs = harness.make_inputs(plan, T, np.random.default_rng(5), aws_forms=aws_forms)
    launch = kernel[2] if lnc == 2 else kernel
    want = sim.simulate(launch, trace=False)(*harness.kernel_arguments(plan, inputs))
    want = want if isinstance(want, tuple) else (want,)

    spec = MoECTESpec(
        implementation=implementation,
        shard_on_block=ShardOnBlockConfig(block_sharding_strategy=flags.get("strategy", BlockShardStrategy.PING_PONG)),
        shard_on_I=ShardOnIConfig(checkpoint_activation=flags.get("checkpoint", False)),
    )
    clamp = flags.get("clamp") or (None,) * 4
    quant = QuantizationConfig(inputs.get("gate_up_proj_scale"), inputs.get("down_proj_scale"))
    entry = nkilib.moe_cte[2] if lnc == 2 else nkilib.moe_cte
    got = entry(
        inputs["hidden_states"],
        inputs["expert_affinities_masked"],
        inputs["gate_up_proj_weight"],
        inputs["down_proj_weight"],
        inputs["token_position_to_id"],
        inputs["block_to_expert"],
        B,
        spec,
        conditions=inputs["conditions"],
        gate_and_up_proj_bias=inputs.get("gate_and_up_proj_bias"),
        down_proj_bias=inputs.get("down_proj_bias"),
        quantization_config=quant if flags.get("quant") else None,
        activation_function=flags.get("act", ActFnType.SiLU),
        skip_dma=SkipMode(skip_token=flags.get("skip", False)),
        is_tensor_update_accumulating=flags.get("accumulate", True),
        expert_affinities_scaling_mode=flags.get("mode", POST),
        gate_clamp_upper_limit=clamp[0],
        gate_clamp_lower_limit=clamp[1],
        up_clamp_upper_limit=clamp[2],
        up_clamp_lower_limit=clamp[3],
    )
    got = got if isinstance(got, tuple) else (got,)
    assert len(got) == len(want)
    for name, a, b in zip(harness.OUTPUTS, got, want):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        if name != "out":  # checkpoint slots of empty (padding) block slots are unspecified
            a, b = (harness.mask_unspecified(plan, inputs, name, v) for v in (a, b))
        assert a.shape == b.shape and np.array_equal(a, b), name


@pytest.mark.parametrize(
    "implementation, config, flag",
    [
        (Impl.shard_on_block_mx, ShardOnIConfig(), "spec.implementation"),
        (Impl.shard_on_i, ShardOnIConfig(expert_affinity_multiply_on_I=True), "expert_affinity_multiply_on_I"),
    ],
)
def test_moe_cte_unsupported_combinations_name_the_flag(tmp_path, monkeypatch, implementation, config, flag):
    monkeypatch.setenv("MOEGEN_NKILIB_CACHE", str(tmp_path))
    spec = MoECTESpec(implementation=implementation, shard_on_I=config)
    x = np.zeros((T + 1, H), np.float32)
    with pytest.raises(UnsupportedCall, match=flag):
        nkilib.moe_cte(
            x,
            np.zeros(((T + 1) * E, 1), np.float32),
            np.zeros((E, H, 2, INTER), np.float32),
            np.zeros((E, INTER, H), np.float32),
            np.zeros(B, np.int32),
            np.zeros((1, 1), np.int32),
            B,
            spec,
        )


def test_moe_cte_compute_dtype_must_be_the_input_dtype(tmp_path, monkeypatch):
    monkeypatch.setenv("MOEGEN_NKILIB_CACHE", str(tmp_path))
    spec = MoECTESpec(implementation=Impl.shard_on_i)
    x = np.zeros((T + 1, H), np.float32)
    with pytest.raises(UnsupportedCall, match="compute_dtype"):
        nkilib.moe_cte(
            x,
            np.zeros(((T + 1) * E, 1), np.float32),
            np.zeros((E, H, 2, INTER), np.float32),
            np.zeros((E, INTER, H), np.float32),
            np.zeros(B, np.int32),
            np.zeros((1, 1), np.int32),
            B,
            spec,
            compute_dtype=np.float16,
        )
