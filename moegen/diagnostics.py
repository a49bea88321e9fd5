"""Compiler-style diagnostics: `path:line:col: error: message` (or `warning:`), the source line, a caret.

An error stops the spec (SpecError, exit status 2); a warning is printed and changes nothing else.
"""

from __future__ import annotations

import difflib
import re
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
    choices = sorted(set(choices))
    if not choices or len(word) > 2 * max(map(len, choices)):  # cannot be close; difflib would index all of it
        return None
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
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


# A source line longer than this is shown as a window around the caret, with '...' where it is cut.
MAX_SHOWN = 160
CONTEXT_BEFORE = 60


def _window(source: str, column: int, width: int) -> tuple[str, int, int]:
    """(shown text, caret column in it (1-based), underline width) for a source line of any length."""
    if len(source) <= MAX_SHOWN:
        return source, column, width
    start = max(0, min(column - 1 - CONTEXT_BEFORE, len(source) - MAX_SHOWN))
    end = start + MAX_SHOWN
    head = "..." if start > 0 else ""
    tail = "..." if end < len(source) else ""
    caret = column - start + len(head)
    return head + source[start:end] + tail, caret, max(1, min(width, end - (column - 1)))


# A word of the spec quoted in a message (an unknown name, a value) is cut to this many characters.
MAX_QUOTED = 60
_LONG_WORD = re.compile(r"[^\s'\"]{" + str(MAX_QUOTED + 1) + ",}")


def _shorten(message: str) -> str:
    """The message with every word longer than MAX_QUOTED cut, saying how long it was."""
    return _LONG_WORD.sub(lambda m: f"{m[0][:MAX_QUOTED]}... ({len(m[0])} characters)", message)


def render(diagnostics: Iterable[Diagnostic], text: str) -> str:
    """Render diagnostics with the offending source line (or a window of a long one) and a caret under the token."""
    lines = source_lines(text) if text else []
    out = []
    for diag in diagnostics:
        span = diag.span
        out.append(f"{span.path}:{span.line}:{span.column}: {diag.severity}: {_shorten(diag.message)}")
        if 1 <= span.line <= len(lines):
            source = lines[span.line - 1]
            width = span.end_column - span.column if span.end_line == span.line else 1
            width = max(1, min(width, len(source) - span.column + 1))
            shown, caret, width = _window(source, span.column, width)
            out.append(f"  {_printable(shown)}")
            out.append("  " + " " * (caret - 1) + "^" + "~" * (width - 1))
        if diag.hint:
            out.append(f"  hint: {_shorten(diag.hint)}")
    return "\n".join(out)
