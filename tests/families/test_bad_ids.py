"""Ids read from HBM: an out-of-range id or a 64-bit id array is refused by the simulator before the run,
naming the id tensor, the element and the value (docs/routing_semantics.md), never the weight tensor the
id would have indexed. The generated kernels declare the ranges (ARGUMENT_RANGES, from
plan.argument_ranges); the all-expert tkg kernels only compare expert_index (a mask), so without the
declaration a bad id there ran silently.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from moegen.sim.errors import NkiSimError
from moegen.verify import cte as cte_harness
from moegen.verify import tkg as tkg_harness
from tests.families.support import build_spec, layer_spec

TOKENS = 40
KERNELS = """kernel sel : tkg { }
  kernel every : tkg { mode=all_experts }
  kernel masked : tkg { mode=all_experts mask_unselected ep=2 }
  kernel rows : cte { block=128 }
  kernel skips : cte { block=128 padding=skip loop=hybrid }"""


@cache
def kernels(root: str):
    text = layer_spec(
        KERNELS, hidden=128, intermediate=128, experts=8, top_k=2, expert="gate_up -> silu -> down -> scale"
    )
    generated, modules = build_spec(text, Path(root))
    return {p.kernel_name: (p, getattr(modules[p.kernel_name], p.kernel_name)) for p in generated.plans}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    kernels.cache_clear()
    yield kernels(str(tmp_path_factory.mktemp("bad_ids")))
    kernels.cache_clear()


def refused(message: str):
    return pytest.raises(NkiSimError, match=re.escape(message))


@pytest.mark.parametrize("kernel", ["sel", "every", "masked"])
@pytest.mark.parametrize("bad", [8, -1, 2147483647])
def test_tkg_refuses_an_out_of_range_expert_id(built, kernel, bad):
    plan, fn = built[kernel]
    inputs = tkg_harness.make_inputs(plan, 4, np.random.default_rng(0))
    inputs["expert_index"] = inputs["expert_index"].copy()
    inputs["expert_index"][2, 1] = bad
    with refused(f"{kernel}: expert_index[2, 1] = {bad}: out of range [0, 8)"):
        tkg_harness.run(fn, plan, inputs)


def test_tkg_refuses_a_rank_outside_the_ep_group(built):
    plan, fn = built["masked"]
    inputs = dict(tkg_harness.make_inputs(plan, 4, np.random.default_rng(0)), rank_id=np.full((1, 1), 2, np.int32))
    with refused("masked: rank_id[0, 0] = 2: out of range [0, 2)"):
        tkg_harness.run(fn, plan, inputs)


@pytest.mark.parametrize("kernel", ["sel", "every"])
def test_an_int64_expert_index_is_refused_before_any_conversion(built, kernel):
    """2**32 + 1 would have become 2147483647 (saturated) or 1 (wrapped): refused, naming the dtypes."""
    plan, fn = built[kernel]
    inputs = tkg_harness.make_inputs(plan, 4, np.random.default_rng(0))
    inputs["expert_index"] = inputs["expert_index"].astype(np.int64)
    inputs["expert_index"][0, 0] = 2**32 + 1
    with refused("argument expert_index has dtype int64, which no NKI tensor has (expected a 32-bit integer"):
        tkg_harness.run(fn, plan, inputs)


@pytest.mark.parametrize(
    "kernel, name, bad, valid",
    [
        ("rows", "block_to_expert", 8, "[0, 8)"),
        ("rows", "block_to_expert", -1, "[0, 8)"),
        ("rows", "token_position_to_id", TOKENS + 1, f"[0, {TOKENS + 1})"),
        ("rows", "token_position_to_id", -1, f"[0, {TOKENS + 1})"),  # -1 only where padding is skipped
        # padding=skip takes AWS's hidden_states [T, H] (no zero row): ids in [-1, T)
        ("skips", "token_position_to_id", -2, f"[-1, {TOKENS})"),
        ("skips", "token_position_to_id", 1000, f"[-1, {TOKENS})"),
        ("skips", "block_to_expert", 2147483647, "[0, 8)"),
        ("skips", "conditions", 2, "[0, 2)"),
    ],
)
def test_cte_refuses_an_out_of_range_block_expert_or_token_id(built, kernel, name, bad, valid):
    plan, fn = built[kernel]
    inputs = cte_harness.make_inputs(plan, TOKENS, np.random.default_rng(0))
    inputs[name] = inputs[name].copy()
    inputs[name].reshape(-1)[3] = bad
    where = "3" if inputs[name].ndim == 1 else "3, 0"
    with refused(f"{kernel}: {name}[{where}] = {bad}: out of range {valid}"):
        cte_harness.run(fn, plan, inputs)


def test_valid_padding_ids_are_accepted(built):
    """-1 in a skip-padding kernel and T in a zero-row kernel are the padding, not errors."""
    for kernel in ("rows", "skips"):
        plan, fn = built[kernel]
        inputs = cte_harness.make_inputs(plan, TOKENS, np.random.default_rng(0))
        pad = -1 if plan.pad_skip else TOKENS
        assert (inputs["token_position_to_id"] == pad).any()
        cte_harness.run(fn, plan, inputs)
