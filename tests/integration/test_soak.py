"""A short soak (bench/soak.py) in CI: a real pxos-hvd process, eight VMs, guests that
connect, work and leave (gracefully, abruptly, by a device reset), quota changes, VMs removed
under their guests and added again, hostile guest and control requests, launches of every
size. Nothing may be lost, the books must balance, and the daemon must hold no more fds or
threads at rest at the end than after warm-up."""

from __future__ import annotations

from bench import soak, soak_report
from bench.soak_guest import LAUNCH_SIZES


def test_short_soak_loses_nothing_drifts_nothing_and_leaks_nothing():
    o = soak.run(25, seed=11, warmup=6, every=6)
    assert o["verdict"] == [], (o["verdict"], o["errors"])
    assert o["lost"] == 0 and o["internal"] == 0
    assert o["accounting_drift"] == 0 and o["rest_drift_bytes"] == 0
    assert o["fds"]["end"] - o["fds"]["baseline"] <= soak_report.FD_SLACK
    assert o["threads"]["end"] - o["threads"]["baseline"] <= soak_report.THREAD_SLACK
    assert o["memfd_maps_at_rest"] == 0 and o["daemon_exit"] == 0
    # It was a soak, not a quiet run: every kind of churn happened and was answered.
    assert all(n > 0 for n in o["sessions"].values()), o["sessions"]
    assert o["checked_sessions"] > 0 and o["answered"] > 1000
    assert o["hostile"] > 0 and o["abandoned"] > 0
    ops = o["operator"]
    assert ops["vm_removed"] > 0 and ops["vm_added"] == ops["vm_removed"]
    assert ops["quota_set"] + ops["quota_refused"] > 0 and ops["hostile_rejected"] > 0
    assert ops["sighup"] > 0 and o["vms_missing_at_rest"] == 0 and o["settings_lost"] == []  # SIGHUPs kept run-time changes
    assert set(o["launches_by_size"]) == {f"{n}:{s}" for n, s in LAUNCH_SIZES}
    assert len(o["checkpoints"]) >= 4  # start, baseline, at least one in the run, the end
