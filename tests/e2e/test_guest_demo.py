"""`pxos-vm demo`: pxos-hvd and three real guests keeping the device busy at once; every
guest's load finishes without a failed launch, pxosctl accounts each VM's launches, and
the device time each VM got while all three were busy follows the configured shares
(issue 14: the achieved shares, not only the configured ones)."""

from __future__ import annotations

import io
import json
import re

import pytest

from qemu.demo import run_demo

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

SHARE_MARGIN_PP = 15.0


def test_demo_three_guests_share_the_device(guest_artefacts):
    out = io.StringIO()
    assert run_demo(duration=8, size=256, depth=16, accel="tcg", as_json=True, out=out) == 0, out.getvalue()
    summary = json.loads(out.getvalue())
    assert summary["ok"] is True
    assert [vm["share"] for vm in summary["vms"]] == [50.0, 30.0, 20.0]
    # Achieved while all three were busy. Three TCG guests and the NumPy "device" share the
    # same two cores, so the guests cannot keep it saturated (measured: the device ~50 %
    # busy; 45.5 / 31.6 / 23.0 % at depth 16, and at depth 4 on a loaded host 39.0 / 29.1 / 31.9 %):
    # what the scheduler decides then shows through the guests' closed loops, not exactly.
    # Exact shares under saturation are the host-side tests' and bench_hypervisor's
    # (docs/benchmarks.md); here the largest share must get the most device time, and every
    # VM its part within SHARE_MARGIN_PP.
    achieved = [summary["share_while_all_busy"][str(v)] for v in (1, 2, 3)]
    assert achieved[0] == max(achieved), summary
    for got, want in zip(achieved, (50.0, 30.0, 20.0), strict=True):
        assert abs(got - want) <= SHARE_MARGIN_PP, summary
    for vm, line in zip(summary["vms"], summary["guests"], strict=True):
        m = re.match(r"load: (\d+) launches of matmul 256x256 in 8 s \(depth 16\), 0 failed", line or "")
        assert m, summary
        assert vm["launches_total"] >= int(m.group(1)) > 0
