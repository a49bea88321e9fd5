"""The four matmul kernels of the NKI kernel-optimisation tutorial (trn2), written from its description.

https://awsdocs-neuron.readthedocs-hosted.com/en/latest/nki/how-to-guides/kernel-optimization.html
lhsT [K, M] (the left operand delivered transposed) and rhs [K, N], fp32, result [M, N] fp32:
  v1 tiled: one PSUM tile per output tile, both operand tiles loaded next to each matmul;
  v2 hoisted: the K column of lhsT loaded once per M tile, the K column of rhs once per output tile;
  v3 blocked in the free dimensions: TILES_IN_BLOCK_M lhsT columns share every loaded rhs column;
  v4 blocked in M, N and K, partial sums accumulated in SBUF by VectorE, results stored in rows.
The block sizes are keyword arguments, as the tutorial's v4 meta-parameters. One deviation, forced by SBUF
capacity (128 partitions of 224 KiB on trn2, Trainium2 architecture guide): v3 blocks M by 2 and N by 1 by
default, because the tutorial's 2 x 2 keeps 320 KiB per partition live at K = 8192 and the simulator
refuses it (tests/perf/test_calibration.py checks that). v4 uses the tutorial's 16 / 2 / 8.
"""

from moegen.sim import isa as nisa
from moegen.sim import jit
from moegen.sim import language as nl

TILE_M, TILE_K, TILE_N = 128, 128, 512


@jit
def matmul_v1_tiled(lhsT, rhs):
    K, M = lhsT.shape
    N = rhs.shape[1]
    result = nl.ndarray((M, N), dtype=nl.float32, buffer=nl.shared_hbm)
    for m in range(M // TILE_M):
        for n in range(N // TILE_N):
            acc = nl.ndarray((TILE_M, TILE_N), dtype=nl.float32, buffer=nl.psum)
            for k in range(K // TILE_K):
                lhsT_tile = nl.ndarray((TILE_K, TILE_M), dtype=lhsT.dtype, buffer=nl.sbuf)
                rhs_tile = nl.ndarray((TILE_K, TILE_N), dtype=rhs.dtype, buffer=nl.sbuf)
                nisa.dma_copy(dst=lhsT_tile, src=lhsT[k * TILE_K : (k + 1) * TILE_K, m * TILE_M : (m + 1) * TILE_M])
                nisa.dma_copy(dst=rhs_tile, src=rhs[k * TILE_K : (k + 1) * TILE_K, n * TILE_N : (n + 1) * TILE_N])
                nisa.nc_matmul(dst=acc, stationary=lhsT_tile, moving=rhs_tile)
            out_tile = nl.ndarray((TILE_M, TILE_N), dtype=nl.float32, buffer=nl.sbuf)
            nisa.tensor_copy(dst=out_tile, src=acc)
            nisa.dma_copy(dst=result[m * TILE_M : (m + 1) * TILE_M, n * TILE_N : (n + 1) * TILE_N], src=out_tile)
    return result


@jit
def matmul_v2_hoisted(lhsT, rhs):
    K, M = lhsT.shape
    N = rhs.shape[1]
    result = nl.ndarray((M, N), dtype=nl.float32, buffer=nl.shared_hbm)
    for m in range(M // TILE_M):
        lhsT_tiles = []
        for k in range(K // TILE_K):
            tile = nl.ndarray((TILE_K, TILE_M), dtype=lhsT.dtype, buffer=nl.sbuf)
            nisa.dma_copy(dst=tile, src=lhsT[k * TILE_K : (k + 1) * TILE_K, m * TILE_M : (m + 1) * TILE_M])
            lhsT_tiles.append(tile)
        for n in range(N // TILE_N):
            rhs_tiles = []
            for k in range(K // TILE_K):
                tile = nl.ndarray((TILE_K, TILE_N), dtype=rhs.dtype, buffer=nl.sbuf)
                nisa.dma_copy(dst=tile, src=rhs[k * TILE_K : (k + 1) * TILE_K, n * TILE_N : (n + 1) * TILE_N])
                rhs_tiles.append(tile)
            acc = nl.ndarray((TILE_M, TILE_N), dtype=nl.float32, buffer=nl.psum)
            for k in range(K // TILE_K):
                nisa.nc_matmul(dst=acc, stationary=lhsT_tiles[k], moving=rhs_tiles[k])
            out_tile = nl.ndarray((TILE_M, TILE_N), dtype=nl.float32, buffer=nl.sbuf)
            nisa.tensor_copy(dst=out_tile, src=acc)
            nisa.dma_copy(dst=result[m * TILE_M : (m + 1) * TILE_M, n * TILE_N : (n + 1) * TILE_N], src=out_tile)
    return result


@jit
def matmul_v3_blocked(lhsT, rhs, TILES_IN_BLOCK_M=2, TILES_IN_BLOCK_N=1):
    K, M = lhsT.shape
    N = rhs.shape[1]
    result = nl.ndarray((M, N), dtype=nl.float32, buffer=nl.shared_hbm)
    for m in range(M // (TILE_M * TILES_IN_BLOCK_M)):
        lhsT_tiles = []
        for bm in range(TILES_IN_BLOCK_M):
            column = []
            m0 = (m * TILES_IN_BLOCK_M + bm) * TILE_M
            for k in range(K // TILE_K):
                tile = nl.ndarray((TILE_K, TILE_M), dtype=lhsT.dtype, buffer=nl.sbuf)
                nisa.dma_copy(dst=tile, src=lhsT[k * TILE_K : (k + 1) * TILE_K, m0 : m0 + TILE_M])
                column.append(tile)
            lhsT_tiles.append(column)
        for n in range(N // (TILE_N * TILES_IN_BLOCK_N)):
            rhs_tiles = []
            for bn in range(TILES_IN_BLOCK_N):
                column = []
                n0 = (n * TILES_IN_BLOCK_N + bn) * TILE_N
                for k in range(K // TILE_K):
                    tile = nl.ndarray((TILE_K, TILE_N), dtype=rhs.dtype, buffer=nl.sbuf)
                    nisa.dma_copy(dst=tile, src=rhs[k * TILE_K : (k + 1) * TILE_K, n0 : n0 + TILE_N])
                    column.append(tile)
                rhs_tiles.append(column)
            for bm in range(TILES_IN_BLOCK_M):
                for bn in range(TILES_IN_BLOCK_N):
                    acc = nl.ndarray((TILE_M, TILE_N), dtype=nl.float32, buffer=nl.psum)
                    for k in range(K // TILE_K):
                        nisa.nc_matmul(dst=acc, stationary=lhsT_tiles[bm][k], moving=rhs_tiles[bn][k])
                    out_tile = nl.ndarray((TILE_M, TILE_N), dtype=nl.float32, buffer=nl.sbuf)
                    nisa.tensor_copy(dst=out_tile, src=acc)
                    m0 = (m * TILES_IN_BLOCK_M + bm) * TILE_M
                    n0 = (n * TILES_IN_BLOCK_N + bn) * TILE_N
                    nisa.dma_copy(dst=result[m0 : m0 + TILE_M, n0 : n0 + TILE_N], src=out_tile)
    return result


@jit
def matmul_v4_blocked_k(lhsT, rhs, TILES_IN_BLOCK_M=16, TILES_IN_BLOCK_N=2, TILES_IN_BLOCK_K=8):
    K, M = lhsT.shape
    N = rhs.shape[1]
    blocks = (TILES_IN_BLOCK_M, TILES_IN_BLOCK_N, TILES_IN_BLOCK_K)
    result = nl.ndarray((M, N), dtype=nl.float32, buffer=nl.shared_hbm)
    for n in range(N // (TILE_N * TILES_IN_BLOCK_N)):
        # one function call per N block: its tiles are freed on return (at the tutorial's sizes the
        # accumulators and one K block of both operands fill all 224 KiB of a partition)
        _v4_column_block(lhsT, rhs, result, n, blocks)
    return result


def _zeroed_tile():
    tile = nl.ndarray((TILE_M, TILE_N), dtype=nl.float32, buffer=nl.sbuf)
    nisa.memset(dst=tile, value=0.0)
    return tile


def _v4_column_block(lhsT, rhs, result, n, blocks):
    """Columns [n * BLOCK_N, (n + 1) * BLOCK_N) of the result: SBUF accumulators over the K blocks."""
    tiles_m, tiles_n, tiles_k = blocks
    K, M = lhsT.shape
    BLOCK_M, BLOCK_N, BLOCK_K = TILE_M * tiles_m, TILE_N * tiles_n, TILE_K * tiles_k
    partial = [[[_zeroed_tile() for _bn in range(tiles_n)] for _bm in range(tiles_m)] for _m in range(M // BLOCK_M)]
    for k in range(K // BLOCK_K):
        rhs_tiles = [nl.ndarray((TILE_K, BLOCK_N), dtype=rhs.dtype, buffer=nl.sbuf) for _bk in range(tiles_k)]
        for bk in range(tiles_k):
            k0 = (k * tiles_k + bk) * TILE_K
            nisa.dma_copy(dst=rhs_tiles[bk], src=rhs[k0 : k0 + TILE_K, n * BLOCK_N : (n + 1) * BLOCK_N])
        for m in range(M // BLOCK_M):
            lhsT_tiles = [nl.ndarray((TILE_K, BLOCK_M), dtype=lhsT.dtype, buffer=nl.sbuf) for _bk in range(tiles_k)]
            for bk in range(tiles_k):
                k0 = (k * tiles_k + bk) * TILE_K
                nisa.dma_copy(dst=lhsT_tiles[bk], src=lhsT[k0 : k0 + TILE_K, m * BLOCK_M : (m + 1) * BLOCK_M])
            for bn in range(tiles_n):
                for bm in range(tiles_m):
                    acc = nl.ndarray((TILE_M, TILE_N), dtype=nl.float32, buffer=nl.psum)
                    for bk in range(tiles_k):
                        nisa.nc_matmul(
                            dst=acc,
                            stationary=lhsT_tiles[bk][0:TILE_K, bm * TILE_M : (bm + 1) * TILE_M],
                            moving=rhs_tiles[bk][0:TILE_K, bn * TILE_N : (bn + 1) * TILE_N],
                        )
                    nisa.tensor_tensor(dst=partial[m][bm][bn], data1=partial[m][bm][bn], data2=acc, op=nl.add)
            lhsT_tiles = None  # freed before the next M block's loads are allocated
        rhs_tiles = None
    for m in range(M // BLOCK_M):
        for bm in range(tiles_m):
            packed = nl.ndarray((TILE_M, BLOCK_N), dtype=nl.float32, buffer=nl.sbuf)
            for bn in range(tiles_n):
                nisa.tensor_copy(dst=packed[0:TILE_M, bn * TILE_N : (bn + 1) * TILE_N], src=partial[m][bm][bn])
            m0 = (m * tiles_m + bm) * TILE_M
            nisa.dma_copy(dst=result[m0 : m0 + TILE_M, n * BLOCK_N : (n + 1) * BLOCK_N], src=packed)
