"""Guests running primitives end to end (issue 5): real pxos-hvd, real QEMU (TCG here),
the real guest kernel with pxos_gpu.ko, and the static `pxos` tool inside.

Two guests boot at once on one daemon; each runs `pxos selftest` (every result checked in
the guest against C references) and a workload. One guest goes over its quota and gets a
clear error; the other is unaffected. A QEMU killed mid-run leaves nothing behind on the
host, and its socket takes a new QEMU.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from qemu.guest import Guest

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

MiB = 1 << 20
QUOTA = 64 * MiB
BOOT_AND_RUN_S = 240.0
SELFTEST_OK = re.compile(r"^selftest: (\d+)/\1 passed$", re.M)
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "primitives"


def launches_ok(metrics: str, vm_id: int) -> float:
    """Sum of pxos_vm_launches_total{vm=vm_id, status="ok"} over classes."""
    total = 0.0
    for m in re.finditer(r"^pxos_vm_launches_total\{([^}]*)\} (\S+)$", metrics, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if labels.get("vm") == str(vm_id) and labels.get("status") == "ok":
            total += float(m.group(2))
    return total


def guest(artefacts, hvd, vm_id, command, tmp_path, **kw) -> Guest:
    return Guest(artefacts, hvd.sockets[vm_id], command, name=f"guest{vm_id}",
                 log_path=tmp_path / f"guest{vm_id}-{int(time.monotonic() * 1000)}.log", **kw)


def assert_ok(result, what):
    assert result.exit_status == 0, f"{what}: exit {result.exit_status}\n{result.console[-4000:]}"
    assert SELFTEST_OK.search(result.console), f"{what}: selftest did not pass\n{result.console[-4000:]}"


def test_two_guests_selftest_workload_and_quota(guest_artefacts, hvd_factory, tmp_path):
    hvd = hvd_factory({1: QUOTA, 2: QUOTA})
    # Guest 1 also asks for 400 MB, over its 64 MiB quota; then proves it still works.
    cmd1 = ("pxos selftest && pxos workload 5 && "
            "{ pxos alloc float[100000000]; echo \"OVER-QUOTA-RC $?\"; } && pxos selftest")
    # Guest 2 also runs the repository's example programs through `pxos compile` / `pxos run`.
    # Several processes of guest 2 share its device at once (one session each).
    cmd2 = ("{ pxos workload 20 > /tmp/a.log & pxos workload 20 > /tmp/b.log & pxos selftest; st=$?; wait; "
            "tail -q -n 1 /tmp/a.log /tmp/b.log; [ $st = 0 ]; } && "
            "pxos workload 5 && pxos compile /root/attention.pxp && "
            "pxos run /root/seed.pxp --bind weights=float[2,3]:1,2,3,4,5,6 "
            "--bind inputs=float[3,2]:7,8,9,10,11,12 --bind outputs=float[2,2] && "
            "pxos run /root/matmul.pxp --kernel batched_matmul --bind a=float16[1,2,2]:1,2,3,4 "
            "--bind b=float16[1,2,2]:0.5,0,0,2 --bind c=float16[1,2,2] && pxos info")
    files = {f"/root/{n}": (EXAMPLES / n).read_bytes() for n in ("attention.pxp", "seed.pxp", "matmul.pxp")}
    with guest(guest_artefacts, hvd, 1, cmd1, tmp_path) as g1, \
         guest(guest_artefacts, hvd, 2, cmd2, tmp_path, files=files) as g2:
        # Both on the device at once: while they run, pxosctl sees both VMs.
        g1.wait_for(r"^check\s+1/", BOOT_AND_RUN_S)
        g2.wait_for(r"^check\s+1/", BOOT_AND_RUN_S)
        vms = hvd.vms()
        assert {vms[1]["memory_quota"], vms[2]["memory_quota"]} == {QUOTA}
        r1, r2 = g1.wait(BOOT_AND_RUN_S), g2.wait(BOOT_AND_RUN_S)

    assert_ok(r1, "guest 1")
    assert_ok(r2, "guest 2")
    assert len(SELFTEST_OK.findall(r1.console)) == 2     # before and after the refused alloc
    for r in (r1, r2):
        assert "workload: 5/5 passed" in r.console
    assert r2.console.count("workload: 20/20 passed") == 2, r2.console
    # The over-quota allocation: a clear error in the guest, nothing allocated.
    assert "OVER-QUOTA-RC 1" in r1.console
    assert re.search(r"pxos: alloc: Disk quota exceeded \[PXOS_S_QUOTA: .*quota", r1.console), r1.console
    assert "PXOS_S_QUOTA" not in r2.console
    # The example programs, computed on the host and printed in the guest.
    assert re.search(r"^/root/attention.pxp: ok: kernel \w+", r2.console, re.M), r2.console
    assert re.search(r"^outputs float32\[2,2\] = 58 64 139 154$", r2.console, re.M), r2.console
    assert re.search(r"^c float16\[1,2,2\] = 0.5 4 1.5 8$", r2.console, re.M), r2.console

    # Both guests powered off: their sessions closed, every byte back.
    for vm_id in (1, 2):
        assert hvd.wait_usage(vm_id, lambda used: used == 0)["memory_used"] == 0
    metrics = hvd.metrics()
    for vm_id in (1, 2):
        ok = launches_ok(metrics, vm_id)
        assert ok >= 20, f"vm {vm_id}: {ok} successful launches in /metrics"
    assert hvd.stop() == 0


def test_killed_guest_leaves_nothing_and_its_socket_takes_a_new_qemu(guest_artefacts, hvd_factory, tmp_path):
    hvd = hvd_factory({1: QUOTA, 2: QUOTA})
    held = 4 * MiB
    cmd1 = f"pxos alloc float[{held // 4}] --hold 600 & sleep 1; pxos workload 1000"
    cmd2 = "pxos workload 200 && pxos selftest"
    with guest(guest_artefacts, hvd, 1, cmd1, tmp_path) as g1:
        g1.wait_for(r"^workload: iteration 3/", BOOT_AND_RUN_S)
        assert hvd.vms()[1]["memory_used"] >= held
        # Guest 2 starts once guest 1 is busy, so that both are surely mid-run at the kill;
        # nothing slow (pxosctl) between seeing guest 2 busy and the kill.
        with guest(guest_artefacts, hvd, 2, cmd2, tmp_path) as g2:
            g2.wait_for(r"^workload: iteration 10/", BOOT_AND_RUN_S)
            g1.kill()                              # SIGKILL to QEMU, mid-run
            assert g2.console.find(r"^workload: 200/200") is None, "guest 2 finished before the kill"
            r2 = g2.wait(BOOT_AND_RUN_S)
        r1 = g1.result()

    assert r1.exit_status is None                   # it never got to finish
    assert_ok(r2, "guest 2")
    assert "workload: 200/200 passed" in r2.console
    # The killed VM's buffers and queue are gone on the host.
    vm1 = hvd.wait_usage(1, lambda used: used == 0)
    assert vm1["memory_used"] == 0, vm1
    # Its socket accepts a new QEMU, which works normally.
    with guest(guest_artefacts, hvd, 1, "pxos selftest", tmp_path) as again:
        r = again.wait(BOOT_AND_RUN_S)
    assert_ok(r, "guest 1 after the kill")
    assert hvd.proc.poll() is None, "pxos-hvd died"
    assert hvd.stop() == 0
