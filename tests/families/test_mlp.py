"""mlp family (dense gated MLP with MXFP8 matmuls, trn3): every variant of specs/mlp_mxfp8_matrix.moe
built from the spec, run in the simulator and compared per element with moegen.reference.dense_mlp_mx;
plan decisions and refusals (trn2 refused at spec time, pointing at the option); argument checks.
Real model shapes (Llama-3-70B MLP at TP 8, Qwen3-30B-A3B expert MLP at S 4096) are `slow`."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pytest

from moegen.codegen.build import write
from moegen.compiler import generate, load_spec, plan_spec
from moegen.diagnostics import SpecError
from moegen.verify import mlp as harness
from moegen.verify import verify_plan, verify_plans

REPO = Path(__file__).resolve().parents[2]
MATRIX = REPO / "specs" / "mlp_mxfp8_matrix.moe"
SEED = 20261206


@cache
def matrix_build(folder: str):
    generated = generate(MATRIX)
    out = write(generated, Path(folder))
    return {plan.kernel_name: plan for plan in generated.plans}, out


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    return matrix_build(str(tmp_path_factory.mktemp("mlp_builds")))


MATRIX_KERNELS = [plan.kernel_name for plan in plan_spec(load_spec(MATRIX))]


@pytest.mark.parametrize("kernel", MATRIX_KERNELS)
def test_matrix_variant_matches_reference(matrix, kernel):
    plans, folder = matrix
    checks = verify_plan(plans[kernel], folder / f"{kernel}.py")
    assert checks and all(check.ok for check in checks), "\n".join(check.detail for check in checks)


def test_odd_token_count_splits_19_and_18_rows_over_two_cores(matrix):
    plans, folder = matrix
    plan = plans["mlp_lnc2_odd"]
    assert plan.lnc == 2 and plan.verify_tokens == 37
    for tokens in (1, 2, 37):
        assert all(check.ok for check in verify_plan(plan, folder / "mlp_lnc2_odd.py", tokens=tokens))


def test_out_tolerance_still_catches_a_swapped_gate_and_up(matrix):
    """The per-row allowance for an h element flipping one MXFP8 step (moegen.verify.mlp.data_tolerance)
    is far below what a layout bug does: swapping the gate and up halves fails the comparison."""
    from moegen.compare import compare

    plans_, _ = matrix
    plan = plans_["mlp_bf16_auto"]
    inputs = harness.make_inputs(plan, 16, np.random.default_rng(SEED))
    want = harness.expected(plan, inputs)["out"]
    swapped = dict(inputs, gate_up=np.concatenate([inputs["gate_up"][384:], inputs["gate_up"][:384]]))
    wrong = harness.expected(plan, swapped)["out"]
    tol = harness.data_tolerance(plan, "out", inputs)
    assert compare("out", want, want, kind=tol).ok
    assert not compare("out", wrong, want, kind=tol).ok


# ------------------------------------------------------------------ plans and refusals


def layer_spec(kernels: str, *, dims: str = "hidden=1024 intermediate=512 experts=1 top_k=1", **kw) -> str:
    dtype = kw.get("dtype", "bf16")
    expert = kw.get("expert", "gate_up -> silu -> down")
    return f"moe t {{\n  dims {dims}\n  dtype {dtype}\n  expert = {expert}\n  {kernels}\n}}\n"


SMALL_DIMS = "hidden=640 intermediate=384 experts=1 top_k=1"


def generate_text(tmp_path: Path, text: str):
    path = tmp_path / "t.moe"
    path.write_text(text)
    return generate(path)


def plans(tmp_path: Path, text: str):
    path = tmp_path / "t.moe"
    path.write_text(text)
    return plan_spec(load_spec(path))


def refusal(tmp_path: Path, text: str) -> str:
    with pytest.raises(SpecError) as error:
        plans(tmp_path, text)
    return str(error.value)


def test_trn2_target_refused_at_spec_time_pointing_at_the_option(tmp_path):
    message = refusal(tmp_path, layer_spec("kernel p : mlp { lnc=2 target=trn2 }"))
    assert "t.moe:5:" in message and "^" in message
    assert "target=trn2" in message and "Trainium3" in message


def test_cli_refuses_trn2_without_a_traceback(tmp_path, capsys):
    from moegen.cli import main

    path = tmp_path / "t.moe"
    path.write_text(layer_spec("kernel p : mlp { target=trn2 }"))
    code = main(["build", str(path), "--out", str(tmp_path / "gen")])
    err = capsys.readouterr().err
    assert code != 0 and "t.moe:5:" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "setting, needle",
    [
        (dict(expert="gate_up -> swish(1.5) -> down"), "swish(1.5): the ScalarE swish"),
        (dict(expert="up -> relu -> down"), "gated"),
        (dict(expert="gate_up(bias) -> silu -> down"), "gate_up bias"),
        (dict(expert="gate_up -> silu -> down -> scale"), "affinity scaling"),
        (dict(dtype="fp32"), "quantize_mx reads bf16 or fp16"),
        (dict(dims="hidden=1000 intermediate=512 experts=1 top_k=1"), "hidden 1000: must be a multiple of 128"),
        (dict(dims="hidden=1024 intermediate=576 experts=1 top_k=1"), "intermediate / tp 576"),
    ],
)
def test_refused_layers_say_why(tmp_path, setting, needle):
    assert needle in refusal(tmp_path, layer_spec("kernel p : mlp { }", **setting))


@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", "relu", "squared_relu", "swish(1.702)"])
def test_other_activations_match_reference(tmp_path, activation):
    """The MoE families' activations the ScalarE computes in one instruction (squared_relu: plus a square)."""
    generated = generate_text(
        tmp_path, layer_spec("kernel p : mlp { lnc=2 }", dims=SMALL_DIMS, expert=f"gate_up -> {activation} -> down")
    )
    folder = write(generated, tmp_path / "gen")
    (plan,) = generated.plans
    assert all(check.ok for check in verify_plan(plan, folder / "p.py", tokens=21))


def test_swizzled_layout_of_pre_quantized_operand_is_refused(tmp_path):
    message = refusal(tmp_path, layer_spec("kernel p : mlp { input=mxfp8 x_layout=swizzled }"))
    assert "x_layout=swizzled is a bf16 layout" in message and "t.moe:5:" in message


@pytest.mark.parametrize(
    "option, needle",
    [
        ("gu_tokens=1024", "gu_tokens 1024: must be at most 512"),
        ("down_tokens=130", "down_tokens 130: must be at most 128"),
        ("down_tokens=7", "down_tokens 7: must be a multiple of 2"),
        ("down_columns=100", "down_columns 100: must be a multiple of 32"),
        ("block_tokens=9", "block_tokens 9: must be a multiple of 2"),
    ],
)
def test_tile_options_are_checked(tmp_path, option, needle):
    assert needle in refusal(tmp_path, layer_spec(f"kernel p : mlp {{ {option} }}"))


def test_block_that_does_not_fit_on_chip_is_refused_with_sbuf(tmp_path):
    text = layer_spec(
        "kernel p : mlp { block_tokens=8192 intermediate=sbuf }", dims="hidden=8192 intermediate=3584 experts=1 top_k=1"
    )
    message = refusal(tmp_path, text)
    assert "SBUF: 372224 bytes per partition needed, 262144 available on trn3" in message
    assert "t.moe:5:20:" in message  # the caret sits under block_tokens=8192


def test_auto_intermediate_stays_on_chip_when_the_block_fits(tmp_path):
    (small, large) = plans(
        tmp_path,
        layer_spec(
            "kernel small : mlp { }\n  kernel large : mlp { block_tokens=8192 }",
            dims="hidden=8192 intermediate=3584 experts=1 top_k=1",
        ),
    )
    assert small.intermediate_in == "sbuf" and large.intermediate_in == "hbm"
    reasons = dict(large.decisions)
    assert "over the" in reasons["intermediate"] and "HBM scratch" in reasons["intermediate"]
    assert "stays on chip" in dict(small.decisions)["intermediate"]


def test_slabs_cover_partial_contraction(tmp_path):
    (plan,) = plans(tmp_path, layer_spec("kernel p : mlp { }", dims="hidden=640 intermediate=768 experts=1 top_k=1"))
    assert plan.h_slabs == ((0, 128), (512, 32)) and plan.i_slabs == ((0, 128), (512, 64))
    assert plan.target == "trn3"


def test_kernel_rejects_a_wrong_shape_by_name(matrix):
    from moegen import sim

    plans_, folder = matrix
    plan = plans_["mlp_mx_in_mx_w"]
    inputs = harness.make_inputs(plan, 8, np.random.default_rng(SEED))
    inputs["down_scales"] = inputs["down_scales"][:, :5]
    kernel = sim.load_module(folder / "mlp_mx_in_mx_w.py").mlp_mx_in_mx_w
    with pytest.raises(Exception, match=r"down_scales: expected uint8 \[640, 12\]"):
        harness.run(kernel, plan, inputs)


# ------------------------------------------------------------------ real model shapes


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["llama3_70b_mlp_mxfp8", "qwen3_30b_a3b_expert_mlp_mxfp8"])
def test_real_model_specs_verify(spec, tmp_path):
    generated = generate(REPO / "specs" / f"{spec}.moe")
    folder = write(generated, tmp_path)
    assert verify_plans(list(generated.plans), folder, out=lambda line: None)
