"""The `moegen` command: exit codes, --help everywhere, `python -m moegen`, explain's table, determinism."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from moegen import cli

TESTS_DIR = Path(__file__).resolve().parents[1]
REPO = TESTS_DIR.parent
COMMANDS = ("build", "check", "explain", "verify", "profile")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    status = cli.main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def run_python(args: list[str], cwd: Path, hash_seed: str = "0") -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONHASHSEED=hash_seed, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


# ---------------------------------------------------------------- help


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: moegen {command}")


def test_python_dash_m_moegen_help(tmp_path):
    result = run_python(["-m", "moegen", "--help"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: moegen")
    for command in COMMANDS:
        assert command in result.stdout


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([])
    assert exit_info.value.code == 2
    assert "usage: moegen" in capsys.readouterr().err


# ---------------------------------------------------------------- exit codes


def test_exit_0_when_built_and_up_to_date(toy_project, toy_family, capsys):
    assert run(capsys, "build")[0] == cli.EXIT_OK == 0
    assert run(capsys, "check")[0] == 0


def test_exit_1_when_generated_is_stale(toy_project, toy_family, capsys):
    status, out, err = run(capsys, "check")  # nothing built yet
    assert status == cli.EXIT_FAILED == 1
    assert "missing" in out and "run 'moegen build'" in err


def test_exit_2_on_a_spec_error(toy_project, toy_family, capsys):
    (toy_project / "specs" / "toy_layer.moe").write_text("moe broken {\n")
    for command in ("build", "check", "explain", "verify"):
        argv = [command] if command in ("build", "check") else [command, "specs/toy_layer.moe"]
        status, _, err = run(capsys, *argv)
        assert status == cli.EXIT_SPEC_ERROR == 2, command
        assert err.startswith("specs/toy_layer.moe:1:13: error: unexpected end of file"), err


def test_exit_2_on_a_missing_spec_file(toy_project, capsys):
    status, _, err = run(capsys, "build", "specs/nothing.moe")
    assert status == 2
    assert err == f"{Path('specs/nothing.moe')}: error: no such spec file\n"


def test_a_spec_error_in_a_subprocess_has_no_traceback(tmp_path):
    (tmp_path / "bad.moe").write_bytes(b"moe bad {\n  dims hidden=\xff\n}\n")
    result = run_python(["-m", "moegen", "build", "bad.moe", "--out", "out"], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("bad.moe:2:15: error: byte 0xff is not UTF-8\n")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_verify_of_an_unbuilt_kernel_exits_1(toy_project, toy_family, capsys):
    status, _, err = run(capsys, "verify", "specs/toy_layer.moe")
    assert status == 1
    assert "not built: small, large" in err


def test_explain_or_verify_of_an_unknown_variant_exits_1(toy_project, toy_family, capsys):
    for command in ("explain", "verify"):
        status, _, err = run(capsys, command, "specs/toy_layer.moe", "--variant", "nope")
        assert status == 1
        assert "no kernel named 'nope'" in err


# ---------------------------------------------------------------- explain


def test_explain_prints_a_table_with_sbuf_and_psum_use(toy_project, toy_family, capsys):
    status, out, _ = run(capsys, "explain", "specs/toy_layer.moe", "--variant", "large")
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == "kernel large  (family toy, lnc 1, target trn2)"
    assert "  tokens  1024" in lines and "  block   512" in lines
    assert "    sbuf x_tile  2 x [128, 512 B] = 1024 B" in lines
    assert "    SBUF total   1024 / 229376 B (0.4%)" in lines
    assert "    PSUM banks   1 / 8" in lines
    assert "    - block: the toy keeps one block in SBUF" in lines
    assert "kernel small" not in out


def test_explain_without_variant_shows_every_kernel(toy_project, toy_family, capsys):
    _, out, _ = run(capsys, "explain", "specs/toy_layer.moe")
    assert [line for line in out.splitlines() if line.startswith("kernel ")] == [
        "kernel small  (family toy, lnc 1, target trn2)",
        "kernel large  (family toy, lnc 1, target trn2)",
    ]


# ---------------------------------------------------------------- determinism

TOY_BUILD = (
    "import importlib.util, sys\n"
    f"spec = importlib.util.spec_from_file_location('toy_conftest', {str(TESTS_DIR / 'conftest.py')!r})\n"
    "module = importlib.util.module_from_spec(spec); sys.modules['toy_conftest'] = module\n"
    "spec.loader.exec_module(module)\n"
    "from moegen.cli import main\n"
    "with module.toy_family_installed():\n"
    "    sys.exit(main(sys.argv[1:]))\n"
)


def test_two_builds_from_different_folders_are_byte_identical(tmp_path, toy_spec_text):
    """Relative paths from one folder, absolute from another, different hash seeds: same bytes."""
    first, second = tmp_path / "one", tmp_path / "two" / "deeper"
    for root in (first, second):
        (root / "specs").mkdir(parents=True)
        (root / "specs" / "toy_layer.moe").write_text(toy_spec_text)
    result = run_python(["-c", TOY_BUILD, "build", "specs/toy_layer.moe", "--out", "gen"], cwd=first, hash_seed="1")
    assert result.returncode == 0, result.stderr
    result = run_python(
        ["-c", TOY_BUILD, "build", str(second / "specs" / "toy_layer.moe"), "--out", str(second / "gen")],
        cwd=tmp_path,
        hash_seed="2",
    )
    assert result.returncode == 0, result.stderr
    files_one = {p.name: p.read_bytes() for p in (first / "gen" / "toy_layer").iterdir()}
    files_two = {p.name: p.read_bytes() for p in (second / "gen" / "toy_layer").iterdir()}
    assert sorted(files_one) == ["large.py", "small.py"]
    assert files_one == files_two


def _one_buildable_spec_per_family() -> list[Path]:
    """The smallest spec of specs/ that builds, for each family (bounds the test's time as specs grow)."""
    from moegen.compiler import generate
    from moegen.diagnostics import SpecError

    chosen: dict[str, Path] = {}
    for path in sorted((REPO / "specs").glob("*.moe"), key=lambda p: (p.stat().st_size, p.name)):
        try:
            plans = generate(path).plans
        except SpecError:
            continue
        for family in {plan.family for plan in plans}:
            chosen.setdefault(family, path)
    return sorted(set(chosen.values()))


def test_repo_specs_build_byte_identically_from_two_folders(tmp_path):
    """`python -m moegen build` of real specs (one per family that builds today) twice, from two folders;
    `make test`'s `moegen check` compares every spec's build with generated/ on top of this."""
    specs = _one_buildable_spec_per_family()
    assert specs, "no spec in specs/ builds"
    outputs = []
    for index, hash_seed in enumerate(("1", "2")):
        root = tmp_path / f"copy{index}"
        (root / "specs").mkdir(parents=True)
        for spec in specs:
            shutil.copy(spec, root / "specs" / spec.name)
        cwd = root if index == 0 else tmp_path
        result = run_python(
            ["-m", "moegen", "build", *(str(root / "specs" / s.name) for s in specs), "--out", str(root / "generated")],
            cwd=cwd,
            hash_seed=hash_seed,
        )
        assert result.returncode == 0, result.stderr
        outputs.append(
            {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "generated").rglob("*")) if p.is_file()}
        )
    assert outputs[0] == outputs[1]
    assert outputs[0]
