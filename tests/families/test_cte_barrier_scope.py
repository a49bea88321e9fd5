"""SIM AUDIT #23 (docs/sim_audit.md): under the faithful core_barrier reading (MOEGEN_SIM_BARRIER_SCOPE=data, a
barrier orders only its `data` tensor; nki.isa.core_barrier: "The data parameter represents the shared data that all
cores need to synchronize on") the shard=block LNC 2 touched-row final sum of templates/cte.py.j2 races on `out`:
core 0's accumulator rows (cleared and added into during its blocks) and core 1's pre-barrier copy of its rows are
read after barriers on `partials` and `touched` only, by core 1's final-sum dma_compute and by the fused shared
experts' row tiles. The template now also has `core_barrier(data=out)` beside those two, and 'data' is the
simulator's default; these tests set it explicitly, and failed (NkiSimError, a race on out) before that barrier."""

from __future__ import annotations

import numpy as np

from moegen.verify import cte as cte_harness
from tests.families.support import build, module_builds
from tests.families.test_cte import assert_matches, cte_spec, run
from tests.families.test_shared_fused import cte_spec as shared_cte_spec

builds = module_builds("cte_barrier_scope_builds")


def test_touched_row_final_sum_orders_out_across_the_cores(monkeypatch):
    """shard=block LNC 2, touched-row final sum: out is read by the other core only across a barrier on out."""
    monkeypatch.setenv("MOEGEN_SIM_BARRIER_SCOPE", "data")
    plan, _, got, want = run(cte_spec("kernel a : cte { block=128 lnc=2 }"), "a", 300)
    assert plan.final_sum_touched
    assert_matches(plan, got, want)


def test_fused_shared_experts_read_out_after_a_barrier_on_it(monkeypatch):
    """shard=block LNC 2 with fused shared experts: the shared pass reads rows of out core 1 copied in."""
    monkeypatch.setenv("MOEGEN_SIM_BARRIER_SCOPE", "data")
    plans, kernels = build(
        shared_cte_spec("kernel c : cte { lnc=2 shard=block block=256 }", shared="up -> relu2 -> down")
    )
    plan = plans["c"]
    assert plan.final_sum_touched and plan.shared is not None
    inputs = cte_harness.make_inputs(plan, 150, np.random.default_rng(20261123))
    got = cte_harness.run(kernels["c"], plan, inputs)
    assert_matches(plan, got, cte_harness.expected(plan, inputs))
