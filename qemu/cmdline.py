"""QEMU command lines for pxOS guests: memfd-backed shared guest RAM (the backend maps it),
a vhost-user-gpu-pci device on the VM's socket, the kernel and initramfs, the serial
console, and KVM where it is usable (TCG otherwise)."""

from __future__ import annotations

import fcntl
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from .errors import LaunchError

QEMU = "qemu-system-x86_64"
#: Guest RAM: at least what Debian's kernel needs to unpack the initramfs and run (64 MiB
#: hangs at boot; 128 MiB leaves ~50 MiB free), at most what a host can lend one guest.
MIN_MEM_MIB, MAX_MEM_MIB = 128, 65536

_KVM_GET_API_VERSION = 0xAE00
_KVM_CREATE_VM = 0xAE01
_KVM_API_VERSION = 12

#: Kernel arguments: the serial console, exit (not reboot) on panic.
BASE_APPEND = ("console=ttyS0", "panic=-1", "quiet", "loglevel=4", "rdinit=/init")
#: The driver that must not bind device 16, by the one chosen (docs/operations.md, "Choosing
#: the guest driver"): with pxos_gpu.ko the DRM virtio_gpu is kept off (a guest image may
#: autoload it), with the stock driver pxos_gpu is.
BLACKLIST = {"module": "modprobe.blacklist=virtio_gpu", "stock": "modprobe.blacklist=pxos_gpu"}


def parse_mem(text: str) -> int:
    """'256M', '1G', '512' (MiB) → MiB, within bounds."""
    m = re.fullmatch(r"\s*(\d+)\s*([MmGg]?)(?:i?[Bb])?\s*", text)
    if not m:
        raise LaunchError(f"--mem {text!r}: want a size like 256M or 1G")
    mib = int(m.group(1)) * (1024 if m.group(2).lower() == "g" else 1)
    if not MIN_MEM_MIB <= mib <= MAX_MEM_MIB:
        raise LaunchError(f"--mem {text!r}: must be between {MIN_MEM_MIB}M and {MAX_MEM_MIB}M")
    return mib


def kvm_usable() -> str | None:
    """None when KVM can run guests here, else why not. /dev/kvm may exist without
    hardware virtualisation behind it (qemu-facts.md), so look at the CPU too and ask
    the kernel for a VM."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        flags = []
    if "vmx" not in flags and "svm" not in flags:
        return "the CPU shows no vmx/svm"
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        return f"/dev/kvm: {e.strerror}"
    try:
        if fcntl.ioctl(fd, _KVM_GET_API_VERSION) != _KVM_API_VERSION:
            return "unexpected KVM API version"
        vm = fcntl.ioctl(fd, _KVM_CREATE_VM, 0)
        os.close(vm)
    except OSError as e:
        return f"KVM_CREATE_VM: {e.strerror}"
    finally:
        os.close(fd)
    return None


def choose_accel(requested: str) -> str:
    if requested not in ("auto", "kvm", "tcg"):
        raise LaunchError(f"--accel {requested!r}: want kvm, tcg or auto")
    if requested == "auto":
        return "kvm" if kvm_usable() is None else "tcg"
    if requested == "kvm" and (why := kvm_usable()):
        raise LaunchError(f"--accel kvm: KVM is not usable here ({why}); use --accel tcg")
    return requested


@dataclass(frozen=True)
class VmSpec:
    kernel: Path
    initrd: Path
    socket: Path | None          # vhost-user socket of pxos-hvd; None: no pxOS device
    mem_mib: int = 256
    accel: str = "tcg"
    cpus: int = 1
    name: str = "pxos-guest"
    append: tuple[str, ...] = ()
    interactive: bool = False    # the console on the terminal (with the QEMU monitor mux)
    host_share: Path | None = None  # a host directory the guest mounts read-only at /host
    tap: str | None = None       # a tap (in the namespace QEMU runs in) for a virtio-net link
    mac: str | None = None
    driver: str = "module"       # module: pxos_gpu.ko; stock: the kernel's virtio_gpu (DRM transport)


def qemu_argv(spec: VmSpec, qemu: str | None = None) -> list[str]:
    binary = qemu or shutil.which(QEMU) or QEMU
    mem = f"{spec.mem_mib}M"
    argv = [
        binary, "-name", spec.name, "-nodefaults", "-no-user-config", "-no-reboot",
        "-machine", "pc,memory-backend=mem", "-accel", spec.accel,
        "-cpu", "host" if spec.accel == "kvm" else "max",
        "-smp", str(spec.cpus), "-m", mem,
        # The backend maps guest RAM: it must be a shared memfd (share=off fails silently).
        "-object", f"memory-backend-memfd,id=mem,size={mem},share=on",
        "-display", "none", "-vga", "none",
        "-kernel", str(spec.kernel), "-initrd", str(spec.initrd),
        "-append", " ".join((*BASE_APPEND, BLACKLIST[spec.driver], *spec.append)),
    ]
    if spec.socket is not None:
        argv += ["-chardev", f"socket,id=pxos,path={spec.socket}",
                 "-device", "vhost-user-gpu-pci,chardev=pxos"]
    if spec.host_share is not None:
        argv += ["-fsdev", f"local,id=hostfs,path={spec.host_share},security_model=none,readonly=on",
                 "-device", "virtio-9p-pci,fsdev=hostfs,mount_tag=hostfs"]
    if spec.tap is not None:
        # The tap exists already (qemu/network.py made it); QEMU only attaches. No option ROM:
        # the guest boots its kernel directly, and not every host has the iPXE ROMs.
        argv += ["-netdev", f"tap,id=net0,ifname={spec.tap},script=no,downscript=no",
                 "-device", f"virtio-net-pci,netdev=net0,romfile={',mac=' + spec.mac if spec.mac else ''}"]
    if spec.interactive:
        argv += ["-serial", "mon:stdio"]
    else:
        argv += ["-chardev", "stdio,id=con,signal=off", "-serial", "chardev:con", "-monitor", "none"]
    return argv
