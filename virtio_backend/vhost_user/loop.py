"""The event loop of one vhost-user socket: a selector over fds, run on one thread.

Python owns the loop (the C core has no threads and no sockets). Readers are plain
callbacks on readable fds (the listening socket, the connection socket, kick eventfds).
``call_soon_threadsafe`` queues a function from any thread and wakes the loop through an
eventfd, so the hypervisor's dispatcher hands completions back to the loop thread, where
the device pushes used elements.
"""

from __future__ import annotations

import collections
import logging
import os
import selectors
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class EventLoop:
    """A minimal single-thread loop: readers, thread-safe callbacks, periodic ticks."""

    def __init__(self, name: str = "vhost-user"):
        self.name = name
        self._sel = selectors.DefaultSelector()
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._sel.register(self._wake_fd, selectors.EVENT_READ, self._drain_wake)
        self._callbacks: collections.deque = collections.deque()
        self._ticks: list[tuple[float, Callable[[], None]]] = []
        self._after: list[Callable[[], None]] = []
        self._stopping = False
        self._closed = False
        # Guards the wake fd against close(): a write to a closed (and reused) fd number
        # could land in some other file.
        self._lock = threading.Lock()
        self.thread_id: int | None = None

    # -- any thread -------------------------------------------------------------------
    def call_soon_threadsafe(self, fn: Callable, *args) -> bool:
        """Run ``fn(*args)`` on the loop thread soon; False if the loop is closed (the
        call is dropped: whatever it completes belongs to a device that is gone)."""
        with self._lock:
            if self._closed:
                return False
            self._callbacks.append((fn, args))
            os.eventfd_write(self._wake_fd, 1)
        return True

    def call_and_wait(self, fn: Callable[[], Any], timeout: float) -> tuple[bool, Any]:
        """Run ``fn()`` on the loop thread and wait for it: (True, its result), or (False,
        None) when the loop is closed or did not run it within ``timeout`` seconds."""
        box: list = []
        done = threading.Event()

        def run() -> None:
            box.append(fn())
            done.set()

        if not self.call_soon_threadsafe(run) or not done.wait(timeout):
            return False, None
        return True, box[0]

    def stop(self) -> None:
        """Ask ``run`` to return (thread-safe)."""
        self._stopping = True
        self.call_soon_threadsafe(lambda: None)

    # -- loop thread --------------------------------------------------------------------
    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        self._sel.register(fd, selectors.EVENT_READ, callback)

    def remove_reader(self, fd: int) -> None:
        try:
            self._sel.unregister(fd)
        except (KeyError, ValueError):
            pass

    def after_each(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` on the loop thread after every pass (handlers and callbacks run):
        a cheap check that must follow whatever a handler did (the SIGBUS guard's count)."""
        self._after.append(fn)

    def remove_after(self, fn: Callable[[], None]) -> None:
        if fn in self._after:
            self._after.remove(fn)

    def every(self, period_s: float, fn: Callable[[], None]) -> None:
        """Call ``fn`` on the loop thread about every ``period_s`` seconds."""
        self._ticks.append((period_s, fn))

    def run(self) -> None:
        self.thread_id = threading.get_ident()
        next_tick = {i: time.monotonic() + p for i, (p, _) in enumerate(self._ticks)}
        while not self._stopping:
            timeout = None
            if next_tick:
                timeout = max(0.0, min(next_tick.values()) - time.monotonic())
            for key, _ in self._sel.select(timeout):
                if self._sel.get_map().get(key.fd) is not key:
                    # Removed (or replaced) by a handler earlier in this pass: the readiness was
                    # the old file's (a hung-up connection a new front-end's accept just ended).
                    continue
                try:
                    key.data()
                except Exception:
                    log.exception("%s: handler of fd %d failed", self.name, key.fd)
            self._run_callbacks()
            for fn in tuple(self._after):
                try:
                    fn()
                except Exception:
                    log.exception("%s: after-pass check failed", self.name)
            now = time.monotonic()
            for i, (period, fn) in enumerate(self._ticks):
                if now >= next_tick[i]:
                    next_tick[i] = now + period
                    try:
                        fn()
                    except Exception:
                        log.exception("%s: periodic task failed", self.name)
        self._run_callbacks()

    def _drain_wake(self) -> None:
        try:
            os.eventfd_read(self._wake_fd)
        except BlockingIOError:
            pass

    def _run_callbacks(self) -> None:
        # Only what is queued now: a callback that queues another does not starve fds.
        for _ in range(len(self._callbacks)):
            fn, args = self._callbacks.popleft()
            try:
                fn(*args)
            except Exception:
                log.exception("%s: callback %r failed", self.name, fn)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Release the selector and the wake eventfd (after ``run`` returned)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._callbacks.clear()
            self._sel.close()
            os.close(self._wake_fd)
