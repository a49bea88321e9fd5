"""Tiled matmul: out[M, N] = lhsT[K, M].T @ rhs[K, N]; bf16 (or any TensorE dtype) inputs, fp32 PSUM
accumulation over K tiles, fp32 output. One DMA brings all K tiles of a column block into SBUF as
[128, K/128, width]; the matmuls read [128, 128] / [128, 512] slices of it."""

import nki
import nki.isa as nisa
import nki.language as nl


@nki.jit
def tiled_matmul(lhsT, rhs):
    K, M = lhsT.shape
    K2, N = rhs.shape
    assert K == K2, "contraction sizes differ"
    TK, TM, TN = 128, 128, 512
    KT = K // TK
    out = nl.ndarray((M, N), dtype=nl.float32, buffer=nl.shared_hbm)
    for n in range(N // TN):
        # rhs[:, n-block] as [128, KT, TN]: partition = row inside a K tile
        rhs_sb = nl.ndarray((TK, KT, TN), dtype=rhs.dtype, buffer=nl.sbuf)
        rhs_blk = rhs[:, n * TN : (n + 1) * TN].reshape_dim(0, (KT, TK)).permute((1, 0, 2))
        nisa.dma_copy(rhs_sb, rhs_blk)
        for m in range(M // TM):
            lhs_sb = nl.ndarray((TK, KT, TM), dtype=lhsT.dtype, buffer=nl.sbuf)
            lhs_blk = lhsT[:, m * TM : (m + 1) * TM].reshape_dim(0, (KT, TK)).permute((1, 0, 2))
            nisa.dma_copy(lhs_sb, lhs_blk)
            acc = nl.ndarray((TM, TN), dtype=nl.float32, buffer=nl.psum)
            for k in range(KT):
                nisa.nc_matmul(acc, lhs_sb[:, k, :], rhs_sb[:, k, :], accumulate=(k > 0))
            res = nl.ndarray((TM, TN), dtype=nl.float32, buffer=nl.sbuf)
            nisa.tensor_copy(res, acc)
            nisa.dma_copy(out[m * TM : (m + 1) * TM, n * TN : (n + 1) * TN], res)
    return out
