"""A kernel variant for an AWS-signature call: spec text -> generated kernel, cached by content hash.

The spec text a call maps to is the variant's identity. Its sha256 names a folder under the cache
directory (`MOEGEN_NKILIB_CACHE`, default `~/.cache/moegen/nkilib`) holding the spec and the
`generated/<layer>/` folder exactly as `moegen build` writes it; a folder that `moegen check` finds
stale is rebuilt. Loaded kernels are kept per process.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from moegen import sim
from moegen.codegen.build import check, write
from moegen.compiler import generate
from moegen.plan.common import KernelPlan

KERNEL_NAME = "kernel"


class UnsupportedCall(ValueError):
    """An AWS flag combination moegen cannot generate; the message names the flag and the reason."""


@dataclass(frozen=True)
class Variant:
    """One generated kernel: its plan, the loaded @nki.jit function and the file it came from."""

    plan: KernelPlan
    kernel: object
    path: Path


_LOADED: dict[Path, Variant] = {}  # by cache folder


def cache_dir() -> Path:
    return Path(os.environ.get("MOEGEN_NKILIB_CACHE", Path.home() / ".cache" / "moegen" / "nkilib"))


def spec_text(
    family: str,
    dims: dict[str, int],
    dtype: str,
    pipelines: dict[str, str],
    options: list[str],
    quant: str = "",
) -> tuple[str, str]:
    """(layer name, spec text) of a one-kernel spec; the layer name carries the text's hash."""
    body = [
        "  dims " + " ".join(f"{name}={value}" for name, value in dims.items()),
        f"  dtype {dtype}",
    ]
    body += [f"  quant {quant}"] if quant else []
    body += [f"  {name} = {pipeline}" for name, pipeline in pipelines.items()]
    body.append(f"  kernel {KERNEL_NAME} : {family} {{ {' '.join(options)} }}")
    digest = hashlib.sha256("\n".join(body).encode()).hexdigest()[:16]
    name = f"nkilib_{family}_{digest}"
    return name, "\n".join([f"moe {name} {{", *body, "}"]) + "\n"


def variant(name: str, text: str) -> Variant:
    """The generated kernel of a spec text: from this process, from the disk cache, or built now."""
    folder = cache_dir() / name
    if folder in _LOADED:
        return _LOADED[folder]
    folder.mkdir(parents=True, exist_ok=True)
    spec_path = folder / f"{name}.moe"
    if not spec_path.exists() or spec_path.read_text() != text:
        spec_path.write_text(text)
    generated = generate(spec_path)
    out_dir = folder / "generated"
    if check(generated, out_dir):
        write(generated, out_dir, force=True)
    path = out_dir / name / f"{KERNEL_NAME}.py"
    module = sim.load_module(path)
    loaded = Variant(plan=generated.plans[0], kernel=getattr(module, KERNEL_NAME), path=path)
    _LOADED[folder] = loaded
    return loaded


class Launchable:
    """A host function launched like an @nki.jit kernel: `f(...)` on one core, `f[2](...)` on LNC=2."""

    def __init__(self, function, lnc: int = 1):
        self.function, self.lnc = function, lnc
        self.__doc__, self.__name__ = function.__doc__, function.__name__

    def __getitem__(self, grid) -> Launchable:
        lnc = grid[0] if isinstance(grid, tuple) else grid
        if lnc not in (1, 2):
            raise UnsupportedCall(f"{self.__name__}[{grid}]: moegen's kernels run on 1 or 2 logical cores")
        return Launchable(self.function, lnc)

    def __call__(self, *args, **kwargs):
        return self.function(*args, lnc=self.lnc, **kwargs)
