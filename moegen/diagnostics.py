"""Compiler-style diagnostics: `path:line:col: error: message` (or `warning:`), the source line, a caret.

An error stops the spec (SpecError, exit status 2); a warning is printed and changes nothing else.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Span:
    """A location in a spec file; line and column are 1-based, end_column is exclusive."""

    path: str
    line: int
    column: int
    end_line: int
    end_column: int


SEVERITIES = ("error", "warning")


@dataclass(frozen=True)
class Diagnostic:
    span: Span
    message: str
    hint: str | None = None
    severity: str = "error"  # one of SEVERITIES

    def __post_init__(self):
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, not {self.severity!r}")


class SpecError(Exception):
    """One or more diagnostics for a spec; `str()` renders all of them."""

    def __init__(self, diagnostics: Iterable[Diagnostic], text: str = ""):
        self.diagnostics = sorted(diagnostics, key=lambda d: (d.span, d.message))
        self.text = text
        super().__init__(render(self.diagnostics, text))


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """A hint naming the closest known name, or None when nothing is close."""
    close = difflib.get_close_matches(word, sorted(set(choices)), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


def source_lines(text: str) -> list[str]:
    """The lines of a spec as the parser numbers them: split at '\\n' only.

    `str.splitlines` also splits at form feeds, U+2028 and other separators that the
    grammar treats as ordinary characters, which would show the wrong source line.
    """
    return [line.removesuffix("\r") for line in text.split("\n")]


def _printable(line: str) -> str:
    """The source line with control characters shown as spaces (one character each, so the caret stays put)."""
    return "".join(c if c.isprintable() else " " for c in line)


def render(diagnostics: Iterable[Diagnostic], text: str) -> str:
    """Render diagnostics with the offending source line and a caret under the token."""
    lines = source_lines(text) if text else []
    out = []
    for diag in diagnostics:
        span = diag.span
        out.append(f"{span.path}:{span.line}:{span.column}: {diag.severity}: {diag.message}")
        if 1 <= span.line <= len(lines):
            source = _printable(lines[span.line - 1])
            width = span.end_column - span.column if span.end_line == span.line else 1
            width = max(1, min(width, len(source) - span.column + 1))
            out.append(f"  {source}")
            out.append("  " + " " * (span.column - 1) + "^" + "~" * (width - 1))
        if diag.hint:
            out.append(f"  hint: {diag.hint}")
    return "\n".join(out)
