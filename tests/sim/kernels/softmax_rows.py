"""Row softmax: out[r, :] = softmax(x[r, :]) for x [R, F] (R a multiple of 128), fp32 math, output x.dtype."""

import nki
import nki.isa as nisa
import nki.language as nl


@nki.jit
def softmax_rows(x):
    R, F = x.shape
    P = 128
    out = nl.ndarray((R, F), dtype=x.dtype, buffer=nl.shared_hbm)
    for r in range(R // P):
        xt = nl.ndarray((P, F), dtype=x.dtype, buffer=nl.sbuf)
        nisa.dma_copy(xt, x[r * P : (r + 1) * P, :])
        mx = nl.ndarray((P, 1), dtype=nl.float32, buffer=nl.sbuf)
        nisa.tensor_reduce(mx, nl.maximum, xt, axis=(1,), negate=True)
        ex = nl.ndarray((P, F), dtype=nl.float32, buffer=nl.sbuf)
        total = nl.ndarray((P, 1), dtype=nl.float32, buffer=nl.sbuf)
        nisa.activation(
            ex, nl.exp, xt, bias=mx, reduce_op=nl.add, reduce_res=total, reduce_cmd=nisa.reduce_cmd.reset_reduce
        )
        inv = nl.ndarray((P, 1), dtype=nl.float32, buffer=nl.sbuf)
        nisa.reciprocal(inv, total)
        res = nl.ndarray((P, F), dtype=x.dtype, buffer=nl.sbuf)
        nisa.tensor_scalar(res, ex, nl.multiply, inv)
        nisa.dma_copy(out[r * P : (r + 1) * P, :], res)
    return out
