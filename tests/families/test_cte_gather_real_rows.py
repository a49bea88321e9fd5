"""Hybrid-loop gathers of only the real token rows (plan field `gather_real_rows`).

Each block of a pipelined hybrid loop gathers the next block's token rows. Padding slots hold id T (the zero row of
hidden_states); the gather gives them id T + 1, out of bounds, so `oob_mode=skip` moves nothing for them (the
`nki.isa.dma_copy` page: out-of-bounds indices of an indirect access are skipped). Their rows of the x_rows tiles
keep what was there: zeros written once before the loop, later an earlier block's token rows. Checked from the
simulator's trace (bytes moved per gather) and against the blockwise reference with padding-heavy blocks, with the
zero row poisoned and the token transposes done as the PE array does them (a matmul with the identity, so a
non-finite value in any row of x_rows reaches every token).
"""

from __future__ import annotations

import numpy as np
import pytest

from moegen import sim
from moegen.compare import compare
from moegen.sim import isa as sim_isa
from moegen.verify import cte as harness
from tests.families.support import build_spec, layer_spec

SEED = 20261207
TOKENS = 100  # over 8 experts at top-2: ~25 tokens in each 128-slot block, the rest padding
KERNELS = """kernel rows : cte { block=128 shard=block lnc=2 loop=hybrid }
  kernel wide : cte { block=256 shard=block lnc=2 loop=hybrid }
  kernel split : cte { block=128 shard=intermediate lnc=2 loop=hybrid }"""
EXPERT = "gate_up -> silu -> down -> affinity_scale"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    spec = layer_spec(KERNELS, hidden=256, intermediate=192, experts=8, top_k=2, expert=EXPERT)
    generated, modules = build_spec(spec, tmp_path_factory.mktemp("gather_real_rows"))
    return {plan.kernel_name: plan for plan in generated.plans}, modules


def _pe_array_transpose(original):
    """nc_transpose as the PE array computes it on TensorE: data.T @ identity, so NaN * 0 reaches every column."""

    def transpose(dst, data, *args, **kwargs):
        result = original(dst, data, *args, **kwargs)
        if dst.buffer.name == "psum":
            values = data.read("nc_transpose", "data").reshape(data.shape[0], data.free_size).astype(np.float32)
            with np.errstate(invalid="ignore"):
                leaked = values.T @ np.eye(values.shape[0], dtype=np.float32)
            dst._array("nc_transpose", "dst")[...] = leaked.reshape(dst.shape)
        return result

    return transpose


def _gathered_rows(trace: list, row_bytes: int) -> list[int]:
    """Rows moved by each DMA that reads hidden_states (the token-row gathers)."""
    gathers = [
        rec
        for rec in trace
        if rec["engine"] == "dma" and any(r["mem"].startswith("hbm:hidden_states") for r in rec["reads"])
    ]
    assert all(rec["bytes"] % row_bytes == 0 for rec in gathers)
    return [rec["bytes"] // row_bytes for rec in gathers]


@pytest.mark.parametrize("name", ["rows", "wide", "split"])
def test_padding_slots_move_no_bytes_in_the_gather(built, name):
    plans, modules = built
    plan = plans[name]
    assert plan.gather_real_rows and "real tokens only" in dict(plan.decisions)["token rows"]
    inputs = harness.make_inputs(plan, TOKENS, np.random.default_rng(SEED))
    with sim.recording():
        harness.run(getattr(modules[name], name), plan, inputs)
    moved = _gathered_rows(sim.last_run().trace, plan.hidden * 2)
    # real slots per 128-slot tile of every block (a gather is one tile); the old kernel moved all 128 rows of each
    ids = inputs["token_position_to_id"].reshape(-1, 128)
    real_per_tile = set((ids < TOKENS).sum(axis=1).tolist())
    assert max(moved) < 128
    assert set(moved) <= real_per_tile
    # every real slot is gathered (a core's last prefetch may gather its last block again)
    assert sum(moved) >= int((ids < TOKENS).sum())


@pytest.mark.parametrize("name", ["rows", "wide", "split"])
def test_padding_rows_never_reach_the_tokens(built, name, monkeypatch):
    """The zero row T poisoned with NaN (never read now) and transposes that spread any non-finite row: the
    output still matches the reference on the clean inputs (x_rows' padding rows hold only finite values)."""
    plans, modules = built
    plan = plans[name]
    monkeypatch.setattr(sim_isa, "nc_transpose", _pe_array_transpose(sim_isa.nc_transpose))
    inputs = harness.make_inputs(plan, TOKENS, np.random.default_rng(SEED + 1))
    want = harness.expected(plan, inputs)
    poisoned = dict(inputs, hidden_states=inputs["hidden_states"].copy())
    poisoned["hidden_states"][TOKENS] = np.nan
    got = harness.run(getattr(modules[name], name), plan, poisoned)
    for out in want:
        result = compare(out, got[out], want[out], kind=harness.tolerance(plan, out))
        assert result.ok, result
