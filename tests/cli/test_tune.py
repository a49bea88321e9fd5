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


def test_tkg_weight_buffers_and_down_columns_axes_are_searched_when_unset(tmp_path, capsys):
    """A tkg kernel leaving weight_buffers / down_columns unset searches them as its own axes (the cte
    streamed-weight axes share their names; the search used to treat them as cte ones and fail on a tkg
    plan)."""
    lines = _tune(tmp_path, capsys, "mode=distinct tuned tokens<=4 gate_up_loop=h_outer", "--tokens", "1")
    assert lines[0].endswith("searched: weight_buffers, down_columns")
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
    assert "no tkg or cte kernel" in capsys.readouterr().err


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


# --- cte (prefill): block=auto, the LNC split, the loop and the weights' residency chosen by the model ---

CTE_SPEC = """moe t {{
  dims   hidden={hidden} intermediate=256 experts=4 top_k=2
  dtype  bf16
  router = linear -> topk -> softmax
  expert = gate_up -> silu -> down -> affinity_scale
  kernel k : cte {{ {options} }}
}}
"""
CTE_TUNED = "tuned lnc=2 shard=auto block=auto loop=auto weights=resident verify_tokens=64"


def _cte_spec(tmp_path, options: str, hidden: int = 256) -> Path:
    path = tmp_path / "t.moe"
    path.write_text(CTE_SPEC.format(options=options, hidden=hidden))
    return path


def _fake_profile(monkeypatch, time_of) -> list:
    """Replace the simulation + model by `time_of(plan)` modeled us (the search logic, no simulation);
    returns the plans profiled."""
    from types import SimpleNamespace

    import moegen.verify.profile

    seen = []

    def profile_plan(plan, path, tokens, target="trn2"):
        seen.append(plan)
        report = SimpleNamespace(
            modeled_us=time_of(plan), roofline_fraction=0.5, hbm_bytes=2, hbm_min_bytes=1, bound="tensor"
        )
        return report, 0.0, 0.0

    monkeypatch.setattr(moegen.verify.profile, "profile_plan", profile_plan)
    return seen


def test_cte_tune_picks_the_least_modeled_time(tmp_path, capsys, monkeypatch):
    """Each axis keeps its fastest value (block 1024 here, then hybrid), whatever the rule would take;
    the table is fastest first, and the build applies the recorded choice without simulating."""
    seen = _fake_profile(monkeypatch, lambda plan: 100.0 - plan.block / 100 - 5 * plan.hybrid + 20 * plan.exchange)
    path = _cte_spec(tmp_path, CTE_TUNED)
    assert main(["tune", str(path), "--tokens", "64", "--write"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (
        "k (shard=auto block=auto loop=auto in the spec), T=64, trn2, modeled; searched: shard, block, loop"
    )
    assert lines[1].split()[:5] == ["chosen", "shard=block", "block=1024", "loop=hybrid", "weights=resident"]
    assert "84.8 us" in lines[1] and "bound tensor" in lines[1]
    assert lines[2].split()[:4] == ["runner-up", "shard=block", "block=1024", "loop=static"]
    times = [float(line.split(" us ")[0].split()[-1]) for line in lines[1:-1]]
    assert times == sorted(times) and len(times) == len(seen) == 6  # shard 2, block 3 more, loop 1 more
    record = json.loads((tmp_path / "t.choices.json").read_text())["kernels"]["k"]
    assert record["chosen"] == {"block": 1024, "loop": "hybrid", "shard": "block"} and record["tokens"] == [64]
    count = len(seen)
    plan = generate(path).plans[0]
    assert (plan.block, plan.shard, plan.hybrid) == (1024, "block", True) and len(seen) == count


def test_cte_illegal_candidates_are_refused_with_their_reason(tmp_path, capsys, monkeypatch):
    """H = 208 is not a multiple of 32: shard=intermediate at LNC 2 cannot halve the output columns; with
    distribute=halves the hybrid loop is refused. Neither is simulated nor recorded."""
    seen = _fake_profile(monkeypatch, lambda plan: 50.0)
    path = _cte_spec(tmp_path, "tuned lnc=2 shard=auto loop=auto distribute=halves", hidden=208)
    assert main(["tune", str(path), "--tokens", "64", "--write"]) == 0
    lines = capsys.readouterr().out.splitlines()
    refused = [line for line in lines if line.split()[:1] == ["refused"]]
    assert any("shard=intermediate" in line and "needs H a multiple of 32" in line for line in refused)
    assert any("loop=hybrid" in line and "distribute=halves cannot take loop=hybrid" in line for line in refused)
    assert all(not plan.exchange and not plan.hybrid for plan in seen)
    table = json.loads((tmp_path / "t.choices.json").read_text())["kernels"]["k"]["table"]
    assert all("intermediate" not in row["label"] and "hybrid" not in row["label"] for row in table)


def test_cte_tune_is_deterministic_and_explain_shows_the_runner_up(tmp_path, capsys):
    """Real simulations at a tiny shape: two runs print the same table and write the same record bytes; the
    build gives the same kernel bytes; explain names the choice and the runner-up with modeled times; the
    tuned kernel matches the reference."""
    from moegen.codegen.build import write
    from moegen.verify import verify_plan

    path = _cte_spec(tmp_path, "tuned block=128 loop=auto weights=resident verify_tokens=32", hidden=128)
    assert main(["tune", str(path), "--tokens", "32", "--write"]) == 0
    first = capsys.readouterr().out, (tmp_path / "t.choices.json").read_bytes()
    assert main(["tune", str(path), "--tokens", "32", "--write"]) == 0
    assert (capsys.readouterr().out, (tmp_path / "t.choices.json").read_bytes()) == first
    assert "searched: loop" in first[0] and "refused" not in first[0]
    generated = generate(path)
    assert generate(path).files == generated.files
    assert main(["explain", str(path)]) == 0
    explained = capsys.readouterr().out
    decision = next(line for line in explained.splitlines() if "model's choice:" in line)
    assert "model's choice: shard=block block=128 loop=" in decision
    assert (
        "us modeled at T=32 (trn2); runner-up shard=block block=128 loop=" in decision
        and "auto by rule" not in explained
    )
    folder = write(generated, tmp_path / "out")
    plan = generated.plans[0]
    assert all(check.ok for check in verify_plan(plan, folder / "k.py"))


def test_cte_stale_record_fails_the_build(tmp_path, capsys, monkeypatch):
    """A record made for another layer or other options is stale: build (and so check) fails, naming the
    command; a missing record fails the same way."""
    _fake_profile(monkeypatch, lambda plan: 100.0 - plan.block / 100)
    path = _cte_spec(tmp_path, CTE_TUNED)
    assert main(["build", str(path), "--out", str(tmp_path / "out")]) != 0
    assert "has no choice for it" in capsys.readouterr().err
    assert main(["tune", str(path), "--tokens", "64", "--write"]) == 0
    assert main(["build", str(path), "--out", str(tmp_path / "out")]) == 0
    for changed in (
        CTE_SPEC.format(options=CTE_TUNED, hidden=384),
        CTE_SPEC.format(options=CTE_TUNED.replace("lnc=2", "lnc=1"), hidden=256),
    ):
        capsys.readouterr()
        path.write_text(changed)
        assert main(["build", str(path), "--out", str(tmp_path / "out")]) != 0
        err = capsys.readouterr().err
        assert "stale" in err and "moegen tune" in err and "--variant k --write" in err


def test_cte_auto_without_tuned_follows_the_rule(tmp_path, capsys):
    """block=auto, shard=auto, loop=auto untuned: 512, block, static (the old defaults), said in explain."""
    path = _cte_spec(tmp_path, "lnc=2 block=auto shard=auto loop=auto")
    plan = generate(path).plans[0]
    assert (plan.block, plan.shard, plan.hybrid) == (512, "block", False)
    assert main(["explain", str(path)]) == 0
    assert "auto by rule: block=512, shard=block, loop=static" in capsys.readouterr().out


def test_block_takes_a_number_or_auto(tmp_path, capsys):
    path = _cte_spec(tmp_path, "block=big")
    assert main(["build", str(path), "--out", str(tmp_path / "out")]) != 0
    err = capsys.readouterr().err
    assert "t.moe:6:" in err and "block=big: expected a number or auto" in err


def test_untuned_cte_kernel_is_advised_when_named(tmp_path, capsys, monkeypatch):
    """An untuned cte kernel is tuned only when named: every axis is searched from the spec's own values
    (its plan is the first candidate), and nothing is recorded for it."""
    seen = _fake_profile(monkeypatch, lambda plan: 100.0 - plan.block / 100)
    path = _cte_spec(tmp_path, "lnc=2 block=256 loop=hybrid")
    assert main(["tune", str(path), "--tokens", "64"]) == 1  # no tuned cte kernel: nothing to tune
    assert "no tkg or cte kernel to tune" in capsys.readouterr().err
    assert main(["tune", str(path), "--variant", "k", "--tokens", "64", "--write"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert (
        "searched: shard, block, loop, weights; not searched: tail, weight_buffers, gate_up_tiles, down_columns (the "
        "chosen plan keeps its weights resident)" in lines[0]
    )
    assert (seen[0].block, seen[0].hybrid, seen[0].shard) == (256, True, "block")
    assert lines[1].split()[:3] == ["chosen", "shard=block", "block=1024"]
    assert "k" not in json.loads((tmp_path / "t.choices.json").read_text())["kernels"]


# --- cte streamed weights: the copies per chunk and the chunk widths chosen by the model ---

STREAM_TUNED = "tuned block=128 loop=static weights=stream verify_tokens=32"


def _stream_spec(tmp_path, options: str, hidden: int = 512, intermediate: int = 1024) -> Path:
    path = tmp_path / "t.moe"
    text = CTE_SPEC.format(options=options, hidden=hidden).replace("intermediate=256", f"intermediate={intermediate}")
    path.write_text(text)
    return path


def test_cte_stream_axes_keep_the_least_modeled_time(tmp_path, capsys, monkeypatch):
    """weight_buffers first (its widths refitted by the rule), then gate_up_tiles from the width the plan has,
    then down_columns: each keeps its fastest value; a candidate that generates the same kernel as an earlier one
    is not simulated again; the build applies the record without simulating."""
    seen = _fake_profile(
        monkeypatch,
        lambda plan: 100.0 - 2 * plan.stream_depth + abs(plan.gate_up_chunks[0][3] - 4) + 3 * (plan.down_cols == 512),
    )
    path = _stream_spec(tmp_path, STREAM_TUNED)
    assert main(["tune", str(path), "--tokens", "64", "--write"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("searched: tail, weight_buffers, gate_up_tiles, down_columns")
    assert lines[1].split()[:8] == [
        "chosen",
        "shard=block",
        "block=128",
        "loop=static",
        "weights=stream",
        "weight_buffers=3",
        "gate_up_tiles=4",
        "down_columns=256",
    ]
    assert "94.0 us" in lines[1]
    # depth 2 and 3 at the rule's 8 tiles and 512 columns, then 2 and 4 tiles (8 again: the same kernel), then 256
    assert [(p.stream_depth, p.gate_up_chunks[0][3], p.down_cols) for p in seen] == [
        (2, 8, 512),
        (3, 8, 512),
        (3, 2, 512),
        (3, 4, 512),
        (3, 4, 256),
    ]
    record = json.loads((tmp_path / "t.choices.json").read_text())["kernels"]["k"]
    assert record["chosen"] == {"down_columns": 256, "gate_up_tiles": 4, "tail": "block", "weight_buffers": 3}
    count = len(seen)
    plan = generate(path).plans[0]
    assert (plan.stream_depth, plan.gate_up_chunks[0][3], plan.down_cols) == (3, 4, 256) and len(seen) == count
    assert main(["explain", str(path)]) == 0
    explained = capsys.readouterr().out
    assert (
        "weight_buffers=3 gate_up_tiles=4 down_columns=256 tail=block: 94.0 us modeled at T=64 (trn2); runner-up "
        in explained
    )
    assert "(triple-buffered)" in explained and "stream_depth" in explained


def test_cte_stream_candidates_that_cannot_plan_are_refused_with_their_reason(tmp_path, capsys, monkeypatch):
    """I = 512 is 4 I tiles: a chunk of 8 is refused with the plan's reason, never simulated nor recorded; so are
    tail tiles at block 128."""
    seen = _fake_profile(monkeypatch, lambda plan: 50.0)
    path = _stream_spec(tmp_path, STREAM_TUNED, intermediate=512)
    assert main(["tune", str(path), "--tokens", "64", "--write"]) == 0
    lines = capsys.readouterr().out.splitlines()
    refused = [line for line in lines if line.split()[:1] == ["refused"]]
    assert len(refused) == 2 and "gate_up_tiles=8: this core's share of I (512 columns) has 4 I tile(s)" in refused[1]
    assert "tail=absorb: tail=absorb cannot be built with block 128 (one token tile" in refused[0]
    assert all(max(tiles for *_, tiles in plan.gate_up_chunks) <= 4 for plan in seen)
    table = json.loads((tmp_path / "t.choices.json").read_text())["kernels"]["k"]["table"]
    assert all("gate_up_tiles=8" not in row["label"] for row in table)


def test_cte_stream_tune_is_deterministic_and_the_chosen_kernel_matches_the_reference(tmp_path, capsys):
    """Real simulations at a tiny shape (the copies per chunk searched): two runs write the same record bytes,
    the build gives the same kernel bytes, and the tuned kernel matches the reference."""
    from moegen.codegen.build import write
    from moegen.verify import verify_plan

    path = _stream_spec(tmp_path, STREAM_TUNED + " gate_up_tiles=1 down_columns=128", hidden=256, intermediate=384)
    assert main(["tune", str(path), "--tokens", "32", "--write"]) == 0
    first = capsys.readouterr().out, (tmp_path / "t.choices.json").read_bytes()
    assert main(["tune", str(path), "--tokens", "32", "--write"]) == 0
    assert (capsys.readouterr().out, (tmp_path / "t.choices.json").read_bytes()) == first
    assert "searched: tail, weight_buffers" in first[0] and "weight_buffers=3" in first[0]
    generated = generate(path)
    assert generate(path).files == generated.files
    folder = write(generated, tmp_path / "out")
    plan = generated.plans[0]
    assert all(check.ok for check in verify_plan(plan, folder / "k.py"))


# --- cte tail tiles: absorbed into the previous block's weight passes, or not (and the final sum the plan takes) ---

TAIL_TUNED = "tuned lnc=2 block=256 loop=static weights=stream verify_tokens=32"


def test_cte_tail_axis_records_tail_block_and_the_build_follows_it(tmp_path, capsys, monkeypatch):
    """tail is searched after weights, the rule's value (absorb: streamed weights, block 256) first; here no tail
    tiles model faster, so the later axes keep tail=block, the record spells it, and the build (no simulation) has
    no tail tiles and, at LNC 2, the touched-row final sum; explain names the choice."""
    seen = _fake_profile(monkeypatch, lambda plan: 100.0 + 10 * plan.absorb_tail)
    path = _stream_spec(tmp_path, TAIL_TUNED)
    assert main(["tune", str(path), "--tokens", "64", "--write"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("searched: tail, weight_buffers, gate_up_tiles, down_columns")
    assert [plan.absorb_tail for plan in seen[:2]] == [True, False] and not any(p.absorb_tail for p in seen[2:])
    assert len(seen) == 6  # tail absorb and block, weight_buffers 3, gate_up_tiles 2 and 4 (8: the rule's), columns 256
    assert lines[1].split()[0] == "chosen" and lines[1].split()[8] == "tail=block" and "100.0 us" in lines[1]
    absorbed = [line for line in lines if "tail=absorb" in line]
    assert len(absorbed) == 1 and "110.0 us" in absorbed[0]
    record = json.loads((tmp_path / "t.choices.json").read_text())["kernels"]["k"]
    assert record["chosen"] == {"tail": "block"}
    count = len(seen)
    plan = generate(path).plans[0]
    assert not plan.absorb_tail and plan.final_sum_touched and len(seen) == count
    assert main(["explain", str(path)]) == 0
    decision = next(line for line in capsys.readouterr().out.splitlines() if "model's choice:" in line)
    assert "down_columns=512 tail=block: 100.0 us modeled at T=64" in decision


def test_cte_tail_axis_keeps_the_rule_on_ties_and_records_it(tmp_path, capsys, monkeypatch):
    """Equal modeled times keep the plan's own value (tail tiles here); the record spells it, so a later change of
    the tail rule cannot change the recorded kernel unseen."""
    seen = _fake_profile(monkeypatch, lambda plan: 50.0)
    path = _stream_spec(tmp_path, TAIL_TUNED, intermediate=512)
    assert main(["tune", str(path), "--tokens", "64", "--write"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "tail=absorb" in lines[1]
    assert seen[0].absorb_tail and not seen[1].absorb_tail and seen[1].final_sum_touched
    assert all(plan.absorb_tail for plan in seen[2:]) and len(seen) == 5  # the later axes keep the tail tiles
    # (tail 2, weight_buffers 3, gate_up_tiles 2 (4: the rule's), down_columns 256)
    refused = [line for line in lines if line.split()[:1] == ["refused"]]  # 8 I tiles: named with the kept tail
    assert len(refused) == 1 and "gate_up_tiles=8" in refused[0] and "tail=absorb" in refused[0].split(":")[0]
    assert json.loads((tmp_path / "t.choices.json").read_text())["kernels"]["k"]["chosen"] == {"tail": "absorb"}
    plan = generate(path).plans[0]
    assert plan.absorb_tail and plan.final_sum_touched  # the final sum follows from the plan (composed with tails)


def test_cte_tail_in_the_fingerprint(tmp_path, capsys, monkeypatch):
    """tail at its default (auto, spelled or not) leaves a record's fingerprint alone (records made before the axis
    stay fresh); spelled tail=block it is the kernel's own option: the record is stale and the axis not searched."""
    from moegen import choices
    from moegen.compiler import load_spec
    from moegen.tune import axes

    _fake_profile(monkeypatch, lambda plan: 100.0 + 10 * plan.absorb_tail)
    path = _stream_spec(tmp_path, TAIL_TUNED)
    assert main(["tune", str(path), "--tokens", "64", "--write"]) == 0
    spec = load_spec(path)
    fresh = choices.fingerprint(spec.layer, spec.variants[0])
    path.write_text(path.read_text().replace("tuned", "tuned tail=auto"))
    spec = load_spec(path)
    assert choices.fingerprint(spec.layer, spec.variants[0]) == fresh
    assert main(["build", str(path), "--out", str(tmp_path / "out")]) == 0
    path.write_text(path.read_text().replace("tail=auto", "tail=block"))
    spec = load_spec(path)
    assert choices.fingerprint(spec.layer, spec.variants[0]) != fresh
    assert "tail" not in [name for name, _ in axes(spec.variants[0])]
    capsys.readouterr()
    assert main(["build", str(path), "--out", str(tmp_path / "out")]) != 0
    assert "stale" in capsys.readouterr().err
