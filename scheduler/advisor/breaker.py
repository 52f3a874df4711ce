"""A circuit breaker for the advisor's endpoint (pure; the clock is passed in).

``closed``: requests go out. After ``failures`` failed requests in a row it opens: no
request for ``open_seconds``. Then one trial request goes out (``half_open``): success
closes it, failure opens it again for twice as long, up to ``max_open_seconds``.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class CircuitBreaker:
    def __init__(self, failures: int = 3, open_seconds: float = 30.0, max_open_seconds: float = 600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if failures < 1 or open_seconds <= 0 or max_open_seconds < open_seconds:
            raise ValueError("breaker: failures >= 1 and 0 < open_seconds <= max_open_seconds")
        self.failures, self.open_seconds, self.max_open_seconds = failures, open_seconds, max_open_seconds
        self._clock = clock
        self._in_a_row = 0
        self._opened_at: float | None = None
        self._open_for = open_seconds
        self.opened_total = 0

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        return "open" if self._clock() - self._opened_at < self._open_for else "half_open"

    def allow(self) -> bool:
        return self.state != "open"

    def success(self) -> None:
        self._in_a_row, self._opened_at, self._open_for = 0, None, self.open_seconds

    def failure(self) -> None:
        if self._opened_at is not None:  # the half-open trial failed: open again, longer
            self._open_for = min(self._open_for * 2, self.max_open_seconds)
            self._opened_at = self._clock()
            self.opened_total += 1
            return
        self._in_a_row += 1
        if self._in_a_row >= self.failures:
            self._opened_at = self._clock()
            self.opened_total += 1
