"""bench/serve_load.py's pure parts: target specs, percentiles, the window report."""

from __future__ import annotations

import pytest

from bench.serve_load import Sample, parse_target, percentile, report


def test_targets():
    t = parse_target("vm1=http://10.97.0.2:8000,rate=0.5,max_tokens=8", rate=0, concurrency=2, max_tokens=32,
                     prompt="p")
    assert (t.name, t.host, t.port, t.rate, t.concurrency, t.max_tokens) == ("vm1", "10.97.0.2", 8000, 0.5, 2, 8)
    for bad in ("http://x", "vm=ftp://x", "vm=http://x,speed=3", "vm=http://x,concurrency=0", "vm=http://x,rate=-1"):
        with pytest.raises(ValueError):
            parse_target(bad, rate=0, concurrency=1, max_tokens=1, prompt="p")


def test_percentiles_nearest_rank():
    assert percentile([], 50) is None
    assert percentile([3.0], 99) == 3.0
    values = [float(i) for i in range(1, 101)]
    assert percentile(values, 50) == 50.0 and percentile(values, 99) == 99.0 and percentile(values, 100) == 100.0


def test_report_counts_only_the_window():
    a = Sample(start=0.0, ttft=0.5, end=2.0, tokens=4, chunk_times=[0.5, 1.0, 1.5, 2.0])
    b = Sample(start=5.0, ttft=1.0, end=9.0, tokens=2, chunk_times=[6.0, 8.0])  # ends after the window
    c = Sample(start=1.0, error="HTTP 503")
    r = report([a, b, c], 1.0, 7.0)
    assert r["requests"] == 1 and r["errors"] == 1
    assert r["tokens_per_s"] == pytest.approx((3 + 1) / 6.0, abs=1e-3)
    assert r["ttft_p50_s"] == 0.5 and r["e2e_p99_s"] == 2.0
