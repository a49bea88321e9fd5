"""Writing generated/ atomically, and checking it against what a build would write.

A build replaces `out/<spec>/` by two renames: `out/<spec>` -> `out/.<spec>.old.XXXXXXXX`, then the
staging folder `out/.<spec>.XXXXXXXX` -> `out/<spec>`. Builds and checks of one output folder hold
an exclusive `flock` on that folder, so two builds never interleave their renames; on entry they
`recover` what an interrupted build (a kill between or after the renames) left behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: builds are not locked
    fcntl = None

from moegen.codegen.render import is_hand_edited
from moegen.compiler import GeneratedSpec


class HandEditedError(Exception):
    """A generated file was edited by hand; building would lose the edit."""


# Folders Python or tools may create beside generated files; they are neither written nor checked.
IGNORED_NAMES = frozenset({"__pycache__"})


def _hand_edited_files(generated: GeneratedSpec, target: Path) -> list[str]:
    """Files in target a build would overwrite or delete that are not pristine moegen output.

    A file of an old variant is deleted by the rebuild: that is only safe when it still matches
    its recorded hash, so a hand-edited or hand-written file blocks the build too.
    """
    edited = []
    for path in sorted(target.iterdir()):
        if path.name in IGNORED_NAMES or not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        if text != generated.files.get(path.name) and is_hand_edited(text):
            edited.append(str(path))
    return edited


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Folders a build leaves only when it is interrupted: `.<spec>.XXXXXXXX` (staging, mkdtemp's suffix)
# and `.<spec>.old.XXXXXXXX` (the previous build, moved aside).
_STAGING = re.compile(r"\.(?P<spec>[A-Za-z_][A-Za-z0-9_]*)\.(?P<old>old\.)?[a-z0-9_]{8}")


@contextlib.contextmanager
def locked(out_dir: Path) -> Iterator[None]:
    """Hold an exclusive flock on the folder out_dir (created if missing) for the block.

    The folder itself is locked, so no lock file appears among the generated folders.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # pragma: no cover
        yield
        return
    fd = os.open(out_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def recover(out_dir: Path) -> list[str]:
    """Undo what interrupted builds left in out_dir; call with the lock held. Returns what was done.

    A staging folder is deleted. A moved-aside `.old.` folder is renamed back when its spec folder
    is missing (the kill fell between the two renames: the build did not happen), else deleted.
    """
    done = []
    debris = sorted(
        (p for p in out_dir.iterdir() if _STAGING.fullmatch(p.name) and p.is_dir() and not p.is_symlink()),
        key=lambda p: p.stat().st_mtime,
        reverse=True,  # newest first: if several old folders wait for one spec, the newest is restored
    )
    for path in debris:
        match = _STAGING.fullmatch(path.name)
        target = out_dir / match["spec"]
        if match["old"] and not target.exists():
            os.rename(path, target)
            done.append(f"restored {target} from {path.name}, left by an interrupted build")
        else:
            shutil.rmtree(path)
            done.append(f"removed {path}, left by an interrupted build")
    return done


def write(generated: GeneratedSpec, out_dir: Path, force: bool = False) -> Path:
    """Replace `out_dir/<spec>/` with exactly the generated files, or change nothing.

    Files are written to a temporary folder beside the target, which is then renamed
    into place, so a failure leaves the old folder as it was. Raises OSError when out_dir
    cannot be written, HandEditedError when a build would lose a hand edit.
    """
    target = out_dir / generated.name
    with locked(out_dir):
        for message in recover(out_dir):
            print(f"note: {message}", file=sys.stderr)
        if target.is_dir() and not force:
            edited = _hand_edited_files(generated, target)
            if edited:
                raise HandEditedError(
                    "refusing to overwrite hand-edited generated file(s): "
                    + ", ".join(edited)
                    + " (their content no longer matches the recorded hash; use --force to overwrite)"
                )
        _replace(generated, out_dir, target)
    return target


def _replace(generated: GeneratedSpec, out_dir: Path, target: Path) -> None:
    """Write the files into a staging folder and rename it to target (the lock is held)."""
    staging = Path(tempfile.mkdtemp(prefix=f".{generated.name}.", dir=out_dir))
    try:
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes it private (0700); a build makes a normal folder
        for name, text in sorted(generated.files.items()):
            (staging / name).write_text(text, encoding="utf-8", newline="\n")  # same bytes on every OS
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
        actual = path.read_text(encoding="utf-8", errors="replace")
        if actual != text:
            problems.append(Staleness(str(path), "hand-edited" if is_hand_edited(actual) else "stale"))
    if target.is_dir():
        for path in sorted(target.iterdir()):
            if path.name not in generated.files and path.name not in IGNORED_NAMES:
                problems.append(Staleness(str(path), "extra"))
    return problems


def extra_spec_dirs(out_dir: Path, spec_names: set[str]) -> list[Staleness]:
    """Folders in out_dir that no spec produces."""
    if not out_dir.is_dir():
        return []
    return [Staleness(str(p), "extra") for p in sorted(out_dir.iterdir()) if p.name not in spec_names]
