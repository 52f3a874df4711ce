"""pxos_pretokenize: llama.cpp's pre-tokenizers for byte-level BPE (standard library only).

A pre-tokenizer cuts text into the words BPE then works on, one at a time. llama.cpp applies
a list of regular expressions in sequence, each one inside the pieces the previous one left;
the GPT-2 and LLaMA-3 expressions run as hand-written scanners (src/unicode.cpp,
unicode_regex_split_custom_*) and the others through std::regex on a text where every code
point stands for its Unicode category. This module re-implements the ones pxOS needs:

  smollm    \\p{N} (every number alone), then the GPT-2 expression     (SmolLM, SmolLM2)
  gpt-2     the GPT-2 expression                                       (GPT-2, phi-2)
  default   [\\p{P}$+<=>^~|]+, GPT-2, \\p{N}+, [0-9][0-9][0-9]            (no/unknown "pre")
  llama3    the LLaMA-3 expression; whole words found in the vocabulary skip BPE

The GPT-2 expression is  's|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)
and whitespace is Unicode's White_Space property.

Code point categories come from unicodedata, plus the letters, numbers and punctuation that
Unicode 15.0/15.1 added (llama.cpp's tables are 15.1; Python 3.11's unicodedata is 14.0).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

LETTER, NUMBER, SPACE, PUNCT = 1, 2, 4, 8

WHITE_SPACE = frozenset(map(chr, (0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680,
                                  *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F, 0x205F, 0x3000)))

# Code points unassigned in Unicode 14.0 that 15.0/15.1 made letters, numbers or punctuation,
# as (first, last, class). Consulted only where unicodedata says "Cn".
UNICODE_15_ADDITIONS = (
    (0x1123F, 0x11240, LETTER), (0x11B00, 0x11B09, PUNCT), (0x11F02, 0x11F02, LETTER),
    (0x11F04, 0x11F10, LETTER), (0x11F12, 0x11F33, LETTER), (0x11F43, 0x11F4F, PUNCT),
    (0x11F50, 0x11F59, NUMBER), (0x1342F, 0x1342F, LETTER), (0x13441, 0x13446, LETTER),
    (0x1B132, 0x1B132, LETTER), (0x1B155, 0x1B155, LETTER), (0x1D2C0, 0x1D2D3, NUMBER),
    (0x1DF25, 0x1DF2A, LETTER), (0x1E030, 0x1E06D, LETTER), (0x1E4D0, 0x1E4EB, LETTER),
    (0x1E4F0, 0x1E4F9, NUMBER), (0x2B739, 0x2B739, LETTER), (0x2EBF0, 0x2EE5D, LETTER),
    (0x31350, 0x323AF, LETTER),
)
_MAJOR_CLASS = {"L": LETTER, "N": NUMBER, "P": PUNCT}
# Per-character class cache; bounded, since a hostile text may hold any code point.
CLASS_CACHE_ENTRIES = 1 << 16
_class_cache: dict[str, int] = {}


def char_class(ch: str) -> int:
    """LETTER, NUMBER or PUNCT (or 0), plus SPACE, as llama.cpp's flags would say."""
    cls = _class_cache.get(ch)
    if cls is None:
        cat = unicodedata.category(ch)
        cls = _MAJOR_CLASS.get(cat[0], 0)
        if cat == "Cn":
            cp = ord(ch)
            for first, last, added in UNICODE_15_ADDITIONS:
                if first <= cp <= last:
                    cls = added
                    break
        if ch in WHITE_SPACE:
            cls |= SPACE
        if len(_class_cache) < CLASS_CACHE_ENTRIES:
            _class_cache[ch] = cls
    return cls


Spans = list[tuple[int, int]]


def _gpt2(text: str, cls: list[int], spans: Spans) -> Spans:
    """unicode_regex_split_custom_gpt2: the GPT-2 expression, inside each span."""
    out: Spans = []
    for start, end in spans:
        pos = start
        while pos < end:
            ch, here = text[pos], cls[pos]
            if ch == "'" and pos + 1 < end:  # 's 't 'm 'd 're 've 'll (case-sensitive)
                if text[pos + 1] in "stmd":
                    out.append((pos, pos + 2))
                    pos += 2
                    continue
                if pos + 2 < end and text[pos + 1:pos + 3] in ("re", "ve", "ll"):
                    out.append((pos, pos + 3))
                    pos += 3
                    continue
            first = pos + 1 if ch == " " else pos  # an optional leading space
            f = (cls[first] if first < end else -1) if ch == " " else here
            if f >= 0 and f & (LETTER | NUMBER):
                kind = f & (LETTER | NUMBER)
                q = first
                while q < end and cls[q] & kind:
                    q += 1
            elif f >= 0 and not f & (SPACE | LETTER | NUMBER):
                q = first
                while q < end and not cls[q] & (SPACE | LETTER | NUMBER):
                    q += 1
            else:
                n_space = 0
                while pos + n_space < end and cls[pos + n_space] & SPACE:
                    n_space += 1
                if n_space > 1 and pos + n_space < end:
                    q = pos + n_space - 1  # \s+(?!\S): the last space goes with what follows
                elif n_space:
                    q = pos + n_space
                else:
                    q = pos + 1
            out.append((pos, q))
            pos = q
    return out


def _llama3(text: str, cls: list[int], spans: Spans) -> Spans:
    """unicode_regex_split_custom_llama3: (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|
    \\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+, inside each span."""
    out: Spans = []
    for start, end in spans:
        pos = start
        while pos < end:
            ch, here = text[pos], cls[pos]
            if ch == "'" and pos + 1 < end:
                if text[pos + 1] in "sStTmMdD":
                    out.append((pos, pos + 2))
                    pos += 2
                    continue
                if pos + 2 < end and text[pos + 1:pos + 3].lower() in ("re", "ve", "ll"):
                    out.append((pos, pos + 3))
                    pos += 3
                    continue
            if ch not in "\r\n" and not here & NUMBER and (
                    here & LETTER or (pos + 1 < end and cls[pos + 1] & LETTER)):
                q = pos + 1
                while q < end and cls[q] & LETTER:
                    q += 1
                out.append((pos, q))
                pos = q
                continue
            if here & NUMBER:
                q = pos
                while q < end and cls[q] & NUMBER and q - pos < 3:
                    q += 1
                out.append((pos, q))
                pos = q
                continue
            first = pos + 1 if ch == " " else pos
            f = (cls[first] if first < end else -1) if ch == " " else here
            if f >= 0 and not f & (SPACE | LETTER | NUMBER):
                q = first
                while q < end and not cls[q] & (SPACE | LETTER | NUMBER):
                    q += 1
                while q < end and text[q] in "\r\n":
                    q += 1
                out.append((pos, q))
                pos = q
                continue
            n_space, last_newline = 0, 0
            while pos + n_space < end and cls[pos + n_space] & SPACE:
                if text[pos + n_space] in "\r\n":
                    last_newline = pos + n_space + 1
                n_space += 1
            if last_newline:
                q = last_newline
            elif n_space > 1 and pos + n_space < end:
                q = pos + n_space - 1
            elif n_space:
                q = pos + n_space
            else:
                q = pos + 1
            out.append((pos, q))
            pos = q
    return out


def _isolate(match: Callable[[str, list[int], int, int], int]) -> Callable[[str, list[int], Spans], Spans]:
    """A std::regex split step: inside each span, every match of `match` (a function giving the
    end of a match starting at a position, or that position when none) becomes a span of its
    own, and so does every stretch between matches."""
    def split(text: str, cls: list[int], spans: Spans) -> Spans:
        out: Spans = []
        for start, end in spans:
            gap, pos = start, start
            while pos < end:
                q = match(text, cls, pos, end)
                if q == pos:
                    pos += 1
                    continue
                if gap < pos:
                    out.append((gap, pos))
                out.append((pos, q))
                gap = pos = q
            if gap < end:
                out.append((gap, end))
        return out
    return split


def _one_number(text: str, cls: list[int], pos: int, end: int) -> int:
    return pos + 1 if cls[pos] & NUMBER else pos


def _numbers(text: str, cls: list[int], pos: int, end: int) -> int:
    while pos < end and cls[pos] & NUMBER:
        pos += 1
    return pos


# [\p{P}\$\+<=>\^~\|]+ on llama.cpp's collapsed text: ASCII keeps its own characters (every
# printable one but digits, letters, space and the backquote), the rest go by category.
_ASCII_PUNCT_PLUS = frozenset("!\"#$%&'()*+,-./:;<=>?@[\\]^_{|}~")


def _punct_runs(text: str, cls: list[int], pos: int, end: int) -> int:
    while pos < end:
        ch = text[pos]
        if not (ch in _ASCII_PUNCT_PLUS if ch < "\x80" else cls[pos] == PUNCT):
            break
        pos += 1
    return pos


def _three_digits(text: str, cls: list[int], pos: int, end: int) -> int:
    if pos + 3 <= end and all("0" <= c <= "9" for c in text[pos:pos + 3]):
        return pos + 3
    return pos


@dataclass(frozen=True)
class PreTokenizer:
    """One of llama.cpp's pre-tokenizer types, with the vocabulary flags it implies."""

    name: str
    steps: tuple[Callable[[str, list[int], Spans], Spans], ...]
    clean_spaces: bool = True  # llama_detokenize tidies spaces around punctuation
    ignore_merges: bool = False  # a word that is a token is taken whole
    add_bos: bool = False  # the default of add_bos_token

    def split(self, text: str) -> list[str]:
        """The words of text, in order; their concatenation is text."""
        cls = [char_class(ch) for ch in text]
        spans: Spans = [(0, len(text))] if text else []
        for step in self.steps:
            spans = step(text, cls, spans)
        return [text[a:b] for a, b in spans]


_SMOLLM = PreTokenizer("smollm", (_isolate(_one_number), _gpt2), clean_spaces=False)
_GPT2 = PreTokenizer("gpt-2", (_gpt2,))
_DEFAULT = PreTokenizer("default", (_isolate(_punct_runs), _gpt2, _isolate(_numbers),
                                    _isolate(_three_digits)))

# tokenizer.ggml.pre value -> pre-tokenizer, for the names llama.cpp maps to these types.
PRE_TOKENIZERS = {
    "smollm": _SMOLLM,
    "gpt-2": _GPT2,
    "default": _DEFAULT,
    **{name: PreTokenizer(name, (_llama3,), ignore_merges=True, add_bos=True)
       for name in ("llama3", "llama-v3", "llama-bpe")},
}
