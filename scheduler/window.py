"""Sliding-window accounting of one VM's measured device time: what a hard cap limits.

A record is ``(ended, seconds)``: a launch that ended at monotonic time ``ended`` after
using ``seconds`` of device time. The window at time ``t`` holds the records that ended
in ``(t - W, t]``; a record counts whole, for its full length, until ``ended + W``. That
is conservative (a launch that began before the window still counts entirely), so the
cap it enforces is at least as strict as one measured by overlap (docs/scheduling.md).
"""

from __future__ import annotations

import math
from collections import deque

#: Slack for float comparisons on times and sums: far below any real launch length, and
#: large enough that ``(ended + W) - W`` rounding never leaves a record in its own window.
TIME_EPS = 1e-9


class UsageWindow:
    """Records of one VM that ended within the last ``window`` seconds, and their sum."""

    __slots__ = ("records", "total")

    def __init__(self) -> None:
        self.records: deque[tuple[float, float]] = deque()
        self.total = 0.0

    def copy(self) -> UsageWindow:
        other = UsageWindow()
        other.records = deque(self.records)
        other.total = self.total
        return other

    def add(self, ended: float, seconds: float) -> None:
        self.records.append((ended, seconds))
        self.total += seconds

    def prune(self, now: float, window: float) -> float:
        """Drop the records that left the window at ``now``; return the sum still in it."""
        records = self.records
        horizon = now - window + TIME_EPS
        while records and records[0][0] <= horizon:
            self.total -= records.popleft()[1]
        if not records:
            self.total = 0.0  # no float residue once the window is empty
        return self.total

    def time_when_at_most(self, now: float, window: float, allowed: float) -> float:
        """The earliest time ``T >= now`` at which the window's sum is at most ``allowed``,
        if nothing is added meanwhile (records only leave with time); ``inf`` when
        ``allowed`` is negative (not even an empty window would do)."""
        if allowed < -TIME_EPS:
            return math.inf
        excess = self.prune(now, window) - allowed
        if excess <= TIME_EPS:
            return now
        dropped = 0.0
        for ended, seconds in self.records:
            dropped += seconds
            if dropped >= excess - TIME_EPS:
                return max(now, ended + window)
        return max(now, self.records[-1][0] + window)  # float residue: the window empties
