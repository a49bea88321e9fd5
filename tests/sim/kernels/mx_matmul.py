"""MX matmul written by hand (not generated): out[M, N] = lhsT[K, M].T @ rhs[K, N] with both operands
quantized on chip by quantize_mx and multiplied by nc_matmul_mx, fp32 PSUM accumulation over K slabs.

Layout: each K slab of 512 rows sits on 128 partitions x 4 packed values, row kt*512 + 4p + q at
partition p, value q. A scaling block (8 partitions x 4 values) is then 32 consecutive rows of K,
which is the OCP block along the contraction."""

import nki
import nki.isa as nisa
import nki.language as nl


@nki.jit
def mx_matmul(lhsT, rhs, mx_dtype):
    K, M = lhsT.shape
    K2, N = rhs.shape
    assert K == K2, "contraction sizes differ"
    assert K % 512 == 0 and M <= 128 and N <= 512, "one output tile, K in slabs of 512"
    KT = K // 512
    acc = nl.ndarray((M, N), dtype=nl.float32, buffer=nl.psum)
    for kt in range(KT):
        # [512, F] slab -> [128, F, 4]: row 4p + q of the slab at partition p, packed position q
        lhs_bf = nl.ndarray((128, M, 4), dtype=lhsT.dtype, buffer=nl.sbuf)
        nisa.dma_copy(lhs_bf, lhsT[kt * 512 : (kt + 1) * 512, :].reshape_dim(0, (128, 4)).permute((0, 2, 1)))
        rhs_bf = nl.ndarray((128, N, 4), dtype=rhs.dtype, buffer=nl.sbuf)
        nisa.dma_copy(rhs_bf, rhs[kt * 512 : (kt + 1) * 512, :].reshape_dim(0, (128, 4)).permute((0, 2, 1)))
        lhs_q = nl.ndarray((128, M), dtype=mx_dtype, buffer=nl.sbuf)
        lhs_s = nl.ndarray((128, M), dtype=nl.float8_e8m0fnu, buffer=nl.sbuf)
        nisa.quantize_mx(dst=lhs_q, src=lhs_bf, dst_scale=lhs_s)
        rhs_q = nl.ndarray((128, N), dtype=mx_dtype, buffer=nl.sbuf)
        rhs_s = nl.ndarray((128, N), dtype=nl.float8_e8m0fnu, buffer=nl.sbuf)
        nisa.quantize_mx(dst=rhs_q, src=rhs_bf, dst_scale=rhs_s)
        nisa.nc_matmul_mx(
            dst=acc, stationary=lhs_q, moving=rhs_q, stationary_scale=lhs_s, moving_scale=rhs_s, accumulate=(kt > 0)
        )
    res = nl.ndarray((M, N), dtype=nl.float32, buffer=nl.sbuf)
    nisa.tensor_copy(res, acc)
    out = nl.ndarray((M, N), dtype=nl.float32, buffer=nl.shared_hbm)
    nisa.dma_copy(out, res)
    return out
