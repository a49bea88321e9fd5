"""Router top-K (SEMANTICS section 3), with the seed kernel's argument names plus the modern extras.

Ties are defined: on equal selection keys the lower expert index (or group index) wins and an
expert is never selected twice. Selection uses a stable sort of the negated keys, which gives
exactly that order.

Non-finite scores are defined too (SEMANTICS section 3, docs/routing_semantics.md): top-K ranks
`selection_keys(score)`, where NaN counts as NAN_KEY (the lowest finite fp32 value, below every
number) and every score at or below KEY_FLOOR (the second-lowest finite fp32 value; -inf included)
counts as KEY_FLOOR; +inf stays +inf. So a NaN never wins a slot over a number, a token still gets K
distinct experts in [0, E), and its weights are computed from the raw values (NaN stays NaN).
"""

from __future__ import annotations

import numpy as np

ROUTER_ACTIVATIONS = ("softmax", "sigmoid")
NAN_KEY = float(np.finfo(np.float32).min)  # what a NaN score ranks as: below every number
KEY_FLOOR = float(np.nextafter(np.float32(NAN_KEY), np.float32(0)))  # scores at or below this rank as this


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - np.max(z, axis=-1, keepdims=True)
    e = np.exp(z)
    return e / np.sum(e, axis=-1, keepdims=True)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    ez = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + ez), ez / (1.0 + ez))


def selection_keys(scores: np.ndarray) -> np.ndarray:
    """What top-K ranks instead of the scores [T, E] (fp64): NaN -> NAN_KEY, <= KEY_FLOOR (-inf too)
    -> KEY_FLOOR, everything else (+inf included) unchanged."""
    s = np.asarray(scores, dtype=np.float64)
    return np.where(np.isnan(s), NAN_KEY, np.maximum(s, KEY_FLOOR))


def _top(keys: np.ndarray, k: int) -> np.ndarray:
    """Indices [T, k] of the k largest keys per row (no NaN), descending, ties to the lower index."""
    return np.argsort(-keys, axis=-1, kind="stable")[:, :k]


GROUP_SCORE_RULES = ("top2_sum", "max")


def select_experts(
    scores: np.ndarray,
    k: int,
    n_group: int | None = None,
    topk_group: int | None = None,
    group_score: str = "top2_sum",
) -> np.ndarray:
    """Top-k expert indices [T, k] int32 of selection scores [T, E] (fp64), optionally group-limited.

    The scores are ranked by their selection_keys (NaN below every number). Group-limited: experts split
    into n_group contiguous groups of E/n_group; a group's score is, by `group_score`, 'top2_sum'
    (DeepSeek-V3's noaux_tc): the sum of its two best keys (its only key if groups have one expert), or
    'max' (DeepSeek-V2's group_limited_greedy): its best key; the topk_group
    best groups are kept (ties to the lower group) and the top-k is taken among their experts. Experts
    of dropped groups are excluded outright (HF's DeepSeek-V3 code masks them to 0.0 instead, which
    would let them back in if every kept score were negative).
    """
    keys = selection_keys(scores)
    t, e = keys.shape
    if not 1 <= k <= e:
        raise ValueError(f"k={k} must be in [1, E={e}]")
    if n_group is None or n_group == 1:
        return _top(keys, k).astype(np.int32)
    if topk_group is None or e % n_group or not 1 <= topk_group <= n_group:
        raise ValueError(
            f"group-limited top-K needs E={e} divisible by n_group={n_group} "
            f"and 1 <= topk_group={topk_group} <= n_group"
        )
    if group_score not in GROUP_SCORE_RULES:
        raise ValueError(f"group_score must be one of {GROUP_SCORE_RULES}, not {group_score!r}")
    per = e // n_group
    if k > topk_group * per:
        raise ValueError(f"k={k} exceeds the {topk_group * per} experts of the kept groups")
    grouped = keys.reshape(t, n_group, per)
    best = -np.sort(-grouped, axis=-1)[:, :, : (1 if group_score == "max" else min(2, per))]
    group_values = best.sum(axis=-1)  # fp64: two keys never overflow; a NaN partner only lowers a group
    kept_groups = _top(group_values, topk_group)
    keep = np.zeros((t, n_group), dtype=bool)
    np.put_along_axis(keep, kept_groups, True, axis=1)
    masked = np.where(np.repeat(keep, per, axis=1), keys, -np.inf)
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
    group_score: str = "top2_sum",
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
      the selected experts. Without a selection bias or group limit the logits are ranked instead
      (the activation is increasing: the same experts, without its fp64 saturation ties, as the kernel).
    - post-norm: selection score = logits (+ selection_bias); weights = softmax over the K selected
      logits, or sigmoid of each.
    - norm_topk_prob divides the K weights by their sum; routed_scaling_factor multiplies them last.
    - selection_bias [E] (DeepSeek-V3 e_score_correction_bias) changes the choice, not the weights.
    - n_group / topk_group / group_score: group-limited choice (see `select_experts`).
    - affinities 'selected': expert_affinities holds the K weights at their experts, 0 elsewhere;
      'all' (pre-norm only; AWS's pre-norm pipeline without L1 norm): the activated scores P of all E.
    expert_index is sorted by descending selection key, ties to the lower expert index; NaN / inf
    scores follow the module docstring's rule.
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
    with np.errstate(invalid="ignore", over="ignore"):  # NaN / inf inputs are defined, not warned about
        logits = xs @ np.asarray(w, dtype=np.float64)
        if w_bias is not None:
            logits = logits + np.asarray(w_bias, dtype=np.float64).reshape(1, -1)
        logits = logits.astype(np.float32)
        lg = logits.astype(np.float64)
        t, e = lg.shape

        probs = (_softmax(lg) if act_fn == "softmax" else _sigmoid(lg)) if router_pre_norm else lg
        if selection_bias is not None:
            choice = probs + np.asarray(selection_bias, np.float64).reshape(1, e)
        elif n_group is None or not router_pre_norm:
            choice = lg
        else:
            choice = probs
        index = select_experts(choice, k, n_group, topk_group, group_score)

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
