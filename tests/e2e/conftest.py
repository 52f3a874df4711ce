"""Fixtures for tests that boot real guests: the guest artefacts (fetched with apt-get
download and built on first use, then cached for the run and across runs in
$PXOS_CACHE or ~/.cache/pxos/guest) and a real pxos-hvd with VMs on vhost-user sockets."""

from __future__ import annotations

import os
import sys

import pytest

from qemu.hvd import HvdProcess, start_hvd


@pytest.fixture(scope="session")
def guest_artefacts():
    """Kernel, initramfs, module and tool; prepared once per run (fetched if the cache is empty)."""
    from qemu import artefacts
    from qemu.errors import GuestImageError

    try:
        return artefacts.prepare(log=lambda s: print(f"[artefacts] {s}", file=sys.stderr))
    except GuestImageError as e:
        if os.environ.get("PXOS_REQUIRE_QEMU") == "1":
            raise
        pytest.skip(f"guest artefacts unavailable: {e}")


@pytest.fixture
def hvd_factory(tmp_path):
    """Start pxos-hvd (NumPy backend) with {vm_id: quota bytes}; stopped after the test."""
    started: list[HvdProcess] = []

    def make(vms: dict[int, int], **kw) -> HvdProcess:
        h = start_hvd(tmp_path / f"hvd{len(started)}", vms, **kw)
        started.append(h)
        return h

    yield make
    for h in started:
        h.stop()
