"""A VM moved between devices under a running guest (issue 16), end to end: real pxos-hvd
with two NumPy devices, real QEMU (TCG), the guest's pxos_gpu.ko and the Python library.
While the guest launches and reads back in a loop, `pxosctl vm move` takes its VM to
device 1 and back: the guest sees only pauses, every result stays bit for bit the same,
a buffer written once keeps its bytes, and no request fails."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest

from qemu.guest import Guest

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
BOOT_S = 400.0
RUN_S = 25  # the guest's loop; the two moves happen inside it


def test_guest_keeps_running_across_moves(guest_artefacts, hvd_factory, tmp_path):
    hvd = hvd_factory({1: 64 << 20}, devices=2)
    assert hvd.vms()[1]["device"] == 0
    script = Path(__file__).with_name("guest_move_check.py")
    cmd = (f"chroot /host /usr/bin/env PYTHONDONTWRITEBYTECODE=1 {sys.executable} {script} "
           f"{REPO / 'guest_driver' / 'python'} {RUN_S}; echo \"MOVE-RC $?\"")
    with Guest(guest_artefacts, hvd.sockets[1], cmd, name="move", host_share=Path("/"),
               log_path=tmp_path / "move.log") as g:
        g.wait_for(r"^MOVE-READY", BOOT_S)
        time.sleep(3.0)  # launches in flight
        there = hvd.ctl("vm", "move", "1", "--device", "1")
        assert hvd.vms()[1]["device"] == 1
        time.sleep(3.0)
        back = hvd.ctl("vm", "move", "1", "--device", "0")
        assert hvd.vms()[1]["device"] == 0
        g.wait_for(r"^MOVE-RC \d+", RUN_S + 120)
        r = g.wait(120)
    con = r.console
    assert "MOVE-RC 0" in con, con[-4000:]
    m = re.search(r"MOVE-DONE iterations (\d+) mismatches 0 max_gap ([\d.]+)", con)
    assert m and int(m.group(1)) > 0, con[-4000:]
    for rep, (src, dst) in ((there, (0, 1)), (back, (1, 0))):
        assert (rep["from_device"], rep["info"]["device"]) == (src, dst)
        assert rep["bytes"] >= (1 << 20) + 2 * (1 << 18) and rep["pause_seconds"] > 0
    print(f"\nguest across two moves: {m.group(1)} iterations, longest gap {m.group(2)} s (TCG); "
          f"pauses {there['pause_seconds'] * 1e3:.1f} / {back['pause_seconds'] * 1e3:.1f} ms host-side")
