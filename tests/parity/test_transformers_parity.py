"""Parity with transformers: for each model family, a tiny Hugging Face config goes through `moegen import-hf`,
its router, tkg and cte kernels are generated and run in the simulator on the weights of the transformers MoE
block built from the same config, and their outputs are compared with the block's. The shared experts run fused
into tkg and cte (the import's default here), or in the separate `shared` kernel for the families whose spec is
edited to shared=separate (DeepSeek-V3), so that both paths are compared with transformers.

torch and transformers are part of the `test` extra (pyproject.toml): this module imports them unguarded, so a
missing install fails the run rather than skipping the families.

The kernels are bf16 (tkg and cte read bf16 or fp16 only); the transformers block runs in float32 on the same
bf16 weights and hidden states, i.e. it is the exact math of the layer. Tolerances, per element:
- router_logits (stored bf16): |got - want| <= 2^-6 |want| + 2^-6 (moegen.compare's bf16 kind: the logit rounded
  once to bf16, plus summation order);
- expert_index: the same set of K experts per token, exactly (order within a token is not part of the contract:
  DeepSeek-V3 and Nemotron-H call torch.topk with sorted=False);
- expert_affinities (stored bf16): the bf16 kind as for the logits;
- layer output [T, H]: |got - want| <= 2^-6 |want| + 2^-4 rms(want[t]) for token t, i.e. 8 bf16 steps of the
  token row's scale. Why that much: the kernels round the affinities, x * affinity (Llama-4), the activation
  product h and each expert's output to bf16 (2^-9 relative each) and those errors add up over the I terms of the
  down projection and the K experts (and the shared expert), while the block rounds nothing. The largest errors
  seen were 0.029 rms(want[t]) (Nemotron-H prefill, shared expert fused); a wrong expert, activation, gate or
  missing term is O(1).
- layer output against the block run in bf16 by transformers: 2^-6 |want| + 2^-3 rms(want[t]) (the block's own
  bf16 error against its float32 run reaches 0.045 rms(want[t]), ours 0.029; the largest difference seen between
  the two was 0.050 rms(want[t]), Qwen3-MoE prefill).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch  # unguarded: the parity tests fail, never skip, without the test extra
import transformers  # noqa: F401

from moegen.compare import Tolerance, compare
from tests.parity import hf_layer

BF16 = Tolerance(2.0**-6, 2.0**-6)
OUTPUT_RTOL, OUTPUT_ROW_ATOL = 2.0**-6, 2.0**-4
BF16_BLOCK_ROW_ATOL = 2.0**-3  # our rounding budget plus the bf16 block's own (which is as large)

FAMILY_NAMES = sorted(hf_layer.FAMILIES)
# The models with shared experts: fused into tkg and cte, or (SEPARATE) in a shared kernel of their own.
SHARED = {"qwen2_moe", "deepseek_v3", "llama4", "nemotron_h"}
SEPARATE = {name for name, family in hf_layer.FAMILIES.items() if family.shared == "separate"}


class Layer:
    """One family's generated kernels and transformers block, built once per test process."""

    def __init__(self, family: hf_layer.Family, folder: Path):
        self.family = family
        self.kernels = hf_layer.build_kernels(family, folder)
        self.block = hf_layer.tiny_block(family)
        self.weights = family.weights(self.block)
        self.block_bf16 = copy.deepcopy(self.block).to(torch.bfloat16)


@pytest.fixture(scope="module")
def layers(tmp_path_factory):
    built: dict[str, Layer] = {}

    def get(name: str) -> Layer:
        if name not in built:
            built[name] = Layer(hf_layer.FAMILIES[name], tmp_path_factory.mktemp(name))
        return built[name]

    return get


def output_tolerance(want: np.ndarray, row_atol: float = OUTPUT_ROW_ATOL) -> Tolerance:
    """|got - want| <= OUTPUT_RTOL |want| + row_atol * rms(want[t]) for the elements of token row t."""
    rms = np.sqrt(np.mean(np.square(want, dtype=np.float64), axis=1, keepdims=True))
    return Tolerance(OUTPUT_RTOL, (row_atol * rms).astype(np.float32))


def test_every_family_is_covered():
    assert set(FAMILY_NAMES) == {"mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v3", "gpt_oss", "llama4", "nemotron_h"}


def test_both_shared_paths_are_covered():
    assert SEPARATE and SEPARATE < SHARED
    assert {hf_layer.FAMILIES[name].shared for name in SHARED - SEPARATE} == {"auto"}


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_imported_spec_has_the_layer_kernels(layers, name):
    """A router, tkg and cte kernel; the shared experts fused into tkg and cte, or in a shared kernel (SEPARATE)."""
    plans = layers(name).kernels.generated.plans
    families = sorted(p.family for p in plans)
    assert families == sorted(["router", "tkg", "cte"] + (["shared"] if name in SEPARATE else []))
    fused = {p.family: p.shared is not None for p in plans if p.family in ("tkg", "cte")}
    assert fused == dict.fromkeys(("tkg", "cte"), name in SHARED - SEPARATE)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_router_matches_transformers(layers, name):
    """The router kernel's logits, selected experts and affinities against the block's router (prefill tokens)."""
    layer = layers(name)
    x = hf_layer.hidden_states(hf_layer.TOKENS_CTE)
    _, want = hf_layer.transformers_layer(layer.family, layer.block, x)
    got = hf_layer.run_router(layer.kernels, layer.weights, x)
    assert compare("router_logits", got.logits, want.logits, kind=BF16).ok
    assert np.array_equal(np.sort(got.index, axis=1), np.sort(want.index, axis=1))
    want_affinities = want.affinities
    if layer.kernels.plan("router").affinities == "all":
        # Qwen-MoE without renormalisation: the kernel stores the softmax over all E (the block's router_probs,
        # from which it takes its top-K values)
        want_affinities = torch.softmax(torch.from_numpy(want.logits), dim=-1).numpy()
    assert compare("expert_affinities", got.affinities, want_affinities, kind=BF16).ok
    if name == "deepseek_v3":  # the tiny config's group limit (keep 2 of 4 groups) decides some tokens' experts
        scores = 1.0 / (1.0 + np.exp(-want.logits)) + layer.weights.selection_bias
        unlimited = np.sort(np.argsort(-scores, axis=1, kind="stable")[:, : want.index.shape[1]], axis=1)
        assert not np.array_equal(unlimited, np.sort(want.index, axis=1))


@pytest.mark.parametrize("expert_kernel", ["tkg", "cte"])
@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_layer_matches_transformers(layers, name, expert_kernel):
    """router kernel -> tkg (decode, 4 tokens) or cte (prefill, 160 tokens) on its routing, with the shared
    experts fused or their kernel's output added, against the transformers block's forward output."""
    layer = layers(name)
    tokens = hf_layer.TOKENS_TKG if expert_kernel == "tkg" else hf_layer.TOKENS_CTE
    x = hf_layer.hidden_states(tokens)
    want, _ = hf_layer.transformers_layer(layer.family, layer.block, x)
    got, _ = hf_layer.run_layer(layer.kernels, layer.weights, x, expert_kernel)
    result = compare("output", got, want, kind=output_tolerance(want))
    assert result.ok, str(result)
    if name in SHARED:  # the shared experts' term matters: without it the output is far off
        routed_only, _ = hf_layer.run_layer(layer.kernels, layer.weights, x, expert_kernel, with_shared=False)
        assert not compare("output", routed_only, want, kind=output_tolerance(want)).ok


@pytest.mark.parametrize("expert_kernel", ["tkg", "cte"])
@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_layer_matches_transformers_in_bf16(layers, name, expert_kernel):
    """The same layer against the block run by transformers in bf16 (weights, x and every intermediate rounded as
    torch does), on the tokens whose experts the bf16 block selects as our router does (bf16 logits may tie or
    swap near-equal experts; at least 95% of the tokens must agree, all of them with this seed)."""
    layer = layers(name)
    tokens = hf_layer.TOKENS_TKG if expert_kernel == "tkg" else hf_layer.TOKENS_CTE
    x = hf_layer.hidden_states(tokens)
    want, routing = hf_layer.transformers_layer(layer.family, layer.block_bf16, x)
    got, ours = hf_layer.run_layer(layer.kernels, layer.weights, x, expert_kernel)
    same = np.all(np.sort(ours.index, axis=1) == np.sort(routing.index, axis=1), axis=1)
    assert same.mean() >= 0.95
    tolerance = output_tolerance(want[same], BF16_BLOCK_ROW_ATOL)
    result = compare("output", got[same], want[same], kind=tolerance)
    assert result.ok, str(result)
