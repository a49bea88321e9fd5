import numpy as np
import pytest

from moegen.reference.mlp import ExpertMLP, Precision, expert_mlp
from moegen.reference.quant import round_to
from moegen.reference.tkg import moe_tkg

from .conftest import make_moe


def test_selective_by_hand(rng):
    m = make_moe(rng, t=5, e=4, k=2)
    got = moe_tkg(m["x"], m["gu"], m["dn"], m["aff"], m["index"], affinity_scale="post", output_dtype="fp32")
    want = np.zeros_like(got)
    for t in range(5):
        for e in m["index"][t]:
            want[t] += m["aff"][t, e] * expert_mlp(m["x"][t : t + 1], m["gu"][e], m["dn"][e])[0]
    assert np.allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("scale", ["none", "pre", "post"])
def test_selective_equals_masked_all_experts(rng, scale):
    m = make_moe(rng, t=31, e=8, k=3, biases=True)
    kw = dict(
        affinity_scale=scale,
        expert_gate_up_bias=m["gu_bias"],
        expert_down_bias=m["dn_bias"],
        output_dtype="fp32",
        activation_fn="gelu_tanh",
    )
    sel = moe_tkg(m["x"], m["gu"], m["dn"], m["aff"], m["index"], mode="selective", **kw)
    if scale == "none":
        return  # all-experts without scaling sums every expert: a different layer
    allx = moe_tkg(
        m["x"],
        m["gu"],
        m["dn"],
        m["aff"],
        m["index"],
        mode="all_experts",
        rank_id=0,
        mask_unselected_experts=True,
        **kw,
    )
    if scale == "post":
        assert np.allclose(sel, allx, rtol=1e-5, atol=1e-5)
    else:  # PRE_SCALE: an unselected expert still sees x * 0 and adds MLP(0), nonzero with biases
        zero = np.zeros((1, m["x"].shape[1]), np.float32)
        extra = sum(
            expert_mlp(
                zero,
                m["gu"][e],
                m["dn"][e],
                gate_up_bias=m["gu_bias"][e],
                down_bias=m["dn_bias"][e],
                mlp=ExpertMLP(activation="gelu_tanh"),
            )
            for e in range(8)
        )
        per_token_extra = np.array(
            [
                sum(
                    expert_mlp(
                        zero,
                        m["gu"][e],
                        m["dn"][e],
                        gate_up_bias=m["gu_bias"][e],
                        down_bias=m["dn_bias"][e],
                        mlp=ExpertMLP(activation="gelu_tanh"),
                    )[0]
                    for e in row
                )
                for row in m["index"]
            ]
        )
        assert np.allclose(allx, sel + extra - per_token_extra, rtol=1e-5, atol=1e-5)


def test_expert_parallel_ranks_sum_to_full_layer(rng):
    m = make_moe(rng, t=4, e=8, k=2)
    full = moe_tkg(m["x"], m["gu"], m["dn"], m["aff"], m["index"], affinity_scale="post", output_dtype="fp32")
    ranks, e_local = 4, 2
    total = np.zeros_like(full)
    for r in range(ranks):
        w = slice(r * e_local, (r + 1) * e_local)
        part = moe_tkg(
            m["x"],
            m["gu"][w],
            m["dn"][w],
            m["aff"],
            m["index"],
            mode="all_experts",
            rank_id=np.array([[r]], np.int32),
            mask_unselected_experts=True,
            affinity_scale="post",
            output_dtype="fp32",
        )
        sel = moe_tkg(
            m["x"],
            m["gu"][w],
            m["dn"][w],
            m["aff"],
            m["index"],
            mode="selective",
            rank_id=r,
            affinity_scale="post",
            output_dtype="fp32",
        )
        assert np.allclose(part, sel, rtol=1e-5, atol=1e-6)
        total += part
    assert np.allclose(total, full, rtol=1e-5, atol=1e-5)


def test_all_experts_no_scale_sums_every_expert(rng):
    m = make_moe(rng, t=3, e=3, k=1)
    got = moe_tkg(m["x"], m["gu"], m["dn"], m["aff"], m["index"], mode="all_experts", output_dtype="fp32")
    want = sum(expert_mlp(m["x"], m["gu"][e], m["dn"][e]) for e in range(3))
    assert np.allclose(got, want, rtol=1e-5, atol=1e-6)


def test_eager_affinities(rng):
    m = make_moe(rng, t=6, e=4, k=2)
    eager = np.take_along_axis(m["aff"], m["index"].astype(np.int64), axis=1)
    a = moe_tkg(m["x"], m["gu"], m["dn"], m["aff"], m["index"], affinity_scale="post")
    b = moe_tkg(
        m["x"],
        m["gu"],
        m["dn"],
        np.zeros_like(m["aff"]),
        m["index"],
        affinity_scale="post",
        expert_affinities_eager=eager,
    )
    assert np.array_equal(a, b)


def test_output_dtype_and_accumulate(rng):
    m = make_moe(rng, t=8, e=4, k=4)
    bf = moe_tkg(
        m["x"].astype("float32"),
        m["gu"],
        m["dn"],
        m["aff"],
        m["index"],
        affinity_scale="post",
        output_dtype="bf16",
        precision="bf16",
    )
    assert np.array_equal(round_to(bf, "bf16"), bf)
    acc = moe_tkg(
        m["x"],
        m["gu"],
        m["dn"],
        m["aff"],
        m["index"],
        affinity_scale="post",
        output_dtype="bf16",
        precision=Precision(accumulate="bf16"),
    )
    assert np.allclose(acc, bf, rtol=0.05, atol=0.05)


def test_ids_outside_local_experts_need_rank(rng):
    m = make_moe(rng, t=4, e=8, k=2)
    with pytest.raises(ValueError):
        moe_tkg(m["x"], m["gu"][:2], m["dn"][:2], m["aff"], m["index"])
    with pytest.raises(ValueError):
        moe_tkg(m["x"], m["gu"], m["dn"], m["aff"], m["index"], mode="every")
