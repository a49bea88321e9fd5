"""Non-gated experts (`up -> act -> down`, Nemotron 3): weights [E, H, I], one input projection.

Every epilogue cell of the tkg and cte families (activation, up/down bias, clamp of the one
projection, NO/PRE/POST scale, bf16 / fp8 row / fp8 static weights, static fp8 inputs) is built in
a few variants of each family, run in the simulator and compared per element with the reference
(moegen.reference.mlp with gated=False). A cell the plan cannot build is refused with its reason:
see test_refusals. Reduced shapes: H 320 (a 64-row remainder), I 224 (128 + 96).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from moegen.compare import compare
from moegen.verify import harness
from tests.families.support import build, build_spec, layer_spec, module_builds

SEED = 20261206

# Each epilogue with the kernels it is verified in (tkg and cte variants), and its tokens.
KERNELS = """
  kernel tkg_sel       : tkg { verify_tokens=5 }
  kernel tkg_all_ep    : tkg { mode=all_experts ep=2 mask_unselected lnc=2 verify_tokens=6 }
  kernel tkg_hidden    : tkg { lnc=2 shard=hidden eager verify_tokens=5 }
  kernel tkg_sbuf      : tkg { output=sbuf tokens<=32 verify_tokens=3 }
  kernel cte_block     : cte { block=128 verify_tokens=150 }
  kernel cte_i_hybrid  : cte { block=128 shard=intermediate loop=hybrid lnc=2 verify_tokens=150 }
  kernel cte_ckpt_drop : cte { block=128 checkpoint padding=skip verify_tokens=100 }
  kernel cte_dropping  : cte { block=128 dropping lnc=2 verify_tokens=100 }
  kernel cte_stream    : cte { block=128 weights=stream lnc=2 distribute=halves output=per_core verify_tokens=150 }
"""
EPILOGUES = {
    "squared_relu_post": dict(expert="up -> squared_relu -> down -> scale"),
    "silu_bias_clamp": dict(expert="up(bias) -> clamp(-2 <= gate <= 2) -> silu -> down(bias) -> scale"),
    "gelu_tanh_pre_fp8_row": dict(expert="scale -> up -> gelu_tanh -> down", quant="weights=fp8_row"),
    "swish1_none_fp8_static": dict(expert="up(bias) -> swish(1.0) -> down", quant="weights=fp8_static"),
    "relu_bias_post": dict(expert="up(bias) -> relu -> down(bias) -> scale"),
    "gelu_clamp_pre": dict(expert="scale -> up -> clamp(gate <= 1.5) -> gelu -> down"),
    "swish1702_sqrelu_fp8_bias": dict(expert="up(bias) -> squared_relu -> down -> scale", quant="weights=fp8_row"),
    "gpt_swish_post": dict(expert="up -> swish(1.702) -> down(bias) -> scale"),
}
TKG_ONLY = {
    # static fp8 input scales are a tkg feature (the cte plan refuses them for every expert)
    "relu_fp8_static_inputs": dict(
        expert="up -> squared_relu -> down -> scale", quant="weights=fp8_static activations=fp8_static"
    ),
}


def _spec(keywords: dict, kernels: str) -> str:
    if "scale" not in keywords["expert"]:  # NO_SCALE: no affinities to mask or pass eagerly
        kernels = kernels.replace(" mask_unselected", "").replace(" eager", "")
    return layer_spec(kernels, hidden=320, intermediate=224, experts=8, top_k=2, **keywords)


build_dir = module_builds("nongated_builds")


def _verify(text: str, kernel: str) -> None:
    plans, kernels = build(text)
    plan = plans[kernel]
    family = harness(plan.family)
    inputs = family.make_inputs(plan, plan.verify_tokens, np.random.default_rng(SEED))
    weights = inputs.get("expert_gate_up_weights", inputs.get("gate_up_proj_weight"))
    assert weights.ndim == 3, "non-gated weights are [E, H, I]"
    want = family.expected(plan, inputs)
    got = family.run(kernels[kernel], plan, inputs)
    for name in want:
        assert np.abs(np.asarray(want[name], dtype=np.float32)).max() > 0, f"{name}: the reference is all zeros"
        kind = getattr(family, "data_tolerance", lambda *a: None)(plan, name, inputs) or family.tolerance(plan, name)
        result = compare(name, got[name], want[name], kind=kind)
        assert result.ok, f"{kernel} {name}: {result}\n{text}"


CELLS = [(e, k) for e in EPILOGUES for k in ("tkg_sel", "tkg_all_ep", "tkg_hidden", "tkg_sbuf")]
CELLS += [
    (e, k) for e in EPILOGUES for k in ("cte_block", "cte_i_hybrid", "cte_ckpt_drop", "cte_dropping", "cte_stream")
]


@pytest.mark.parametrize("epilogue, kernel", CELLS, ids=[f"{e}-{k}" for e, k in CELLS])
def test_non_gated_cell_matches_reference(epilogue, kernel):
    _verify(_spec(EPILOGUES[epilogue], KERNELS), kernel)


@pytest.mark.parametrize("kernel", ["tkg_sel", "tkg_all_ep", "tkg_hidden"])
def test_non_gated_static_fp8_inputs(kernel):
    tkg_kernels = "\n".join(line for line in KERNELS.splitlines() if ": tkg" in line)
    _verify(_spec(TKG_ONLY["relu_fp8_static_inputs"], tkg_kernels), kernel)


@pytest.mark.parametrize("expert", ["up -> squared_relu -> down -> scale", "scale -> up(bias) -> silu -> down(bias)"])
def test_non_gated_sbuf_input_and_output(expert):
    """hidden_input in SBUF as [128, T, H / 128] (H a multiple of 128) and the result left in SBUF."""
    text = layer_spec(
        "kernel k : tkg { input=sbuf output=sbuf tokens<=32 verify_tokens=3 }",
        hidden=256,
        intermediate=224,
        experts=8,
        top_k=2,
        expert=expert,
    )
    _verify(text, "k")


def test_non_gated_kernels_hold_no_gate(tmp_path):
    """No gate weights, no gate matmul: the weights slabs are [P, 1, GATE_UP_COLUMNS] (h_outer: one H tile's
    rows), one nc_matmul per H tile and I tile for the input projection, and no up_acc / up tiles."""
    generated, _ = build_spec(_spec(EPILOGUES["squared_relu_post"], KERNELS), tmp_path)
    tkg = generated.files["tkg_sel.py"]
    assert "w_gate_up = [nl.ndarray((P, 1, GATE_UP_COLUMNS)" in tkg
    assert tkg.count("nisa.nc_matmul(dst=gate_acc") == 1 and not re.search(r"\bup(_psum|_acc)? = ", tkg)
    assert "expert_gate_up_weights: [E_L, H, I]" in tkg
    cte = generated.files["cte_block.py"]
    assert not re.search(r"\bup_(psum|tile) = ", cte) and "(E, H, I_TP)" in cte
    assert str(generated.plans[0].mlp).startswith("not gated")


@pytest.mark.slow
def test_nemotron3_spec_verifies_without_gate_weights(tmp_path):
    """specs/nemotron3_nano_30b_a3b.moe: router, tkg, cte and the padded activations verify, and no
    kernel of it has gate weights ([E, H, I] up weights, no gate matmul)."""
    from moegen.codegen.build import write
    from moegen.compiler import generate
    from moegen.verify import verify_plans

    generated = generate(Path(__file__).resolve().parents[2] / "specs" / "nemotron3_nano_30b_a3b.moe")
    assert {plan.family for plan in generated.plans} == {"router", "tkg", "cte", "activation"}
    for plan in generated.plans:
        if plan.family in ("tkg", "cte"):
            assert not plan.mlp.gated and "up_psum = " not in generated.files[f"{plan.kernel_name}.py"]
    folder = write(generated, tmp_path)
    assert verify_plans(list(generated.plans), folder, out=lambda line: None)
