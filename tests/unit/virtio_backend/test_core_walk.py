"""The C core's chain walker: valid chains give the right segments; every malformed
shape a guest can build gives its errno and no segment."""

from __future__ import annotations

import errno

import pytest

from tests.support.core_harness import CoreHarness
from virtio_backend.core import PXQ_MAX_CHAIN_BYTES, PXQ_MAX_INDIRECT_DESCS, PXQ_MAX_SEGMENTS, lib

NEXT, WRITE, INDIRECT = 1, 2, 4
BUF = 0x50000  # a data area inside region 2


@pytest.fixture
def h():
    harness = CoreHarness(num=16)
    yield harness
    harness.close()


def test_direct_chain_gives_readable_then_writable_segments(h):
    h.desc(3, BUF, 100, NEXT, 7)
    h.desc(7, BUF + 0x1000, 50, NEXT | WRITE, 9)
    h.desc(9, BUF + 0x2000, 30, WRITE)
    n, segs, out = h.walk(3)
    assert n == 3
    assert segs == [(BUF, 100, False), (BUF + 0x1000, 50, True), (BUF + 0x2000, 30, True)]
    assert (out.head, out.nreadable, out.readable_len, out.writable_len) == (3, 1, 100, 80)


def test_indirect_chain(h):
    table = 0x60000
    h.desc(0, BUF, 16, NEXT, 1, table=table)
    h.desc(1, BUF + 0x100, 64, WRITE, 0, table=table)
    h.desc(5, table, 32, INDIRECT)
    n, segs, out = h.walk(5)
    assert segs == [(BUF, 16, False), (BUF + 0x100, 64, True)]
    assert out.head == 5


def test_buffer_across_adjacent_regions_is_split(h):
    h.desc(0, 0x7F00, 0x200, 0)  # region 0 ends at 0x8000, region 1 starts there
    n, segs, _ = h.walk(0)
    assert segs == [(0x7F00, 0x100, False), (0x8000, 0x100, False)]


@pytest.mark.parametrize("addr,length", [
    (0x10000, 16),                 # in the gap between regions 1 and 2
    (0x80000, 16),                 # past the end of guest memory
    (0x7FFF0, 0x20),               # starts inside, ends outside
    (0xFFFFFFFFFFFFFFF0, 0x20),    # addr + len wraps around 2^64
    (0xFFFFFFFFFFFFFFFF, 1),
])
def test_buffer_outside_guest_memory(h, addr, length):
    h.desc(0, addr, length, 0)
    assert h.walk(0)[0] == -errno.EFAULT


def test_head_out_of_range(h):
    assert h.walk(16)[0] == -errno.ERANGE


def test_next_out_of_range(h):
    h.desc(0, BUF, 8, NEXT, 16)
    assert h.walk(0)[0] == -errno.ERANGE


def test_looping_chain(h):
    h.desc(0, BUF, 8, NEXT, 1)
    h.desc(1, BUF, 8, NEXT, 0)
    assert h.walk(0)[0] == -errno.ELOOP


def test_self_loop(h):
    h.desc(4, BUF, 8, NEXT, 4)
    assert h.walk(4)[0] == -errno.ELOOP


def test_chain_using_every_descriptor_is_fine_one_more_is_a_loop(h):
    for i in range(16):
        h.desc(i, BUF + 64 * i, 8, NEXT if i < 15 else 0, i + 1 if i < 15 else 0)
    assert h.walk(0)[0] == 16
    h.desc(15, BUF, 8, NEXT, 0)  # back to the start: 17th visit
    assert h.walk(0)[0] == -errno.ELOOP


def test_zero_length_descriptor(h):
    h.desc(0, BUF, 0, 0)
    assert h.walk(0)[0] == -errno.EINVAL


def test_readable_after_writable(h):
    h.desc(0, BUF, 8, NEXT | WRITE, 1)
    h.desc(1, BUF, 8, 0)
    assert h.walk(0)[0] == -errno.EINVAL


def test_oversized_lengths(h):
    h.desc(0, BUF, 0xFFFFFFFF, 0)  # checked against the cap before memory
    assert h.walk(0)[0] == -errno.EFBIG
    h.desc(0, BUF, PXQ_MAX_CHAIN_BYTES + 1, WRITE)
    assert h.walk(0)[0] == -errno.EFBIG


def test_totals_up_to_the_cap_are_accepted(h):
    # 1024 descriptors of 256 KiB (all of region 2 each time): exactly the cap
    table, size = 0x60000, 0x40000
    assert PXQ_MAX_INDIRECT_DESCS * size == PXQ_MAX_CHAIN_BYTES
    for i in range(PXQ_MAX_INDIRECT_DESCS):
        h.desc(i, 0x40000, size, NEXT if i < PXQ_MAX_INDIRECT_DESCS - 1 else 0, i + 1, table=table)
    h.desc(0, table, 16 * PXQ_MAX_INDIRECT_DESCS, INDIRECT)
    n, _, out = h.walk(0)
    assert n == PXQ_MAX_INDIRECT_DESCS and out.readable_len == PXQ_MAX_CHAIN_BYTES


class TestIndirect:
    table = 0x60000

    def test_not_negotiated(self):
        h = CoreHarness(num=16, indirect=False)
        try:
            h.desc(0, BUF, 8, table=self.table)
            h.desc(0, self.table, 16, INDIRECT)
            assert h.walk(0)[0] == -errno.EINVAL
        finally:
            h.close()

    def test_nested(self, h):
        h.desc(0, self.table + 0x100, 16, INDIRECT, table=self.table)
        h.desc(0, self.table, 16, INDIRECT)
        assert h.walk(0)[0] == -errno.EINVAL

    def test_with_next_flag(self, h):
        h.desc(0, BUF, 8, table=self.table)
        h.desc(0, self.table, 16, INDIRECT | NEXT, 1)
        assert h.walk(0)[0] == -errno.EINVAL

    def test_not_at_head(self, h):
        h.desc(0, BUF, 8, table=self.table)
        h.desc(0, BUF, 8, NEXT, 1)
        h.desc(1, self.table, 16, INDIRECT)
        assert h.walk(0)[0] == -errno.EINVAL

    @pytest.mark.parametrize("length", [0, 15, 24, 16 * (PXQ_MAX_INDIRECT_DESCS + 1)])
    def test_bad_table_length(self, h, length):
        h.desc(0, self.table, length, INDIRECT)
        assert h.walk(0)[0] == -errno.EINVAL

    def test_table_outside_memory(self, h):
        h.desc(0, 0x10000, 32, INDIRECT)
        assert h.walk(0)[0] == -errno.EFAULT

    def test_misaligned_table(self, h):
        h.desc(0, BUF, 8, table=self.table + 4)
        h.desc(0, self.table + 4, 16, INDIRECT)
        assert h.walk(0)[0] == -errno.EINVAL

    def test_next_outside_table(self, h):
        h.desc(0, BUF, 8, NEXT, 2, table=self.table)
        h.desc(1, BUF, 8, 0, table=self.table)
        h.desc(0, self.table, 32, INDIRECT)
        assert h.walk(0)[0] == -errno.ERANGE

    def test_loop_inside_table(self, h):
        h.desc(0, BUF, 8, NEXT, 1, table=self.table)
        h.desc(1, BUF, 8, NEXT, 0, table=self.table)
        h.desc(0, self.table, 32, INDIRECT)
        assert h.walk(0)[0] == -errno.ELOOP

    def test_too_many_segments(self, h):
        # every entry crosses the region 0/1 boundary: two segments each
        n = PXQ_MAX_INDIRECT_DESCS
        for i in range(n):
            h.desc(i, 0x7FF0, 0x20, NEXT if i < n - 1 else 0, i + 1, table=self.table)
        h.desc(0, self.table, 16 * n, INDIRECT)
        assert h.walk(0, max_segs=PXQ_MAX_SEGMENTS)[0] == -errno.E2BIG
        assert h.walk(0, max_segs=2 * n)[0] == 2 * n


def test_gather_and_scatter_follow_segment_order(h):
    h.desc(0, 0x7FF8, 16, NEXT, 1)            # split 8 + 8 across regions 0/1
    h.desc(1, BUF, 4, NEXT | WRITE, 2)
    h.desc(2, 0x7FFC, 8, WRITE)               # split 4 + 4
    h.buf[h.ram.offset(0x7FF8):h.ram.offset(0x7FF8) + 8] = b"abcdefgh"
    h.buf[h.ram.offset(0x8000):h.ram.offset(0x8000) + 8] = b"ijklmnop"
    from virtio_backend.core import ffi

    segs = ffi.new("struct pxq_seg[]", 16)
    out = ffi.new("struct pxq_chain *")
    assert lib.pxq_walk_chain(h.vr, h.mem, 0, segs, 16, out) == 5
    dst = bytearray(10)
    assert lib.pxq_gather(segs, out.nreadable, 5, ffi.from_buffer(dst), 10) == 10
    assert dst == b"fghijklmno"
    assert lib.pxq_gather(segs, out.nreadable, 14, ffi.from_buffer(dst), 10) == 2
    src = b"0123456789AB"
    w = out.nsegs - out.nreadable
    assert lib.pxq_scatter(segs + out.nreadable, w, 2, ffi.from_buffer(src), len(src)) == 10
    got = (bytes(h.buf[h.ram.offset(BUF):h.ram.offset(BUF) + 4]) + bytes(h.buf[h.ram.offset(0x7FFC):h.ram.offset(0x7FFC) + 4])
           + bytes(h.buf[h.ram.offset(0x8000):h.ram.offset(0x8000) + 4]))
    assert got[2:] == b"0123456789"


@pytest.mark.parametrize("num,desc,avail,used", [
    (0, 0x1000, 0x2000, 0x3000), (3, 0x1000, 0x2000, 0x3000), (2048, 0x1000, 0x2000, 0x3000),
    (16, 0x1008, 0x2000, 0x3000), (16, 0x1000, 0x2001, 0x3000), (16, 0x1000, 0x2000, 0x3002),
    (16, 0, 0x2000, 0x3000),
])
def test_vring_init_refuses_bad_sizes_and_alignment(num, desc, avail, used):
    from virtio_backend.core import ffi

    vr = ffi.new("struct pxq_vring *")
    assert lib.pxq_vring_init(vr, num, desc, avail, used, 0, 1, 1) == -errno.EINVAL
