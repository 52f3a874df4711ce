"""Buffers and memory accounting: which buffers exist, whose they are, and what they cost.

Accounting is exact (docs/memory.md): a VM's usage is the bytes of its live buffers plus
the temporaries of its running launch; what a reset released while a launch still runs on
it is held apart (``held_bytes``), so usage is zero at once after a reset; the device pool's usage is the bytes of every
device copy plus the running launch's temporaries; the host budget's usage is the bytes
of every host copy. Every number changes only under the hypervisor's lock, together with
the change it counts. Where a buffer lives and how it moves is residency.py's part.

Handles are unique across the host and never reused, so a VM naming another VM's handle
finds nothing, exactly as if the handle did not exist.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from primitive_lang import TensorSpec

from .errors import AlreadyExists, Busy, InvalidArgument, NotFound, OutOfDeviceMemory, QuotaExceeded, ReadOnly
from .executor import Executor, Fence
from .executor.base import copy_chunks_in, copy_chunks_out
from .residency import Placement

# Largest single buffer (bytes): the wire ABI's PXOS_MAX_BUFFER_BYTES. A guest controls the
# size of ALLOC; anything larger is refused before any allocation is attempted.
MAX_BUFFER_BYTES = 2 << 30
# Most buffers per VM (freed ones still held by a launch included). Each costs host
# bookkeeping whatever its size (its record, its storage's array object and its handle's
# entry: about 520 bytes, measured with tracemalloc), outside the VM's quota, so a guest
# making empty buffers holds at most ~8.5 MiB of the daemon's RAM (65536 held ~34 MiB).
MAX_BUFFERS_PER_VM = 16384


@dataclass(eq=False)
class Buffer:
    handle: int
    vm_id: int
    session: int
    spec: TensorSpec
    nbytes: int
    device: Any = None  # device copy, or None
    host: Any = None  # host copy (flat uint8 array), or None
    dirty: bool = False  # both copies exist and the device one is newer
    arriving: Fence | None = None  # host->device copy in flight into `device`
    leaving: Fence | None = None  # device->host copy in flight into `host`
    prefetched: bool = False  # brought in by prefetch and not used by a launch since
    freed: bool = False  # handle released; storage kept until nothing uses it
    read_only: bool = False  # a shared model's tensor: no WRITE, FREE or output binding
    readers: int = 0  # queued or running launches that read it
    writers: int = 0  # queued or running launches that write it
    active: int = 0  # the running launch uses it (never evicted then)
    transfers: int = 0  # guest WRITE/READ in progress
    last_use: int = 0
    reset_held: bool = False  # released by a reset while in use: in held_bytes, not usage

    @property
    def residency(self) -> str:
        if self.device is not None:
            return "both" if self.host is not None else "device"
        return "host"

    @property
    def busy(self) -> bool:
        return bool(self.readers or self.writers or self.transfers or self.active)

    @property
    def movable(self) -> bool:
        """May leave the device now: nothing runs on it, copies into it are done."""
        return not (self.active or self.transfers) and (self.arriving is None or self.arriving.done())


@dataclass
class VMMemory:
    quota: int
    buffers: dict[int, Buffer] = field(default_factory=dict)
    live_buffers: int = 0  # buffers not freed (what STATS reports, kept as they change)
    live_bytes: int = 0  # bytes of its buffers (freed ones still held included)
    temp_bytes: int = 0  # temporaries of its running launch
    # Buffers and temporaries a reset released that a running launch (or a transfer in
    # progress) still holds: in the pool and host budget until let go, never in usage.
    held_bytes: int = 0
    device_bytes: int = 0  # device copies of its buffers + its temporaries
    host_bytes: int = 0  # its buffers whose only copy is in host RAM
    idle: bool = False  # the VM said it is going idle
    # After a quota cut with eviction: the quota its launches' temporaries are still
    # checked against, until its buffers fit the new quota (0: none; docs/memory.md).
    grace_quota: int = 0
    h2d_bytes: int = 0
    d2h_bytes: int = 0
    evictions: int = 0
    prefetch_hits: int = 0
    prefetch_misses: int = 0
    stall_seconds: float = 0.0

    @property
    def used(self) -> int:
        return self.live_bytes + self.temp_bytes

    @property
    def launch_quota(self) -> int:
        """What launch temporaries are checked against: the quota, or the one before an
        evicting cut while the VM's buffers do not fit the new one yet."""
        return self.grace_quota if self.live_bytes > self.quota else self.quota


@dataclass(eq=False)
class _LaunchTemps:
    """Temporaries reserved for one started launch, and the account that carries them."""

    vm_id: int
    account: VMMemory
    nbytes: int
    held: bool = False  # moved to the account's held_bytes by a reset


class MemoryManager(Placement):
    """Not thread-safe: the hypervisor calls it with its lock held, except the data copies
    of write()/read_into(), which run on a buffer pinned by begin_transfer()."""

    def __init__(self, executor: Executor, pool_bytes: int, host_budget: int = 0, *, handles=None):
        if pool_bytes <= 0:
            raise InvalidArgument(f"device pool must be positive, got {pool_bytes} bytes")
        if host_budget < 0:
            raise InvalidArgument(f"host budget must not be negative, got {host_budget} bytes")
        super().__init__()
        self.executor = executor
        self.pool_bytes = pool_bytes
        self.pool_used = 0
        self.host_budget = host_budget
        self.host_used = 0
        self.committed = 0  # bytes of all live buffers, every VM
        self._vms: dict[int, VMMemory] = {}
        # Unregistered VMs whose last buffers or temporaries are still held by a running
        # launch: their bytes stay counted until the launch lets go of them.
        self._retired: dict[int, VMMemory] = {}
        self._queued_temps: Counter[int] = Counter()  # temporaries of queued/running launches
        self._launch_temps: dict[int, _LaunchTemps] = {}  # started launches' temporaries, by launch
        self._sizes: Counter[int] = Counter()  # sizes of live buffers (for the swap reserve)
        self._idle_vms: set[int] = set()
        self._handles = handles if handles is not None else itertools.count(1)  # shared by a host's devices
        self._clock = itertools.count(1)

    @property
    def capacity(self) -> int:
        return self.pool_bytes + self.host_budget

    def max_queued_temps(self) -> int:
        """Temporaries to keep room for: the two largest of the queued and running launches
        (the device runs one launch while the next is already on its stream)."""
        queued = self._queued_temps
        if len(queued) == 1:  # the common case: one size of temporaries (one kernel) queued
            for t, n in queued.items():
                return t * min(n, 2)
        total = taken = 0
        for t in sorted(queued, reverse=True):
            k = min(self._queued_temps[t], 2 - taken)
            total += t * k
            taken += k
            if taken == 2:
                break
        return total

    def overcommit_active(self) -> bool:
        """Anything to prefetch at all: some buffer has a copy in host RAM."""
        return self.host_budget > 0 and self.host_used > 0

    def any_idle(self) -> bool:
        return bool(self._idle_vms)

    def swap_reserve(self, new: int = 0) -> int:
        """Room kept free so that a buffer can always trade places with another: twice the
        largest buffer (docs/memory.md, "Why eviction always finds room"). Without host
        RAM nothing ever moves and nothing is reserved."""
        if not self.host_budget:
            return 0
        return 2 * max(max(self._sizes, default=0), new)

    # ---- VMs ----
    def add_vm(self, vm_id: int, quota: int) -> None:
        if vm_id in self._vms or vm_id in self._retired:
            # A retired id is reused only once its running launch has let go of its memory,
            # so that bytes are never counted against the wrong VM.
            raise AlreadyExists(f"VM {vm_id} still holds memory (a running launch is finishing); retry")
        self._vms[vm_id] = VMMemory(quota=quota)

    def set_quota(self, vm_id: int, quota: int, *, evict: bool = False) -> int:
        """Takes effect at once. A quota below current usage refuses new allocations until
        usage falls under it and takes nothing away. With ``evict`` the VM's buffers also
        leave the device for host RAM now (overcommit: needs host budget), and its launches
        keep running, their temporaries checked against the old quota until its buffers fit
        the new one. Returns the bytes moved off the device."""
        vm = self._vm(vm_id)
        if not evict or quota >= vm.live_bytes:
            vm.quota, vm.grace_quota = quota, 0
            return 0
        if not self.host_budget:
            raise InvalidArgument(
                f"VM {vm_id}: evicting its buffers to host RAM needs overcommit ([memory] host_budget), "
                "which is 0 on this daemon")
        self.reap()
        leaving = [b for b in vm.buffers.values() if b.device is not None and not b.read_only and b.movable]
        need = sum(b.nbytes for b in leaving if b.host is None)
        if not self.host_room(need):
            raise OutOfDeviceMemory(
                f"VM {vm_id}: evicting its buffers needs {need} bytes of host budget; "
                f"{self.host_budget - self.host_used} of {self.host_budget} are free")
        vm.grace_quota = vm.launch_quota
        vm.quota = quota
        moved = 0
        for b in leaving:
            if self.evict(b):  # room was made above: it succeeds
                moved += b.nbytes
        return moved

    def vm(self, vm_id: int) -> VMMemory:
        return self._vm(vm_id)

    def remove_vm(self, vm_id: int) -> None:
        self._idle_vms.discard(vm_id)
        self.release_vm(vm_id)
        vm = self._vms.pop(vm_id, None)
        if vm is not None and (vm.buffers or vm.temp_bytes or vm.held_bytes):
            self._retired[vm_id] = vm

    def _vm(self, vm_id: int) -> VMMemory:
        try:
            return self._vms[vm_id]
        except KeyError:
            raise NotFound(f"no VM {vm_id}") from None

    def _account(self, vm_id: int) -> VMMemory | None:
        return self._vms.get(vm_id) or self._retired.get(vm_id)

    def _counted(self, buf: Buffer) -> VMMemory | None:
        """The account whose device and host figures include this buffer: its VM's, or
        none for one a reset released while in use (counted in held_bytes instead)."""
        return None if buf.reset_held else self._account(buf.vm_id)

    def _reap_vm(self, vm_id: int) -> None:
        vm = self._retired.get(vm_id)
        if vm is not None and not vm.buffers and not vm.temp_bytes and not vm.held_bytes:
            del self._retired[vm_id]

    def all_buffers(self):
        for vm in itertools.chain(self._vms.values(), self._retired.values()):
            yield from vm.buffers.values()

    def is_idle(self, vm_id: int) -> bool:
        vm = self._vms.get(vm_id)
        return vm is not None and vm.idle

    # ---- buffers ----
    def alloc(self, vm_id: int, session: int, spec: TensorSpec, *, handle: int | None = None) -> Buffer:
        """A zeroed buffer. ``handle``: keep the one it had on another device (a VM move)."""
        vm = self._vm(vm_id)
        n = spec.nbytes
        if n > MAX_BUFFER_BYTES:
            raise InvalidArgument(f"buffer of {n} bytes exceeds the {MAX_BUFFER_BYTES}-byte limit per buffer")
        if len(vm.buffers) >= MAX_BUFFERS_PER_VM:
            raise InvalidArgument(f"VM {vm_id} already has {MAX_BUFFERS_PER_VM} buffers, the limit")
        self.executor.check_spec(spec)  # a dtype the device cannot hold: refused, even for host RAM
        if vm.used + n > vm.quota:
            raise QuotaExceeded(vm_id, vm.quota, vm.used, n)
        temps = self.max_queued_temps()
        reserve = self.swap_reserve(n)
        if self.committed + n + temps + reserve > self.capacity:
            where = "the device pool" if not self.host_budget else "the device pool and host budget together"
            raise OutOfDeviceMemory(
                f"VM {vm_id}: allocation of {n} bytes does not fit: {where} is full "
                f"({self.committed} of {self.capacity} bytes hold buffers"
                + (f", {temps} are reserved for queued launch temporaries" if temps else "")
                + (f", {reserve} are kept free to move buffers" if reserve else "") + ")")
        on_device = self.place_new(n)
        try:
            if on_device:
                storage = self.executor.zeros(spec)
            else:
                storage = self.executor.host_empty(n)
                storage.fill(0)
        except Exception as exc:  # the backend's own out-of-memory, never a false one of ours
            raise OutOfDeviceMemory(f"the {'device' if on_device else 'host'} could not allocate {n} bytes: {exc}") from exc
        buf = Buffer(handle if handle is not None else next(self._handles), vm_id, session, spec, n,
                     last_use=next(self._clock))
        if on_device:
            buf.device = storage
            self.pool_used += n
            vm.device_bytes += n
        else:
            buf.host = storage
            self.host_used += n
            vm.host_bytes += n
        vm.buffers[buf.handle] = buf
        vm.live_buffers += 1
        vm.live_bytes += n
        self.committed += n
        self._sizes[n] += 1
        return buf

    def lookup(self, vm_id: int, session: int, handle: int) -> Buffer:
        buf = self._vm(vm_id).buffers.get(handle)
        if buf is None or buf.freed or buf.session != session:
            raise NotFound(f"no buffer with handle {handle}")
        return buf

    def free(self, vm_id: int, session: int, handle: int) -> None:
        self._release(self.lookup(vm_id, session, handle))

    def _release(self, buf: Buffer) -> None:
        """The handle goes now; the storage when nothing uses it any more."""
        if not buf.freed:
            buf.freed = True
            vm = self._account(buf.vm_id)
            if vm is not None:
                vm.live_buffers -= 1
        self.maybe_drop(buf)

    def touch(self, buf: Buffer) -> None:
        buf.last_use = next(self._clock)

    def pin(self, buf: Buffer, writes: bool) -> None:
        """A queued launch will use the buffer: no guest transfer may race it (Busy)."""
        if writes:
            buf.writers += 1
        else:
            buf.readers += 1

    def unpin(self, buf: Buffer, writes: bool) -> None:
        if writes:
            buf.writers -= 1
        else:
            buf.readers -= 1
        self.touch(buf)
        self.maybe_drop(buf)

    def end_launch(self, buffers: Iterable[tuple[Buffer, bool]], launch_id: int, temps: int,
                   distinct: bool = False) -> None:
        """A started launch is over: finish_launch, release_temps, retire_launch and unpin
        of each of its buffers, in that order, in one call (the dispatcher's hot path).
        ``distinct``: no buffer is bound twice (the launch plan knows)."""
        if distinct:
            for b, writes in buffers:
                b.active -= 1
                if writes:
                    b.dirty = b.host is not None
        else:
            seen: set[int] = set()
            for b, writes in buffers:
                if b.handle not in seen:
                    seen.add(b.handle)
                    b.active -= 1
                if writes:
                    b.dirty = b.host is not None
        if launch_id in self._launch_temps:
            self.release_temps(launch_id)
        queued = self._queued_temps  # retire_launch(temps)
        queued[temps] -= 1
        if not queued[temps]:
            del queued[temps]
        clock = self._clock
        for b, writes in buffers:
            if writes:
                b.writers -= 1
            else:
                b.readers -= 1
            b.last_use = next(clock)
            if b.freed and not b.busy:
                self._drop(b)

    def maybe_drop(self, buf: Buffer) -> None:
        if buf.freed and not buf.busy:
            self._drop(buf)

    def _drop(self, buf: Buffer) -> None:
        vm = self._account(buf.vm_id)
        if vm is None or vm.buffers.get(buf.handle) is not buf:
            return
        del vm.buffers[buf.handle]
        n = buf.nbytes
        if buf.reset_held:
            vm.held_bytes -= n
        else:
            vm.live_bytes -= n
            if buf.device is None:
                vm.host_bytes -= n
        self.committed -= n
        self._sizes[n] -= 1
        if not self._sizes[n]:
            del self._sizes[n]
        self.release_device(buf)
        self.release_host(buf)
        self._reap_vm(buf.vm_id)

    def release_session(self, vm_id: int, session: int) -> tuple[int, int]:
        """Free every buffer of one session; returns (buffers, bytes) released or deferred."""
        vm = self._vm(vm_id)
        mine = [b for b in vm.buffers.values() if b.session == session and not b.freed]
        for b in mine:
            self._release(b)
        return len(mine), sum(b.nbytes for b in mine)

    def release_vm(self, vm_id: int) -> tuple[int, int]:
        vm = self._vms.get(vm_id)
        if vm is None:
            return 0, 0
        live = [b for b in vm.buffers.values() if not b.freed]
        for b in list(vm.buffers.values()):
            self._release(b)
        return len(live), sum(b.nbytes for b in live)

    def hold_after_reset(self, vm_id: int) -> int:
        """After release_vm at a device reset: usage is zero at once (docs/protocol.md, §6).
        What a running launch or a transfer in progress still holds of the VM (released
        buffers, the launch's temporaries) moves from its usage and device/host figures to
        ``held_bytes``; it stays counted in the pool, host budget and committed bytes until
        let go, exactly as before. Returns the bytes held."""
        vm = self._vm(vm_id)
        for b in vm.buffers.values():  # only buffers still in use are left
            if not b.reset_held:
                b.reset_held = True
                vm.live_bytes -= b.nbytes
                vm.held_bytes += b.nbytes
                if b.device is not None:
                    vm.device_bytes -= b.nbytes
                else:
                    vm.host_bytes -= b.nbytes
        for t in self._launch_temps.values():
            if t.account is vm and not t.held:
                t.held = True
                vm.temp_bytes -= t.nbytes
                vm.device_bytes -= t.nbytes
                vm.held_bytes += t.nbytes
        return vm.held_bytes

    # ---- guest data (begin/end under the lock; the copy itself without it) ----
    def begin_transfer(self, buf: Buffer, writing: bool) -> tuple[Any, bool, list[Fence]]:
        """Pin the buffer for a WRITE/READ. Returns (the array to copy to/from, whether it is
        the device copy, the copies to wait for first). A WRITE must not race a launch that
        reads or writes the buffer, and a READ must not race one that writes it: the caller
        gets Busy and retries after that launch completes."""
        if writing and buf.read_only:
            raise ReadOnly(f"buffer {buf.handle} is a shared model's tensor and cannot be written")
        if writing and (buf.readers or buf.writers):
            raise Busy(f"buffer {buf.handle} is in use by a queued or running launch; write after it completes")
        if not writing and buf.writers:
            raise Busy(f"buffer {buf.handle} is written by a queued or running launch; read after it completes")
        buf.transfers += 1
        self.touch(buf)
        waits = [f for f in (buf.arriving, buf.leaving) if f is not None]
        if buf.device is not None:
            if writing:
                buf.dirty = buf.host is not None
            return buf.device, True, waits
        return buf.host, False, waits

    def end_transfer(self, buf: Buffer) -> None:
        buf.transfers -= 1
        self.maybe_drop(buf)

    def copy_in(self, target: Any, on_device: bool, offset: int, chunks) -> int:
        if on_device:
            return self.executor.write(target, offset, chunks)
        return copy_chunks_in(memoryview(target), offset, chunks)

    def copy_out(self, source: Any, on_device: bool, offset: int, dsts) -> int:
        if on_device:
            return self.executor.read_into(source, offset, dsts)
        return copy_chunks_out(memoryview(source), offset, dsts)

    def fill_in(self, target: Any, on_device: bool, offset: int, length: int, fill_fn) -> int:
        if on_device:
            return self.executor.fill(target, offset, length, fill_fn)
        view = memoryview(target)
        if offset < 0 or length < 0 or offset + length > len(view):
            raise InvalidArgument(f"range [{offset}, {offset + length}) lies outside the buffer's {len(view)} bytes")
        fill_fn(view[offset : offset + length])
        return length

    def idle_hint(self, vm_id: int, idle: bool) -> None:
        """An idle VM's dirty buffers are written back first and leave the device first."""
        self._vm(vm_id).idle = idle
        if idle:
            self._idle_vms.add(vm_id)
        else:
            self._idle_vms.discard(vm_id)

    def vm_extra(self, vm_id: int) -> dict[str, float]:
        vm = self._vm(vm_id)
        return {"h2d_bytes": vm.h2d_bytes, "d2h_bytes": vm.d2h_bytes, "evictions": vm.evictions,
                "prefetch_hits": vm.prefetch_hits, "prefetch_misses": vm.prefetch_misses,
                "stall_seconds": vm.stall_seconds, "held_after_reset_bytes": vm.held_bytes}

    # ---- launches: capacity for temporaries, quota for the running one ----
    def admit_launch(self, vm_id: int, temps: int, buffers_bytes: int) -> None:
        """A launch is queued: its buffers and temporaries must fit the pool on their own,
        and its temporaries beside everything committed (docs/memory.md, promise 2)."""
        vm = self._vm(vm_id)
        if vm.live_bytes + temps > vm.launch_quota:  # the running launch's temporaries will be gone
            raise QuotaExceeded(vm_id, vm.launch_quota, vm.live_bytes, temps, what="launch temporaries")
        if buffers_bytes + temps > self.pool_bytes:
            raise OutOfDeviceMemory(
                f"this launch needs {buffers_bytes + temps} bytes on the device at once ({buffers_bytes} of "
                f"buffers, {temps} of temporaries) but the device pool holds {self.pool_bytes}")
        if self.committed + max(temps, self.max_queued_temps()) + self.swap_reserve() > self.capacity:
            raise OutOfDeviceMemory(
                f"this launch's {temps} bytes of temporaries do not fit beside the {self.committed} bytes "
                f"of buffers committed in {self.capacity} bytes of device pool and host budget")
        self._queued_temps[temps] += 1

    def queue_launch(self, vm_id: int, temps: int, buffers_bytes: int, buffers) -> None:
        """admit_launch, then pin each of the launch's (buffer, written?) pairs: a launch
        is queued (Hypervisor.launch)."""
        self.admit_launch(vm_id, temps, buffers_bytes)
        for buf, writes in buffers:
            if writes:
                buf.writers += 1
            else:
                buf.readers += 1

    def retire_launch(self, temps: int) -> None:
        self._queued_temps[temps] -= 1
        if not self._queued_temps[temps]:
            del self._queued_temps[temps]

    def check_temps(self, vm_id: int, nbytes: int) -> None:
        vm = self._vms.get(vm_id) or self._vm(vm_id)
        live = vm.live_bytes  # (vm.used and vm.launch_quota, read once: every launch checks this)
        if live + vm.temp_bytes + nbytes > (vm.grace_quota if live > vm.quota else vm.quota):
            raise QuotaExceeded(vm_id, vm.launch_quota, vm.used, nbytes, what="launch temporaries")

    def reserve_temps(self, vm_id: int, nbytes: int, launch_id: int, *, checked: bool = False) -> None:
        """The launch starts: its temporaries count against its VM and the pool (room was
        made by prepare_launch) until release_temps(launch_id). ``checked``: check_temps
        passed under this same hold of the lock (the dispatcher's _prepare)."""
        if not checked:
            self.check_temps(vm_id, nbytes)
        if nbytes == 0:
            return  # nothing to count or to give back (release_temps finds none)
        vm = self._vm(vm_id)
        if launch_id in self._launch_temps:
            raise AlreadyExists(f"launch {launch_id} already holds temporaries")
        self.pool_used += nbytes
        vm.temp_bytes += nbytes
        vm.device_bytes += nbytes
        self._launch_temps[launch_id] = _LaunchTemps(vm_id, vm, nbytes)

    def release_temps(self, launch_id: int) -> None:
        t = self._launch_temps.pop(launch_id, None)
        if t is None:
            return
        self.pool_used -= t.nbytes
        if t.held:
            t.account.held_bytes -= t.nbytes
        else:
            t.account.temp_bytes -= t.nbytes
            t.account.device_bytes -= t.nbytes
        self._reap_vm(t.vm_id)
