"""Every checked-in generated kernel passes the NKI subset check and uses only the real API."""

from __future__ import annotations

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
