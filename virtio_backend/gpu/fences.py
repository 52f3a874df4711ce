"""The device's one fence timeline: fenced requests are completed in fence order.

A virtio-gpu driver without CONTEXT_INIT (every guest on stock QEMU's vhost-user-gpu)
has one fence timeline per device: when a response carrying fence N arrives, Linux's
``virtio_gpu_fence_event_process`` signals every earlier fence of the device too, and
``last_fence_id`` makes them read as signaled. So a fenced request may finish out of
order (another context's LAUNCH runs longer; execution is not serialized), but its
*completion* (the used-ring entry) must wait until every earlier fenced request of the
device was completed. ``FenceTimeline`` is that reorder buffer: ``admit`` a fenced request
when it is popped (its fence id must be larger than any before it: the driver emits them
increasing under its queue lock, so anything else is a hostile or broken frontend), and
``complete`` returns the requests that may be pushed now, in order.

Loop thread only. ``reset`` forgets everything (the rings stopped; the library already
invalidated the requests held here).
"""

from __future__ import annotations

from collections import OrderedDict

_WAITING = None


class FenceTimeline:
    def __init__(self) -> None:
        self.last_fence_id = 0
        # request -> None while it runs, (queue, written) once its response is written
        self._pending: OrderedDict[object, tuple | None] = OrderedDict()
        self.held_total = 0  # completions that had to wait for an earlier fence

    @property
    def pending(self) -> int:
        return len(self._pending)

    def admit(self, req, fence_id: int) -> bool:
        """Register a fenced request in arrival order; False (nothing registered) when its
        fence id does not increase the timeline."""
        if fence_id <= self.last_fence_id:
            return False
        self.last_fence_id = fence_id
        self._pending[req] = _WAITING
        return True

    def complete(self, queue, req, written: int) -> list[tuple]:
        """``(queue, req, written)`` of every request that may be pushed now: this one
        alone when it is not fenced, else the run of finished fenced requests at the
        front of the timeline (possibly none: an earlier fence is still running)."""
        pending = self._pending
        if req not in pending:
            return [(queue, req, written)]
        pending[req] = (queue, written)
        out = []
        while pending:
            first = next(iter(pending))
            done = pending[first]
            if done is _WAITING:
                break
            del pending[first]
            out.append((done[0], first, done[1]))
        if req in pending:
            self.held_total += 1
        return out

    def reset(self) -> None:
        self.last_fence_id = 0
        self._pending.clear()
