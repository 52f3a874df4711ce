"""Buffers and memory accounting: which buffers exist, whose they are, where they live.

Accounting is exact: a VM's usage is the bytes of its live buffers plus the temporaries
of its running launch, and the device pool's usage is the bytes resident on the device.
Every number here changes only under the hypervisor's lock, together with the change it
counts. Each buffer records where it lives (device, host, or both) so that RAM-backed
overcommit (docs/memory.md) works behind this same interface.

Handles are unique across the host and never reused, so a VM naming another VM's handle
finds nothing, exactly as if the handle did not exist.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from primitive_lang import TensorSpec

from .errors import Busy, InvalidArgument, NotFound, OutOfDeviceMemory, QuotaExceeded
from .executor import Executor

# Largest single buffer (bytes): the wire ABI's PXOS_MAX_BUFFER_BYTES. A guest controls the
# size of ALLOC; anything larger is refused before any allocation is attempted.
MAX_BUFFER_BYTES = 2 << 30
# Most live buffers per VM: each costs host bookkeeping, so a guest cannot exhaust the
# daemon's memory with millions of zero-size allocations.
MAX_BUFFERS_PER_VM = 65536


class Residency(str, Enum):
    DEVICE = "device"
    HOST = "host"
    BOTH = "both"


@dataclass(eq=False)
class Buffer:
    handle: int
    vm_id: int
    session: int
    spec: TensorSpec
    nbytes: int
    residency: Residency = Residency.DEVICE
    device: Any = None  # device array while resident
    host: Any = None  # host copy (overcommit), else None
    dirty: bool = False  # the device copy is newer than the host copy
    freed: bool = False  # handle released; storage kept until no launch or transfer uses it
    readers: int = 0  # queued or running launches that read it
    writers: int = 0  # queued or running launches that write it
    transfers: int = 0  # WRITE/READ in progress
    last_use: int = 0

    @property
    def busy(self) -> bool:
        return bool(self.readers or self.writers or self.transfers)


@dataclass
class VMMemory:
    quota: int
    buffers: dict[int, Buffer] = field(default_factory=dict)
    live_bytes: int = 0  # bytes of live (not freed) buffers and freed ones still held
    temp_bytes: int = 0  # temporaries of the running launch
    device_bytes: int = 0  # of live_bytes + temp_bytes, resident on the device
    host_bytes: int = 0  # of live_bytes, living in host RAM only
    idle: bool = False  # the VM said it is going idle

    @property
    def used(self) -> int:
        return self.live_bytes + self.temp_bytes


@dataclass(frozen=True)
class MemoryStats:
    pool_bytes: int
    pool_used: int
    host_budget: int
    host_used: int
    per_vm: dict[int, dict[str, int]]


class MemoryManager:
    """Not thread-safe: the hypervisor calls it with its lock held."""

    def __init__(self, executor: Executor, pool_bytes: int, host_budget: int = 0):
        if pool_bytes <= 0:
            raise InvalidArgument(f"device pool must be positive, got {pool_bytes} bytes")
        self.executor = executor
        self.pool_bytes = pool_bytes
        self.pool_used = 0
        self.host_budget = host_budget
        self.host_used = 0
        self._vms: dict[int, VMMemory] = {}
        # Unregistered VMs whose last buffers or temporaries are still held by a running
        # launch: their bytes stay counted until the launch lets go of them.
        self._retired: dict[int, VMMemory] = {}
        self._handles = itertools.count(1)
        self._clock = itertools.count(1)

    # ---- VMs ----
    def add_vm(self, vm_id: int, quota: int) -> None:
        if vm_id in self._vms or vm_id in self._retired:
            # A retired id is reused only once its running launch has let go of its memory,
            # so that bytes are never counted against the wrong VM.
            from .errors import AlreadyExists

            raise AlreadyExists(f"VM {vm_id} still holds memory (a running launch is finishing); retry")
        self._vms[vm_id] = VMMemory(quota=quota)

    def set_quota(self, vm_id: int, quota: int) -> None:
        """Takes effect at once; a quota below current usage refuses new allocations until
        usage falls under it, and takes nothing away."""
        self._vm(vm_id).quota = quota

    def vm(self, vm_id: int) -> VMMemory:
        return self._vm(vm_id)

    def remove_vm(self, vm_id: int) -> None:
        self.release_vm(vm_id)
        vm = self._vms.pop(vm_id, None)
        if vm is not None and (vm.buffers or vm.temp_bytes):
            self._retired[vm_id] = vm

    def _account(self, vm_id: int) -> VMMemory | None:
        return self._vms.get(vm_id) or self._retired.get(vm_id)

    def _reap(self, vm_id: int) -> None:
        vm = self._retired.get(vm_id)
        if vm is not None and not vm.buffers and not vm.temp_bytes:
            del self._retired[vm_id]

    def _vm(self, vm_id: int) -> VMMemory:
        try:
            return self._vms[vm_id]
        except KeyError:
            raise NotFound(f"no VM {vm_id}") from None

    # ---- buffers ----
    def alloc(self, vm_id: int, session: int, spec: TensorSpec) -> Buffer:
        vm = self._vm(vm_id)
        nbytes = spec.nbytes
        if nbytes > MAX_BUFFER_BYTES:
            raise InvalidArgument(f"buffer of {nbytes} bytes exceeds the {MAX_BUFFER_BYTES}-byte limit per buffer")
        if len(vm.buffers) >= MAX_BUFFERS_PER_VM:
            raise InvalidArgument(f"VM {vm_id} already has {MAX_BUFFERS_PER_VM} buffers, the limit")
        if vm.used + nbytes > vm.quota:
            raise QuotaExceeded(vm_id, vm.quota, vm.used, nbytes)
        self._reserve_device(nbytes, f"VM {vm_id}: allocation of {nbytes} bytes")
        try:
            storage = self.executor.zeros(spec)
        except Exception as exc:  # the backend's own out-of-memory, never a false one of ours
            self.pool_used -= nbytes
            raise OutOfDeviceMemory(f"the device could not allocate {nbytes} bytes: {exc}") from exc
        buf = Buffer(next(self._handles), vm_id, session, spec, nbytes, device=storage,
                     last_use=next(self._clock))
        vm.buffers[buf.handle] = buf
        vm.live_bytes += nbytes
        vm.device_bytes += nbytes
        return buf

    def _reserve_device(self, nbytes: int, what: str) -> None:
        if self.pool_used + nbytes > self.pool_bytes:
            raise OutOfDeviceMemory(
                f"{what}: the device pool is full ({self.pool_used} of {self.pool_bytes} bytes in use, "
                f"{self.pool_bytes - self.pool_used} free)"
            )
        self.pool_used += nbytes

    def lookup(self, vm_id: int, session: int, handle: int) -> Buffer:
        buf = self._vm(vm_id).buffers.get(handle)
        if buf is None or buf.freed or buf.session != session:
            raise NotFound(f"no buffer with handle {handle}")
        return buf

    def free(self, vm_id: int, session: int, handle: int) -> None:
        buf = self.lookup(vm_id, session, handle)
        buf.freed = True
        if not buf.busy:
            self._drop(buf)

    def touch(self, buf: Buffer) -> None:
        buf.last_use = next(self._clock)

    def begin_transfer(self, buf: Buffer, writing: bool) -> None:
        """A WRITE must not race a launch that reads or writes the buffer, and a READ must
        not race one that writes it: the caller gets Busy and retries after completion."""
        if writing and (buf.readers or buf.writers):
            raise Busy(f"buffer {buf.handle} is in use by a queued or running launch; write after it completes")
        if not writing and buf.writers:
            raise Busy(f"buffer {buf.handle} is written by a queued or running launch; read after it completes")
        buf.transfers += 1
        self.touch(buf)

    def end_transfer(self, buf: Buffer) -> None:
        buf.transfers -= 1
        self.maybe_drop(buf)

    def pin(self, buf: Buffer, writes: bool) -> None:
        if writes:
            buf.writers += 1
        else:
            buf.readers += 1

    def unpin(self, buf: Buffer, writes: bool) -> None:
        if writes:
            buf.writers -= 1
            buf.dirty = True
        else:
            buf.readers -= 1
        self.touch(buf)
        self.maybe_drop(buf)

    def maybe_drop(self, buf: Buffer) -> None:
        if buf.freed and not buf.busy:
            self._drop(buf)

    def _drop(self, buf: Buffer) -> None:
        vm = self._account(buf.vm_id)
        if vm is None or vm.buffers.get(buf.handle) is not buf:
            return
        del vm.buffers[buf.handle]
        vm.live_bytes -= buf.nbytes
        if buf.device is not None:
            vm.device_bytes -= buf.nbytes
            self.pool_used -= buf.nbytes
            self.executor.release(buf.device)
            buf.device = None
        if buf.host is not None:
            if buf.residency == Residency.HOST:
                vm.host_bytes -= buf.nbytes
            self.host_used -= buf.nbytes
            buf.host = None
        self._reap(buf.vm_id)

    def release_session(self, vm_id: int, session: int) -> tuple[int, int]:
        """Free every buffer of one session; returns (buffers, bytes) released or deferred."""
        vm = self._vm(vm_id)
        mine = [b for b in vm.buffers.values() if b.session == session and not b.freed]
        for b in mine:
            b.freed = True
            self.maybe_drop(b)
        return len(mine), sum(b.nbytes for b in mine)

    def release_vm(self, vm_id: int) -> tuple[int, int]:
        vm = self._vms.get(vm_id)
        if vm is None:
            return 0, 0
        live = [b for b in vm.buffers.values() if not b.freed]
        for b in list(vm.buffers.values()):
            b.freed = True
            self.maybe_drop(b)
        return len(live), sum(b.nbytes for b in live)

    # ---- data (called without the lock; the buffer is pinned by begin_transfer) ----
    def write(self, buf: Buffer, offset: int, chunks) -> int:
        n = self.executor.write(buf.device, offset, chunks)
        buf.dirty = True
        return n

    def read_into(self, buf: Buffer, offset: int, dsts) -> int:
        return self.executor.read_into(buf.device, offset, dsts)

    def idle_hint(self, vm_id: int, idle: bool) -> None:
        """Recorded per VM; with overcommit the idle VM's buffers are written back first."""
        self._vm(vm_id).idle = idle

    def vm_extra(self, vm_id: int) -> dict[str, float]:
        return {}

    # ---- temporaries of the running launch ----
    def check_temps(self, vm_id: int, nbytes: int) -> None:
        vm = self._vm(vm_id)
        if vm.used + nbytes > vm.quota:
            raise QuotaExceeded(vm_id, vm.quota, vm.used, nbytes, what="launch temporaries")

    def reserve_temps(self, vm_id: int, nbytes: int) -> None:
        self.check_temps(vm_id, nbytes)
        self._reserve_device(nbytes, f"VM {vm_id}: launch temporaries of {nbytes} bytes")
        vm = self._vm(vm_id)
        vm.temp_bytes += nbytes
        vm.device_bytes += nbytes

    def release_temps(self, vm_id: int, nbytes: int) -> None:
        self.pool_used -= nbytes
        vm = self._account(vm_id)
        if vm is not None:
            vm.temp_bytes -= nbytes
            vm.device_bytes -= nbytes
            self._reap(vm_id)

    # ---- observation ----
    def stats(self) -> MemoryStats:
        per_vm = {
            vm_id: {"quota": m.quota, "used": m.used, "device": m.device_bytes, "host": m.host_bytes,
                    "temp": m.temp_bytes, "buffers": sum(1 for b in m.buffers.values() if not b.freed)}
            for vm_id, m in self._vms.items()
        }
        return MemoryStats(self.pool_bytes, self.pool_used, self.host_budget, self.host_used, per_vm)
