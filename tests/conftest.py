"""Shared test fixtures: paths, and a tiny 'toy' kernel family that always renders.

The toy family lets the spine (build, check, explain, errors) be tested without depending
on the real families, which live in their own issues. It is installed by patching the
family table the compiler reads and adding one template to the Jinja2 loader.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import jinja2
import pytest

import moegen.codegen.render as render_module
import moegen.compiler as compiler_module
from moegen.plan import Family, families
from moegen.plan.common import Buffer, KernelPlan, PlanError
from moegen.spec.options import OptionSpec

REPO = Path(__file__).resolve().parents[1]
SPECS_DIR = REPO / "specs"
GOLDEN_DIR = Path(__file__).resolve().parent / "golden"

TOY_TEMPLATE = '''import nki
import nki.language as nl

TILE = 128


@nki.jit
def {{ plan.kernel_name }}(hidden_states):
    """Toy kernel: returns its input.

    Dimensions: T = {{ plan.tokens | py }}, H = {{ plan.hidden | py }}, block {{ plan.block | py }}.
    """
    assert hidden_states.shape == ({{ plan.tokens | py }}, {{ plan.hidden | py }}), "hidden_states"
    scale = {{ plan.scale | py }}
    return hidden_states
'''

TOY_OPTIONS = (
    OptionSpec(
        "tokens",
        "bound",
        "tokens per call",
        default=128,
        minimum=1,
        maximum=4096,
        reason="toy kernels hold at most 4096 tokens",
    ),
    OptionSpec(
        "block",
        "int",
        "tokens per block",
        default=256,
        minimum=128,
        maximum=1024,
        multiple_of=128,
        reason="a block is whole 128-token tiles",
    ),
    OptionSpec("scale", "float", "output scale", default=1.0),
    OptionSpec("mode", "choice", "loop kind", default="static", choices=("static", "hybrid")),
    OptionSpec("selective", "flag", "load only the selected experts"),
)


@dataclass(frozen=True, kw_only=True)
class ToyPlan(KernelPlan):
    tokens: int
    hidden: int
    block: int
    scale: float


def toy_plan(layer, variant) -> ToyPlan:
    """A plan with one plan-time limit: a block may not exceed the token bound."""
    if variant["block"] > variant["tokens"]:
        raise PlanError(
            (
                "block",
                f"block {variant['block']}: a block cannot exceed tokens<={variant['tokens']} "
                "(the toy kernel loads one block of tokens at a time)",
            )
        )
    return ToyPlan(
        family="toy",
        kernel_name=variant.name,
        spec_name=layer.name,
        lnc=variant["lnc"],
        tokens=variant["tokens"],
        hidden=layer.dims.hidden,
        block=variant["block"],
        scale=float(variant["scale"]),
        buffers=(Buffer("x_tile", "sbuf", 128, 2 * layer.dims.hidden, 2), Buffer("acc", "psum", 128, 2048)),
        decisions=(("block", "the toy keeps one block in SBUF"),),
    )


TOY_FAMILY = Family(name="toy", options=TOY_OPTIONS, plan=toy_plan, doc="toy kernels for the spine tests")


def _families_with_toy():
    return {**families(), "toy": TOY_FAMILY}


def _environment_with_toy() -> jinja2.Environment:
    env = render_module.environment.__wrapped__()
    env.loader = jinja2.ChoiceLoader([jinja2.DictLoader({"toy.py.j2": TOY_TEMPLATE}), env.loader])
    return env


@contextlib.contextmanager
def toy_family_installed():
    """Make the compiler know the 'toy' family (usable outside pytest fixtures, e.g. in hypothesis tests)."""
    saved = compiler_module.families, render_module.environment
    env = _environment_with_toy()
    compiler_module.families = _families_with_toy
    render_module.environment = lambda: env
    try:
        yield
    finally:
        compiler_module.families, render_module.environment = saved


@pytest.fixture
def toy_family():
    """The toy family, installed for the duration of the test."""
    with toy_family_installed():
        yield TOY_FAMILY


@pytest.fixture(scope="session")
def toy_installer():
    """The `toy_family_installed` context manager, for tests that cannot use function fixtures (hypothesis)."""
    return toy_family_installed


TOY_SPEC = """\
# A small layer for spine tests.
moe toy_layer {
  dims   hidden=256 intermediate=512 experts=8 top_k=2
  dtype  bf16
  router = linear -> softmax -> topk -> renormalize
  expert = gate_up -> silu -> down -> affinity_scale
  defaults toy { block=128 }
  kernel small : toy { tokens<=256 }
  kernel large : small { tokens<=1024 block=512 mode=hybrid selective scale=0.5 }
}
"""


@pytest.fixture(scope="session")
def toy_spec_text() -> str:
    return TOY_SPEC


@pytest.fixture
def toy_project(tmp_path: Path, monkeypatch) -> Path:
    """A working folder with specs/toy_layer.moe, made the current directory."""
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "toy_layer.moe").write_text(TOY_SPEC)
    monkeypatch.chdir(tmp_path)
    return tmp_path
