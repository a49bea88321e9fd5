"""shard=intermediate at LNC 2 with I_TP / 2 not a multiple of 16 (gpt-oss at TP 4: I_TP 720): the cores'
I shares overlap in 16 columns and core 1 zeroes its copy in h (moegen/plan/cte.py). Reduced shape:
H 256, I_TP 144 (cores [0, 80) and [64, 144))."""

from __future__ import annotations

import numpy as np
import pytest

from moegen.compare import compare
from moegen.diagnostics import SpecError
from moegen.verify import cte as harness
from tests.families.support import build_spec, layer_spec

SEED = 20261206
EXPERT = (
    "gate_up(bias) -> clamp(gate <= 7, -7 <= up <= 7) -> swish(1.702) -> up_plus_one -> down(bias) -> affinity_scale"
)


def run(tmp_path, options: str, tokens: int):
    text = layer_spec(
        f"kernel prefill : cte {{ shard=intermediate lnc=2 block=128 {options} }}",
        hidden=256,
        intermediate=144,
        experts=4,
        top_k=2,
        expert=EXPERT,
    )
    generated, modules = build_spec(text, tmp_path)
    plan = generated.plans[0]
    inputs = harness.make_inputs(plan, tokens, np.random.default_rng(SEED))
    got = harness.run(modules["prefill"].prefill, plan, inputs)
    return plan, inputs, got, modules["prefill"]


def test_overlapping_shares_add_each_column_once(tmp_path):
    plan, inputs, got, _ = run(tmp_path, "", 40)
    assert (plan.i_core, plan.i_overlap) == (80, 16)
    assert "uneven intermediate split" in dict(plan.decisions)
    want = harness.expected(plan, inputs)
    for name in want:
        assert compare(name, got[name], want[name], kind=harness.tolerance(plan, name)).ok, name


def test_checkpoint_is_refused_with_overlapping_shares(tmp_path):
    """Both cores would write the overlap columns of gate_up_activations_T: an LNC race in the simulator."""
    with pytest.raises(SpecError, match="checkpoint with shard=intermediate at lnc=2 needs I_TP a multiple of 32"):
        run(tmp_path, "checkpoint", 40)


def test_without_the_zeroing_the_overlap_is_counted_twice(tmp_path):
    """The check above is not vacuous: a kernel whose core 1 keeps its overlap columns is wrong."""
    plan, inputs, _, module = run(tmp_path, "", 40)
    source = module.__file__
    text = open(source).read().replace("overlap_keep = 1.0 if core == 0 else 0.0", "overlap_keep = 1.0")
    patched = tmp_path / "patched.py"
    patched.write_text(text)
    from moegen import sim

    kernel = sim.load_module(patched).prefill
    got = harness.run(kernel, plan, inputs)["out"]
    assert not compare("out", got, harness.expected(plan, inputs)["out"], kind="bf16").ok
