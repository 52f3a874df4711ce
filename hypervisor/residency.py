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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .executor import Fence

if TYPE_CHECKING:
    from .memory import Buffer


@dataclass(slots=True)
class LaunchResidency:
    """What prepare_launch did for one launch: the copies it must wait for, and the bytes
    that were already coming because of a prefetch (hits) or had to be fetched (misses)."""

    fences: list[Fence] = field(default_factory=list)
    hit_bytes: int = 0
    miss_bytes: int = 0


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
        vm = self._counted(buf)
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
        """Make n bytes of host budget free. Host copies of buffers that are also on the
        device are a cache (clean) or garbage (dirty: the device copy is newer); both go,
        stale ones first, then least recently used, but never one a queued copy still
        reads or writes."""
        if self.host_used + n <= self.host_budget:
            return True
        self.reap()
        cached = [b for b in self.all_buffers()
                  if b.host is not None and b.device is not None and b.leaving is None
                  and (b.arriving is None or b.arriving.done()) and not b.transfers]
        cached.sort(key=lambda b: (not b.dirty, b.last_use))
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
        vm = self._counted(buf)
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
        vm = self._counted(buf)
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
        vm = self._counted(buf)
        if vm is not None:
            vm.d2h_bytes += buf.nbytes
        return True

    def make_room(self, n: int, protected: set[int], next_use: dict[int, int] | None = None) -> bool:
        """Evict unprotected, unused buffers until n bytes of the pool are free. Buffers no
        planned launch needs go first (idle VMs' first, then least recently used), then those
        needed furthest ahead (``next_use``: handle -> how many launches ahead)."""
        if self.pool_used + n <= self.pool_bytes:
            return True
        if not self.host_budget:
            return False
        never = float("inf")
        victims = [b for b in self.all_buffers()
                   if b.device is not None and b.handle not in protected and b.movable]
        nu = next_use or {}
        victims.sort(key=lambda b: (-nu.get(b.handle, never), not self.is_idle(b.vm_id), b.last_use))
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
    def launch_ready(self, buffers: Iterable[Buffer], temps: int) -> bool:
        """Whether ``prepare_launch`` would take its common case now (everything resident,
        no copy in flight, room for the temporaries): it then cannot raise NotReady."""
        return not self._moving and not self._graveyard and self.pool_used + temps <= self.pool_bytes and all(
            b.device is not None and not b.transfers for b in buffers)

    def prepare_launch(self, buffers: Iterable[Buffer], temps: int, lookahead: list[set[int]],
                       res: LaunchResidency, *, unique: bool = False) -> None:
        """Make a launch's buffers resident (or on their way) and room for its temporaries,
        one buffer at a time (an eviction may need the host room that an earlier fetch
        frees). Protects the look-ahead's buffers while there is other room; never evicts
        what this launch needs. Raises NotReady to be called again shortly (with the same
        ``res``, which accumulates hits and misses across calls)."""
        need = buffers if unique else list({b.handle: b for b in buffers}.values())  # unique: no handle twice
        if not self._moving and not self._graveyard and self.pool_used + temps <= self.pool_bytes:
            for b in need:
                if b.device is None or b.transfers:
                    break
            else:  # the common case: everything resident, no copy in flight, room for the temporaries
                clock = self._clock
                for b in need:
                    if b.prefetched:
                        res.hit_bytes += b.nbytes
                        b.prefetched = False
                    b.active += 1
                    b.last_use = next(clock)
                res.fences = []
                return
        self.reap()
        if any(b.transfers for b in need):
            raise NotReady("a buffer it needs is being read or written by its guest")
        own = {b.handle for b in need}
        protected = set(own)
        for ahead in lookahead:
            protected |= ahead
        for b in sorted((b for b in need if b.device is None), key=lambda b: -b.nbytes):
            if not (self.make_room(b.nbytes, protected) or self.make_room(b.nbytes, own)):
                raise NotReady(self._why_not(b.nbytes))
            self.fetch(b, prefetch=False)
            res.miss_bytes += b.nbytes
        if not (self.make_room(temps, protected) or self.make_room(temps, own)):
            raise NotReady(self._why_not(temps))
        for b in need:
            if b.prefetched:
                res.hit_bytes += b.nbytes
            b.active += 1
            b.prefetched = False
            self.touch(b)
        res.fences = [b.arriving for b in need if b.arriving is not None]

    def _why_not(self, n: int) -> str:
        return (f"needs {n} bytes of the pool ({self.pool_used} of {self.pool_bytes} in use, host "
                f"{self.host_used} of {self.host_budget}); nothing more can move now: "
                + ", ".join(f"{b.handle}:{b.residency}/{b.nbytes}{'/active' if b.active else ''}"
                            f"{'/transfer' if b.transfers else ''}{'/arriving' if b.arriving else ''}"
                            f"{'/leaving' if b.leaving else ''}{'/dirty' if b.dirty else ''}"
                            for b in self.all_buffers()))

    def finish_launch(self, buffers: Iterable[tuple[Buffer, bool]]) -> None:
        seen: set[int] = set()
        for b, writes in buffers:
            if b.handle not in seen:
                seen.add(b.handle)
                b.active -= 1
            if writes:
                b.dirty = b.host is not None
            self.touch(b)

    def prefetch(self, current: list[Buffer], upcoming: list[list[Buffer]], budget: int) -> int:
        """Queue host->device copies for the next launches' buffers, nearest launch first,
        while the bytes in flight stay under budget. Room for a buffer needed d launches
        ahead may be made by evicting what is needed further ahead (furthest first) or not
        at all, never what the running launch or a nearer one needs. Returns how many of
        the upcoming launches have all their buffers on the device or on the way."""
        self.reap()
        next_use: dict[int, int] = {}
        for d, launch in enumerate(upcoming, start=1):
            for b in launch:
                next_use.setdefault(b.handle, d)
        protected = {b.handle for b in current}
        covered = 0
        for launch in upcoming:
            protected |= {b.handle for b in launch}
            for b in launch:
                if b.device is not None or b.host is None or b.transfers or b.freed:
                    continue
                if self.inflight_bytes + b.nbytes > budget or not self.make_room(b.nbytes, protected, next_use):
                    return covered
                self.fetch(b, prefetch=True)
            covered += 1
        return covered

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
