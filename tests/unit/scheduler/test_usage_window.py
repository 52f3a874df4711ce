"""The sliding window a cap reads."""

from __future__ import annotations

import math

from scheduler.window import UsageWindow


def test_records_leave_the_window_after_it_passes():
    w = UsageWindow()
    w.add(1.0, 0.2)
    w.add(1.5, 0.3)
    assert w.prune(1.9, 1.0) == 0.5
    assert math.isclose(w.prune(2.0, 1.0), 0.3)  # the record that ended at 1.0 is out at 2.0
    assert w.prune(2.5, 1.0) == 0.0 and not w.records


def test_time_when_at_most():
    w = UsageWindow()
    for ended in (1.0, 1.2, 1.4):
        w.add(ended, 0.1)
    assert w.time_when_at_most(1.5, 1.0, 0.3) == 1.5  # already fits
    assert w.time_when_at_most(1.5, 1.0, 0.15) == 2.2  # two records must leave
    assert w.time_when_at_most(1.5, 1.0, 0.0) == 2.4  # all of them
    assert w.time_when_at_most(1.5, 1.0, -0.1) == math.inf  # nothing would do
    # At the time it names, the window really holds what was asked for.
    assert w.prune(2.2, 1.0) <= 0.15


def test_copy_is_independent():
    w = UsageWindow()
    w.add(1.0, 0.5)
    c = w.copy()
    c.add(1.1, 0.5)
    assert w.total == 0.5 and len(w.records) == 1 and c.total == 1.0
