"""Indirect row gather: out[i, :] = table[ids[i], :] for ids [T] int32 (T <= 128); rows with an
out-of-range id are skipped and stay zero (oob_mode.skip)."""

import nki
import nki.isa as nisa
import nki.language as nl


@nki.jit
def indirect_gather(table, ids):
    V, H = table.shape
    (T,) = ids.shape
    out = nl.ndarray((T, H), dtype=table.dtype, buffer=nl.shared_hbm)
    idx = nl.ndarray((T, 1), dtype=nl.int32, buffer=nl.sbuf)
    nisa.dma_copy(idx, ids)
    rows = nl.ndarray((T, H), dtype=table.dtype, buffer=nl.sbuf)
    nisa.memset(rows, 0.0)
    nisa.dma_copy(rows, table.ap([[H, T], [1, H]], vector_offset=idx, indirect_dim=0), oob_mode=nisa.oob_mode.skip)
    nisa.dma_copy(out, rows)
    return out
