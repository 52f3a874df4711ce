"""The guest's initramfs: a newc cpio writer (no root needed for /dev/console) and the
busybox /init that loads the virtio modules and pxos_gpu.ko, runs one command and powers
off. Linux accepts several concatenated compressed archives, so a run adds its command and
files as a small second archive after the cached base one (Documentation/driver-api/
early-userspace/buffer-format.rst)."""

from __future__ import annotations

import gzip
import ipaddress
import stat
from dataclasses import dataclass
from pathlib import Path

#: Modules in load order (qemu-facts.md): pxos_gpu before virtio_pci, so the PCI probe
#: finds our driver registered; the DRM virtio-gpu driver is never loaded.
MODULE_ORDER = ("virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev",
                "pxos_gpu", "virtio_pci")

#: virtio-9p and what it needs, loaded only when the run shares a host directory.
HOSTFS_MODULES = ("netfs", "fscache", "9pnet", "9pnet_virtio", "9p")

#: virtio-net and what it needs, loaded only when the run has a network link (pxos-vm --net).
NET_MODULES = ("failover", "net_failover", "virtio_net")

#: The stock driver instead of pxos_gpu (the DRM transport, pxos-vm --driver stock):
#: Debian's unmodified virtio-gpu DRM driver and its dependencies, in load order.
STOCK_MODULE_ORDER = ("virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci",
                      "drm", "drm_kms_helper", "drm_shmem_helper", "virtio_dma_buf", "virtio_gpu")
DRM_MODULES = STOCK_MODULE_ORDER[5:]
DRIVERS = ("module", "stock")
RENDER_NODE = "/dev/dri/renderD128"

#: Console markers the host side parses (qemu/console.py).
MARK_INIT = "PXOS-INIT"
MARK_DEVICE = "PXOS-DEVICE"
MARK_NO_DEVICE = "PXOS-NO-DEVICE"
MARK_READY = "PXOS-READY"
MARK_EXIT = "PXOS-EXIT"
MARK_HOSTFS = "PXOS-HOSTFS"
MARK_NET = "PXOS-NET"
MARK_NO_NET = "PXOS-NO-NET"

INIT_SCRIPT = f"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "{MARK_INIT} $(uname -r)"
# Which driver binds the virtio-gpu device: pxos_gpu.ko (/dev/pxos0), or with
# /etc/pxos/driver saying "stock", the kernel's own virtio_gpu (the render node).
modules="{' '.join(MODULE_ORDER)}"
node=/dev/pxos0
if [ "$(cat /etc/pxos/driver 2>/dev/null)" = stock ]; then
    modules="{' '.join(STOCK_MODULE_ORDER)}"
    node={RENDER_NODE}
fi
for m in $modules; do
    insmod /lib/modules/$m.ko || echo "PXOS-INSMOD-FAILED $m"
done
i=0
while [ ! -e $node ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
if [ -e $node ]; then
    echo "{MARK_DEVICE} $node"
else
    echo "{MARK_NO_DEVICE}"
    dmesg | grep -i -E "pxos|virtio|drm" | tail -n 5
fi
if [ -f /etc/pxos/hostfs ]; then
    # A host directory shared read-only over virtio-9p, mounted at /host with this
    # guest's /dev, /proc and /sys inside, so that `chroot /host` runs host programs here.
    for m in {' '.join(HOSTFS_MODULES)}; do
        insmod /lib/modules/$m.ko || echo "PXOS-INSMOD-FAILED $m"
    done
    mkdir -p /host
    if mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144 hostfs /host; then
        # Scratch space for host programs: a tmpfs at /dev/shm (seen as /host/dev/shm and
        # exported as TMPDIR). The host's /tmp stays visible: a checkout may live there.
        mkdir -p /dev/shm && mount -t tmpfs tmpfs /dev/shm 2>/dev/null
        for d in dev proc sys; do mount --bind /$d /host/$d 2>/dev/null; done
        export TMPDIR=/dev/shm
        echo "{MARK_HOSTFS} /host"
    fi
fi
if [ -f /etc/pxos/net ]; then
    # A virtio-net link (qemu/network.py): eth0 gets the address the host assigned.
    for m in {' '.join(NET_MODULES)}; do
        insmod /lib/modules/$m.ko || echo "PXOS-INSMOD-FAILED $m"
    done
    . /etc/pxos/net
    ip link set lo up
    i=0
    while ! ip link show eth0 >/dev/null 2>&1 && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    if ip addr add "$PXOS_NET_ADDR" dev eth0 && ip link set eth0 up; then
        echo "{MARK_NET} eth0 $PXOS_NET_ADDR"
    else
        echo "{MARK_NO_NET}"
    fi
fi
cd /root
if [ -f /etc/pxos/cmd ]; then
    echo "{MARK_READY}"
    sh /etc/pxos/cmd
    rc=$?
    echo
    echo "{MARK_EXIT} $rc"
    poweroff -f
fi
echo "{MARK_READY}"
exec setsid cttyhack sh
"""


@dataclass(frozen=True)
class Entry:
    path: str           # inside the archive, no leading "/"
    mode: int           # full st_mode, file type included
    data: bytes = b""   # file contents or symlink target
    rdev: tuple[int, int] = (0, 0)


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def cpio_newc(entries: list[Entry]) -> bytes:
    """The entries as an uncompressed newc archive, trailer included."""
    out = bytearray()
    for ino, e in enumerate([*entries, Entry("TRAILER!!!", 0)], start=1):
        name = e.path.encode() + b"\0"
        nlink = 2 if stat.S_ISDIR(e.mode) else 1
        fields = (ino, e.mode, 0, 0, nlink, 0, len(e.data), 0, 0, e.rdev[0], e.rdev[1], len(name), 0)
        header = b"070701" + b"".join(b"%08x" % f for f in fields)
        out += header + name + _pad4(len(header) + len(name))
        out += e.data + _pad4(len(e.data))
    return bytes(out)


def directories(*paths: str) -> list[Entry]:
    return [Entry(p, stat.S_IFDIR | 0o755) for p in paths]


def file_entry(path: str, data: bytes, executable: bool = False) -> Entry:
    return Entry(path, stat.S_IFREG | (0o755 if executable else 0o644), data)


def base_entries(busybox: Path, tool: Path, modules: dict[str, Path]) -> list[Entry]:
    """Everything a guest needs: busybox, the init script, the modules (MODULE_ORDER, and
    HOSTFS_MODULES and NET_MODULES where given) and `pxos`."""
    entries = directories("bin", "dev", "proc", "sys", "root", "tmp", "etc", "etc/pxos",
                          "lib", "lib/modules")
    entries.append(Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)))
    entries.append(file_entry("bin/busybox", busybox.read_bytes(), executable=True))
    entries.append(file_entry("bin/pxos", tool.read_bytes(), executable=True))
    entries.append(file_entry("init", INIT_SCRIPT.encode(), executable=True))
    for name in (*MODULE_ORDER, *(m for m in (*HOSTFS_MODULES, *NET_MODULES, *DRM_MODULES) if m in modules)):
        entries.append(file_entry(f"lib/modules/{name}.ko", modules[name].read_bytes()))
    return entries


def write_archive(path: Path, entries: list[Entry]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(gzip.compress(cpio_newc(entries), compresslevel=6, mtime=0))
    tmp.replace(path)


def run_overlay(command: str | None, files: dict[str, bytes] | None = None, hostfs: bool = False,
                net: str | None = None, driver: str = "module") -> bytes:
    """The small second archive of one run: /etc/pxos/cmd, the host-share switch, the
    network address (``net``, an IPv4 interface such as 10.97.0.2/24), the guest driver
    (``module``: pxos_gpu.ko; ``stock``: the kernel's virtio_gpu) and any extra files."""
    if driver not in DRIVERS:
        raise ValueError(f"driver {driver!r}: one of {', '.join(DRIVERS)}")
    entries: list[Entry] = []
    if driver != "module":
        entries.append(file_entry("etc/pxos/driver", driver.encode() + b"\n"))
    if command is not None:
        entries.append(file_entry("etc/pxos/cmd", command.encode() + b"\n"))
    if hostfs:
        entries.append(file_entry("etc/pxos/hostfs", b"hostfs\n"))
    if net is not None:
        # /init sources this file: only a validated address goes in.
        addr = ipaddress.IPv4Interface(net)
        entries.append(file_entry("etc/pxos/net", f"PXOS_NET_ADDR={addr.with_prefixlen}\n".encode()))
    for guest_path, data in sorted((files or {}).items()):
        path = guest_path.lstrip("/")
        parts = path.split("/")[:-1]
        entries += directories(*("/".join(parts[: i + 1]) for i in range(len(parts))))
        entries.append(file_entry(path, data))
    return gzip.compress(cpio_newc(entries), compresslevel=1, mtime=0)


def write_run_initrd(base: Path, out: Path, command: str | None,
                     files: dict[str, bytes] | None = None, hostfs: bool = False, net: str | None = None,
                     driver: str = "module") -> Path:
    out.write_bytes(base.read_bytes() + run_overlay(command, files, hostfs, net, driver))
    return out
