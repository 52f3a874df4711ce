"""Smoke test of bench/bench_isolation.py: a --quick run moves WRITE payloads into a real
VM buffer in the daemon, on the device worker and through a child process over a shared
staging memfd, and emits every figure with its baseline. Figures are not judged."""

from __future__ import annotations

import json
import math

from bench import bench_isolation


def test_quick_run_measures_every_path(capsys):
    assert bench_isolation.main(["--quick", "--json", "--no-pin"]) == 0
    figs = json.loads(capsys.readouterr().out)["figures"]
    for size in bench_isolation.SIZES:
        for path in ("inproc", "thread", "process_copy", "process_shared_staging"):
            key = f"{path}_write_{size}_us"
            assert math.isfinite(figs[key]["value"]) and figs[key]["value"] > 0, key
            if path != "inproc":
                assert figs[key]["baseline"] == f"inproc_write_{size}_us"
    assert figs["process_ipc_us"]["value"] > 0
