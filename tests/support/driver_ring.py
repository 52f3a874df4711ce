"""The driver side of a split virtqueue, in plain Python: what a guest's virtio driver does.

An implementation independent of the back-end's C core (virtio 1.2 section 2.7, written
from the spec), so tests that drive the back-end through it check the core rather than
mirror it. It writes descriptors (direct and indirect) into guest memory, publishes heads
in the avail ring, honours event index for kicks, asks for interrupts through used_event
and reads the used ring. Raw helpers write arbitrary (malformed) descriptors for faults.

Python stores to an mmap are plain stores in program order; x86 keeps store order, so the
avail entry is visible before the avail index without an explicit fence (as on the guest).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

VRING_DESC_F_NEXT = 1
VRING_DESC_F_WRITE = 2
VRING_DESC_F_INDIRECT = 4
VRING_AVAIL_F_NO_INTERRUPT = 1
VRING_USED_F_NO_NOTIFY = 1

DESC = struct.Struct("<QIHH")
U16 = struct.Struct("<H")
USED_ELEM = struct.Struct("<II")


def need_event(event: int, new: int, old: int) -> bool:
    """vring_need_event, from the spec's 2.7.10."""
    return (new - event - 1) & 0xFFFF < (new - old) & 0xFFFF


class GuestHeap:
    """A tiny allocator of guest-physical memory: power-of-two size classes over a bump
    region [start, end). Good enough for tests; freed blocks are reused exactly."""

    def __init__(self, start: int, end: int):
        self.start, self.end, self._next = start, end, start
        self._free: dict[int, list[int]] = {}

    def alloc(self, size: int, align: int = 16) -> int:
        cls = max(64, 1 << (max(size, 1) - 1).bit_length())
        if self._free.get(cls):
            return self._free[cls].pop()
        addr = -(-self._next // max(align, 64)) * max(align, 64)
        if addr + cls > self.end:
            raise MemoryError(f"guest heap exhausted ({size} bytes)")
        self._next = addr + cls
        return addr

    def free(self, addr: int, size: int) -> None:
        cls = max(64, 1 << (max(size, 1) - 1).bit_length())
        self._free.setdefault(cls, []).append(addr)


@dataclass
class Chain:
    head: int
    descs: list[int]              # descriptor indices in the ring's table
    buffers: list[tuple[int, int, bool]]   # (gpa, len, writable), in order
    indirect: tuple[int, int] | None = None  # (gpa, bytes) of an indirect table
    persistent: bool = False      # prepared once, re-published many times


class DriverRing:
    """One split virtqueue as the driver sees it. ``mem`` is a writable memoryview of the
    guest RAM file, indexed by guest-physical address (as the frontend lays RAM out)."""

    def __init__(self, mem: memoryview, num: int, desc: int, avail: int, used: int, *, event_idx: bool):
        self.mem, self.num = mem, num
        self.desc, self.avail, self.used = desc, avail, used
        self.event_idx = event_idx
        self.free = list(range(num - 1, -1, -1))
        self.avail_idx = 0
        self.last_used = 0
        self.kicked_at = 0
        self.chains: dict[int, Chain] = {}
        mem[desc:desc + 16 * num] = bytes(16 * num)
        mem[avail:avail + 6 + 2 * num] = bytes(6 + 2 * num)
        mem[used:used + 6 + 8 * num] = bytes(6 + 8 * num)

    # -- raw access (also for faults) ------------------------------------------------------
    def write_desc(self, i: int, addr: int, length: int, flags: int, nxt: int, *, table: int | None = None) -> None:
        base = self.desc if table is None else table
        DESC.pack_into(self.mem, base + 16 * i, addr, length, flags, nxt)

    def publish(self, heads) -> None:
        """Put heads in the avail ring, then move the avail index once."""
        idx = self.avail_idx
        for h in heads:
            U16.pack_into(self.mem, self.avail + 4 + 2 * (idx % self.num), h)
            idx = (idx + 1) & 0xFFFF
        self.avail_idx = idx
        U16.pack_into(self.mem, self.avail + 2, idx)

    def set_avail_idx(self, idx: int) -> None:
        """Fault helper: claim any avail index."""
        self.avail_idx = idx & 0xFFFF
        U16.pack_into(self.mem, self.avail + 2, self.avail_idx)

    def used_idx(self) -> int:
        return U16.unpack_from(self.mem, self.used + 2)[0]

    # -- chains ----------------------------------------------------------------------------
    def add(self, buffers: list[tuple[int, int, bool]], *, indirect_table: int | None = None,
            persistent: bool = False, publish: bool = True) -> int:
        """Describe ``buffers`` (readable first) as one chain; with ``indirect_table`` (the
        gpa of 16 * len(buffers) bytes) as a single indirect descriptor. Returns the head."""
        need = 1 if indirect_table is not None else len(buffers)
        if need > len(self.free):
            raise RuntimeError("no free descriptors")
        descs = [self.free.pop() for _ in range(need)]
        if indirect_table is not None:
            for j, (gpa, n, w) in enumerate(buffers):
                last = j == len(buffers) - 1
                self.write_desc(j, gpa, n, (VRING_DESC_F_WRITE if w else 0) | (0 if last else VRING_DESC_F_NEXT),
                                0 if last else j + 1, table=indirect_table)
            self.write_desc(descs[0], indirect_table, 16 * len(buffers), VRING_DESC_F_INDIRECT, 0)
            ind = (indirect_table, 16 * len(buffers))
        else:
            for j, (gpa, n, w) in enumerate(buffers):
                last = j == len(buffers) - 1
                self.write_desc(descs[j], gpa, n, (VRING_DESC_F_WRITE if w else 0) | (0 if last else VRING_DESC_F_NEXT),
                                0 if last else descs[j + 1])
            ind = None
        head = descs[0]
        self.chains[head] = Chain(head, descs, list(buffers), ind, persistent)
        if publish:
            self.publish([head])
        return head

    def add_raw(self, descs: dict[int, tuple[int, int, int, int]], head: int, *, publish: bool = True) -> int:
        """Fault helper: write descriptors {index: (addr, len, flags, next)} as given and
        publish ``head``; those indices are taken out of the free list while in use."""
        for i, d in descs.items():
            self.write_desc(i, *d)
            if i in self.free:
                self.free.remove(i)
        self.chains[head] = Chain(head, list(descs), [], None)
        if publish:
            self.publish([head])
        return head

    def kick_needed(self) -> bool:
        """Whether the device asked to be kicked for what was published since the last
        kick (avail_event with event index, VRING_USED_F_NO_NOTIFY otherwise)."""
        old, new = self.kicked_at, self.avail_idx
        self.kicked_at = new
        if old == new:
            return False
        if self.event_idx:
            event = U16.unpack_from(self.mem, self.used + 4 + 8 * self.num)[0]
            return need_event(event, new, old)
        return not U16.unpack_from(self.mem, self.used)[0] & VRING_USED_F_NO_NOTIFY

    def arm_interrupt(self) -> None:
        """Ask for an interrupt at the next used element (used_event = last seen)."""
        if self.event_idx:
            U16.pack_into(self.mem, self.avail + 4 + 2 * self.num, self.last_used)

    def harvest(self) -> list[tuple[int, int, Chain | None]]:
        """New used elements as (id, len, chain); a non-persistent chain's descriptors go
        back to the free list (its buffers are the caller's to free)."""
        out = []
        end = self.used_idx()
        while self.last_used != end:
            slot = self.used + 4 + 8 * (self.last_used % self.num)
            uid, ulen = USED_ELEM.unpack_from(self.mem, slot)
            self.last_used = (self.last_used + 1) & 0xFFFF
            chain = self.chains.get(uid)
            if chain is not None and not chain.persistent:
                del self.chains[uid]
                self.free.extend(chain.descs)
            out.append((uid, ulen, chain))
        return out
