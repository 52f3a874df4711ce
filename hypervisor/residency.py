"""Placement of buffers between the device pool and host RAM (docs/memory.md).

The mechanics of overcommit: evict (device -> host, or a clean drop), fetch (host ->
device), write-back of idle VMs' dirty buffers, host-cache trim, and making room for a
launch. Every copy goes through the executor's one copy stream (or copy thread), in
order; accounting changes when a copy is queued, and the arrays a queued copy still
reads or writes are kept alive (``_graveyard``) until its fence completes.

Mixed into MemoryManager, whose state (pool_used, host_used, buffers, accounts) it moves;
like it, it runs under the hypervisor's lock.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .executor import Fence

if TYPE_CHECKING:
    from .memory import Buffer


@dataclass
class LaunchResidency:
    """What prepare_launch did for one launch: the copies it must wait for, and its hits."""

    fences: list[Fence]
    hit_bytes: int
    miss_bytes: int


class NotReady(Exception):
    """prepare_launch cannot proceed yet (a buffer is mid-transfer); retry shortly."""


class Placement:
    def __init__(self) -> None:
        self._graveyard: list[tuple[Fence, Any]] = []  # arrays a queued copy still uses
        self._moving: list[Buffer] = []  # buffers with a fence not yet reaped
        self.inflight_bytes = 0  # host->device bytes queued and not complete
        self.wasted_prefetches = 0  # prefetched buffers evicted before any launch used them

    # ---- low-level accounting moves ----
    def release_device(self, buf: Buffer) -> None:
        if buf.device is None:
            return
        vm = self._account(buf.vm_id)
        self.pool_used -= buf.nbytes
        if vm is not None:
            vm.device_bytes -= buf.nbytes
        if buf.arriving is not None and not buf.arriving.done():
            self._graveyard.append((buf.arriving, buf.device))
        if buf.leaving is not None and not buf.leaving.done():
            self._graveyard.append((buf.leaving, buf.device))
        self.executor.release(buf.device)
        buf.device = None

    def release_host(self, buf: Buffer) -> None:
        if buf.host is None:
            return
        self.host_used -= buf.nbytes
        for fence in (buf.arriving, buf.leaving):
            if fence is not None and not fence.done():
                self._graveyard.append((fence, buf.host))
        buf.host = None

    def reap(self) -> None:
        """Note the copies that completed; let go of arrays no queued copy uses any more."""
        if self._graveyard:
            self._graveyard = [(f, a) for f, a in self._graveyard if not f.done()]
        still = []
        for b in self._moving:
            if b.arriving is not None and b.arriving.done():
                b.arriving = None
                self.inflight_bytes -= b.nbytes
            if b.leaving is not None and b.leaving.done():
                b.leaving = None
            if b.arriving is not None or b.leaving is not None:
                still.append(b)
        self._moving = still

    # ---- host budget ----
    def host_room(self, n: int) -> bool:
        """Make n bytes of host budget free by dropping clean host copies of buffers that
        are also on the device (a cache), least recently used first."""
        if self.host_used + n <= self.host_budget:
            return True
        cached = [b for b in self.all_buffers()
                  if b.host is not None and b.device is not None and not b.dirty and b.movable
                  and b.leaving is None]
        cached.sort(key=lambda b: b.last_use)
        for b in cached:
            if self.host_used + n <= self.host_budget:
                break
            self.release_host(b)
            b.dirty = False
        return self.host_used + n <= self.host_budget

    # ---- moves ----
    def evict(self, buf: Buffer) -> bool:
        """Take a buffer off the device. False if its device copy is the only one and the
        host budget has no room for it."""
        n = buf.nbytes
        vm = self._account(buf.vm_id)
        if buf.host is None or buf.dirty:
            if buf.host is None:
                if not self.host_room(n):
                    return False
                buf.host = self.executor.host_empty(n)
                self.host_used += n
            buf.leaving = self.executor.d2h_async(buf.device, buf.host)
            self._moving.append(buf)
            if vm is not None:
                vm.d2h_bytes += n
        self.release_device(buf)
        buf.dirty = False
        if vm is not None:
            vm.host_bytes += n
            vm.evictions += 1
        if buf.prefetched:
            self.wasted_prefetches += 1
            buf.prefetched = False
        return True

    def fetch(self, buf: Buffer, *, prefetch: bool) -> None:
        """Queue a host->device copy (room must have been made). Ordered after any
        device->host copy of the same buffer on the copy stream."""
        n = buf.nbytes
        vm = self._account(buf.vm_id)
        buf.device = self.executor.device_empty(buf.spec)
        self.pool_used += n
        buf.arriving = self.executor.h2d_async(buf.host, buf.device)
        self.inflight_bytes += n
        if buf not in self._moving:
            self._moving.append(buf)
        buf.dirty = False
        buf.prefetched = prefetch
        if vm is not None:
            vm.device_bytes += n
            vm.host_bytes -= n
            vm.h2d_bytes += n

    def writeback(self, buf: Buffer) -> bool:
        """Copy a dirty (or device-only) buffer to the host and keep it on the device, clean."""
        if buf.host is None:
            if not self.host_room(buf.nbytes):
                return False
            buf.host = self.executor.host_empty(buf.nbytes)
            self.host_used += buf.nbytes
        buf.leaving = self.executor.d2h_async(buf.device, buf.host)
        if buf not in self._moving:
            self._moving.append(buf)
        buf.dirty = False
        vm = self._account(buf.vm_id)
        if vm is not None:
            vm.d2h_bytes += buf.nbytes
        return True

    def make_room(self, n: int, protected: set[int]) -> bool:
        """Evict unprotected, unused buffers until n bytes of the pool are free: idle VMs'
        first, then least recently used."""
        if self.pool_used + n <= self.pool_bytes:
            return True
        if not self.host_budget:
            return False
        victims = [b for b in self.all_buffers()
                   if b.device is not None and b.handle not in protected and b.movable]
        victims.sort(key=lambda b: (not self.is_idle(b.vm_id), b.last_use))
        for b in victims:
            if self.pool_used + n <= self.pool_bytes:
                break
            self.evict(b)
        return self.pool_used + n <= self.pool_bytes

    def place_new(self, n: int) -> bool:
        """Where a new buffer goes: True for the device, False for host RAM. The capacity
        check already passed, so one of the two has room (docs/memory.md)."""
        self.reap()
        if self.pool_used + n <= self.pool_bytes:
            return True
        if self.host_budget and self.host_room(n):
            return False
        if self.make_room(n, protected=set()):
            return True
        from .errors import Busy

        raise Busy("memory is being moved for running work; retry the allocation")

    # ---- launches ----
    def prepare_launch(self, buffers: Iterable[Buffer], temps: int, lookahead: list[set[int]]) -> LaunchResidency:
        """Make a launch's buffers resident (or on their way) and room for its temporaries.
        Protects the look-ahead's buffers while there is other room; never evicts what
        this launch needs."""
        self.reap()
        need = list({b.handle: b for b in buffers}.values())
        if any(b.transfers for b in need):
            raise NotReady()
        own = {b.handle for b in need}
        missing = [b for b in need if b.device is None]
        room = sum(b.nbytes for b in missing) + temps
        protected = set(own)
        for ahead in lookahead:
            protected |= ahead
        if not self.make_room(room, protected):
            if not self.make_room(room, own):
                raise NotReady()
        hit = miss = 0
        for b in need:
            if b.device is None:
                self.fetch(b, prefetch=False)
                miss += b.nbytes
            elif b.prefetched:
                hit += b.nbytes
            b.active += 1
            b.prefetched = False
            self.touch(b)
        fences = [b.arriving for b in need if b.arriving is not None]
        return LaunchResidency(fences, hit, miss)

    def finish_launch(self, buffers: Iterable[tuple[Buffer, bool]]) -> None:
        seen: set[int] = set()
        for b, writes in buffers:
            if b.handle not in seen:
                seen.add(b.handle)
                b.active -= 1
            if writes:
                b.dirty = b.host is not None
            self.touch(b)

    def prefetch(self, upcoming: list[list[Buffer]], budget: int, protected: set[int]) -> int:
        """Queue host->device copies for the next launches' buffers, nearest first, while
        the bytes in flight stay under budget and room exists without evicting what the
        look-ahead needs. Returns the bytes queued."""
        self.reap()
        queued = 0
        for launch in upcoming:
            for b in launch:
                if b.device is not None or b.host is None or b.transfers or b.freed:
                    continue
                if self.inflight_bytes + b.nbytes > budget:
                    return queued
                if not self.make_room(b.nbytes, protected):
                    return queued
                self.fetch(b, prefetch=True)
                queued += b.nbytes
        return queued

    def writeback_idle(self, budget: int) -> int:
        """Write back dirty buffers of VMs that said they are idle, ahead of need."""
        done = 0
        for b in self.all_buffers():
            if done >= budget:
                break
            if (b.device is not None and self.is_idle(b.vm_id) and (b.dirty or b.host is None)
                    and b.movable and b.leaving is None and not b.busy):
                if self.writeback(b):
                    done += b.nbytes
        return done
