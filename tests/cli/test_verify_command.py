"""`moegen verify` as a user meets it: the pass rule beside each error, argument checks, several specs."""

from __future__ import annotations

from pathlib import Path

import pytest

from moegen import cli
from moegen.verify import criterion

REPO = Path(__file__).resolve().parents[2]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    status = cli.main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.mark.parametrize("tokens", ["0", "-3", "many", "1.5"])
def test_tokens_must_be_a_positive_whole_number(tokens, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["verify", "specs/mixtral_8x7b.moe", f"--tokens={tokens}"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "argument --tokens:" in err and tokens in err and "Traceback" not in err


def test_an_unknown_variant_lists_the_kernels(toy_project, toy_family, capsys):
    for command in ("explain", "verify"):
        status, _, err = run(capsys, command, "specs/toy_layer.moe", "--variant", "nope")
        assert status == 1
        assert err == "specs/toy_layer.moe: error: no kernel named 'nope'; the kernels are: small, large\n"


def test_verify_takes_several_specs_and_prints_each_outputs_pass_rule(capsys, monkeypatch):
    """Two specs in one call, --variant picking the kernel each has; each output line says what 'ok' means."""
    monkeypatch.chdir(REPO)
    status, out, err = run(
        capsys,
        "verify",
        "specs/gpt_oss_120b.moe",
        "specs/mixtral_8x7b.moe",
        "--variant",
        "router_topk",
        "--tokens",
        "4",
    )
    assert status == 0, out + err
    assert "specs/gpt_oss_120b.moe: all kernels match the reference" in out
    assert "specs/mixtral_8x7b.moe: all kernels match the reference" in out
    bf16 = criterion("bf16", 2 * 2.0**-7, 2 * 2.0**-7)
    assert bf16 == "bf16: |got - want| <= 0.0156 + 0.0156*|want|"
    assert out.count(f"[per element, {bf16}]") == 4  # router_logits and expert_affinities of both kernels
    assert out.count("expert_index") == 2 and out.count("[per element, exact: got == want]") == 2


def test_a_variant_in_none_of_several_specs_is_an_error(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    status, _, err = run(capsys, "verify", "specs/gpt_oss_120b.moe", "specs/deepseek_v3.moe", "--variant", "nope")
    assert status == 1
    assert err.startswith("error: no kernel named 'nope'; the kernels are: router_topk, ")
    assert "prefill" in err and "shared_expert" in err  # every kernel of both specs
