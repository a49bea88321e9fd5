"""Distinct mode's expert ids: the weight DMAs of every used expert take their address from a tile written by
a compute engine (slot 0's id from a row of the per-expert counts, later ones copied from an id loaded while
the previous expert's weights stream), never from a DMA issued at the expert change (which queues behind the
weight transfers; docs/faster_decode.md, round 4); slot 0's id is few dependent steps from the routing
(round 5)."""

from __future__ import annotations

import numpy as np
import pytest

from moegen import sim
from moegen.verify import tkg as harness
from tests.families.support import module_builds
from tests.families.test_tkg_kernels import SEED, build, check, spec_text

build_dir = module_builds("tkg_distinct_ids_builds")


def _overlaps(a: dict, b: dict) -> bool:
    """Two trace regions share bytes (same memory, overlapping partitions and byte ranges)."""
    return (
        a["mem"] == b["mem"]
        and a["parts"][0] < b["parts"][1]
        and b["parts"][0] < a["parts"][1]
        and a["bytes"][0] < b["bytes"][1]
        and b["bytes"][0] < a["bytes"][1]
    )


def _id_writers(text: str, tokens: int) -> list[tuple[str, str]]:
    """(engine, opcode) of the last writer of each weight DMA's address tile, per weight DMA, on core 0."""
    plan, _, _ = check(text, tokens=tokens)  # correct against the reference first
    plans, kernels = build(text)
    inputs = harness.make_inputs(plans["k"], tokens, np.random.default_rng(SEED))
    with sim.recording():
        harness.run(kernels["k"], plans["k"], inputs)
    writers, trace = [], [r for r in sim.last_run().trace if r.get("core", 0) == 0]
    for idx, instruction in enumerate(trace):
        weights = any("expert_gate_up_weights" in r["mem"] for r in instruction.get("reads", ()))
        if not weights or instruction["engine"] != "dma":
            continue
        (address,) = [r for r in instruction["addr_reads"] if r["mem"].startswith("sbuf")]
        writer = next(w for w in reversed(trace[:idx]) if any(_overlaps(address, r) for r in w.get("writes", ())))
        writers.append((writer["engine"], writer["opcode"]))
    return writers


@pytest.mark.parametrize(
    "kernel, tokens",
    [
        ("kernel k : tkg { mode=distinct tokens<=32 }", 6),
        ("kernel k : tkg { mode=distinct ep=2 tokens<=32 }", 6),
        ("kernel k : tkg { mode=distinct tokens<=128 }", 5),  # the [T, H] down layout
    ],
)
def test_weight_addresses_come_from_engine_copies(kernel, tokens):
    """Several used experts: each weight DMA's expert id was last written by a compute engine, not a DMA."""
    writers = _id_writers(spec_text(kernel, hidden=256, intermediate=128), tokens)
    assert writers and set(writers) <= {("vector", "tensor_scalar"), ("gpsimd", "tensor_copy")}
    assert ("gpsimd", "tensor_copy") in writers  # a second expert ran on the prefetched id


@pytest.mark.parametrize(
    "kernel",
    ["kernel k : tkg { mode=distinct tokens<=32 }", "kernel k : tkg { mode=distinct ep=2 lnc=2 tokens<=32 }"],
)
def test_first_expert_id_is_few_steps_after_the_routing(kernel):
    """The longest chain of dependent instructions (read after write) from the expert_index DMA to the first
    weight DMA's expert id: index DMA, float ids, the one-hots (independent per k), the counts row (matmuls
    accumulating over k), score, max, id = 7 instructions at K = 2; through routing_count (one step per k) and
    the compaction (counts column, used, slot, slot copy, slot one-hot, ids row, id copy) it was 11."""
    text = spec_text(kernel, hidden=256, intermediate=128)
    check(text, tokens=3)
    plans, kernels = build(text)
    inputs = harness.make_inputs(plans["k"], 3, np.random.default_rng(SEED))
    with sim.recording():
        harness.run(kernels["k"], plans["k"], inputs)
    trace = [r for r in sim.last_run().trace if r.get("core", 0) == 0]
    depth: dict[int, int] = {}
    for idx, instruction in enumerate(trace):
        reads = list(instruction.get("reads", ())) + list(instruction.get("addr_reads", ()))
        if any("expert_index" in r["mem"] for r in reads):
            depth[idx] = 1
            continue
        producers = [
            max((j for j in range(idx) if any(_overlaps(r, w) for w in trace[j].get("writes", ()))), default=None)
            for r in reads
            if not r["mem"].startswith("hbm")
        ]
        chained = [depth[j] for j in producers if j in depth]
        if chained:
            depth[idx] = 1 + max(chained)
        weights = any("expert_gate_up_weights" in r["mem"] for r in instruction.get("reads", ()))
        if weights and instruction["engine"] == "dma":
            (address,) = [r for r in instruction["addr_reads"] if r["mem"].startswith("sbuf")]
            writer = max(j for j in range(idx) if any(_overlaps(address, w) for w in trace[j].get("writes", ())))
            assert depth[writer] == 7, (trace[writer]["opcode"], depth[writer])
            return
    raise AssertionError("no gate/up weight DMA")
