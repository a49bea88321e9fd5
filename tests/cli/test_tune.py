"""`moegen tune`: the plan candidates of a tkg kernel modeled at one token count, and the model's choices
recorded for `tuned` kernels (SPEC.choices.json) that builds read (modeled)."""

from __future__ import annotations

import json
from pathlib import Path

from moegen.cli import main
from moegen.compiler import generate

SPEC = """moe t {{
  dims   hidden=256 intermediate=192 experts=8 top_k=2
  dtype  bf16
  router = linear -> topk -> softmax
  expert = gate_up -> silu -> down -> affinity_scale
  kernel k : tkg {{ {options} }}
}}
"""


def _tune(tmp_path, capsys, options: str, *args: str, dims: str = "") -> list[str]:
    """`moegen tune` output lines; dims: a `dims` line replacing the spec's (H=256, I=192, E=8, K=2)."""
    path = tmp_path / "t.moe"
    text = SPEC.format(options=options)
    path.write_text(text.replace("hidden=256 intermediate=192 experts=8 top_k=2", dims) if dims else text)
    assert main(["tune", str(path), *args]) == 0
    return capsys.readouterr().out.splitlines()


def test_distinct_is_chosen_when_tokens_share_experts(tmp_path, capsys):
    """At T=8 over 16 experts, K=2: selective reads 16 weight sets, all-experts 16, distinct each selected
    expert once. Distinct's weight loads wait for the expert ids (routing, register_load): the weights must
    be large enough for reading fewer of them to pay for that wait (at H=256, I=192 all-experts wins)."""
    lines = _tune(
        tmp_path,
        capsys,
        "tokens<=32 gate_up_loop=h_outer weight_buffers=2 down_columns=2048",
        "--tokens",
        "8",
        dims="hidden=512 intermediate=384 experts=16 top_k=2",
    )
    assert lines[0] == "k (mode=selective in the spec), T=8, trn2, modeled; searched: mode"
    assert lines[1].split()[:2] == ["chosen", "mode=distinct"] and "HBM 1.00x" in lines[1]
    assert lines[2].split()[0] == "runner-up" and len(lines) == 4
    assert "mode=selective" in lines[3]


def test_refused_candidates_are_listed_with_their_reason(tmp_path, capsys):
    lines = _tune(tmp_path, capsys, "ep=2 tokens<=4 gate_up_loop=h_outer weight_buffers=2 down_columns=2048")
    selective = next(line for line in lines[1:] if "mode=selective" in line)
    assert selective.split()[0] == "refused" and "expert parallelism" in selective
    assert lines[1].split()[0] == "chosen"


def test_tuned_kernel_builds_from_the_recorded_choice(tmp_path, capsys):
    """--write records the fastest candidate; the build applies it without simulating; the same record
    gives the same bytes; explain shows the choice and the runner-up; a changed layer makes it stale."""
    options = "mode=auto tuned tokens<=8 lnc=2 gate_up_loop=h_outer weight_buffers=2 down_columns=2048"
    lines = _tune(tmp_path, capsys, options, "--write")
    assert "searched: mode, shard" in lines[0] and lines[-1].startswith("  recorded in")
    record = json.loads((tmp_path / "t.choices.json").read_text())["kernels"]["k"]
    assert record["tokens"] == [1, 8] and record["table"][0]["modeled_us"] <= record["table"][1]["modeled_us"]
    assert [row["tokens"] for row in record["table"][0]["per_tokens"]] == [1, 8]
    chosen = lines[1].split()[1:3]
    plan = generate(tmp_path / "t.moe").plans[0]
    assert f"mode={plan.mode}" in chosen and f"shard={plan.shard}" in chosen
    first = generate(tmp_path / "t.moe").files
    assert generate(tmp_path / "t.moe").files == first
    assert main(["explain", str(tmp_path / "t.moe")]) == 0
    explained = capsys.readouterr().out
    assert "model's choice:" in explained and "runner-up" in explained and "us modeled at T=1 + 8" in explained
    (tmp_path / "t.moe").write_text(SPEC.format(options=options).replace("hidden=256", "hidden=384"))
    assert main(["build", str(tmp_path / "t.moe"), "--out", str(tmp_path / "out")]) != 0
    assert "stale" in capsys.readouterr().err


def test_tuned_kernel_without_a_record_fails_to_build(tmp_path, capsys):
    path = tmp_path / "t.moe"
    path.write_text(SPEC.format(options="mode=auto tuned"))
    assert main(["build", str(path), "--out", str(tmp_path / "out")]) != 0
    err = capsys.readouterr().err
    assert "t.moe:6:" in err and "has no choice for it" in err and "moegen tune" in err


def test_mode_auto_without_tuned_follows_the_rule():
    """mode=auto, untuned: distinct where it plans (no simulation at build)."""
    from moegen.compiler import families
    from moegen.spec.parser import parse
    from moegen.spec.validate import validate

    text = SPEC.format(options="mode=auto")
    spec = validate(parse(text, "t.moe"), {n: f.options for n, f in families().items()})
    plan = families()["tkg"].plan(spec.layer, spec.variants[0])
    assert plan.mode == "distinct"


def test_a_spec_without_tkg_kernels_fails(tmp_path, capsys):
    path = tmp_path / "t.moe"
    path.write_text(SPEC.replace("kernel k : tkg {{ {options} }}", "kernel r : router {{ }}").format())
    assert main(["tune", str(path)]) == 1
    assert "no tkg kernel" in capsys.readouterr().err


def test_fingerprint_ignores_the_path_and_unset_options(tmp_path, monkeypatch):
    """The record is found fresh whether the spec is read by a relative or an absolute path, and an option
    added later with an unset default (None / False) leaves existing fingerprints alone."""
    from dataclasses import replace

    from moegen import choices
    from moegen.compiler import load_spec

    (tmp_path / "t.moe").write_text(SPEC.format(options="mode=auto tuned"))
    monkeypatch.chdir(tmp_path)
    relative, absolute = load_spec(Path("t.moe")), load_spec(tmp_path / "t.moe")
    first = choices.fingerprint(relative.layer, relative.variants[0])
    assert first == choices.fingerprint(absolute.layer, absolute.variants[0])
    variant = absolute.variants[0]
    assert choices.fingerprint(absolute.layer, replace(variant, options={**variant.options, "new": None})) == first
    assert choices.fingerprint(absolute.layer, replace(variant, options={**variant.options, "tokens": 64})) != first


def test_fingerprint_ignores_options_at_their_default(tmp_path):
    """An option a family gains later (the tkg `shared` option, default auto) is filled in at its default in
    every variant: at that default it leaves existing records' fingerprints alone; set otherwise it counts."""
    from dataclasses import replace

    from moegen import choices
    from moegen.compiler import load_spec

    (tmp_path / "t.moe").write_text(SPEC.format(options="mode=auto tuned"))
    spec = load_spec(tmp_path / "t.moe")
    variant = spec.variants[0]
    assert variant.options["shared"] == "auto"
    without = replace(variant, options={k: v for k, v in variant.options.items() if k != "shared"})
    first = choices.fingerprint(spec.layer, variant)
    assert choices.fingerprint(spec.layer, without) == first
    assert choices.fingerprint(spec.layer, replace(variant, options={**variant.options, "shared": "separate"})) != first
