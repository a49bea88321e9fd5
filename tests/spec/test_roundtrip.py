"""Parser round trips: parse -> syntax objects -> format_spec -> parse gives equal objects (spans aside)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from moegen.diagnostics import Span
from moegen.spec.parser import parse
from moegen.spec.printer import format_spec

SPECS_DIR = Path(__file__).resolve().parents[2] / "specs"


def without_spans(obj):
    """The syntax objects as nested tuples, leaving out spans and the file's path and text."""
    if isinstance(obj, Span):
        return None
    if dataclasses.is_dataclass(obj):
        return (type(obj).__name__,) + tuple(
            without_spans(getattr(obj, f.name))
            for f in dataclasses.fields(obj)
            if not f.name.endswith("span") and f.name not in ("path", "text")
        )
    if isinstance(obj, tuple):
        return tuple(without_spans(item) for item in obj)
    if isinstance(obj, float):
        return ("float", obj)  # keeps 2 and 2.0 apart
    return obj


def assert_round_trip(text: str) -> None:
    first = parse(text, "first.moe")
    printed = format_spec(first)
    second = parse(printed, "second.moe")
    assert without_spans(second) == without_spans(first), printed
    assert format_spec(second) == printed  # the printer is a fixed point


@pytest.mark.parametrize("spec_path", sorted(SPECS_DIR.glob("*.moe")), ids=lambda p: p.stem)
def test_every_repo_spec_round_trips(spec_path):
    assert_round_trip(spec_path.read_text())


HAND_WRITTEN = {
    "comments_everywhere": """\
# leading comment
moe m {   # after the brace
  # a full-line comment
  dims hidden=64 intermediate=128 experts=8 top_k=2   # trailing comment
  dtype bf16
}  # after the layer
# trailing comment, no newline at the end""",
    "semicolon_separators": "moe m { dims hidden=64 intermediate=128 experts=8 top_k=2; dtype bf16; kernel a : toy }",
    "multi_line_kernel_body": """\
moe m {
  kernel a : toy {
    tokens<=256

    block=128   # comment inside a body
    selective
  }
}
""",
    "defaults_and_extends": """\
moe m {
  defaults toy { block=512 lnc=2 }
  kernel base : toy { tokens<=64 }
  kernel derived : base { block=128 }
  kernel derived_again : derived
}
""",
    "every_stage_argument_form": """\
moe m {
  router = linear(bias) -> sigmoid -> select_bias -> group_limit(groups=8, keep=4, score=top2_sum) -> topk -> scale(2.5)
  expert = gate_up(bias) -> clamp(gate <= 7, -7 <= up <= 7.5, up >= -1e3) -> swish(alpha=1.702) -> down(bias)
}
""",
    "option_forms_and_numbers": "moe m { kernel a : toy { f x=1 y=-2 z=0.25 w=1e-5 t<=32 u<4 v>=1 q>0 s=word e=1e999 } }",
    "dtype_in_out_and_quant": "moe m {\n dtype in=bf16 out=fp32\n quant weights=mxfp4 activations=mxfp8\n}\n",
    "windows_line_endings": "moe m {\r\n  dims hidden=64\r\n  dtype bf16\r\n}\r\n",
    "empty_braces_and_blank_lines": "\n\nmoe m {\n\n\n  kernel a : toy { }\n\n}\n\n",
}


@pytest.mark.parametrize("name", sorted(HAND_WRITTEN))
def test_hand_written_spec_round_trips(name):
    assert_round_trip(HAND_WRITTEN[name])


def test_toy_spec_round_trips(toy_spec_text):
    assert_round_trip(toy_spec_text)


def test_comments_and_separators_do_not_change_the_syntax():
    spaced = parse("# c\nmoe m {\n  dims hidden=64   # c\n\n  dtype bf16\n}\n")
    packed = parse("moe m { dims hidden=64; dtype bf16 }")
    assert without_spans(spaced) == without_spans(packed)


def test_number_kinds_are_kept():
    syntax = parse("moe m { kernel a : toy { i=2 f=2.0 n=-3 e=1e2 } }")
    values = {o.name: o.value.value for o in syntax.kernels[0].options}
    assert values == {"i": 2, "f": 2.0, "n": -3, "e": 100.0}
    assert [type(v) for v in values.values()] == [int, float, int, float]


def test_spans_point_at_the_source():
    text = "moe m {\n  kernel decode : toy { tokens <= - 32 }\n}\n"
    kernel = parse(text, "x.moe").kernels[0]
    assert (kernel.name_span.line, kernel.name_span.column) == (2, 10)
    assert (kernel.base_span.line, kernel.base_span.column) == (2, 19)
    value = kernel.options[0].value
    assert value.value == -32
    assert (value.span.column, value.span.end_column) == (35, 39)  # from the '-' to the end of '32'
