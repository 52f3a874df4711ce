"""Smoke test of bench/bench_devices.py: a tiny run on two NumPy devices completes, moves a
VM back and forth with its bytes intact, and reports every figure with its baseline."""

from __future__ import annotations

import json

from bench import bench_devices


def test_tiny_run_reports_moves_and_aggregates(capsys):
    bench_devices.main(["--json", "--quick", "--sizes", "1", "--launches", "2", "--size", "32"])
    out = json.loads(capsys.readouterr().out)
    figs = out["figures"]
    assert out["benchmark"] == "devices" and "devices [0, 1]" in out["notes"][0]
    assert figs["move_pause_1MB"]["baseline"] == "move_pause_empty" and figs["move_pause_1MB"]["value"] > 0
    assert figs["move_rate_1MB"]["baseline"] == "host_memcpy_1MB" and figs["move_rate_1MB"]["value"] > 0
    assert figs["aggregate_2vm_2_devices"]["baseline"] == "aggregate_2vm_one_device"
    assert figs["scaling_2_devices"]["value"] > 0
