"""SIM AUDIT: memory, views, access patterns and DMA of moegen.sim against the official NKI docs.

Independent audit (see /work/main/docs/sim_audit.md). Pages: the NKI 0.6 stub docstrings
(`nki/api/nki/isa/__init__.py` of aws-neuron/aws-neuron-sdk: nki.isa.dma_copy, dma_transpose, ...),
"NKI Access Patterns" (nki/deep-dives/nki-aps.rst), the Trainium/Inferentia2 and Trainium2
architecture guides. xfail(strict=True) marks a discrepancy.

The kernels are small `@nki.jit` functions written to a file and loaded with `moegen.sim.load_module`
(the simulator's public entry point for kernel files), then run with `moegen.sim.simulate`.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import moegen.sim as sim
from moegen.sim import NkiSimError, context
from moegen.sim import isa as nisa
from moegen.sim import language as nl

BF16 = ml_dtypes.bfloat16
RNG = np.random.default_rng(5)

KERNELS = """
import nki
import nki.isa as nisa
import nki.language as nl


@nki.jit
def roundtrip_reshaped(x):
    t = nl.ndarray((2, 16), dtype=x.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=t, src=x)
    out = nl.ndarray(x.shape, dtype=x.dtype, buffer=nl.shared_hbm)
    nisa.dma_copy(dst=out, src=t)
    return out


@nki.jit
def count_mismatch(x):
    t = nl.ndarray((4, 7), dtype=x.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=t, src=x)
    return None


@nki.jit
def dma_cast(x):
    t = nl.ndarray(x.shape, dtype=nl.bfloat16, buffer=nl.sbuf)
    nisa.dma_copy(dst=t, src=x)
    out = nl.ndarray(x.shape, dtype=nl.float32, buffer=nl.shared_hbm)
    nisa.dma_copy(dst=out, src=t)
    return out


@nki.jit
def dma_int_roundtrip(x):
    t = nl.ndarray(x.shape, dtype=nl.float32, buffer=nl.sbuf)
    nisa.dma_copy(dst=t, src=x)
    out = nl.ndarray(x.shape, dtype=nl.int32, buffer=nl.shared_hbm)
    nisa.dma_copy(dst=out, src=t)
    return out


@nki.jit
def dma_from_psum(x):
    p = nl.ndarray(x.shape, dtype=nl.float32, buffer=nl.psum)
    nisa.memset(dst=p, value=0.0)
    out = nl.ndarray(x.shape, dtype=nl.float32, buffer=nl.shared_hbm)
    nisa.dma_copy(dst=out, src=p)
    return out


@nki.jit
def dma_to_psum(x):
    p = nl.ndarray(x.shape, dtype=nl.float32, buffer=nl.psum)
    nisa.dma_copy(dst=p, src=x)
    return None


@nki.jit
def ap_doc_example(x):
    t = nl.ndarray((16, 16), dtype=nl.float32, buffer=nl.sbuf)
    nisa.dma_copy(dst=t, src=x)
    d = nl.ndarray((16, 8), dtype=nl.float32, buffer=nl.sbuf)
    nisa.tensor_copy(dst=d, src=t.ap(pattern=[[16, 16], [1, 8]], offset=8))
    out = nl.ndarray((16, 8), dtype=nl.float32, buffer=nl.shared_hbm)
    nisa.dma_copy(dst=out, src=d)
    return out


@nki.jit
def ap_every_other_partition(x):
    t = nl.ndarray((16, 32), dtype=nl.float32, buffer=nl.sbuf)
    nisa.dma_copy(dst=t, src=x)
    v = t.ap(pattern=[[64, 8], [1, 32]], offset=0)
    d = nl.ndarray((8, 32), dtype=nl.float32, buffer=nl.sbuf)
    nisa.tensor_copy(dst=d, src=v)
    return None


@nki.jit
def ap_chained(x):
    t = nl.ndarray((4, 8), dtype=x.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=t, src=x)
    inner = t.ap(pattern=[[8, 4], [1, 8]], offset=0)
    v = inner.ap(pattern=[[8, 4], [2, 3]], offset=1)  # overrides the inner pattern
    out = nl.ndarray((4, 3), dtype=x.dtype, buffer=nl.shared_hbm)
    nisa.dma_copy(dst=out, src=v)
    return out


@nki.jit
def ap_reinterpret(x):
    t = nl.ndarray((2, 4), dtype=nl.int32, buffer=nl.sbuf)
    nisa.dma_copy(dst=t, src=x)
    v = t.ap(pattern=[[8, 2], [1, 8]], offset=0, dtype=nl.bfloat16)
    out = nl.ndarray((2, 8), dtype=nl.bfloat16, buffer=nl.shared_hbm)
    nisa.dma_copy(dst=out, src=v)
    return out


@nki.jit
def hbm_strided_ap(x):
    # x [8, 6]: read rows 1, 3, 5 and columns 2..4 with an HBM access pattern
    d = nl.ndarray((3, 3), dtype=x.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=d, src=x.ap(pattern=[[12, 3], [1, 3]], offset=8))
    out = nl.ndarray((3, 3), dtype=x.dtype, buffer=nl.shared_hbm)
    nisa.dma_copy(dst=out, src=d)
    return out


@nki.jit
def hbm_broadcast_ap(b):
    # cte.py.j2: block_to_expert.ap(pattern=[[0, 128], [1, 1]], offset=...) -- one value to all rows
    d = nl.ndarray((4, 1), dtype=b.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=d, src=b.ap(pattern=[[0, 4], [1, 1]], offset=2))
    out = nl.ndarray((4, 1), dtype=b.dtype, buffer=nl.shared_hbm)
    nisa.dma_copy(dst=out, src=d)
    return out


@nki.jit
def scalar_offset_register(table, row):
    V, H = table.shape
    reg = nisa.register_alloc(row)
    d = nl.ndarray((1, H), dtype=table.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=d, src=table.ap(pattern=[[H, 1], [1, H]], offset=0, scalar_offset=reg, indirect_dim=0))
    out = nl.ndarray((1, H), dtype=table.dtype, buffer=nl.shared_hbm)
    nisa.dma_copy(dst=out, src=d)
    return out


@nki.jit
def scalar_offset_tensor_dim1(aff, col):
    # tkg.py.j2: expert_affinities.ap(pattern=[[E, n], [1, L]], offset=..., scalar_offset=t[0:1, 0:1],
    # indirect_dim=1): the offset is col * prod(shape[2:]) = col elements
    T, E = aff.shape
    c = nl.ndarray((1, 1), dtype=nl.int32, buffer=nl.sbuf)
    nisa.dma_copy(dst=c, src=col)
    d = nl.ndarray((T, 2), dtype=aff.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=d, src=aff.ap(pattern=[[E, T], [1, 2]], offset=0, scalar_offset=c[0:1, 0:1], indirect_dim=1))
    out = nl.ndarray((T, 2), dtype=aff.dtype, buffer=nl.shared_hbm)
    nisa.dma_copy(dst=out, src=d)
    return out


@nki.jit
def scalar_offset_oob(table, row, skip):
    V, H = table.shape
    reg = nisa.register_alloc(row)
    d = nl.ndarray((1, H), dtype=table.dtype, buffer=nl.sbuf)
    nisa.memset(dst=d, value=-1.0)
    src = table.ap(pattern=[[H, 1], [1, H]], offset=0, scalar_offset=reg, indirect_dim=0)
    if skip:
        nisa.dma_copy(dst=d, src=src, oob_mode=nisa.oob_mode.skip)
    else:
        nisa.dma_copy(dst=d, src=src)
    out = nl.ndarray((1, H), dtype=table.dtype, buffer=nl.shared_hbm)
    nisa.dma_copy(dst=out, src=d)
    return out


@nki.jit
def indirect_gather_kernel(data, indices):
    # the nki.isa.dma_copy docstring example, verbatim in substance
    P, F = indices.shape[0], data.shape[1]
    output = nl.ndarray((P, F), dtype=data.dtype, buffer=nl.shared_hbm)
    idx = nl.ndarray((P, 1), dtype=nl.uint32, buffer=nl.sbuf)
    nisa.dma_copy(dst=idx, src=indices)
    dst = nl.ndarray((P, F), dtype=data.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=dst, src=data.ap(pattern=[[F, P], [1, F]], vector_offset=idx, indirect_dim=0))
    nisa.dma_copy(dst=output, src=dst)
    return output


@nki.jit
def indirect_scatter_kernel(src_data, indices, output):
    P, F = src_data.shape
    src = nl.ndarray((P, F), dtype=src_data.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=src, src=src_data)
    idx = nl.ndarray((P, 1), dtype=nl.uint32, buffer=nl.sbuf)
    nisa.dma_copy(dst=idx, src=indices)
    nisa.dma_copy(dst=output.ap(pattern=[[F, P], [1, F]], vector_offset=idx, indirect_dim=0), src=src)
    return output


@nki.jit
def indirect_scatter_no_return(src_data, indices, output):
    P, F = src_data.shape
    src = nl.ndarray((P, F), dtype=src_data.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=src, src=src_data)
    idx = nl.ndarray((P, 1), dtype=nl.uint32, buffer=nl.sbuf)
    nisa.dma_copy(dst=idx, src=indices)
    nisa.dma_copy(dst=output.ap(pattern=[[F, P], [1, F]], vector_offset=idx, indirect_dim=0), src=src)
    return None


@nki.jit
def gather_skip(data, indices):
    P, F = indices.shape[0], data.shape[1]
    idx = nl.ndarray((P, 1), dtype=nl.int32, buffer=nl.sbuf)
    nisa.dma_copy(dst=idx, src=indices)
    dst = nl.ndarray((P, F), dtype=data.dtype, buffer=nl.sbuf)
    nisa.memset(dst=dst, value=7.0)
    nisa.dma_copy(dst=dst, src=data.ap(pattern=[[F, P], [1, F]], vector_offset=idx, indirect_dim=0),
                  oob_mode=nisa.oob_mode.skip)
    out = nl.ndarray((P, F), dtype=data.dtype, buffer=nl.shared_hbm)
    nisa.dma_copy(dst=out, src=dst)
    return out


@nki.jit
def gather_window(data, indices):
    P = indices.shape[0]
    V, F = data.shape
    idx = nl.ndarray((P, 1), dtype=nl.int32, buffer=nl.sbuf)
    nisa.dma_copy(dst=idx, src=indices)
    dst = nl.ndarray((P, 3), dtype=data.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=dst, src=data.ap(pattern=[[F, P], [1, 3]], offset=2, vector_offset=idx, indirect_dim=0))
    out = nl.ndarray((P, 3), dtype=data.dtype, buffer=nl.shared_hbm)
    nisa.dma_copy(dst=out, src=dst)
    return out


@nki.jit
def gather_error(data, indices):
    P, F = indices.shape[0], data.shape[1]
    idx = nl.ndarray((P, 1), dtype=nl.int32, buffer=nl.sbuf)
    nisa.dma_copy(dst=idx, src=indices)
    dst = nl.ndarray((P, F), dtype=data.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=dst, src=data.ap(pattern=[[F, P], [1, F]], vector_offset=idx, indirect_dim=0))
    return None


@nki.jit
def vector_offset_on_sbuf(data, indices):
    P, F = data.shape
    idx = nl.ndarray((P, 1), dtype=nl.int32, buffer=nl.sbuf)
    nisa.dma_copy(dst=idx, src=indices)
    t = nl.ndarray((P, F), dtype=data.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=t, src=data)
    d = nl.ndarray((P, F), dtype=data.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=d, src=t.ap(pattern=[[F, P], [1, F]], vector_offset=idx, indirect_dim=0))
    return None


@nki.jit
def scalar_and_vector_offset(data, indices):
    P, F = data.shape
    idx = nl.ndarray((P, 1), dtype=nl.int32, buffer=nl.sbuf)
    nisa.dma_copy(dst=idx, src=indices)
    v = data.ap(pattern=[[F, P], [1, F]], vector_offset=idx, scalar_offset=nisa.register_alloc(0), indirect_dim=0)
    return None


@nki.jit
def scatter_into_reshaped(aff, targets, vals):
    # router.py.j2: affinities_flat = expert_affinities.reshape((T * E, 1)); scatter one value per row
    # to flat position t0 * E + target[p] with .ap(pattern=[[1, rows], [1, 1]], vector_offset=...)
    T, E = aff.shape
    flat = aff.reshape((T * E, 1))
    tg = nl.ndarray((T, 1), dtype=nl.int32, buffer=nl.sbuf)
    nisa.dma_copy(dst=tg, src=targets)
    v = nl.ndarray((T, 1), dtype=aff.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=v, src=vals)
    nisa.dma_copy(dst=flat.ap(pattern=[[1, T], [1, 1]], offset=0, vector_offset=tg, indirect_dim=0), src=v)
    return None


@nki.jit
def dma_priority(x):
    t = nl.ndarray(x.shape, dtype=x.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=t, src=x, priority=1)
    return None


@nki.jit
def dma_transpose_dge(x, mode):
    P, F = x.shape
    d = nl.ndarray((F, P), dtype=x.dtype, buffer=nl.sbuf)
    nisa.dma_transpose(dst=d, src=x, dge_mode=nisa.dge_mode.none if mode == 0 else nisa.dge_mode.swdge)
    return None


@nki.jit
def dma_transpose_nd(x):
    d = nl.ndarray(tuple(x.shape[a] for a in ((2, 1, 0) if len(x.shape) == 3 else (3, 1, 2, 0))),
                   dtype=x.dtype, buffer=nl.sbuf)
    nisa.dma_transpose(dst=d, src=x)
    out = nl.ndarray(d.shape, dtype=x.dtype, buffer=nl.shared_hbm)
    nisa.dma_copy(dst=out, src=d)
    return out


@nki.jit
def dma_engine_choice(x, which, hw):
    t = nl.ndarray(x.shape, dtype=x.dtype, buffer=nl.sbuf)
    eng = {"gpsimd": nisa.engine.gpsimd, "sync": nisa.engine.sync, "scalar": nisa.engine.scalar}[which]
    nisa.dma_copy(dst=t, src=x, engine=eng, dge_mode=nisa.dge_mode.hwdge if hw else nisa.dge_mode.swdge)
    return None


@nki.jit
def dma_transpose_direct_skip(x):
    P, F = x.shape
    d = nl.ndarray((F, P), dtype=x.dtype, buffer=nl.sbuf)
    nisa.dma_transpose(dst=d, src=x, oob_mode=nisa.oob_mode.skip)
    return None


@nki.jit
def one_d_sbuf_register(x):
    # nki.isa.register_load / register_store docstring examples use 1-D [1] SBUF tensors
    computed_bound = nl.ones([1], dtype=nl.int32, buffer=nl.sbuf)
    loop_reg = nisa.register_alloc()
    nisa.register_load(loop_reg, computed_bound)
    result_tensor = nl.ndarray([1], dtype=nl.int32, buffer=nl.sbuf)
    nisa.register_store(result_tensor, loop_reg)
    out = nl.ndarray((1,), dtype=nl.int32, buffer=nl.shared_hbm)
    nisa.dma_copy(dst=out, src=result_tensor)
    return out


@nki.jit
def dma_transpose_2d(x):
    P, F = x.shape
    d = nl.ndarray((F, P), dtype=x.dtype, buffer=nl.sbuf)
    nisa.dma_transpose(dst=d, src=x)
    out = nl.ndarray((F, P), dtype=x.dtype, buffer=nl.shared_hbm)
    nisa.dma_copy(dst=out, src=d)
    return out


@nki.jit
def dma_transpose_to_hbm(x):
    P, F = x.shape
    out = nl.ndarray((F, P), dtype=x.dtype, buffer=nl.shared_hbm)
    nisa.dma_transpose(dst=out, src=x)
    return out


@nki.jit
def dma_transpose_cast(x):
    P, F = x.shape
    d = nl.ndarray((F, P), dtype=nl.float32, buffer=nl.sbuf)
    nisa.dma_transpose(dst=d, src=x)
    return None


@nki.jit
def ds_slice(x):
    t = nl.ndarray((4, 8), dtype=x.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=t, src=x)
    out = nl.ndarray((4, 3), dtype=x.dtype, buffer=nl.shared_hbm)
    nisa.dma_copy(dst=out, src=t[:, nl.ds(2, 3)])
    return out


@nki.jit
def sbuf_to_sbuf_and_hbm_to_hbm(x):
    a = nl.ndarray(x.shape, dtype=x.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=a, src=x)
    b = nl.ndarray(x.shape, dtype=x.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=b, src=a)
    mid = nl.ndarray(x.shape, dtype=x.dtype, buffer=nl.hbm)
    nisa.dma_copy(dst=mid, src=b)
    out = nl.ndarray(x.shape, dtype=x.dtype, buffer=nl.shared_hbm)
    nisa.dma_copy(dst=out, src=mid)
    return out


@nki.jit
def compute_on_hbm(x):
    d = nl.ndarray(x.shape, dtype=x.dtype, buffer=nl.sbuf)
    nisa.tensor_copy(dst=d, src=x)
    return None


@nki.jit
def return_private_hbm(x):
    out = nl.ndarray(x.shape, dtype=x.dtype, buffer=nl.hbm)
    nisa.dma_copy(dst=out, src=x)
    return out
"""


@pytest.fixture(scope="module")
def k(tmp_path_factory):
    p = tmp_path_factory.mktemp("audit_dma") / "audit_dma_kernels.py"
    p.write_text(KERNELS)
    return sim.load_module(p)


def run(kernel, *args, target="trn2", **kw):
    return sim.simulate(kernel, target=target)(*args, **kw)


X48 = np.arange(32, dtype=np.float32).reshape(4, 8)


# ------------------------------------------------------------------------------------------------
# dma_copy
# ------------------------------------------------------------------------------------------------
def test_dma_copy_only_element_counts_must_match(k):
    """nki.isa.dma_copy (Tile size): 'The total number of data elements in src must match that of
    dst' -- shapes may differ, data flows in row-major order."""
    np.testing.assert_array_equal(run(k.roundtrip_reshaped, X48), X48)
    with pytest.raises(NkiSimError):
        run(k.count_mismatch, X48)


def test_dma_copy_converts_through_fp32(k):
    """nki.isa.dma_copy (Data types): 'first casting from src.dtype to float32, then from float32 to
    dst.dtype' (fp32 -> bf16 rounds to nearest even)."""
    x = np.array([[1 + 2**-8, 1 + 3 * 2**-8, 3.14159, -2.5e-3]], np.float32)
    np.testing.assert_array_equal(run(k.dma_cast, x), x.astype(BF16).astype(np.float32))
    ints = np.array([[2**24 + 1, -7]], np.int32)
    np.testing.assert_array_equal(run(k.dma_int_roundtrip, ints), [[2**24, -7]])


def test_dma_copy_float_to_int_rne_and_saturate():
    """nki.isa.dma_copy (Data types): conversion goes src -> float32 -> dst; float32 -> integer is
    round-to-nearest-even with saturation (NKI 0.6 simulator notes: fp32 -> int 'matches hardware')."""
    with context(target="trn2"):
        h = nl.ndarray((1, 4), nl.int32, buffer=nl.hbm)
        h.write(np.array([[300, -300, -1, 7]], np.int32))
        d = nl.ndarray((1, 4), nl.int8)
        nisa.dma_copy(d, h)
        np.testing.assert_array_equal(d.read(), [[127, -128, -1, 7]])
        f = nl.ndarray((1, 4), nl.float32, buffer=nl.hbm)
        f.write(np.array([[2.5, -2.5, 3.5, 1e10]], np.float32))
        i = nl.ndarray((1, 4), nl.int32)
        nisa.dma_copy(i, f)
        np.testing.assert_array_equal(i.read(), [[2, -2, 4, 2**31 - 1]])


def test_dma_copy_cannot_read_psum(k):
    """NKI 0.3 migration notes / nki.isa.dma_copy (Memory types: 'Both src and dst tiles can be in HBM
    or SBUF'): PSUM is not a legal DMA source."""
    with pytest.raises(NkiSimError):
        run(k.dma_from_psum, X48)


def test_dma_copy_cannot_write_psum(k):
    """nki.isa.dma_copy (Memory types): 'Both src and dst tiles can be in HBM or SBUF'."""
    with pytest.raises(NkiSimError):
        run(k.dma_to_psum, X48)


def test_dma_copy_sbuf_to_sbuf_and_hbm_to_hbm(k):
    """nki.isa.dma_copy (Memory types): 'Both src and dst tiles can be in HBM or SBUF' (SBUF -> SBUF and
    HBM -> HBM are legal, if slower than the alternatives)."""
    np.testing.assert_array_equal(run(k.sbuf_to_sbuf_and_hbm_to_hbm, X48), X48)


def test_only_dma_touches_hbm(k):
    """Arch guide (Data Movement): HBM <-> SBUF data movement is done by DMA engines; compute engines
    access SBUF/PSUM only (tensor_copy: 'src must be a tile in SBUF or PSUM')."""
    with pytest.raises(NkiSimError):
        run(k.compute_on_hbm, X48)


def test_kernel_outputs_must_be_shared_hbm(k):
    """NKI migration guide (0.3): returned outputs must be allocated in nl.shared_hbm."""
    with pytest.raises(NkiSimError):
        run(k.return_private_hbm, X48)


# ------------------------------------------------------------------------------------------------
# access patterns
# ------------------------------------------------------------------------------------------------
def test_ap_doc_concrete_example(k):
    """NKI Access Patterns ('A Concrete Example'): t (16, 16), t.ap(pattern=[[16, 16], [1, 8]],
    offset=8) iterates t[0:16, 8:16]: access[w, z] = flat[8 + 16 w + z]."""
    x = RNG.standard_normal((16, 16)).astype(np.float32)
    np.testing.assert_array_equal(run(k.ap_doc_example, x), x[:, 8:16])


def test_ap_on_chip_partition_stride_must_be_free_size(k):
    """NKI Access Patterns ('Restriction on SBUF/PSUM Tensors'): t (16, 32), t.ap([[64, 8], [1, 32]])
    'is not allowed because it reads every other partition'."""
    with pytest.raises(NkiSimError):
        run(k.ap_every_other_partition, np.zeros((16, 32), np.float32))


def test_ap_can_be_chained(k):
    """NKI Access Patterns (current page, nki/deep-dives/nki-aps): NkiTensor.ap() is the low-level
    access pattern override and every view primitive is built on it, so .ap() on a view -- including one
    produced by .ap() -- is allowed and its pattern overrides the inner one. (The older 'Restriction on
    Nested Indexing' that refused t.ap(...).ap(...) is no longer on the page; SIM_AUDIT #6 followed it.)"""
    got = run(k.ap_chained, X48)
    np.testing.assert_array_equal(got, X48[:, 1:7:2])


def test_ap_dtype_reinterpret_cast(k):
    """NKI Access Patterns ('Reinterpret Cast with ap'): dtype= reinterprets the storage; counts and
    offsets are in elements of the new dtype (int32 (P, 4) -> bf16 (P, 8))."""
    x = RNG.integers(-(2**31), 2**31 - 1, (2, 4), dtype=np.int64).astype(np.int32)
    got = run(k.ap_reinterpret, x)
    np.testing.assert_array_equal(np.asarray(got).view(np.uint16), x.view(np.uint16).reshape(2, 8))


def test_ap_on_hbm_flat_semantics(k):
    """NKI Access Patterns: 'conceptually flattens the tensor to 1d' then
    access[w, z] = flat[offset + w*step_w + z*step_z] (HBM tensors take any steps)."""
    x = np.arange(48, dtype=np.float32).reshape(8, 6)
    np.testing.assert_array_equal(run(k.hbm_strided_ap, x), x[1:7:2, 2:5])


def test_ap_zero_stride_broadcast_from_hbm(k):
    """NKI Access Patterns: a [step, num] pair with step 0 re-reads the same element num times
    (cte.py.j2 broadcasts one block_to_expert entry to all partitions this way)."""
    b = np.array([[10.0], [11.0], [12.0], [13.0]], np.float32)
    np.testing.assert_array_equal(run(k.hbm_broadcast_ap, b), np.full((4, 1), 12.0, np.float32))


def test_nl_ds_is_a_slice(k):
    """nki.language.ds: nl.ds(start, size) selects start:start+size."""
    np.testing.assert_array_equal(run(k.ds_slice, X48), X48[:, 2:5])


# ------------------------------------------------------------------------------------------------
# dynamic offsets and indirect DMA
# ------------------------------------------------------------------------------------------------
def test_scalar_offset_from_register(k):
    """nki.isa.dma_copy ('Scalar indirection'): .ap(pattern, scalar_offset=reg_or_tensor,
    indirect_dim=N), offset a VirtualRegister or 1x1 SBUF tensor; NKI Access Patterns: scalar_offset
    counts elements 'on the indirect_dim' (row r of dim 0 starts at r * row size)."""
    table = RNG.standard_normal((6, 5)).astype(np.float32)
    np.testing.assert_array_equal(run(k.scalar_offset_register, table, 4), table[4:5])


def test_scalar_offset_tensor_on_dim1(k):
    """NKI Access Patterns: scalar_offset on indirect_dim=1 of a 2-D tensor moves by elements of dim 1
    (the TKG template reads rank-local expert columns this way)."""
    aff = RNG.standard_normal((3, 8)).astype(np.float32)
    got = run(k.scalar_offset_tensor_dim1, aff, np.array([[5]], np.int32))
    np.testing.assert_array_equal(got, aff[:, 5:7])


def test_scalar_offset_out_of_bounds_error_or_skip(k):
    """nki.isa.dma_copy: with dynamic addresses 'out-of-bound address checking is turned on
    automatically'; oob_mode.error (default) raises, oob_mode.skip 'skip[s] the DMA transfer'."""
    table = RNG.standard_normal((6, 5)).astype(np.float32)
    with pytest.raises(NkiSimError):
        run(k.scalar_offset_oob, table, 6, False)
    np.testing.assert_array_equal(run(k.scalar_offset_oob, table, 6, True), np.full((1, 5), -1.0, np.float32))


def test_indirect_gather_doc_example(k):
    """nki.isa.dma_copy ('Indirect gather example'): data.ap(pattern=[[F, P], [1, F]],
    vector_offset=idx, indirect_dim=0) -- partition p reads row idx[p] (uint32 indices)."""
    data = RNG.standard_normal((10, 6)).astype(np.float32)
    ind = np.array([[3], [0], [9], [3]], np.uint32)
    np.testing.assert_array_equal(run(k.indirect_gather_kernel, data, ind), data[[3, 0, 9, 3]])


def test_indirect_scatter(k):
    """nki.isa.dma_copy ('Indirect scatter example'): output.ap(..., vector_offset=idx) as dst --
    partition p writes row idx[p]; other rows are untouched; the input array is updated in place (NKI
    CPU Simulator guide: modified input arrays are written back)."""
    src = RNG.standard_normal((3, 4)).astype(np.float32)
    output = np.zeros((6, 4), np.float32)
    run(k.indirect_scatter_no_return, src, np.array([[5], [1], [2]], np.uint32), output)
    ref = np.zeros((6, 4), np.float32)
    ref[[5, 1, 2]] = src
    np.testing.assert_array_equal(output, ref)
    assert sim.last_run().written_args == [2]


# SIM_AUDIT #7: fixed in moegen.sim during the audit; kept as a regression test.
def test_indirect_scatter_doc_example_returns_its_argument(k):
    """nki.isa.dma_copy ('Indirect scatter example'): the documented kernel
    indirect_scatter_kernel(src_data, indices, output) scatters into its argument and `return output`."""
    src = RNG.standard_normal((3, 4)).astype(np.float32)
    output = np.zeros((6, 4), np.float32)
    got = run(k.indirect_scatter_kernel, src, np.array([[5], [1], [2]], np.uint32), output)
    ref = np.zeros((6, 4), np.float32)
    ref[[5, 1, 2]] = src
    np.testing.assert_array_equal(got, ref)


def test_indirect_oob_error_is_default(k):
    """nki.isa.dma_copy (oob_mode): 'oob_mode.error: (Default) Raises an error when encountering
    out-of-bounds indices'."""
    data = np.zeros((4, 3), np.float32)
    with pytest.raises(NkiSimError):
        run(k.gather_error, data, np.array([[0], [4]], np.int32))


def test_indirect_oob_skip_leaves_dst(k):
    """nki.isa.dma_copy (oob_mode): 'oob_mode.skip: Silently skips any operations involving
    out-of-bounds indices' -- skipped rows keep the destination's previous content (NKI 0.6 notes);
    negative indices are out of bounds (CTE pads tokens this way)."""
    data = RNG.standard_normal((4, 3)).astype(np.float32)
    got = run(k.gather_skip, data, np.array([[2], [4], [-1], [0]], np.int32))
    ref = np.full((4, 3), 7.0, np.float32)
    ref[0], ref[3] = data[2], data[0]
    np.testing.assert_array_equal(got, ref)


def test_vector_offset_indexes_hbm_only(k):
    """nki.isa.dma_copy ('Vector indirection'): 'The tensor being indexed (the one .ap() is called on)
    must be in HBM'."""
    with pytest.raises(NkiSimError):
        run(k.vector_offset_on_sbuf, np.zeros((2, 3), np.float32), np.zeros((2, 1), np.int32))


def test_vector_and_scalar_offset_exclusive(k):
    """nki.isa.dma_copy / NKI Access Patterns: 'vector_offset and scalar_offset are mutually
    exclusive'."""
    with pytest.raises(NkiSimError):
        run(k.scalar_and_vector_offset, np.zeros((2, 3), np.float32), np.zeros((2, 1), np.int32))


def test_scatter_into_reshaped_hbm_view(k):
    """NKI Access Patterns + dma_copy scatter: on a [T*E, 1] reshape of an HBM tensor, partition p of
    the indirect view writes flat element offset + idx[p] * 1 (router.py.j2 writes top-k affinities
    into the dense [T, E] output this way)."""
    aff = np.zeros((3, 4), np.float32)
    targets = np.array([[1], [6], [11]], np.int32)
    vals = np.array([[0.5], [0.25], [0.125]], np.float32)
    run(k.scatter_into_reshaped, aff, targets, vals)
    ref = np.zeros(12, np.float32)
    ref[[1, 6, 11]] = vals[:, 0]
    np.testing.assert_array_equal(aff.reshape(-1), ref)
    assert sim.last_run().written_args == [0]


# ------------------------------------------------------------------------------------------------
# dma_transpose
# ------------------------------------------------------------------------------------------------
def test_dma_transpose_2d(k):
    """nki.isa.dma_transpose: 'For 2-d input tile, the permutation will be [1, 0]'; src in HBM or
    SBUF, dst in SBUF."""
    x = RNG.standard_normal((16, 32)).astype(BF16)
    np.testing.assert_array_equal(run(k.dma_transpose_2d, x), x.T)


def test_dma_transpose_dst_must_be_sbuf_and_same_dtype(k):
    """nki.isa.dma_transpose: 'dst: the destination of transpose, must be a tile in SBUF'; 'src.dtype
    == dst.dtype'."""
    x = RNG.standard_normal((16, 32)).astype(BF16)
    with pytest.raises(NkiSimError):
        run(k.dma_transpose_to_hbm, x)
    with pytest.raises(NkiSimError):
        run(k.dma_transpose_cast, x)


def test_dma_transpose_3d_and_4d_permutations(k):
    """nki.isa.dma_transpose: 'For 3-d input tile, the permutation will be [2, 1, 0]'; 'For 4-d input
    tile, the permutation will be [3, 1, 2, 0]'."""
    x3 = RNG.standard_normal((2, 3, 4)).astype(BF16)
    np.testing.assert_array_equal(run(k.dma_transpose_nd, x3), x3.transpose(2, 1, 0))
    x4 = RNG.standard_normal((2, 3, 4, 5)).astype(BF16)
    np.testing.assert_array_equal(run(k.dma_transpose_nd, x4), x4.transpose(3, 1, 2, 0))


# SIM_AUDIT #10: fixed in moegen.sim during the audit; kept as a regression test.
@pytest.mark.parametrize("mode", [0, 1], ids=["none", "swdge_direct"])
def test_dma_transpose_dge_modes(k, mode):
    """nki.isa.dma_transpose: 'DMA Direct Transpose Constraints: The only valid dge_modes are unknown
    and hwdge'; indirect transposes take unknown or swdge; dge_mode.none is never listed."""
    x = RNG.standard_normal((16, 32)).astype(BF16)
    with pytest.raises(NkiSimError):
        run(k.dma_transpose_dge, x, mode)


# SIM_AUDIT #9: fixed in moegen.sim during the audit; kept as a regression test.
def test_dma_priority_is_trn3_only(k):
    """nki.isa.dma_copy: 'priority: (optional): DMA quality-of-service priority level 0-3 ...
    (NeuronCore-v4+ only)' -- trn2 is NeuronCore-v3."""
    with pytest.raises(NkiSimError):
        run(k.dma_priority, X48)


def test_dma_priority_accepted_on_trn3(k):
    """nki.isa.dma_copy: priority 0-3 on NeuronCore-v4 (trn3)."""
    run(k.dma_priority, X48, target="trn3")


def test_dma_copy_engine_sync_or_scalar_with_hwdge(k):
    """nki.isa.dma_copy: engine is 'the engine to use for HWDGE descriptor generation:
    nki.isa.engine.sync or nki.isa.engine.scalar. Only valid when dge_mode=hwdge'."""
    run(k.dma_engine_choice, X48, "sync", True)
    run(k.dma_engine_choice, X48, "scalar", True)
    with pytest.raises(NkiSimError):
        run(k.dma_engine_choice, X48, "sync", False)


# SIM_AUDIT #13: fixed in moegen.sim by the maintainer after the audit; kept as a regression test.
@pytest.mark.parametrize("hw", [True, False], ids=["hwdge", "swdge"])
def test_dma_copy_engine_gpsimd_refused(k, hw):
    """nki.isa.dma_copy: the engine parameter takes sync or scalar (with hwdge) or unknown; GpSimd is
    not an HWDGE trigger (software DGE runs on GpSimd implicitly, selected by dge_mode)."""
    with pytest.raises(NkiSimError):
        run(k.dma_engine_choice, X48, "gpsimd", hw)


# SIM_AUDIT #14: fixed in moegen.sim by the maintainer after the audit; kept as a regression test.
def test_dma_transpose_skip_only_with_indirect_src(k):
    """nki.isa.dma_transpose (oob_mode): 'oob_mode.skip: Silently skips any operations involving
    out-of-bounds indices. Only valid when src uses indirect indexing.'"""
    with pytest.raises(NkiSimError):
        run(k.dma_transpose_direct_skip, RNG.standard_normal((16, 32)).astype(BF16))


# ------------------------------------------------------------------------------------------------
# allocation
# ------------------------------------------------------------------------------------------------
def test_partition_dim_at_most_128():
    """Arch guide: SBUF and PSUM have 128 partitions; the first dim of an on-chip tensor is the
    partition dim (nl.tile_size.pmax = 128)."""
    with context(target="trn2"):
        nl.ndarray((128, 4), nl.float32)
        with pytest.raises(NkiSimError):
            nl.ndarray((129, 4), nl.float32)
        with pytest.raises(NkiSimError):
            nl.ndarray((129, 4), nl.float32, buffer=nl.psum)


@pytest.mark.parametrize("target, kib", [("trn2", 224), ("trn3", 256)])
def test_sbuf_capacity_per_partition(target, kib):
    """Trainium2/3 architecture guides: SBUF is 24 MiB... Trn2 28 MiB = 128 x 224 KiB, Trn3 32 MiB =
    128 x 256 KiB (issue 3: live allocations are checked against it)."""
    with context(target=target):
        half = kib * 1024 // 2 // 4
        a = nl.ndarray((128, half), nl.float32)
        b = nl.ndarray((128, half), nl.float32)
        with pytest.raises(NkiSimError):
            nl.ndarray((1, 1), nl.float32)
        del a, b


# SIM_AUDIT #11: fixed in moegen.sim during the audit; kept as a regression test.
def test_one_element_1d_sbuf_tensor_for_registers(k):
    """nki.isa.register_load: 'The source must be a NKI tensor with exactly one element (shape [1] or
    [1, 1])'; its example: `computed_bound = nl.ones([1], dtype=nl.int32, buffer=nl.sbuf)`;
    register_store's example stores into `nl.ndarray([1], dtype=nl.int32, buffer=nl.sbuf)`."""
    assert run(k.one_d_sbuf_register, X48)[0] == 1


def test_views_share_storage():
    """NKI language guide: indexing returns views sharing storage (writes through a slice are seen by
    the base tensor)."""
    with context(target="trn2"):
        t = nl.ndarray((4, 8), nl.float32)
        nisa.memset(t, 0.0)
        nisa.memset(t[0:1, 2:5], 3.0)
        ref = np.zeros((4, 8), np.float32)
        ref[0, 2:5] = 3
        np.testing.assert_array_equal(t.read(), ref)


# ------------------------------------------------------------------------------------------------
# NkiTensor view methods (NKI 0.5+ API: nki.language.NkiTensor)
# ------------------------------------------------------------------------------------------------
VX = np.arange(24, dtype=np.float32).reshape(2, 3, 4)


def test_view_select_static_and_dynamic():
    """nki.language.NkiTensor.select(dim, index): an int selects statically and removes the dim; a 1x1
    SBUF tensor selects at run time, but not on dim 0 of an on-chip tensor."""
    with context(target="trn2"):
        t = nl.ndarray(VX.shape, nl.float32)
        t.write(VX)
        d = nl.ndarray((2, 4), nl.float32)
        nisa.tensor_copy(d, t.select(1, 2))
        np.testing.assert_array_equal(d.read(), VX[:, 2, :])
        i = nl.ndarray((1, 1), nl.int32)
        i.write(np.array([[1]], np.int32))
        nisa.tensor_copy(d, t.select(1, i))
        np.testing.assert_array_equal(d.read(), VX[:, 1, :])
        with pytest.raises(NkiSimError):
            t.select(0, i)


def test_view_broadcast_permute_reshape_rules():
    """nki.language.NkiTensor: broadcast(dim, size) of a size-1 dim (not the partition dim on chip);
    permute keeps the partition dim first on chip; reshape checks the element count (0.5 notes)."""
    with context(target="trn2"):
        c = nl.ndarray((2, 1), nl.float32)
        c.write(np.array([[0.0], [1.0]], np.float32))
        d = nl.ndarray((2, 5), nl.float32)
        nisa.tensor_copy(d, c.broadcast(1, 5))
        np.testing.assert_array_equal(d.read(), np.repeat([[0.0], [1.0]], 5, axis=1))
        with pytest.raises(NkiSimError):
            nl.ndarray((1, 4), nl.float32).broadcast(0, 4)
        t = nl.ndarray(VX.shape, nl.float32)
        t.write(VX)
        p = nl.ndarray((2, 4, 3), nl.float32)
        nisa.tensor_copy(p, t.permute((0, 2, 1)))
        np.testing.assert_array_equal(p.read(), VX.transpose(0, 2, 1))
        with pytest.raises(NkiSimError):
            nisa.tensor_copy(nl.ndarray((3, 2, 4), nl.float32), t.permute((1, 0, 2)))
        assert t.reshape((2, 12)).shape == (2, 12)
        with pytest.raises(NkiSimError):
            t.reshape((2, 11))


def test_view_bitcast():
    """nki.language.NkiTensor.view(dtype): bit reinterpretation; the last dim scales by the size ratio
    (fp32 (2, 4) -> bf16 (2, 8))."""
    with context(target="trn2"):
        t = nl.ndarray((2, 4), nl.float32)
        t.write(np.arange(8, dtype=np.float32).reshape(2, 4))
        assert tuple(t.view(nl.bfloat16).shape) == (2, 8)
        d = nl.ndarray((2, 4), nl.int32)
        nisa.tensor_copy(d, t.view(nl.int32))
        np.testing.assert_array_equal(d.read(), np.arange(8, dtype=np.float32).reshape(2, 4).view(np.int32))


def test_sbuf_ap_scalar_offset_replaces_tensor_copy_dynamic():
    """NKI 0.4 release notes: tensor_copy_dynamic_src/dst removed, use tensor_copy(dst,
    src.ap(..., scalar_offset=r)); NKI Access Patterns: the offset counts elements on indirect_dim."""
    with context(target="trn2"):
        t = nl.ndarray(VX.shape, nl.float32)
        t.write(VX)
        r = nisa.register_alloc(2)
        d = nl.ndarray((2, 4), nl.float32)
        nisa.tensor_copy(d, t.ap([[12, 2], [1, 4]], offset=0, scalar_offset=r, indirect_dim=1))
        np.testing.assert_array_equal(d.read(), VX[:, 2, :])


def test_runtime_offset_access_pattern_feeds_dma_only():
    """NKI Access Patterns: scalar_offset / vector_offset are DMA addressing (nki-library uses them only
    as DMA operands; compute-engine indirection is NkiTensor.indirect, NeuronCore-v4); the one
    documented compute exception is tensor_copy (NKI 0.4.0 release notes). A runtime-offset view as an
    operand of another instruction is refused naming the instruction and the operand; a DMA of the same
    view into a fixed tile is the supported form."""
    with context(target="trn2"):
        t = nl.ndarray((2, 12), nl.float32)
        t.write(VX.reshape(2, 12))
        r = nisa.register_alloc(2)
        column = t.ap([[12, 2], [1, 1]], offset=0, scalar_offset=r, indirect_dim=1)
        acc = nl.ndarray((2, 4), nl.float32)
        nisa.memset(acc, 0.0)
        with pytest.raises(NkiSimError, match="scalar_tensor_tensor: operand0 .*runtime offset"):
            nisa.scalar_tensor_tensor(dst=acc, data=acc, op0=nl.multiply, operand0=column, op1=nl.add, operand1=acc)
        with pytest.raises(NkiSimError, match="tensor_scalar: operand0 .*runtime offset"):
            nisa.tensor_scalar(dst=acc, data=acc, op0=nl.multiply, operand0=column)
        ids = nl.ndarray((1, 4), nl.int32)
        ids.write(np.array([[5, 6, 7, 8]], np.int32))
        with pytest.raises(NkiSimError, match="register_load: src .*runtime offset"):
            nisa.register_load(r, ids.ap([[4, 1], [1, 1]], offset=0, scalar_offset=r, indirect_dim=1))
        fixed = nl.ndarray((2, 1), nl.float32)
        nisa.dma_copy(dst=fixed, src=column)
        np.testing.assert_array_equal(fixed.read(), VX.reshape(2, 12)[:, 2:3])


def test_gather_with_offset_and_vector_offset(k):
    """nki.isa.dma_copy / NKI Access Patterns: with vector_offset, partition p reads
    flat[offset + idx[p] * row + z] -- the CTE template gathers column windows of token rows this way
    (offset = h_base + d0)."""
    data = np.arange(48, dtype=np.float32).reshape(6, 8)
    got = run(k.gather_window, data, np.array([[4], [0], [5]], np.int32))
    np.testing.assert_array_equal(got, data[[4, 0, 5], 2:5])


# ------------------------------------------------------------------------------------------------
# dma_compute addressing (session 2026-12-07)
# ------------------------------------------------------------------------------------------------
def _rmw_operands():
    acc = nl.ndarray((6, 4), nl.float32, buffer=nl.hbm)
    acc.write(np.ones((6, 4), np.float32))
    idx = nl.ndarray((2, 1), nl.int32)
    idx.write(np.array([[1], [4]], np.int32))
    data = nl.ndarray((2, 4), nl.float32)
    data.write(np.full((2, 4), 2.0, np.float32))
    return acc, idx, data


def test_dma_compute_needs_compile_time_addresses():
    """nki.isa.dma_compute (Memory types): 'Both srcs and dst tensors must have compile-time known addresses
    (unless using vector_offset for indirect access)'; without vector_offset 'the only supported DGE mode is
    None (static DMA)'. A register (scalar_offset) view is refused."""
    with context(target="trn2"):
        acc, _, data = _rmw_operands()
        r = nisa.register_alloc(1)
        rows = acc.ap([[4, 2], [1, 4]], offset=0, scalar_offset=r, indirect_dim=0)
        with pytest.raises(NkiSimError, match="runtime \\(scalar\\) offset"):
            nisa.dma_compute(rows, [rows, data], nl.add)


def test_dma_compute_read_modify_write_modes():
    """nki.isa.dma_compute (Read-Modify-Write with vector_offset): 'Scatter RMW: dst(HBM)[indices] =
    dst(HBM)[indices] + src(SB)' and 'Gather RMW: dst(SB) = dst(SB) + src(HBM)[indices]'; 'Both modes require
    exactly 2 source tensors' and 'One source matches dst'. Both documented modes run; three sources, or a
    source list without dst, are refused."""
    with context(target="trn2"):
        acc, idx, data = _rmw_operands()
        rows = acc.ap([[4, 2], [1, 4]], offset=0, vector_offset=idx, indirect_dim=0)
        nisa.dma_compute(rows, [rows, data], nl.add)  # scatter
        ref = np.ones((6, 4), np.float32)
        ref[[1, 4]] += 2
        np.testing.assert_array_equal(acc.read(), ref)
        got = nl.ndarray((2, 4), nl.float32)
        got.write(np.full((2, 4), 10.0, np.float32))
        nisa.dma_compute(got, [rows, got], nl.add)  # gather, dst second
        np.testing.assert_array_equal(got.read(), 10.0 + ref[[1, 4]])
        with pytest.raises(NkiSimError, match="exactly 2 sources"):
            nisa.dma_compute(rows, [rows, data, data], nl.add)
        with pytest.raises(NkiSimError, match="neither documented read-modify-write"):
            nisa.dma_compute(rows, [data, data], nl.add)
        with pytest.raises(NkiSimError, match="neither documented read-modify-write"):
            nisa.dma_compute(got, [rows, data], nl.add)  # gather whose other source is not dst


def test_dma_compute_scatter_source_must_be_sbuf():
    """nki.isa.dma_compute: in a scatter RMW 'The other source is data in SBUF'. An indirect HBM source
    (dst(HBM)[i] += other(HBM)[i]) is neither documented mode."""
    with context(target="trn2"):
        acc, idx, _ = _rmw_operands()
        other = nl.ndarray((6, 4), nl.float32, buffer=nl.hbm)
        other.write(np.ones((6, 4), np.float32))
        rows = acc.ap([[4, 2], [1, 4]], offset=0, vector_offset=idx, indirect_dim=0)
        other_rows = other.ap([[4, 2], [1, 4]], offset=0, vector_offset=idx, indirect_dim=0)
        with pytest.raises(NkiSimError):
            nisa.dma_compute(rows, [rows, other_rows], nl.add)


def test_vector_offset_index_is_an_sbuf_tensor():
    """nki.isa.dma_copy (Indirect addressing): 'Use .ap(pattern=..., vector_offset=idx_tensor, indirect_dim=0)
    where idx_tensor is an SBUF tensor of shape (P, 1) containing one row index per partition'. An index
    vector in HBM is refused (the SBUF one gathers)."""
    with context(target="trn2"):
        data = nl.ndarray((8, 4), nl.float32, buffer=nl.hbm)
        data.write(np.arange(32, dtype=np.float32).reshape(8, 4))
        idx_hbm = nl.ndarray((2, 1), nl.int32, buffer=nl.hbm)
        idx_hbm.write(np.array([[5], [2]], np.int32))
        with pytest.raises(NkiSimError, match="vector_offset must be an SBUF tensor"):
            data.ap([[4, 2], [1, 4]], offset=0, vector_offset=idx_hbm, indirect_dim=0)
        idx = nl.ndarray((2, 1), nl.int32)
        idx.write(np.array([[5], [2]], np.int32))
        got = nl.ndarray((2, 4), nl.float32)
        nisa.dma_copy(got, data.ap([[4, 2], [1, 4]], offset=0, vector_offset=idx, indirect_dim=0))
        np.testing.assert_array_equal(got.read(), np.arange(32, dtype=np.float32).reshape(8, 4)[[5, 2]])


def test_dma_copy_indexes_one_side_only():
    """nki.isa.dma_copy, 'Indirect addressing (gather/scatter)': a vector_offset on src gathers rows into dst, one on
    dst scatters src's rows; no page shows both on one copy (docs/sim_audit.md, below #23), so an HBM -> HBM copy
    indexed on both sides is refused; each documented form still runs."""
    with context(target="trn2"):
        data = nl.ndarray((8, 4), nl.float32, buffer=nl.hbm)
        data.write(np.arange(32, dtype=np.float32).reshape(8, 4))
        out = nl.ndarray((8, 4), nl.float32, buffer=nl.hbm)
        out.write(np.zeros((8, 4), np.float32))
        idx = nl.ndarray((2, 1), nl.int32)
        idx.write(np.array([[5], [2]], np.int32))
        src_rows = data.ap([[4, 2], [1, 4]], offset=0, vector_offset=idx, indirect_dim=0)
        dst_rows = out.ap([[4, 2], [1, 4]], offset=0, vector_offset=idx, indirect_dim=0)
        with pytest.raises(NkiSimError, match="vector_offset on both src"):
            nisa.dma_copy(dst_rows, src_rows)
        nisa.dma_copy(dst_rows, data[0:2, 0:4])  # scatter: index on dst only
        got = np.zeros((8, 4), np.float32)
        got[[5, 2]] = np.arange(8, dtype=np.float32).reshape(2, 4)
        np.testing.assert_array_equal(out.read(), got)
