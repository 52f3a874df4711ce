"""The handoff socket: where pxos-vhost-gpu (the per-VM process libvirt starts) hands the
vhost-user connection libvirt gave it to pxos-hvd, so one daemon serves every VM
(docs/operations.md, "libvirt"; docs/protocol.md, "Handoff").

Wire (a unix SOCK_SEQPACKET socket; one datagram each way, then the connection stays open):

- shim → daemon: a JSON object of at most ``MAX_HELLO_BYTES`` with ``SCM_RIGHTS`` carrying
  exactly one descriptor, the connected vhost-user socket. Keys: ``pxos_handoff`` (=1),
  ``libvirt_pidfile`` (the libvirt pidfile the shim holds, or null), ``name`` (a name
  given with ``--name``, or null).
- daemon → shim: ``{"ok": true, "vm_id": N, "vm_name": ..., "domain": ...}`` or
  ``{"ok": false, "error": "..."}`` (then the daemon closes).
- The connection then lasts as long as the VM's device connection: when QEMU goes away the
  daemon closes it (the shim exits 0); when the shim goes (libvirt stops it with the VM)
  the daemon ends the device connection. Either way the VM's usage goes back to zero.

Everything that arrives is input: sizes are capped, the descriptor must be a stream
socket, extra descriptors are closed, the sender's pid comes from the kernel (SO_PEERCRED).
"""

from __future__ import annotations

import array
import json
import logging
import os
import selectors
import socket
import stat
import struct
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass

from . import errors as E

log = logging.getLogger("pxos.handoff")

#: Where pxos-vhost-gpu looks unless PXOS_HANDOFF_SOCKET or --handoff-socket says otherwise.
DEFAULT_HANDOFF_SOCKET = "/run/pxos/vhost-user-gpu.sock"
HANDOFF_ENV = "PXOS_HANDOFF_SOCKET"
PROTOCOL_VERSION = 1
#: A hello is a few hundred bytes (a path and a name); anything near this is not one.
MAX_HELLO_BYTES = 4096
#: Descriptors read from one hello: one is expected, a few more are read only to close them.
MAX_HELLO_FDS = 4
#: Handoffs being identified at once; more wait in the listen backlog.
MAX_PENDING = 16


@dataclass(frozen=True)
class Hello:
    libvirt_pidfile: str | None
    name: str | None


def encode_hello(libvirt_pidfile: str | None, name: str | None) -> bytes:
    return json.dumps({"pxos_handoff": PROTOCOL_VERSION, "libvirt_pidfile": libvirt_pidfile,
                       "name": name}).encode()


def decode_hello(data: bytes) -> Hello:
    """A hello's JSON, checked (E.InvalidArgument names what is wrong)."""
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise E.InvalidArgument("handoff hello: not a JSON object") from None
    if not isinstance(obj, dict) or obj.get("pxos_handoff") != PROTOCOL_VERSION:
        raise E.InvalidArgument(f"handoff hello: want a JSON object with pxos_handoff={PROTOCOL_VERSION}")
    unknown = set(obj) - {"pxos_handoff", "libvirt_pidfile", "name"}
    if unknown:
        raise E.InvalidArgument(f"handoff hello: unknown keys {sorted(unknown)}")
    out = {}
    for key in ("libvirt_pidfile", "name"):
        v = obj.get(key)
        if v is not None and (not isinstance(v, str) or not v or "\0" in v):
            raise E.InvalidArgument(f"handoff hello: {key} must be a non-empty string or null")
        out[key] = v
    if not out["libvirt_pidfile"] and not out["name"]:
        raise E.InvalidArgument("handoff hello: neither a libvirt pidfile nor a name: which VM is this? "
                                "(run pxos-vhost-gpu from libvirt, or give --name)")
    return Hello(**out)


def recv_hello(sock: socket.socket) -> tuple[Hello, socket.socket]:
    """Read one hello and its descriptor from ``sock`` (blocking, with the socket's timeout)."""
    fds = array.array("i")
    msg, anc, flags, _ = sock.recvmsg(MAX_HELLO_BYTES, socket.CMSG_SPACE(MAX_HELLO_FDS * fds.itemsize))
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
    received = list(fds)
    try:
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            raise E.InvalidArgument(f"handoff hello: more than {MAX_HELLO_BYTES} bytes or {MAX_HELLO_FDS} "
                                    "descriptors")
        if not msg:
            raise E.InvalidArgument("handoff: the peer closed before its hello")
        hello = decode_hello(msg)
        if len(received) != 1:
            raise E.InvalidArgument(f"handoff hello: want exactly one descriptor (the vhost-user connection), "
                                    f"got {len(received)}")
        st = os.fstat(received[0])
        if not stat.S_ISSOCK(st.st_mode):
            raise E.InvalidArgument("handoff hello: the descriptor is not a socket")
        conn = socket.socket(fileno=received.pop())
        if conn.family != socket.AF_UNIX or conn.type != socket.SOCK_STREAM:
            conn.close()
            raise E.InvalidArgument("handoff hello: the descriptor is not a unix stream socket")
        return hello, conn
    finally:
        for fd in received:
            os.close(fd)


def peer_pid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[0]


def send_json(sock: socket.socket, obj: dict) -> None:
    try:
        sock.send(json.dumps(obj).encode())
    except OSError:
        pass  # the shim is gone; its hang-up is handled where it is seen


def bind_unix(path: str, kind: int, mode: int, gid: int | None) -> socket.socket:
    """A listening unix socket at ``path`` with its final mode and group before anyone can
    reach it (bound in a private directory, then renamed into place). A stale socket is
    replaced; a live one is a ConfigError."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None:
        if not stat.S_ISSOCK(st.st_mode):
            raise E.ConfigError(f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, kind)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # stale: nobody listens
        else:
            raise E.ConfigError(f"{path} is in use by another listener")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, kind | socket.SOCK_CLOEXEC)
    private = None
    try:
        private = tempfile.mkdtemp(prefix=".pxos-", dir=os.path.dirname(os.path.abspath(path)))
        staging = os.path.join(private, "s")
        os.fchmod(sock.fileno(), mode)
        sock.bind(staging)
        if gid is not None:
            os.chown(staging, -1, gid, follow_symlinks=False)
        os.chmod(staging, mode)
        sock.listen(MAX_PENDING)
        os.rename(staging, path)
    except OSError as exc:
        sock.close()
        raise E.ConfigError(f"cannot listen on {path}: {exc}") from exc
    finally:
        if private is not None:
            try:
                os.unlink(os.path.join(private, "s"))
            except FileNotFoundError:
                pass
            os.rmdir(private)
    return sock


class HandoffListener:
    """Accepts shims on ``path``; ``on_hello(hello, conn, pid)`` runs on a thread of its own
    per handoff and returns ``(token, reply)`` (or raises PxosError: refused, the error is
    sent back; ``reply`` is sent with ``"ok": true``). While the handoff lasts, a hang-up of ``control`` calls
    ``on_hangup(token)`` once (on the listener thread); ``end(token)`` closes ``control``."""

    def __init__(self, path: str, on_hello: Callable, on_hangup: Callable, *, mode: int = 0o600,
                 gid: int | None = None):
        self.path = path
        self._on_hello, self._on_hangup = on_hello, on_hangup
        self._sock = bind_unix(path, socket.SOCK_SEQPACKET, mode, gid)
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._lock = threading.Lock()
        self._live: dict[object, socket.socket] = {}  # token -> control connection
        self._ended_early: set = set()  # end() before the handoff was registered
        self._hung_up: set = set()  # hung up, end() not called yet
        self._pending = threading.BoundedSemaphore(MAX_PENDING)
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="pxos-handoff", daemon=True)
        self.handoffs_total = 0
        self.refused_total = 0

    def start(self) -> HandoffListener:
        self._sel.register(self._sock, selectors.EVENT_READ, "accept")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stopping:
            for key, _ in self._sel.select():
                if key.data == "accept":
                    self._accept()
                elif key.data == "wake":
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
                else:
                    self._hangup(key.data, key.fileobj)

    def _accept(self) -> None:
        try:
            control, _ = self._sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        if not self._pending.acquire(blocking=False):
            send_json(control, {"ok": False, "error": f"more than {MAX_PENDING} handoffs at once; try again"})
            control.close()
            return
        threading.Thread(target=self._handle, args=(control,), name="pxos-handoff-hello", daemon=True).start()

    def _handle(self, control: socket.socket) -> None:
        conn = None
        try:
            control.settimeout(10.0)
            pid = peer_pid(control)
            hello, conn = recv_hello(control)
            token, reply = self._on_hello(hello, conn, pid)
            conn = None  # the transport owns it now
        except (E.PxosError, OSError) as exc:
            with self._lock:
                self.refused_total += 1
            log.warning("handoff refused: %s", exc)
            send_json(control, {"ok": False, "error": str(exc)})
            control.close()
            if conn is not None:
                conn.close()
            return
        finally:
            self._pending.release()
        with self._lock:
            self.handoffs_total += 1
        send_json(control, {"ok": True, **reply})
        with self._lock:
            over = self._stopping or token in self._ended_early
            self._ended_early.discard(token)
            if not over:
                self._live[token] = control
                control.setblocking(False)
                self._sel.register(control, selectors.EVENT_READ, token)
        if over:  # stopping, or the device connection ended already
            if self._stopping:
                self._on_hangup(token)
            control.close()
        else:
            os.write(self._wake_w, b"x")

    def _hangup(self, token, control) -> None:
        try:
            if control.recv(1):
                return  # the shim says nothing after its hello; ignore stray bytes
        except BlockingIOError:
            return
        except OSError:
            pass
        with self._lock:
            if self._live.pop(token, None) is None:
                return
            self._sel.unregister(control)
            self._hung_up.add(token)
        control.close()
        self._on_hangup(token)

    def end(self, token) -> None:
        """The VM's device connection is over: close the shim's connection (it exits)."""
        with self._lock:
            control = self._live.pop(token, None)
            if control is None:
                if token in self._hung_up:
                    self._hung_up.discard(token)
                else:
                    self._ended_early.add(token)
                return
            try:
                self._sel.unregister(control)
            except (KeyError, ValueError):
                pass
        control.close()
        os.write(self._wake_w, b"x")

    def live(self) -> list:
        with self._lock:
            return list(self._live)

    def close(self) -> None:
        with self._lock:
            self._stopping = True
        os.write(self._wake_w, b"x")
        self._thread.join(5)
        with self._lock:
            live, self._live = list(self._live.values()), {}
        for control in live:
            control.close()
        self._sel.close()
        self._sock.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        try:
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                os.unlink(self.path)
        except FileNotFoundError:
            pass
