"""pxos_gpu.ko inside a real guest: a non-pxOS device is left alone, remove with requests
in flight is safe, a killed process's session is closed on the host, and load/use/unload
cycles leak nothing (kmemleak is not in Debian's kernel: /proc/slabinfo and the module
refcount are the witnesses)."""

from __future__ import annotations

import re

import pytest

from qemu.guest import Guest

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

MiB = 1 << 20
CYCLES = 8
#: Slab growth allowed over all cycles: the shell and busybox allocate and free as they
#: run; one leaked request per cycle would be ~2 KiB x 100s of requests, a leaked device ~2 KiB.
SLAB_NOISE_BYTES = 24 * 1024

LIFECYCLE = f"""
set -u
dev=$(basename $(readlink /sys/bus/virtio/drivers/pxos_gpu/virtio*))
echo "BOUND $dev"
pxos workload 400 > /tmp/bg.log 2>&1 &
bg=$!
sleep 1
echo $dev > /sys/bus/virtio/drivers/pxos_gpu/unbind
wait $bg
echo "BG-EXIT $?"
tail -n 1 /tmp/bg.log
[ -e /dev/pxos0 ] && echo "DEVICE-STILL-THERE" || echo "DEVICE-GONE"
echo $dev > /sys/bus/virtio/drivers/pxos_gpu/bind
pxos selftest | tail -n 1
pxos alloc float[262144] --hold 600 &
hold=$!
pxos workload 400 > /dev/null 2>&1 &
work=$!
sleep 1
kill -9 $hold $work
wait $hold $work 2>/dev/null
sleep 0.5
pxos info --json
echo "REFCNT $(cat /sys/module/pxos_gpu/refcnt)"
slab() {{ awk '/^kmalloc-/ {{ s += $2 * $4 }} END {{ print s }}' /proc/slabinfo; }}
rmmod pxos_gpu && insmod /lib/modules/pxos_gpu.ko && pxos selftest > /dev/null
before=$(slab)
i=0
while [ $i -lt {CYCLES} ]; do
    rmmod pxos_gpu || echo "CYCLE-FAIL rmmod $i"
    insmod /lib/modules/pxos_gpu.ko || echo "CYCLE-FAIL insmod $i"
    pxos selftest > /tmp/st.log || {{ echo "CYCLE-FAIL selftest $i"; tail -n 3 /tmp/st.log; }}
    i=$((i + 1))
done
after=$(slab)
echo "SLAB-DELTA $((after - before))"
echo "REFCNT $(cat /sys/module/pxos_gpu/refcnt)"
rmmod pxos_gpu && echo "UNLOADED"
dmesg | grep -i -E "pxos|bug|warn|oops" | grep -v -E "taints|verification" | tail -n 20
"""


def test_remove_kill_and_reload_cycles(guest_artefacts, hvd_factory, tmp_path):
    hvd = hvd_factory({1: 64 * MiB})
    with Guest(guest_artefacts, hvd.sockets[1], LIFECYCLE, name="lifecycle",
               log_path=tmp_path / "lifecycle.log") as g:
        r = g.wait(600)
    out = r.console
    assert r.exit_status == 0, out[-5000:]
    assert re.search(r"^BOUND virtio\d+$", out, re.M), out
    # Unbind with a workload in flight: the process gets an error, the device node goes.
    bg = re.search(r"^BG-EXIT (\d+)$", out, re.M)
    assert bg and bg.group(1) != "0", out
    assert "DEVICE-GONE" in out
    # Rebound, the device works again.
    assert re.search(r"^selftest: (\d+)/\1 passed$", out, re.M), out
    # A process killed with a buffer held and launches in flight: the host freed it all.
    info = re.search(r'^\{"abi".*"memory_used": (\d+)', out, re.M)
    assert info and info.group(1) == "0", out
    # Load/use/unload cycles: each one works, nothing grows, nothing holds the module.
    assert "CYCLE-FAIL" not in out, out
    delta = int(re.search(r"^SLAB-DELTA (-?\d+)$", out, re.M).group(1))
    assert delta < SLAB_NOISE_BYTES, f"kmalloc slabs grew by {delta} bytes over {CYCLES} cycles"
    assert re.findall(r"^REFCNT (\d+)$", out, re.M) == ["0", "0"]
    assert "UNLOADED" in out
    assert not re.search(r"BUG|Oops|WARNING|general protection", out), out[-5000:]
    assert hvd.proc.poll() is None, "pxos-hvd died"


def test_non_pxos_device_is_left_alone(guest_artefacts, tmp_path):
    """No pxOS backend: the module loads, finds nothing, and the guest runs on."""
    with Guest(guest_artefacts, None, "pxos info; echo INFO-RC $?", name="nodev",
               log_path=tmp_path / "nodev.log") as g:
        r = g.wait(180)
    assert r.exit_status == 0, r.console
    assert "PXOS-NO-DEVICE" in r.console
    assert "pxos: /dev/pxos0: No such file or directory" in r.console
    assert "INFO-RC 1" in r.console


def test_many_processes_overfill_the_ring(guest_artefacts, hvd_factory, tmp_path):
    """Four processes, each with 48 launches in flight: more than the 64-entry control
    queue holds, so submitters wait for ring space; every result is still checked."""
    hvd = hvd_factory({1: 64 * MiB})
    cmd = ("for i in 1 2 3 4; do pxos selftest > /tmp/s$i.log 2>&1 & done; wait; "
           "cat /tmp/s*.log; pxos stats")
    with Guest(guest_artefacts, hvd.sockets[1], cmd, name="ring", log_path=tmp_path / "ring.log") as g:
        r = g.wait(300)
    assert r.exit_status == 0, r.console[-4000:]
    assert len(re.findall(r"^selftest: (\d+)/\1 passed$", r.console, re.M)) == 4, r.console[-6000:]
    assert len(re.findall(r"async_poll_reap\s+ok: 48 launches in flight", r.console)) == 4
    assert re.search(r"requests \d+ \(0 failed\)", r.console), r.console[-1000:]


SLOW = b"""GPU_KERNEL slow
GPU_PARAM a float[384, 384]
GPU_PARAM c float[384, 384]
GPU_THREAD_CODE:
    COPY a -> x
    REPEAT 60:
        PARALLEL_MATMUL x a -> y
        TANH y -> x
    END_REPEAT
    COPY x -> c
GPU_END
"""


def test_launch_timeout_leaves_the_launch_to_finish_safely(guest_artefacts, hvd_factory, tmp_path):
    """A launch that outlives its ioctl's timeout: the caller gets ETIMEDOUT at once, the
    request stays with the device until it answers, and closing the session frees it all."""
    hvd = hvd_factory({1: 64 * MiB})
    cmd = ("pxos run /root/slow.pxp --timeout 1 --bind a=float[384,384]:random --bind c=float[384,384]; "
           "echo \"TIMEOUT-RC $?\"; pxos info --json; pxos selftest | tail -n 1")
    with Guest(guest_artefacts, hvd.sockets[1], cmd, name="timeout", files={"/root/slow.pxp": SLOW},
               log_path=tmp_path / "timeout.log") as g:
        r = g.wait(300)
    assert r.exit_status == 0, r.console[-4000:]
    assert re.search(r"pxos: slow: Connection timed out \(timed out; the launch may still run\)", r.console), \
        r.console[-3000:]
    assert "TIMEOUT-RC 1" in r.console
    assert re.search(r'"memory_used": 0,', r.console), r.console[-3000:]
    assert re.search(r"^selftest: (\d+)/\1 passed$", r.console, re.M)
    assert not re.search(r"BUG|Oops|WARNING", r.console)
