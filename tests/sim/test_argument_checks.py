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


# ------------------------------------------------------------------ ids read from HBM, used as offsets

GATHER = '''
import nki
import nki.isa as nisa
import nki.language as nl


@nki.jit
def pick_rows(weights, ids):
    """out[k] = weights[ids[0, k]]: each id reaches the weight DMA by the path named in `via`."""
    out = nl.ndarray((4, 8), dtype=weights.dtype, buffer=nl.shared_hbm)
    id_row = nl.ndarray((1, 4), dtype=nl.int32, buffer=nl.sbuf)
    nisa.dma_copy(dst=id_row, src=ids)
    if VIA == "touched":
        nisa.tensor_copy(dst=id_row, src=id_row)
    row = nl.ndarray((1, 8), dtype=weights.dtype, buffer=nl.sbuf)
    expert = nisa.register_alloc(0)
    for k in range(4):
        if VIA != "tile":
            nisa.register_load(expert, id_row[0:1, k:k + 1])
            offset = expert
        else:
            offset = id_row[0:1, k:k + 1]
        nisa.dma_copy(dst=row, src=weights.ap(pattern=[[8, 1], [1, 8]], offset=0, scalar_offset=offset))
        nisa.dma_copy(dst=out[k:k + 1, :], src=row)
    return out


@nki.jit
def gather_rows(weights, ids):
    """out[k] = weights[ids[k, 0]] by one indirect DMA (vector_offset = the id column)."""
    out = nl.ndarray((4, 8), dtype=weights.dtype, buffer=nl.shared_hbm)
    id_column = nl.ndarray((4, 1), dtype=nl.int32, buffer=nl.sbuf)
    nisa.dma_copy(dst=id_column, src=ids)
    rows = nl.ndarray((4, 8), dtype=weights.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=rows, src=weights.ap(pattern=[[8, 4], [1, 8]], offset=0, vector_offset=id_column,
                                           indirect_dim=0))
    nisa.dma_copy(dst=out, src=rows)
    return out
'''


def load_gather(tmp_path, via: str):
    path = tmp_path / f"gather_{via}.py"
    path.write_text(f'VIA = "{via}"\n' + GATHER)
    return sim.load_module(path)


@pytest.mark.parametrize("via", ["register", "tile"])
def test_an_out_of_range_id_used_as_a_dynamic_offset_is_named(tmp_path, via):
    """No ARGUMENT_RANGES here: the id still names itself (argument, element, value) when it puts the weight
    DMA out of bounds, whether it went through register_load or served as a (1, 1) scalar_offset tile."""
    kernel = load_gather(tmp_path, via).pick_rows
    weights = np.arange(6 * 8, dtype=np.float32).reshape(6, 8)
    good = np.array([[5, 0, 2, 1]], np.int32)
    assert (sim.simulate(kernel)(weights, good) == weights[[5, 0, 2, 1]]).all()
    with pytest.raises(NkiSimError, match=r"^ids\[0, 2\] = 9, used as a dynamic offset: dma_copy: .*'weights'"):
        sim.simulate(kernel)(weights, np.array([[5, 0, 9, 1]], np.int32))


def test_an_out_of_range_id_used_as_a_gather_row_is_named(tmp_path):
    kernel = load_gather(tmp_path, "tile").gather_rows
    weights = np.arange(6 * 8, dtype=np.float32).reshape(6, 8)
    assert (sim.simulate(kernel)(weights, np.array([[3], [1], [0], [5]], np.int32)) == weights[[3, 1, 0, 5]]).all()
    with pytest.raises(NkiSimError, match=r"^ids\[1, 0\] = -1, used as a row index: dma_copy: src 'weights'"):
        sim.simulate(kernel)(weights, np.array([[3], [-1], [0], [5]], np.int32))


def test_an_id_rewritten_on_chip_is_no_longer_attributed(tmp_path):
    """Provenance holds for the tile as loaded: after a compute write (here a copy onto itself) the offset
    error names no argument (the value could now be anything)."""
    kernel = load_gather(tmp_path, "touched").pick_rows
    with pytest.raises(NkiSimError, match=r"^dma_copy: src 'weights'"):
        sim.simulate(kernel)(np.zeros((6, 8), np.float32), np.array([[5, 0, 9, 1]], np.int32))
