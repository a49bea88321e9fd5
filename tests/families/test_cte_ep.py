"""Expert parallelism for prefill: a cte kernel with ep= over this rank's experts (moegen.blocking.
build_blocks_local builds the rank's blocks from the global routing). The sum of every rank's kernel
output is the whole layer's per-token MoE; a token routed to no local expert gets 0 from that rank;
ep in dims leaves the selective decode kernels of the same spec buildable."""

from __future__ import annotations

import numpy as np
import pytest

from moegen import blocking
from moegen.compare import compare
from moegen.compiler import generate
from moegen.diagnostics import SpecError
from moegen.reference import cte as cte_reference
from moegen.reference import quant
from moegen.verify import cte as harness
from tests.families.support import build_spec, layer_spec

SEED = 20261206
H, INTER, E, K, T = 256, 256, 8, 2, 60


def spec(kernels: str, dims_ep: str = "") -> str:
    text = layer_spec(
        kernels, hidden=H, intermediate=INTER, experts=E, top_k=K, expert="gate_up -> silu -> down -> affinity_scale"
    )
    return text.replace(f"top_k={K}", f"top_k={K}{dims_ep}")


@pytest.mark.parametrize("options", ["ep=4", "ep=2 lnc=2 shard=intermediate"])
def test_the_ranks_outputs_add_up_to_the_whole_layer(tmp_path, options):
    generated, modules = build_spec(spec(f"kernel p : cte {{ block=128 {options} }}"), tmp_path)
    plan = generated.plans[0]
    kernel = modules["p"].p
    ranks, local = plan.ep, plan.experts
    assert plan.global_experts == E and local == E // ranks
    rng = np.random.default_rng(SEED)
    index = harness.routing(T, E, K, rng)
    raw = rng.random((T, K)) + 0.25
    affinities = quant.cast(raw / raw.sum(axis=1, keepdims=True), "bf16")
    hidden = np.zeros((T + 1, H), dtype=quant.np_dtype("bf16"))
    hidden[:T] = quant.cast(rng.standard_normal((T, H)), "bf16")
    gate_up = quant.cast(rng.standard_normal((E, H, 2, INTER)) / np.sqrt(H), "bf16")
    down = quant.cast(rng.standard_normal((E, INTER, H)) / np.sqrt(INTER), "bf16")
    total = np.zeros((T, H), dtype=np.float32)
    for rank in range(ranks):
        blocks = blocking.build_blocks_local(index, affinities, E, plan.block, rank=rank, local_experts=local)
        experts = slice(rank * local, (rank + 1) * local)
        inputs = {
            "hidden_states": hidden,
            "expert_affinities_masked": blocks.expert_affinities_masked,
            "gate_up_proj_weight": gate_up[experts],
            "down_proj_weight": down[experts],
            "token_position_to_id": blocks.token_position_to_id,
            "block_to_expert": blocks.block_to_expert,
        }
        out = harness.run(kernel, plan, inputs)["out"][:T]
        remote = ~((index >= experts.start) & (index < experts.stop)).any(axis=1)
        assert remote.any() and not out[remote].any()  # tokens with no local expert: nothing from this rank
        total += out
    whole = cte_reference.moe_per_token(
        hidden[:T], index, affinities, gate_up, down, output_dtype="bf16", precision=harness.reference_precision(plan)
    )
    # each rank rounds its contributions to bf16 before the ranks are added: a few bf16 steps apart
    result = compare("out", total, whole, rtol=2**-5, atol=2**-5)
    assert result.ok, str(result)


def test_ep_in_dims_applies_to_cte_and_all_expert_kernels_not_selective_ones(tmp_path):
    text = spec(
        "kernel p : cte { block=128 }\n  kernel d : tkg { tokens<=8 }\n  kernel a : tkg { mode=all_experts }",
        dims_ep=" ep=4",
    )
    generated, _ = build_spec(text, tmp_path)
    plans = {p.kernel_name: p for p in generated.plans}
    assert (plans["p"].experts, plans["d"].local_experts, plans["a"].local_experts) == (2, 8, 2)
    assert "expert parallelism" in dict(plans["d"].decisions)


def test_explicit_ep_on_a_selective_kernel_and_dropping_with_ep_are_refused(tmp_path):
    for kernels, message in [
        ("kernel d : tkg { ep=2 }", "selective mode reads each token's experts by their global id"),
        ("kernel p : cte { ep=2 dropping }", "dropping with ep 2"),
        ("kernel p : cte { ep=3 }", "ep 3: experts 8 is not divisible by it"),
    ]:
        path = tmp_path / "t.moe"
        path.write_text(spec(kernels))
        with pytest.raises(SpecError, match=message):
            generate(path)
