"""Serving one front-end connection that someone else accepted: the socket libvirt made
(a socketpair, one end passed to QEMU, the other to the back-end process it started with
``--fd=N``) and ``pxos-vhost-gpu`` handed to pxos-hvd (docs/operations.md, "libvirt").

Unlike ``VhostUserServer`` there is no listener and no second front-end: when this
connection ends (the front-end hung up, a protocol error, ``close()``), the peer is done
and ``on_end(reason)`` is called once, from the loop thread; it must not call ``close()``
there (that joins the loop thread): hand the work to another thread.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable

from virtio_backend.vhost_user import memory
from virtio_backend.vhost_user.connection import VhostUserConnection
from virtio_backend.vhost_user.loop import EventLoop
from virtio_backend.vhost_user.server import REAP_PERIOD_S

log = logging.getLogger(__name__)


class VhostUserPeer:
    """Serves ``device_factory(connection)`` on the connected ``sock`` (same status()/close()
    surface as ``VhostUserServer``, so a transport can hold either)."""

    def __init__(self, sock: socket.socket, device_factory: Callable, *, name: str,
                 on_end: Callable[[str], None] | None = None):
        self.socket_path = name  # what status() shows where a server shows its path
        self.name = name
        self._sock = sock
        self._factory = device_factory
        self._on_end = on_end
        self.loop = EventLoop(name)
        self._thread: threading.Thread | None = None
        self.connection: VhostUserConnection | None = None
        self.last_close_reason = ""
        self._ended = False
        self._retired = False

    def start(self) -> VhostUserPeer:
        self._sock.setblocking(True)
        # Built here, not on the loop thread: a factory that fails fails the caller.
        self.connection = VhostUserConnection(self._sock, self.loop, self._factory, name=self.name,
                                              on_closed=self._on_closed)
        self.loop.every(REAP_PERIOD_S, memory.reap)
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        log.info("%s: front-end adopted", self.name)
        return self

    def _run(self) -> None:
        try:
            self.loop.run()
        finally:
            if self.connection is not None:
                self.connection.close("back-end closed")
            if self._retired:  # nobody joins a retired peer's thread: it frees its loop itself
                self.loop.close()

    def _on_closed(self, conn: VhostUserConnection) -> None:
        self.last_close_reason = conn.close_reason
        if self._retired:
            log.info("%s: the front-end of the removed VM disconnected (%s)", self.name, conn.close_reason)
            self.loop.stop()
        if not self._ended:
            self._ended = True
            if self._on_end is not None:
                try:
                    self._on_end(conn.close_reason)
                except Exception:  # pragma: no cover - the owner's callback must not kill the loop
                    log.exception("%s: on_end callback failed", self.name)

    @property
    def ended(self) -> bool:
        return self._ended

    def call_soon_threadsafe(self, fn: Callable, *args) -> bool:
        return self.loop.call_soon_threadsafe(fn, *args)

    def retire(self, timeout: float = 5.0) -> bool:
        """Keep serving the front-end until it disconnects (its VM was removed: the device
        answers with an error), then end the loop thread by itself. Returns whether it was
        still connected (False: the peer is closed already)."""
        if self._thread is None:
            return False

        def on_loop() -> bool:
            self._retired = True
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
        """Whether the loop thread still runs (a retired peer: its front-end is connected)."""
        return not self.loop.closed

    def close(self, timeout: float = 5.0) -> None:
        """End the connection (device reset), stop the loop thread."""
        if self._thread is None:
            if self.connection is None:
                self._sock.close()
            return
        self.loop.stop()
        self._thread.join(timeout)
        if self._thread.is_alive():  # pragma: no cover - a device callback hung
            log.error("%s: loop thread did not stop within %.1f s", self.name, timeout)
            return
        self._thread = None
        self.loop.close()

    def status(self, timeout: float = 2.0) -> dict:
        if self._thread is None or threading.get_ident() == self.loop.thread_id:
            return self._status()
        ran, st = self.loop.call_and_wait(self._status, timeout)
        return st if ran else {"socket": self.socket_path, "connected": False, "error": "loop not responding"}

    def _status(self) -> dict:
        conn = self.connection if self.connection is not None and not self.connection.closed else None
        out = {"socket": self.socket_path, "connected": conn is not None, "connections_total": 1,
               "rejected_total": 0, "last_close_reason": self.last_close_reason,
               "lingering_regions": memory.lingering(), "requests_served": 0, "errors": 0}
        if self.connection is not None:
            st = self.connection.status() if conn is not None else None
            if st is not None:
                out.update({k: st[k] for k in ("features", "protocol_features", "queues", "unsealed_regions",
                                               "memory_faults")})
                out["requests_served"] = st["completed"]
                out["errors"] = st["malformed"] + st["device_errors"]
            else:
                totals = self.connection.totals()
                out["requests_served"] = totals["completed"]
                out["errors"] = totals["malformed"] + self.connection.stats.device_errors
        return out
