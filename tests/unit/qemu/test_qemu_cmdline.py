"""QEMU command lines: shared memfd RAM, the vhost-user-gpu device on the VM's socket, the
console, and the accelerator choice."""

from __future__ import annotations

from pathlib import Path

import pytest

from qemu.cmdline import VmSpec, choose_accel, kvm_usable, parse_mem, qemu_argv
from qemu.errors import LaunchError


def spec(**kw) -> VmSpec:
    base = dict(kernel=Path("/k/vmlinux"), initrd=Path("/k/initrd.gz"), socket=Path("/run/pxos/vm1.sock"))
    return VmSpec(**{**base, **kw})


def opt(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_guest_ram_is_a_shared_memfd_backing_the_machine():
    argv = qemu_argv(spec(mem_mib=512), qemu="qemu")
    assert "memory-backend-memfd,id=mem,size=512M,share=on" in opt(argv, "-object")
    assert any("memory-backend=mem" in m for m in opt(argv, "-machine"))
    assert opt(argv, "-m") == ["512M"]


def test_pxos_device_is_vhost_user_gpu_on_the_socket():
    argv = qemu_argv(spec(), qemu="qemu")
    assert "socket,id=pxos,path=/run/pxos/vm1.sock" in opt(argv, "-chardev")
    assert any(d.startswith("vhost-user-gpu-pci,chardev=pxos") for d in opt(argv, "-device"))


def test_without_socket_there_is_no_pxos_device():
    argv = qemu_argv(spec(socket=None), qemu="qemu")
    assert opt(argv, "-device") == []


def test_kernel_arguments_blacklist_drm_virtio_gpu():
    append = opt(qemu_argv(spec(append=("pxos.debug=1",)), qemu="qemu"), "-append")[0].split()
    assert "modprobe.blacklist=virtio_gpu" in append and "console=ttyS0" in append
    assert append[-1] == "pxos.debug=1"


def test_the_stock_driver_keeps_pxos_gpu_off_instead():
    append = opt(qemu_argv(spec(driver="stock"), qemu="qemu"), "-append")[0].split()
    assert "modprobe.blacklist=pxos_gpu" in append and "modprobe.blacklist=virtio_gpu" not in append


def test_console_stdio_for_tests_and_mux_for_people():
    batch = qemu_argv(spec(), qemu="qemu")
    assert opt(batch, "-serial") == ["chardev:con"] and opt(batch, "-monitor") == ["none"]
    inter = qemu_argv(spec(interactive=True), qemu="qemu")
    assert opt(inter, "-serial") == ["mon:stdio"]


def test_accelerator_in_the_command_line():
    assert opt(qemu_argv(spec(accel="kvm"), qemu="qemu"), "-cpu") == ["host"]
    assert opt(qemu_argv(spec(accel="tcg"), qemu="qemu"), "-accel") == ["tcg"]


@pytest.mark.parametrize("text,mib", [("256M", 256), ("1G", 1024), ("512", 512), ("2GiB", 2048)])
def test_parse_mem(text, mib):
    assert parse_mem(text) == mib


@pytest.mark.parametrize("text", ["", "abc", "16M", "64M", "1T", "-5M", "1000G"])
def test_parse_mem_refuses(text):
    with pytest.raises(LaunchError):
        parse_mem(text)


def test_accel_choice_follows_kvm_usability():
    why = kvm_usable()
    assert choose_accel("tcg") == "tcg"
    assert choose_accel("auto") == ("kvm" if why is None else "tcg")
    if why is not None:
        with pytest.raises(LaunchError, match="KVM is not usable"):
            choose_accel("kvm")
    with pytest.raises(LaunchError):
        choose_accel("hvf")


def test_host_share_is_read_only_9p():
    argv = qemu_argv(spec(host_share=Path("/srv/share")), qemu="qemu")
    assert opt(argv, "-fsdev") == ["local,id=hostfs,path=/srv/share,security_model=none,readonly=on"]
    assert "virtio-9p-pci,fsdev=hostfs,mount_tag=hostfs" in opt(argv, "-device")
    assert opt(qemu_argv(spec(), qemu="qemu"), "-fsdev") == []
