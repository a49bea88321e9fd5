"""Resident gate/up weights loaded in parts of H tiles (whole weight rows) in the pipelined hybrid loop.

With one-tile blocks (block=128) the hybrid shard=block kernel loads each expert's gate/up weights in two parts
of H tiles, every weight row (gate and up, all of I) one contiguous run, instead of two parts of I tiles (runs of
half a projection's row); every I tile's gate/up sums stay open in PSUM across the parts. Checked against the
blockwise reference, with the DMA runs read from the simulator's trace.
"""

from __future__ import annotations

import numpy as np
import pytest

from moegen import sim
from moegen.compare import compare
from moegen.verify import cte as harness
from tests.families.support import build_spec, layer_spec

SEED = 20261206
KERNELS = """kernel rows : cte { block=128 shard=block lnc=2 loop=hybrid }
  kernel wide : cte { block=256 shard=block lnc=2 loop=hybrid }"""


def _spec(expert: str, intermediate: int) -> str:
    return layer_spec(KERNELS, hidden=256, intermediate=intermediate, experts=4, top_k=2, expert=expert)


def _gate_up_runs(trace: list) -> set[int]:
    """The contiguous run lengths (bytes) of every DMA read of gate_up_proj_weight."""
    return {
        region["contig"]
        for rec in trace
        if rec["engine"] == "dma"
        for region in rec["reads"]
        if region["mem"].startswith("hbm:gate_up_proj_weight")
    }


@pytest.mark.parametrize(
    ("expert", "intermediate", "projections"),
    [
        ("gate_up -> silu -> down -> affinity_scale", 192, 2),  # a partial I tile of 64
        ("up -> relu -> down -> affinity_scale", 256, 1),  # not gated: one projection
    ],
)
def test_whole_row_parts_match_reference_with_long_runs(tmp_path, expert, intermediate, projections):
    generated, modules = build_spec(_spec(expert, intermediate), tmp_path)
    plans = {plan.kernel_name: plan for plan in generated.plans}
    rows = plans["rows"]
    assert rows.gate_up_h_parts == ((0, 1), (1, 1)) and len(rows.gate_up_chunks) == 1
    assert plans["wide"].gate_up_h_parts == ()  # two token tiles: the sums of every I tile would not fit PSUM
    assert "whole rows" in dict(rows.decisions)["weights"]
    # 300 tokens over 4 experts: experts with two blocks (the second reuses the resident weights)
    inputs = harness.make_inputs(rows, 300, np.random.default_rng(SEED))
    with sim.recording():
        got = harness.run(modules["rows"].rows, rows, inputs)
    want = harness.expected(rows, inputs)
    for name in want:
        result = compare(name, got[name], want[name], kind=harness.tolerance(rows, name))
        assert result.ok, result
    # every run holds whole weight rows of projections x I bf16 elements (parts of I: runs of at most 256 B here)
    row = projections * intermediate * 2
    assert all(run >= row and run % row == 0 for run in _gate_up_runs(sim.last_run().trace))
