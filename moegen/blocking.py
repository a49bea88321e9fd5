"""Host-side routing metadata for the blockwise (CTE) MoE kernels (SEMANTICS section 5).

From the router's expert_index [T, K] this builds what a moe_cte kernel reads: the tokens grouped
per expert into blocks of B slots. The same job as vLLM's moe_align_block_size.

Dropless (`build_blocks`): expert e owns ceil(count_e / B) blocks, blocks sorted by expert, each
block's slots hold its expert's token ids in ascending order and empty slots hold the padding id
(T, the zero row of hidden_states, or -1 for kernels that skip padding by out-of-bounds DMA). The
block count is the worst-case budget N = ceil((T*K - (E-1)) / B) + E - 1, so a kernel compiled
for (T, K, E, B) fits every routing; blocks beyond the real ones are all padding and are given
to the last expert (keeping the order sorted). conditions [N+1] is 1 for each block holding real
tokens, then 0.

Dropping (`build_blocks_dropping`): N = E blocks, block i is expert i with capacity B; an expert
receiving more than B tokens keeps the B lowest token ids and drops the rest (those pairs get no
output from that expert and their masked affinity is zeroed). conditions[i] is 1 when block i holds
a token: with dropping it is not a prefix of ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Blocks:
    """Routing metadata in the seed moe_cte layouts.

    token_position_to_id [N*B] int32, block_to_expert [N, 1] int32, conditions [N+1] int32,
    expert_affinities_masked [(T+1)*E, 1] (the affinities' dtype), dropped [T, K] bool (pairs not
    placed in any block; all False when dropless), counts [E] tokens per expert (before dropping).
    """

    token_position_to_id: np.ndarray
    block_to_expert: np.ndarray
    conditions: np.ndarray
    expert_affinities_masked: np.ndarray
    dropped: np.ndarray
    counts: np.ndarray
    block_size: int

    @property
    def num_blocks(self) -> int:
        return int(self.block_to_expert.shape[0])

    @property
    def num_real_blocks(self) -> int:
        return int(self.conditions.sum())


def dropless_block_budget(tokens: int, top_k: int, num_experts: int, block_size: int) -> int:
    """Worst-case block count N = ceil((T*K - (E-1)) / B) + E - 1 (at least 1)."""
    spread = tokens * top_k - (num_experts - 1)
    return max(1, -(-spread // block_size) + num_experts - 1)


def _check_index(expert_index: np.ndarray, num_experts: int) -> np.ndarray:
    """expert_index as int64 [T, K] after checking it; ValueError names the bad element and its value."""
    if isinstance(num_experts, bool) or not isinstance(num_experts, (int, np.integer)) or num_experts < 1:
        raise ValueError(f"num_experts must be a positive int, got {num_experts!r}")
    index = np.asarray(expert_index)
    if index.ndim != 2:
        raise ValueError(f"expert_index must be [T, K], got shape {index.shape}")
    if index.dtype.kind not in "iu":
        raise ValueError(f"expert_index must hold integer expert ids, got dtype {index.dtype}")
    index = index.astype(np.int64)
    bad = (index < 0) | (index >= num_experts)
    if bad.any():
        t, k = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"expert_index[{t}, {k}] = {index[t, k]}: expert ids must be in [0, {num_experts}) "
            f"({int(bad.sum())} bad id(s))"
        )
    ordered = np.sort(index, axis=1)
    repeated = np.argwhere(ordered[:, 1:] == ordered[:, :-1])
    if repeated.size:
        t, k = (int(i) for i in repeated[0])
        raise ValueError(f"expert_index row {t} selects expert {ordered[t, k]} twice")
    return index


def _check_block_size(block_size) -> int:
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    return int(block_size)


def masked_affinities(
    expert_index: np.ndarray, expert_affinities: np.ndarray, num_experts: int, keep: np.ndarray | None = None
) -> np.ndarray:
    """[(T+1)*E, 1] table: affinity of token t for expert e at t*E + e, 0 where e is not selected
    (or the pair is not kept), row T zero.

    expert_affinities is [T, E] (values at unselected experts are ignored) or [T, K] (the values of
    expert_index's experts, in its order; when K == E the [T, E] reading is used). The result keeps
    the affinities' dtype.
    """
    index = _check_index(expert_index, num_experts)
    aff = np.asarray(expert_affinities)
    t, k = index.shape
    if aff.shape == (t, num_experts):
        values = np.take_along_axis(aff, index, axis=1)
    elif aff.shape == (t, k):
        values = aff
    else:
        raise ValueError(f"expert_affinities must be [T, E]={t, num_experts} or [T, K]={t, k}, got {aff.shape}")
    if keep is not None:
        values = np.where(keep, values, np.zeros((), dtype=values.dtype))
    table = np.zeros((t + 1, num_experts), dtype=aff.dtype)
    np.put_along_axis(table[:t], index, values, axis=1)
    return table.reshape(-1, 1)


def _pad_id(pad_with, tokens: int) -> int:
    if pad_with in ("T", tokens):
        return tokens
    if pad_with == -1:
        return -1
    raise ValueError(f"pad_with must be -1 or T (={tokens}) or 'T', not {pad_with!r}")


def build_blocks(
    expert_index: np.ndarray,
    expert_affinities: np.ndarray,
    num_experts: int,
    block_size: int,
    *,
    pad_with: int | str = "T",
    dropless: bool = True,
    num_blocks: int | None = None,
) -> Blocks:
    """Dropless block layout of expert_index [T, K] (see the module docstring).

    pad_with: 'T' (or the int T) pads with the zero row, -1 marks slots to skip. num_blocks overrides
    the worst-case budget (it must fit the routing). dropless=False calls build_blocks_dropping.
    """
    if not dropless:
        return build_blocks_dropping(expert_index, expert_affinities, num_experts, block_size, pad_with=pad_with)
    index = _check_index(expert_index, num_experts)
    t, k = index.shape
    pad = _pad_id(pad_with, t)
    b = _check_block_size(block_size)
    counts = np.bincount(index.reshape(-1), minlength=num_experts)
    blocks_per_expert = -(-counts // b)
    real = int(blocks_per_expert.sum())
    n = dropless_block_budget(t, k, num_experts, b) if num_blocks is None else num_blocks
    if real > n:
        raise ValueError(f"routing needs {real} blocks, more than num_blocks={n}")

    block_to_expert = np.full(n, num_experts - 1, dtype=np.int32)
    block_to_expert[:real] = np.repeat(np.arange(num_experts, dtype=np.int32), blocks_per_expert)
    slots = np.full(n * b, pad, dtype=np.int32)
    # Tokens of each expert in ascending id order, packed from its first block's first slot.
    flat_expert = index.reshape(-1)
    flat_token = np.repeat(np.arange(t), k)
    order = np.lexsort((flat_token, flat_expert))
    first_slot = np.concatenate([[0], np.cumsum(blocks_per_expert)[:-1]]) * b
    rank_in_expert = np.arange(t * k) - np.concatenate([[0], np.cumsum(counts)[:-1]])[flat_expert[order]]
    slots[first_slot[flat_expert[order]] + rank_in_expert] = flat_token[order]

    conditions = np.zeros(n + 1, dtype=np.int32)
    conditions[:real] = 1
    return Blocks(
        token_position_to_id=slots,
        block_to_expert=block_to_expert.reshape(n, 1),
        conditions=conditions,
        expert_affinities_masked=masked_affinities(index, expert_affinities, num_experts),
        dropped=np.zeros((t, k), dtype=bool),
        counts=counts,
        block_size=b,
    )


def build_blocks_dropping(
    expert_index: np.ndarray,
    expert_affinities: np.ndarray,
    num_experts: int,
    block_size: int,
    *,
    pad_with: int | str = "T",
) -> Blocks:
    """Token-dropping layout: N = E blocks, block e holds expert e's B lowest token ids.

    Pairs (t, k) beyond an expert's capacity are dropped: marked in `dropped` and zeroed in
    expert_affinities_masked, so the per-token reference with those affinities matches the kernel.
    """
    index = _check_index(expert_index, num_experts)
    t, k = index.shape
    pad = _pad_id(pad_with, t)
    b = _check_block_size(block_size)
    counts = np.bincount(index.reshape(-1), minlength=num_experts)
    slots = np.full(num_experts * b, pad, dtype=np.int32)
    dropped = np.zeros((t, k), dtype=bool)
    for e in range(num_experts):
        tok, kk = np.nonzero(index == e)  # row-major: ascending token id
        slots[e * b : e * b + min(b, tok.size)] = tok[:b]
        dropped[tok[b:], kk[b:]] = True
    conditions = np.zeros(num_experts + 1, dtype=np.int32)
    conditions[:num_experts] = counts > 0
    return Blocks(
        token_position_to_id=slots,
        block_to_expert=np.arange(num_experts, dtype=np.int32).reshape(-1, 1),
        conditions=conditions,
        expert_affinities_masked=masked_affinities(index, expert_affinities, num_experts, keep=~dropped),
        dropped=dropped,
        counts=counts,
        block_size=b,
    )


@dataclass(frozen=True)
class PermutedRows:
    """An expert-permuted buffer layout (Megatron's padded permutation, seed padded_activations).

    permutation_map [R] int32: the source token of each row (-1 for alignment padding and for rows
    at or past n_used); n_used [1] int32 = expert_offsets[-1]; expert_offsets [E] int32: the
    inclusive end row of each expert's segment (each segment padded to `alignment` rows).
    """

    permutation_map: np.ndarray
    n_used: np.ndarray
    expert_offsets: np.ndarray
    alignment: int


def aligned_rows_budget(tokens: int, top_k: int, num_experts: int, alignment: int) -> int:
    """Worst-case rows R of the permuted buffer: T*K rows plus alignment - 1 padding rows per expert,
    rounded up to the alignment (so a kernel compiled for (T, K, E, alignment) fits every routing)."""
    rows = tokens * top_k + num_experts * (alignment - 1)
    return max(alignment, -(-rows // alignment) * alignment)


def permuted_rows(expert_index: np.ndarray, num_experts: int, alignment: int, rows: int | None = None) -> PermutedRows:
    """The rows of every (token, k) pair grouped by expert, each expert's segment padded to `alignment`.

    Within a segment the pairs keep token order (row t*K + k order). rows: the buffer size R (default:
    aligned_rows_budget); ValueError if the routing needs more.
    """
    index = _check_index(expert_index, num_experts)
    tokens, top_k = index.shape
    if not isinstance(alignment, int) or alignment < 1:
        raise ValueError(f"alignment must be a positive int, got {alignment!r}")
    rows = aligned_rows_budget(tokens, top_k, num_experts, alignment) if rows is None else int(rows)
    counts = np.bincount(index.reshape(-1), minlength=num_experts)
    padded = -(-counts // alignment) * alignment
    offsets = np.cumsum(padded)
    n_used = int(offsets[-1]) if num_experts else 0
    if n_used > rows:
        raise ValueError(f"rows={rows}: the routing needs {n_used} aligned rows")
    permutation_map = np.full(rows, -1, dtype=np.int32)
    flat_tokens = np.repeat(np.arange(tokens), top_k)
    for e in range(num_experts):
        start = int(offsets[e] - padded[e])
        members = flat_tokens[index.reshape(-1) == e]
        permutation_map[start : start + members.size] = members
    return PermutedRows(
        permutation_map=permutation_map,
        n_used=np.array([n_used], dtype=np.int32),
        expert_offsets=offsets.astype(np.int32),
        alignment=alignment,
    )
