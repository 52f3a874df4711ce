"""Virtqueue and Request over real shared memory (a memfd mapped by the library and by a
Python driver ring), without sockets: pop, gather/scatter, out-of-order push, malformed
chains, corrupt rings, stop/invalidation, the loop-thread rule."""

from __future__ import annotations

import mmap
import os
import struct
import threading

import pytest

from hypervisor.errors import GuestMemoryError
from tests.support.driver_ring import DriverRing, GuestHeap
from virtio_backend.vhost_user.memory import GuestMemory
from virtio_backend.vhost_user.protocol import MemoryRegion
from virtio_backend.vhost_user.virtqueue import Virtqueue

SIZE = 8 << 20


class Rig:
    def __init__(self, num=8, event_idx=True):
        self.fd = os.memfd_create("pxos-test-vq", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, SIZE)
        self.mm = mmap.mmap(self.fd, SIZE)
        self.mem = memoryview(self.mm)
        self.gm = GuestMemory([MemoryRegion(0, 0xA0000, 0x10000000, 0, self.fd),
                               MemoryRegion(0xC0000, SIZE - 0xC0000, 0x100C0000, 0xC0000, self.fd)])
        self.heap = GuestHeap(1 << 20, SIZE)
        desc, avail, used = self.heap.alloc(16 * num, 4096), self.heap.alloc(6 + 2 * num), self.heap.alloc(6 + 8 * num)
        self.ring = DriverRing(self.mem, num, desc, avail, used, event_idx=event_idx)
        self.call = os.eventfd(0, os.EFD_NONBLOCK)
        self.err = os.eventfd(0, os.EFD_NONBLOCK)
        rings = tuple(self.gm.translate_gpa(a, 8) for a in (desc, avail, used))
        self.vq = Virtqueue(0, num, self.gm, rings, 0, event_idx=event_idx, indirect=True,
                            call_fd_getter=lambda: self.call, err_fd_getter=lambda: self.err)
        self.vq.enabled = True

    def chain(self, out=(), in_=(), indirect=False):
        bufs = []
        for data in out:
            g = self.heap.alloc(len(data))
            self.mem[g:g + len(data)] = data
            bufs.append((g, len(data), False))
        for n in in_:
            bufs.append((self.heap.alloc(n), n, True))
        return self.ring.add(bufs, indirect_table=self.heap.alloc(16 * len(bufs)) if indirect else None)

    def interrupts(self):
        try:
            return os.eventfd_read(self.call)
        except BlockingIOError:
            return 0

    def close(self):
        self.vq._stop()
        self.gm.close()
        self.ring = None
        self.mem.release()
        self.mm.close()
        for fd in (self.fd, self.call, self.err):
            os.close(fd)


@pytest.fixture
def rig():
    r = Rig()
    yield r
    r.close()


def test_pop_read_write_push(rig):
    h = rig.chain(out=[b"hello ", b"world"], in_=[4, 8], indirect=True)
    req = rig.vq.pop()
    assert (req.head, req.readable_len, req.writable_len) == (h, 11, 12)
    assert req.read() == b"hello world"
    assert req.read(3, 5) == b"lo wo"
    assert req.read(20) == b""
    dst = bytearray(7)
    assert req.read_into(4, dst) == 7 and dst == b"o world"
    assert [bytes(v) for v in req.readable_views()] == [b"hello ", b"world"]
    assert req.write(2, b"0123456789ABCDEF") == 10  # short: only 10 writable bytes from offset 2
    rig.vq.push(req, 12)
    rig.vq.notify()
    [(uid, ulen, chain)] = rig.ring.harvest()
    assert (uid, ulen) == (h, 12)
    w = [g for g, n, wr in chain.buffers if wr]
    assert bytes(rig.mem[w[0] + 2:w[0] + 4]) + bytes(rig.mem[w[1]:w[1] + 8]) == b"0123456789"
    assert rig.interrupts() == 1
    assert rig.vq.pop() is None


def test_out_of_order_completion_and_in_flight_bound(rig):
    heads = [rig.chain(out=[bytes([i])], in_=[1]) for i in range(4)]
    reqs = [rig.vq.pop() for _ in range(4)]
    assert [r.head for r in reqs] == heads and rig.vq.in_flight == 4
    for r in reversed(reqs):
        r.write(0, r.read())
        rig.vq.push(r, 1)
    assert [u for u, _, _ in rig.ring.harvest()] == list(reversed(heads))
    assert rig.vq.stats.completed == 4 and rig.vq.in_flight == 0


def test_malformed_chain_never_reaches_the_device(rig):
    bad = rig.ring.add_raw({0: (0xA0000, 16, 0, 0)}, head=0)  # in the hole below 768 KiB
    good = rig.chain(out=[b"x"], in_=[1])
    req = rig.vq.pop()
    assert req.head == good
    assert rig.vq.stats.malformed == 1 and rig.vq.stats.errors_by_reason == {"EFAULT": 1}
    assert [(u, n) for u, n, _ in rig.ring.harvest()] == [(bad, 0)]
    assert rig.interrupts() == 1  # the empty completion was signalled


def test_head_reoffered_while_in_flight_is_skipped(rig):
    h = rig.chain(out=[b"x"], in_=[1])
    req = rig.vq.pop()
    rig.ring.publish([h])
    assert rig.vq.pop() is None
    assert rig.vq.stats.busy_heads == 1
    rig.vq.push(req, 0)


def test_corrupt_avail_ring_breaks_only_the_queue(rig):
    rig.ring.set_avail_idx(100)
    assert rig.vq.pop() is None
    assert rig.vq.broken
    assert os.eventfd_read(rig.err) == 1
    assert rig.vq.pop() is None


def test_stop_invalidates_requests_and_drops_late_pushes(rig):
    rig.chain(out=[b"abc"], in_=[4])
    req = rig.vq.pop()
    view = req.writable_views()[0]
    rig.vq._stop()
    assert not req.live and not rig.vq.live
    with pytest.raises(GuestMemoryError):
        req.read()
    with pytest.raises(ValueError):
        view[0] = 1  # released: the device cannot reach guest memory through it
    used_before = rig.ring.used_idx()
    rig.vq.push(req, 4)
    assert rig.vq.stats.dropped_late == 1 and rig.ring.used_idx() == used_before
    assert rig.vq.pop() is None
    assert rig.gm.users == 0


def test_device_mistakes_raise(rig):
    rig.chain(out=[b"abc"], in_=[4])
    req = rig.vq.pop()
    with pytest.raises(ValueError):
        rig.vq.push(req, 5)
    with pytest.raises(ValueError):
        req.read(-1)
    rig.vq.push(req, 4)
    with pytest.raises(RuntimeError, match="twice"):
        rig.vq.push(req, 4)
    with pytest.raises(GuestMemoryError):
        req.write(0, b"late")


def test_only_the_loop_thread_may_use_the_queue(rig):
    rig.chain(out=[b"abc"], in_=[4])
    errors = []

    def other():
        try:
            rig.vq.pop()
        except RuntimeError as exc:
            errors.append(exc)

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert errors and "loop thread" in str(errors[0])


def test_disabled_queue_pops_nothing(rig):
    rig.chain(out=[b"abc"], in_=[4])
    rig.vq.enabled = False
    assert rig.vq.pop() is None
    rig.vq.enabled = True
    assert rig.vq.pop() is not None


def test_event_index_suppresses_unwanted_interrupts(rig):
    for _ in range(3):
        rig.chain(out=[b"a"], in_=[1])
    reqs = [rig.vq.pop() for _ in range(3)]
    rig.vq.push(reqs[0], 0)
    rig.vq.notify()
    assert rig.interrupts() == 1
    struct.pack_into("<H", rig.mem, rig.ring.avail + 4 + 2 * rig.ring.num, 10)  # used_event far ahead
    rig.vq.push(reqs[1], 0)
    rig.vq.notify()
    assert rig.interrupts() == 0
    rig.ring.harvest()
    rig.ring.arm_interrupt()  # used_event = 2: the next completion interrupts
    rig.vq.push(reqs[2], 0)
    rig.vq.notify()
    assert rig.interrupts() == 1


def test_pop_rearms_kicks_with_avail_event(rig):
    rig.chain(out=[b"a"], in_=[1])
    req = rig.vq.pop()
    assert rig.vq.pop() is None
    avail_event = struct.unpack_from("<H", rig.mem, rig.ring.used + 4 + 8 * rig.ring.num)[0]
    assert avail_event == 1
    rig.ring.kicked_at = rig.ring.avail_idx
    rig.chain(out=[b"b"], in_=[1])
    assert rig.ring.kick_needed()
    rig.vq.push(req, 0)


@pytest.mark.parametrize("data", [b"abcdef", bytearray(b"abcdef"), memoryview(b"xxabcdef")[2:],
                                  memoryview(bytearray(b"abcdef")).cast("H")])
def test_write_accepts_bytes_like_in_one_segment_or_across(rig, data):
    rig.chain(out=[b"h"], in_=[8, 8])
    req = rig.vq.pop()
    assert req.write(1, data) == 6  # inside the first writable segment
    assert req.write(5, data) == 6  # across both
    chain = rig.ring.chains[req.head]
    w = [g for g, n, wr in chain.buffers if wr]
    assert bytes(rig.mem[w[0]:w[0] + 8]) + bytes(rig.mem[w[1]:w[1] + 8]) == b"\0abcdabcdef\0\0\0\0\0"
    assert req.read(0, 1) == b"h"
    rig.vq.push(req, 11)
