"""`moegen profile` on every kernel of every spec in specs/, on trn2 and trn3, at a tiny token count.

The default run profiles one representative kernel per family (router, tkg, cte, mlp, activation);
the full sweep is `-m slow` (several minutes: real model shapes). A kernel planned for trn3
(MXFP8 matmuls, quantize_mx) is refused on trn2 with a message naming the target to use.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import moegen.perf as perf
from moegen import cli, sim
from moegen.compiler import generate
from moegen.verify.profile import ProfileError, profile_plan

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "generated"
TOKENS = 2
REPRESENTATIVES = {  # family -> (spec, kernel): the cheapest kernel of each family to simulate
    "router": ("router_seed_matrix", "th_onehot_pre_l1"),
    "tkg": ("tkg_seed_matrix", "selective"),
    "cte": ("qwen3_30b_a3b", "prefill"),
    "mlp": ("mlp_mxfp8_matrix", "mlp_bf16_auto"),
    "activation": ("nemotron3_nano_30b_a3b", "relu2"),
    "activation (trn3)": ("nemotron3_nano_30b_a3b", "relu2_mxfp8"),
}


def _every_kernel() -> list:
    return [
        (g.name, plan) for spec in sorted((REPO / "specs").glob("*.moe")) for g in [generate(spec)] for plan in g.plans
    ]


def _check(report, plan) -> None:
    assert report.modeled_us > 0 and "modeled" in report.label
    assert report.hbm_bytes >= report.hbm_min_bytes > 0, plan.kernel_name
    if plan.family == "activation":
        assert report.macs_algorithmic == 0  # elementwise: no matmul
    else:
        assert report.macs_issued >= report.macs_algorithmic > 0, plan.kernel_name


def _profile_both_targets(spec: str, plan) -> None:
    path = OUT / spec / f"{plan.kernel_name}.py"
    for target in ("trn2", "trn3"):
        if plan.target == "trn3" and target == "trn2":
            with pytest.raises(ProfileError, match="planned for trn3.*use --target trn3"):
                profile_plan(plan, path, TOKENS, target)
            continue
        report, _, _ = profile_plan(plan, path, TOKENS, target)
        assert report.target == target
        _check(report, plan)


@pytest.mark.parametrize("family", sorted(REPRESENTATIVES))
def test_profile_a_kernel_of_each_family_on_both_targets(family, capsys):
    """`moegen profile` on the kernel's own target; its trace modeled on the other (one simulation)."""
    spec, kernel = REPRESENTATIVES[family]
    plan = next(p for p in generate(REPO / "specs" / f"{spec}.moe").plans if p.kernel_name == kernel)
    argv = ["profile", str(REPO / "specs" / f"{spec}.moe"), "--variant", kernel, "--tokens", str(TOKENS)]
    status = cli.main([*argv, "--out", str(OUT), "--target", plan.target, "--json"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    report = json.loads(captured.out)
    assert report["target"] == plan.target and report["modeled_us"] > 0
    assert report["hbm_bytes"] >= report["hbm_min_bytes"] > 0
    if plan.family == "activation":
        assert report["macs_algorithmic"] == 0  # elementwise: no matmul
    else:
        assert report["macs_issued"] >= report["macs_algorithmic"] > 0
    if plan.target == "trn3":
        status = cli.main([*argv, "--out", str(OUT), "--target", "trn2"])
        err = capsys.readouterr().err
        assert status != 0 and "planned for trn3" in err and "use --target trn3" in err and "Traceback" not in err
        return
    run = sim.last_run()
    other = perf.model(run.trace, "trn3", run.lnc, report["hbm_min_bytes"], report["macs_algorithmic"])
    _check(other, plan)


def test_a_spec_with_trn3_kernels_profiles_the_others_on_trn2(capsys):
    spec = str(REPO / "specs" / "nemotron3_nano_30b_a3b.moe")
    status = cli.main(["profile", spec, "--tokens", "1", "--out", str(OUT), "--target", "trn2", "--variant", "relu2"])
    assert status == 0
    status = cli.main(["profile", str(REPO / "specs" / "mlp_mxfp8_matrix.moe"), "--out", str(OUT), "--target", "trn2"])
    assert status != 0 and "planned for trn3" in capsys.readouterr().err  # every kernel trn3: refused


@pytest.mark.slow
@pytest.mark.parametrize("spec,plan", _every_kernel(), ids=lambda v: getattr(v, "kernel_name", v))
def test_profile_every_kernel_of_every_spec(spec, plan):
    _profile_both_targets(spec, plan)
