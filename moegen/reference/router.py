"""Router top-K (SEMANTICS section 3), with the seed kernel's argument names plus the modern extras.

Ties are defined: on equal selection scores the lower expert index (or group index) wins and an
expert is never selected twice. Selection uses a stable sort of the negated scores, which gives
exactly that order.
"""

from __future__ import annotations

import numpy as np

ROUTER_ACTIVATIONS = ("softmax", "sigmoid")


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - np.max(z, axis=-1, keepdims=True)
    e = np.exp(z)
    return e / np.sum(e, axis=-1, keepdims=True)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    ez = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + ez), ez / (1.0 + ez))


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices [T, k] of the k largest scores per row, descending, ties to the lower index."""
    return np.argsort(-scores, axis=-1, kind="stable")[:, :k]


def select_experts(scores: np.ndarray, k: int, n_group: int | None = None, topk_group: int | None = None) -> np.ndarray:
    """Top-k expert indices [T, k] int32 of selection scores [T, E] (fp64), optionally group-limited.

    Group-limited (DeepSeek-V3): experts split into n_group contiguous groups of E/n_group; a group's
    score is the sum of its two best scores (its only score if groups have one expert); the topk_group
    best groups are kept (ties to the lower group) and the top-k is taken among their experts. Experts
    of dropped groups are excluded outright (HF's DeepSeek-V3 code masks them to 0.0 instead, which
    would let them back in if every kept score were negative).
    """
    t, e = scores.shape
    if not 1 <= k <= e:
        raise ValueError(f"k={k} must be in [1, E={e}]")
    if n_group is None or n_group == 1:
        return _top(scores, k).astype(np.int32)
    if topk_group is None or e % n_group or not 1 <= topk_group <= n_group:
        raise ValueError(
            f"group-limited top-K needs E={e} divisible by n_group={n_group} "
            f"and 1 <= topk_group={topk_group} <= n_group"
        )
    per = e // n_group
    if k > topk_group * per:
        raise ValueError(f"k={k} exceeds the {topk_group * per} experts of the kept groups")
    grouped = scores.reshape(t, n_group, per)
    best2 = -np.sort(-grouped, axis=-1)[:, :, : min(2, per)]
    group_score = best2.sum(axis=-1)
    kept_groups = _top(group_score, topk_group)
    keep = np.zeros((t, n_group), dtype=bool)
    np.put_along_axis(keep, kept_groups, True, axis=1)
    masked = np.where(np.repeat(keep, per, axis=1), scores, -np.inf)
    return _top(masked, k).astype(np.int32)


def router_topk(
    x: np.ndarray,
    w: np.ndarray,
    w_bias: np.ndarray | None = None,
    *,
    act_fn: str = "softmax",
    k: int,
    x_layout: str = "th",
    router_pre_norm: bool = True,
    norm_topk_prob: bool = False,
    selection_bias: np.ndarray | None = None,
    n_group: int | None = None,
    topk_group: int | None = None,
    routed_scaling_factor: float | None = None,
    return_eager_affi: bool = False,
    affinities: str = "selected",
) -> tuple[np.ndarray, ...]:
    """Router logits, top-K expert indices and scattered affinities.

    x [T, H] (x_layout 'th') or [H, T] ('ht'); w [H, E]; w_bias [1, E] or [E].
    Returns (router_logits [T, E] fp32, expert_index [T, K] int32, expert_affinities [T, E] fp32)
    and, with return_eager_affi, the K selected affinities [T, K] fp32 in expert_index order.

    - logits = x @ w + b, accumulated in fp64 and rounded to fp32 (a kernel's fp32 PSUM).
    - pre-norm: P = act(logits) over all E; selection score = P (+ selection_bias); weights = P at
      the selected experts.
    - post-norm: selection score = logits (+ selection_bias); weights = softmax over the K selected
      logits, or sigmoid of each.
    - norm_topk_prob divides the K weights by their sum; routed_scaling_factor multiplies them last.
    - selection_bias [E] (DeepSeek-V3 e_score_correction_bias) changes the choice, not the weights.
    - affinities 'selected': expert_affinities holds the K weights at their experts, 0 elsewhere;
      'all' (pre-norm only; AWS's pre-norm pipeline without L1 norm): the activated scores P of all E.
    expert_index is sorted by descending selection score, ties to the lower expert index.
    """
    if affinities not in ("selected", "all") or (affinities == "all" and not router_pre_norm):
        raise ValueError(f"affinities must be 'selected', or 'all' with pre-norm, not {affinities!r}")
    if act_fn not in ROUTER_ACTIVATIONS:
        raise ValueError(f"act_fn must be one of {ROUTER_ACTIVATIONS}, not {act_fn!r}")
    xs = np.asarray(x, dtype=np.float64)
    if x_layout == "ht":
        xs = xs.T
    elif x_layout != "th":
        raise ValueError(f"x_layout must be 'th' or 'ht', not {x_layout!r}")
    logits = xs @ np.asarray(w, dtype=np.float64)
    if w_bias is not None:
        logits = logits + np.asarray(w_bias, dtype=np.float64).reshape(1, -1)
    logits = logits.astype(np.float32)
    lg = logits.astype(np.float64)
    t, e = lg.shape

    probs = (_softmax(lg) if act_fn == "softmax" else _sigmoid(lg)) if router_pre_norm else lg
    choice = probs if selection_bias is None else probs + np.asarray(selection_bias, np.float64).reshape(1, e)
    index = select_experts(choice, k, n_group, topk_group)

    picked = np.take_along_axis(probs, index, axis=1)
    if not router_pre_norm:
        picked = _softmax(picked) if act_fn == "softmax" else _sigmoid(picked)
    if norm_topk_prob:
        picked = picked / np.sum(picked, axis=1, keepdims=True)
    if routed_scaling_factor is not None:
        picked = picked * routed_scaling_factor
    eager = picked.astype(np.float32)
    scattered = np.zeros((t, e), dtype=np.float32)
    np.put_along_axis(scattered, index, eager, axis=1)
    expert_affinities = probs.astype(np.float32) if affinities == "all" else scattered
    if return_eager_affi:
        return logits, index, expert_affinities, eager
    return logits, index, expert_affinities
