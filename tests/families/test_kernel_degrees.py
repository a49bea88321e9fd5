"""Per-kernel tp= / ep= work the same way in every family that holds expert weights: the kernel's option
overrides the layer's dims, and a degree that does not divide I or E is a located error."""

from __future__ import annotations

import pytest

from moegen.compiler import generate
from moegen.diagnostics import SpecError

SPEC = """moe t {
  dims hidden=512 intermediate=1024 experts=8 top_k=2 shared_experts=1 shared_intermediate=512 tp=2
  dtype bf16
  expert = gate_up -> silu -> down -> affinity_scale
  shared_expert = gate_up -> silu -> down
  kernel KERNEL
}
"""


@pytest.mark.parametrize(
    "kernel, field, value",
    [
        ("d : tkg { tp=4 }", "intermediate", 256),
        ("a : tkg { mode=all_experts ep=4 }", "local_experts", 2),
        ("p : cte { tp=4 }", "intermediate", 256),
        ("p : cte { ep=2 }", "experts", 4),
        ("s : shared { tp=4 }", "intermediate", 128),
        ("m : mlp { tp=4 target=trn3 }", "intermediate", 256),
    ],
)
def test_kernel_degree_overrides_dims(tmp_path, kernel, field, value):
    path = tmp_path / "t.moe"
    path.write_text(
        SPEC.replace("KERNEL", kernel).replace("experts=8", "experts=1" if "mlp" in kernel else "experts=8")
    )
    if "mlp" in kernel:
        path.write_text(path.read_text().replace("top_k=2", "top_k=1").replace(" -> affinity_scale", ""))
    assert getattr(generate(path).plans[0], field) == value


@pytest.mark.parametrize("kernel", ["d : tkg { tp=3 }", "p : cte { tp=3 }", "p : cte { ep=3 }", "s : shared { tp=3 }"])
def test_a_degree_that_does_not_divide_is_a_located_error(tmp_path, kernel):
    path = tmp_path / "t.moe"
    path.write_text(SPEC.replace("KERNEL", kernel))
    with pytest.raises(
        SpecError, match=r"t\.moe:6:\d+: error: kernel '\w+': (tp|ep) 3: \w+ \d+ is not divisible by it"
    ):
        generate(path)
