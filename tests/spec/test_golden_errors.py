"""One golden file per error class: tests/golden/<name>.moe and the exact stderr in <name>.err.

`moegen build <name>.moe` runs in tests/golden (so paths in messages are relative), with the
toy family installed for the option-range and plan-time cases. To rewrite the .err files
after a deliberate message change: MOEGEN_UPDATE_GOLDEN=1 pytest tests/spec/test_golden_errors.py
(then read the diff).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from moegen import cli

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "golden"
GOLDEN_SPECS = sorted(GOLDEN_DIR.glob("*.moe"))
UPDATE = os.environ.get("MOEGEN_UPDATE_GOLDEN") == "1"
ERROR_LINE = re.compile(r"^[\w.-]+\.moe:\d+:\d+: (error|warning): \S")


def build_stderr(spec: Path, out_dir: Path, capsys) -> tuple[int, str, str]:
    status = cli.main(["build", spec.name, "--out", str(out_dir)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.mark.parametrize("spec", GOLDEN_SPECS, ids=lambda p: p.stem)
def test_golden_error(spec, tmp_path, monkeypatch, capsys, toy_family):
    monkeypatch.chdir(GOLDEN_DIR)
    status, out, err = build_stderr(spec, tmp_path / "out", capsys)
    golden = spec.with_suffix(".err")
    if UPDATE:
        golden.write_bytes(err.encode())
    assert err.encode() == golden.read_bytes()
    assert status == 2
    assert out == ""
    assert not (tmp_path / "out").exists()  # nothing written, not even the folder


@pytest.mark.parametrize("spec", GOLDEN_SPECS, ids=lambda p: p.stem)
def test_golden_error_is_compiler_shaped(spec):
    """Each diagnostic starts `path:line:col: error:` (or `warning:`); when it has a source line, a caret
    follows it; no traceback; a file with only warnings is not a golden error."""
    lines = spec.with_suffix(".err").read_text().splitlines()
    assert lines and ERROR_LINE.match(lines[0]), lines[:1]
    assert any(": error: " in line for line in lines)
    assert "Traceback" not in "\n".join(lines)
    for index, line in enumerate(lines):
        if not line.startswith("  ") or line.startswith("  hint: "):
            assert ERROR_LINE.match(line) or line.startswith("  hint: "), line
        elif set(line.strip()) <= {"^", "~"}:
            assert lines[index - 1].startswith("  ") and line.strip().startswith("^")


def test_every_golden_has_an_err_file():
    assert {p.stem for p in GOLDEN_DIR.glob("*.err")} == {p.stem for p in GOLDEN_SPECS}


def test_several_errors_are_all_reported():
    errors = [line for line in (GOLDEN_DIR / "several_errors.err").read_text().splitlines() if ": error: " in line]
    assert len(errors) >= 6
    positions = [tuple(int(n) for n in line.split(":")[1:3]) for line in errors]
    assert positions == sorted(positions)  # in source order


def test_unknown_names_suggest_the_closest_known_name():
    for name, suggestion in [
        ("unknown_setting", "dims"),
        ("unknown_dimension", "hidden"),
        ("unknown_stage", "softmax"),
        ("unknown_option", "lnc"),
        ("unknown_family", "router"),
        ("unknown_dtype", "bf16"),
    ]:
        assert f"hint: did you mean '{suggestion}'?" in (GOLDEN_DIR / f"{name}.err").read_text(), name
