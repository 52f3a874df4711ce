"""A fast contextual lexer for grammar.lark's terminals, plugged into Lark's LALR parser.

grammar.lark's terminal definitions are the specification; this lexer implements exactly
them, specialised: one regular expression finds the next token and skips blanks and comments
in the same match, and the parse table of the parser's current state decides what a word
is (a keyword where a keyword may stand, a DTYPE after a param name, an attribute name
before ``=`` ...), the way Lark's own contextual lexer does. It makes the whole parse about twice as
fast as Lark's generic lexer. tests/unit/primitive_lang/test_lexer.py checks that both
lexers give the same result on generated sources.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from lark import Token, UnexpectedCharacters
from lark.lexer import Lexer, LexerState

from . import limits

_KEYWORDS = frozenset(("GPU_KERNEL", "GPU_PARAM", "GPU_CLASS", "GPU_PRIORITY", "GPU_THREAD_CODE",
                       "GPU_END", "REPEAT", "END_REPEAT"))
_DTYPE_WORDS = frozenset(("float16", "float32", "float64", "float", "int32", "int64", "int"))
_CLASS_WORDS = frozenset(("REALTIME", "INTERACTIVE", "THROUGHPUT", "BATCH"))
_PUNCT = {"[": "LSQB", "]": "RSQB", ",": "COMMA", ":": "COLON", "=": "EQUAL"}

# Blanks and a comment, then one token: 1 newline, 2 a word, 3 a word right before '=' (an
# attribute name where one may stand), 4 arrow, 5 number, 6 punctuation. The possessive `*+`
# keeps a word whole when the lookahead fails (no shorter word is tried).
_TOKEN = re.compile(
    r"[ \t]*(?:#[^\n]*)?"
    r"(?:(\r?\n)|([A-Za-z_][A-Za-z0-9_]*+)(?![ \t]*=)|([A-Za-z_][A-Za-z0-9_]*+)|(→|->)"
    r"|([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)|([\[\],:=]))"
)
_SKIP = re.compile(r"[ \t]*(?:#[^\n]*)?")
_PLAIN_INT = re.compile(r"[0-9]+")
_SIGNED_INT = re.compile(r"[+-]?[0-9]+")


class NumberTooLong(Exception):
    """A number literal over limits.MAX_NUMBER_LEN characters (a syntax-level limit)."""

    def __init__(self, token: Token):
        super().__init__(str(token))
        self.token = token


class _Tok(Token):
    """A Token built without Token.__new__'s keyword handling (a third of the lexing time).
    Only newline tokens get end_* positions: Lark reads them from the last token alone (to
    place $END), and a source always ends with a newline."""

    __slots__ = ()

    def __new__(cls, type_: str, value: str, start_pos: int, line: int, column: int):
        tok = str.__new__(cls, value)
        tok.type, tok.value, tok.start_pos, tok.line, tok.column = type_, value, start_pos, line, column
        return tok


def _word_kinds(accepts) -> dict[str, str]:
    """What each special word is in a parser state that accepts ``accepts``."""
    kinds = {w: w for w in _KEYWORDS if w in accepts}
    if "DTYPE" in accepts:
        kinds.update(dict.fromkeys(_DTYPE_WORDS, "DTYPE"))
    if "CLASS_NAME" in accepts:
        kinds.update(dict.fromkeys(_CLASS_WORDS, "CLASS_NAME"))
    return kinds


class FastLexer(Lexer):
    __future_interface__ = 2  # lex(lexer_state, parser_state), TextSlice input allowed

    def __init__(self, lexer_conf) -> None:
        self._tables: tuple | None = None

    def _words_for(self, states) -> tuple[dict[int, dict[str, str]], frozenset[int]]:
        """Per parser state, the kind of each special word, and the states where a word right
        before ``=`` is an attribute name (ATTR_NAME outranks every word); built once per
        parse table."""
        if self._tables is None or self._tables[0] is not states:
            self._tables = (states, {state: _word_kinds(accepts) for state, accepts in states.items()},
                            frozenset(state for state, accepts in states.items() if "ATTR_NAME" in accepts))
        return self._tables[1], self._tables[2]

    def lex(self, lexer_state: LexerState, parser_state) -> Iterator[Token]:
        text, end = lexer_state.text.text, lexer_state.text.end
        ctr = lexer_state.line_ctr
        pos, line, line_start = ctr.char_pos, ctr.line, ctr.line_start_pos
        accepts_of = parser_state.parse_conf.parse_table.states
        words, attr_states = self._words_for(accepts_of)
        stack = parser_state.state_stack  # the parser grows and shrinks this very list
        match = _TOKEN.match
        while pos < end:
            m = match(text, pos)
            if m is None:
                bad = _SKIP.match(text, pos).end()
                ctr.char_pos, ctr.line, ctr.line_start_pos = bad, line, line_start
                ctr.column = bad - line_start + 1
                raise UnexpectedCharacters(text, bad, line, bad - line_start + 1,
                                           allowed=set(accepts_of[stack[-1]]), state=parser_state)
            group = m.lastindex
            start, pos = m.span(group)
            value = m.group(group)
            if group == 1:
                tok = _Tok("_NL", value, start, line, start - line_start + 1)
                line += 1
                line_start = pos
                tok.end_line, tok.end_column, tok.end_pos = line, 1, pos
                yield tok
                continue
            if group == 2:
                kind = words[stack[-1]].get(value, "NAME")
            elif group == 3:
                state = stack[-1]
                kind = "ATTR_NAME" if state in attr_states else words[state].get(value, "NAME")
            elif group == 5:
                kind = _number_kind(value, accepts_of[stack[-1]])
                if len(value) > limits.MAX_NUMBER_LEN:
                    raise NumberTooLong(_Tok(kind, value, start, line, start - line_start + 1))
            else:
                kind = "ARROW" if group == 4 else _PUNCT[value]
            yield _Tok(kind, value, start, line, start - line_start + 1)
        ctr.char_pos, ctr.line, ctr.line_start_pos = pos, line, line_start
        ctr.column = pos - line_start + 1


def _number_kind(value: str, accepts) -> str:
    if "NUMBER" in accepts:
        return "NUMBER"
    if "INT" in accepts and _PLAIN_INT.fullmatch(value):
        return "INT"
    if "SIGNED_INT" in accepts and _SIGNED_INT.fullmatch(value):
        return "SIGNED_INT"
    return "NUMBER"  # not acceptable here: the parser reports it
