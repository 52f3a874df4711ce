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
    hvd = hvd_factory({1: 64 << 20, 2: 48 << 20}, shares={1: 70, 2: 30})
    results = {}

    def run(vm: int, driver: str, transport: str) -> None:
        cmd = f"pxos info --json && {_pylib_cmd(transport)}"  # the tool on "auto": each guest's own
        with Guest(guest_artefacts, hvd.sockets[vm], cmd, name=f"vm{vm}-{driver}",
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
    # Each VM's own quota and share, as the daemon has them, whatever the transport.
    for driver, (quota, share) in {"module": (64 << 20, 70), "stock": (48 << 20, 30)}.items():
        info = re.search(r'^\{"abi".*"memory_quota": (\d+).*"compute_share_pct": (\d+)', results[driver].console, re.M)
        assert info and (int(info.group(1)), int(info.group(2))) == (quota, share), results[driver].console[-3000:]
    for vm in (1, 2):
        assert hvd.wait_usage(vm, lambda used: used == 0)["memory_used"] == 0


LIFECYCLE = """
set -u
export PXOS_TRANSPORT=drm
dev=$(basename $(readlink /sys/bus/virtio/drivers/virtio_gpu/virtio*))
wait_node() { i=0; while [ ! -e /dev/dri/renderD128 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done; }
pxos alloc float[262144] --hold 600 > /dev/null &
pxos load 120 --depth 4 --size 128 > /tmp/bg.log 2>&1 &
work=$!
sleep 2
pxos info --json | sed 's/^/DURING /'
# The device taken from the driver with work in flight: the processes get ENODEV.
echo $dev > /sys/bus/virtio/drivers/virtio_gpu/unbind
wait $work
echo "BG-EXIT $?"
kill -9 $(jobs -p) 2>/dev/null; wait 2>/dev/null
rmmod virtio_gpu && insmod /lib/modules/virtio_gpu.ko && wait_node
pxos info --json | sed 's/^/AFTER-UNBIND /'
dmesg -c > /tmp/phase1.log
echo "CYCLES"
for i in 1 2 3; do
    pxos alloc float[262144] --hold 600 > /dev/null &
    pxos workload 400 > /dev/null 2>&1 &
    sleep 1
    kill -9 $(jobs -p); wait 2>/dev/null
    rmmod virtio_gpu || echo "CYCLE-FAIL rmmod $i"
    insmod /lib/modules/virtio_gpu.ko || echo "CYCLE-FAIL insmod $i"
    wait_node
    pxos info --json | sed "s/^/AFTER-CYCLE /"
done
pxos selftest | tail -n 1
dmesg | grep -i -E "bug|warn|oops|protection" | tail -n 20
"""


def test_driver_unbind_and_reload_with_work_in_flight_leave_usage_at_zero(guest_artefacts, hvd_factory, tmp_path):
    hvd = hvd_factory({1: 64 << 20})
    with Guest(guest_artefacts, hvd.sockets[1], LIFECYCLE, name="stock-life", driver="stock",
               log_path=tmp_path / "life.log") as g:
        r = g.wait(600)
    out = r.console
    assert r.exit_status == 0, out[-5000:]
    used = [int(m) for m in re.findall(r'^DURING \{"abi".*"memory_used": (\d+)', out, re.M)]
    assert used and used[0] > 1 << 20, out  # the held buffer and the workload's were there
    bg = re.search(r"^BG-EXIT (\d+)$", out, re.M)
    assert bg and bg.group(1) != "0", out  # the workload saw its device go
    # Unbound with work in flight, then reloaded: the host released everything (device reset).
    assert re.findall(r'^AFTER-UNBIND \{"abi".*"memory_used": (\d+)', out, re.M) == ["0"], out
    # Killed with buffers held and launches in flight, the driver unloaded and reloaded: nothing left.
    assert re.findall(r'^AFTER-CYCLE \{"abi".*"memory_used": (\d+)', out, re.M) == ["0"] * 3, out
    assert "CYCLE-FAIL" not in out, out
    assert re.search(r"^selftest: (\d+)/\1 passed$", out, re.M), out
    tail = out[out.index("\nCYCLES"):]
    assert not re.search(r"BUG|Oops|WARNING|general protection", tail), tail[-5000:]
    assert hvd.proc.poll() is None, "pxos-hvd died"
    assert hvd.wait_usage(1, lambda u: u == 0)["memory_used"] == 0


def test_mesa_probing_the_device_falls_back_to_software_cleanly(guest_artefacts, hvd_factory, tmp_path):
    """A guest with Mesa (the host's, through the chroot) opens the render node as any GL
    program would: virgl finds no virgl capset, Mesa renders in software (llvmpipe), the
    VM and pxOS carry on (Mesa's loader is also forced onto virtio_gpu, as a misconfigured
    guest might be)."""
    hvd = hvd_factory({1: 64 << 20})
    probe = Path(__file__).with_name("guest_mesa_probe.py")
    cmd = (f"chroot /host /usr/bin/python3 {probe} 2>/dev/null; echo PROBE-EXIT $?; "
           f"chroot /host /usr/bin/env MESA_LOADER_DRIVER_OVERRIDE=virtio_gpu /usr/bin/python3 {probe} "
           f"2>/dev/null; echo PROBE-EXIT $?; pxos --transport drm selftest | tail -n 1; "
           f"dmesg | grep -i -E 'bug|oops|protection|response 0x' | tail -n 5")
    with Guest(guest_artefacts, hvd.sockets[1], cmd, name="mesa", host_share=Path("/"), driver="stock",
               log_path=tmp_path / "mesa.log") as g:
        r = g.wait(600)
    out = r.console
    assert r.exit_status == 0, out[-5000:]
    assert re.findall(r"^PROBE-EXIT (\d+)$", out, re.M) == ["0", "0"], out[-5000:]
    renderers = re.findall(r"^MESA renderer (.*)$", out, re.M)
    assert len(renderers) == 2 and all("llvmpipe" in x or "softpipe" in x for x in renderers), out[-5000:]
    assert "virgl" not in out.lower(), out[-5000:]
    assert re.search(r"^selftest: (\d+)/\1 passed$", out, re.M), out[-5000:]
    assert not re.search(r"BUG|Oops|general protection", out), out[-5000:]
    assert hvd.proc.poll() is None and "internal error" not in hvd.log_text()


def test_many_processes_and_a_timed_out_launch_over_drm(guest_artefacts, hvd_factory, tmp_path):
    """Four processes with 48 launches each in flight on the one fence timeline (more than
    the control queue holds), every result checked; then a LAUNCH that outlives its timeout:
    ETIMEDOUT at once, the launch finishes on the host, and nothing is left behind."""
    from tests.e2e.test_guest_module import SLOW

    hvd = hvd_factory({1: 64 << 20})
    cmd = ("export PXOS_TRANSPORT=drm; for i in 1 2 3 4; do pxos selftest > /tmp/s$i.log 2>&1 & done; wait; "
           "cat /tmp/s*.log; "
           "pxos run /root/slow.pxp --timeout 1 --bind a=float[384,384]:random --bind c=float[384,384]; "
           "echo \"TIMEOUT-RC $?\"; pxos info --json; pxos selftest | tail -n 1")
    with Guest(guest_artefacts, hvd.sockets[1], cmd, name="stock-many", driver="stock",
               files={"/root/slow.pxp": SLOW}, log_path=tmp_path / "many.log") as g:
        r = g.wait(600)
    out = r.console
    assert r.exit_status == 0, out[-4000:]
    assert len(re.findall(r"^selftest: (\d+)/\1 passed$", out, re.M)) == 5, out[-6000:]
    assert len(re.findall(r"async_poll_reap\s+ok: 48 launches in flight", out)) == 4
    assert re.search(r"pxos: slow: Connection timed out \(timed out; the launch may still run\)", out), out[-3000:]
    assert "TIMEOUT-RC 1" in out
    assert re.search(r'"memory_used": 0,', out), out[-3000:]
    assert not re.search(r"BUG|Oops|WARNING", out)
    assert hvd.wait_usage(1, lambda u: u == 0)["memory_used"] == 0
