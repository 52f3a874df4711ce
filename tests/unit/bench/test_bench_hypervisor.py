"""Smoke test of bench/bench_hypervisor.py: a --quick run on NumPy completes and emits
every section's figures as one JSON object. The figures themselves are not judged here
(conventions: benchmarks are not timed assertions)."""

from __future__ import annotations

import json
import math

import pytest

from bench import bench_hypervisor

DISPATCH = [f"dispatch_{k}_{m}" for k in ("large", "tiny")
            for m in ("direct_serial", "direct_pipelined", "serial", "pipelined")]
FAIRNESS = {"fair3_50_30_20": 3, "fair2_70_30_mixed": 2, "fair4_40_30_20_10_mixed": 4}
ISOLATION = ["isolation_interactive_p50_alone_ms", "isolation_interactive_p99_alone_ms",
             "isolation_interactive_p50_beside_batch_ms", "isolation_interactive_p99_beside_batch_ms",
             "isolation_batch_launch_p99_ms", "isolation_interactive_queue_p99_beside_batch_ms"]
COLD = ["cold_start_longest_kernel_ms", "cold_start_first_launch_wait_max_ms"]
SWITCH = ["switch_same_vm_gap_p50_us", "switch_same_vm_gap_p99_us", "switch_gap_p50_us", "switch_gap_p99_us",
          "switch_count", "switch_same_vm_gap_under_load_p50_us"]


def run_json(capsys, *argv: str) -> dict:
    bench_hypervisor.main(["--quick", "--json", "--backend", "numpy", *argv])
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow
def test_quick_run_emits_every_section(capsys):
    out = run_json(capsys)
    assert out["benchmark"] == "hypervisor"
    figs = out["figures"]
    for key in DISPATCH:
        unit = "ms" if "large" in key else "us"
        assert f"{key}_{unit}" in figs
    for mode in ("serial", "pipelined"):
        assert "ratio" in figs[f"dispatch_large_{mode}_ms"]
        assert figs[f"dispatch_large_{mode}_overhead_pct"]["goal"] == "<= 3 %"
        for key in ("large", "tiny"):
            assert f"dispatch_{key}_{mode}_overhead_us" in figs
            assert f"dispatch_{key}_{mode}_cpu_overhead_us" in figs
    for scenario, n in FAIRNESS.items():
        shares = [figs[f"{scenario}_vm{v}_share_pct"]["value"] for v in range(1, n + 1)]
        assert sum(shares) == pytest.approx(100.0)  # parts of one whole: every VM ran
        assert all(s > 0 for s in shares)
        assert "goal" in figs[f"{scenario}_max_err_pp"]
        assert "ok" not in figs[f"{scenario}_max_err_pp"]  # --quick does not judge the 10 s goal
        assert figs[f"{scenario}_all_backlogged_pct"]["value"] > 0
    for key in COLD + ISOLATION + SWITCH:
        assert key in figs
    assert figs["switch_count"]["value"] > 0
    for key, fig in figs.items():
        assert math.isfinite(fig["value"]), key


def test_only_picks_sections_and_refuses_unknown_ones(capsys):
    with pytest.raises(SystemExit) as exc:
        bench_hypervisor.main(["--quick", "--only", "dispatch,warp"])
    assert exc.value.code == 2
    assert "--only" in capsys.readouterr().err
