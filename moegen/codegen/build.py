"""Writing generated/ atomically, and checking it against what a build would write."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from moegen.codegen.render import is_hand_edited
from moegen.compiler import GeneratedSpec


class HandEditedError(Exception):
    """A generated file was edited by hand; building would lose the edit."""


def write(generated: GeneratedSpec, out_dir: Path, force: bool = False) -> Path:
    """Replace `out_dir/<spec>/` with exactly the generated files, or change nothing.

    Files are written to a temporary folder beside the target, which is then renamed
    into place, so a failure leaves the old folder as it was.
    """
    target = out_dir / generated.name
    if target.is_dir() and not force:
        edited = [
            str(path) for path in sorted(target.glob("*.py"))
            if path.name in generated.files and path.read_text() != generated.files[path.name]
            and is_hand_edited(path.read_text())
        ]
        if edited:
            raise HandEditedError(
                "refusing to overwrite hand-edited generated file(s): " + ", ".join(edited)
                + " (their content no longer matches the recorded hash; use --force to overwrite)"
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{generated.name}.", dir=out_dir))
    try:
        for name, text in sorted(generated.files.items()):
            (staging / name).write_text(text)
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{generated.name}.old.", dir=out_dir))
            os.rmdir(old)
            os.rename(target, old)
        os.rename(staging, target)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


@dataclass(frozen=True)
class Staleness:
    path: str
    problem: str  # 'stale' | 'missing' | 'extra' | 'hand-edited'


def check(generated: GeneratedSpec, out_dir: Path) -> list[Staleness]:
    """Every way `out_dir/<spec>/` differs from what a build would write."""
    target = out_dir / generated.name
    problems = []
    for name, text in sorted(generated.files.items()):
        path = target / name
        if not path.exists():
            problems.append(Staleness(str(path), "missing"))
            continue
        actual = path.read_text()
        if actual != text:
            problems.append(Staleness(str(path), "hand-edited" if is_hand_edited(actual) else "stale"))
    if target.is_dir():
        for path in sorted(target.iterdir()):
            if path.name not in generated.files:
                problems.append(Staleness(str(path), "extra"))
    return problems


def extra_spec_dirs(out_dir: Path, spec_names: set[str]) -> list[Staleness]:
    """Folders in out_dir that no spec produces."""
    if not out_dir.is_dir():
        return []
    return [Staleness(str(p), "extra") for p in sorted(out_dir.iterdir()) if p.name not in spec_names]
