"""`moegen profile --experts-used N|all`: a cte kernel routed over more experts than the verify harness's default
pool (which narrows to 2K experts when all the weights exceed WEIGHT_BYTES_RESIDENT, e.g. Qwen3's 128)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from moegen import cli
from moegen.codegen.build import write
from moegen.compiler import generate
from moegen.verify import cte as cte_harness
from moegen.verify.work import needed_experts
from tests.families.support import layer_spec

SPEC = layer_spec(
    "kernel k : cte { shard=block lnc=2 block=128 }\n  kernel d : tkg { eager }",
    hidden=256,
    intermediate=128,
    experts=8,
    top_k=2,
    router="linear -> softmax -> topk -> renormalize",
    expert="gate_up -> silu -> down -> affinity_scale",
)


@pytest.fixture
def built(tmp_path, monkeypatch):
    """The spec built under tmp_path, with a 0-byte weight budget: the default routing pool is 2K = 4 of 8."""
    monkeypatch.setattr(cte_harness, "WEIGHT_BYTES_RESIDENT", 0)
    path = tmp_path / "t.moe"
    path.write_text(SPEC)
    write(generate(path), tmp_path / "generated")
    return path, tmp_path / "generated"


def _profile(built, capsys, *extra: str) -> dict:
    spec, out = built
    status = cli.main(["profile", str(spec), "--variant", "k", "--tokens", "32", "--out", str(out), "--json", *extra])
    assert status == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_all_experts_routes_over_every_expert(built, capsys):
    plan = generate(built[0]).plans[0]
    assert cte_harness.routing_pool(plan) == 4
    default = cte_harness.make_inputs(plan, 32, np.random.default_rng(0))
    every = cte_harness.make_inputs(plan, 32, np.random.default_rng(0), experts_used=8)
    assert needed_experts(plan, default) == (4, 8) and needed_experts(plan, every) == (8, 8)
    # end to end: the kernel reads twice the experts' weights, so the HBM minimum and traffic grow
    narrow, wide = _profile(built, capsys), _profile(built, capsys, "--experts-used", "all")
    weights = 3 * 256 * 128 * 2  # one expert's bf16 gate, up and down
    assert wide["hbm_min_bytes"] - narrow["hbm_min_bytes"] == 4 * weights
    assert wide["hbm_bytes"] > narrow["hbm_bytes"] and wide["modeled_us"] > narrow["modeled_us"]
    assert _profile(built, capsys, "--experts-used", "8")["hbm_min_bytes"] == wide["hbm_min_bytes"]


def test_experts_used_errors(built, capsys):
    spec, out = built
    status = cli.main(["profile", str(spec), "--variant", "d", "--out", str(out), "--experts-used", "all"])
    assert status != 0 and "applies to cte kernels, not tkg" in capsys.readouterr().err
    status = cli.main(["profile", str(spec), "--variant", "k", "--out", str(out), "--experts-used", "9"])
    assert status != 0 and "experts_used=9: must be in [top_k=2, 8]" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["profile", str(spec), "--out", str(out), "--experts-used", "some"])
    assert exit_info.value.code == 2
