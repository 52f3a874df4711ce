"""The listener: one unix socket per VM, one front-end at a time, its own loop thread.

Why a thread per socket rather than one selector for all VMs: the per-request work is
Python either way (one GIL), so a shared loop buys no throughput, while a thread per VM
keeps one VM's slow handler (a device answering GET_CONFIG while QEMU's vCPU waits, or a
front-end stalling mid-frame for ``FRAME_TIMEOUT_S``) from delaying every other VM, and
makes "this VM's loop" a simple, testable unit. Idle loops cost nothing (epoll waits).

The socket gets its final owner and mode (0600 by default; 0660 and QEMU's group when
asked) before anyone can reach it, and never through a path someone else could swap: it
is bound inside a fresh private directory (0700) next to the requested path, ``fchmod``
before ``bind``, its group and mode set there, then renamed into place (a rename replaces
what is at the path, a symlink included, and never follows it). A stale socket file left by a dead daemon is replaced;
a live one or a non-socket file at the path is a ``ConfigError``. While a front-end is
connected, another connecting one is accepted and closed at once (it fails fast instead of
hanging in the backlog). After a disconnect the device is reset and the next front-end is
served on the same socket. ``close()`` ends the connection, stops the thread and removes
the socket file. ``retire()`` removes the socket file and stops accepting, but keeps
serving the connected front-end until it disconnects (a VM removed under a running guest:
its device answers every request with an error instead of leaving QEMU waiting); the loop
thread then ends by itself.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import stat
import tempfile
import threading
from collections.abc import Callable

from hypervisor.errors import ConfigError
from virtio_backend.vhost_user import memory
from virtio_backend.vhost_user.connection import VhostUserConnection
from virtio_backend.vhost_user.loop import EventLoop

log = logging.getLogger(__name__)

#: How often the loop retries unmapping regions a device kept exported past a reset.
REAP_PERIOD_S = 1.0


class VhostUserServer:
    """Serves ``device_factory(connection) -> VirtioDevice`` on ``socket_path``."""

    def __init__(self, socket_path: str | os.PathLike, device_factory: Callable, *, name: str | None = None,
                 mode: int = 0o600, gid: int | None = None):
        self.socket_path = os.fspath(socket_path)
        self.mode, self.gid = mode, gid  # of the socket file, set before it is reachable
        self.name = name or f"vhost-user:{self.socket_path}"
        self._factory = device_factory
        self.loop = EventLoop(self.name)
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self.connection: VhostUserConnection | None = None
        self.connections_total = 0
        self.rejected_total = 0
        self.last_close_reason = ""
        self._served_before = 0
        self._errors_before = 0
        self._retired = False

    # -- life ---------------------------------------------------------------------------
    def start(self) -> VhostUserServer:
        self._listener = self._bind()
        self.loop.add_reader(self._listener.fileno(), self._on_accept)
        self.loop.every(REAP_PERIOD_S, memory.reap)
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self.loop.run()
        finally:
            if self.connection is not None:
                self.connection.close("server closed")
            if not self._retired:
                self.loop.remove_reader(self._listener.fileno())
                self._listener.close()
            else:  # nobody joins a retired server's thread: it frees its loop itself
                self.loop.close()

    def close(self, timeout: float = 5.0) -> None:
        """End any connection (device reset), stop the loop thread, remove the socket."""
        if self._thread is None:
            return
        self.loop.stop()
        self._thread.join(timeout)
        if self._thread.is_alive():  # pragma: no cover - a device callback hung
            log.error("%s: loop thread did not stop within %.1f s", self.name, timeout)
            return
        self._thread = None
        self.loop.close()
        if not self._retired:  # a retired one's path may be another server's by now
            _unlink_socket(self.socket_path)

    def retire(self, timeout: float = 5.0) -> bool:
        """Stop accepting and remove the socket file now; keep serving the connected
        front-end, if any, until it disconnects, then end the loop thread. Returns whether
        a front-end was connected (False: the server is closed already)."""
        if self._thread is None:
            return False

        def on_loop() -> bool:
            self._retired = True
            self.loop.remove_reader(self._listener.fileno())
            self._listener.close()
            _unlink_socket(self.socket_path)
            connected = self.connection is not None and not self.connection.closed
            if not connected:
                self.loop.stop()
            return connected

        ran, connected = self.loop.call_and_wait(on_loop, timeout)
        if not ran:
            self.close()  # the loop does not answer: end it the hard way
            return False
        return connected

    @property
    def serving(self) -> bool:
        """Whether the loop thread still runs (a retired server: its front-end is connected)."""
        return not self.loop.closed

    def __enter__(self) -> VhostUserServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the device's and the caller's API -----------------------------------------------
    def call_soon_threadsafe(self, fn: Callable, *args) -> bool:
        return self.loop.call_soon_threadsafe(fn, *args)

    def status(self, timeout: float = 2.0) -> dict:
        """Connected, negotiated features, queue sizes and counters (thread-safe)."""
        if self._thread is None or threading.get_ident() == self.loop.thread_id:
            return self._status()
        ran, st = self.loop.call_and_wait(self._status, timeout)
        return st if ran else {"socket": self.socket_path, "connected": False, "error": "loop not responding"}

    def _status(self) -> dict:
        conn = self.connection if self.connection is not None and not self.connection.closed else None
        out = {"socket": self.socket_path, "connected": conn is not None,
               "connections_total": self.connections_total, "rejected_total": self.rejected_total,
               "last_close_reason": self.last_close_reason, "lingering_regions": memory.lingering()}
        served, errors = self._served_before, self._errors_before
        if conn is not None:
            st = conn.status()
            out.update({k: st[k] for k in ("features", "protocol_features", "queues", "unsealed_regions",
                                           "memory_faults")})
            served += st["completed"]
            errors += st["malformed"] + st["device_errors"]
        out["requests_served"], out["errors"] = served, errors
        return out

    # -- sockets ----------------------------------------------------------------------------
    def _bind(self) -> socket.socket:
        path = self.socket_path
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        if st is not None:
            if not stat.S_ISSOCK(st.st_mode):
                raise ConfigError(f"{path} exists and is not a socket")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
            except OSError as exc:
                if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                    raise ConfigError(f"{path}: cannot tell whether it is in use: {exc}") from exc
                os.unlink(path)  # stale: nobody listens
            else:
                raise ConfigError(f"{path} is in use by another listener")
            finally:
                probe.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        private = None
        try:
            # A directory only we can enter: nobody can put a link where we chown and chmod.
            private = tempfile.mkdtemp(prefix=".pxos-", dir=os.path.dirname(os.path.abspath(path)))
            staging = os.path.join(private, "s")
            os.fchmod(sock.fileno(), self.mode)  # the inode bind creates takes this mode (less the umask)
            sock.bind(staging)
            if self.gid is not None:
                os.chown(staging, -1, self.gid, follow_symlinks=False)
            os.chmod(staging, self.mode)  # exactly, whatever the umask took away
            sock.listen(4)
            sock.setblocking(False)
            os.rename(staging, path)
        except OSError as exc:
            sock.close()
            raise ConfigError(f"cannot listen on {path}: {exc}") from exc
        finally:
            if private is not None:
                _remove_private_dir(private)
        return sock

    def _on_accept(self) -> None:
        try:
            sock, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        if self.connection is not None and not self.connection.closed and _peer_gone(self.connection.sock):
            # The previous front-end closed a moment ago and its hang-up is not processed yet
            # (QEMU restarting, a reconnect): end it now instead of turning the new one away.
            self.connection.close("the front-end hung up (a new one is connecting)")
        if self.connection is not None and not self.connection.closed:
            self.rejected_total += 1
            log.warning("%s: a second front-end connected while one is served; closing it", self.name)
            sock.close()
            return
        sock.setblocking(True)
        self.connections_total += 1
        try:
            self.connection = VhostUserConnection(sock, self.loop, self._factory,
                                                  name=f"{self.name}#{self.connections_total}",
                                                  on_closed=self._on_closed)
        except Exception:
            log.exception("%s: device factory failed; closing the connection", self.name)
            sock.close()
            return
        log.info("%s: front-end connected (connection %d)", self.name, self.connections_total)

    def _on_closed(self, conn: VhostUserConnection) -> None:
        totals = conn.totals()
        self._served_before += totals["completed"]
        self._errors_before += totals["malformed"] + conn.stats.device_errors
        if conn.close_reason.startswith("protocol error"):
            self._errors_before += 1
        self.last_close_reason = conn.close_reason
        if self._retired:
            log.info("%s: the front-end of the removed VM disconnected (%s)", self.name, conn.close_reason)
            self.loop.stop()


def _unlink_socket(path: str) -> None:
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass


def _peer_gone(sock: socket.socket) -> bool:
    """Whether the peer of a connected unix socket has closed its end (no blocking)."""
    p = select.poll()
    p.register(sock.fileno(), select.POLLRDHUP | select.POLLHUP | select.POLLERR)
    try:
        return any(ev & (select.POLLRDHUP | select.POLLHUP | select.POLLERR) for _, ev in p.poll(0))
    except OSError:
        return True


def _remove_private_dir(private: str) -> None:
    try:
        os.unlink(os.path.join(private, "s"))  # left there only when something failed
    except FileNotFoundError:
        pass
    try:
        os.rmdir(private)
    except OSError as exc:  # pragma: no cover - someone else wrote into our 0700 directory
        log.warning("could not remove %s: %s", private, exc)
