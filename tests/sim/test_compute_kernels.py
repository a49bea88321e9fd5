"""Small hand-written NKI kernels built on the compute instructions, run end to end through
moegen.sim.simulate (kernel source executed against the simulator's nki modules)."""

from __future__ import annotations

import textwrap

import ml_dtypes
import numpy as np

from moegen.sim import load_module, simulate

ROUTER_KERNEL = '''
import nki
import nki.isa as nisa
import nki.language as nl


@nki.jit
def router_top8(logits):
    """softmax over experts, then the 8 largest probabilities and their expert ids per token.

    logits: [T <= 128, E] fp32 in HBM -> (probs [T, 8] fp32, ids [T, 8] uint32)."""
    T, E = logits.shape
    x = nl.ndarray((T, E), dtype=nl.float32, buffer=nl.sbuf)
    nisa.dma_copy(dst=x, src=logits)
    row_max = nl.ndarray((T, 1), dtype=nl.float32, buffer=nl.sbuf)
    nisa.tensor_reduce(dst=row_max, op=nl.maximum, data=x, axis=1, negate=True)
    e = nl.ndarray((T, E), dtype=nl.float32, buffer=nl.sbuf)
    total = nl.ndarray((T, 1), dtype=nl.float32, buffer=nl.sbuf)
    nisa.activation(dst=e, op=nl.exp, data=x, bias=row_max, reduce_op=nl.add, reduce_res=total,
                    reduce_cmd=nisa.reduce_cmd.reset_reduce)
    inv = nl.ndarray((T, 1), dtype=nl.float32, buffer=nl.sbuf)
    nisa.reciprocal(dst=inv, data=total)
    probs = nl.ndarray((T, E), dtype=nl.float32, buffer=nl.sbuf)
    nisa.tensor_scalar(dst=probs, data=e, op0=nl.multiply, operand0=inv)
    top = nl.ndarray((T, 8), dtype=nl.float32, buffer=nl.sbuf)
    nisa.max8(dst=top, src=probs)
    ids = nl.ndarray((T, 8), dtype=nl.uint32, buffer=nl.sbuf)
    nisa.nc_find_index8(dst=ids, data=probs, vals=top)
    out_p = nl.ndarray((T, 8), dtype=nl.float32, buffer=nl.shared_hbm)
    out_i = nl.ndarray((T, 8), dtype=nl.uint32, buffer=nl.shared_hbm)
    nisa.dma_copy(dst=out_p, src=top)
    nisa.dma_copy(dst=out_i, src=ids)
    return out_p, out_i


@nki.jit
def gated_silu(gate, up):
    """silu(gate) * up in bf16: gate, up [P <= 128, F] bf16 in HBM -> [P, F] bf16."""
    P, F = gate.shape
    g = nl.ndarray((P, F), dtype=gate.dtype, buffer=nl.sbuf)
    u = nl.ndarray((P, F), dtype=up.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=g, src=gate)
    nisa.dma_copy(dst=u, src=up)
    act = nl.ndarray((P, F), dtype=nl.bfloat16, buffer=nl.sbuf)
    nisa.activation(dst=act, op=nl.silu, data=g)
    h = nl.ndarray((P, F), dtype=nl.bfloat16, buffer=nl.sbuf)
    nisa.tensor_tensor(dst=h, data1=act, data2=u, op=nl.multiply)
    out = nl.ndarray((P, F), dtype=nl.bfloat16, buffer=nl.shared_hbm)
    nisa.dma_copy(dst=out, src=h)
    return out
'''


def _module(tmp_path):
    path = tmp_path / "compute_kernels.py"
    path.write_text(textwrap.dedent(ROUTER_KERNEL))
    return load_module(path)


def test_router_softmax_top8_kernel(tmp_path):
    mod = _module(tmp_path)
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((128, 64)).astype(np.float32)
    probs, ids = simulate(mod.router_top8, target="trn2")(logits)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    ref = e / e.sum(axis=1, keepdims=True)
    ref_ids = np.argsort(-ref, axis=1, kind="stable")[:, :8]
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(probs, np.take_along_axis(ref, ref_ids, axis=1), rtol=1e-5)


def test_gated_silu_kernel_rounds_to_bf16(tmp_path):
    mod = _module(tmp_path)
    rng = np.random.default_rng(4)
    bf16 = ml_dtypes.bfloat16
    gate = rng.standard_normal((64, 256)).astype(bf16)
    up = rng.standard_normal((64, 256)).astype(bf16)
    out = simulate(mod.gated_silu)(gate, up)
    g = gate.astype(np.float32)
    act = (g / (1 + np.exp(-g))).astype(bf16).astype(np.float32)
    ref = (act * up.astype(np.float32)).astype(bf16).astype(np.float32)
    np.testing.assert_allclose(np.asarray(out).astype(np.float32), ref, rtol=2**-7, atol=1e-6)
