"""Real QEMU (10, TCG) with ``vhost-user-gpu-pci`` against the daemon's vhost-user
transport: the device realizes and the start-up sequence completes; then Debian's own 6.1
kernel boots with its virtio-gpu DRM driver bound to our headless device, every command
that driver sends is answered, and the daemon stays up and serves the next QEMU.

Guest pieces (Debian's kernel image and busybox-static, fetched with ``apt-get download``
through ``qemu.artefacts``' package resolution) are unpacked into a cache under
``~/.cache/pxos`` (``$PXOS_CACHE``) once; only the DRM modules and their dependencies are
taken from the image package.
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import subprocess
import time
from pathlib import Path

import pytest

from hypervisor import Hypervisor
from qemu import artefacts, initramfs
from tests.support.vhost_frontend import VhostUserFrontend
from virtio_backend.gpu import guest as g
from virtio_backend.gpu.transport import VhostUserTransport
from virtio_backend.vhost_user import VhostUserProtocolFeature as PF

pytestmark = pytest.mark.qemu

QEMU_BASE = ["qemu-system-x86_64", "-accel", "tcg", "-machine", "q35", "-m", "256",
             "-object", "memory-backend-memfd,id=mem,size=256M,share=on", "-machine", "memory-backend=mem",
             "-nographic", "-nodefaults", "-no-reboot"]
DRM_ROOTS = ("virtio_pci", "virtio_gpu")  # the modules wanted; their dependencies follow
INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
echo "DRM-INIT $(uname -r)"
for m in $(cat /etc/modules); do insmod /lib/modules/$m.ko || echo "DRM-INSMOD-FAILED $m"; done
i=0; while [ ! -e /dev/dri/card0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
[ -e /dev/dri/card0 ] && echo "DRM-CARD present" || echo "DRM-CARD absent"
for s in /sys/class/drm/card0-*/status; do echo "DRM-CONNECTOR $s $(cat $s)"; done
dmesg | grep -i -E "virtio|drm|\\[drm" | sed 's/^/DMESG /'
echo DRM-DONE
poweroff -f
"""


# ---- guest artefacts ------------------------------------------------------------------------


def _modinfo_depends(ko: Path) -> list[str]:
    m = re.search(rb"depends=([A-Za-z0-9_,-]*)\x00", ko.read_bytes())
    return [d.replace("-", "_") for d in m.group(1).decode().split(",") if d] if m else []


def _run(argv: list[str], **kw) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, **kw)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr[-2000:]}")


def drm_guest() -> tuple[Path, Path]:
    """(vmlinux, initramfs) of Debian's kernel with its virtio-gpu DRM driver, cached."""
    pk = artefacts.resolve_kernel_packages()
    root = artefacts.default_cache_dir().parent / "drm-guest" / pk.release
    root.mkdir(parents=True, exist_ok=True)
    vmlinux, initrd = root / "vmlinux", root / "initramfs.cpio.gz"
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if vmlinux.exists() and initrd.exists():
            return vmlinux, initrd
        debs = root / "debs"
        debs.mkdir(exist_ok=True)
        shared = artefacts.default_cache_dir() / "debs"  # the guest-driver cache, if filled
        for pkg in (pk.image, "busybox-static"):
            if not list(debs.glob(f"{pkg}_*.deb")):
                found = sorted(shared.glob(f"{pkg}_*.deb"))
                if found:
                    os.link(found[-1], debs / found[-1].name)
                else:
                    _run(["apt-get", "download", pkg], cwd=debs)
        image, busybox_deb = (sorted(debs.glob(f"{p}_*.deb"))[-1] for p in (pk.image, "busybox-static"))
        tree = root / "tree"
        _run(["sh", "-c", 'mkdir -p "$2" && dpkg-deb --fsys-tarfile "$1" | tar -x -C "$2" --wildcards '
              '"./boot/vmlinuz-*" "./lib/modules/*/kernel/drivers/*"', "sh", str(image), str(tree)])
        _run(["dpkg", "-x", str(busybox_deb), str(tree)])
        kos = {p.name[:-3].replace("-", "_"): p for p in tree.glob("lib/modules/*/kernel/**/*.ko")}
        order: list[str] = []

        def visit(name: str) -> None:
            if name not in order:
                for dep in _modinfo_depends(kos[name]):
                    visit(dep)
                order.append(name)

        for name in DRM_ROOTS:
            visit(name)
        entries = initramfs.directories("bin", "dev", "proc", "sys", "etc", "lib", "lib/modules")
        entries.append(initramfs.Entry("dev/console", 0o020600, rdev=(5, 1)))
        entries.append(initramfs.file_entry("bin/busybox", (tree / "bin/busybox").read_bytes(), executable=True))
        entries.append(initramfs.file_entry("init", INIT.encode(), executable=True))
        entries.append(initramfs.file_entry("etc/modules", " ".join(order).encode()))
        entries += [initramfs.file_entry(f"lib/modules/{m}.ko", kos[m].read_bytes()) for m in order]
        initramfs.write_archive(initrd, entries)
        [bzimage] = tree.glob("boot/vmlinuz-*")
        vmlinux.write_bytes(artefacts.extract_vmlinux(bzimage.read_bytes()))
    return vmlinux, initrd


# ---- the daemon side ------------------------------------------------------------------------


@pytest.fixture
def daemon(tmp_path):
    hv = Hypervisor(backend="numpy", device_pool_bytes=64 << 20).start()
    hv.register_vm(1, 0, 100, memory_quota_bytes=16 << 20)
    transport = VhostUserTransport(hv)
    sock = tmp_path / "vm1.sock"
    transport.attach(1, str(sock))
    yield hv, transport, sock
    transport.close()
    hv.stop()


def wait_for(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


def start_qemu(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def read_until(proc: subprocess.Popen, marker: str, timeout: float) -> str:
    """QEMU's console output until ``marker`` appears, QEMU exits, or time runs out."""
    out = b""
    deadline = time.monotonic() + timeout
    while marker.encode() not in out and time.monotonic() < deadline:
        r, _, _ = select.select([proc.stdout], [], [], 0.2)
        if r:
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            out += chunk
    return out.decode(errors="replace")


def stop(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.terminate()
    rest, _ = proc.communicate(timeout=20)
    return rest.decode(errors="replace")


def assert_serves_next_qemu(transport, sock: Path) -> None:
    with VhostUserFrontend(str(sock)) as fe:
        fe.boot()
        fe.submit(0, out=[g.get_info()], in_=[g.response_size(0x7000)])
        fe.kick(0, force=True)
        [used] = fe.wait_used(0)
        assert g.parse_response(0x7000, used.data)["vm_id"] == 1


# ---- tests ----------------------------------------------------------------------------------


def test_device_realizes_and_the_startup_sequence_completes(daemon):
    hv, transport, sock = daemon
    argv = [*QEMU_BASE, "-S", "-chardev", f"socket,id=c,path={sock}", "-device", "vhost-user-gpu-pci,chardev=c"]
    proc = start_qemu(argv)
    try:
        wait_for(lambda: transport.status()[1].get("protocol_features", 0) & PF.CONFIG, 30,
                 "QEMU never negotiated the protocol features")
        st = transport.status()[1]
        assert st["connected"] and st["protocol_features"] & PF.REPLY_ACK
        time.sleep(1.0)
        assert proc.poll() is None, "QEMU exited: the device did not realize"
    finally:
        out = stop(proc)
    assert "EDID requested but the backend" not in out
    wait_for(lambda: not transport.status()[1]["connected"], 10, "disconnect not noticed")
    assert transport.status()[1]["last_close_reason"] == "front-end closed the connection"
    assert_serves_next_qemu(transport, sock)


@pytest.mark.slow
def test_debian_kernel_boots_with_its_virtio_gpu_drm_driver_on_our_device(daemon):
    hv, transport, sock = daemon
    vmlinux, initrd = drm_guest()
    argv = [*QEMU_BASE, "-cpu", "max", "-serial", "stdio", "-kernel", str(vmlinux), "-initrd", str(initrd),
            "-append", "console=ttyS0 panic=-1 loglevel=7 rdinit=/init",
            "-chardev", f"socket,id=c,path={sock}", "-device", "vhost-user-gpu-pci,chardev=c"]
    proc = start_qemu(argv)
    out = read_until(proc, "DRM-DONE", timeout=180)
    out += stop(proc)
    assert "DRM-INIT" in out, out[-3000:]
    assert "DRM-INSMOD-FAILED" not in out, out[-3000:]
    assert "DRM-CARD present" in out, out[-3000:]
    assert re.search(r"Initialized virtio_gpu", out), out[-3000:]
    assert re.search(r"DRM-CONNECTOR \S+ disconnected", out), out[-3000:]  # headless: nothing attached
    dev = transport.status()[1]["device"]
    print("device counters after the boot:", dev)  # shown with pytest -s
    assert dev["config_reads"] >= 1  # GET_CONFIG answered while the guest waited
    assert dev["standard_by_command"].get("VIRTIO_GPU_CMD_GET_DISPLAY_INFO", 0) >= 1
    assert dev["standard_by_command"].get("VIRTIO_GPU_CMD_GET_EDID", 0) >= 1
    assert dev["internal_errors_total"] == 0 and dev["no_header_total"] == 0
    wait_for(lambda: not transport.status()[1]["connected"], 10, "disconnect not noticed")
    assert hv.vm_info(1).memory_used == 0
    assert_serves_next_qemu(transport, sock)  # the daemon stayed up
