"""`moegen build` and `check` when the output folder cannot be written, when an earlier build was killed
half-way, when two builds run at once, and on large specs (work per variant stays constant)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import moegen.codegen.render as render_module
from moegen import cli
from moegen.codegen import build as build_module
from moegen.compiler import _kernel_name_bound_twice, _top_level_names, generate

REPO = Path(__file__).resolve().parents[2]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    status = cli.main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


# -- write errors: a clear message and exit 1, never a traceback ------------------------------------


def test_out_pointing_at_a_file_is_a_clear_error(toy_project, toy_family, capsys):
    (toy_project / "a_file").write_text("not a folder\n")
    status, out, err = run(capsys, "build", "--out", "a_file")
    assert status == 1, out + err
    assert err.startswith("specs/toy_layer.moe: error: cannot write to 'a_file': ")
    assert "a_file" in err.splitlines()[0].split(": ", 3)[-1]
    assert (toy_project / "a_file").read_text() == "not a folder\n"


def test_out_below_a_file_is_a_clear_error(toy_project, toy_family, capsys):
    status, _, err = run(capsys, "build", "--out", "/dev/null/generated")
    assert status == 1
    assert err.startswith("specs/toy_layer.moe: error: cannot write to '/dev/null/generated': Not a directory")


def test_a_read_only_generated_folder_is_a_clear_error(toy_project, toy_family, capsys, monkeypatch):
    """Root may write anywhere, so the read-only folder's refusal is what mkdtemp raises for other users."""
    (toy_project / "generated").mkdir()

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(toy_project / "generated" / ".toy_layer.x"))

    monkeypatch.setattr(build_module.tempfile, "mkdtemp", refuse)
    status, out, err = run(capsys, "build")
    assert status == 1 and out == ""
    assert "error: cannot write to 'generated': Permission denied: " in err
    assert "Traceback" not in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions; the monkeypatched test covers it")
def test_a_read_only_generated_folder_for_real(toy_project, toy_family, capsys):  # pragma: no cover - non-root
    (toy_project / "generated").mkdir(mode=0o555)
    status, _, err = run(capsys, "build")
    assert status == 1 and "Permission denied" in err


def test_a_spec_file_name_too_long_for_the_build_folders_is_a_located_error(toy_project, toy_family, capsys):
    """`.<name>.old.XXXXXXXX` must fit 255 bytes: a 242-character name builds nothing and says why."""
    name = "s" * 242
    (toy_project / "specs" / f"{name}.moe").write_text((toy_project / "specs" / "toy_layer.moe").read_text())
    status, _, err = run(capsys, "build", f"specs/{name}.moe")
    assert status == 2
    assert err.startswith(f"specs/{name}.moe:1:1: error: spec file name of 242 characters")
    assert not (toy_project / "generated").exists()
    (toy_project / "specs" / f"{name}.moe").rename(toy_project / "specs" / f"{name[:241]}.moe")
    assert run(capsys, "build", f"specs/{name[:241]}.moe")[0] == 0


# -- interrupted builds ---------------------------------------------------------------------------


def _built(capsys) -> Path:
    assert run(capsys, "build")[0] == 0
    return Path("generated")


def test_check_restores_the_folder_of_a_build_killed_between_its_renames(toy_project, toy_family, capsys):
    generated = _built(capsys)
    os.rename(generated / "toy_layer", generated / ".toy_layer.old.k1ll3d_1")
    (generated / ".toy_layer.st4g1ng_").mkdir()
    (generated / ".toy_layer.st4g1ng_" / "small.py").write_text("half")
    status, out, err = run(capsys, "check")
    assert status == 0, out + err
    assert "restored generated/toy_layer from .toy_layer.old.k1ll3d_1" in err
    assert sorted(p.name for p in generated.iterdir()) == ["toy_layer"]


def test_build_removes_what_a_killed_build_left(toy_project, toy_family, capsys):
    generated = _built(capsys)
    (generated / ".toy_layer.old.abcdefgh").mkdir()  # killed after the second rename, during the cleanup
    (generated / ".toy_layer.old.abcdefgh" / "small.py").write_text("old")
    (generated / ".other_spec.12345678").mkdir()  # a staging folder of another spec
    assert run(capsys, "build")[0] == 0
    assert sorted(p.name for p in generated.iterdir()) == ["toy_layer"]
    assert run(capsys, "check")[0] == 0


def test_check_leaves_hidden_folders_it_did_not_make(toy_project, toy_family, capsys):
    generated = _built(capsys)
    (generated / ".git_like").mkdir()
    (generated / ".toy_layer.not_eight").mkdir()
    status, out, _ = run(capsys, "check")
    assert status == 1 and "generated/.git_like: extra" in out and ".toy_layer.not_eight: extra" in out
    assert (generated / ".git_like").is_dir()


KILL_BETWEEN_RENAMES = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from moegen.codegen import build
    from moegen.compiler import generate

    real_rename, calls = os.rename, []

    def rename(src, dst):
        calls.append(src)
        real_rename(src, dst)
        if len(calls) == 1:
            os._exit(9)  # killed: the old folder is moved aside, the new one not yet in place

    generated = generate(Path(sys.argv[1]))
    build.os.rename = rename
    build.write(generated, Path(sys.argv[2]), force=True)
    """
)


def test_a_real_kill_between_the_renames_is_recovered(tmp_path, capsys):
    spec = REPO / "specs" / "gpt_oss_120b.moe"
    out = tmp_path / "generated"
    assert cli.main(["build", str(spec), "--out", str(out)]) == 0
    killed = subprocess.run([sys.executable, "-c", KILL_BETWEEN_RENAMES, str(spec), str(out)], cwd=tmp_path)
    assert killed.returncode == 9
    assert not (out / "gpt_oss_120b").exists()
    left = sorted(p.name for p in out.iterdir())
    assert len(left) == 2 and sum(name.startswith(".gpt_oss_120b.old.") for name in left) == 1  # and the staging one
    capsys.readouterr()
    assert cli.main(["check", str(spec), "--out", str(out)]) == 0
    assert [p.name for p in out.iterdir()] == ["gpt_oss_120b"]


CONCURRENT_BUILDER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from moegen.codegen.build import write
    from moegen.compiler import generate

    generated = generate(Path(sys.argv[1]))
    for _ in range(int(sys.argv[3])):
        write(generated, Path(sys.argv[2]), force=True)
    """
)


def test_two_concurrent_builds_of_one_folder_both_succeed(tmp_path, capsys):
    """Without the lock, their renames interleave: 'Directory not empty' or a missing folder."""
    spec = REPO / "specs" / "gpt_oss_120b.moe"
    out = tmp_path / "generated"
    command = [sys.executable, "-c", CONCURRENT_BUILDER, str(spec), str(out), "60"]
    builders = [subprocess.Popen(command, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errors = [builder.communicate()[1] for builder in builders]
    assert [builder.returncode for builder in builders] == [0, 0], errors
    assert [p.name for p in out.iterdir()] == ["gpt_oss_120b"]
    assert cli.main(["check", str(spec), "--out", str(out)]) == 0


# -- large specs: the work per variant does not grow with the spec ---------------------------------


def test_each_template_is_parsed_once_per_process(toy_project, toy_family, monkeypatch):
    """The header's templates hash used to re-parse every template for every variant (89% of a 200-variant build)."""
    parsed = []
    real = render_module.meta.find_referenced_templates
    monkeypatch.setattr(render_module.meta, "find_referenced_templates", lambda ast: parsed.append(1) or real(ast))
    kernels = "\n".join(f"  kernel k{i} : toy {{ tokens<=256 }}" for i in range(40))
    spec = Path("specs/toy_layer.moe")
    spec.write_text(spec.read_text().replace("  kernel small", kernels + "\n  kernel small"))
    assert len(generate(spec).files) == 42
    assert len(parsed) == 1  # the toy template imports nothing


def test_the_spec_is_hashed_once_per_build(toy_project, toy_family, monkeypatch):
    hashed = []
    real = render_module.sha256
    monkeypatch.setattr(render_module, "sha256", lambda text: hashed.append(len(text)) or real(text))
    render_module.spec_sha256.cache_clear()
    spec = Path("specs/toy_layer.moe")
    generated = generate(spec)
    assert hashed.count(len(generated.spec.text)) == 1


@pytest.mark.parametrize("path", sorted((REPO / "generated").rglob("*.py")), ids=lambda p: p.stem)
def test_the_quick_name_clash_scan_agrees_with_a_full_parse(path):
    source = path.read_text()
    assert _kernel_name_bound_twice(source, path.stem) == (_top_level_names(source).count(path.stem) > 1)


HELPER_THEN_KERNEL = """\
\"\"\"k: a kernel (its name in the docstring binds nothing).\"\"\"
import nki

TILE = 128


def {helper}(x):
    return x


@nki.jit
def k(x):
    return {helper}(x)
"""


@pytest.mark.parametrize(
    "source, bound_twice",
    [
        (HELPER_THEN_KERNEL.format(helper="helper"), False),
        (HELPER_THEN_KERNEL.format(helper="k"), True),
        (HELPER_THEN_KERNEL.format(helper="helper").replace("TILE", "k"), True),
        (HELPER_THEN_KERNEL.format(helper="helper") + "k = 1\n", True),  # after the kernel: parsed whole
        ('S = """\ndef k(x):\n"""\n' + HELPER_THEN_KERNEL.format(helper="helper"), False),  # a def inside a string
    ],
)
def test_the_quick_name_clash_scan_on_every_layout(source, bound_twice):
    assert _kernel_name_bound_twice(source, "k") == bound_twice == (_top_level_names(source).count("k") > 1)
