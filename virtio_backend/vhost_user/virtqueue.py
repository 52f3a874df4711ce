"""One split virtqueue driven by the C core, and the requests (descriptor chains) it pops.

Spec: virtio 1.2 section 2.7 (split virtqueues), 2.7.7/2.7.10 (event index suppression).

``Virtqueue.pop()`` returns the next validated chain as a ``Request``. A malformed chain
(address outside guest memory, loop, over-long, bad indirect table, bad order, oversized)
never reaches the device: the core completes it with length 0 on the spot, and it is
counted in ``stats.malformed`` and logged. A head the driver offers again while we still
hold it is skipped (``stats.busy_heads``). An avail ring that is itself corrupt (index
jumps by more than the queue size, head out of range) marks the queue ``broken``: it pops
nothing more until the front-end restarts it, and the error eventfd is signalled.

Requests complete asynchronously and in any order: the device keeps a ``Request`` as
long as it likes (at most ``size`` are in flight), then ``push(request, written)`` and
``notify()`` on the loop thread. When the queue is stopped or the device reset, every
request in flight is invalidated: its memory views are released, ``read``/``write`` raise
``GuestMemoryError``, and a late ``push`` is counted in ``stats.dropped_late`` and never
written. Derived buffers (``numpy.frombuffer`` of a view, slices of a view) must not
outlive the request.

Every method must be called on the connection's loop thread (``RuntimeError`` otherwise).

Public API::

    Virtqueue: index, size, pop() -> Request | None, push(request, written), notify(),
               pending(), live, broken, in_flight, stats (QueueStats)
    Request:   head, readable_len, writable_len, live, read(offset, length) -> bytes,
               read_into(offset, dst) -> int, write(offset, data) -> int,
               readable_views(), writable_views()
"""

from __future__ import annotations

import errno
import logging
import threading
from dataclasses import dataclass, field

from hypervisor.errors import GuestMemoryError
from virtio_backend.core import PXQ_MAX_SEGMENTS, ffi, lib
from virtio_backend.vhost_user import notifiers
from virtio_backend.vhost_user.memory import GuestMemory

log = logging.getLogger(__name__)

#: Chains popped per call into the core: amortises the call, bounded by the batch arrays.
POP_BATCH = 64
#: Segment slots of the batch: room for POP_BATCH small chains and any worst-case one.
_BATCH_SEGS = 4 * PXQ_MAX_SEGMENTS
_SEG_SIZE = ffi.sizeof("struct pxq_seg")
#: Malformed chains logged per queue before the log falls silent (they are still counted).
_LOG_LIMIT = 20


@dataclass
class QueueStats:
    popped: int = 0
    completed: int = 0
    malformed: int = 0
    busy_heads: int = 0
    dropped_late: int = 0
    notifications: int = 0
    kicks: int = 0
    kicks_deferred: int = 0  # passes a device ended early (its budget) and resumed later
    errors_by_reason: dict[str, int] = field(default_factory=dict)


class Virtqueue:
    """A started split virtqueue (see the module docstring)."""

    def __init__(self, index: int, size: int, memory: GuestMemory, rings: tuple[int, int, int], base: int,
                 *, event_idx: bool, indirect: bool, call_fd_getter, err_fd_getter=None,
                 loop_thread: int | None = None, on_fd_error=None):
        self.index, self.size = index, size
        self.stats = QueueStats()
        self.enabled = False
        self._memory = memory
        self._call_fd = call_fd_getter
        self._err_fd = err_fd_getter or (lambda: None)
        # Called with a reason when a call/error eventfd cannot be signalled (the
        # connection resets the VM); by default the failure is only logged.
        self._on_fd_error = on_fd_error or (lambda reason: log.warning("queue %d: %s", index, reason))
        self._tid = loop_thread if loop_thread is not None else threading.get_ident()
        self._vr = ffi.new("struct pxq_vring *")
        rc = lib.pxq_vring_init(self._vr, size, rings[0], rings[1], rings[2], base, event_idx, indirect)
        if rc < 0:
            raise ValueError(f"queue {index}: ring set-up refused ({errno.errorcode.get(-rc, rc)})")
        self._chains = ffi.new("struct pxq_chain[]", POP_BATCH)
        self._segs = ffi.new("struct pxq_seg[]", _BATCH_SEGS)
        self._ready: list[Request] = []
        self._inflight: dict[int, Request] = {}
        self._live = True
        self._broken_reported = False

    # -- state ------------------------------------------------------------------------
    @property
    def live(self) -> bool:
        """False once the queue was stopped or its device reset."""
        return self._live

    @property
    def broken(self) -> bool:
        return bool(self._vr.broken)

    @property
    def last_avail(self) -> int:
        return self._vr.last_avail

    @property
    def used_idx(self) -> int:
        return self._vr.used_idx

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    def pending(self) -> int:
        """Heads the driver made available that have not been popped."""
        self._check_thread()
        if not self._live:
            return 0
        return len(self._ready) + lib.pxq_avail_pending(self._vr)

    # -- the device's calls -----------------------------------------------------------
    def pop(self) -> Request | None:
        """The next valid chain, or None when the ring is empty (guest kicks then re-armed),
        disabled, stopped or broken."""
        self._check_thread()
        if self._ready:
            return self._ready.pop()
        if not (self._live and self.enabled):
            return None
        while True:
            n = lib.pxq_pop(self._vr, self._memory.c_mem, self._chains, POP_BATCH, self._segs, _BATCH_SEGS)
            if n < 0:
                self._report_broken(n)
                return None
            if n == 0:
                if lib.pxq_enable_notify(self._vr):
                    continue  # the driver added more while we re-armed
                return None
            self._take_batch(n)
            if self._ready:
                return self._ready.pop()
            if self._vr.broken:
                self._report_broken(-errno.EPROTO)
                return None

    def push(self, request: Request, written: int) -> None:
        """Complete ``request`` with ``written`` bytes (<= its writable_len) in the used
        ring. A request of a stopped/reset queue is dropped (counted), never written."""
        self._check_thread()
        if request.queue is not self:
            raise ValueError("request belongs to another queue")
        if request._done:
            raise RuntimeError(f"request {request.head} pushed twice")
        if not 0 <= written <= request.writable_len:
            raise ValueError(f"written {written} outside 0..{request.writable_len}")
        request._done = True
        if not (self._live and request._live):
            self.stats.dropped_late += 1
            return
        del self._inflight[request.head]
        request._invalidate()
        rc = lib.pxq_push(self._vr, request.head, written)
        if rc < 0:  # pragma: no cover - in-flight bookkeeping mirrors the core's bitmap
            raise RuntimeError(f"queue {self.index}: core refused push of head {request.head}")
        self.stats.completed += 1

    def notify(self) -> None:
        """Signal the call eventfd if the driver asked for an interrupt (event index aware)."""
        self._check_thread()
        if not self._live or not lib.pxq_need_notify(self._vr):
            return
        fd = self._call_fd()
        if fd is None:
            return
        why = notifiers.signal(fd)  # never blocks: the fd was made non-blocking when set
        if why is None:
            self.stats.notifications += 1
        else:
            self._on_fd_error(f"call eventfd of queue {self.index}: {why}")

    # -- the library's calls ----------------------------------------------------------
    def _take_batch(self, n: int) -> None:
        chains, segs, memory = self._chains, self._segs, self._memory
        ready = []
        malformed = False
        for i in range(n):
            c = chains[i]
            if c.err:
                if c.err == -errno.EBUSY:
                    self.stats.busy_heads += 1
                else:
                    self.stats.malformed += 1
                    malformed = True
                reason = errno.errorcode.get(-c.err, str(c.err))
                self.stats.errors_by_reason[reason] = self.stats.errors_by_reason.get(reason, 0) + 1
                if self.stats.malformed + self.stats.busy_heads <= _LOG_LIMIT:
                    log.warning("queue %d: malformed chain at head %d (%s) completed empty",
                                self.index, c.head, reason)
                continue
            nsegs, nread = c.nsegs, c.nreadable
            own = ffi.new("struct pxq_seg[]", nsegs)
            ffi.memmove(own, segs + c.first_seg, nsegs * _SEG_SIZE)
            r0 = own[0] if nread else None
            w0 = own[nread] if nread < nsegs else None
            req = Request(self, c.head, own, nsegs, nread, c.readable_len, c.writable_len, memory,
                          (r0.host, r0.len) if r0 is not None else (0, 0),
                          (w0.host, w0.len) if w0 is not None else (0, 0))
            self._inflight[c.head] = req
            ready.append(req)
        self.stats.popped += len(ready)
        ready.reverse()  # popped from the end: keep ring order
        self._ready = ready
        if malformed:
            self.notify()

    def _report_broken(self, rc: int) -> None:
        if self._broken_reported:
            return
        self._broken_reported = True
        reason = errno.errorcode.get(-rc, str(rc))
        self.stats.errors_by_reason[f"ring:{reason}"] = 1
        log.error("queue %d: avail ring corrupt (%s); queue stopped until the driver resets it",
                  self.index, reason)
        fd = self._err_fd()
        if fd is not None:
            why = notifiers.signal(fd)
            if why is not None:
                self._on_fd_error(f"error eventfd of queue {self.index}: {why}")

    def _stop(self) -> None:
        """Invalidate every request in flight; the queue never touches guest memory again."""
        self._live = False
        self.enabled = False
        for req in self._ready:
            req._invalidate()
        for req in self._inflight.values():
            req._invalidate()
        self._ready = []
        self._inflight.clear()

    def _rebind(self, memory: GuestMemory, rings: tuple[int, int, int]) -> None:
        """A new memory table while running: same ring state, new host pointers, checked
        as at start (``ValueError`` and nothing changed when they are not valid)."""
        rc = lib.pxq_vring_rebind(self._vr, *rings)
        if rc < 0:
            raise ValueError(f"queue {self.index}: ring rebinding refused ({errno.errorcode.get(-rc, rc)})")
        self._memory = memory

    def _check_thread(self) -> None:
        if threading.get_ident() != self._tid:
            raise RuntimeError("virtqueues are used on their connection's loop thread only "
                               "(use connection.call_soon_threadsafe)")


class Request:
    """One descriptor chain: device-readable part first, then device-writable part.
    Offsets of ``read*`` count from the start of the readable part, those of ``write*``
    from the start of the writable part. Reads/writes past the end are short, never
    errors; the totals are ``readable_len`` / ``writable_len``."""

    __slots__ = ("queue", "head", "readable_len", "writable_len", "_segs", "_nsegs", "_nread",
                 "_memory", "_views", "_live", "_done", "_r0", "_w0")

    def __init__(self, queue: Virtqueue, head: int, segs, nsegs: int, nread: int, readable_len: int,
                 writable_len: int, memory: GuestMemory, first_readable=(0, 0), first_writable=(0, 0)):
        self.queue, self.head = queue, head
        # (host, len) of the first segment of each part: small headers and responses are
        # copied straight from/to it without a gather/scatter call.
        self._r0, self._w0 = first_readable, first_writable
        self.readable_len, self.writable_len = readable_len, writable_len
        self._segs, self._nsegs, self._nread = segs, nsegs, nread
        self._memory = memory
        memory.users += 1
        self._views: list[memoryview] = []
        self._live = True
        self._done = False

    @property
    def live(self) -> bool:
        """False once pushed, or once its queue was stopped / its device reset."""
        return self._live

    @property
    def memory(self) -> GuestMemory:
        """The memory table this request was popped with (to check guest addresses it names)."""
        return self._memory

    def read(self, offset: int = 0, length: int | None = None) -> bytes:
        """Gather up to ``length`` bytes (default: to the end) from ``offset``."""
        self._check(offset)
        avail = max(self.readable_len - offset, 0)
        n = avail if length is None else min(max(length, 0), avail)
        if n == 0:
            return b""
        host, seg_len = self._r0
        if offset + n <= seg_len:
            return ffi.unpack(ffi.cast("char *", host + offset), n)
        buf = ffi.new("uint8_t[]", n)
        got = lib.pxq_gather(self._segs, self._nread, offset, buf, n)
        return ffi.unpack(ffi.cast("char *", buf), got)

    def read_into(self, offset: int, dst) -> int:
        """Gather into the writable buffer ``dst`` (bytearray, memoryview, numpy array);
        returns the bytes copied (one C copy, no intermediate)."""
        self._check(offset)
        out = ffi.from_buffer(dst, require_writable=True)
        try:
            return int(lib.pxq_gather(self._segs, self._nread, offset, out, len(out)))
        finally:
            ffi.release(out)

    def write(self, offset: int, data) -> int:
        """Scatter the bytes-like ``data`` into the writable part from ``offset``; returns
        the bytes written."""
        self._check(offset)
        host, seg_len = self._w0
        kind = type(data)
        if kind is bytes or kind is bytearray or (kind is memoryview and data.contiguous):
            n = data.nbytes if kind is memoryview else len(data)
            if offset + n <= seg_len:
                ffi.memmove(ffi.cast("char *", host + offset), data, n)
                return n
        src = ffi.from_buffer(data)
        try:
            return int(lib.pxq_scatter(self._segs + self._nread, self._nsegs - self._nread, offset, src, len(src)))
        finally:
            ffi.release(src)

    def readable_views(self) -> list[memoryview]:
        """Memoryviews of the readable segments, in order (released when the request ends)."""
        self._check(0)
        return self._make_views(0, self._nread)

    def writable_views(self) -> list[memoryview]:
        """Memoryviews of the writable segments, in order (released when the request ends)."""
        self._check(0)
        return self._make_views(self._nread, self._nsegs)

    def guest_views(self, ranges) -> list[memoryview]:
        """Memoryviews of guest-physical ``(address, length)`` ranges outside the chain
        (buffers the request names, e.g. a virtio-gpu resource's backing pages), through
        the memory table the request was popped with; released when the request ends.
        ``GuestMemoryError`` when a range is not inside one region of guest memory."""
        self._check(0)
        out = [self._memory.view(gpa, n) for gpa, n in ranges]
        self._views.extend(out)
        return out

    def _make_views(self, lo: int, hi: int) -> list[memoryview]:
        regions = self._memory.regions
        out = []
        for i in range(lo, hi):
            s = self._segs[i]
            r = regions[s.region]
            off = s.host - r.host
            v = r.view[off:off + s.len]
            out.append(v)
        self._views.extend(out)
        return out

    def _check(self, offset: int) -> None:
        if not self._live:
            raise GuestMemoryError(f"request {self.head} is no longer live (completed, or its queue stopped)")
        if offset < 0:
            raise ValueError(f"negative offset {offset}")
        self.queue._check_thread()

    def _invalidate(self) -> None:
        if not self._live:
            return
        self._live = False
        for v in self._views:
            try:
                v.release()
            except BufferError:
                pass  # still exported by a derived buffer: the mapping lingers (see memory.py)
        self._views = []
        self._memory.release_user()
