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

SHARE_MARGIN_PP = 8.0


def test_demo_three_guests_share_the_device(guest_artefacts):
    out = io.StringIO()
    # 256x256 matmuls at depth 4 from each guest keep the device saturated (measured: about
    # 0.25 ms of device time each, three guests always with work queued), so the shares
    # are the scheduler's doing, not the guests' demand.
    assert run_demo(duration=8, size=256, accel="tcg", as_json=True, out=out) == 0, out.getvalue()
    summary = json.loads(out.getvalue())
    assert summary["ok"] is True
    assert [vm["share"] for vm in summary["vms"]] == [50.0, 30.0, 20.0]
    # Achieved while all three were busy (measured 46.8 / 31.5 / 21.7 under TCG on a loaded
    # 2-core host): in order, and each within SHARE_MARGIN_PP of its target; the precise
    # figures are the benchmarks' (docs/benchmarks.md), not a timed assertion's.
    achieved = [summary["share_while_all_busy"][str(v)] for v in (1, 2, 3)]
    assert achieved[0] > achieved[1] > achieved[2], summary
    for got, want in zip(achieved, (50.0, 30.0, 20.0), strict=True):
        assert abs(got - want) <= SHARE_MARGIN_PP, summary
    for vm, line in zip(summary["vms"], summary["guests"], strict=True):
        m = re.match(r"load: (\d+) launches of matmul 256x256 in 8 s \(depth 4\), 0 failed", line or "")
        assert m, summary
        assert vm["launches_total"] >= int(m.group(1)) > 0
