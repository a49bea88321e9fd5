"""Every model spec builds at TP 1, 2, 4 and 8, except the kernels docs/tp_degrees.md lists, each refused with
the reason the doc states (the doc's table is the expectation)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from moegen.compiler import generate
from moegen.diagnostics import SpecError

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "tp_degrees.md"
MODEL_SPECS = (
    "deepseek_v2",
    "deepseek_v3",
    "gpt_oss_120b",
    "gpt_oss_20b",
    "llama3_70b_mlp_mxfp8",
    "llama4_scout",
    "mixtral_8x7b",
    "qwen3_30b_a3b",
    "qwen3_30b_a3b_expert_mlp_mxfp8",
)
DEGREES = (1, 2, 4, 8)
ROW = re.compile(r"^\| (\w+) \| (\d+) \| (\w+) \| (.+) \|$")


def documented_refusals() -> dict[tuple[str, int], dict[str, str]]:
    refusals: dict[tuple[str, int], dict[str, str]] = {}
    for line in DOC.read_text().splitlines():
        match = ROW.match(line)
        if match:
            spec, tp, kernel, reason = match.groups()
            refusals.setdefault((spec, int(tp)), {})[kernel] = reason
    return refusals


def with_tp(text: str, tp: int) -> str:
    """The spec with `dims ... tp=N` and no kernel-level tp option (comments kept)."""
    lines = []
    for line in text.split("\n"):
        code, hash_sign, comment = line.partition("#")
        if code.strip().startswith("dims"):
            code = re.sub(r"\s+tp=\d+", "", code).rstrip() + f" tp={tp}"
        elif code.strip().startswith(("kernel", "defaults")):
            code = re.sub(r"(?<=[\s{])tp=\d+\s*", "", code)
        lines.append(code + hash_sign + comment)
    return "\n".join(lines)


def test_the_rewrite_sets_every_kernel_to_the_degree():
    text = (REPO / "specs" / "llama4_scout.moe").read_text()
    rewritten = with_tp(text, 2)
    assert re.search(r"^\s*dims .* tp=2\s*$", rewritten, re.M)
    kernel_tp = re.compile(r"^\s*kernel [^{]*\{[^}]*\btp=", re.M)
    assert kernel_tp.search(text) and not kernel_tp.search(rewritten)


@pytest.mark.parametrize("tp", DEGREES)
@pytest.mark.parametrize("name", MODEL_SPECS)
def test_model_spec_builds_at_tp_or_the_doc_says_why(tmp_path, name, tp):
    path = tmp_path / f"{name}.moe"
    # Tuned kernels take the plan's rules here: a recorded choice holds for the spec's own degree only.
    text = re.sub(r"\btuned\b ?", "", (REPO / "specs" / f"{name}.moe").read_text())
    path.write_text(with_tp(text, tp))
    expected = documented_refusals().get((name, tp), {})
    try:
        generated = generate(path)
    except SpecError as error:
        refused = {}
        for diagnostic in error.diagnostics:
            found = re.match(r"kernel '(\w+)': (.*)", diagnostic.message)
            assert found, diagnostic.message  # only kernels (plans) may refuse a degree, not the layer
            refused.setdefault(found.group(1), []).append(found.group(2))
        assert set(refused) == set(expected), refused
        for kernel, reason in expected.items():
            assert any(reason in message for message in refused[kernel]), (kernel, refused[kernel])
        return
    assert not expected, f"{name} at TP {tp} builds now: remove its rows from docs/tp_degrees.md"
    assert generated.files
