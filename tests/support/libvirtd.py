"""A real libvirtd for a test, started directly as root (no systemd) in a private mount
namespace: its run, state, log, cache and config directories are bind-mounted from a
temporary directory, so the host's libvirt (if any) is neither seen nor touched, and
nothing is left behind. ``/etc/qemu`` is bound too: the vhost-user backend descriptions
libvirt reads come from the test. Clients reach it with
``qemu:///system?socket=<tmp>/run/libvirt-sock``.

Found in December 2026 with Debian's libvirt 11.3 (bookworm-backports) and QEMU 10.0:
- ``stdio_handler = "file"``: no virtlogd needed; ``security_driver = "none"``: no
  AppArmor/SELinux in containers; ``user = "root"``: the shim and the guest images may live
  under a 0700 home (the default user, libvirt-qemu, is the operator's case:
  docs/operations.md).
- libvirt starts the vhost-user backend with its own environment, so
  ``PXOS_HANDOFF_SOCKET`` given to libvirtd reaches pxos-vhost-gpu.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from uuid import NAMESPACE_DNS, uuid5

#: The host directories libvirtd (privileged) uses; each gets a private, empty copy.
PRIVATE_DIRS = {"run": "/run/libvirt", "lib": "/var/lib/libvirt", "log": "/var/log/libvirt",
                "cache": "/var/cache/libvirt", "etc": "/etc/libvirt", "qemuetc": "/etc/qemu"}
QEMU_CONF = """
stdio_handler = "file"
security_driver = "none"
user = "root"
group = "root"
"""
START_TIMEOUT_S = 60.0


class LibvirtdError(Exception):
    pass


def missing() -> str | None:
    """Why a private libvirtd cannot run here, or None."""
    if os.geteuid() != 0:
        return "libvirtd is started as root (the tests run as root in CI)"
    for tool in ("libvirtd", "virsh", "unshare", "nsenter", "mount"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/setup.sh installs libvirt from bookworm-backports)"
    if not Path("/etc/libvirt/qemu.conf").is_file():
        return "/etc/libvirt/qemu.conf is missing (libvirt-daemon-driver-qemu is not installed)"
    return None


class Libvirtd:
    def __init__(self, root: Path, env: dict[str, str] | None = None):
        self.root = root
        self.env = env or {}
        self.proc: subprocess.Popen | None = None
        self.uri = f"qemu:///system?socket={root / 'run' / 'libvirt-sock'}"

    def start(self) -> Libvirtd:
        for name in PRIVATE_DIRS:
            (self.root / name).mkdir(parents=True, exist_ok=True)
        shutil.copytree("/etc/libvirt", self.root / "etc", dirs_exist_ok=True)
        with open(self.root / "etc" / "qemu.conf", "a") as f:
            f.write(QEMU_CONF)
        (self.root / "qemuetc" / "vhost-user").mkdir(exist_ok=True)
        for target in PRIVATE_DIRS.values():
            os.makedirs(target, exist_ok=True)  # a mount point (empty where libvirt never ran)
        mounts = "".join(f'mount --bind "{self.root / name}" "{target}" && '
                         for name, target in PRIVATE_DIRS.items())
        script = f'{mounts}exec libvirtd --pid-file "{self.root / "run" / "libvirtd.pid"}"'
        self.log = self.root / "libvirtd.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                                         stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env={**os.environ, **self.env}, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise LibvirtdError(f"libvirtd exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            if (self.root / "run" / "libvirt-sock").exists() and self.virsh("version", check=False).returncode == 0:
                return self
            if time.monotonic() > deadline:
                raise LibvirtdError(f"libvirtd not up in {START_TIMEOUT_S:.0f} s:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)

    @property
    def descriptions(self) -> Path:
        """What libvirt sees as /etc/qemu/vhost-user."""
        return self.root / "qemuetc" / "vhost-user"

    @property
    def state_dir(self) -> Path:
        """What libvirt sees as /run/libvirt/qemu (pidfiles, status files)."""
        return self.root / "run" / "qemu"

    def virsh(self, *args: str, check: bool = True, timeout: float = 120.0) -> subprocess.CompletedProcess:
        r = subprocess.run(["virsh", "-c", self.uri, *args], capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise LibvirtdError(f"virsh {' '.join(args)}: exit {r.returncode}: {r.stderr.strip()}\n"
                                f"libvirtd log:\n{self.log.read_text()[-2000:]}")
        return r

    def domstate(self, name: str) -> str:
        return self.virsh("domstate", name, check=False).stdout.strip()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        r = self.virsh("list", "--name", check=False)
        for name in r.stdout.split():
            self.virsh("destroy", name, check=False)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def domain_xml(name: str, kernel: Path, initrd: Path, cmdline: str, console: Path, mem_mib: int = 256) -> str:
    uuid = uuid5(NAMESPACE_DNS, f"{name}.pxos.test")  # fixed per name: a redefinition updates the domain
    """A domain with pxOS's GPU the native way: virtio video with the vhostuser driver, guest
    RAM a shared memfd; direct kernel boot under TCG, the serial console to a file, ACPI on
    (libvirt's default is off, and the guest powers off after its command through it)."""
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <memory unit='MiB'>{mem_mib}</memory>
  <vcpu>1</vcpu>
  <memoryBacking>
    <source type='memfd'/>
    <access mode='shared'/>
  </memoryBacking>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>
  <features>
    <acpi/>
  </features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <serial type='file'>
      <source path='{console}'/>
    </serial>
    <video>
      <model type='virtio' heads='1'/>
      <driver name='vhostuser'/>
    </video>
    <memballoon model='none'/>
  </devices>
</domain>
"""
