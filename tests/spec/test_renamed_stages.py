"""`scale` was two stages: the routed scaling factor (router) and the affinity-scaling position (expert).
They are `scaling_factor(F)` and `affinity_scale`; the old spelling builds with a located warning."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from moegen import cli
from moegen.compiler import load_spec
from moegen.diagnostics import Diagnostic, Span, SpecError

REPO = Path(__file__).resolve().parents[2]
OLD = """moe t {
  dims hidden=256 intermediate=128 experts=4 top_k=2
  dtype bf16
  router = linear -> sigmoid -> topk -> renormalize -> scale(2.5)
  expert = scale -> gate_up -> silu -> down
  kernel route : router { verify_tokens=3 }
}
"""
NEW = OLD.replace("scale(2.5)", "scaling_factor(2.5)").replace("= scale ->", "= affinity_scale ->")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "t.moe"
    path.write_text(text)
    return path


def test_old_spelling_means_the_same_layer_with_two_warnings(tmp_path):
    (tmp_path / "old").mkdir()
    old = load_spec(write(tmp_path / "old", OLD))
    new = load_spec(write(tmp_path, NEW))
    assert replace(old.layer.router, span=None) == replace(new.layer.router, span=None)
    assert replace(old.layer.expert, span=None) == replace(new.layer.expert, span=None)
    assert old.layer.router.scaling_factor == 2.5 and old.layer.expert.affinity_scale == "pre"
    assert [(w.severity, w.span.line, w.span.column) for w in old.warnings] == [("warning", 4, 56), ("warning", 5, 12)]
    assert new.warnings == ()


@pytest.mark.parametrize("command", ["build", "check", "explain", "verify"])
def test_build_check_explain_verify_print_the_warning_and_keep_their_status(tmp_path, monkeypatch, capsys, command):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, OLD)
    if command != "build":
        assert cli.main(["build", "t.moe"]) == 0
        capsys.readouterr()
    status = cli.main([command, "t.moe"])
    err = capsys.readouterr().err
    assert status == 0
    assert (
        "t.moe:4:56: warning: 'scale' in the router pipeline is now spelled 'scaling_factor': "
        "write 'scaling_factor(2.5)'\n"
        "    router = linear -> sigmoid -> topk -> renormalize -> scale(2.5)\n"
        "                                                         ^~~~~\n"
    ) in err
    assert "t.moe:5:12: warning: 'scale' in the expert pipeline is now spelled 'affinity_scale'" in err
    assert ": error: " not in err


def test_new_spelling_prints_nothing_on_stderr(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, NEW)
    assert cli.main(["build", "t.moe"]) == 0
    assert capsys.readouterr().err == ""


def test_checked_in_specs_use_the_new_spelling():
    for path in sorted((REPO / "specs").glob("*.moe")):
        assert load_spec(path).warnings == (), path.name


def test_a_diagnostic_severity_is_error_or_warning():
    span = Span("t.moe", 1, 1, 1, 2)
    assert Diagnostic(span, "m").severity == "error"
    with pytest.raises(ValueError, match="severity"):
        Diagnostic(span, "m", severity="note")


@pytest.mark.parametrize(
    "old, new, hint",
    [
        ("scale(2.5)", "scaling(2.5)", "did you mean 'scaling_factor'?"),
        ("= scale ->", "= affinity ->", "did you mean 'affinity_scale'?"),
        ("top_k=2", "top_k=2 shared_expert=1", "did you mean 'shared_experts'?"),
    ],
)
def test_hints_know_the_new_words(tmp_path, old, new, hint):
    with pytest.raises(SpecError) as caught:
        load_spec(write(tmp_path, OLD.replace(old, new)))
    assert hint in str(caught.value)
