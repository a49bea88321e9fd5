"""Kernel arguments checked before a run (moegen/sim/kernel.py `_check_arguments`): 64-bit integer arrays
(no NKI tensor dtype; converting would change the ids) and the kernel's declared ARGUMENT_RANGES."""

from __future__ import annotations

import numpy as np
import pytest

from moegen import sim
from moegen.sim.errors import NkiSimError

KERNEL = """
import nki
import nki.isa as nisa
import nki.language as nl

ARGUMENT_RANGES = {"ids": (-1, ("rows", 0))}


@nki.jit
def gather_count(rows, ids):
    out = nl.ndarray((1, 4), dtype=nl.int32, buffer=nl.shared_hbm)
    tile = nl.ndarray((1, 4), dtype=nl.int32, buffer=nl.sbuf)
    nisa.dma_copy(dst=tile, src=ids)
    nisa.dma_copy(dst=out, src=tile)
    return out
"""


@pytest.fixture
def kernel(tmp_path):
    path = tmp_path / "gather_count.py"
    path.write_text(KERNEL)
    return sim.load_module(path).gather_count


def test_ids_inside_the_declared_range_run(kernel):
    ids = np.array([[-1, 0, 2, 4]], np.int32)
    assert (sim.simulate(kernel)(np.zeros((5, 2), np.float32), ids) == ids).all()


@pytest.mark.parametrize("bad", [5, -2])
def test_an_id_outside_the_declared_range_names_the_argument_element_and_value(kernel, bad):
    ids = np.array([[0, 1, bad, 2]], np.int32)
    with pytest.raises(NkiSimError, match=rf"gather_count: ids\[0, 2\] = {bad}: out of range \[-1, 5\)"):
        sim.simulate(kernel)(np.zeros((5, 2), np.float32), ids)


@pytest.mark.parametrize("dtype, narrower", [(np.int64, "int32"), (np.uint64, "uint32")])
def test_a_64_bit_integer_argument_is_refused_before_any_conversion(kernel, dtype, narrower):
    """Before: silently narrowed (2**32 + 1 saturated to 2147483647)."""
    ids = np.array([[0, 1, 2, 2**32 + 1]], dtype)
    with pytest.raises(NkiSimError, match=rf"argument ids has dtype {np.dtype(dtype)}.*such as {narrower}"):
        sim.simulate(kernel)(np.zeros((5, 2), np.float32), ids)
