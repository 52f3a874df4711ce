"""One VM's device worker: the thread that runs the PXOS commands that may wait.

A VM's vhost-user loop thread must never wait on the GPU (issue 17, finding 5): while it
waits, QEMU waits for its replies (GET_CONFIG, GET_VRING_BASE, a REPLY_ACK) and the VM
stalls. On a GPU a WRITE or READ waits for its copy, and the copy stream can be queued
behind another VM's running kernel (a write-back waits on the compute stream); an ALLOC
zero-fills on that stream; a COMPILE of 64 KiB of source is milliseconds of parsing. The
device hands such commands to this worker, in ring order, and gets each result back on
the loop thread (``connection.call_soon_threadsafe``), where the chain is completed.

One worker per VM (the transport owns it, so it outlives QEMU reconnects): a VM's
commands still run one at a time and in order, and one VM's slow command never delays
another VM's. Its queue is bounded by the VM's control queue (a job holds a popped
chain; at most ``queue size`` are popped and not completed).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger("pxos.virtio.gpu")

_STOP = object()


class DeviceWorker:
    """Runs ``submit``-ted callables one at a time, in order, on its own thread."""

    def __init__(self, name: str = "pxos-device-worker"):
        self.name = name
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False
        self.jobs_total = 0  # queued so far (under _lock, any thread)
        self.jobs_done = 0  # run so far (written by the worker thread only)

    def submit(self, fn: Callable[[], None]) -> bool:
        """Queue ``fn``; False (not queued) once the worker is closed."""
        return self.submit_many((fn,))

    def submit_many(self, fns, then: Callable[[], None] | None = None) -> bool:
        """Queue several callables at once, in order (one wake-up of the worker for a
        whole kick's commands), and ``then`` after them, once they count as run (it posts
        their results: ``idle()`` must not wait for that); False (none queued) once the
        worker is closed."""
        fns = tuple(fns)
        with self._lock:
            if self._closed:
                return False
            if not fns:
                return True
            if self._thread is None:  # started on first use: idle VMs cost no thread
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
            self.jobs_total += len(fns)
            self._jobs.put((fns, then))
        return True

    def _run(self) -> None:
        while True:
            item = self._jobs.get()
            if item is _STOP:
                return
            fns, then = item
            for fn in (*fns, then) if then is not None else fns:
                try:
                    fn()
                except Exception:  # a job reports its own errors; this is a bug in one
                    log.exception("%s: a device job failed", self.name)
                if fn is not then:
                    self.jobs_done += 1

    def idle(self) -> bool:
        """Whether every job queued so far has run (no wait; the VM's loop thread asks it
        before running a command itself: nothing of the VM's may still be ahead of it)."""
        return self.jobs_done == self.jobs_total

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until every job queued before this call has run; False on timeout."""
        done = threading.Event()
        if not self.submit(done.set):
            return True  # closed: close() ran what was queued
        return done.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Run what is queued, then stop the thread (waits up to ``timeout``)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
            self._jobs.put(_STOP)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                log.error("%s: still busy after %.1f s; left running", self.name, timeout)
