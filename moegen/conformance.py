"""`moegen conformance [PATH...]`: generated kernels use only the real NKI API.

The API table `moegen/nki_api.json` ships with the package: every function (with its parameters),
class and plain name of the `nki`, `nki.language`, `nki.isa` and `nki.collectives` modules of NKI 0.6,
extracted from the API stub modules of the public Neuron documentation (the file records the source
and its commit). This check reads each Python file's syntax tree, without importing it, and reports
every attribute of an NKI module that the table lacks and every keyword argument the called function
does not take. It is independent of the simulator, whose namespaces `tests/sim/test_api_parity.py`
compares with the same table.

    python -m moegen.conformance generated     # or: moegen conformance generated
"""

from __future__ import annotations

import ast
import json
import sys
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

API_TABLE = "nki_api.json"
# Local names the kernels use when a file's imports say nothing else.
DEFAULT_ALIASES = {"nki": "nki", "nl": "nki.language", "nisa": "nki.isa", "ncc": "nki.collectives"}
SUBMODULES = ("language", "isa", "collectives", "typing")  # `nki.<these>` are modules, not API names


@lru_cache(maxsize=1)
def api_table() -> dict[str, dict]:
    """module -> {'functions': {name: [param, ...]}, 'classes': {...}, 'names': {...}} (NKI 0.6)."""
    text = resources.files("moegen").joinpath(API_TABLE).read_text(encoding="utf-8")
    return json.loads(text)["modules"]


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


def _known(module: str, name: str) -> bool:
    table = api_table()[module]
    if module == "nki" and name in SUBMODULES:
        return True
    return name in table["functions"] or name in table["classes"] or name in table["names"]


def _keywords(module: str, name: str) -> set[str] | None:
    """The keyword names the function takes, or None when it takes any (a `**kwargs` parameter) or is no function."""
    params = api_table()[module]["functions"].get(name)
    if params is None or any(p["name"].startswith("**") for p in params):
        return None
    return {p["name"].lstrip("*") for p in params}


def _aliases(tree: ast.Module) -> dict[str, str]:
    """Local name -> NKI module, from the file's imports (the usual `nl`, `nisa`, ... when it has none)."""
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in api_table():  # `import nki.isa as nisa` binds nisa; `import nki.isa` binds nki
                    found[alias.asname or "nki"] = alias.name if alias.asname else "nki"
        elif isinstance(node, ast.ImportFrom) and node.module == "nki":
            for alias in node.names:
                if f"nki.{alias.name}" in api_table():
                    found[alias.asname or alias.name] = f"nki.{alias.name}"
    return found or dict(DEFAULT_ALIASES)


def _module_attribute(node: ast.AST, aliases: dict[str, str]) -> tuple[str, str] | None:
    """(module, name) for `alias.name` and `nki.language.name`-style chains, else None."""
    if not isinstance(node, ast.Attribute):
        return None
    value = node.value
    if isinstance(value, ast.Name) and value.id in aliases:
        return aliases[value.id], node.attr
    if (
        isinstance(value, ast.Attribute)
        and isinstance(value.value, ast.Name)
        and aliases.get(value.value.id) == "nki"
        and f"nki.{value.attr}" in api_table()
    ):
        return f"nki.{value.attr}", node.attr
    return None


def check_source(source: str, path: str) -> list[Finding]:
    """Every use of an NKI name or keyword argument in source that the API table does not have."""
    try:
        tree = ast.parse(source, filename=path)
    except SyntaxError as error:
        return [Finding(path, error.lineno or 1, f"not valid Python: {error.msg}")]
    aliases = _aliases(tree)
    findings = []
    for node in ast.walk(tree):
        used = _module_attribute(node, aliases)
        if used and not _known(*used):
            findings.append(Finding(path, node.lineno, f"{used[0]}.{used[1]} is not in the real NKI API"))
        if isinstance(node, ast.Call):
            called = _module_attribute(node.func, aliases)
            accepted = _keywords(*called) if called else None
            for keyword in node.keywords if accepted is not None else ():
                if keyword.arg is not None and keyword.arg not in accepted:
                    findings.append(
                        Finding(path, node.lineno, f"{called[0]}.{called[1]}() takes no keyword '{keyword.arg}'")
                    )
    return sorted(findings, key=lambda f: (f.line, f.message))


def python_files(paths: list[Path]) -> list[Path]:
    """The .py files under each folder given, and each file given, in order."""
    files = []
    for path in paths:
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return files


def main(argv: list[str] | None = None) -> int:
    """Print every finding and a summary line; 0 when there is none, 1 otherwise."""
    paths = [Path(p) for p in (argv if argv else ["generated"])]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        print(f"error: no such file or folder: {', '.join(missing)}", file=sys.stderr)
        return 1
    files = python_files(paths)
    if not files:
        print(f"error: no Python files in {', '.join(map(str, paths))}: nothing to check", file=sys.stderr)
        return 1
    findings = [f for path in files for f in check_source(path.read_text(encoding="utf-8"), str(path))]
    for finding in findings:
        print(finding)
    print(f"{len(files)} file(s), {len(findings)} use(s) outside the real NKI API ({API_TABLE})")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
