"""pxos_tokenizer: llama.cpp's byte-level BPE tokenizer, in pure Python (standard library only).

It turns text into token ids, and ids back into text, exactly as llama.cpp does for a GGUF
file whose ``tokenizer.ggml.model`` is ``gpt2`` (the rules are those of llama.cpp's
src/llama-vocab.cpp and src/unicode.cpp, re-implemented here)::

    import pxos_tokenizer as pt
    tok = pt.Tokenizer.from_metadata(meta)       # meta: the GGUF keys, "tokenizer.ggml." removed
    ids = tok.encode("<|im_start|>user\\nHi<|im_end|>\\n")   # llama_tokenize(text, True, True)
    tok.decode(ids)                              # llama_detokenize(ids, False, False), as str
    stream = tok.stream()                        # incremental: push(id) -> str, flush() -> str

Encoding, in llama.cpp's order: special tokens (control, user-defined, unknown) are cut out of
the raw text first (control/unknown ones only when parse_special is true), longest first;
each remaining piece is split into words by the vocabulary's pre-tokenizer; each word's UTF-8
bytes are mapped to GPT-2's printable byte alphabet and merged by BPE rank; BOS/EOS are added
per the file's flags when add_special is true. METADATA_KEYS lists every key that is read.
Everything wrong with the metadata or an argument raises TokenizerError (a ValueError).
"""

from __future__ import annotations

import codecs
import heapq
import operator
from collections.abc import Iterable, Mapping

# A sibling file: guests get the whole guest_driver/python folder on their sys.path.
from pxos_pretokenize import PRE_TOKENIZERS, PreTokenizer

# Keys of the metadata mapping (GGUF "tokenizer.ggml.<key>"); only model, tokens and merges
# are required. Ids out of range are ignored with llama.cpp's defaults kept, as llama.cpp does.
METADATA_KEYS = (
    "model", "pre", "tokens", "token_type", "merges",
    "bos_token_id", "eos_token_id", "eot_token_id", "eom_token_id",
    "fim_pre_token_id", "fim_suf_token_id", "fim_mid_token_id",
    "fim_pad_token_id", "fim_rep_token_id", "fim_sep_token_id",
    "prefix_token_id", "suffix_token_id", "middle_token_id",  # deprecated names of fim_pre/suf/mid
    "add_bos_token", "add_eos_token", "add_space_prefix",
)

# Guest-visible sizes, capped so that hostile metadata cannot make the guest allocate without
# bound: the largest real vocabularies have about 260k tokens and as many merges.
MAX_VOCAB_TOKENS = 1 << 20
MAX_MERGES = 1 << 21
MAX_TOKEN_BYTES = 1 << 16
# Caches of a long-running generator stay bounded whatever text it is given.
WORD_CACHE_ENTRIES = 1 << 16

# llama_token_type (GGUF tokenizer.ggml.token_type) and llama_token_attr bits, as llama.h names them.
TOKEN_TYPE_NORMAL, TOKEN_TYPE_UNKNOWN, TOKEN_TYPE_CONTROL = 1, 2, 3
TOKEN_TYPE_USER_DEFINED, TOKEN_TYPE_UNUSED, TOKEN_TYPE_BYTE = 4, 5, 6
ATTR_UNDEFINED, ATTR_UNKNOWN, ATTR_UNUSED, ATTR_NORMAL = 0, 1, 2, 4
ATTR_CONTROL, ATTR_USER_DEFINED, ATTR_BYTE = 8, 16, 32
_TYPE_TO_ATTR = {TOKEN_TYPE_NORMAL: ATTR_NORMAL, TOKEN_TYPE_UNKNOWN: ATTR_UNKNOWN,
                 TOKEN_TYPE_CONTROL: ATTR_CONTROL, TOKEN_TYPE_USER_DEFINED: ATTR_USER_DEFINED,
                 TOKEN_TYPE_UNUSED: ATTR_UNUSED, TOKEN_TYPE_BYTE: ATTR_BYTE}
_ATTR_SPECIAL = ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN

# llama.cpp's BPE default for special_bos_id and special_eos_id until the file says otherwise.
_BPE_DEFAULT_SPECIAL = 11

# Token texts llama.cpp recognises (llama_vocab::impl::load): these become CONTROL and end
# generation (EOG); the EOT/FIM ones also fill ids the file left unset.
_EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
              "<|end_of_text|>", "<EOT>", "_<EOT>", "[EOT]", "<\uff5cend\u2581of\u2581sentence\uff5c>",
              "<end_of_utterance>")
_EOM_TEXTS = ("<|eom_id|>",)
_FIM_TEXTS = {
    "pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<\uff5cfim\u2581begin\uff5c>", "<PRE>",
            "\u2581<PRE>", "<|code_prefix|>", "<|prefix|>"),
    "suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<\uff5cfim\u2581hole\uff5c>", "<SUF>",
            "\u2581<SUF>", "<|code_suffix|>", "<|suffix|>"),
    "mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<\uff5cfim\u2581end\uff5c>", "<MID>",
            "\u2581<MID>", "<|code_middle|>", "<|middle|>"),
    "pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "sep": ("<|file_sep|>",),
}
_EOG_TEXTS = frozenset((
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<\uff5cend\u2581of\u2581sentence\uff5c>", "[e~[",
))
# gpt-oss: llama.cpp always renders these, whatever their type.
_ALWAYS_USER_DEFINED = ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>")


class TokenizerError(ValueError):
    """Bad tokenizer metadata, an unsupported tokenizer, or a bad argument."""


def _byte_alphabet() -> tuple[list[str], dict[str, int]]:
    """GPT-2's reversible byte -> printable character map: printable Latin-1 bytes stand for
    themselves, the other 68 bytes take the code points from U+0100 on, in byte order."""
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars, extra = [""] * 256, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(0x100 + extra)
            extra += 1
    return chars, {c: b for b, c in enumerate(chars)}


_BYTE_TO_CHAR, _CHAR_TO_BYTE = _byte_alphabet()
# str.translate table taking a latin-1 view of UTF-8 bytes to the byte alphabet.
_LATIN1_TO_ALPHABET = {b: c for b, c in enumerate(_BYTE_TO_CHAR)}


def _utf8(text: str) -> bytes:
    # Lone surrogates (possible in a Python str) go through as llama.cpp reads their 3 bytes.
    return text.encode("utf-8", "surrogatepass")


def _hexbyte(text: str) -> int:
    """strtol(text, NULL, 16) on the 2 characters after "<0x" of a BYTE token."""
    value = 0
    for ch in text[3:5]:
        if ch not in "0123456789abcdefABCDEF":
            break
        value = value * 16 + int(ch, 16)
    return value


class Tokenizer:
    """A loaded vocabulary: encode/decode exactly as llama.cpp does. Build with from_metadata."""

    def __init__(self, *, tokens: list[str], by_text: dict[str, int], attrs: list[int],
                 ranks: dict[tuple[str, str], int], pre: PreTokenizer, bos: int | None, eos: int | None, add_bos: bool, add_eos: bool,
                 add_space_prefix: bool, eog: frozenset[int]) -> None:
        self._tokens = tokens
        self._attrs = attrs
        self._ranks = ranks
        self._pre = pre
        self.bos_id, self.eos_id = bos, eos
        self.add_bos, self.add_eos = add_bos, add_eos
        self._add_space_prefix = add_space_prefix
        self.eog_ids = eog
        self._ids = by_text
        # Tokens cut out of raw text before BPE, longest (in bytes) first; ties by id (llama.cpp's
        # std::sort leaves their order unspecified; it matters only for overlapping equal lengths).
        specials = [i for i, a in enumerate(attrs) if a & _ATTR_SPECIAL]
        specials.sort(key=lambda i: (-len(_utf8(tokens[i])), i))
        self._specials = [(tokens[i], i, attrs[i]) for i in specials]
        self._pieces: list[bytes | None] = [None] * len(tokens)
        self._words: dict[str, tuple[int, ...]] = {}

    # ---- construction -------------------------------------------------------------------

    @classmethod
    def from_metadata(cls, meta: Mapping[str, object]) -> Tokenizer:
        """Load from the GGUF tokenizer keys (METADATA_KEYS, "tokenizer.ggml." removed)."""
        if not isinstance(meta, Mapping):
            raise TokenizerError(f"tokenizer metadata must be a mapping, not {type(meta).__name__}")
        model = meta.get("model")
        if model != "gpt2":
            raise TokenizerError(f"tokenizer model {model!r} is not supported (only 'gpt2': byte-level BPE)")
        pre_name = meta.get("pre")
        if pre_name is None:
            pre_name = "default"  # llama.cpp's choice (with a warning) for a file without one
        if not isinstance(pre_name, str):
            raise TokenizerError(f"tokenizer pre must be a string, not {type(pre_name).__name__}")
        pre = PRE_TOKENIZERS.get(pre_name or "default")
        if pre is None:
            raise TokenizerError(f"pre-tokenizer type {pre_name!r} is not supported "
                                 f"(supported: {', '.join(sorted(PRE_TOKENIZERS))})")
        tokens, by_text = _token_list(meta.get("tokens"))
        attrs = _token_attrs(meta.get("token_type"), len(tokens))
        ranks = _merge_ranks(meta.get("merges"))
        n = len(tokens)
        ids = {key: _token_id(meta, key, n) for key in METADATA_KEYS if key.endswith("_token_id")}
        # llama.cpp's BPE default (11) stands where the file has no usable id.
        default = _BPE_DEFAULT_SPECIAL if _BPE_DEFAULT_SPECIAL < n else None
        bos = ids["bos_token_id"] if ids["bos_token_id"] is not None else default
        eos = ids["eos_token_id"] if ids["eos_token_id"] is not None else default
        add_bos = _flag(meta, "add_bos_token", pre.add_bos)
        add_eos = _flag(meta, "add_eos_token", False)
        if add_bos and bos is None:
            raise TokenizerError("add_bos_token is true, but bos_token_id is not set")
        if add_eos and eos is None:
            raise TokenizerError("add_eos_token is true, but eos_token_id is not set")
        eog = _end_of_generation(tokens, by_text, attrs, eos, ids)
        return cls(tokens=tokens, by_text=by_text, attrs=attrs, ranks=ranks, pre=pre, bos=bos, eos=eos,
                   add_bos=add_bos, add_eos=add_eos,
                   add_space_prefix=_flag(meta, "add_space_prefix", False), eog=eog)

    # ---- vocabulary ---------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._tokens)

    @property
    def pre(self) -> str:
        """The pre-tokenizer's name as the file gives it (e.g. "smollm")."""
        return self._pre.name

    def token_text(self, token_id: int) -> str:
        """The vocabulary entry itself (GPT-2 byte alphabet for normal tokens)."""
        return self._tokens[self._check_id(token_id)]

    def token_attr(self, token_id: int) -> int:
        """llama_token_attr bits of a token (ATTR_*), as llama_vocab_get_attr returns them."""
        return self._attrs[self._check_id(token_id)]

    def token_id(self, text: str) -> int | None:
        """The id of a vocabulary entry (e.g. "<|im_end|>"), or None."""
        return self._ids.get(text)

    def is_eog(self, token_id: int) -> bool:
        """True for the tokens that end generation (llama_vocab_is_eog): eos, eot, eom and the
        ones llama.cpp recognises by their text (e.g. <|im_end|>, <|endoftext|>)."""
        try:
            return operator.index(token_id) in self.eog_ids
        except TypeError:
            raise TokenizerError(f"token id must be an integer, not {type(token_id).__name__}") from None

    # ---- encoding -----------------------------------------------------------------------

    def encode(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """llama_tokenize(text, add_special, parse_special): the ids of text."""
        if not isinstance(text, str):
            raise TokenizerError(f"text must be a str, not {type(text).__name__}")
        out: list[int] = []
        if add_special and self.add_bos:
            out.append(self.bos_id)  # type: ignore[arg-type]  # checked at load
        for fragment in self._partition(text, parse_special):
            if isinstance(fragment, int):
                out.append(fragment)
            else:
                for word in self._pre.split(fragment):
                    out.extend(self._word_ids(word))
        if add_special and self.add_eos:
            out.append(self.eos_id)  # type: ignore[arg-type]
        return out

    def _partition(self, text: str, parse_special: bool) -> list[str | int]:
        """Cut special tokens out of the raw text (tokenizer_st_partition). None of the
        supported vocabularies get LSTRIP/RSTRIP attributes (llama.cpp sets them only by model
        name, for phi-3 and BERT-style vocabularies), so no whitespace around them is dropped."""
        fragments: list[str | int] = [text] if text else []
        for special, token_id, attr in self._specials:
            if not parse_special and attr & (ATTR_CONTROL | ATTR_UNKNOWN):
                continue  # user-defined tokens are matched even then
            if not any(isinstance(f, str) and special in f for f in fragments):
                continue
            cut: list[str | int] = []
            for f in fragments:
                if isinstance(f, int) or special not in f:
                    cut.append(f)
                    continue
                parts = f.split(special)
                for k, part in enumerate(parts):
                    if k:
                        cut.append(token_id)
                    if part:
                        cut.append(part)
            fragments = cut
        return fragments

    def _word_ids(self, word: str) -> tuple[int, ...]:
        encoded = _utf8(word).decode("latin-1").translate(_LATIN1_TO_ALPHABET)
        ids = self._words.get(encoded)
        if ids is None:
            ids = self._bpe(encoded)
            if len(self._words) >= WORD_CACHE_ENTRIES:
                self._words.clear()
            self._words[encoded] = ids
        return ids

    def _bpe(self, word: str) -> tuple[int, ...]:
        """Merge adjacent symbols, lowest merge rank first and leftmost first among equal
        ranks (llm_tokenizer_bpe_session), then map each symbol to its id."""
        vocab = self._ids
        if self._pre.ignore_merges and word in vocab:
            return (vocab[word],)
        syms: list[str | None] = list(word)
        n = len(syms)
        if n > 1:
            ranks = self._ranks
            nxt = list(range(1, n + 1))
            nxt[-1] = -1
            prv = list(range(-1, n - 1))
            heap = []
            for i in range(n - 1):
                rank = ranks.get((syms[i], syms[i + 1]))  # type: ignore[arg-type]
                if rank is not None:
                    heap.append((rank, i, i + 1, 1))
            heapq.heapify(heap)
            while heap:
                _, left, right, right_len = heapq.heappop(heap)
                sym_l, sym_r = syms[left], syms[right]
                # Stale when either side was merged since the pair was queued.
                if sym_l is None or sym_r is None or nxt[left] != right or len(sym_r) != right_len:
                    continue
                merged = sym_l + sym_r
                syms[left], syms[right] = merged, None
                after = nxt[right]
                nxt[left] = after
                if after != -1:
                    prv[after] = left
                before = prv[left]
                if before != -1:
                    rank = ranks.get((syms[before], merged))  # type: ignore[arg-type]
                    if rank is not None:
                        heapq.heappush(heap, (rank, before, left, len(merged)))
                if after != -1:
                    nxt_sym = syms[after]
                    rank = ranks.get((merged, nxt_sym))  # type: ignore[arg-type]
                    if rank is not None:
                        heapq.heappush(heap, (rank, left, after, len(nxt_sym)))  # type: ignore[arg-type]
        out: list[int] = []
        for sym in syms:
            if sym is None:
                continue
            token_id = vocab.get(sym)
            if token_id is not None:
                out.append(token_id)
                continue
            # No such token: llama.cpp looks each UTF-8 byte of the symbol up on its own,
            # which finds only the ASCII ones, and drops the rest.
            for ch in sym:
                token_id = vocab.get(ch) if ch < "\x80" else None
                if token_id is not None:
                    out.append(token_id)
        return tuple(out)

    # ---- decoding -----------------------------------------------------------------------

    def token_bytes(self, token_id: int, *, special: bool = False) -> bytes:
        """llama_token_to_piece(id, lstrip=0, special): the bytes a token stands for; control
        and unknown tokens are empty unless special is true."""
        i = self._check_id(token_id)
        if not special and self._attrs[i] & (ATTR_CONTROL | ATTR_UNKNOWN):
            return b""
        piece = self._pieces[i]
        if piece is None:
            piece = self._pieces[i] = self._piece(i)
        return piece

    def _piece(self, i: int) -> bytes:
        text, attr = self._tokens[i], self._attrs[i]
        if attr & _ATTR_SPECIAL:
            return _utf8(text)
        if attr & ATTR_NORMAL:
            out = bytearray()
            for ch in text:
                b = _CHAR_TO_BYTE.get(ch)
                if b is None:  # llama_decode_text's marker for a character outside the alphabet
                    out += b"[UNK_BYTE_0x" + _utf8(ch).hex().encode() + _utf8(text) + b"]"
                else:
                    out.append(b)
            return bytes(out)
        if attr & ATTR_BYTE:
            return bytes((_hexbyte(text) & 0xFF,))
        return b""  # unused and undefined tokens render as nothing

    def detokenize(self, ids: Iterable[int], *, remove_special: bool = False,
                   unparse_special: bool = False) -> bytes:
        """llama_detokenize(ids, remove_special, unparse_special): the bytes of a sequence,
        including llama.cpp's clean-up of spaces where the vocabulary asks for it."""
        seq = [self._check_id(t) for t in ids]
        remove_space = self._add_space_prefix
        if remove_special and self.add_bos and seq and seq[0] == self.bos_id:
            remove_space = False
            seq = seq[1:]
        if remove_special and self.add_eos and seq and seq[-1] == self.eos_id:
            seq = seq[:-1]
        parts = []
        for token_id in seq:
            piece = self.token_bytes(token_id, special=unparse_special)
            if remove_space and piece[:1] == b" ":
                piece = piece[1:]
            remove_space = False
            parts.append(piece)
        text = b"".join(parts)
        return _clean_spaces(text) if self._pre.clean_spaces else text

    def decode(self, ids: Iterable[int], *, special: bool = False, errors: str = "ignore") -> str:
        """detokenize(ids, unparse_special=special) as text; invalid UTF-8 is dropped (errors=
        "ignore"), as llama-cpp-python does with Llama.detokenize(ids).decode(...)."""
        return self.detokenize(ids, unparse_special=special).decode("utf-8", errors)

    def stream(self, *, special: bool = False, errors: str = "ignore") -> StreamDecoder:
        """An incremental decoder for generated ids (see StreamDecoder)."""
        return StreamDecoder(self, special=special, errors=errors)

    def _check_id(self, token_id: int) -> int:
        try:
            i = operator.index(token_id)
        except TypeError:
            raise TokenizerError(f"token id must be an integer, not {type(token_id).__name__}") from None
        if not 0 <= i < len(self._tokens):
            raise TokenizerError(f"token id {i} is outside the vocabulary (0..{len(self._tokens) - 1})")
        return i


class StreamDecoder:
    """Text of generated ids as they come: push(id) returns what can be printed now; bytes of a
    UTF-8 character split across tokens are held back until the character is complete, and
    flush() ends the stream. The concatenated output equals Tokenizer.decode of all the ids
    for vocabularies without space clean-up (smollm); with it, the pieces are not cleaned."""

    def __init__(self, tokenizer: Tokenizer, *, special: bool = False, errors: str = "ignore") -> None:
        self._tokenizer = tokenizer
        self._special = special
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors)

    def push(self, token_id: int) -> str:
        return self._decoder.decode(self._tokenizer.token_bytes(token_id, special=self._special))

    def flush(self) -> str:
        text = self._decoder.decode(b"", final=True)
        self._decoder.reset()
        return text


def _clean_spaces(text: bytes) -> bytes:
    """llama_detokenize's clean_spaces passes: drop the space before ?!., ; turn " ' " into "'";
    drop the space before 's 'm 're 've."""
    t = bytearray(text)
    out = t[:1]
    for i in range(1, len(t)):
        if t[i - 1] == 0x20 and t[i] in b"?!.,":
            out.pop()
        out.append(t[i])
    t, out, i = out, out[:1], 1
    while i < len(t):
        x = t[i]
        if x == 0x27 and i + 1 < len(t) and t[i - 1] == 0x20 and t[i + 1] == 0x20:
            out.pop()
            t[i + 1] = 0  # the space after is dropped too
            i += 1
        out.append(x)
        i += 1
    t, out = out, out[:1]
    for i in range(1, len(t)):
        x = t[i]
        if t[i - 1] == 0x20 and x == 0x27 and i + 1 < len(t):
            x1 = t[i + 1]
            if x1 in b"sm" or (x1 not in b"td" and i + 2 < len(t) and bytes(t[i + 1:i + 3]) in (b"re", b"ve")):
                out.pop()
        out.append(x)
    return bytes(out)


# ---- metadata checks ------------------------------------------------------------------------

def _token_list(tokens: object) -> tuple[list[str], dict[str, int]]:
    if not isinstance(tokens, list | tuple) or not tokens:
        raise TokenizerError("tokenizer tokens must be a non-empty list of strings")
    if len(tokens) > MAX_VOCAB_TOKENS:
        raise TokenizerError(f"{len(tokens)} tokens: more than MAX_VOCAB_TOKENS ({MAX_VOCAB_TOKENS})")
    out, seen = [], {}
    for i, t in enumerate(tokens):
        if not isinstance(t, str):
            raise TokenizerError(f"token {i} is a {type(t).__name__}, not a string")
        if len(t) > MAX_TOKEN_BYTES:
            raise TokenizerError(f"token {i} is longer than MAX_TOKEN_BYTES ({MAX_TOKEN_BYTES})")
        t = t or f"[EMPTY_{i}]"  # llama.cpp's name for an empty entry
        if t in seen:
            raise TokenizerError(f"duplicate token in vocabulary: {t!r} has ids {seen[t]} and {i}")
        seen[t] = i
        out.append(t)
    return out, seen


def _token_attrs(types: object, n: int) -> list[int]:
    if types is None:
        return [ATTR_NORMAL] * n
    if not isinstance(types, list | tuple) or len(types) < n:
        raise TokenizerError(f"tokenizer token_type must be a list of at least {n} integers")
    out = []
    for i in range(n):
        t = types[i]
        if not isinstance(t, int) or isinstance(t, bool):
            raise TokenizerError(f"token_type {i} is a {type(t).__name__}, not an integer")
        out.append(_TYPE_TO_ATTR.get(t, ATTR_UNDEFINED))
    return out


def _merge_ranks(merges: object) -> dict[tuple[str, str], int]:
    if not isinstance(merges, list | tuple):
        raise TokenizerError("tokenizer merges must be a list of strings (\"left right\")")
    if len(merges) > MAX_MERGES:
        raise TokenizerError(f"{len(merges)} merges: more than MAX_MERGES ({MAX_MERGES})")
    ranks: dict[tuple[str, str], int] = {}
    for rank, m in enumerate(merges):
        if not isinstance(m, str):
            raise TokenizerError(f"merge {rank} is a {type(m).__name__}, not a string")
        cut = m.find(" ", 1)  # the first space after the first character
        if cut > 0:
            ranks.setdefault((m[:cut], m[cut + 1:]), rank)  # the first rank of a pair wins
    return ranks


def _token_id(meta: Mapping[str, object], key: str, n: int) -> int | None:
    value = meta.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise TokenizerError(f"tokenizer {key} must be an integer, not {type(value).__name__}")
    return value if 0 <= value < n else None


def _flag(meta: Mapping[str, object], key: str, default: bool) -> bool:
    value = meta.get(key, default)
    if not isinstance(value, bool):
        raise TokenizerError(f"tokenizer {key} must be a boolean, not {type(value).__name__}")
    return value


def _end_of_generation(tokens: list[str], by_text: dict[str, int], attrs: list[int], eos: int | None,
                       ids: dict[str, int | None]) -> frozenset[int]:
    """llama.cpp's special_eog_ids, with the attribute fix-ups that go with it (attrs is
    updated in place). Where several texts could fill one id, the lowest id is taken."""

    def given_or_found(keys: tuple[str, ...], texts: Iterable[str]) -> int | None:
        for key in reversed(keys):  # a later key overrides an earlier one, as in llama.cpp
            if ids.get(key) is not None:
                return ids[key]
        found = [by_text[t] for t in texts if t in by_text]
        if not found:
            return None
        attrs[min(found)] |= ATTR_CONTROL
        return min(found)

    eot = given_or_found(("eot_token_id",), _EOT_TEXTS)
    eom = given_or_found(("eom_token_id",), _EOM_TEXTS)
    aliases = {"pre": "prefix_token_id", "suf": "suffix_token_id", "mid": "middle_token_id"}
    fim = {kind: given_or_found((f"fim_{kind}_token_id", *([aliases[kind]] if kind in aliases else [])), texts)
           for kind, texts in _FIM_TEXTS.items()}
    for i, t in enumerate(tokens):  # control tokens named "unused" are unused
        if attrs[i] & ATTR_CONTROL and "unused" in t:
            attrs[i] |= ATTR_UNUSED
    eog = {i for i in (fim["pad"], fim["rep"], fim["sep"]) if i is not None}
    for t in _EOG_TEXTS:
        if t in by_text:
            eog.add(by_text[t])
            attrs[by_text[t]] |= ATTR_CONTROL
    for t in _ALWAYS_USER_DEFINED:
        if t in by_text:
            attrs[by_text[t]] = ATTR_USER_DEFINED
    eog.update(i for i in (eos, eot, eom) if i is not None)
    texts = {tokens[i]: i for i in eog}
    # gpt-oss and solar-open: <|end|> does not end generation when <|return|>/<|call|> (or
    # <|calls|>/<|flush|>) do; gemma4: </s> does not when <|tool_response> does.
    if "<|end|>" in texts and ({"<|return|>", "<|call|>"} <= texts.keys()
                               or {"<|calls|>", "<|flush|>"} <= texts.keys()):
        eog.discard(texts["<|end|>"])
        attrs[texts["<|end|>"]] = ATTR_USER_DEFINED
    if "</s>" in texts and "<|tool_response>" in texts:
        eog.discard(texts["</s>"])
        attrs[texts["</s>"]] = ATTR_NORMAL
    return frozenset(eog)
