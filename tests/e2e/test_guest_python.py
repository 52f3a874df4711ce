"""The guest Python library (guest_driver/python/pxos_guest.py) inside a real guest: the
host's root is shared read-only over virtio-9p and the host's Python (with NumPy) runs in
a chroot there, against the guest's /dev/pxos0 and a real pxos-hvd."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from qemu.guest import Guest

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def test_guest_python_library_end_to_end(guest_artefacts, hvd_factory, tmp_path):
    hvd = hvd_factory({1: 64 << 20})
    script = Path(__file__).with_name("guest_pylib_checks.py")
    cmd = (f"chroot /host /usr/bin/env PYTHONDONTWRITEBYTECODE=1 {sys.executable} {script} "
           f"{REPO / 'guest_driver' / 'python'}")
    with Guest(guest_artefacts, hvd.sockets[1], cmd, name="pylib", host_share=Path("/"),
               log_path=tmp_path / "pylib.log") as g:
        r = g.wait(400)
    assert "PXOS-HOSTFS /host" in r.console, r.console[-3000:]
    assert r.exit_status == 0, r.console[-5000:]
    m = re.search(r"^pylib: (\d+)/(\d+) passed$", r.console, re.M)
    assert m and m.group(1) == m.group(2), r.console[-5000:]
    assert "PXOS_S_QUOTA" in r.console
    assert hvd.wait_usage(1, lambda used: used == 0)["memory_used"] == 0
