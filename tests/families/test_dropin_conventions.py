"""Issue 16: the places where moegen's kernels must follow AWS's hand-written kernels (nki-library
router_topk, moe_tkg, moe_cte), each checked against an independent NumPy computation."""

from __future__ import annotations

import numpy as np
import pytest

from moegen.compare import compare
from moegen.diagnostics import SpecError
from moegen.verify import router as router_harness
from tests.families.support import build_spec, layer_spec

SEED = 20261206


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _run_router(tmp_path, router: str, options: str = "", tokens: int = 9):
    text = layer_spec(
        f"kernel route : router {{ {options} }}", hidden=256, intermediate=128, experts=16, top_k=2, router=router
    )
    generated, modules = build_spec(text, tmp_path)
    plan = generated.plans[0]
    inputs = router_harness.make_inputs(plan, tokens, np.random.default_rng(SEED))
    got = router_harness.run(modules["route"].route, plan, inputs)
    return plan, inputs, got


@pytest.mark.parametrize("act", ["softmax", "sigmoid"])
def test_router_pre_norm_without_l1_stores_all_scores(tmp_path, act):
    """AWS's (ACT1, topK) pipeline has no scatter: expert_affinities holds act(logits) for all E."""
    _, inputs, got = _run_router(tmp_path, f"linear -> {act} -> topk")
    logits = inputs["x"].astype(np.float64) @ inputs["w"].astype(np.float64)
    scores = _softmax(logits) if act == "softmax" else 1.0 / (1.0 + np.exp(-logits))
    result = compare("expert_affinities", got["expert_affinities"], scores.astype(np.float32), kind="bf16")
    assert result.ok, result
    assert np.count_nonzero(got["expert_affinities"]) > 2 * len(scores)  # not only the K selected


def test_router_pre_norm_selected_only_is_an_option(tmp_path):
    """affinities=selected keeps the scattered form: K nonzero weights per token."""
    plan, inputs, got = _run_router(tmp_path, "linear -> softmax -> topk", "affinities=selected")
    assert plan.affinities == "selected"
    assert (np.count_nonzero(got["expert_affinities"], axis=1) == 2).all()
    want = router_harness.expected(plan, inputs)
    assert compare("a", got["expert_affinities"], want["expert_affinities"], kind="bf16").ok


@pytest.mark.parametrize(
    "router, options, option",
    [
        ("linear -> topk -> softmax", "affinities=all", "affinities"),
        ("linear -> softmax -> topk -> renormalize", "affinities=all", "affinities"),
        ("linear -> softmax -> topk", "scatter=dma", "scatter"),
    ],
)
def test_router_affinities_all_refusals(tmp_path, router, options, option):
    text = layer_spec(
        f"kernel route : router {{ {options} }}", hidden=256, intermediate=128, experts=16, top_k=2, router=router
    )
    with pytest.raises(SpecError) as error:
        build_spec(text, tmp_path)
    assert option in str(error.value)


# ------------------------------------------------------------------ cte padding=skip: AWS's shapes


def _cte_kernel(tmp_path, options: str, expert: str = "gate_up -> silu -> down -> scale"):
    from moegen.verify import cte as cte_harness

    text = layer_spec(
        f"kernel prefill : cte {{ block=128 {options} }}",
        hidden=256,
        intermediate=128,
        experts=4,
        top_k=2,
        expert=expert,
    )
    generated, modules = build_spec(text, tmp_path)
    return generated.plans[0], modules["prefill"].prefill, cte_harness


def _aws_skip_inputs(plan, tokens: int, rng):
    """AWS's padding-by--1 call: hidden_states [T, H], expert_affinities_masked [T*E, 1], no zero row."""
    from moegen import blocking
    from moegen.reference import quant
    from moegen.verify import cte as cte_harness

    e, k = plan.experts, plan.top_k
    index = cte_harness.routing(tokens, e, k, rng)
    raw = rng.random((tokens, k)) + 0.25
    affinities = quant.cast(raw / raw.sum(axis=1, keepdims=True), plan.dtype)
    blocks = blocking.build_blocks(index, affinities, e, plan.block, pad_with=-1)
    inputs = {
        "hidden_states": quant.cast(rng.standard_normal((tokens, plan.hidden)), plan.dtype),
        "expert_affinities_masked": blocks.expert_affinities_masked[: tokens * e],
        "token_position_to_id": blocks.token_position_to_id,
        "block_to_expert": blocks.block_to_expert,
        "expert_index": index,
        "expert_affinities": affinities,
    }
    inputs.update(cte_harness._weights(plan, rng, np.arange(e)))
    return inputs


@pytest.mark.parametrize("lnc", [1, 2])
def test_cte_padding_skip_takes_aws_shapes(tmp_path, lnc):
    """padding=skip with hidden_states [T, H]: every token's output (the last one too) is computed,
    and out has the shape of hidden_states; checked against the per-token reference."""
    from moegen import sim
    from moegen.reference import cte as cte_reference

    plan, kernel, cte_harness = _cte_kernel(tmp_path, f"padding=skip lnc={lnc}")
    tokens = 70
    inputs = _aws_skip_inputs(plan, tokens, np.random.default_rng(SEED))
    launch = kernel[2] if lnc == 2 else kernel
    out = np.asarray(sim.simulate(launch)(*cte_harness.kernel_arguments(plan, inputs)), dtype=np.float32)
    assert out.shape == (tokens, plan.hidden)
    want = cte_reference.moe_per_token(
        inputs["hidden_states"],
        inputs["expert_index"],
        inputs["expert_affinities"],
        inputs["gate_up_proj_weight"],
        inputs["down_proj_weight"],
        output_dtype=plan.out_dtype,
        precision=cte_harness.reference_precision(plan),
    )
    assert np.abs(out[-1]).max() > 0
    result = compare("out", out, want, kind="bf16")
    assert result.ok, result


def test_cte_padding_skip_refuses_the_padding_row_affinities(tmp_path):
    """hidden_states [T, H] with expert_affinities_masked [(T+1)*E, 1] fits neither convention whole:
    refused naming the argument."""
    from moegen import sim

    plan, kernel, cte_harness = _cte_kernel(tmp_path, "padding=skip")
    inputs = _aws_skip_inputs(plan, 40, np.random.default_rng(SEED))
    inputs["expert_affinities_masked"] = np.zeros((41 * plan.experts, 1), dtype=np.float32)
    with pytest.raises(Exception, match="expert_affinities_masked"):
        sim.simulate(kernel)(*cte_harness.kernel_arguments(plan, inputs))


def test_cte_padding_row_keeps_the_zero_row(tmp_path):
    """padding=row keeps moegen's [T+1, H] convention (ids T read the zero row), verified end to end."""
    plan, kernel, cte_harness = _cte_kernel(tmp_path, "padding=row")
    inputs = cte_harness.make_inputs(plan, 50, np.random.default_rng(SEED))
    assert inputs["hidden_states"].shape == (51, plan.hidden)
    got = cte_harness.run(kernel, plan, inputs)
    want = cte_harness.expected(plan, inputs)
    assert got["out"].shape == (51, plan.hidden)
    assert compare("out", got["out"], want["out"], kind="bf16").ok


# ------------------------------------------------------------------ cte checkpoint: after the clamp


def test_cte_checkpoint_stores_gate_up_after_the_clamp(tmp_path):
    """gate_up_activations_T holds the gate/up values AWS's kernel saves for the backward pass: after
    dequant, bias and clamp. Tight clamps make the difference visible in every block."""
    plan, kernel, cte_harness = _cte_kernel(
        tmp_path,
        "checkpoint",
        expert="gate_up(bias) -> clamp(gate <= 0.25, -0.25 <= up <= 0.25) -> silu -> down -> scale",
    )
    inputs = cte_harness.make_inputs(plan, 60, np.random.default_rng(SEED))
    got = cte_harness.run(kernel, plan, inputs)
    saved = got["gate_up_activations_T"]
    live = np.asarray(inputs["token_position_to_id"]).reshape(-1, plan.block) < 60
    gate = saved[:, 0].transpose(0, 2, 1)[live]  # [live slots, I]
    up = saved[:, 1].transpose(0, 2, 1)[live]
    assert gate.max() <= 0.25 and up.max() <= 0.25 and up.min() >= -0.25
    assert (gate == np.float32(0.25)).any() and (up == np.float32(-0.25)).any()  # the clamps bit
    want = cte_harness.expected(plan, inputs)
    for name in ("out", "gate_up_activations_T", "down_activations"):
        result = compare(name, got[name], want[name], kind="bf16")
        assert result.ok, result


# ------------------------------------------------------------------ index and scale forms (item 5)


@pytest.mark.parametrize("mode", ["selective", "all_experts mask_unselected"])
def test_tkg_takes_aws_index_and_row_scale_forms(tmp_path, mode):
    """uint32 expert_index and fp8 row scales [E_L, 1, 2I] / [E_L, 1, H]: same output as int32 and
    [E_L, 2, I] / [E_L, H] (identical memory layout), both equal to the reference."""
    from moegen.verify import tkg as tkg_harness

    text = layer_spec(
        f"kernel decode : tkg {{ mode={mode} }}",
        hidden=256,
        intermediate=192,
        experts=8,
        top_k=2,
        quant="weights=fp8_row",
        expert="gate_up -> silu -> down -> scale",
    )
    generated, modules = build_spec(text, tmp_path)
    plan = generated.plans[0]
    aws = tkg_harness.make_inputs(plan, 5, np.random.default_rng(SEED), aws_forms=True)
    ours = tkg_harness.make_inputs(plan, 5, np.random.default_rng(SEED))
    assert aws["expert_index"].dtype == np.uint32 and aws["expert_gate_up_weights_scale"].shape == (8, 1, 384)
    got_aws = tkg_harness.run(modules["decode"].decode, plan, aws)["output"]
    got_ours = tkg_harness.run(modules["decode"].decode, plan, ours)["output"]
    assert np.array_equal(got_aws, got_ours)
    want = tkg_harness.expected(plan, ours)["output"]
    assert compare("output", got_aws, want, kind=tkg_harness.tolerance(plan, "output")).ok


@pytest.mark.parametrize("options", ["shard=block", "shard=intermediate lnc=2 loop=hybrid"])
def test_cte_takes_aws_block_to_expert_and_row_scale_forms(tmp_path, options):
    """block_to_expert [N] and fp8 row scales [E, 1, 2I] / [E, 1, H]: the same output as [N, 1] and
    [E, 2, I] / [E, H], equal to the reference."""
    from moegen.verify import cte as cte_harness

    text = layer_spec(
        f"kernel prefill : cte {{ block=128 {options} }}",
        hidden=256,
        intermediate=128,
        experts=4,
        top_k=2,
        quant="weights=fp8_row",
        expert="gate_up -> silu -> down -> scale",
    )
    generated, modules = build_spec(text, tmp_path)
    plan, kernel = generated.plans[0], modules["prefill"].prefill
    aws = cte_harness.make_inputs(plan, 40, np.random.default_rng(SEED), aws_forms=True)
    ours = cte_harness.make_inputs(plan, 40, np.random.default_rng(SEED))
    assert aws["block_to_expert"].ndim == 1 and aws["gate_up_proj_scale"].shape == (4, 1, 256)
    got_aws = cte_harness.run(kernel, plan, aws)["out"]
    assert np.array_equal(got_aws, cte_harness.run(kernel, plan, ours)["out"])
    assert compare("out", got_aws, cte_harness.expected(plan, ours)["out"], kind="bf16").ok


# ------------------------------------------------------------------ cte per-core partial outputs (item 5)


@pytest.mark.parametrize("lnc", [1, 2])
def test_cte_per_core_output_returns_aws_partials(tmp_path, lnc):
    """output=per_core: out [T+1, 2, H], core c's accumulation in [:, c, :] (AWS's shard_on_block
    form); the two slots add up to the reference, and at lnc=1 slot 0 is the finished sum."""
    from moegen import sim

    plan, kernel, cte_harness = _cte_kernel(tmp_path, f"output=per_core lnc={lnc}")
    inputs = cte_harness.make_inputs(plan, 100, np.random.default_rng(SEED))
    launch = kernel[2] if lnc == 2 else kernel
    raw = np.asarray(sim.simulate(launch)(*cte_harness.kernel_arguments(plan, inputs)), dtype=np.float32)
    assert raw.shape == (101, 2, plan.hidden)
    assert not raw[100].any()  # the padding row T, both slots
    if lnc == 1:
        assert not raw[:, 1].any()
    else:
        assert raw[:100, 0].any() and raw[:100, 1].any()  # both cores contributed
    want = cte_harness.expected(plan, inputs)["out"]
    assert compare("out", raw.sum(axis=1), want, kind="bf16").ok


def test_cte_per_core_output_needs_block_sharding_and_accumulation(tmp_path):
    with pytest.raises(SpecError, match="output=per_core"):
        _cte_kernel(tmp_path, "output=per_core shard=intermediate")
