"""Every checked-in generated kernel passes the NKI subset check and uses only the real API."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from moegen import sim
from moegen.conformance import check_source

ROOT = Path(__file__).resolve().parents[1]
KERNELS = sorted((ROOT / "generated").rglob("*.py"))


def test_there_are_generated_kernels():
    assert KERNELS, "generated/ is empty: run 'moegen build'"


@pytest.mark.parametrize("path", KERNELS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_generated_kernel_is_in_the_nki_python_subset(path: Path):
    """moegen.sim.static_check finds no error: among its rules (each with its doc page in
    moegen/sim/subset_check.py), no dict with non-string keys read by a kernel, no raise, and no
    allocation inside a dynamic-loop body."""
    errors = [f for f in sim.static_check(path) if f.severity == "error"]
    assert not errors, "\n".join(f"{path.name}:{f.line}:{f.col}: {f.rule}: {f.message}" for f in errors)


@pytest.mark.parametrize("path", KERNELS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_generated_kernel_calls_only_the_real_nki_api(path: Path):
    """moegen.conformance against the packaged API table (`make test` runs it on generated/ too)."""
    assert check_source(path.read_text(), str(path)) == []


def _runtime_offset_views_outside_dma(source: str) -> list[tuple[int, str]]:
    """(line, instruction) of every non-DMA nisa call given an `.ap(..., scalar_offset= / vector_offset=)` view."""
    found = []
    for node in ast.walk(ast.parse(source)):
        call = node if isinstance(node, ast.Call) else None
        if call is None or not isinstance(call.func, ast.Attribute) or not isinstance(call.func.value, ast.Name):
            continue
        if call.func.value.id != "nisa" or call.func.attr.startswith("dma_"):
            continue
        for sub in ast.walk(call):
            if (
                isinstance(sub, ast.Call)
                and isinstance(sub.func, ast.Attribute)
                and sub.func.attr == "ap"
                and any(k.arg in ("scalar_offset", "vector_offset") for k in sub.keywords)
            ):
                found.append((call.lineno, call.func.attr))
    return found


@pytest.mark.parametrize("path", KERNELS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_generated_kernel_feeds_runtime_offset_views_to_dma_only(path: Path):
    """NKI Access Patterns page: scalar_offset / vector_offset addressing is described for DMA; compute
    engines index through `.indirect()` (NeuronCore-v4) instead. The simulator refuses such a view on
    compute instructions at run time (tensor_copy excepted, per the 0.4 release notes); generated kernels
    do not use them outside a DMA at all, checked here statically so that every code path is covered."""
    assert _runtime_offset_views_outside_dma(path.read_text()) == []


def test_the_runtime_offset_check_finds_a_compute_operand():
    source = (
        "def k(a, t, r):\n    nisa.tensor_copy(dst=t, src=a.ap(pattern=[[1, 1]], scalar_offset=r, indirect_dim=0))\n"
    )
    assert _runtime_offset_views_outside_dma(source) == [(2, "tensor_copy")]
