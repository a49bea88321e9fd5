"""Mutated specs end in a build or a located SpecError: never any other exception, never a traceback."""

from __future__ import annotations

import random
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks import fuzz_specs
from moegen import cli
from moegen.compiler import generate
from moegen.diagnostics import SpecError

SPECS_DIR = Path(__file__).resolve().parents[2] / "specs"
TOKEN = re.compile(r"\s+|#[^\n]*|->|<=|>=|[A-Za-z_][A-Za-z0-9_]*|[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?|.", re.S)
HUGE = ["1" + "0" * 400, "1e999", "-1e999", "9" * 5000, "0", "-0", "99999999999999999999", "1e-999", "0.5"]
NASTY = ["\x00", "\ufeff", "\u2028", "\x0c", "\r", "é", "名前", "🙂", "'", '"', "\\", "${x}", "{{", "}}", "\t", ";;"]


def first_kernels(text: str, keep: int = 3) -> str:
    """The spec with only its first `keep` kernel lines: every family still plans and renders, in less time."""
    lines, kernels = [], 0
    for line in text.splitlines(keepends=True):
        if line.lstrip().startswith("kernel "):
            kernels += 1
            if kernels > keep:
                continue
        lines.append(line)
    return "".join(lines)


def base_texts(toy_spec: str) -> list[str]:
    return [toy_spec] + [first_kernels(path.read_text()) for path in sorted(SPECS_DIR.glob("*.moe"))]


@st.composite
def mutated_spec(draw, bases: list[str]) -> bytes:
    """A valid spec with one to three token-level mutations, or raw garbage, as file bytes."""
    tokens = TOKEN.findall(draw(st.sampled_from(bases)))
    for _ in range(draw(st.integers(1, 3))):
        index = draw(st.integers(0, len(tokens) - 1))
        kind = draw(st.sampled_from(["delete", "duplicate", "swap", "insert", "huge", "nasty", "truncate"]))
        if kind == "delete":
            del tokens[index]
        elif kind == "duplicate":
            tokens.insert(index, tokens[index])
        elif kind == "swap":
            other = draw(st.integers(0, len(tokens) - 1))
            tokens[index], tokens[other] = tokens[other], tokens[index]
        elif kind == "insert":
            tokens.insert(index, draw(st.text(max_size=8)))
        elif kind == "huge":
            tokens[index] = draw(st.sampled_from(HUGE))
        elif kind == "nasty":
            tokens.insert(index, draw(st.sampled_from(NASTY)))
        else:
            del tokens[index:]
        if not tokens:
            tokens = [""]
    data = "".join(tokens).encode()
    if draw(st.booleans()) and draw(st.booleans()):  # a quarter of the cases: raw bytes somewhere
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(max_size=6)) + data[at:]
    return data


LOCATED = re.compile(r"^(?P<path>.+\.moe):(?P<line>\d+):(?P<col>\d+): (error|warning): \S")


def assert_located(error: SpecError, path: Path, data: bytes) -> None:
    text = str(error)
    assert "Traceback" not in text
    headers = [line for line in text.splitlines() if not line.startswith("  ")]
    assert headers, text
    line_count = data.count(b"\n") + 1
    for header in headers:
        match = LOCATED.match(header)
        assert match, header
        assert match["path"] == str(path)
        assert 1 <= int(match["line"]) <= line_count and int(match["col"]) >= 1, header


def test_mutated_specs_build_or_fail_with_a_located_error(toy_installer, toy_spec_text):
    bases = base_texts(toy_spec_text)
    with tempfile.TemporaryDirectory() as folder, toy_installer():
        path = Path(folder) / "specs" / "fuzz.moe"
        path.parent.mkdir()

        @settings(
            max_examples=200,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(mutated_spec(bases))
        def check(data: bytes) -> None:
            path.write_bytes(data)
            try:
                generated = generate(path)
            except SpecError as error:
                assert_located(error, path, data)
                return
            assert all(name.endswith(".py") for name in generated.files)

        check()


def test_empty_and_blank_files_are_located_errors(tmp_path):
    for index, data in enumerate([b"", b"\n\n", b"   ", b"# only a comment\n", b"\xff\xfe", b"\x00"]):
        path = tmp_path / f"case{index}.moe"
        path.write_bytes(data)
        try:
            generate(path)
        except SpecError as error:
            assert_located(error, path, data)
        else:
            raise AssertionError(f"{data!r} built")


def test_cli_on_mutants_exits_2_without_traceback(tmp_path, monkeypatch, capsys, toy_family, toy_spec_text):
    monkeypatch.chdir(tmp_path)
    mutants = {
        "deleted_brace": toy_spec_text.replace("}\n", "\n", 1),
        "swapped": toy_spec_text.replace("kernel small : toy", "small kernel : toy"),
        "huge": toy_spec_text.replace("hidden=256", "hidden=" + "9" * 5000),
        "unicode": toy_spec_text.replace("small", "smäll"),
        "nul": toy_spec_text.replace("dims", "di\x00ms"),
    }
    for name, text in mutants.items():
        (tmp_path / f"{name}.moe").write_text(text)
        status = cli.main(["build", f"{name}.moe", "--out", "out"])
        err = capsys.readouterr().err
        assert status == 2, name
        assert err.startswith(f"{name}.moe:") and ": error: " in err, err
        assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


# -- the mutants of benchmarks/fuzz_specs.py (thousands there, a few here), through `moegen build` --------


@pytest.mark.parametrize("spec", sorted(SPECS_DIR.glob("*.moe")), ids=lambda p: p.stem)
def test_random_mutants_of_every_spec_build_or_fail_with_located_errors(spec, tmp_path):
    rng = random.Random(f"test:{spec.name}")
    (tmp_path / "specs").mkdir()
    text = first_kernels(spec.read_text(), keep=2)
    outcomes = [fuzz_specs.build(fuzz_specs.token_mutant(text, rng), tmp_path) for _ in range(12)]
    assert [detail for outcome, detail in outcomes if outcome == "FAIL"] == []


def test_five_megabyte_specs_and_names_end_in_a_build_or_a_located_error(tmp_path):
    """A 5 MB comment builds; a 5 MB kernel name and a 5 MB line of an unknown word are located errors,
    shown as a window of the line, not 5 MB of it."""
    (tmp_path / "specs").mkdir()
    text = (SPECS_DIR / "gpt_oss_120b.moe").read_text()
    big_comment = text + "# " + "x" * fuzz_specs.FIVE_MB + "\n"
    assert fuzz_specs.build(big_comment.encode(), tmp_path) == ("built", "")
    huge_name = "k" * fuzz_specs.FIVE_MB
    for mutant in (text.replace("kernel router_topk", f"kernel {huge_name}"), text.replace("dtype", huge_name)):
        path = tmp_path / "specs" / "mutant.moe"
        path.write_text(mutant)
        with pytest.raises(SpecError) as error:
            generate(path)
        assert_located(error.value, path, mutant.encode())
        assert len(str(error.value)) < 1000
