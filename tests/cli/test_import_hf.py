"""`moegen import-hf`: every config under specs/hf imports to a spec that builds; the real-model specs are
their configs' imports byte for byte (`--refresh` keeps their kernels, `moegen check` fails when one is stale);
a field or value the importer cannot state is an error naming it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from moegen import cli
from moegen.compiler import generate
from moegen.import_hf import ConfigError, RecordError, is_imported, refreshed, spec_text

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "specs" / "hf").glob("*.json"))
# The specs of published models' MoE layers, each generated from its config under specs/hf (docs/import_hf.md).
REAL_MODEL_SPECS = {
    "deepseek_v2": "hf/deepseek_v2.json",
    "deepseek_v3": "hf/deepseek_v3.json",
    "gpt_oss_120b": "hf/gpt_oss_120b.json",
    "gpt_oss_120b_mxfp4": "hf/gpt_oss_120b.json",
    "gpt_oss_20b": "hf/gpt_oss_20b.json",
    "gpt_oss_20b_mxfp4": "hf/gpt_oss_20b.json",
    "llama4_scout": "hf/llama4_scout.json",
    "mixtral_8x7b": "hf/mixtral_8x7b.json",
    "nemotron3_nano_30b_a3b": "hf/nemotron3_nano_30b_a3b.json",
    "qwen3_30b_a3b": "hf/qwen3_30b_a3b.json",
}


def test_there_are_configs_of_every_supported_model_type():
    types = {json.loads(path.read_text())["model_type"] for path in CONFIGS}
    assert types == {
        "mixtral",
        "qwen2_moe",
        "qwen3_moe",
        "deepseek_v2",
        "deepseek_v3",
        "gpt_oss",
        "llama4",
        "nemotron_h",
    }


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_config_imports_to_a_spec_that_builds(tmp_path, config):
    out = tmp_path / f"{config.stem}.moe"
    assert cli.main(["import-hf", str(config), "-o", str(out), "--tp", "4"]) == 0
    generated = generate(out)
    assert {p.family for p in generated.plans} >= {"router", "tkg", "cte"}
    assert_runs_the_shared_experts_once(generated)


def assert_runs_the_shared_experts_once(generated) -> None:
    """A layer with shared experts runs them exactly once: fused into every tkg and cte kernel and no `shared`
    kernel, or a `shared` kernel and no routed kernel fusing them."""
    routed = [p for p in generated.plans if p.family in ("tkg", "cte")]
    separate = any(p.family == "shared" for p in generated.plans)
    if not generated.spec.layer.dims.shared_experts:
        assert not separate and all(p.shared is None for p in routed)
    elif separate:
        assert all(p.shared is None for p in routed)
    else:
        assert all(p.shared is not None for p in routed)


def test_the_real_model_specs_are_their_configs_imports_byte_for_byte():
    imported = {path.stem: path for path in sorted((REPO / "specs").glob("*.moe")) if is_imported(path)}
    assert set(imported) == set(REAL_MODEL_SPECS)
    for name, path in imported.items():
        text, options = refreshed(path)
        assert options.config == REAL_MODEL_SPECS[name]
        assert text == path.read_text(), f"{path} is stale: run moegen import-hf --refresh specs"


def test_refresh_is_idempotent_and_check_names_the_stale_spec_and_line(tmp_path, capsys):
    """A config change makes `moegen check` fail naming the spec and its first differing line; --refresh
    rewrites the layer part only and a second --refresh changes nothing."""
    (tmp_path / "hf").mkdir()
    config = json.loads((REPO / "specs" / "hf" / "deepseek_v2.json").read_text())
    (tmp_path / "hf" / "deepseek_v2.json").write_text(json.dumps(config))
    spec = tmp_path / "deepseek_v2.moe"
    original = (REPO / "specs" / "deepseek_v2.moe").read_text()
    spec.write_text(original)
    out = tmp_path / "generated"
    assert cli.main(["build", str(spec), "--out", str(out)]) == 0
    assert cli.main(["check", str(spec), "--out", str(out)]) == 0
    capsys.readouterr()

    (tmp_path / "hf" / "deepseek_v2.json").write_text(json.dumps({**config, "routed_scaling_factor": 8.0}))
    assert cli.main(["check", str(spec), "--out", str(out)]) == 1
    printed = capsys.readouterr()
    line = next(n for n, text in enumerate(original.splitlines(), 1) if text.startswith("# The MoE layer"))
    assert f"{spec}:{line + 2}: stale against hf/deepseek_v2.json" in printed.out
    assert "run 'moegen import-hf --refresh'" in printed.err

    hand_written = tmp_path / "hand_written.moe"
    hand_written.write_text("moe hand_written {\n  dims hidden=128 intermediate=64 experts=4 top_k=1\n}\n")
    assert cli.main(["import-hf", "--refresh", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"{spec}: refreshed from hf/deepseek_v2.json" in out and "hand_written" not in out
    assert hand_written.read_text().startswith("moe hand_written {")
    text = spec.read_text()
    assert "scaling_factor(8)" in text and "routed_scaling_factor 8.0" in text
    kernels = original[original.index("\n\n") :]
    assert text.endswith(kernels)  # the kernel part, byte for byte
    assert cli.main(["import-hf", "--refresh", str(spec)]) == 0
    assert "up to date" in capsys.readouterr().out and spec.read_text() == text


def test_output_keeps_an_existing_specs_kernels_and_records_the_config_from_its_folder(tmp_path):
    config = REPO / "specs" / "hf" / "mixtral_8x7b.json"
    spec = tmp_path / "m.moe"
    assert cli.main(["import-hf", str(config), "-o", str(spec)]) == 0
    text = spec.read_text()
    relative = Path(os.path.relpath(config, tmp_path)).as_posix()
    assert text.startswith(f"# Generated by `moegen import-hf {relative}`.\n")
    assert "  kernel prefill : cte { block=128 }\n}\n" in text
    spec.write_text(text.replace("kernel prefill : cte { block=128 }", "kernel prefill : cte { block=256 lnc=2 }"))
    assert cli.main(["import-hf", str(config), "-o", str(spec), "--tp", "2"]) == 0
    text = spec.read_text()
    assert " tp=2\n" in text and "kernel prefill : cte { block=256 lnc=2 }" in text
    assert text.startswith(f"# Generated by `moegen import-hf {relative} --tp 2`.\n")
    assert refreshed(spec)[0] == text


def test_a_layer_statement_in_the_kernel_part_stops_refresh(tmp_path):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "deepseek_v2.json").write_text((REPO / "specs" / "hf" / "deepseek_v2.json").read_text())
    spec = tmp_path / "deepseek_v2.moe"
    spec.write_text(
        (REPO / "specs" / "deepseek_v2.moe")
        .read_text()
        .replace("  kernel router_topk", "  dtype fp32\n  kernel router_topk")
    )
    with pytest.raises(RecordError, match=r"line \d+: 'dtype' after the layer statements"):
        refreshed(spec)
    spec.write_text("moe x {\n}\n")
    with pytest.raises(RecordError, match="not imported"):
        refreshed(spec)


def test_refresh_refuses_import_options(capsys):
    assert cli.main(["import-hf", "--refresh", "specs", "--tp", "2"]) == 2
    assert "--refresh takes spec files or folders only" in capsys.readouterr().err


def test_stdout_without_output_and_ep_makes_an_all_expert_decode_kernel(tmp_path, capsys):
    config = REPO / "specs" / "hf" / "qwen3_30b_a3b.json"
    assert cli.main(["import-hf", str(config), "--ep", "4"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"# Generated by `moegen import-hf {config} --ep 4`.")
    assert " ep=4" in text and "kernel decode : tkg { mode=all_experts }" in text
    path = tmp_path / "qwen3_30b_a3b.moe"
    path.write_text(text)
    plans = {p.kernel_name: p for p in generate(path).plans}
    assert plans["decode"].local_experts == 32 and plans["prefill"].experts == 32


def mixtral() -> dict:
    return json.loads((REPO / "specs" / "hf" / "mixtral_8x7b.json").read_text())


@pytest.mark.parametrize(
    "change, field, message",
    [
        ({"moe_new_routing": 3}, "moe_new_routing", "not supported by moegen import-hf"),
        ({"hidden_act": "swiglu_oai"}, "hidden_act", "has no spec stage"),
        ({"model_type": "jamba"}, "model_type", "'jamba' is not supported"),
        ({"num_local_experts": None}, "num_local_experts", "expected a whole number"),
        ({"torch_dtype": "int8"}, "torch_dtype", "'int8' is not supported"),
    ],
)
def test_a_field_it_cannot_state_is_an_error_naming_it(change, field, message):
    with pytest.raises(ConfigError) as caught:
        spec_text({**mixtral(), **change}, "m")
    assert caught.value.field == field and message in str(caught.value)


def test_deepseek_values_outside_the_language_are_errors():
    config = json.loads((REPO / "specs" / "hf" / "deepseek_v3.json").read_text())
    for change, field in [({"scoring_func": "softmax"}, "scoring_func"), ({"topk_method": "greedy"}, "topk_method")]:
        with pytest.raises(ConfigError, match=f"^{field}: "):
            spec_text({**config, **change}, "d")
    missing = dict(config)
    del missing["n_group"]
    with pytest.raises(ConfigError, match="^n_group: required by this model type, missing"):
        spec_text(missing, "d")


def test_cli_reports_the_field_and_exits_2(tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**mixtral(), "quantization_config": {"quant_method": "mxfp4"}}))
    assert cli.main(["import-hf", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{path}: error: quantization_config: not supported")


def config_of(name: str) -> dict:
    return json.loads((REPO / "specs" / "hf" / f"{name}.json").read_text())


# The fields of the published Nemotron 3 Nano config.json that concern the Mamba-2 mixer, norms, attention
# and the layer pattern (values as published): accepted, not used.
NEMOTRON_OTHER_FIELDS = {
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 1,
    "chunk_size": 128,
    "conv_kernel": 4,
    "eos_token_id": 2,
    "expand": 2,
    "head_dim": 128,
    "hidden_dropout": 0.0,
    "hybrid_override_pattern": "MEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME",
    "initializer_range": 0.02,
    "layer_norm_epsilon": 1e-05,
    "mamba_head_dim": 64,
    "mamba_hidden_act": "silu",
    "mamba_num_heads": 64,
    "mamba_proj_bias": False,
    "mamba_ssm_cache_dtype": "float32",
    "max_position_embeddings": 262144,
    "n_groups": 8,
    "norm_eps": 1e-05,
    "num_attention_heads": 32,
    "num_hidden_layers": 52,
    "num_key_value_heads": 2,
    "num_logits_to_keep": 1,
    "pad_token_id": 0,
    "partial_rotary_factor": 1.0,
    "rescale_prenorm_residual": True,
    "residual_in_fp32": False,
    "rope_theta": 10000,
    "sliding_window": None,
    "ssm_state_size": 128,
    "tie_word_embeddings": False,
    "time_step_floor": 0.0001,
    "time_step_max": 0.1,
    "time_step_min": 0.001,
    "transformers_version": "4.55.4",
    "use_bias": False,
    "use_cache": True,
    "use_conv_bias": True,
    "use_mamba_kernels": True,
    "vocab_size": 131072,
}


def test_nemotron_h_states_its_sigmoid_router_nongated_experts_and_shared_expert():
    text = spec_text({**config_of("nemotron3_nano_30b_a3b"), **NEMOTRON_OTHER_FIELDS}, "n")
    assert (
        "  dims   hidden=2688 intermediate=1856 experts=128 top_k=6 shared_experts=1 shared_intermediate=3712\n" in text
    )
    assert "  router = linear -> sigmoid -> select_bias -> topk -> renormalize -> scaling_factor(2.5)\n" in text
    assert "  expert = up -> squared_relu -> down -> affinity_scale\n" in text
    assert "  shared_expert = up -> relu2 -> down\n" in text
    # the plan fuses the shared expert into decode and prefill (shared=auto): no separate shared kernel
    assert text.endswith("  kernel decode : tkg { }\n  kernel prefill : cte { block=128 }\n}\n")
    grouped = spec_text({**config_of("nemotron3_nano_30b_a3b"), "n_group": 8, "topk_group": 4}, "n")
    assert "select_bias -> group_limit(groups=8, keep=4, score=top2_sum) -> topk" in grouped


@pytest.mark.parametrize(
    "change, field",
    [
        ({"n_shared_experts": 2}, "n_shared_experts"),
        ({"mlp_bias": True}, "mlp_bias"),
        ({"mlp_hidden_act": "swiglu"}, "mlp_hidden_act"),
        ({"moe_latent_size": 1024}, "moe_latent_size"),
        ({"routed_scaling_factor": 0}, "routed_scaling_factor"),
    ],
)
def test_nemotron_h_fields_it_cannot_state_are_errors(change, field):
    with pytest.raises(ConfigError, match=f"^{field}: "):
        spec_text({**config_of("nemotron3_nano_30b_a3b"), **change}, "n")


def test_deepseek_v2_states_its_group_rule_and_shared_experts():
    text = spec_text(config_of("deepseek_v2"), "d", tp=8)
    assert (
        "router = linear -> softmax -> group_limit(groups=8, keep=3, score=max) -> topk -> scaling_factor(16)\n" in text
    )
    assert "shared_experts=1 shared_intermediate=3072 tp=8" in text
    greedy = spec_text({**config_of("deepseek_v2"), "topk_method": "greedy"}, "d")
    assert "router = linear -> softmax -> topk -> scaling_factor(16)\n" in greedy
    for change, field in [
        ({"norm_topk_prob": True}, "norm_topk_prob"),
        ({"scoring_func": "sigmoid"}, "scoring_func"),
        ({"topk_method": "noaux_tc"}, "topk_method"),
    ]:
        with pytest.raises(ConfigError, match=f"^{field}: "):
            spec_text({**config_of("deepseek_v2"), **change}, "d")


@pytest.mark.parametrize(
    "change, options, kernels",
    [
        ({}, [], {"router_topk": "router", "decode": "tkg", "prefill": "cte"}),
        # I_S 196 is not divisible by ep 8: the plan does not fuse, so the default set runs it separately
        (
            {"moe_shared_expert_intermediate_size": 196, "n_routed_experts": 16},
            ["--ep", "8"],
            {"router_topk": "router", "decode": "tkg", "prefill": "cte", "shared_experts": "shared"},
        ),
    ],
    ids=["fused", "separate"],
)
def test_a_small_nemotron_h_config_imports_builds_and_verifies_with_its_shared_expert(
    tmp_path, capsys, change, options, kernels
):
    """End to end: a Nemotron-H config (the published one at reduced width) -> import-hf -> generated router,
    tkg and cte kernels with the non-gated shared expert fused, or with a separate shared kernel when the plan
    cannot fuse -> the simulator, each output against the NumPy reference."""
    small = {
        **config_of("nemotron3_nano_30b_a3b"),
        **NEMOTRON_OTHER_FIELDS,
        "hidden_size": 128,
        "moe_intermediate_size": 64,
        "moe_shared_expert_intermediate_size": 192,
        "n_routed_experts": 8,
        "num_experts_per_tok": 2,
        **change,
    }
    config = tmp_path / "config.json"
    config.write_text(json.dumps(small))
    spec = tmp_path / "nemotron_small.moe"
    assert cli.main(["import-hf", str(config), "-o", str(spec), *options]) == 0
    text = spec.read_text()
    assert "  shared_expert = up -> relu2 -> down\n" in text
    assert ("shared=separate" in text) == ("shared_experts" in kernels)
    assert cli.main(["build", str(spec), "--out", str(tmp_path / "generated")]) == 0
    generated = generate(spec)
    assert {p.kernel_name: p.family for p in generated.plans} == kernels
    assert_runs_the_shared_experts_once(generated)
    if "shared_experts" in kernels:  # the plan's own reason, not a copied rule
        auto = tmp_path / "auto.moe"
        auto.write_text(text.replace(" shared=separate", ""))
        reasons = {dict(p.decisions).get("shared experts") for p in generate(auto).plans if p.family in ("tkg", "cte")}
        assert reasons == {
            "separate (auto): shared_intermediate 196 is not divisible by tp 1 x ep 8; the `shared` family kernel runs them"
        }
    capsys.readouterr()
    assert cli.main(["verify", str(spec), "--out", str(tmp_path / "generated"), "--tokens", "5"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("    ok   ") >= len(kernels) and "FAIL" not in printed
