"""No spec text reaches generated Python except as an identifier or a number."""

from __future__ import annotations

import difflib
import io
import keyword
import math
import re
import tokenize
from pathlib import Path

import pytest

from moegen.codegen.render import py_literal
from moegen.compiler import generate, spec_label
from moegen.diagnostics import SpecError
from moegen.plan import families
from moegen.spec.parser import parse

LAYER = "moe layer {\n  dims hidden=256 intermediate=512 experts=8 top_k=2\n  dtype bf16\n  %s\n}\n"
SAFE_CHARS = re.compile(r"[A-Za-z0-9_.]*")


def build_error(tmp_path: Path, statement: str) -> str:
    path = tmp_path / "layer.moe"
    path.write_text(LAYER % statement)
    with pytest.raises(SpecError) as error:
        generate(path)
    return str(error.value)


@pytest.mark.parametrize(
    "statement",
    [
        'kernel "x" : toy',
        "kernel x'y : toy",
        'kernel a : toy { mode="static" }',
        "kernel 1abc : toy",
        "kernel été : toy",
        "kernel a\\nb : toy",
        "kernel a.b : toy",
        "kernel a : toy { mode=__import__('os') }",
        "kernel a : toy { scale=1;import os }",
        "kernel `x` : toy",
    ],
)
def test_non_identifier_text_is_a_spec_error(statement, tmp_path, toy_family):
    message = build_error(tmp_path, statement)
    assert re.match(r"^.+layer\.moe:\d+:\d+: error: ", message)


@pytest.mark.parametrize(
    "name",
    [
        *keyword.kwlist,
        "__import__",
        "__name__",
        "__init__",
        "range",
        "print",
        "exec",
        "nki",
        "nl",
        "nisa",
        "np",
        "toy",
        "router",
    ],
)
def test_keywords_builtins_and_module_names_cannot_name_a_kernel(name, tmp_path, toy_family):
    if not name.isidentifier():  # pragma: no cover - every keyword is an identifier
        pytest.skip(name)
    message = build_error(tmp_path, f"kernel {name} : toy")
    assert f"'{name}' cannot name a kernel" in message or "unexpected" in message  # 'kernel' etc. may not parse


def test_a_word_value_that_is_not_a_choice_is_refused(tmp_path, toy_family):
    message = build_error(tmp_path, "kernel a : toy { mode=__import__ }")
    assert "mode=__import__: expected one of static, hybrid" in message


def test_real_families_offer_only_identifier_choices_and_plain_defaults():
    for family in families().values():
        for option in family.options:
            for choice in option.choices:
                assert choice.isidentifier() and not keyword.iskeyword(choice), (family.name, option.name, choice)
            assert option.default is None or isinstance(option.default, (bool, int, float, str)), option
            if isinstance(option.default, str):  # a choice, or `auto` of a number that also takes auto
                assert option.default in option.choices or (option.auto and option.default == "auto"), option


@pytest.mark.parametrize(
    "value",
    [
        "a'b",
        'a"b',
        "x\ny",
        "__import__('os').system('x')",
        "a b",
        "",
        "1abc",
        math.inf,
        -math.inf,
        math.nan,
        object(),
        b"bytes",
        {"a": 1},
        ("ok", "no way"),
    ],
)
def test_py_filter_refuses_anything_but_plain_data(value):
    with pytest.raises(ValueError):
        py_literal(value)


def test_py_filter_renders_plain_data():
    assert py_literal(("th", 1, 2.5, True, None, (3,))) == "('th', 1, 2.5, True, None, (3,))"
    assert py_literal([1, -2]) == "[1, -2]"
    assert py_literal(1e-05) == "1e-05"


def _tokens(text: str) -> list[tokenize.TokenInfo]:
    return list(tokenize.generate_tokens(io.StringIO(text).readline))


def test_spec_text_changes_generated_code_only_in_names_and_numbers(tmp_path, toy_family, toy_spec_text):
    """Two specs differing in kernel names and numbers give files differing only in NAME/NUMBER tokens
    (and digits or identifier characters inside strings and the header comments)."""
    variant = (
        toy_spec_text.replace("small", "Tiny_kernel_9")
        .replace("tokens<=256", "tokens<=4000")
        .replace("hidden=256", "hidden=4096")
        .replace("scale=0.5", "scale=1e-3")
    )
    outputs = []
    for index, text in enumerate((toy_spec_text, variant)):
        folder = tmp_path / str(index) / "specs"
        folder.mkdir(parents=True)
        (folder / "toy_layer.moe").write_text(text)
        outputs.append(generate(folder / "toy_layer.moe").files)
    first, second = outputs[0]["small.py"], outputs[1]["Tiny_kernel_9.py"]
    compile(second, "Tiny_kernel_9.py", "exec")
    tokens_a, tokens_b = _tokens(first), _tokens(second)
    assert [t.type for t in tokens_a] == [t.type for t in tokens_b]
    changed = 0
    for a, b in zip(tokens_a, tokens_b):
        if a.string == b.string:
            continue
        changed += 1
        assert a.type in (tokenize.NAME, tokenize.NUMBER, tokenize.STRING, tokenize.COMMENT), (a, b)
        if a.type in (tokenize.STRING, tokenize.COMMENT):
            matcher = difflib.SequenceMatcher(None, a.string, b.string, autojunk=False)
            for op, _, _, j1, j2 in matcher.get_opcodes():
                if op != "equal":
                    assert SAFE_CHARS.fullmatch(b.string[j1:j2]), (a.string, b.string)
    assert changed >= 4


def test_spec_file_names_must_be_identifiers(tmp_path, toy_family, toy_spec_text):
    for name in ("bad name.moe", "bad\nname.moe", "x'.moe", "1x.moe"):
        path = tmp_path / name
        path.write_text(toy_spec_text)
        with pytest.raises(SpecError, match="must be NAME.moe"):
            generate(path)


def test_spec_label_in_the_header_never_holds_a_line_break(tmp_path):
    folder = tmp_path / "evil\nimport os\r"
    folder.mkdir()
    label = spec_label(folder / "layer.moe")
    assert "\n" not in label and "\r" not in label
    assert label == "evil?import os?/layer.moe"


def test_lexer_accepts_only_ascii_identifiers():
    for text in ("moe café { }", "moe a-b { }", "moe 9a { }", "moe a\u200bb { }"):
        with pytest.raises(SpecError):
            parse(text)


def _buildable_repo_specs():
    specs_dir = Path(__file__).resolve().parents[2] / "specs"
    for path in sorted(specs_dir.glob("*.moe")):
        try:
            yield path, generate(path)
        except SpecError:
            continue


def test_a_kernel_name_may_not_rebind_a_name_its_real_template_defines(tmp_path):
    """For each real family that renders: a kernel named like a template's helper or constant is refused."""
    from moegen.compiler import _top_level_names
    from moegen.spec.validate import RESERVED_NAMES

    checked = set()
    for path, generated in _buildable_repo_specs():
        if checked == set(families()):
            break
        for plan in generated.plans:
            if plan.family in checked:
                continue
            source = generated.files[f"{plan.kernel_name}.py"]
            names = _top_level_names(source)
            assert names.count(plan.kernel_name) == 1
            clashing = sorted(
                n for n in set(names) - RESERVED_NAMES if n != plan.kernel_name and not n.startswith("__")
            )
            if not clashing:
                continue
            checked.add(plan.family)
            copy = tmp_path / plan.family / path.name
            copy.parent.mkdir()
            text = path.read_text()
            closing = text.rindex("}")
            copy.write_text(text[:closing] + f"  kernel {clashing[0]} : {plan.kernel_name}\n" + text[closing:])
            with pytest.raises(SpecError, match=f"template already defines '{clashing[0]}'"):
                generate(copy)
    assert checked, "no family's template defines a module-level name: this test checks nothing"
