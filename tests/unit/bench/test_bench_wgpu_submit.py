"""Smoke test of bench/bench_wgpu_submit.py: one round per mode on lavapipe emits every
figure, after against before (figures are not judged: benchmarks are not timed assertions)."""

from __future__ import annotations

import json
import math

import pytest

from bench import bench_wgpu_submit


@pytest.mark.slow
@pytest.mark.wgpu
def test_one_round_emits_before_and_after(capsys):
    bench_wgpu_submit.main(["--quick", "--json", "--rounds", "1"])
    figs = json.loads(capsys.readouterr().out)["figures"]
    for key in ("launch_overhead_us", "submit_call_us", "pipelined_us_per_launch", "chain16_us", "add_4194304_GBps",
                "matmul_512_GFLOPs"):
        assert math.isfinite(figs[f"{key}_before"]["value"]) and figs[f"{key}_before"]["value"] > 0, key
        assert figs[f"{key}_after"]["baseline"] == f"{key}_before"
        assert math.isfinite(figs[f"{key}_after"]["ratio"]), key
