"""NaN, +inf and -inf logits in every router variant (docs/routing_semantics.md, SEMANTICS section 3).

A NaN score never wins a top-K slot over a number, every token still gets K distinct experts in
[0, E), its weights come from its raw values (a NaN weight stays NaN, in its own expert's column),
and the other tokens are untouched. The kernel must equal the reference: indices exactly, floats
with NaN at the same places and the rest within the output dtype's rounding.

Inputs: the harness's grid inputs with a dedicated hidden coordinate h0 whose router-weight row is a
pattern of +-4, +-0.5 and 0. Token rows: 0 and T-1 are all NaN (every logit NaN; the last one lands
on the second core with LNC=2), 1 and 2 are +-3e38 at h0 only (logits +-inf where |w| = 4, +-1.5e38
where |w| = 0.5, 0 where w = 0), 3 is +inf at h0 only (+-inf, and NaN where w = 0 since inf * 0 is
NaN); the others are ordinary tokens with x[h0] = 0.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pytest

from moegen import sim
from moegen.codegen.build import write
from moegen.compare import compare
from moegen.compiler import generate, load_spec
from moegen.diagnostics import SpecError
from moegen.reference import np_dtype
from moegen.verify import router as harness
from tests.families.support import layer_spec

REPO = Path(__file__).resolve().parents[2]
SEED = 20261206
TOKENS = 7
BIG = 3.0e38  # finite in bf16 and fp32; times 4 overflows the fp32 logit to inf
PATTERN = (4.0, -4.0, 0.5, 4.0, -0.5, 0.0, -4.0, 0.5)


def nonfinite_inputs(plan, tokens: int = TOKENS, *, nan_expert: int | None = None) -> dict[str, np.ndarray]:
    """The module docstring's inputs; nan_expert: also a NaN router weight for that expert (every
    token's logit for it is NaN) instead of the special token rows."""
    inputs = harness.make_inputs(plan, tokens, np.random.default_rng(SEED))
    x = inputs["x"].astype(np.float32)
    x = x if plan.x_layout == "th" else x.T  # [T, H]
    w = inputs["w"].astype(np.float32)
    w[0, :] = np.resize(PATTERN, plan.experts)
    x[:, 0] = 0.0
    if nan_expert is None:
        x[0, :] = np.nan
        x[tokens - 1, :] = np.nan
        for row, value in ((1, BIG), (2, -BIG), (3, np.inf)):
            x[row, :] = 0.0
            x[row, 0] = value
    else:
        w[1, nan_expert] = np.nan
    dtype = np_dtype(plan.in_dtype)
    inputs["x"] = (x if plan.x_layout == "th" else x.T).astype(dtype)
    inputs["w"] = w.astype(dtype)
    return inputs


def assert_same_outputs(plan, got: dict, want: dict) -> None:
    index = got["expert_index"]
    assert index.min() >= 0 and index.max() < plan.experts, index
    ordered = np.sort(index, axis=1)
    assert (ordered[:, 1:] != ordered[:, :-1]).all(), index
    assert (index == want["expert_index"]).all(), (index, want["expert_index"])
    for name in want:
        if name == "expert_index":
            continue
        g, w = got[name].astype(np.float32), want[name].astype(np.float32)
        assert (np.isnan(g) == np.isnan(w)).all(), (name, np.argwhere(np.isnan(g) != np.isnan(w))[:5])
        result = compare(name, g, w, kind=harness.tolerance(plan, name), mask=~np.isnan(w))
        assert result.ok, str(result)


def run(plan, kernel, inputs) -> None:
    got = harness.run(kernel, plan, inputs)
    want = harness.expected(plan, inputs)
    assert_same_outputs(plan, got, want)
    return got, want


# ------------------------------------------------------------------ every router variant of specs/


def spec_router_variants() -> list[tuple[str, str]]:
    found = []
    for path in sorted((REPO / "specs").glob("*.moe")):
        try:
            spec = load_spec(path)
        except SpecError:
            continue
        found += [(path.name, v.name) for v in spec.variants if v.family == "router"]
    return found


@cache
def built(spec_path: str, folder: str):
    """(plans by kernel name, loaded modules by kernel name) of a spec, built into folder once."""
    generated = generate(Path(spec_path))
    out = write(generated, Path(folder))
    plans = {p.kernel_name: p for p in generated.plans if p.family == "router"}
    return plans, {name: sim.load_module(out / f"{name}.py") for name in plans}


@pytest.fixture(scope="module")
def build_root(tmp_path_factory):
    built.cache_clear()
    yield tmp_path_factory.mktemp("router_nonfinite")
    built.cache_clear()


def spec_kernel(build_root, spec_path: Path, kernel: str):
    plans, modules = built(str(spec_path), str(build_root / spec_path.stem))
    return plans[kernel], getattr(modules[kernel], kernel)


@pytest.mark.parametrize("spec, kernel", spec_router_variants())
def test_spec_router_variant_routes_nan_and_inf_tokens(build_root, spec, kernel):
    plan, fn = spec_kernel(build_root, REPO / "specs" / spec, kernel)
    got, want = run(plan, fn, nonfinite_inputs(plan))
    # the all-NaN tokens take the K lowest experts of the kept groups (all keys tie at the NaN key)
    if plan.n_group is None:
        assert (got["expert_index"][[0, TOKENS - 1]] == np.arange(plan.top_k)).all()
    # affinities=all stores the activated scores of every expert: a NaN row's are all NaN
    nan_affinities = plan.experts if plan.affinities == "all" else plan.top_k
    assert np.isnan(got["expert_affinities"][0]).sum() == nan_affinities


# ------------------------------------------------------------------ inline variants: K > 8, E < 8, groups


def inline(build_root, name: str, *, experts: int, top_k: int, router: str, options: str = "", dtype="bf16"):
    text = layer_spec(
        f"kernel route : router {{ {options} }}",
        hidden=160,
        intermediate=128,
        experts=experts,
        top_k=top_k,
        router=router,
        dtype=dtype,
    )
    path = build_root / f"{name}.moe"
    path.write_text(text.replace("moe t {", f"moe {name} {{"))
    return spec_kernel(build_root, path, "route")


INLINE = {
    "k10_post_softmax_onehot": dict(experts=32, top_k=10, router="linear -> topk -> softmax", options="eager"),
    "k16_pre_sigmoid_dma": dict(
        experts=16, top_k=16, router="linear -> sigmoid -> topk -> renormalize", options="scatter=dma eager"
    ),
    "e4_pre_softmax_padded": dict(
        experts=4, top_k=3, router="linear -> softmax -> topk", options="scatter=dma affinities=selected"
    ),
    "groups_softmax_ht_lnc2": dict(
        experts=16,
        top_k=3,
        router="linear -> softmax -> group_limit(groups=4, keep=2, score=max) -> topk",
        options="layout=ht lnc=2 eager",
    ),
    "bias_groups_k9_fp32": dict(
        experts=64,
        top_k=9,
        router="linear(bias) -> sigmoid -> select_bias -> group_limit(groups=8, keep=3, score=top2_sum) -> topk -> scale(2.5)",
        options="eager",
        dtype="fp32",
    ),
}


@pytest.mark.parametrize("name", INLINE)
def test_inline_router_variant_routes_nan_and_inf_tokens(build_root, name):
    plan, fn = inline(build_root, name, **INLINE[name])
    run(plan, fn, nonfinite_inputs(plan))


@pytest.mark.parametrize(
    "name", ["k10_post_softmax_onehot", "k16_pre_sigmoid_dma", "groups_softmax_ht_lnc2", "bias_groups_k9_fp32"]
)
def test_a_nan_expert_never_wins_while_a_number_is_left(build_root, name):
    """w[1, 5] = NaN: every token's logit (and score) for expert 5 is NaN; it is chosen only when the
    token has fewer than K other experts to choose from, and last."""
    plan, fn = inline(build_root, name, **INLINE[name])
    got, _ = run(plan, fn, nonfinite_inputs(plan, nan_expert=5))
    index = got["expert_index"]
    if plan.top_k < plan.experts and plan.n_group is None:
        assert (index != 5).all()
    if plan.top_k == plan.experts:
        assert (index[:, -1] == 5).all()


def test_post_norm_inf_logits_win_ties_go_to_the_lower_expert(build_root):
    """Token 1's logits are +inf at the experts whose pattern weight is +4 (0, 3, 8, 11, ...): they come
    first, lowest index first; token 2's +inf are at the -4 experts (1, 6, 9, ...)."""
    plan, fn = inline(build_root, "k10_post_softmax_onehot", **INLINE["k10_post_softmax_onehot"])
    got, _ = run(plan, fn, nonfinite_inputs(plan))
    plus = [e for e in range(plan.experts) if PATTERN[e % len(PATTERN)] == 4.0]
    minus = [e for e in range(plan.experts) if PATTERN[e % len(PATTERN)] == -4.0]
    assert got["expert_index"][1, : len(plus)].tolist() == plus[: plan.top_k]
    assert got["expert_index"][2, : len(minus)].tolist() == minus[: plan.top_k]


# ------------------------------------------------------------------ end to end: router -> tkg


def test_a_nan_token_poisons_only_its_own_tkg_output_row(build_root):
    """The router's ids for a NaN token are valid, so the selective tkg kernel runs the whole batch: the
    NaN token's output row is NaN, every other row equals the reference (before: expert 2147483647
    failed the tkg call for every token)."""
    from moegen.verify import tkg as tkg_harness

    text = layer_spec(
        "kernel route : router { }\n  kernel decode : tkg { }",
        hidden=128,
        intermediate=128,
        experts=8,
        top_k=2,
        router="linear -> softmax -> topk -> renormalize",
        expert="gate_up -> silu -> down -> scale",
    )
    path = build_root / "end_to_end.moe"
    path.write_text(text)
    generated = generate(path)
    folder = write(generated, build_root / "end_to_end")
    plans = {p.kernel_name: p for p in generated.plans}
    route = sim.load_module(folder / "route.py").route
    decode = sim.load_module(folder / "decode.py").decode

    inputs = tkg_harness.make_inputs(plans["decode"], 5, np.random.default_rng(SEED))
    hidden = inputs["hidden_input"].astype(np.float32)
    hidden[2, 7] = np.nan
    inputs["hidden_input"] = hidden.astype(inputs["hidden_input"].dtype)
    router_inputs = harness.make_inputs(plans["route"], 5, np.random.default_rng(SEED))
    routed = harness.run(route, plans["route"], dict(router_inputs, x=inputs["hidden_input"]))
    assert routed["expert_index"][2].tolist() == [0, 1]
    inputs["expert_index"] = routed["expert_index"]
    inputs["expert_affinities"] = routed["expert_affinities"]

    got = tkg_harness.run(decode, plans["decode"], inputs)["output"]
    want = tkg_harness.expected(plans["decode"], inputs)["output"]
    assert np.isnan(got[2]).all()
    others = np.ones(got.shape, bool)
    others[2] = False
    result = compare("output", got, want, kind=tkg_harness.tolerance(plans["decode"], "output"), mask=others)
    assert result.ok, str(result)
