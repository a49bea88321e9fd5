"""`moegen tune`: each decode mode of a tkg kernel generated and modeled at one token count (modeled)."""

from __future__ import annotations

from moegen.cli import main

SPEC = """moe t {{
  dims   hidden=256 intermediate=192 experts=8 top_k=2
  dtype  bf16
  router = linear -> topk -> softmax
  expert = gate_up -> silu -> down -> scale
  kernel k : tkg {{ {options} }}
}}
"""


def _tune(tmp_path, capsys, options: str, tokens: int) -> list[str]:
    path = tmp_path / "t.moe"
    path.write_text(SPEC.format(options=options))
    assert main(["tune", str(path), "--tokens", str(tokens)]) == 0
    return capsys.readouterr().out.splitlines()


def test_distinct_is_chosen_when_tokens_share_experts(tmp_path, capsys):
    """At T=8 over 8 experts, K=2: selective reads 16 weight sets, distinct each selected expert once."""
    lines = _tune(tmp_path, capsys, "tokens<=32", 8)
    assert lines[0] == "k (mode=selective in the spec), T=8, trn2, modeled:"
    assert lines[1].split()[:2] == ["chosen", "distinct"] and "HBM 1.00x min" in lines[1]
    assert lines[2].split()[0] == "runner-up" and len(lines) == 4
    assert lines[3].split()[0] == "selective"


def test_refused_modes_are_listed_with_their_reason(tmp_path, capsys):
    lines = _tune(tmp_path, capsys, "ep=2", 2)
    selective = next(line for line in lines if " selective " in line)
    assert "refused:" in selective and "expert parallelism" in selective
    assert lines[1].split()[0] == "chosen"


def test_a_spec_without_tkg_kernels_fails(tmp_path, capsys):
    path = tmp_path / "t.moe"
    path.write_text(SPEC.replace("kernel k : tkg {{ {options} }}", "kernel r : router {{ }}").format())
    assert main(["tune", str(path)]) == 1
    assert "no tkg kernel" in capsys.readouterr().err
