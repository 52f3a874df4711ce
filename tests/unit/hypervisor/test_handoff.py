"""The handoff socket's wire (hypervisor/handoff.py) and libvirt identity
(hypervisor/libvirt.py) against hostile input: whatever arrives is refused with a typed
error and every descriptor received is closed."""

from __future__ import annotations

import array
import json
import os
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hypervisor import errors as E
from hypervisor import handoff as H
from hypervisor import libvirt as L


def _pair():
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def _send(sock, data: bytes, fds=()):
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
    sock.sendmsg([data], anc)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_good_hello_brings_the_connection():
    a, b = _pair()
    x, y = socket.socketpair()
    _send(a, H.encode_hello(None, "dom"), [x.fileno()])
    hello, conn = H.recv_hello(b)
    assert hello == H.Hello(None, "dom") and conn.type == socket.SOCK_STREAM
    conn.sendall(b"hi")
    assert y.recv(2) == b"hi"
    for s in (a, b, x, y, conn):
        s.close()


@pytest.mark.parametrize("data, fds, match", [
    (b"not json", 1, "not a JSON object"),
    (json.dumps({"pxos_handoff": 2, "name": "x"}).encode(), 1, "pxos_handoff=1"),
    (json.dumps({"pxos_handoff": 1, "name": "x", "extra": 1}).encode(), 1, "unknown keys"),
    (json.dumps({"pxos_handoff": 1, "name": 5}).encode(), 1, "name must be"),
    (json.dumps({"pxos_handoff": 1}).encode(), 1, "which VM is this"),
    (H.encode_hello(None, "x"), 0, "exactly one descriptor"),
    (H.encode_hello(None, "x"), 3, "exactly one descriptor"),
    (b"x" * (H.MAX_HELLO_BYTES + 1), 1, f"more than {H.MAX_HELLO_BYTES} bytes"),
    (H.encode_hello(None, "x"), "pipe", "not a socket"),
    (H.encode_hello(None, "x"), "dgram", "not a unix stream socket"),
])
def test_bad_hellos_are_refused_and_leak_no_descriptor(data, fds, match):
    a, b = _pair()
    extra = []
    if fds == "pipe":
        extra = list(os.pipe())
        send = [extra[0]]
    elif fds == "dgram":
        extra = list(socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM))
        send = [extra[0].fileno()]
    else:
        extra = [socket.socketpair() for _ in range(fds)]
        send = [p[0].fileno() for p in extra]
    _send(a, data, send)
    before = _open_fds()
    with pytest.raises(E.InvalidArgument, match=match):
        H.recv_hello(b)
    assert _open_fds() == before
    a.close()
    b.close()


@given(st.binary(max_size=600))
def test_any_bytes_are_refused_cleanly(data):
    try:
        H.decode_hello(data)
    except E.InvalidArgument:
        pass


@pytest.mark.parametrize("path", ["relative/1-x-video0-vhost-user-gpu.pid", "/run/libvirt/qemu/x.pid",
                                  "/run/libvirt/qemu/-x-video0-vhost-user-gpu.pid"])
def test_pidfile_names_that_are_not_libvirts(path):
    with pytest.raises(L.IdentityError, match="not a libvirt vhost-user-gpu pidfile"):
        L.parse_pidfile_name(path)


def test_identity_needs_the_status_of_that_domain(tmp_path):
    pidfile = tmp_path / "4-dom-video0-vhost-user-gpu.pid"
    pidfile.write_text(f"{os.getpid()}\n")
    # A status file of another domain id, one with the same id but another name, garbage.
    (tmp_path / "other.xml").write_text("<domstatus><domain id='5'><name>dom</name></domain></domstatus>")
    (tmp_path / "stale.xml").write_text("<domstatus><domain id='4'><name>zzz</name></domain></domstatus>")
    (tmp_path / "junk.xml").write_text("<<<")
    with pytest.raises(L.IdentityError, match="no status file names it"):
        L.identify(str(pidfile), os.getpid(), state_dir=str(tmp_path), timeout=0.2)
    (tmp_path / "dom.xml").write_text("<domstatus><domain id='4'><name>dom</name>"
                                      "<uuid>not-a-uuid</uuid></domain></domstatus>")
    ident = L.identify(str(pidfile), os.getpid(), state_dir=str(tmp_path), timeout=0.2)
    assert (ident.name, ident.uuid, ident.libvirt_id) == ("dom", None, 4)
    with pytest.raises(L.IdentityError, match="names pid"):
        L.identify(str(pidfile), os.getpid() + 1, state_dir=str(tmp_path), timeout=0.2)
    # Only libvirt's state dir, and only root's files there.
    with pytest.raises(L.IdentityError, match="not in libvirt's state directory"):
        L.identify(str(pidfile), os.getpid(), state_dir="/run/libvirt/qemu", timeout=0.2)
    os.chown(tmp_path / "dom.xml", 65534, 65534)
    with pytest.raises(L.IdentityError, match="no status file names it"):
        L.identify(str(pidfile), os.getpid(), state_dir=str(tmp_path), timeout=0.2)
    os.chown(pidfile, 65534, 65534)
    with pytest.raises(L.IdentityError, match="not libvirt's"):
        L.identify(str(pidfile), os.getpid(), state_dir=str(tmp_path), timeout=0.2)
    link = tmp_path / "5-dom-video0-vhost-user-gpu.pid"
    link.symlink_to(pidfile)
    with pytest.raises(L.IdentityError, match="cannot read"):
        L.identify(str(link), os.getpid(), state_dir=str(tmp_path), timeout=0.2)


def test_description_and_install(tmp_path):
    path = L.install_description(str(tmp_path / "vhost-user"), "/usr/bin/pxos-vhost-gpu")
    doc = json.loads(path.read_text())
    assert doc["type"] == "gpu" and doc["binary"] == "/usr/bin/pxos-vhost-gpu"
    assert path.name.endswith(".json") and oct(path.stat().st_mode & 0o777) == "0o644"
    with pytest.raises(E.ConfigError, match="absolute"):
        L.install_description(str(tmp_path), "pxos-vhost-gpu")
