import math

import numpy as np
import pytest

from moegen.reference.router import router_topk, select_experts


def brute_router(x, w, b, *, act_fn, k, pre_norm, norm, sel_bias=None, n_group=None, topk_group=None, scale=None):
    """Token-by-token loops with Python sorting: an independent statement of the same rules."""
    logits = (
        np.asarray(x, np.float64) @ np.asarray(w, np.float64)
        + (0 if b is None else np.asarray(b, np.float64).reshape(-1))
    ).astype(np.float32)
    t, e = logits.shape
    index = np.zeros((t, k), np.int32)
    aff = np.zeros((t, e), np.float32)
    for i in range(t):
        row = [float(v) for v in logits[i]]
        if pre_norm:
            if act_fn == "softmax":
                m = max(row)
                ex = [math.exp(v - m) for v in row]
                probs = [v / sum(ex) for v in ex]
            else:
                probs = [1 / (1 + math.exp(-v)) for v in row]
        else:
            probs = row
        choice = [p + (0.0 if sel_bias is None else float(sel_bias[j])) for j, p in enumerate(probs)]
        candidates = list(range(e))
        if n_group:
            per = e // n_group
            gscore = [sum(sorted(choice[g * per : (g + 1) * per], reverse=True)[:2]) for g in range(n_group)]
            kept = sorted(range(n_group), key=lambda g: (-gscore[g], g))[:topk_group]
            candidates = [j for j in range(e) if j // per in kept]
        picked = sorted(candidates, key=lambda j: (-choice[j], j))[:k]
        vals = [probs[j] for j in picked]
        if not pre_norm:
            if act_fn == "softmax":
                m = max(vals)
                ex = [math.exp(v - m) for v in vals]
                vals = [v / sum(ex) for v in ex]
            else:
                vals = [1 / (1 + math.exp(-v)) for v in vals]
        if norm:
            s = sum(vals)
            vals = [v / s for v in vals]
        if scale:
            vals = [v * scale for v in vals]
        index[i] = picked
        aff[i, picked] = vals
    return logits, index, aff


def test_hand_computed_softmax_post_norm():
    x = np.array([[1.0, 0.0]], np.float32)
    w = np.array([[0.0, 2.0, 1.0, 2.0 + math.log(3.0)], [5.0, 5.0, 5.0, 5.0]], np.float32)
    logits, index, aff, eager = router_topk(
        x, w, None, act_fn="softmax", k=2, router_pre_norm=False, return_eager_affi=True
    )
    assert index.tolist() == [[3, 1]]
    assert np.allclose(eager, [[0.75, 0.25]])
    assert np.allclose(aff, [[0, 0.25, 0, 0.75]])
    assert logits.dtype == np.float32 and index.dtype == np.int32


def test_ties_never_repeat_an_expert():
    # every logit equal: indices 0..K-1, each expert once, equal weights
    x = np.ones((3, 4), np.float32)
    w = np.ones((4, 8), np.float32)
    for pre in (True, False):
        for act in ("softmax", "sigmoid"):
            _, index, aff = router_topk(x, w, None, act_fn=act, k=4, router_pre_norm=pre, norm_topk_prob=True)
            assert index.tolist() == [[0, 1, 2, 3]] * 3
            assert np.allclose(aff[:, :4], 0.25) and np.all(aff[:, 4:] == 0)
    # a repeated maximum: experts 2 and 5 tie for first, 1 and 6 for third
    w = np.array([[0, 1, 3, 0, 0, 3, 1, 0]], np.float32)
    _, index, _ = router_topk(np.ones((1, 1), np.float32), w, None, act_fn="softmax", k=4)
    assert index.tolist() == [[2, 5, 1, 6]]


def test_layout_and_bias():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 16)).astype(np.float32)
    w = rng.standard_normal((16, 8)).astype(np.float32)
    b = rng.standard_normal((1, 8)).astype(np.float32)
    a = router_topk(x, w, b, act_fn="softmax", k=2)
    c = router_topk(x.T.copy(), w, b.reshape(-1), act_fn="softmax", k=2, x_layout="ht")
    for u, v in zip(a, c):
        assert np.array_equal(u, v)
    assert np.allclose(a[0], x.astype(np.float64) @ w + b, rtol=1e-6)


def test_selection_bias_changes_choice_not_weights():
    logits_w = np.array([[0.0, 0.1, 0.2, 0.3]], np.float32)
    bias = np.array([1.0, 0.0, 0.0, 0.0])
    _, index, aff = router_topk(np.ones((1, 1), np.float32), logits_w, None, act_fn="sigmoid", k=2, selection_bias=bias)
    assert index.tolist() == [[0, 3]]
    assert np.allclose(aff[0, [0, 3]], [0.5, 1 / (1 + math.exp(-0.3))])


@pytest.mark.parametrize(
    "case",
    [
        dict(act_fn="softmax", k=2, pre_norm=False, norm=False),  # Mixtral
        dict(act_fn="softmax", k=8, pre_norm=True, norm=True),  # Qwen3-MoE
        dict(act_fn="sigmoid", k=8, pre_norm=True, norm=True, sel=True, n_group=8, topk_group=4, scale=2.5),
        dict(act_fn="sigmoid", k=1, pre_norm=False, norm=False),  # Llama 4
        dict(act_fn="softmax", k=16, pre_norm=True, norm=True),  # K beyond 8
        dict(act_fn="sigmoid", k=10, pre_norm=True, norm=False, n_group=4, topk_group=3),
        dict(act_fn="softmax", k=3, pre_norm=False, norm=True, sel=True, n_group=64, topk_group=4),  # 1/group
    ],
)
def test_against_brute_force(case):
    rng = np.random.default_rng(7)
    t, h, e = 40, 32, 64
    x = rng.standard_normal((t, h)).astype(np.float32)
    w = rng.standard_normal((h, e)).astype(np.float32)
    b = rng.standard_normal(e).astype(np.float32) * 0.1
    # quantized logits make ties frequent: the tie rules are exercised, not just random order
    w = np.round(w * 2) / 2
    x = np.round(x)
    sel = rng.standard_normal(e) * 0.05 if case.get("sel") else None
    got = router_topk(
        x,
        w,
        b,
        act_fn=case["act_fn"],
        k=case["k"],
        router_pre_norm=case["pre_norm"],
        norm_topk_prob=case["norm"],
        selection_bias=sel,
        n_group=case.get("n_group"),
        topk_group=case.get("topk_group"),
        routed_scaling_factor=case.get("scale"),
    )
    want = brute_router(
        x,
        w,
        b,
        act_fn=case["act_fn"],
        k=case["k"],
        pre_norm=case["pre_norm"],
        norm=case["norm"],
        sel_bias=sel,
        n_group=case.get("n_group"),
        topk_group=case.get("topk_group"),
        scale=case.get("scale"),
    )
    assert np.array_equal(got[0], want[0])
    assert np.array_equal(got[1], want[1])
    assert np.allclose(got[2], want[2], rtol=1e-6, atol=1e-7)
    assert np.all(np.sort(got[1], axis=1)[:, 1:] != np.sort(got[1], axis=1)[:, :-1])


def test_group_limit_excludes_dropped_groups():
    # groups {0,1} {2,3}; group 1 has the best single expert but the worse top-2 sum
    w = np.array([[0.6, 0.6, 0.9, 0.0]], np.float32)
    _, index, _ = router_topk(np.ones((1, 1), np.float32), w, None, act_fn="sigmoid", k=2, n_group=2, topk_group=1)
    assert index.tolist() == [[0, 1]]


def test_group_score_rules_differ_where_the_best_expert_and_the_top2_sum_disagree():
    """Same input as above: DeepSeek-V2's rule (group score = its best expert) keeps group {2,3}."""
    w = np.array([[0.6, 0.6, 0.9, 0.0]], np.float32)
    x = np.ones((1, 1), np.float32)
    _, index, _ = router_topk(x, w, None, act_fn="sigmoid", k=2, n_group=2, topk_group=1, group_score="max")
    assert index.tolist() == [[2, 3]]
    with pytest.raises(ValueError, match="group_score"):
        router_topk(x, w, None, act_fn="sigmoid", k=2, n_group=2, topk_group=1, group_score="sum")


def test_invalid_arguments():
    x = np.ones((1, 4), np.float32)
    w = np.ones((4, 8), np.float32)
    with pytest.raises(ValueError):
        router_topk(x, w, None, act_fn="softmax", k=9)
    with pytest.raises(ValueError):
        router_topk(x, w, None, act_fn="softmax", k=4, n_group=4, topk_group=1)  # only 2 experts kept
    with pytest.raises(ValueError):
        router_topk(x, w, None, act_fn="relu", k=1)


# ------------------------------------------------------------------ NaN and inf scores (docs/routing_semantics.md)


def test_selection_keys_put_nan_below_every_number_and_keep_plus_inf():
    from moegen.reference.router import KEY_FLOOR, NAN_KEY, selection_keys

    keys = selection_keys(np.array([[np.nan, -np.inf, NAN_KEY, 0.0, np.inf]]))
    assert keys.tolist() == [[NAN_KEY, KEY_FLOOR, KEY_FLOOR, 0.0, np.inf]]
    assert NAN_KEY == float(np.finfo(np.float32).min) and NAN_KEY < KEY_FLOOR < -3.4e38


@pytest.mark.parametrize("pre_norm", [True, False])
@pytest.mark.parametrize("act_fn", ["softmax", "sigmoid"])
def test_nan_logits_never_win_and_inf_logits_rank_as_values(pre_norm, act_fn):
    """Expert 1's logit is NaN, expert 3's -inf, expert 2's +inf: the +inf comes first, the NaN last."""
    w = np.zeros((1, 5), np.float32)
    w[0] = [1.0, np.nan, np.inf, -np.inf, 2.0]
    x = np.ones((1, 1), np.float32)
    _, index, aff = router_topk(x, w, None, act_fn=act_fn, k=5, router_pre_norm=pre_norm)
    assert index.tolist() == [[2, 4, 0, 3, 1]]
    assert np.isnan(aff[0, 1])  # a NaN logit gives a NaN weight, in its own column


def test_an_all_nan_token_gets_the_lowest_experts_and_others_are_untouched():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 8)).astype(np.float32)
    w = rng.standard_normal((8, 6)).astype(np.float32)
    x[1] = np.nan
    _, index, aff = router_topk(x, w, None, act_fn="softmax", k=2, router_pre_norm=False)
    _, clean_index, clean_aff = router_topk(x[[0, 2]], w, None, act_fn="softmax", k=2, router_pre_norm=False)
    assert index[1].tolist() == [0, 1]
    assert np.isnan(aff[1, :2]).all() and (aff[1, 2:] == 0).all()
    assert (index[[0, 2]] == clean_index).all() and (aff[[0, 2]] == clean_aff).all()


def test_group_limit_with_nan_scores_keeps_k_distinct_in_range_experts():
    scores = np.full((2, 8), np.nan)
    scores[1, 5] = 0.5  # one number: its group wins, then it wins
    index = select_experts(scores, 3, n_group=4, topk_group=2)
    assert index[0].tolist() == [0, 1, 2]
    assert index[1].tolist()[0] == 5 and len(set(index[1].tolist())) == 3
    assert ((index >= 0) & (index < 8)).all()
