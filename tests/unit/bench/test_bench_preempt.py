"""Smoke test of bench/bench_preempt.py: a --quick run on NumPy completes and emits the
issue's table as one JSON object. Figures are not judged (benchmarks are not timed
assertions); what does not depend on timing is checked."""

from __future__ import annotations

import json
import math

import pytest

from bench import bench_preempt

KEYS = ["iso_interactive_p99_alone_ms", "iso_interactive_p99_beside_batch_off_ms",
        "iso_interactive_p99_beside_batch_on_ms", "batch_throughput_lost_to_preemption_pct",
        "share_max_err_pp", "share_work_max_err_pp", "overhead_large_serial_pct", "overhead_large_serial_here_pct", "overhead_tiny_serial_us",
        "overhead_tiny_serial_here_us",
        "overhead_tiny_pipelined_us", "compile_tiny_p50_beside_before_ms", "compile_tiny_p50_beside_inline_ms",
        "compile_tiny_p50_beside_pool_ms", "compile_tiny_arrival_p99_beside_pool_ms", "compile_vm2_sources_per_s_pool",
        "compile_pool_worker_cpu_ms_per_source"]


@pytest.mark.slow
def test_quick_run_emits_the_issue_table(capsys):
    bench_preempt.main(["--quick", "--json", "--backend", "numpy"])
    out = json.loads(capsys.readouterr().out)
    figs = out["figures"]
    for key in KEYS:
        assert math.isfinite(figs[key]["value"]), key
    assert figs["iso_interactive_p99_beside_batch_on_ms"]["baseline"] == "iso_interactive_p99_alone_ms"
    assert figs["iso_preemptions_off"]["value"] == 0  # slice 0: launches run whole
    assert figs["share_vm1_achieved_pct"]["value"] + figs["share_vm2_achieved_pct"]["value"] == pytest.approx(100)
    assert all("ok" not in f for f in figs.values())  # --quick: goals shown, not judged


@pytest.mark.slow
@pytest.mark.wgpu
def test_quick_run_on_wgpu_steps_launches(capsys):
    # The GPU path (executor/stepping.py) in CI, on lavapipe: launches stepped, the urgent
    # VM preempting, a shorter slice than the default.
    bench_preempt.main(["--quick", "--json", "--backend", "wgpu", "--slice-ms", "0.5"])
    figs = json.loads(capsys.readouterr().out)["figures"]
    for key in KEYS:
        assert math.isfinite(figs[key]["value"]), key
    assert figs["iso_preemptions_off"]["value"] == 0
    assert figs["share_vm1_achieved_pct"]["value"] + figs["share_vm2_achieved_pct"]["value"] == pytest.approx(100)


@pytest.mark.slow
def test_preempt_wait_breaks_the_urgent_wait_down():
    from bench import preempt_wait

    out = preempt_wait.measure("numpy", "auto", None, 0.5)
    assert "queue wait p50" in out and "_issue_steps" in out, out
    # the wrappers are taken off again
    from hypervisor import dispatch

    assert dispatch.Dispatcher._issue_steps.__name__ == "_issue_steps"


def test_sweep_slices_parse_and_refuse_nonsense():
    from bench import preempt_sweep

    assert preempt_sweep.parse_sweep("1,0.5,0.25") == (1.0, 0.5, 0.25)
    assert preempt_sweep.mode_key(0.25) == "slice_0p25ms" and preempt_sweep.mode_key(None) == "off"
    for bad in ("0", "1,1", "-1", "2000", "x"):
        with pytest.raises(ValueError):
            preempt_sweep.parse_sweep(bad)
    with pytest.raises(SystemExit):
        bench_preempt.main(["--sweep", "1,0"])


@pytest.mark.slow
def test_quick_sweep_reports_each_slice_against_the_same_runs_baselines(capsys):
    bench_preempt.main(["--quick", "--json", "--backend", "numpy", "--sweep", "1,0.25"])
    figs = json.loads(capsys.readouterr().out)["figures"]
    assert "iso_interactive_p99_alone_ms" not in figs  # --sweep alone runs only the sweep
    assert figs["sweep_off_preemptions_per_s"]["value"] == 0  # slice 0: launches run whole
    for key in ("slice_1ms", "slice_0p25ms"):
        assert figs[f"sweep_{key}_p99_ms"]["baseline"] == "sweep_alone_p99_ms"
        assert figs[f"sweep_{key}_batch_device_ms_per_launch_beside"]["baseline"] == \
            "sweep_off_batch_device_ms_per_launch_beside"
        for fig in ("queue_p99_ms", "batch_beside_cost_pct", "batch_tiles_alone_cost_pct", "batch_alone_cost_pct",
                    "batch_launches_per_s_beside"):
            assert math.isfinite(figs[f"sweep_{key}_{fig}"]["value"]), (key, fig)
        assert figs[f"sweep_{key}_preemptions_per_s"]["value"] > 0  # the urgent VM preempted
