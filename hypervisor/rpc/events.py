"""Per-subscriber event queues for WatchEvents: bounded, dropping the oldest.

The hypervisor calls subscribers from whichever thread caused the event (often the
dispatcher), so ``push`` must never block: it appends under a short lock and, when the
reader is behind by EVENT_QUEUE_DEPTH events, the oldest one falls out and is counted.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable

from ..types import Event


class EventQueue:
    def __init__(self, depth: int, vm_ids: Iterable[int] = (), kinds: Iterable[str] = ()):
        self._events: deque[Event] = deque(maxlen=depth)
        self._cond = threading.Condition(threading.Lock())
        self._vm_ids = frozenset(vm_ids)
        self._kinds = frozenset(kinds)
        self.dropped = 0
        self.closed = False

    def wants(self, ev: Event) -> bool:
        if self._kinds and ev.kind not in self._kinds:
            return False
        return not self._vm_ids or ev.vm_id in self._vm_ids

    def push(self, ev: Event) -> None:
        if not self.wants(ev):
            return
        with self._cond:
            if self.closed:
                return
            if len(self._events) == self._events.maxlen:
                self.dropped += 1  # deque(maxlen) discards the oldest on append
            self._events.append(ev)
            self._cond.notify()

    def get(self, timeout: float) -> tuple[Event, int] | None:
        """The oldest queued event and the drop count so far, or None after ``timeout``
        seconds (or at once when closed and empty)."""
        with self._cond:
            if not self._events and not self.closed:
                self._cond.wait(timeout)
            if not self._events:
                return None
            return self._events.popleft(), self.dropped

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()
