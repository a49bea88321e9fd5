"""Text of a `.moe` file -> `SpecSyntax`; lark errors become located diagnostics."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from moegen.diagnostics import Diagnostic, Span, SpecError, source_lines
from moegen.spec.model import (
    Defaults,
    KernelDecl,
    Option,
    Pipeline,
    Setting,
    SpecSyntax,
    Stage,
    StageArg,
    Value,
)

# How lark's terminal names read in an error message.
TOKEN_WORDS = {
    "NAME": "a name",
    "NUMBER": "a number",
    "CMP": "'<=', '<', '>=' or '>'",
    "_NEWLINE": "end of line",
    "LBRACE": "'{'",
    "RBRACE": "'}'",
    "LPAR": "'('",
    "RPAR": "')'",
    "EQUAL": "'='",
    "COLON": "':'",
    "COMMA": "','",
    "MINUS": "'-'",
    "SEMICOLON": "';'",
    "__ANON_0": "'->'",
    "MOE": "'moe'",
    "KERNEL": "'kernel'",
    "DEFAULTS": "'defaults'",
    "$END": "end of file",
}


# Longest number literal accepted (digits, point and exponent).
MAX_NUMBER_CHARS = 100


@lru_cache(maxsize=1)
def _parser() -> Lark:
    grammar = resources.files("moegen.spec").joinpath("grammar.lark").read_text()
    return Lark(grammar, parser="lalr", propagate_positions=True, maybe_placeholders=False)


def _span_of_token(path: str, token: Token) -> Span:
    return Span(path, token.line, token.column, token.end_line, token.end_column)


def _span_of_meta(path: str, meta) -> Span:
    return Span(path, meta.line, meta.column, meta.end_line, meta.end_column)


class _ToSyntax(Transformer):
    """Turns the lark tree into syntax objects in one pass."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def _tok(self, token: Token) -> Span:
        return _span_of_token(self.path, token)

    # values
    def number(self, children):
        (token,) = children
        text = str(token)
        if len(text) > MAX_NUMBER_CHARS:  # int() refuses over 4300 digits; no limit is near this
            raise SpecError([Diagnostic(self._tok(token), f"a number of {len(text)} characters is too long")])
        value = float(text) if any(c in text for c in ".eE") else int(text)
        return Value(value, self._tok(token))

    @v_args(meta=True)
    def negative_number(self, meta, children):
        (token,) = children
        value = self.number([token])
        return Value(-value.value, _span_of_meta(self.path, meta))

    def word(self, children):
        (token,) = children
        return Value(str(token), self._tok(token))

    # options
    @v_args(meta=True)
    def option_flag(self, meta, children):
        (name,) = children
        return Option(str(name), None, None, _span_of_meta(self.path, meta), self._tok(name))

    @v_args(meta=True)
    def option_value(self, meta, children):
        name, value = children
        return Option(str(name), "=", value, _span_of_meta(self.path, meta), self._tok(name))

    @v_args(meta=True)
    def option_bound(self, meta, children):
        name, op, value = children
        return Option(str(name), str(op), value, _span_of_meta(self.path, meta), self._tok(name))

    # stage arguments
    @v_args(meta=True)
    def arg_value(self, meta, children):
        (value,) = children
        return StageArg(None, value, None, None, _span_of_meta(self.path, meta))

    @v_args(meta=True)
    def arg_keyword(self, meta, children):
        name, value = children
        return StageArg(str(name), value, None, None, _span_of_meta(self.path, meta))

    @v_args(meta=True)
    def arg_bound(self, meta, children):
        name, op, value = children
        span = _span_of_meta(self.path, meta)
        if str(op) in ("<=", "<"):
            return StageArg(str(name), None, None, value, span)
        return StageArg(str(name), None, value, None, span)

    @v_args(meta=True)
    def arg_range(self, meta, children):
        first, op1, name, op2, second = children
        span = _span_of_meta(self.path, meta)
        if str(op1) in ("<=", "<") and str(op2) in ("<=", "<"):
            return StageArg(str(name), None, first, second, span)
        if str(op1) in (">=", ">") and str(op2) in (">=", ">"):
            return StageArg(str(name), None, second, first, span)
        raise SpecError([Diagnostic(span, "a range reads 'low <= name <= high'")])

    @v_args(meta=True)
    def stage(self, meta, children):
        name, *args = children
        return Stage(str(name), tuple(args), _span_of_meta(self.path, meta), self._tok(name))

    @v_args(meta=True)
    def pipeline(self, meta, children):
        name, *stages = children
        return Pipeline(str(name), tuple(stages), _span_of_meta(self.path, meta), self._tok(name))

    @v_args(meta=True)
    def setting(self, meta, children):
        name, *options = children
        return Setting(str(name), tuple(options), _span_of_meta(self.path, meta), self._tok(name))

    def body(self, children):
        return tuple(children)

    @v_args(meta=True)
    def kernel(self, meta, children):
        name, base, *rest = children
        options = rest[0] if rest else ()
        return KernelDecl(
            str(name), str(base), options, _span_of_meta(self.path, meta), self._tok(name), self._tok(base)
        )

    @v_args(meta=True)
    def defaults(self, meta, children):
        family, options = children
        return Defaults(str(family), options, _span_of_meta(self.path, meta), self._tok(family))

    def layer(self, children):
        name, *statements = children
        return name, statements

    def start(self, children):
        return children[0]


def _expected_words(expected) -> str:
    words = sorted({TOKEN_WORDS.get(name, f"'{name.lower()}'") for name in expected})
    if len(words) > 6:
        words = words[:6] + ["..."]
    return ", ".join(words)


def _end_of_text(path: str, text: str) -> Span:
    """Just after the last character that is not white space (lines counted at '\\n' like lark)."""
    lines = source_lines(text.rstrip())
    line, column = len(lines), len(lines[-1]) + 1
    return Span(path, line, column, line, column + 1)


def _syntax_diagnostic(path: str, text: str, error: UnexpectedInput) -> Diagnostic:
    line = getattr(error, "line", 1) or 1
    column = getattr(error, "column", 1) or 1
    if isinstance(error, UnexpectedCharacters):
        char = text[error.pos_in_stream] if error.pos_in_stream < len(text) else ""
        shown = repr(char) if char.isprintable() and char.strip() else f"U+{ord(char):04X}" if char else "?"
        span = Span(path, line, column, line, column + 1)
        return Diagnostic(span, f"unexpected character {shown}", "names are [A-Za-z_][A-Za-z0-9_]*")
    if isinstance(error, UnexpectedEOF) or (isinstance(error, UnexpectedToken) and error.token.type == "$END"):
        return Diagnostic(
            _end_of_text(path, text), f"unexpected end of file, expected {_expected_words(error.expected)}"
        )
    if isinstance(error, UnexpectedToken):
        token = error.token
        shown = "end of line" if token.type == "_NEWLINE" else f"'{token}'"
        span = Span(path, token.line, token.column, token.line, token.column + max(1, len(str(token).strip())))
        return Diagnostic(span, f"unexpected {shown}, expected {_expected_words(error.expected)}")
    return Diagnostic(Span(path, line, column, line, column + 1), str(error).splitlines()[0])


def parse(text: str, path: str = "<spec>") -> SpecSyntax:
    """Parse spec text; raise SpecError with located diagnostics on any syntax error."""
    try:
        tree = _parser().parse(text)
        name_token, statements = _ToSyntax(path).transform(tree)
    except UnexpectedInput as error:
        raise SpecError([_syntax_diagnostic(path, text, error)], text) from None
    except VisitError as error:
        if isinstance(error.orig_exc, SpecError):
            raise SpecError(error.orig_exc.diagnostics, text) from None
        raise
    by_kind: dict[type, list] = {Setting: [], Pipeline: [], KernelDecl: [], Defaults: []}
    for statement in statements:
        if isinstance(statement, Tree):  # pragma: no cover - every rule is transformed
            raise AssertionError(statement)
        by_kind[type(statement)].append(statement)
    return SpecSyntax(
        path=path,
        text=text,
        name=str(name_token),
        name_span=_span_of_token(path, name_token),
        settings=tuple(by_kind[Setting]),
        pipelines=tuple(by_kind[Pipeline]),
        kernels=tuple(by_kind[KernelDecl]),
        defaults=tuple(by_kind[Defaults]),
    )
