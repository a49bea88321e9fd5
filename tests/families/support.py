"""What the family kernel tests share: a small layer spec as text, building it into loaded kernels (once per
spec text and test module), and the tkg modes the tkg matrices run in."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache, partial
from pathlib import Path
from types import ModuleType

import pytest

from moegen import sim
from moegen.codegen.build import write
from moegen.compiler import GeneratedSpec, generate
from moegen.plan.common import KernelPlan

# The tkg modes the shared matrices of tests/families/test_tkg_kernels.py and test_tkg_mx.py run: the kernel
# options that select each.
MODES = {"selective": "", "distinct": "mode=distinct"}
each_mode = pytest.mark.parametrize("mode", list(MODES))


def kernel_line(mode: str, options: str = "") -> str:
    """The line of tkg kernel k in `mode` (a MODES key) with further options."""
    words = " ".join(word for word in (MODES[mode], options) if word)
    return f"kernel k : tkg {{ {words} }}" if words else "kernel k : tkg { }"


def layer_spec(
    kernels: str,
    *,
    hidden: int,
    intermediate: int,
    experts: int,
    top_k: int,
    dtype: str = "bf16",
    router: str | None = None,
    expert: str | None = None,
    quant: str = "",
) -> str:
    """The text of a one-layer spec `t` with the given pipelines and kernel lines."""
    lines = [
        "moe t {",
        f"  dims hidden={hidden} intermediate={intermediate} experts={experts} top_k={top_k}",
        f"  dtype {dtype}",
    ]
    lines += [f"  quant {quant}"] if quant else []
    lines += [f"  router = {router}"] if router else []
    lines += [f"  expert = {expert}"] if expert else []
    lines += [f"  {kernels}", "}"]
    return "\n".join(lines) + "\n"


# The small layer of the tkg tests: H 256 (two full tiles), I 192 (128 + 64), E 8, K 2, SiLU with POST_SCALE
# (keywords override each).
tkg_spec = partial(
    layer_spec, hidden=256, intermediate=192, experts=8, top_k=2, expert="gate_up -> silu -> down -> scale"
)


def build_spec(text: str, builds: Path) -> tuple[GeneratedSpec, dict[str, ModuleType]]:
    """Write `text` as t.moe in a fresh folder under `builds`, build it, load every kernel in the simulator."""
    root = builds / f"spec{len(list(builds.iterdir()))}"
    root.mkdir()
    path = root / "t.moe"
    path.write_text(text)
    generated = generate(path)
    folder = write(generated, root / "generated")
    modules = {plan.kernel_name: sim.load_module(folder / f"{plan.kernel_name}.py") for plan in generated.plans}
    return generated, modules


_BUILDS: list[Path] = []  # the folder the running test module builds in (set by its module_builds fixture)


@cache
def build(text: str) -> tuple[dict[str, KernelPlan], dict[str, Callable]]:
    """({kernel name: plan}, {kernel name: kernel function}) of a spec text, built once per test module."""
    generated, modules = build_spec(text, _BUILDS[0])
    plans = {plan.kernel_name: plan for plan in generated.plans}
    return plans, {name: getattr(modules[name], name) for name in plans}


def module_builds(folder: str, *caches: Callable):
    """An autouse module fixture: `build` (and the module's further `caches`) start empty and build into a
    fresh temporary `folder`. Assign it in the test module: `builds = module_builds("tkg_builds")`."""

    @pytest.fixture(scope="module", autouse=True)
    def builds(tmp_path_factory):
        _BUILDS[:] = [tmp_path_factory.mktemp(folder)]
        for cached in (build, *caches):
            cached.cache_clear()
        yield
        for cached in (build, *caches):
            cached.cache_clear()

    return builds
