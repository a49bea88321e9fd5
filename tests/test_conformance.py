"""moegen.conformance: the NKI API check the project runs itself, from the API table shipped in the package."""

from __future__ import annotations

import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = None

import pytest

from moegen import cli, conformance
from moegen.conformance import api_table, check_source

ROOT = Path(__file__).resolve().parents[1]

KERNEL = """\
import nki
import nki.language as nl
import nki.isa as nisa


@nki.jit
def k(x):
    out = nl.ndarray(x.shape, dtype=x.dtype, buffer=nl.shared_hbm)
    t = nl.ndarray((128, 64), dtype=nl.float32, buffer=nl.sbuf)
    nisa.dma_copy(dst=t, src=x)
    nisa.dma_copy(dst=out, src=t)
    return out
"""


def messages(source: str) -> list[str]:
    return [f.message for f in check_source(source, "k.py")]


def test_the_api_table_is_packaged_with_every_nki_module():
    assert set(api_table()) == {"nki", "nki.language", "nki.isa", "nki.collectives"}
    assert "dma_copy" in api_table()["nki.isa"]["functions"]


def test_pyproject_ships_the_api_table():
    """A non-editable install must carry moegen/nki_api.json (setuptools packages are listed explicitly)."""
    if tomllib is None:  # pragma: no cover
        pytest.fail("tomllib needs Python 3.11+ to read pyproject.toml")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "moegen" in config["packages"]
    assert conformance.API_TABLE in config["package-data"]["moegen"]


def test_real_calls_pass():
    assert messages(KERNEL) == []


def test_an_invented_function_is_reported():
    assert messages(KERNEL.replace("nisa.dma_copy(dst=out", "nisa.dma_copy_fast(dst=out")) == [
        "nki.isa.dma_copy_fast is not in the real NKI API"
    ]


def test_an_invented_keyword_is_reported():
    assert messages(KERNEL.replace("nisa.dma_copy(dst=t, src=x)", "nisa.dma_copy(dst=t, src=x, speed=1)")) == [
        "nki.isa.dma_copy() takes no keyword 'speed'"
    ]


def test_full_module_paths_and_other_aliases_are_resolved():
    source = KERNEL.replace("import nki.isa as nisa", "import nki.isa as isa_ops").replace("nisa.", "isa_ops.")
    assert messages(source) == []
    assert messages(source.replace("isa_ops.dma_copy(dst=t", "isa_ops.copy_it(dst=t")) == [
        "nki.isa.copy_it is not in the real NKI API"
    ]
    assert messages(KERNEL.replace("nl.sbuf)", "nki.language.sbuf2)")) == [
        "nki.language.sbuf2 is not in the real NKI API"
    ]


def test_a_kwargs_parameter_accepts_any_keyword():
    assert messages(KERNEL.replace("@nki.jit", "@nki.jit(mode='simulation')")) == []


def test_the_command_reports_each_use_and_exits_1(tmp_path, capsys):
    bad = tmp_path / "bad.py"
    bad.write_text(KERNEL.replace("nl.ndarray(x.shape", "nl.tensor(x.shape"))
    assert cli.main(["conformance", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert (
        out
        == f"{bad}:8: nki.language.tensor is not in the real NKI API\n1 file(s), 1 use(s) outside the real NKI API (nki_api.json)\n"
    )


def test_the_command_refuses_a_missing_path_or_an_empty_folder(tmp_path, capsys):
    assert conformance.main([str(tmp_path / "nope")]) == 1
    assert "no such file or folder" in capsys.readouterr().err
    assert conformance.main([str(tmp_path)]) == 1
    assert "nothing to check" in capsys.readouterr().err


def test_a_file_that_is_not_python_is_a_finding_not_a_traceback():
    assert messages("def k(:\n") == ["not valid Python: invalid syntax"]


def test_make_test_needs_nothing_beside_the_clone():
    """`make test` runs moegen's own checks; the sibling ../shared tool only where it exists."""
    recipe = (ROOT / "Makefile").read_text().split("\ntest:", 1)[1].split("\n\n", 1)[0]
    assert "moegen conformance generated" in recipe
    for line in recipe.splitlines():
        if "$(SHARED)" in line:
            assert re.search(r"if \[ -f \$\(SHARED\)/", line), line
