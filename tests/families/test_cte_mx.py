"""MX cte kernels (Trainium3: shard_on_block_mx, shard_on_i_mx, shard_on_i_mx_hybrid): MXFP4 / MXFP8
weights in the tkg MX layouts, activations quantized on chip to MXFP8, run in the simulator and compared
per element with moegen.reference.cte on the exactly dequantized weights (moegen/verify/cte_mx.py:
data_tolerance states the allowance).

Reduced shapes: H 640 = 512 + 128 (two H slabs, the second a quarter full), I 576 = 512 + 64 (two I
slabs, the second 16 partitions), E 4, K 2, blocks of 128 tokens, T about 100 (T*K not a multiple of B).
"""

from __future__ import annotations

import numpy as np
import pytest

from moegen.compare import compare
from moegen.diagnostics import SpecError
from moegen.verify import cte as harness
from tests.families.support import build, layer_spec, module_builds

SEED = 20261206
GPT_OSS = "gate_up(bias) -> clamp(gate <= 7, -7 <= up <= 7) -> swish(1.702) -> up_plus_one -> down(bias) -> scale"


def spec_text(kernels: str, *, expert: str = GPT_OSS, weights: str = "mxfp4", dtype: str = "bf16", **dims) -> str:
    shape = dict(hidden=640, intermediate=576, experts=4, top_k=2) | dims
    return layer_spec(kernels, dtype=dtype, expert=expert, quant=f"weights={weights}", **shape)


build_dir = module_builds("cte_mx_builds")


def check(text: str, kernel: str = "k", tokens: int = 70, *, top_k: int = 2, experts_used: int | None = 3):
    """Run one kernel on a seeded routing (expert 3 empty by default); every output within data_tolerance."""
    plans, kernels = build(text)
    plan = plans[kernel]
    rng = np.random.default_rng(SEED)
    pool = plan.global_experts if plan.ep > 1 else experts_used
    expert_index = harness.routing(tokens, plan.global_experts, top_k, rng, experts_used=pool)
    inputs = harness.make_inputs(plan, tokens, rng, expert_index=expert_index)
    want = harness.expected(plan, inputs)
    got = harness.run(kernels[kernel], plan, inputs)
    assert set(got) == set(want)
    for name in want:
        kind = harness.data_tolerance(plan, name, inputs) or harness.tolerance(plan, name)
        result = compare(name, got[name], want[name], kind=kind)
        assert result.ok, f"{kernel} {name}: {result}\n{text}"
    assert np.abs(want["out"]).max() > 0.1  # a real output, not zeros
    return plan, inputs, got, want


# ------------------------------------------------------------------ every variant x a full epilogue

MATRIX_VARIANTS = """\
kernel block1 : cte { block=128 checkpoint }
  kernel block2 : cte { block=128 checkpoint lnc=2 }
  kernel i1     : cte { block=128 checkpoint shard=intermediate }
  kernel i2     : cte { block=128 checkpoint shard=intermediate lnc=2 }
  kernel hybrid1 : cte { block=128 checkpoint shard=intermediate loop=hybrid }
  kernel hybrid2 : cte { block=128 checkpoint shard=intermediate lnc=2 loop=hybrid }"""
# A: GPT-OSS-like: both biases (MX bias layout), all four clamps, swish(1.702), +1 on up, POST_SCALE,
# top-2 accumulation, padding by T, MXFP4
EPILOGUE_A = spec_text(
    MATRIX_VARIANTS,
    expert="gate_up(bias) -> clamp(-1.5 <= gate <= 7, -7 <= up <= 7) -> swish(1.702) -> up_plus_one -> down(bias) -> scale",
)
# B: PRE_SCALE, top-1 overwrite, gelu_tanh, down bias only, padding by -1, MXFP8
EPILOGUE_B = spec_text(
    MATRIX_VARIANTS.replace("checkpoint", "checkpoint padding=skip"),
    top_k=1,
    weights="mxfp8",
    expert="scale -> gate_up -> gelu_tanh -> down(bias)",
)
MATRIX = [(e, k) for e in "AB" for k in ("block1", "block2", "i1", "i2", "hybrid1", "hybrid2")]


@pytest.mark.parametrize("epilogue, kernel", MATRIX, ids=[f"{e}-{k}" for e, k in MATRIX])
def test_variant_with_full_epilogue(epilogue, kernel):
    plan, _, got, _ = check(EPILOGUE_A if epilogue == "A" else EPILOGUE_B, kernel, top_k=2 if epilogue == "A" else 1)
    assert plan.mx and plan.target == "trn3" and plan.checkpoint
    assert plan.variant_label.startswith(("shard_on_block_mx", "shard_on_i_mx"))
    assert got["gate_up_activations_T"].shape[1:] == (2, 576, 128)


# ------------------------------------------------------------------ sweeps (one kernel each)

SWEEP = [
    # id, spec keywords, kernel options
    ("silu_mxfp8", dict(expert="gate_up -> silu -> down -> scale", weights="mxfp8"), "block=128"),
    ("gelu_no_scale", dict(expert="gate_up -> gelu -> down"), "block=128 lnc=2"),
    ("swish1_bias_plus_one", dict(expert="gate_up(bias) -> swish(1.0) -> up_plus_one -> down -> scale"), "block=128"),
    (
        "relu_clamps_i2",
        dict(expert="gate_up -> clamp(-0.5 <= gate <= 0.5, -0.3 <= up <= 0.4) -> relu -> down -> scale"),
        "block=128 shard=intermediate lnc=2",
    ),
    ("squared_relu_down_bias", dict(expert="gate_up -> squared_relu -> down(bias) -> scale"), "block=128"),
    ("gate_clamps_only", dict(expert="gate_up -> clamp(-0.5 <= gate <= 0.5) -> silu -> down -> scale"), "block=128"),
    ("pre_scale_gpt_oss_top2", dict(expert="scale -> " + GPT_OSS.removesuffix(" -> scale")), "block=128 lnc=2"),
    ("fp16", dict(dtype="fp16"), "block=128 shard=intermediate lnc=2"),
    ("bf16_in_fp32_out", dict(dtype="in=bf16 out=fp32"), "block=128"),
    ("fp16_in_bf16_out", dict(dtype="in=fp16 out=bf16", weights="mxfp8"), "block=128 lnc=2"),
    ("pad_skip_lnc2_block", {}, "block=128 padding=skip lnc=2"),
    ("per_core_output", {}, "block=128 lnc=2 output=per_core"),
    ("halves", {}, "block=128 lnc=2 distribute=halves"),
    ("block640_two_token_chunks", {}, "block=640"),
    ("hybrid_skip_top1", dict(top_k=1), "block=128 shard=intermediate lnc=2 loop=hybrid padding=skip"),
]


@pytest.mark.parametrize("spec_kw, options", [s[1:] for s in SWEEP], ids=[s[0] for s in SWEEP])
def test_sweep_cell(spec_kw, options):
    top_k = spec_kw.get("top_k", 2)
    check(spec_text(f"kernel k : cte {{ {options} }}", **spec_kw), top_k=top_k)


def test_expert_parallel_rank():
    """ep 2: the last rank's 4 local experts of 8; tokens routed elsewhere add nothing."""
    check(spec_text("kernel k : cte { block=128 ep=2 }", experts=8))


def test_top1_overwrite_and_accumulate_agree():
    text = spec_text("kernel o : cte { block=128 }\n  kernel a : cte { block=128 update=accumulate }", top_k=1)
    _, _, overwrite, _ = check(text, "o", top_k=1)
    _, _, accumulate, _ = check(text, "a", top_k=1)
    assert compare("agree", overwrite["out"], accumulate["out"], kind="exact").ok


def test_tolerance_catches_swapped_gate_and_up():
    """The allowance is small: swapping the gate and up weights of every expert fails it by far."""
    plans, kernels = build(spec_text("kernel k : cte { block=128 }"))
    plan = plans["k"]
    inputs = harness.make_inputs(plan, 70, np.random.default_rng(SEED))
    got = harness.run(kernels["k"], plan, inputs)["out"]
    swapped = dict(inputs)
    for name in ("gate_up_proj_weight", "gate_up_proj_scale"):
        swapped[name] = np.ascontiguousarray(inputs[name][:, :, ::-1])
    want = harness.expected(plan, swapped)["out"]
    assert not compare("out", got, want, kind=harness.data_tolerance(plan, "out", swapped)).ok


def test_wrong_weight_layout_names_the_argument():
    plans, kernels = build(spec_text("kernel k : cte { block=128 }"))
    plan = plans["k"]
    inputs = harness.make_inputs(plan, 20, np.random.default_rng(SEED))
    inputs["down_proj_weight"] = inputs["down_proj_weight"].astype(np.uint32)
    with pytest.raises(Exception, match="down_proj_weight must be uint16"):
        harness.run(kernels["k"], plan, inputs)


def _refusal(tmp_path, text: str) -> str:
    path = tmp_path / "t.moe"
    path.write_text(text)
    from moegen.compiler import generate

    with pytest.raises(SpecError) as error:
        generate(path)
    return str(error.value)


@pytest.mark.parametrize(
    "kernel, kw, reason",
    [
        ("kernel k : cte { target=trn2 }", {}, "Trainium3"),
        ("kernel k : cte { shard=intermediate lnc=2 loop=hybrid target=trn2 }", {}, "Trainium3"),
        ("kernel k : cte { dropping }", {}, "no MX dropping variant"),
        ("kernel k : cte { weights=resident }", {}, "no expert stays resident"),
        ("kernel k : cte { shard=intermediate lnc=2 }", dict(intermediate=512), "1 slab"),
        ("kernel k : cte { }", dict(hidden=640, intermediate=560), "not a multiple of 32"),
        ("kernel k : cte { }", dict(expert="up -> silu -> down"), "non-gated experts with MX weights"),
    ],
    ids=["trn2", "trn2_hybrid", "dropping", "resident", "one_i_slab", "not_mx_blocks", "not_gated"],
)
def test_refused_at_spec_time(tmp_path, kernel, kw, reason):
    message = _refusal(tmp_path, spec_text(kernel, **kw))
    assert reason in message and "t.moe:" in message


def test_trn2_refusal_points_at_the_option(tmp_path):
    message = _refusal(tmp_path, spec_text("kernel k : cte { target=trn2 }"))
    line = [
        n for n, text in enumerate(spec_text("kernel k : cte { target=trn2 }").splitlines(), 1) if "target" in text
    ][0]
    col = spec_text("kernel k : cte { target=trn2 }").splitlines()[line - 1].index("target") + 1
    assert f"t.moe:{line}:{col}: error:" in message


def test_bf16_cte_on_trn3_is_refused(tmp_path):
    message = _refusal(
        tmp_path,
        layer_spec(
            "kernel k : cte { target=trn3 }",
            hidden=256,
            intermediate=256,
            experts=4,
            top_k=2,
            expert="gate_up -> silu -> down -> scale",
        ),
    )
    assert "MX variants" in message


# ------------------------------------------------------------------ padding tiles skipped at run time

PADDING_TILES = """\
kernel block2 : cte { block=512 lnc=2 }
  kernel i2     : cte { block=512 shard=intermediate lnc=2 }
  kernel hyb2   : cte { block=512 shard=intermediate lnc=2 loop=hybrid padding=skip }"""


@pytest.mark.parametrize("kernel", ["block2", "i2", "hyb2"])
def test_padding_tiles_issue_no_mx_work(kernel):
    """Blocks of 512 slots holding ~70 tokens: only each block's first 128-slot tile runs its transposes,
    quantize_mx and nc_matmul_mx (each tile's work in a 0/1 nl.fori_loop); the outputs match the reference.
    Fails on the kernels that skipped nothing (every tile of every block issued its MX work)."""
    from moegen import sim

    with sim.recording():
        plan, inputs, _, _ = check(spec_text(PADDING_TILES), kernel, 100)
        trace = sim.last_run().trace
    assert plan.skip_padding_tiles and plan.token_chunks == tuple((c, 128) for c in range(0, 512, 128))
    slots = inputs["token_position_to_id"].reshape(-1, plan.token_tiles, 128)
    active = int(((slots >= 0) & (slots < 100)).any(axis=2).sum())
    assert active < slots.shape[0] * plan.token_tiles  # most tiles hold only padding
    # per active tile, summed over the cores that run it (shard=intermediate: both, each its I slabs)
    slabs = sum(count for _, count in plan.mx_core_slabs)
    h_slabs, partials = plan.mx.h_slabs, 2 if plan.exchange else 1
    counts = {
        op: sum(1 for rec in trace if rec["opcode"] == op) for op in ("nc_matmul_mx", "quantize_mx", "nc_transpose")
    }
    cores = len(plan.mx_core_slabs)
    assert counts["nc_matmul_mx"] == active * slabs * (4 * h_slabs * 2 + len(plan.down_chunks) * partials)
    assert counts["quantize_mx"] == active * (cores * h_slabs + slabs)
    assert counts["nc_transpose"] == active * cores * h_slabs * 4
