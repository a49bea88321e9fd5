"""2-D transpose through TensorE: out[F, P] = x[P, F] for x [128, F] (F a multiple of 128)."""

import nki
import nki.isa as nisa
import nki.language as nl


@nki.jit
def transpose2d(x):
    P, F = x.shape
    out = nl.ndarray((F, P), dtype=x.dtype, buffer=nl.shared_hbm)
    xt = nl.ndarray((P, F), dtype=x.dtype, buffer=nl.sbuf)
    nisa.dma_copy(xt, x)
    for j in range(F // 128):
        tp = nl.ndarray((128, P), dtype=x.dtype, buffer=nl.psum)
        nisa.nc_transpose(tp, xt[:, j * 128 : (j + 1) * 128])
        sb = nl.ndarray((128, P), dtype=x.dtype, buffer=nl.sbuf)
        nisa.tensor_copy(sb, tp)
        nisa.dma_copy(out[j * 128 : (j + 1) * 128, :], sb)
    return out
