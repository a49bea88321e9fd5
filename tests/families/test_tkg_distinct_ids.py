"""Distinct mode's expert ids: the weight DMAs of every used expert take their address from a tile written by
a compute-engine copy (slot 0's id from the compaction's PSUM row, later ones from an id loaded while the
previous expert's weights stream), never from a DMA issued at the expert change (which queues behind the
weight transfers; docs/faster_decode.md, round 4)."""

from __future__ import annotations

import numpy as np
import pytest

from moegen import sim
from moegen.verify import tkg as harness
from tests.families import test_tkg_kernels as base
from tests.families.test_tkg_kernels import SEED, build, check, spec_text


@pytest.fixture(scope="module", autouse=True)
def build_dir(tmp_path_factory):
    base._BUILD_DIR[:] = [tmp_path_factory.mktemp("tkg_distinct_ids_builds")]
    build.cache_clear()
    yield
    build.cache_clear()


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
    """Several used experts: each weight DMA's expert id was last written by a tensor_copy, not a DMA."""
    writers = _id_writers(spec_text(kernel, hidden=256, intermediate=128), tokens)
    assert writers and set(writers) <= {("scalar", "tensor_copy"), ("gpsimd", "tensor_copy")}
    assert ("gpsimd", "tensor_copy") in writers  # a second expert ran on the prefetched id
