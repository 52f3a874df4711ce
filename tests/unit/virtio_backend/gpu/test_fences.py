"""virtio_backend.gpu.fences: fenced completions leave in fence order, others at once."""

from __future__ import annotations

from virtio_backend.gpu.fences import FenceTimeline


def test_out_of_order_results_are_pushed_in_fence_order():
    t = FenceTimeline()
    assert t.admit("a", 5) and t.admit("b", 6) and t.admit("c", 9)
    assert t.complete("q", "c", 3) == []           # fences 5 and 6 still run
    assert t.complete("q", "plain", 1) == [("q", "plain", 1)]  # not fenced: at once
    assert t.complete("q", "b", 2) == []
    assert t.complete("q", "a", 1) == [("q", "a", 1), ("q", "b", 2), ("q", "c", 3)]
    assert t.pending == 0 and t.held_total == 2


def test_fence_ids_must_increase_and_reset_restarts_the_timeline():
    t = FenceTimeline()
    assert t.admit("a", 1)
    assert not t.admit("b", 1) and not t.admit("c", 0)
    assert t.pending == 1 and t.last_fence_id == 1
    t.reset()
    assert t.pending == 0 and t.admit("d", 1)  # a reloaded driver starts again from 1
