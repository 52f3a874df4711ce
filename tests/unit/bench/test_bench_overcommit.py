"""Smoke test of bench/bench_overcommit.py: a --quick run on NumPy completes, emits every
figure as one JSON object, and the figures that do not depend on timing say what the
hypervisor really did (the resident mode copied nothing, the one-layer pool copied every
weight every pass). Timed figures are not judged (conventions: benchmarks are not timed
assertions); --quick shows the goals without verdicts."""

from __future__ import annotations

import contextlib
import io
import json
import math

import pytest

from bench import bench_overcommit
from bench.oc_workload import layer_bytes, per_pass

CASES = ("compute_bound", "copy_bound")
TIMED = ["copy_pass_ms", "resident_pass_ms", "sync_direct_pass_ms", "sync_offload_pass_ms",
         "demand_paging_pass_ms", "prefetch_pass_ms"]
OVERCOMMITTED = ("sync_offload", "demand_paging", "prefetch")


@pytest.fixture(scope="module")
def quick() -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        bench_overcommit.main(["--quick", "--json", "--backend", "numpy"])
    return json.loads(out.getvalue())


def test_every_figure_is_there_and_finite(quick):
    assert quick["benchmark"] == "overcommit"
    figs = quick["figures"]
    assert figs["h2d_pinned_peak_gbps"]["value"] > 0
    for case in CASES:
        s = f"stream_{case}"
        for key in TIMED:
            assert figs[f"{s}_{key}"]["value"] > 0, key
        for mode in OVERCOMMITTED:
            for key in ("h2d_of_peak_pct", "copy_rate_of_peak_pct", "stall_ms_per_pass", "hit_pct"):
                assert math.isfinite(figs[f"{s}_{mode}_{key}"]["value"]), (mode, key)
            assert 0 <= figs[f"{s}_{mode}_hit_pct"]["value"] <= 100
        assert figs[f"{s}_prefetch_pass_ms"]["baseline"] == f"{s}_resident_pass_ms"
    for mode in bench_overcommit.SWITCH_MODES:
        assert figs[f"switch_{mode}_count"]["value"] > 0
        assert figs[f"switch_{mode}_p99_us"]["value"] >= figs[f"switch_{mode}_p50_us"]["value"] >= 0


def test_goals_are_shown_but_not_judged_in_a_quick_run(quick):
    goals = {k: f for k, f in quick["figures"].items() if "goal" in f}
    assert any(k.endswith("prefetch_speedup_over_sync") for k in goals)
    assert all("ok" not in f for f in goals.values())
    assert any("--quick" in n for n in quick["notes"])


def test_sizes_overcommit_as_the_issue_asks(quick):
    figs = quick["figures"]
    assert figs["stream_weights_over_pool"]["value"] == pytest.approx(3.0, rel=0.02)
    # Working sets of the three VMs: twice the pool, within half a layer per VM (whole layers).
    plan = bench_overcommit.Plan.make("numpy", True)
    slack = 3 * layer_bytes(plan.n) / 2 / plan.pool
    assert 2 - slack <= figs["switch_working_sets_over_pool"]["value"] <= 2 + slack


def test_copies_are_what_each_mode_implies(quick):
    figs = quick["figures"]
    plan = bench_overcommit.Plan.make("numpy", True)
    weights = plan.layers * layer_bytes(plan.n)
    for case in CASES:
        s = f"stream_{case}"
        assert figs[f"{s}_weight_bytes_per_pass"]["value"] == weights
        assert figs[f"{s}_resident_h2d_bytes_per_pass"]["value"] == 0  # everything stays on the device
        # A pool with room for one layer: every launch fetches its weight, and none finds it there.
        assert figs[f"{s}_sync_offload_h2d_bytes_per_pass"]["value"] >= weights
        assert figs[f"{s}_sync_offload_hit_pct"]["value"] == 0
        # Pool = weights / 3: at least two thirds of the weights come in again every pass.
        for mode in ("demand_paging", "prefetch"):
            assert figs[f"{s}_{mode}_h2d_bytes_per_pass"]["value"] >= 2 * weights / 3, mode


def test_only_refuses_unknown_sections(capsys):
    with pytest.raises(SystemExit) as exc:
        bench_overcommit.main(["--quick", "--backend", "numpy", "--only", "streaming,bogus"])
    assert exc.value.code == 2
    assert "--only" in capsys.readouterr().err


def test_per_pass_is_steady_state_after_warmup():
    assert per_pass([1.0, 3.0, 5.0, 7.0], 1) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        per_pass([1.0], 1)
    with pytest.raises(ValueError):
        per_pass([1.0, 2.0], 0)
