"""Source text → AST: the parse step (docs/language.md, "Syntax").

``grammar.lark`` describes *lines*. Lark's LALR parser runs with ``_LineBuilder`` inlined as
its transformer, so each good line becomes an item (an AST ``Param``/``OpStmt`` or a small
block marker) the moment it is reduced, with no parse tree in between. On a syntax error the
line is reported and parsing resumes at the next line, keeping the items already built;
``blocks.assemble`` then matches GPU_KERNEL/GPU_END and REPEAT/END_REPEAT over the items.
So every bad line is reported, not only the first, and the work stays linear in the source.

Nothing here judges meaning (unknown ops, names, dtypes, shapes): that is validate.py's job.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

from lark import Lark, Token, Transformer, UnexpectedCharacters, UnexpectedInput, UnexpectedToken
from lark.utils import TextSlice

from . import limits
from .ast import Attr, DType, Name, Number, OpStmt, Param, ParamType, Pos, WorkloadHint
from .blocks import (
    BrokenLine,
    ClassLine,
    CodeOpen,
    KernelEnd,
    KernelOpen,
    ParsedKernel,
    PriorityLine,
    RepeatClose,
    RepeatOpen,
    assemble,
)
from .errors import Code, Diagnostic
from .lexer import FastLexer, NumberTooLong
from .ops import KEYWORDS, OPS

_DTYPES = {"float": DType.FLOAT32, "int": DType.INT32, **{d.value: d for d in DType}}
_SCALAR: tuple = ()  # a param written without brackets


def _check_number_length(token: Token) -> Token:
    """The MAX_NUMBER_LEN check of FastLexer, for Lark's own lexer (the reference)."""
    if len(token) > limits.MAX_NUMBER_LEN:
        raise NumberTooLong(token)
    return token


def _pos(token: Token) -> Pos:
    return Pos(token.line, token.column)


def _at(token: Token) -> int:
    """A node's position, packed (ast.Pos): what Name, Number, Attr and OpStmt keep."""
    return (token.line << 32) | token.column


class _LineBuilder(Transformer):
    """Builds one item per line into ``items`` (set for each parse, under ``_LOCK``).

    Methods take the children list as Lark passes it (no ``v_args`` wrapper: this runs for
    every line of every source)."""

    items: list

    def start(self, _lines):
        return None

    def kernel_open(self, c):
        self.items.append(KernelOpen(str(c[1]), _pos(c[0])))

    def kernel_end(self, c):
        self.items.append(KernelEnd(_pos(c[0])))

    def param(self, c):
        shape = c[3] if len(c) > 3 else _SCALAR
        self.items.append(Param(str(c[1]), ParamType(_DTYPES[str(c[2])], shape), _pos(c[0])))

    def shape(self, dims):
        if not dims:
            return None  # `float[]`: any shape, bound at launch
        return tuple(int(d) if d.type == "INT" else str(d) for d in dims)

    def class_hint(self, c):
        self.items.append(ClassLine(WorkloadHint(str(c[1])), _pos(c[0])))

    def priority(self, c):
        self.items.append(PriorityLine(int(c[1]), _pos(c[0])))

    def code_open(self, c):
        self.items.append(CodeOpen(_pos(c[0])))

    def repeat_open(self, c):
        self.items.append(RepeatOpen(int(c[1]), _pos(c[0])))

    def repeat_close(self, c):
        self.items.append(RepeatClose(_pos(c[0])))

    def dims(self, c):
        return tuple(int(d) if d.type == "SIGNED_INT" else str(d) for d in c)

    def attr(self, c):
        value = c[1]
        if type(value) is tuple:
            pass  # a bracketed list, from dims()
        elif value.type == "NAME":
            value = str(value)
        else:
            value = _number(value).value
        return Attr(str(c[0]), value, _at(c[0]))

    def op_stmt(self, c):
        # c: the op NAME, operand tokens, Attr items, the ARROW token, the destination NAME
        dest = c[-1]
        args = []
        attrs = ()
        for child in c[1:-2]:
            if type(child) is Attr:
                attrs += (child,)
            elif child.type == "NAME":
                args.append(Name(str(child), (child.line << 32) | child.column))
            else:
                args.append(_number(child))
        axis = None
        for a in attrs:
            if a.name == "axis":
                axis = a.value if type(a.value) is int else None
                break
        self.items.append(OpStmt(str(c[0]), tuple(args), axis, Name(str(dest), _at(dest)), _at(c[0]), attrs))


def _number(token: Token) -> Number:
    is_int = not any(ch in token for ch in ".eE")
    return Number(int(token) if is_int else float(token), is_int, _at(token))


_BUILDER = _LineBuilder()


def make_lark(lexer=FastLexer) -> Lark:
    """The parser over grammar.lark. ``lexer="contextual"`` gives Lark's own lexer, which the
    tests use as the reference for FastLexer.

    propagate_positions is left off on purpose: with the transformer inlined no tree nodes are
    built, positions come from the tokens, and the option only wraps every reduction (it cost
    40% of the parse time of the seed example when measured)."""
    return Lark.open("grammar.lark", rel_to=__file__, parser="lalr", lexer=lexer, transformer=_BUILDER,
                     lexer_callbacks={"NUMBER": _check_number_length, "INT": _check_number_length,
                                      "SIGNED_INT": _check_number_length})


_LARK = make_lark()
# The builder keeps per-parse state; parsing is pure Python and holds the GIL anyway.
_LOCK = threading.Lock()


@dataclass(frozen=True, slots=True)
class ParseResult:
    kernels: tuple[ParsedKernel, ...]
    diagnostics: tuple[Diagnostic, ...]


def parse(text: str, lark: Lark | None = None) -> ParseResult:
    """Parse a whole source. Never raises for any input text; problems become diagnostics."""
    if not text.endswith("\n"):
        text += "\n"  # every line, the last included, ends with _NL in the grammar
    diags: list[Diagnostic] = []
    lark = lark or _LARK
    with _LOCK:
        _BUILDER.items = items = []
        try:
            start = 0
            while True:
                try:
                    lark.parse(TextSlice(text, start, None) if start else text)
                    break
                except (UnexpectedInput, NumberTooLong) as exc:
                    diag, at = _syntax_diagnostic(exc, text)
                    while items and items[-1].pos.line == diag.line:
                        items.pop()  # a partial item of the bad line
                    diags.append(diag)
                    items.append(_broken_line(text, diag.line, at))
                    nl = text.find("\n", at)
                    if nl < 0 or nl + 1 >= len(text):
                        break
                    if len(diags) >= limits.MAX_DIAGNOSTICS:
                        line = diag.line + 1
                        diags.append(Diagnostic(Code.LIMIT, line, 1, f"more than {limits.MAX_DIAGNOSTICS} "
                                                "syntax errors; the rest of the source was not examined"))
                        break
                    start = nl + 1
        finally:
            _BUILDER.items = None
    end = Pos(text.count("\n") + 1, 1)
    kernels = assemble(items, end, diags)
    return ParseResult(tuple(kernels), tuple(diags))


# ---- syntax errors as sentences ------------------------------------------------------------

_WORD = re.compile(r"[ \t]*([A-Za-z_][A-Za-z0-9_]*)")
_NAMES = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TYPE_WORDS = "a type (float, float16, float32, float64, int, int32, int64)"
_EXPECTED_WORDS = {  # in the order they are listed in a message
    "NAME": "a name", "INT": "a whole number", "SIGNED_INT": "an integer", "NUMBER": "a number",
    "ATTR_NAME": "an attribute (name=value)", "ARROW": "'→'", "DTYPE": _TYPE_WORDS,
    "CLASS_NAME": "REALTIME, INTERACTIVE, THROUGHPUT or BATCH", "LSQB": "'['", "RSQB": "']'",
    "COMMA": "','", "COLON": "':'", "EQUAL": "'='", "_NL": "the end of the line",
}
_LINE_KINDS = {"GPU_KERNEL": "kernel_open", "GPU_END": "kernel_end", "GPU_THREAD_CODE": "code_open",
               "REPEAT": "repeat_open", "END_REPEAT": "repeat_close", "GPU_PARAM": "header",
               "GPU_CLASS": "header", "GPU_PRIORITY": "header"}


def _line_text(text: str, at: int) -> tuple[int, str]:
    begin = text.rfind("\n", 0, at) + 1
    end = text.find("\n", at)
    return begin, text[begin:end if end >= 0 else len(text)]


def _expected(exc: UnexpectedInput) -> set[str]:
    parser = getattr(exc, "interactive_parser", None)
    if parser is not None:
        return {t for t in parser.choices() if t.isupper() or t.startswith("_") or t == "$END"}
    return set(getattr(exc, "expected", None) or getattr(exc, "allowed", None) or ())


def _describe_expected(expected: set[str]) -> str:
    if "GPU_KERNEL" in expected:
        return "a keyword (" + ", ".join(KEYWORDS) + ") or an op name"
    words = [w for t, w in _EXPECTED_WORDS.items() if t in expected]
    if not words:
        return "something else"
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _describe_token(token: Token) -> str:
    if token.type == "_NL":
        return "the end of the line"
    if token.type == "$END":
        return "the end of input"
    return repr(str(token))


def _syntax_diagnostic(exc: Exception, text: str) -> tuple[Diagnostic, int]:
    """The diagnostic for one syntax error, and the offset in ``text`` where it lies."""
    if isinstance(exc, NumberTooLong):
        tok = exc.token
        return Diagnostic(Code.LIMIT, tok.line, tok.column,
                          f"number literal longer than {limits.MAX_NUMBER_LEN} characters"), tok.start_pos
    if isinstance(exc, UnexpectedToken):
        at, line, column = exc.token.start_pos, exc.token.line, exc.token.column
        got = _describe_token(exc.token)
    else:
        assert isinstance(exc, UnexpectedCharacters)
        at, line, column = exc.pos_in_stream, exc.line, exc.column
        got = f"the character {text[at]!r}"
    begin, line_text = _line_text(text, at)
    first = _WORD.match(line_text)
    if first and first.start(1) < at - begin:  # the error lies after a leading word
        word = first.group(1)
        if word not in KEYWORDS and word not in OPS:
            return unknown_op_diagnostic(word, Pos(line, first.start(1) + 1)), at
    message = f"expected {_describe_expected(_expected(exc))}, got {got}"
    return Diagnostic(Code.SYNTAX, line, column, message), at


def unknown_op_diagnostic(op: str, pos: Pos) -> Diagnostic:
    import difflib  # error path only

    hint = difflib.get_close_matches(op.upper(), [*OPS, *KEYWORDS], n=1, cutoff=0.6)
    suffix = f" (did you mean {hint[0]}?)" if hint else ""
    return Diagnostic(Code.UNKNOWN_OP, pos.line, pos.column, f"unknown op {op}{suffix}")


def _broken_line(text: str, line: int, at: int) -> BrokenLine:
    _, line_text = _line_text(text, at)
    code = line_text.split("#", 1)[0]
    first = _WORD.match(code)
    kind = _LINE_KINDS.get(first.group(1), "stmt") if first else "stmt"
    return BrokenLine(Pos(line, 1), kind, frozenset(_NAMES.findall(code)))
