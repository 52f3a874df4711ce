"""A guest memory laid out for C-core tests: one anonymous mapping, three regions (two
adjacent in guest-physical space but not in ours, then a gap), a ``struct pxq_mem`` over
it, the same layout as a ``ref_walker.GuestRam``, and ring helpers. No sockets."""

from __future__ import annotations

import mmap
import struct

from tests.support.ref_walker import DESC, GuestRam, Region
from virtio_backend.core import ffi, lib

#: (gpa, size, offset in the buffer)
LAYOUT = [(0x0000, 0x8000, 0x00000), (0x8000, 0x8000, 0x10000), (0x40000, 0x40000, 0x20000)]
BUF_SIZE = 0x60000
RING_GPA = 0x40000  # desc table; avail and used follow
USED_ELEM = struct.Struct("<II")


class CoreHarness:
    def __init__(self, num: int = 16, *, event_idx: bool = True, indirect: bool = True):
        self.mm = mmap.mmap(-1, BUF_SIZE)
        self.buf = memoryview(self.mm)
        self._anchor = ffi.from_buffer("char[]", self.mm, require_writable=True)
        self.base = int(ffi.cast("uintptr_t", self._anchor))
        self.mem = ffi.new("struct pxq_mem *")
        for i, (gpa, size, off) in enumerate(LAYOUT):
            r = self.mem.regions[i]
            r.gpa, r.size, r.qva, r.host = gpa, size, 0x7F0000000000 + off, self.base + off
        self.mem.nregions = len(LAYOUT)
        self.ram = GuestRam(self.buf, [Region(g, s, o) for g, s, o in LAYOUT])
        self.num = num
        self.desc_gpa = RING_GPA
        self.avail_gpa = RING_GPA + 16 * num
        self.used_gpa = (self.avail_gpa + 6 + 2 * num + 3) & ~3
        self.vr = ffi.new("struct pxq_vring *")
        rc = lib.pxq_vring_init(self.vr, num, self.host(self.desc_gpa), self.host(self.avail_gpa),
                                self.host(self.used_gpa), 0, event_idx, indirect)
        assert rc == 0, rc
        self.avail_idx = 0

    def host(self, gpa: int) -> int:
        return self.base + self.ram.offset(gpa)

    def to_gpa(self, host: int) -> int:
        off = host - self.base
        for gpa, size, o in LAYOUT:
            if o <= off < o + size:
                return gpa + off - o
        raise AssertionError(f"host {host:#x} outside every region")

    def desc(self, i: int, addr: int, length: int, flags: int = 0, nxt: int = 0, *, table: int | None = None):
        DESC.pack_into(self.buf, self.ram.offset((self.desc_gpa if table is None else table) + 16 * i),
                       addr, length, flags, nxt)

    def publish(self, *heads: int) -> None:
        for h in heads:
            struct.pack_into("<H", self.buf, self.ram.offset(self.avail_gpa + 4 + 2 * (self.avail_idx % self.num)), h)
            self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        struct.pack_into("<H", self.buf, self.ram.offset(self.avail_gpa + 2), self.avail_idx)

    def used_idx(self) -> int:
        return struct.unpack_from("<H", self.buf, self.ram.offset(self.used_gpa + 2))[0]

    def used_elem(self, slot: int) -> tuple[int, int]:
        return USED_ELEM.unpack_from(self.buf, self.ram.offset(self.used_gpa + 4 + 8 * (slot % self.num)))

    def set_used_event(self, value: int) -> None:
        struct.pack_into("<H", self.buf, self.ram.offset(self.avail_gpa + 4 + 2 * self.num), value)

    def avail_event(self) -> int:
        return struct.unpack_from("<H", self.buf, self.ram.offset(self.used_gpa + 4 + 8 * self.num))[0]

    def walk(self, head: int, max_segs: int = 1024):
        segs = ffi.new("struct pxq_seg[]", max_segs)
        out = ffi.new("struct pxq_chain *")
        rc = lib.pxq_walk_chain(self.vr, self.mem, head, segs, max_segs, out)
        if rc < 0:
            return rc, [], None
        return rc, [(self.to_gpa(segs[i].host), segs[i].len, bool(segs[i].writable)) for i in range(rc)], out

    def close(self) -> None:
        ffi.release(self._anchor)
        self.buf.release()
        self.mm.close()
