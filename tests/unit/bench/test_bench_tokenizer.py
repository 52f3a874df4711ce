"""Smoke test of bench/bench_tokenizer.py: a --quick run completes (its own assertions check
that pxos_tokenizer and llama.cpp give the same ids for the texts it times) and emits every
figure as one JSON object. Timed figures are not judged; --quick shows goals without verdicts."""

from __future__ import annotations

import contextlib
import io
import json

from bench import bench_tokenizer


def test_quick_run_emits_every_figure():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert bench_tokenizer.main(["--quick", "--json"]) == 0
    report = json.loads(out.getvalue())
    figures = report["figures"]
    assert report["benchmark"] == "tokenizer"
    assert {"llama.cpp encode (baseline)", "load from metadata JSON", "encode 2000 chars, cold",
            "encode 2000 chars of made-up words, cold", "encode 2000 chars, warm"} <= set(figures)
    assert all(f["value"] > 0 and "ok" not in f for f in figures.values())
    assert figures["encode 2000 chars, cold"]["baseline"] == "llama.cpp encode (baseline)"


def test_texts_are_the_sizes_the_goals_name():
    assert len(bench_tokenizer.prompt()) == 2000 and bench_tokenizer.prompt().startswith("<|im_start|>system")
    assert len(bench_tokenizer.random_words()) == 2000
