"""The DRM transport in real guests: Debian's unmodified 6.1 kernel with its own
virtio_gpu driver (no pxOS module loaded) runs pxOS work through /dev/dri/renderD128
against a real pxos-hvd, under QEMU 10 (TCG); and two guests at once, one on each
transport, get the same answers, quotas and errors from the same daemon."""

from __future__ import annotations

import re
import sys
import threading
from pathlib import Path

import pytest

from qemu.guest import Guest

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
PYLIB = Path(__file__).with_name("guest_pylib_checks.py")


def _pylib_cmd(transport: str) -> str:
    return (f"chroot /host /usr/bin/env PYTHONDONTWRITEBYTECODE=1 PXOS_TRANSPORT={transport} {sys.executable} "
            f"{PYLIB} {REPO / 'guest_driver' / 'python'}")


def _check_pylib(r, name: str) -> None:
    assert r.exit_status == 0, r.console[-5000:]
    m = re.search(rf"^{name}: (\d+)/(\d+) passed$", r.console, re.M)
    assert m and m.group(1) == m.group(2), r.console[-5000:]
    assert "PXOS_S_QUOTA" in r.console and "PXOS_S_NOT_FOUND" in r.console


def test_stock_kernel_runs_the_tool_and_the_python_library_over_drm(guest_artefacts, hvd_factory, tmp_path):
    hvd = hvd_factory({1: 64 << 20})
    cmd = f"pxos --transport drm selftest && pxos info && {_pylib_cmd('auto')}"
    with Guest(guest_artefacts, hvd.sockets[1], cmd, name="stock", host_share=Path("/"), driver="stock",
               log_path=tmp_path / "stock.log") as g:
        r = g.wait(600)
    assert "PXOS-DEVICE /dev/dri/renderD128" in r.console, r.console[-3000:]
    assert "pxos_gpu" not in r.console.split("PXOS-DEVICE")[0]  # the module was never loaded
    assert re.search(r"^selftest: (\d+)/\1 passed$", r.console, re.M), r.console[-5000:]
    assert re.search(r"^pxOS ABI \d+\.\d+ .*vm 1, session \d+$", r.console, re.M)  # auto chose DRM
    _check_pylib(r, "pylib")
    assert re.search(r"^pylib check_info: ok: .* transport drm$", r.console, re.M)  # auto chose DRM
    assert hvd.wait_usage(1, lambda used: used == 0)["memory_used"] == 0


def test_two_guests_one_per_transport_side_by_side(guest_artefacts, hvd_factory, tmp_path):
    hvd = hvd_factory({1: 64 << 20, 2: 64 << 20})
    results = {}

    def run(vm: int, driver: str, transport: str) -> None:
        with Guest(guest_artefacts, hvd.sockets[vm], _pylib_cmd(transport), name=f"vm{vm}-{driver}",
                   host_share=Path("/"), driver=driver, log_path=tmp_path / f"vm{vm}.log") as g:
            results[driver] = g.wait(600)

    threads = [threading.Thread(target=run, args=args) for args in ((1, "module", "module"), (2, "stock", "drm"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(700)
    assert "PXOS-DEVICE /dev/pxos0" in results["module"].console
    assert "PXOS-DEVICE /dev/dri/renderD128" in results["stock"].console
    for r in results.values():
        _check_pylib(r, "pylib")
    # The same checks gave the same outcome on either transport, line for line.
    lines = {d: sorted(re.findall(r"^pylib (\w+): (ok|FAIL)", r.console, re.M)) for d, r in results.items()}
    assert lines["module"] == lines["stock"]
    for vm in (1, 2):
        assert hvd.wait_usage(vm, lambda used: used == 0)["memory_used"] == 0
