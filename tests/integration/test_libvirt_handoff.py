"""pxos-vhost-gpu handing a vhost-user connection to pxos-hvd (issue 13), host side: the
real shim program (a subprocess, as libvirt runs it), the real daemon's handoff socket,
and a scripted front-end on the other end of a socketpair playing QEMU. libvirt itself
is emulated only where it leaves traces the daemon reads (its pidfile, held by the shim,
and the domain's status file); tests/e2e/test_libvirt.py runs the real libvirtd.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from hypervisor import Hypervisor, ctl
from hypervisor.config import DaemonConfig, VMConfig
from hypervisor.daemon import Daemon
from tests.integration.test_vhost_device import Guest
from tests.support.vhost_frontend import VhostUserFrontend, wait_until

REPO = Path(__file__).resolve().parents[2]
MiB = 1 << 20
WAIT_S = 30.0  # generous: the machine is shared


@pytest.fixture
def sockdir():
    d = tempfile.mkdtemp(prefix="pxos-", dir="/tmp")  # short: unix socket paths fit in 108 bytes
    yield d
    shutil.rmtree(d, ignore_errors=True)


def make_daemon(sockdir: str, vms=(), daemon: dict | None = None, **libvirt) -> Daemon:
    cfg = DaemonConfig.model_validate({
        "daemon": {"grpc_socket": os.path.join(sockdir, "hvd.sock"), "metrics_address": None,
                   "backend": "numpy", "socket_dir": os.path.join(sockdir, "vms"), **(daemon or {})},
        "libvirt": {"handoff_socket": "vhost-user-gpu.sock", "identity_timeout_seconds": 5, **libvirt},
        "vm": list(vms)})
    return Daemon(cfg, hypervisor=Hypervisor(backend="numpy", device_pool_bytes=64 << 20)).start(metrics=False)


@pytest.fixture
def daemons(sockdir):
    started: list[Daemon] = []

    def make(vms=(), daemon=None, **libvirt) -> Daemon:
        started.append(make_daemon(sockdir, vms, daemon, **libvirt))
        return started[-1]

    yield make
    for d in started:
        d.stop(grace=1.0)


class Shim:
    """pxos-vhost-gpu started on one end of a socketpair, as libvirt starts it; ``fe`` plays
    QEMU on the other end."""

    def __init__(self, handoff: str, *args: str, wrap: str | None = None, env: dict | None = None):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        argv = [sys.executable, "-m", "virtio_backend.shim", f"--fd={theirs.fileno()}",
                f"--handoff-socket={handoff}", *args]
        if wrap is not None:  # a shell that writes a pidfile and holds it, then execs the shim
            argv = ["sh", "-c", wrap + ' exec "$@"', "sh", *argv]
        self.proc = subprocess.Popen(argv, pass_fds=[theirs.fileno()], cwd=REPO, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env={**os.environ, **(env or {})})
        theirs.close()
        self.fe = VhostUserFrontend("(socketpair)")
        self.fe.sock = ours
        ours.settimeout(WAIT_S)

    def wait(self) -> tuple[int, str]:
        _, err = self.proc.communicate(timeout=WAIT_S)
        return self.proc.returncode, err.decode()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.fe.close()


@pytest.fixture
def shims():
    made: list[Shim] = []

    def make(*a, **kw) -> Shim:
        made.append(Shim(*a, **kw))
        return made[-1]

    yield make
    for s in made:
        s.close()


def vm_list(d: Daemon, capsys) -> str:
    capsys.readouterr()
    assert ctl.main(["--socket", d.config.daemon.grpc_socket, "vm", "list"]) == 0
    return capsys.readouterr().out


def test_configured_vm_serves_its_domain_and_qemu_leaving_ends_it(daemons, shims, capsys):
    d = daemons(vms=[{"id": 1, "name": "alpha", "memory": 4 * MiB, "share": 50, "domain": "dom-a"}])
    s = shims(d.domains.listener.path, "--name", "dom-a")
    s.fe.boot()  # the daemon answers on the handed-over connection
    guest = Guest(s.fe)
    guest.alloc(1000)
    info = d.hv.vm_info(1)
    assert (info.domain, info.memory_used) == ("dom-a", 4000)
    out = vm_list(d, capsys)
    assert "DOMAIN" in out.splitlines()[0] and "dom-a" in out
    # QEMU goes away: the VM's usage is back to zero, the shim is told and exits 0.
    s.fe.disconnect()
    rc, err = s.wait()
    assert rc == 0, err
    assert "VM 1 (alpha) serves domain dom-a" in err
    wait_until(lambda: d.hv.vm_info(1).domain is None, WAIT_S)
    assert d.hv.vm_info(1).memory_used == 0 and 1 not in d.transport.status()
    lst = d.domains.listener
    assert lst.live() == [] and not lst._hung_up and not lst._ended_early
    # The VM takes the domain's next start.
    again = shims(d.domains.listener.path, "--name", "dom-a")
    again.fe.boot()
    assert Guest(again.fe).alloc(10) and d.hv.vm_info(1).domain == "dom-a"


def test_auto_registered_domain_and_the_shim_killed_ends_it(daemons, shims, capsys):
    d = daemons(auto_register=True, default_memory="8Mi", default_share=10)
    s = shims(d.domains.listener.path, "--name", "some-domain")
    s.fe.boot()
    Guest(s.fe).alloc(2000)
    info = d.hv.vm_info(1000)
    assert (info.name, info.domain, info.memory_quota, info.share_pct, info.memory_used) == \
        ("some-domain", "some-domain", 8 * MiB, 10, 8000)
    assert "some-domain" in vm_list(d, capsys)
    # A second domain at once gets the next id.
    s2 = shims(d.domains.listener.path, "--name", "other")
    s2.fe.boot()
    assert d.hv.vm_info(1001).domain == "other"
    # libvirt stops the domain: it kills the shim (SIGTERM). The device connection ends
    # (QEMU's end sees EOF) and the VM registered for it goes.
    s.proc.send_signal(signal.SIGTERM)
    s.proc.wait(WAIT_S)
    wait_until(lambda: 1000 not in {v.vm_id for v in d.hv.list_vms()}, WAIT_S)
    assert s.fe.sock.recv(1) == b""
    assert d.hv.vm_info(1001).domain == "other"  # the other domain is untouched
    assert Guest(s2.fe).alloc(10)
    lst = d.domains.listener
    wait_until(lambda: not lst._hung_up and not lst._ended_early, WAIT_S)  # nothing kept of ended handoffs
    assert lst.live() and len(lst.live()) == 1


def test_unknown_domain_is_refused_with_the_reason(daemons, shims):
    d = daemons(vms=[{"id": 1, "memory": 4 * MiB, "share": 50, "domain": "dom-a"}])
    s = shims(d.domains.listener.path, "--name", "stranger")
    rc, err = s.wait()
    assert rc == 1
    assert "no [[vm]] has it as domain" in err and "auto_register is off" in err
    assert s.fe.sock.recv(1) == b""  # QEMU's end sees the back-end gone
    assert [v.vm_id for v in d.hv.list_vms()] == [1]
    ok = shims(d.domains.listener.path, "--name", "dom-a")
    ok.fe.boot()
    from prometheus_client import generate_latest

    from hypervisor.metrics import MetricsExporter

    m = MetricsExporter(d.hv, handoff_stats=d.handoff_stats)
    try:
        text = generate_latest(m.registry).decode()
    finally:
        m.stop()
    assert 'pxos_libvirt_handoffs_total{result="refused"} 1.0' in text
    assert 'pxos_libvirt_handoffs_total{result="accepted"} 1.0' in text
    assert "pxos_libvirt_domains 1.0" in text


def test_one_connection_per_vm(daemons, shims):
    d = daemons(vms=[{"id": 1, "memory": 4 * MiB, "share": 50, "domain": "dom-a"}])
    s = shims(d.domains.listener.path, "--name", "dom-a")
    s.fe.boot()
    rc, err = shims(d.domains.listener.path, "--name", "dom-a").wait()
    assert rc == 1 and "VM 1 already serves domain dom-a" in err
    assert Guest(s.fe).alloc(10)  # the first one is untouched


def test_no_daemon_is_a_clear_error(sockdir, shims):
    rc, err = shims(os.path.join(sockdir, "nothing.sock"), "--name", "x").wait()
    assert rc == 1
    assert "pxos-hvd is not running or not reachable" in err and "nothing.sock" in err


def test_print_capabilities():
    out = subprocess.run([sys.executable, "-m", "virtio_backend.shim", "--print-capabilities"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    import json

    assert json.loads(out) == {"type": "gpu", "features": []}


def _libvirt_state(tmp: Path, dom_id: int, name: str, uuid: str) -> Path:
    """A libvirt state dir as libvirt leaves it while a domain starts: the status file."""
    state = tmp / "qemu"
    state.mkdir()
    (state / f"{name}.xml").write_text(
        f"<domstatus state='paused' reason='starting up' pid='1'><domain type='qemu' id='{dom_id}'>"
        f"<name>{name}</name><uuid>{uuid}</uuid></domain></domstatus>")
    return state


def test_libvirt_identity_from_the_pidfile_the_shim_holds(daemons, shims, tmp_path, capsys):
    name, uuid = "a-domain-with-a-rather-long-name", "9de2e6b2-035a-44c6-bc3d-fa02adb6b3d2"
    d = daemons(vms=[{"id": 3, "memory": 4 * MiB, "share": 50, "domain": uuid.upper()}],
                state_dir=str(tmp_path / "qemu"))
    state = _libvirt_state(tmp_path, 7, name, uuid)
    pidfile = state / f"7-{name[:20]}-video0-vhost-user-gpu.pid"
    # What libvirt's daemonized child does: write its pid, keep the file open, exec.
    s = shims(d.domains.listener.path, wrap=f'echo $$ > "{pidfile}"; exec 7<"{pidfile}";')
    s.fe.boot()
    assert d.hv.vm_info(3).domain == name  # matched by UUID, shown by its full name
    assert d.domains.status()[3]["libvirt_id"] == 7 and d.domains.status()[3]["uuid"] == uuid
    assert name in vm_list(d, capsys)


def test_a_pidfile_of_another_process_is_refused(daemons, shims, tmp_path):
    d = daemons(auto_register=True, state_dir=str(tmp_path / "qemu"))
    state = _libvirt_state(tmp_path, 7, "victim", "9de2e6b2-035a-44c6-bc3d-fa02adb6b3d2")
    pidfile = state / "7-victim-video0-vhost-user-gpu.pid"
    pidfile.write_text("1\n")  # someone else's pid: this process is not libvirt's backend
    s = shims(d.domains.listener.path, wrap=f'exec 7<"{pidfile}";')
    rc, err = s.wait()
    assert rc == 1 and "not the backend libvirt started" in err
    assert d.hv.list_vms() == []


def test_a_served_vm_removed_by_the_operator_is_retired_until_qemu_goes(daemons, shims):
    from virtio_backend.gpu import guest as g
    from virtio_backend.wire import PxosStatus

    d = daemons(vms=[{"id": 2, "memory": 4 * MiB, "share": 50, "domain": "dom-a"}])
    s = shims(d.domains.listener.path, "--name", "dom-a")
    guest = Guest(s.fe.boot())
    guest.alloc(100)
    d.remove_vm(2)  # pxosctl vm remove 2, the domain still running
    r = guest.call(g.stats())
    assert r["status"] == PxosStatus.PXOS_S_VM_GONE and "VM 2 was removed" in r["message"], r
    assert s.proc.poll() is None  # the shim lives as long as QEMU's connection
    # The id is added again meanwhile; the old connection ending must not touch it.
    d.add_vm(VMConfig(id=2, memory=4 * MiB, share=50, domain="dom-a"))
    s.fe.disconnect()
    rc, err = s.wait()
    assert rc == 0, err
    wait_until(lambda: not d.domains.status(), WAIT_S)
    assert d.hv.vm_info(2).memory_quota == 4 * MiB and d.hv.vm_info(2).domain is None
    # The domain's next start is served by the new VM.
    again = shims(d.domains.listener.path, "--name", "dom-a")
    assert Guest(again.fe.boot()).alloc(10) and d.hv.vm_info(2).domain == "dom-a"


def test_a_vm_added_at_run_time_serves_its_domain(daemons, shims, capsys):
    d = daemons()
    sock = d.config.daemon.grpc_socket
    assert ctl.main(["--socket", sock, "vm", "add", "5", "--memory", "4Mi", "--share", "20",
                     "--domain", "late-dom"]) == 0
    s = shims(d.domains.listener.path, "--name", "late-dom")
    s.fe.boot()
    assert d.hv.vm_info(5).domain == "late-dom"
    capsys.readouterr()
    assert ctl.main(["--socket", sock, "vm", "add", "6", "--memory", "4Mi", "--share", "20",
                     "--domain", "x", "--socket"]) != 0  # a socket or a domain, not both
    assert "not both" in capsys.readouterr().err


def test_the_handoff_socket_is_made_like_a_vm_socket(daemons):
    import grp
    import stat

    d = daemons(daemon={"vm_socket_group": "kvm"} if _has_group("kvm") else {})
    st = os.stat(d.domains.listener.path)
    assert stat.S_ISSOCK(st.st_mode)
    if _has_group("kvm"):  # what libvirt's QEMU user (libvirt-qemu, group kvm) needs
        assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o660, grp.getgrnam("kvm").gr_gid)
    else:
        assert stat.S_IMODE(st.st_mode) == 0o600
    path = d.domains.listener.path
    d.stop(grace=1.0)
    assert not os.path.exists(path)  # removed when the daemon stops


def _has_group(name: str) -> bool:
    import grp

    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False
