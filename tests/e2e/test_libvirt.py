"""libvirt's native vhost-user GPU served by pxos-hvd (issue 13), with a real libvirtd
(started directly as root in a private mount namespace: tests/support/libvirtd.py), real
QEMU (TCG), the real guest kernel and module.

Domains are defined with the native XML (``<video><driver name='vhostuser'/>``, shared
memfd RAM, direct kernel boot of the pxOS guest). libvirt finds pxos-vhost-gpu through the
description `pxos-hvd install-libvirt` writes, starts it per domain with ``--fd=N``, and
the shim hands the connection to pxos-hvd. Two domains run `pxos selftest` at once (one a
configured [[vm]] matched by name, one registered with the [libvirt] defaults);
`virsh destroy` brings the VM's usage back to zero and its shim exits; `virsh start` again
works.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from qemu import initramfs
from qemu.cmdline import BASE_APPEND
from qemu.console import Console
from qemu.guest import die_with_parent
from qemu.hvd import HvdProcess
from tests.support import libvirtd as lv

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
MiB = 1 << 20
QUOTA = 64 * MiB
RUN_S = 300.0  # boot + selftest under TCG on a loaded 2-core machine, generously
SELFTEST_OK = re.compile(r"^selftest: (\d+)/\1 passed$", re.M)
SHIM = "pxos-vhost-gpu"


@pytest.fixture
def workdir():
    d = Path(tempfile.mkdtemp(prefix="pxos-lv-", dir="/tmp"))  # short: unix socket paths
    yield d
    subprocess.run(["rm", "-rf", str(d)], check=False)


@pytest.fixture
def libvirt(workdir):
    why = lv.missing()
    if why:
        if os.environ.get("PXOS_REQUIRE_QEMU") == "1":
            pytest.fail(f"libvirt test cannot run: {why}")
        pytest.skip(why)
    d = lv.Libvirtd(workdir / "lv", env={"PXOS_HANDOFF_SOCKET": str(workdir / "hvd" / "vhost-user-gpu.sock")})
    try:
        d.start()
        yield d
    finally:
        d.stop()


def start_hvd(workdir: Path, libvirt) -> HvdProcess:
    wd = workdir / "hvd"
    wd.mkdir()
    (wd / "hvd.toml").write_text(textwrap.dedent(f"""\
        [daemon]
        grpc_socket = "{wd / 'hvd.sock'}"
        metrics_address = ""
        backend = "numpy"
        socket_dir = "{wd}"

        [memory]
        device_pool = "512Mi"

        [libvirt]
        handoff_socket = "vhost-user-gpu.sock"
        auto_register = true
        default_memory = {QUOTA}
        default_share = 30

        [[vm]]
        id = 1
        name = "alpha"
        memory = {QUOTA}
        share = 50
        domain = "pxos-lv-alpha"
        """))
    log = wd / "hvd.log"
    with open(log, "wb") as out:
        # In libvirtd's mount namespace: the daemon reads libvirt's pidfiles and status files
        # at their real paths, as on a host where both run.
        proc = subprocess.Popen(["nsenter", "-t", str(libvirt.proc.pid), "-m", "--", sys.executable, "-m",
                                 "hypervisor.daemon", "--config", str(wd / "hvd.toml")],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO,
                                start_new_session=True, preexec_fn=die_with_parent)
    hvd = HvdProcess(proc, wd, {}, wd / "hvd.sock", log)
    deadline = time.monotonic() + 60
    while not ("pxos-hvd up" in hvd.log_text() and (wd / "vhost-user-gpu.sock").exists()):
        if proc.poll() is not None or time.monotonic() > deadline:
            hvd.stop()
            raise AssertionError(f"pxos-hvd did not start:\n{hvd.log_text()[-3000:]}")
        time.sleep(0.1)
    return hvd


@pytest.fixture
def hvd(workdir, libvirt):
    h = start_hvd(workdir, libvirt)
    yield h
    h.stop()


def define(libvirt, artefacts, workdir: Path, name: str, command: str) -> Path:
    """Define domain ``name`` booting the pxOS guest with ``command``; returns its console file."""
    initrd = initramfs.write_run_initrd(artefacts.initramfs, workdir / f"{name}.initrd.gz", command)
    console = workdir / f"{name}.console"
    console.unlink(missing_ok=True)
    xml = workdir / f"{name}.xml"
    xml.write_text(lv.domain_xml(name, artefacts.vmlinux, initrd, " ".join(BASE_APPEND), console))
    libvirt.virsh("define", str(xml))
    return console


def start(libvirt, name: str, diag) -> None:
    try:
        libvirt.virsh("start", name)
    except lv.LibvirtdError as exc:
        raise AssertionError(f"{exc}\n{diag()}") from None


def read_console(path: Path) -> Console:
    c = Console()
    if path.exists():
        c.feed(path.read_bytes())
    c.close()
    return c


def wait_for(pred, timeout: float, what: str, diag=lambda: ""):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s\n{diag()}")
        time.sleep(0.25)


def shim_pids() -> set[int]:
    out = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(part.endswith(SHIM.encode()) for part in cmd[:2]) and b"--print-capabilities" not in cmd:
                out.add(int(pid))
    return out


def test_libvirt_domains_get_their_gpu_from_pxos_hvd(guest_artefacts, libvirt, hvd, workdir):
    # The description, as an operator installs it (here into the test's private /etc/qemu).
    binary = str(Path(sys.executable).parent / SHIM)
    out = subprocess.run([sys.executable, "-m", "hypervisor.daemon", "install-libvirt",
                          "--dir", str(libvirt.descriptions), "--binary", binary],
                         capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert "50-pxos-gpu.json" in out

    def diag() -> str:
        return (f"--- pxos-hvd log:\n{hvd.log_text()[-3000:]}\n--- libvirtd log:\n"
                f"{libvirt.log.read_text(errors='replace')[-2000:]}\n--- domain logs:\n" +
                "\n".join(p.read_text(errors="replace")[-1500:]
                          for p in (libvirt.root / "log" / "qemu").glob("*.log")))

    alpha = define(libvirt, guest_artefacts, workdir, "pxos-lv-alpha", "pxos selftest")
    beta = define(libvirt, guest_artefacts, workdir, "pxos-lv-beta", "pxos selftest")
    # Two domains at once: one configured (VM 1), one registered with the defaults.
    start(libvirt, "pxos-lv-alpha", diag)
    start(libvirt, "pxos-lv-beta", diag)
    vms = wait_for(lambda: (v := hvd.vms()) and v.get(1, {}).get("domain") == "pxos-lv-alpha"
                   and any(x.get("domain") == "pxos-lv-beta" for x in v.values()) and v, 60,
                   "both domains served", diag)
    auto = next(i for i, v in vms.items() if v.get("domain") == "pxos-lv-beta")
    assert auto >= 1000 and int(vms[auto]["memory_quota"]) == QUOTA
    assert len(shim_pids()) >= 2
    for name, console in (("pxos-lv-alpha", alpha), ("pxos-lv-beta", beta)):
        wait_for(lambda c=console: read_console(c).exit_status() is not None, RUN_S, f"{name} ran its command",
                 lambda c=console: read_console(c).text()[-3000:] + diag())
        c = read_console(console)
        assert c.exit_status() == 0 and SELFTEST_OK.search(c.text()), c.text()[-3000:]
    # The guests powered off: libvirt stopped each domain and its shim; usage is zero, the
    # configured VM is free again and the registered one is gone.
    wait_for(lambda: libvirt.domstate("pxos-lv-alpha") == "shut off" and libvirt.domstate("pxos-lv-beta") ==
             "shut off", 60, "domains shut off", diag)
    wait_for(lambda: shim_pids() == set(), 30, "shims exited", diag)
    vms = wait_for(lambda: (v := hvd.vms()) and auto not in v and not v[1].get("domain") and v, 30,
                   "VMs released", diag)
    assert int(vms[1].get("memory_used", 0)) == 0

    # virsh destroy of a running domain holding GPU memory: usage back to zero, shim gone.
    hold = define(libvirt, guest_artefacts, workdir, "pxos-lv-alpha",
                  "pxos selftest && pxos alloc float[1000000] --hold 600")
    start(libvirt, "pxos-lv-alpha", diag)
    wait_for(lambda: int(hvd.vms()[1].get("memory_used", 0)) >= 4_000_000, RUN_S, "alpha holds memory",
             lambda: read_console(hold).text()[-3000:] + diag())
    assert SELFTEST_OK.search(read_console(hold).text())
    (pid,) = shim_pids()
    libvirt.virsh("destroy", "pxos-lv-alpha")
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), 30, "the shim exited after virsh destroy", diag)
    wait_for(lambda: int(hvd.vms()[1].get("memory_used", 0)) == 0 and not hvd.vms()[1].get("domain"), 30,
             "usage back to zero after virsh destroy", diag)

    # And the domain starts again.
    again = define(libvirt, guest_artefacts, workdir, "pxos-lv-alpha", "pxos selftest")
    start(libvirt, "pxos-lv-alpha", diag)
    wait_for(lambda: read_console(again).exit_status() is not None, RUN_S, "alpha ran again",
             lambda: read_console(again).text()[-3000:] + diag())
    c = read_console(again)
    assert c.exit_status() == 0 and SELFTEST_OK.search(c.text()), c.text()[-3000:]
    assert "refused" not in hvd.log_text()
    wait_for(lambda: libvirt.domstate("pxos-lv-alpha") == "shut off", 60, "alpha shut off", diag)

    # Without pxos-hvd the domain does not start, and its shim does not linger.
    hvd.stop()
    r = libvirt.virsh("start", "pxos-lv-alpha", check=False)
    assert r.returncode != 0 and "vhost" in r.stderr, r.stderr
    wait_for(lambda: shim_pids() == set(), 30, "no shim left", diag)
