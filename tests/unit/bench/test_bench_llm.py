"""Smoke test of bench/bench_llm.py: a quick run (no guest: the e2e tests boot guests)
completes and emits every figure with its baseline; the runs it compares chose the same
tokens (it notes a difference as a bug)."""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from bench import bench_llm

pytestmark = pytest.mark.slow


def test_quick_run_emits_every_figure():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert bench_llm.main(["--quick", "--json", "--no-guest", "--tokens", "6"]) == 0
    report = json.loads(out.getvalue())
    f = report["figures"]
    assert {"direct_tokens_per_s", "hv_tokens_per_s", "overcommit_tokens_per_s", "llamacpp_1t_tokens_per_s"} <= set(f)
    assert f["hv_tokens_per_s"]["baseline"] == "direct_tokens_per_s" and f["hv_tokens_per_s"]["value"] > 0
    assert f["overcommit_tokens_per_s"]["baseline"] == "hv_tokens_per_s"
    assert not [n for n in report["notes"] if "bug" in n], report["notes"]
