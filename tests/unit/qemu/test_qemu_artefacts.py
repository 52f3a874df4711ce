"""Resolving Debian's kernel packages (never a hard-coded ABI number) and pulling the ELF
kernel out of a bzImage. The apt side is a scripted runner at the far end."""

from __future__ import annotations

import lzma
import subprocess

import pytest

from qemu.artefacts import extract_vmlinux, parse_depends, resolve_kernel_packages
from qemu.errors import GuestImageError

IMAGE_DEPENDS = """linux-image-amd64
  Depends: linux-image-6.1.0-99-amd64
"""
HEADERS_DEPENDS = """linux-headers-6.1.0-99-amd64
  Depends: linux-headers-6.1.0-99-common
  Depends: linux-kbuild-6.1
  Depends: linux-compiler-gcc-12-x86
"""


def apt(outputs: dict[str, str]):
    def run(argv, **kw):
        pkg = argv[-1]
        if pkg in outputs:
            return subprocess.CompletedProcess(argv, 0, outputs[pkg], "")
        return subprocess.CompletedProcess(argv, 100, "", f"E: No packages found for {pkg}")
    return run


def test_parse_depends():
    assert parse_depends(HEADERS_DEPENDS) == ["linux-headers-6.1.0-99-common", "linux-kbuild-6.1",
                                              "linux-compiler-gcc-12-x86"]
    assert parse_depends(" |Depends: initramfs-tools\n  Depends: <linux-initramfs-tool>\n") == [
        "initramfs-tools", "linux-initramfs-tool"]


def test_release_comes_from_the_metapackage():
    pk = resolve_kernel_packages(apt({"linux-image-amd64": IMAGE_DEPENDS,
                                      "linux-headers-6.1.0-99-amd64": HEADERS_DEPENDS}))
    assert pk.release == "6.1.0-99-amd64"
    assert pk.all == ("linux-image-6.1.0-99-amd64", "linux-headers-6.1.0-99-amd64",
                      "linux-headers-6.1.0-99-common", "linux-kbuild-6.1", "busybox-static")


def test_missing_package_lists_say_what_to_do():
    with pytest.raises(GuestImageError, match="apt-get update"):
        resolve_kernel_packages(apt({}))
    with pytest.raises(GuestImageError, match="no dependency matching"):
        resolve_kernel_packages(apt({"linux-image-amd64": "linux-image-amd64\n"}))


def test_vmlinux_is_found_after_false_magic():
    elf = b"\x7fELF\x02\x01\x01" + bytes(range(256)) * 64
    payload = lzma.compress(elf, format=lzma.FORMAT_XZ)
    bz = b"MZ" + b"\0" * 500 + b"\xfd7zXZ\x00garbage" + b"\0" * 100 + payload + b"\0" * 64
    assert extract_vmlinux(bz) == elf


def test_no_kernel_payload_is_an_error():
    with pytest.raises(GuestImageError, match="no XZ payload"):
        extract_vmlinux(b"MZ" + b"\0" * 1000 + lzma.compress(b"not an elf", format=lzma.FORMAT_XZ))
