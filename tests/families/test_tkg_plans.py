"""tkg plans: what is refused at spec time (with its reason), and the choices the plan makes.

No simulator here: these read the plan and the located spec errors only.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from moegen.compiler import generate
from moegen.diagnostics import SpecError
from moegen.plan.common import SBUF_BYTES
from moegen.plan.expert import expert_mlp_plan
from moegen.plan.tkg import TkgPlan
from tests.families.support import tkg_spec as spec_text

REPO = Path(__file__).resolve().parents[2]


def plans(tmp_path: Path, kernels: str, **layer) -> dict[str, TkgPlan]:
    path = tmp_path / "t.moe"
    path.write_text(spec_text(kernels, **layer))
    return {plan.kernel_name: plan for plan in generate(path).plans}


def refusal(tmp_path: Path, kernels: str, **layer) -> str:
    path = tmp_path / "t.moe"
    path.write_text(spec_text(kernels, **layer))
    with pytest.raises(SpecError) as error:
        generate(path)
    return str(error.value)


@pytest.mark.parametrize(
    "kernel, reason",
    [
        ("kernel k : tkg { ep=2 }", "selective mode reads each token's experts by their global id"),
        ("kernel k : tkg { mode=all_experts eager }", "all-expert mode needs the [T, E] table"),
        ("kernel k : tkg { mask_unselected }", "mask_unselected applies to all-expert mode"),
        ("kernel k : tkg { tokens<=256 }", "selective mode runs one token tile of at most 128"),
        ("kernel k : tkg { output=sbuf lnc=2 }", "each physical core has its own SBUF"),
        ("kernel k : tkg { mode=all_experts output=sbuf tokens<=256 }", "exceeds the 128 partitions"),
        ("kernel k : tkg { shard=hidden }", "this kernel has lnc=1"),
        ("kernel k : tkg { ep=3 mode=all_experts }", "not divisible"),
        ("kernel k : tkg { tokens<=8 verify_tokens=9 }", "at most tokens<=8"),
        ("kernel k : tkg { input=sbuf lnc=2 }", "each physical core has its own SBUF"),
        ("kernel k : tkg { mode=all_experts input=sbuf tokens<=256 }", "one token tile"),
    ],
)
def test_refused_with_reason(tmp_path, kernel, reason):
    assert reason in refusal(tmp_path, kernel)


def test_eager_without_scaling_is_refused(tmp_path):
    assert "would be read and ignored" in refusal(
        tmp_path, "kernel k : tkg { eager }", expert="gate_up -> silu -> down"
    )


def test_mx_weights_are_refused_on_trn2_at_the_option(tmp_path):
    text = refusal(tmp_path, "kernel k : tkg { target=trn2 }", quant="weights=mxfp4")
    assert "nc_matmul_mx" in text and "t.moe:6:20: error" in text and "^~~~" in text


def test_sbuf_input_needs_whole_tiles_of_h(tmp_path):
    assert "not a multiple of 128" in refusal(tmp_path, "kernel k : tkg { input=sbuf }", hidden=320)


def test_fp32_input_is_refused(tmp_path):
    assert "bf16 or fp16" in refusal(tmp_path, "kernel k : tkg { }", dtype="fp32")


def test_errors_point_at_the_option(tmp_path):
    text = refusal(tmp_path, "kernel k : tkg { mode=all_experts eager }")
    assert "t.moe:5:37: error" in text and "^~~~~" in text


def test_partial_tiles_of_gpt_oss():
    plan = next(p for p in generate(REPO / "specs" / "gpt_oss_20b.moe").plans if p.kernel_name == "tkg_selective")
    assert (plan.h_tiles, plan.h_last, plan.i_tiles, plan.i_last) == (23, 64, 23, 64)
    assert plan.mlp.up_lower == -6.0 and plan.mlp.up_upper == 8.0  # [-7, 7] shifted by the folded +1
    assert plan.mlp.activation_steps[0].op == "nl.gelu_apprx_sigmoid"


def test_lnc2_shard_choice(tmp_path):
    found = plans(
        tmp_path,
        "kernel a : tkg { lnc=2 }\n kernel b : tkg { lnc=2 mode=all_experts tokens<=512 }\n"
        " kernel c : tkg { lnc=2 shard=hidden }",
    )
    assert found["a"].shard == "intermediate" and found["a"].core_i_tiles == ((0, 1), (1, 1))
    assert any(what == "shard" and "weight-bandwidth" in why for what, why in found["a"].decisions)
    assert found["b"].shard == "tokens"
    assert found["c"].shard == "hidden" and found["c"].core_columns == ((0, 128), (128, 128))


def test_lnc2_single_i_tile_splits_hidden(tmp_path):
    assert plans(tmp_path, "kernel k : tkg { lnc=2 }", intermediate=128)["k"].shard == "hidden"
    assert "nothing to split" in refusal(tmp_path, "kernel k : tkg { lnc=2 shard=intermediate }", intermediate=128)


def test_swish_other_alpha_is_composed(tmp_path):
    plan = plans(tmp_path, "kernel k : tkg { }", expert="gate_up -> swish(1.0) -> down -> scale")["k"]
    kinds = [step.kind for step in plan.mlp.activation_steps]
    assert kinds == ["act", "mul_src"] and plan.mlp.activation_steps[0].op == "nl.sigmoid"


def test_ep_and_tp_options(tmp_path):
    plan = plans(tmp_path, "kernel k : tkg { mode=all_experts ep=4 tp=2 }")["k"]
    assert (plan.local_experts, plan.intermediate, plan.uses_rank) == (2, 96, True)


def test_expert_plan_folds_up_plus_one(tmp_path):
    path = tmp_path / "t.moe"
    path.write_text(spec_text("kernel k : tkg { }", expert="gate_up -> clamp(up <= 7) -> silu -> up_plus_one -> down"))
    layer = generate(path).spec.layer
    mlp = expert_mlp_plan(layer)
    assert (mlp.up_constant, mlp.up_upper, mlp.up_lower) == (1.0, 8.0, None)


def test_every_tkg_variant_in_specs_fits_the_budget():
    count = 0
    for spec in sorted((REPO / "specs").glob("*.moe")):
        for plan in generate(spec).plans:
            if plan.family == "tkg":
                count += 1
                # the target's SBUF per partition: 224 KiB on trn2, 256 KiB on trn3 (MX kernels)
                assert plan.sbuf_bytes() <= SBUF_BYTES[plan.target] and plan.psum_banks() <= 8
    assert count >= 10


@pytest.mark.parametrize(
    "spec", ["tkg_seed_matrix", "tkg_seed_matrix_fp8_row", "tkg_seed_matrix_fp8_static", "llama4_scout"]
)
def test_buffers_list_every_on_chip_allocation(spec):
    """The plan's buffers (what the budget check counts) name exactly the kernel's SBUF/PSUM tensors."""
    import re

    generated = generate(REPO / "specs" / f"{spec}.moe")
    for plan in generated.plans:
        if plan.family != "tkg":
            continue
        source = generated.files[f"{plan.kernel_name}.py"]
        allocated = set(re.findall(r"(\w+) = \[?nl\.ndarray\([^\n]*buffer=nl\.(?:sbuf|psum)", source))
        listed = {name.replace(" (returned)", "") for buffer in plan.buffers for name in buffer.name.split(" + ")}
        assert allocated == listed, plan.kernel_name
