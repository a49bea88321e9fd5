"""The shared experts of a cte kernel in passes of a block of rows on the routed tiles
(moegen/plan/shared_fusion.py `cte_routed_rows`, templates/common/shared_fused.j2 `cte_run_wide`):
the output against the reference, and the shared weights read once per pass (T / B times, not T / 128)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from moegen import sim
from moegen.compare import compare
from moegen.verify import cte as cte_harness
from tests.families.support import build_spec

SEED = 20261207
TOKENS = 600  # two passes of 256 rows and one of 88 (a partial 128-row tile)


def spec_text(kernel: str, *, shared: str, expert: str, shared_i: int = 320, top_k: int = 1) -> str:
    """H 320 (two full tiles + 64), routed I 384, shared I_F `shared_i` (320: a partial last tile)."""
    return (
        "moe t {\n"
        f"  dims hidden=320 intermediate=384 experts=4 top_k={top_k} shared_experts=1 shared_intermediate={shared_i}\n"
        "  dtype bf16\n"
        f"  expert = {expert}\n"
        f"  shared_expert = {shared}\n"
        f"  {kernel}\n"
        "}\n"
    )


def run_traced(tmp_path: Path, text: str, tokens: int = TOKENS):
    generated, modules = build_spec(text, tmp_path)
    plan = generated.plans[0]
    inputs = cte_harness.make_inputs(plan, tokens, np.random.default_rng(SEED))
    with sim.recording():
        got = cte_harness.run(modules["c"].c, plan, inputs)["out"]
    return plan, inputs, got, sim.last_run().trace


def hbm_bytes_read(trace: list, name: str) -> int:
    """Bytes the DMAs of `trace` moved out of the HBM argument `name`."""
    total = 0
    for rec in trace:
        if rec["opcode"].startswith("dma") and any(
            isinstance(op, dict) and op.get("name") == name for key, op in rec["operands"].items() if key != "dst"
        ):
            total += int(rec["bytes"])
    return total


@pytest.mark.parametrize(
    "kernel, shared, expert",
    [
        (
            "kernel c : cte { lnc=1 block=256 weights=stream tail=block }",
            "gate_up -> silu -> down",
            "affinity_scale -> gate_up -> silu -> down",
        ),
        (
            "kernel c : cte { lnc=2 shard=block block=256 weights=stream tail=block }",
            "gate_up -> gelu -> down -> sigmoid_gate",
            "gate_up -> silu -> down -> affinity_scale",
        ),
        (
            "kernel c : cte { lnc=1 block=256 weights=stream tail=block }",
            "up -> relu2 -> down",
            "up -> relu2 -> down -> affinity_scale",
        ),
        (  # tail tiles: xT and hT hold one more token tile
            "kernel c : cte { lnc=1 block=256 weights=stream tail=absorb }",
            "gate_up -> silu -> down",
            "gate_up -> silu -> down -> affinity_scale",
        ),
    ],
)
def test_shared_passes_on_the_routed_tiles_match_the_reference(tmp_path, kernel, shared, expert):
    """out = routed + shared at T = 600 (passes of 256, 256 and 88 rows; LNC 2: each core its row tiles)."""
    plan, inputs, got, _ = run_traced(tmp_path, spec_text(kernel, shared=shared, expert=expert))
    assert plan.shared is not None and plan.shared.cte_rows == 256
    assert compare("out", got, cte_harness.expected(plan, inputs)["out"], kind=cte_harness.tolerance(plan, "out")).ok


def test_each_pass_reads_the_shared_weights_once(tmp_path):
    """HBM bytes of the shared weights in the trace: ceil(600 / 256) = 3 reads of each, not ceil(600 / 128) = 5."""
    text = spec_text(
        "kernel c : cte { lnc=1 block=256 weights=stream tail=block }",
        shared="gate_up -> silu -> down",
        expert="affinity_scale -> gate_up -> silu -> down",
    )
    plan, _, _, trace = run_traced(tmp_path, text)
    h, i_f = plan.hidden, plan.shared.intermediate
    passes = -(-TOKENS // plan.block)
    assert hbm_bytes_read(trace, "shared_gate_up_weights") == passes * h * 2 * i_f * 2
    assert hbm_bytes_read(trace, "shared_down_weights") == passes * i_f * h * 2


def test_shared_wider_than_the_routed_tiles_keeps_128_row_tiles(tmp_path):
    """A shared I_F with more tiles than hT holds runs on its own tiles, 128 rows at a time."""
    text = spec_text(
        "kernel c : cte { lnc=1 block=256 weights=stream tail=block }",
        shared="gate_up -> silu -> down",
        expert="affinity_scale -> gate_up -> silu -> down",
        shared_i=512,
    )
    plan, inputs, got, trace = run_traced(tmp_path, text, tokens=300)
    assert plan.shared.cte_rows == 0
    assert compare("out", got, cte_harness.expected(plan, inputs)["out"], kind=cte_harness.tolerance(plan, "out")).ok
    assert hbm_bytes_read(trace, "shared_down_weights") == 3 * 512 * 320 * 2
