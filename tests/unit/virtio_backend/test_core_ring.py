"""The C core's ring side: pop from the avail ring, push to the used ring (out of order,
batched), malformed chains completed empty, corrupt rings, event index notifications."""

from __future__ import annotations

import errno

import pytest

from tests.support.core_harness import CoreHarness
from tests.support.driver_ring import need_event
from virtio_backend.core import PXQ_MAX_SEGMENTS, ffi, lib

NEXT, WRITE = 1, 2
BUF = 0x50000


@pytest.fixture
def h():
    harness = CoreHarness(num=8)
    yield harness
    harness.close()


class Popper:
    def __init__(self, h):
        self.h = h
        self.chains = ffi.new("struct pxq_chain[]", 16)
        self.segs = ffi.new("struct pxq_seg[]", 2 * PXQ_MAX_SEGMENTS)

    def pop(self, max_chains=16):
        n = lib.pxq_pop(self.h.vr, self.h.mem, self.chains, max_chains, self.segs, 2 * PXQ_MAX_SEGMENTS)
        if n < 0:
            return n
        return [(self.chains[i].head, self.chains[i].err, self.chains[i].nsegs) for i in range(n)]


def simple(h, i):
    h.desc(i, BUF + 0x100 * i, 16, NEXT, i + 4)
    h.desc(i + 4, BUF + 0x100 * i + 0x80, 16, WRITE)


def test_pop_then_push_out_of_order(h):
    p = Popper(h)
    for i in range(3):
        simple(h, i)
    h.publish(0, 1, 2)
    assert p.pop() == [(0, 0, 2), (1, 0, 2), (2, 0, 2)]
    assert p.pop() == []
    assert h.vr.inflight_count == 3
    assert lib.pxq_push(h.vr, 2, 5) == 0
    assert lib.pxq_push(h.vr, 0, 7) == 0
    assert h.used_idx() == 2
    assert [h.used_elem(0), h.used_elem(1)] == [(2, 5), (0, 7)]
    assert lib.pxq_push(h.vr, 2, 5) == -errno.EINVAL  # not in flight any more
    assert lib.pxq_push(h.vr, 8, 0) == -errno.EINVAL  # out of range
    assert h.used_idx() == 2


def test_push_batch_is_all_or_nothing(h):
    p = Popper(h)
    for i in range(2):
        simple(h, i)
    h.publish(0, 1)
    p.pop()
    elems = ffi.new("struct pxq_used_elem[]", [(1, 3), (1, 3)])  # the same head twice
    assert lib.pxq_push_batch(h.vr, elems, 2) == -errno.EINVAL
    assert h.used_idx() == 0 and h.vr.inflight_count == 2
    elems = ffi.new("struct pxq_used_elem[]", [(1, 3), (0, 4)])
    assert lib.pxq_push_batch(h.vr, elems, 2) == 0
    assert h.used_idx() == 2 and [h.used_elem(0), h.used_elem(1)] == [(1, 3), (0, 4)]


def test_malformed_chain_is_completed_empty_at_once(h):
    p = Popper(h)
    h.desc(0, 0x10000, 16, 0)  # outside memory
    simple(h, 1)
    h.publish(0, 1)
    assert p.pop() == [(0, -errno.EFAULT, 0), (1, 0, 2)]
    assert h.used_idx() == 1 and h.used_elem(0) == (0, 0)
    assert h.vr.inflight_count == 1


def test_head_offered_again_while_in_flight_is_skipped(h):
    p = Popper(h)
    simple(h, 0)
    h.publish(0)
    p.pop()
    h.publish(0)
    assert p.pop() == [(0, -errno.EBUSY, 0)]
    assert h.used_idx() == 0 and h.vr.inflight_count == 1


def test_avail_index_jumping_past_the_ring_breaks_it(h):
    p = Popper(h)
    h.avail_idx = 9  # 9 > num heads "available"
    h.publish()
    assert p.pop() == -errno.EPROTO
    assert h.vr.broken
    assert p.pop() == -errno.EIO


def test_head_out_of_range_breaks_the_ring(h):
    p = Popper(h)
    simple(h, 0)
    h.publish(0, 8)
    assert p.pop() == [(0, 0, 2)]  # what came before the bad entry is served
    assert h.vr.broken
    assert p.pop() == -errno.EIO


def test_pop_stops_when_segment_room_runs_out(h):
    p = Popper(h)
    for i in range(3):
        simple(h, i)
    h.publish(0, 1, 2)
    n = lib.pxq_pop(h.vr, h.mem, p.chains, 16, p.segs, PXQ_MAX_SEGMENTS + 1)
    assert n == 1 and h.vr.last_avail == 1  # the others wait for the next call
    assert lib.pxq_pop(h.vr, h.mem, p.chains, 16, p.segs, PXQ_MAX_SEGMENTS - 1) == -errno.EINVAL


def test_avail_index_wraps_around_16_bits():
    h = CoreHarness(num=8)
    try:
        vr = ffi.new("struct pxq_vring *")
        assert lib.pxq_vring_init(vr, 8, h.host(h.desc_gpa), h.host(h.avail_gpa), h.host(h.used_gpa), 0xFFFE, 1, 1) == 0
        h.vr = vr
        h.avail_idx = 0xFFFE
        p = Popper(h)
        for i in range(3):
            simple(h, i)
        h.publish(0, 1, 2)
        assert [c[0] for c in p.pop()] == [0, 1, 2]
        for head in (0, 1, 2):
            assert lib.pxq_push(vr, head, 1) == 0
        assert h.used_idx() == 1 and vr.last_avail == 1
    finally:
        h.close()


def test_need_notify_with_event_index(h):
    p = Popper(h)
    for i in range(3):
        simple(h, i)
    h.publish(0, 1, 2)
    p.pop()
    assert lib.pxq_need_notify(h.vr) == 0  # nothing pushed yet
    lib.pxq_push(h.vr, 0, 1)
    h.set_used_event(7)  # the first interrupt is never suppressed, whatever used_event says
    assert lib.pxq_need_notify(h.vr) == 1
    lib.pxq_push(h.vr, 1, 1)
    h.set_used_event(5)  # driver does not want one until 6
    assert lib.pxq_need_notify(h.vr) == 0
    lib.pxq_push(h.vr, 2, 1)
    h.set_used_event(2)
    assert lib.pxq_need_notify(h.vr) == 1
    assert lib.pxq_need_notify(h.vr) == 0  # nothing new since


def test_need_notify_matches_vring_need_event_everywhere():
    h = CoreHarness(num=8)
    try:
        for old in (0, 3, 0xFFFE):
            for pushed in (1, 2, 5):
                for event in range(0, 12):
                    h.vr.signalled_used, h.vr.signalled_used_valid = old, 1
                    h.vr.used_idx = (old + pushed) & 0xFFFF
                    ev = (old + event - 3) & 0xFFFF
                    h.set_used_event(ev)
                    assert lib.pxq_need_notify(h.vr) == need_event(ev, (old + pushed) & 0xFFFF, old)
    finally:
        h.close()


def test_need_notify_without_event_index_honours_no_interrupt():
    h = CoreHarness(num=8, event_idx=False)
    try:
        p = Popper(h)
        simple(h, 0)
        simple(h, 1)
        h.publish(0, 1)
        p.pop()
        lib.pxq_push(h.vr, 0, 1)
        assert lib.pxq_need_notify(h.vr) == 1
        h.buf[h.ram.offset(h.avail_gpa)] = 1  # VRING_AVAIL_F_NO_INTERRUPT
        lib.pxq_push(h.vr, 1, 1)
        assert lib.pxq_need_notify(h.vr) == 0
    finally:
        h.close()


def test_enable_notify_sets_avail_event_and_reports_pending(h):
    p = Popper(h)
    simple(h, 0)
    h.publish(0)
    p.pop()
    assert lib.pxq_enable_notify(h.vr) == 0
    assert h.avail_event() == 1
    simple(h, 1)
    h.publish(1)
    assert lib.pxq_enable_notify(h.vr) == 1  # arrived while re-arming: pop again
    assert lib.pxq_avail_pending(h.vr) == 1
