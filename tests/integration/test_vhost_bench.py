"""Smoke test of bench/bench_vhost.py: a --quick run drives the echo device and the real
virtio-gpu-pxos device through the scripted front-end and emits every figure as one JSON
object. The figures are not judged (conventions: benchmarks are not timed assertions);
what is checked is that every request the benchmark timed was answered correctly (the
bench checks each used element) and that nothing was skipped."""

from __future__ import annotations

import json
import math

from bench import bench_vhost

WALKS = [f"walk_{k}_{impl}_us" for k in ("direct2", "indirect16", "pages256") for impl in ("python", "c")]
MEMCPY = ["memcpy_1mib_gb_per_s", "memcpy_1mib_sg16_gb_per_s"]
PER_DEVICE = ["noop_req_per_s", "noop_us_per_req", "noop_rtt_us", "write_1mib_gb_per_s", "write_1mib_us_per_req",
              "write_1mib_sg16_gb_per_s", "write_1mib_sg16_us_per_req"]


def test_quick_run_measures_both_devices(capsys):
    assert bench_vhost.main(["--quick", "--json", "--no-pin"]) == 0
    out = json.loads(capsys.readouterr().out)
    figs = out["figures"]
    assert not [n for n in out["notes"] if "not measured" in n], out["notes"]
    keys = WALKS + MEMCPY + [f"{dev}_{k}" for dev in ("echo", "gpu") for k in PER_DEVICE] + ["gpu_noop_device_us"]
    for key in keys:
        assert key in figs, key
        assert math.isfinite(figs[key]["value"]), key
    for key in keys[:-1]:
        assert figs[key]["value"] > 0, key
    # Each WRITE is judged against a memcpy of the same pieces, and says so.
    assert figs["gpu_write_1mib_gb_per_s"]["baseline"] == "memcpy_1mib_gb_per_s"
    assert figs["gpu_write_1mib_sg16_gb_per_s"]["baseline"] == "memcpy_1mib_sg16_gb_per_s"
    assert figs["gpu_noop_req_per_s"]["goal"] == ">= 50000"
    # LAUNCH one at a time, the fast path against the hand-off path of the same run (issue 14),
    # and where the time of a round trip goes in each.
    for key in ("gpu_launch_rtt_us", "gpu_launch_rtt_handoff_us", "gpu_launch_backend_us",
                "gpu_launch_phase_fast_total_us", "gpu_launch_phase_handoff_total_us"):
        assert math.isfinite(figs[key]["value"]) and figs[key]["value"] > 0, key
    assert figs["gpu_launch_rtt_us"]["baseline"] == "gpu_launch_rtt_handoff_us"
    # the hand-off path passes the dispatch thread's pick (the steps' order around it is the threads')
    assert any(k.startswith("gpu_launch_phase_handoff_") and "dispatcher_picked" in k for k in figs)
