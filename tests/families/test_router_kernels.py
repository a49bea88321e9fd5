"""Router kernels generated from inline specs, run in the simulator, compared with the reference.

Indices must equal the reference exactly; logits and affinities per element within the output
dtype's rounding. The fast sweep is a pairwise cover of T x E x K x layout x scatter x norm x
activation x LNC (checked by test_fast_sweep_is_pairwise); the full cross product is `slow`.
"""

from __future__ import annotations

import itertools
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from moegen.codegen.build import write
from moegen.compare import compare
from moegen.compiler import generate, load_spec
from moegen.diagnostics import SpecError
from moegen.verify import router as harness
from tests.families.support import build_spec, layer_spec

REPO = Path(__file__).resolve().parents[2]
SEED = 20261123


def router_spec(
    *,
    hidden: int = 256,
    experts: int = 16,
    top_k: int = 2,
    router: str = "linear -> topk -> softmax",
    kernels: str = "kernel route : router { }",
    dtype: str = "bf16",
) -> str:
    return layer_spec(
        kernels, hidden=hidden, intermediate=128, experts=experts, top_k=top_k, dtype=dtype, router=router
    )


_BUILD_DIR: list[Path] = []


@cache
def build(text: str):
    """(GeneratedSpec, {kernel name: loaded module}) for a spec text; built once per test session."""
    return build_spec(text, _BUILD_DIR[0])


@pytest.fixture(scope="module", autouse=True)
def build_dir(tmp_path_factory):
    _BUILD_DIR[:] = [tmp_path_factory.mktemp("router_builds")]
    build.cache_clear()
    built_spec.cache_clear()
    yield
    build.cache_clear()
    built_spec.cache_clear()


def run_kernel(text: str, kernel: str, tokens: int, *, seed: int = SEED, ties: bool = False, inputs=None):
    """(plan, inputs, kernel outputs, reference outputs)."""
    generated, modules = build(text)
    plan = next(p for p in generated.plans if p.kernel_name == kernel)
    if inputs is None:
        inputs = harness.make_inputs(plan, tokens, np.random.default_rng(seed), ties=ties)
    got = harness.run(getattr(modules[kernel], kernel), plan, inputs)
    want = harness.expected(plan, inputs)
    return plan, inputs, got, want


def assert_matches(text: str, kernel: str = "route", tokens: int = 7, **kwargs) -> None:
    plan, _, got, want = run_kernel(text, kernel, tokens, **kwargs)
    assert set(got) == set(want), (sorted(got), sorted(want))
    for name in want:
        result = compare(name, got[name], want[name], kind=harness.tolerance(plan, name))
        assert result.ok, f"{kernel} T={tokens}: {result}"


# ------------------------------------------------------------------ the sweep

PIPELINES = {
    ("softmax", "post"): "linear -> topk -> softmax",
    ("softmax", "pre"): "linear -> softmax -> topk -> renormalize",
    ("sigmoid", "post"): "linear -> topk -> sigmoid",
    ("sigmoid", "pre"): "linear -> sigmoid -> topk",
}
DOMAINS = {
    "tokens": (1, 7, 128, 129, 300),
    "experts": (8, 16, 128, 256, 512),
    "top_k": (1, 2, 4, 8, 10, 16),
    "layout": ("th", "ht"),
    "scatter": ("onehot", "dma"),
    "norm": ("pre", "post"),
    "act": ("softmax", "sigmoid"),
    "lnc": (1, 2),
}


def valid(case: dict) -> bool:
    return case["top_k"] <= case["experts"]


def all_cases() -> list[dict]:
    names = list(DOMAINS)
    return [c for c in (dict(zip(names, values)) for values in itertools.product(*DOMAINS.values())) if valid(c)]


def _pairs(case: dict) -> set:
    items = sorted(case.items())
    return {(a, b) for a, b in itertools.combinations(items, 2)}


def pairwise_cases() -> list[dict]:
    """A small set of valid cases covering every valid pair of option values (greedy, deterministic)."""
    cases = all_cases()
    pair_sets = [_pairs(case) for case in cases]
    bit = {pair: i for i, pair in enumerate(sorted(set().union(*pair_sets), key=repr))}
    masks = [sum(1 << bit[pair] for pair in pairs) for pairs in pair_sets]  # pair sets as bit masks
    needed = (1 << len(bit)) - 1
    chosen = []
    while needed:
        best = max(range(len(cases)), key=lambda i: (masks[i] & needed).bit_count())
        chosen.append(cases[best])
        needed &= ~masks[best]
    return chosen


def sweep_spec(case: dict) -> str:
    hidden = 192 if case["layout"] == "ht" else 256  # 192 = 128 + 64: a partial contraction tile
    options = f"layout={case['layout']} scatter={case['scatter']} lnc={case['lnc']}"
    if (case["act"], case["norm"]) == ("sigmoid", "pre"):
        options += " affinities=selected"  # the scattered form, so that both scatters are swept (all: below)
    return router_spec(
        hidden=hidden,
        experts=case["experts"],
        top_k=case["top_k"],
        router=PIPELINES[(case["act"], case["norm"])],
        kernels=f"kernel route : router {{ {options} }}",
    )


def case_id(case: dict) -> str:
    return "-".join(f"{k}{v}" if isinstance(v, int) else str(v) for k, v in case.items()).replace("tokens", "T")


FAST_CASES = pairwise_cases()


def test_fast_sweep_is_pairwise():
    covered = set().union(*(_pairs(c) for c in FAST_CASES))
    assert all(_pairs(c) <= covered for c in all_cases())
    assert len(FAST_CASES) <= 40


@pytest.mark.parametrize("case", FAST_CASES, ids=case_id)
def test_router_matches_reference(case):
    assert_matches(sweep_spec(case), tokens=case["tokens"])


@pytest.mark.slow
@pytest.mark.parametrize("case", all_cases(), ids=case_id)
def test_router_matches_reference_full_product(case):
    assert_matches(sweep_spec(case), tokens=case["tokens"])


# ------------------------------------------------------------------ ties


def test_equal_logits_pick_the_lowest_experts_once_each():
    """w = 0: every logit of every token is 0; experts 0..K-1 win, each once, K = 10 spans two max8 rounds."""
    text = router_spec(
        experts=16, top_k=10, router="linear -> topk -> softmax", kernels="kernel route : router { eager }"
    )
    generated, _ = build(text)
    plan = generated.plans[0]
    rng = np.random.default_rng(SEED)
    inputs = harness.make_inputs(plan, 5, rng)
    inputs["w"] = np.zeros_like(inputs["w"])
    _, _, got, _ = run_kernel(text, "route", 5, inputs=inputs)
    assert (got["expert_index"] == np.arange(10, dtype=np.int32)).all()
    np.testing.assert_allclose(got["expert_affinities_eager"].astype(np.float32), 0.1, rtol=2**-7)
    affinities = got["expert_affinities"].astype(np.float32)
    np.testing.assert_allclose(affinities[:, :10], 0.1, rtol=2**-7)
    assert (affinities[:, 10:] == 0).all()


@pytest.mark.parametrize(
    "router", ["linear -> topk -> softmax", "linear -> softmax -> topk -> renormalize", "linear -> sigmoid -> topk"]
)
@pytest.mark.parametrize("scatter", ["onehot", "dma"])
def test_repeated_scores_match_the_reference(router, scatter):
    """Each expert's w column is one of E/4 columns: many tokens have equal scores for several experts."""
    options = f"scatter={scatter}" + (" affinities=selected" if router.endswith("-> topk") else "")
    text = router_spec(experts=32, top_k=8, router=router, kernels=f"kernel route : router {{ {options} }}")
    plan, inputs, got, want = run_kernel(text, "route", 40, ties=True)
    logits = harness.expected(plan, inputs)["router_logits"]
    tied_rows = [t for t in range(40) if len(np.unique(logits[t])) < 32]
    assert len(tied_rows) == 40  # the data really has ties
    for row in got["expert_index"]:
        assert len(set(row.tolist())) == 8
    assert (got["expert_index"] == want["expert_index"]).all()
    assert compare("expert_affinities", got["expert_affinities"], want["expert_affinities"], kind="bf16").ok


def test_ties_across_two_rounds_of_eight():
    """K = 10: the second max8 round reads the row after nc_match_replace8 removed the first 8 columns.
    Each round finds its 8 columns with one nc_find_index8 whose vals repeat a tied value: NKI 0.6 pairs
    the repetitions with successive occurrences in ascending order (nki_api NOTES, section 4), so the lower
    expert comes first and no expert is taken twice, across the round boundary too."""
    text = router_spec(
        experts=32,
        top_k=10,
        router="linear -> softmax -> topk -> renormalize",
        kernels="kernel route : router { scatter=dma }",
    )
    plan, _, got, want = run_kernel(text, "route", 20, ties=True)
    for row in got["expert_index"]:
        assert len(set(row.tolist())) == 10
    assert (got["expert_index"] == want["expert_index"]).all()
    assert compare("expert_affinities", got["expert_affinities"], want["expert_affinities"], kind="bf16").ok


# ------------------------------------------------------------------ modern routers


@pytest.mark.parametrize(
    ("experts", "router", "options"),
    [
        (16, "linear -> softmax -> topk -> renormalize", "eager"),
        (256, "linear -> topk -> softmax", "skip_logits"),
        (256, "linear -> topk -> softmax", "scatter=dma"),
        (64, "linear -> sigmoid -> topk -> renormalize", "eager skip_logits"),
        (64, "linear -> sigmoid -> topk -> renormalize", "layout=ht eager"),
    ],
)
def test_routing_groups_of_full_tiles_then_the_partial_tile(experts, router, options):
    """T = 5 x 128 + 3: full tiles are routed in groups of up to 4 (2 for E = 256, whose logits fill a
    PSUM bank in 2 tiles; 1 for layout ht and for scatter=dma), the last group holds fewer tiles and the partial
    tile is routed alone; partition p of a group's tile u holds token t0 + p * tiles + u, and every output row
    lands at its own token."""
    text = router_spec(experts=experts, top_k=8, router=router, kernels=f"kernel route : router {{ {options} }}")
    plan = next(p for p in build(text)[0].plans if p.kernel_name == "route")
    assert plan.route_group == (1 if "ht" in options or "dma" in options else 2 if experts == 256 else 4)
    assert_matches(text, tokens=5 * 128 + 3)


def test_deepseek_style_group_limit_selection_bias_and_scaling():
    """sigmoid, selection bias, 8 groups keep 3, top-6 of 64, renormalised, scaled 2.5, LNC=2, odd T."""
    text = router_spec(
        experts=64,
        top_k=6,
        router="linear -> sigmoid -> select_bias -> group_limit(groups=8, keep=3, score=top2_sum) -> topk -> renormalize -> scale(2.5)",
        kernels="kernel route : router { lnc=2 eager }",
    )
    assert_matches(text, tokens=131)


def test_group_limit_with_small_groups_and_no_selection_bias():
    """16 experts in 4 groups of 4 (max8 rows padded to 8), keep 2, top-3, softmax pre-norm."""
    text = router_spec(
        experts=16, top_k=3, router="linear -> softmax -> group_limit(groups=4, keep=2, score=top2_sum) -> topk"
    )
    assert_matches(text, tokens=9)


def _published_group_limited_topk(scores: np.ndarray, n_group: int, topk_group: int, k: int, rule: str):
    """The published HF MoEGate selection, written out independently of moegen.reference.

    DeepSeek-V2 (topk_method group_limited_greedy): group score = max of the group; DeepSeek-V3
    (noaux_tc): sum of the group's top-2. Kept groups by top-k of group scores, experts of the other
    groups masked to 0.0, then top-k over all experts (scores here are softmax probabilities > 0, so
    masking to 0 equals excluding them).
    """
    t, e = scores.shape
    grouped = scores.reshape(t, n_group, e // n_group)
    ordered = np.sort(grouped, axis=-1)[:, :, ::-1]
    group_scores = ordered[:, :, 0] if rule == "max" else ordered[:, :, 0] + ordered[:, :, 1]
    kept = np.argsort(-group_scores, axis=-1, kind="stable")[:, :topk_group]
    mask = np.zeros((t, n_group), bool)
    np.put_along_axis(mask, kept, True, axis=1)
    masked = np.where(np.repeat(mask, e // n_group, axis=1), scores, 0.0)
    return np.sort(np.argsort(-masked, axis=-1, kind="stable")[:, :k], axis=-1)


@pytest.mark.parametrize("rule", ["max", "top2_sum"])
def test_group_score_rule_matches_the_published_definition(rule):
    """DeepSeek-V2 ranks groups by their best expert, V3 by the sum of the top two: the kernel follows the
    rule the spec names, checked against the published definition (not only our reference), on inputs
    where the two rules choose different experts."""
    experts, groups, keep, top_k, tokens = 32, 8, 2, 3, 40
    text = router_spec(
        experts=experts,
        top_k=top_k,
        router=f"linear -> softmax -> group_limit(groups={groups}, keep={keep}, score={rule}) -> topk",
    )
    _, inputs, got, want = run_kernel(text, "route", tokens)
    logits = inputs["x"].astype(np.float64) @ inputs["w"].astype(np.float64)
    scores = np.exp(logits - logits.max(axis=-1, keepdims=True))
    scores /= scores.sum(axis=-1, keepdims=True)
    published = {r: _published_group_limited_topk(scores, groups, keep, top_k, r) for r in ("max", "top2_sum")}
    assert (published["max"] != published["top2_sum"]).any(), "the inputs must tell the two rules apart"
    assert (np.sort(got["expert_index"], axis=-1) == published[rule]).all()
    assert (got["expert_index"] == want["expert_index"]).all()


def test_group_score_max_allows_one_expert_groups():
    """With score=max a group of one expert is meaningful (its score is that expert's): not refused."""
    text = router_spec(
        experts=16, top_k=2, router="linear -> sigmoid -> group_limit(groups=16, keep=4, score=max) -> topk"
    )
    assert_matches(text, tokens=5)


def test_selection_bias_chooses_but_does_not_weigh():
    """A huge bias on expert 5 makes every token choose it; its weight is still its own sigmoid score."""
    text = router_spec(
        experts=16,
        top_k=2,
        router="linear -> sigmoid -> select_bias -> topk",
        kernels="kernel route : router { eager }",
    )
    generated, _ = build(text)
    plan = generated.plans[0]
    inputs = harness.make_inputs(plan, 6, np.random.default_rng(SEED))
    inputs["selection_bias"] = np.zeros(16, np.float32)
    inputs["selection_bias"][5] = 100.0
    _, _, got, want = run_kernel(text, "route", 6, inputs=inputs)
    assert (got["expert_index"][:, 0] == 5).all()
    logits = want["router_logits"].astype(np.float32)
    np.testing.assert_allclose(
        got["expert_affinities_eager"][:, 0].astype(np.float32), 1 / (1 + np.exp(-logits[:, 5])), rtol=2**-7
    )
    assert (got["expert_index"] == want["expert_index"]).all()


@pytest.mark.parametrize("experts, top_k", [(1, 1), (4, 3)])
def test_fewer_than_eight_experts_pad_the_max8_row(experts, top_k):
    text = router_spec(
        experts=experts,
        top_k=top_k,
        router="linear -> softmax -> topk",
        kernels="kernel route : router { scatter=dma eager affinities=selected }",
    )
    assert_matches(text, tokens=5)


@pytest.mark.parametrize("tokens", [9, 40])  # layout th: x.T by one DMA below 32 tokens, on the PE array from 32
@pytest.mark.parametrize("hidden", [96, 2880])  # below one tile; GPT-OSS's 22 x 128 + 64
@pytest.mark.parametrize("layout", ["th", "ht"])
def test_hidden_not_a_multiple_of_128(hidden, layout, tokens):
    text = router_spec(
        hidden=hidden,
        experts=32,
        top_k=4,
        router="linear(bias) -> topk -> softmax",
        kernels=f"kernel route : router {{ layout={layout} }}",
    )
    assert_matches(text, tokens=tokens)


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_token_rows_transposed_on_the_pe_array(dtype):
    """Layout th: 160 tokens = a 128-token tile and a 32-token tile, both transposed on the PE array, in fp32
    (4 H tiles per PSUM transpose group) and fp16 (8), over more H tiles than one group holds."""
    text = router_spec(hidden=1280, experts=16, top_k=2, dtype=dtype, kernels="kernel route : router { layout=th }")
    assert_matches(text, tokens=160)


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "in=bf16 out=fp32"])
def test_other_dtypes_with_bias_and_row_layout(dtype):
    text = router_spec(
        hidden=384,
        experts=24,
        top_k=3,
        router="linear(bias) -> topk -> softmax",
        dtype=dtype,
        kernels="kernel route : router { layout=ht eager }",
    )
    assert_matches(text, tokens=33)


@pytest.mark.parametrize("options", ["skip_logits", "eager skip_logits scatter=dma lnc=2"])
def test_optional_outputs(options):
    text = router_spec(experts=16, top_k=4, kernels=f"kernel route : router {{ {options} }}")
    plan, _, got, _ = run_kernel(text, "route", 7)
    assert "router_logits" not in got
    assert ("expert_affinities_eager" in got) == ("eager" in options)
    assert_matches(text, tokens=7)


# ------------------------------------------------------------------ plans (no simulator)


def spec_plan(name: str):
    return next(p for p in generate(REPO / "specs" / f"{name}.moe").plans if p.family == "router")


def test_plan_of_gpt_oss_splits_hidden_into_22_tiles_and_a_64_row_rest():
    plan = spec_plan("gpt_oss_120b")
    assert (plan.h_tiles, plan.h_rest) == (22, 64)
    assert (plan.experts, plan.top_k, plan.act, plan.pre_norm, plan.w_bias) == (128, 4, "softmax", False, True)


def test_plan_ranks_logits_unless_the_choice_needs_activated_scores():
    assert spec_plan("qwen3_30b_a3b").select_on == "logits"  # softmax is increasing
    deepseek = spec_plan("deepseek_v3")
    assert (deepseek.select_on, deepseek.weights_from) == ("scores", "scores")
    assert (deepseek.n_group, deepseek.topk_group, deepseek.group_size, deepseek.scaling_factor) == (8, 4, 32, 2.5)


def test_variant_overrides_of_the_pipeline_are_explained():
    plan = next(
        p for p in generate(REPO / "specs" / "router_seed_matrix.moe").plans if p.kernel_name == "ht_dma_post_lnc2"
    )
    assert (plan.pre_norm, plan.renormalize, plan.lnc, plan.scatter, plan.x_layout) == (False, False, 2, "dma", "ht")
    assert "overrides the spec's router with norm=post renormalize=no" in dict(plan.decisions)["pipeline"]


# ------------------------------------------------------------------ refused at spec time


@pytest.mark.parametrize(
    "text, message",
    [
        (router_spec(experts=1024, top_k=2), "experts 1024: at most 512"),
        (router_spec(experts=64, top_k=17), "top_k 17: at most 16"),
        (router_spec(experts=8, top_k=9), "top_k 9: a token cannot pick more than the 8 experts"),
        (
            router_spec(
                experts=16,
                top_k=2,
                router="linear -> sigmoid -> group_limit(groups=16, keep=4, score=top2_sum) -> topk",
            ),
            "1 expert per group",
        ),
        (
            router_spec(experts=16, top_k=2, router="linear -> sigmoid -> group_limit(groups=4, keep=2) -> topk"),
            "group_limit needs the group score rule: 'score=top2_sum' (DeepSeek-V3",
        ),
        (
            router_spec(
                experts=16, top_k=2, router="linear -> sigmoid -> group_limit(groups=4, keep=2, score=sum) -> topk"
            ),
            "unknown group score 'sum': use one of top2_sum, max",
        ),
        (
            router_spec(
                router="linear -> sigmoid -> select_bias -> topk", kernels="kernel route : router { norm=post }"
            ),
            "selection bias applies to activated scores",
        ),
        (router_spec(kernels="kernel route : router { renormalize=yes }"), "renormalising after a post-topk softmax"),
        (router_spec(kernels="kernel route : router { layout=tt }"), "layout=tt: expected one of th, ht"),
        (router_spec(hidden=65536, experts=512), "SBUF: "),
        (
            router_spec(kernels="kernel route : router { scatter=gather }"),
            "scatter=gather: expected one of onehot, dma",
        ),
    ],
)
def test_invalid_variants_are_refused_with_the_reason(tmp_path, text, message):
    path = tmp_path / "bad.moe"
    path.write_text(text)
    with pytest.raises(SpecError) as error:
        generate(path)
    assert message in str(error.value)
    assert "bad.moe:" in str(error.value)


def test_generated_router_kernels_call_only_the_real_nki_api(tmp_path, capsys):
    from moegen import conformance

    for name in ("router_seed_matrix", "deepseek_v3", "gpt_oss_120b"):
        write(generate(REPO / "specs" / f"{name}.moe"), tmp_path)
    assert conformance.main([str(tmp_path)]) == 0, capsys.readouterr().out


def test_generated_router_kernels_are_in_the_nki_python_subset(tmp_path):
    """The simulator's static check: no data-dependent Python control flow, no other imports, ..."""
    from moegen.sim.subset_check import static_check

    folder = write(generate(REPO / "specs" / "router_seed_matrix.moe"), tmp_path)
    write(generate(REPO / "specs" / "deepseek_v3.moe"), tmp_path)
    for path in [*sorted(folder.glob("*.py")), tmp_path / "deepseek_v3" / "router_topk.py"]:
        assert static_check(str(path)) == [], path.name


# ------------------------------------------------------------------ every router variant of specs/


def router_variants() -> list[tuple[str, str]]:
    """(spec file, kernel) of every router variant in specs/ (parsed only: cheap at collection)."""
    found = []
    for path in sorted((REPO / "specs").glob("*.moe")):
        try:
            spec = load_spec(path)
        except SpecError:
            continue  # a spec someone is still writing; `moegen build` reports it
        found += [(path.name, variant.name) for variant in spec.variants if variant.family == "router"]
    return found


@cache
def built_spec(spec: str):
    """(GeneratedSpec, folder of its kernels) for specs/<spec>, built once per test session."""
    generated = generate(REPO / "specs" / spec)
    return generated, write(generated, _BUILD_DIR[0] / "specs")


@pytest.mark.parametrize("spec, kernel", router_variants())
def test_spec_router_variant_verifies(spec, kernel):
    from moegen.verify import verify_plan

    generated, folder = built_spec(spec)
    plan = next(p for p in generated.plans if p.kernel_name == kernel)
    checks = verify_plan(plan, folder / f"{kernel}.py")
    assert all(check.ok for check in checks), [check.detail for check in checks if not check.ok]


@pytest.mark.parametrize(
    ("experts", "top_k", "options"),
    [(8, 2, ""), (16, 8, "eager"), (8, 2, "lnc=2"), (16, 4, "affinities=all")],
)
def test_output_runs_of_full_tiles_then_the_partial_tile(experts, top_k, options):
    """Light routing, layout th: full tiles gather their outputs in runs of out_run_tiles tiles (partition p
    of a run holds consecutive tokens) that rotate through two SBUF buffers. T = 37 x 128 + 5 gives more than
    one run (runs of 32, or 16 with the eager output, then the rest), a last run that is not a whole number
    of routing groups, and the partial tile alone; every output row lands at its own token."""
    router = "linear -> softmax -> topk" if "all" in options else "linear -> topk -> softmax"
    text = router_spec(experts=experts, top_k=top_k, router=router, kernels=f"kernel route : router {{ {options} }}")
    plan = next(p for p in build(text)[0].plans if p.kernel_name == "route")
    assert plan.out_run_tiles > plan.route_group
    assert_matches(text, tokens=37 * 128 + 5)
