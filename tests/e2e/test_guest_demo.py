"""`pxos-vm demo`: pxos-hvd and three real guests keeping the device busy at once; every
guest's load finishes without a failed launch and pxosctl accounts each VM's launches."""

from __future__ import annotations

import io
import json
import re

import pytest

from qemu.demo import run_demo

pytestmark = [pytest.mark.qemu, pytest.mark.slow]


def test_demo_three_guests_share_the_device(guest_artefacts):
    out = io.StringIO()
    assert run_demo(duration=4, size=64, accel="tcg", as_json=True, out=out) == 0, out.getvalue()
    summary = json.loads(out.getvalue())
    assert summary["ok"] is True
    assert [vm["share"] for vm in summary["vms"]] == [50.0, 30.0, 20.0]
    for vm, line in zip(summary["vms"], summary["guests"], strict=True):
        m = re.match(r"load: (\d+) launches of matmul 64x64 in 4 s \(depth 4\), 0 failed", line or "")
        assert m, summary
        assert vm["launches_total"] >= int(m.group(1)) > 0
