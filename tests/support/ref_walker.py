"""A reference descriptor-chain walker in pure Python, written from virtio 1.2 section
2.7.5 and the limits documented in ``virtio_backend/core/pxq_core.h``.

It exists to check the C core (the property tests demand the two agree: same segments
for valid chains, same errno for invalid ones) and as the pure-Python baseline of
``bench/bench_vhost.py``. It reads guest memory through ``GuestRam`` (regions over one
buffer, addressed by guest-physical address) and returns segments as (gpa, len, writable).
"""

from __future__ import annotations

import errno
import struct
from dataclasses import dataclass

from virtio_backend.core import PXQ_MAX_CHAIN_BYTES, PXQ_MAX_INDIRECT_DESCS, PXQ_MAX_SEGMENTS

DESC = struct.Struct("<QIHH")
F_NEXT, F_WRITE, F_INDIRECT = 1, 2, 4


@dataclass(frozen=True)
class Region:
    gpa: int
    size: int
    offset: int  # where the region starts in the backing buffer


class WalkError(Exception):
    def __init__(self, code: int):
        super().__init__(errno.errorcode.get(code, str(code)))
        self.code = code


class GuestRam:
    def __init__(self, buf, regions: list[Region]):
        self.buf, self.regions = buf, regions

    def find(self, gpa: int) -> Region | None:
        for r in self.regions:
            if r.gpa <= gpa < r.gpa + r.size:
                return r
        return None

    def inside(self, gpa: int, length: int) -> Region | None:
        r = self.find(gpa)
        if r is not None and length <= r.size - (gpa - r.gpa):
            return r
        return None

    def offset(self, gpa: int) -> int:
        r = self.find(gpa)
        return r.offset + gpa - r.gpa


def walk(ram: GuestRam, table_gpa: int, num: int, head: int, *, indirect_ok: bool = True,
         max_segs: int = PXQ_MAX_SEGMENTS) -> tuple[list[tuple[int, int, bool]], int, int]:
    """(segments, readable_len, writable_len) of the chain at ``head``; raises WalkError."""
    if num == 0 or head >= num:
        raise WalkError(errno.ERANGE)
    table, table_num, budget, idx = table_gpa, num, num, head
    in_indirect, seen_writable = False, False
    segs: list[tuple[int, int, bool]] = []
    rlen = wlen = 0
    while True:
        if budget == 0:
            raise WalkError(errno.ELOOP)
        budget -= 1
        addr, length, flags, nxt = DESC.unpack_from(ram.buf, ram.offset(table + 16 * idx))
        if flags & F_INDIRECT:
            if not indirect_ok or in_indirect or idx != head or flags & F_NEXT:
                raise WalkError(errno.EINVAL)
            if length == 0 or length % 16 or length // 16 > PXQ_MAX_INDIRECT_DESCS:
                raise WalkError(errno.EINVAL)
            if ram.inside(addr, length) is None:
                raise WalkError(errno.EFAULT)
            if ram.offset(addr) % 8:
                raise WalkError(errno.EINVAL)
            table, table_num, budget, idx, in_indirect = addr, length // 16, length // 16, 0, True
            continue
        if length == 0:
            raise WalkError(errno.EINVAL)
        writable = bool(flags & F_WRITE)
        if writable:
            seen_writable = True
            wlen += length
            if wlen > PXQ_MAX_CHAIN_BYTES:
                raise WalkError(errno.EFBIG)
        else:
            if seen_writable:
                raise WalkError(errno.EINVAL)
            rlen += length
            if rlen > PXQ_MAX_CHAIN_BYTES:
                raise WalkError(errno.EFBIG)
        gpa, left = addr, length
        while left:
            r = ram.find(gpa)
            if r is None:
                raise WalkError(errno.EFAULT)
            if len(segs) >= max_segs:
                raise WalkError(errno.E2BIG)
            piece = min(left, r.size - (gpa - r.gpa))
            segs.append((gpa, piece, writable))
            gpa += piece
            left -= piece
        if not flags & F_NEXT:
            return segs, rlen, wlen
        if nxt >= table_num:
            raise WalkError(errno.ERANGE)
        idx = nxt
