"""The initramfs: a newc archive the kernel can read (checked with an independent reader
here and with busybox's cpio where it is installed), and the /init it runs."""

from __future__ import annotations

import gzip
import shutil
import stat
import subprocess

import pytest

from qemu import initramfs
from qemu.initramfs import Entry, cpio_newc


def read_newc(data: bytes) -> list[tuple[str, int, bytes, tuple[int, int]]]:
    out, off = [], 0
    while True:
        assert data[off:off + 6] == b"070701"
        f = [int(data[off + 6 + 8 * i: off + 14 + 8 * i], 16) for i in range(13)]
        namesize, filesize = f[11], f[6]
        name = data[off + 110: off + 110 + namesize - 1].decode()
        off = (off + 110 + namesize + 3) & ~3
        body = data[off: off + filesize]
        off = (off + filesize + 3) & ~3
        if name == "TRAILER!!!":
            return out
        out.append((name, f[1], body, (f[9], f[10])))


def test_newc_round_trip():
    entries = [*initramfs.directories("bin"), Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
               initramfs.file_entry("bin/x", b"abc", executable=True), initramfs.file_entry("e", b"")]
    got = read_newc(cpio_newc(entries))
    assert got == [("bin", stat.S_IFDIR | 0o755, b"", (0, 0)), ("dev/console", stat.S_IFCHR | 0o600, b"", (5, 1)),
                   ("bin/x", stat.S_IFREG | 0o755, b"abc", (0, 0)), ("e", stat.S_IFREG | 0o644, b"", (0, 0))]


@pytest.mark.skipif(shutil.which("cpio") is None and shutil.which("busybox") is None, reason="no cpio tool")
def test_an_independent_cpio_lists_it(tmp_path):
    data = cpio_newc([*initramfs.directories("etc"), initramfs.file_entry("etc/hello", b"hi\n")])
    tool = ["cpio"] if shutil.which("cpio") else ["busybox", "cpio"]
    proc = subprocess.run([*tool, "-t"], input=data, capture_output=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().split() == ["etc", "etc/hello"]


def test_run_overlay_carries_the_command_and_files():
    data = gzip.decompress(initramfs.run_overlay("pxos selftest", {"/root/p/mm.pxp": b"GPU_KERNEL"}))
    files = {name: body for name, _, body, _ in read_newc(data)}
    assert files["etc/pxos/cmd"] == b"pxos selftest\n"
    assert files["root/p/mm.pxp"] == b"GPU_KERNEL"
    assert "root" in files and "root/p" in files


def test_init_loads_pxos_before_virtio_pci_and_never_drm():
    order = initramfs.MODULE_ORDER
    assert order.index("pxos_gpu") < order.index("virtio_pci")
    assert order.index("virtio_ring") < order.index("virtio") < order.index("pxos_gpu")
    assert "virtio_gpu" not in order and "drm" not in order


def test_stock_driver_is_a_choice_of_the_run_and_never_beside_the_module():
    stock = initramfs.STOCK_MODULE_ORDER
    assert "pxos_gpu" not in stock and stock[-1] == "virtio_gpu"
    assert stock.index("drm") < stock.index("drm_shmem_helper") < stock.index("virtio_gpu")
    script = initramfs.INIT_SCRIPT
    # The DRM modules are named only in the branch /etc/pxos/driver = stock takes.
    branch = script[script.index('= stock ]; then'):script.index("fi", script.index('= stock ]; then'))]
    assert " ".join(stock) in branch and script.count(" ".join(stock)) == 1
    files = {n: b for n, _, b, _ in read_newc(gzip.decompress(initramfs.run_overlay("true", driver="stock")))}
    assert files["etc/pxos/driver"] == b"stock\n"
    assert "etc/pxos/driver" not in {n for n, *_ in read_newc(gzip.decompress(initramfs.run_overlay("true")))}
    with pytest.raises(ValueError):
        initramfs.run_overlay("true", driver="both")


def test_base_archive_has_init_busybox_tool_modules(tmp_path):
    for name in ("busybox", "pxos", *initramfs.MODULE_ORDER):
        (tmp_path / name).write_bytes(name.encode())
    mods = {m: tmp_path / m for m in initramfs.MODULE_ORDER}
    path = tmp_path / "i.gz"
    initramfs.write_archive(path, initramfs.base_entries(tmp_path / "busybox", tmp_path / "pxos", mods))
    files = {name: body for name, _, body, _ in read_newc(gzip.decompress(path.read_bytes()))}
    assert files["init"].startswith(b"#!/bin/busybox sh")
    assert files["bin/pxos"] == b"pxos" and files["lib/modules/pxos_gpu.ko"] == b"pxos_gpu"
    assert "dev/console" in files


def test_host_share_switch_and_read_only_mount():
    data = gzip.decompress(initramfs.run_overlay("true", hostfs=True))
    assert "etc/pxos/hostfs" in {name for name, *_ in read_newc(data)}
    assert "etc/pxos/hostfs" not in {name for name, *_ in read_newc(gzip.decompress(initramfs.run_overlay("true")))}
    mount = next(line for line in initramfs.INIT_SCRIPT.splitlines() if "mount -t 9p" in line)
    assert "ro," in mount and "/host" in mount


def test_network_address_file_and_virtio_net_modules():
    data = gzip.decompress(initramfs.run_overlay("true", net="10.97.0.2/24"))
    files = {name: body for name, _, body, _ in read_newc(data)}
    assert files["etc/pxos/net"] == b"PXOS_NET_ADDR=10.97.0.2/24\n"
    assert "etc/pxos/net" not in {name for name, *_ in read_newc(gzip.decompress(initramfs.run_overlay("true")))}
    with pytest.raises(ValueError):  # /init sources the file: only an address goes in
        initramfs.run_overlay("true", net="10.0.0.1/24; reboot")
    script = initramfs.INIT_SCRIPT
    assert script.index("virtio_net") < script.index("ip addr add") < script.index("/etc/pxos/cmd")
    assert initramfs.NET_MODULES.index("failover") < initramfs.NET_MODULES.index("virtio_net")
