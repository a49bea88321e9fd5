"""docs/spec_language.md stays in step with the language: every name is documented, the example is valid."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from moegen.plan import families
from moegen.spec import validate as rules
from moegen.spec.options import COMMON_OPTIONS
from moegen.spec.parser import parse

DOC = Path(__file__).resolve().parents[2] / "docs" / "spec_language.md"


@pytest.fixture(scope="module")
def doc_text() -> str:
    return DOC.read_text()


def test_every_language_name_is_documented(doc_text):
    names = [
        *rules.DIMS,
        *rules.SETTINGS,
        *rules.PIPELINES,
        *rules.ROUTER_STAGES,
        *rules.EXPERT_STAGES,
        *rules.DTYPES,
        *rules.WEIGHT_QUANT,
        *rules.ACTIVATION_QUANT,
        *(o.name for o in COMMON_OPTIONS),
        *families(),
    ]
    missing = [name for name in names if f"`{name}`" not in doc_text]
    assert not missing


def test_documented_dimension_limits_match_the_validator(doc_text):
    for name, (_, maximum, _) in rules.DIMS.items():
        assert re.search(rf"\| `{name}` \|[^\n]*\| 1 \.\. {maximum} \|", doc_text), name


def test_the_annotated_example_is_a_valid_spec(doc_text):
    example = re.search(r"```moe\n(.*?)```", doc_text, re.S).group(1)
    syntax = parse(example, "demo_layer.moe")
    spec = rules.validate(syntax, {name: family.options for name, family in families().items()})
    assert [v.name for v in spec.variants] == ["route_prefill", "route_decode"]
    assert spec.variants[1].options["verify_tokens"] == 4
    assert spec.layer.router.pre_norm and spec.layer.router.scaling_factor == 2.5
    assert spec.layer.expert.affinity_scale == "post" and spec.layer.dims.intermediate_tp == 768
