"""The Hypervisor: VMs, their buffers, kernels and launches, in one object.

Everything that reaches pxOS (a guest's virtqueue through virtio_backend, an operator's
gRPC call, the demo) goes through this API. Its state changes under one lock; the
executor runs launches on the dispatcher thread (dispatch.py) outside that lock, and
transfers copy bytes outside it too, with the buffer pinned.

Errors are those of hypervisor/errors.py; each names the step that failed and carries
the PXOS wire status it maps to.
"""

from __future__ import annotations

import itertools
import logging
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence

import primitive_lang
from primitive_lang.ast import DType
from scheduler import Classifier, FairScheduler, Ticket, WorkloadClass

from . import errors as E
from .calibrate import peaks
from .compiling import GIL_SWITCH_S, Compiler
from .dispatch import Dispatcher, Job
from .executor import Executor, make_executor
from .launch_plan import plan_launch
from .memory import Buffer, MemoryManager
from .models import ModelInfo, ModelOpen, ModelStore
from .prefetch import PrefetchState
from .records import (
    KernelRecord,
    VMRecord,
    buffer_info,
    check_share,
    class_of,
    kernel_host_bytes,
    percentile,
    tensor_spec,
)
from .types import (
    BufferInfo,
    Completion,
    DeviceInfo,
    DeviceUse,
    Event,
    KernelInfo,
    LaunchResult,
    Scalar,
    SessionCloseResult,
    VMInfo,
    VMStats,
)

log = logging.getLogger("pxos.hypervisor")

# Bounds on what one VM can make the host hold (docs/memory.md, "Host memory a guest
# controls"). Guests control these counts, so each is capped: kernels compiled and kept
# (their host memory also within records.KERNEL_HOST_BUDGET_BYTES), launches queued or
# running (each holds its job, bindings and bound kernel: a few KiB, at most ~100 KiB for
# a kernel of 1024 statements), and the name's length.
MAX_KERNELS_PER_VM = 4096
MAX_INFLIGHT_PER_VM = 256
MAX_VM_NAME = 63
MAX_VM_ID = 2**32 - 1
MAX_MEMORY_QUOTA_BYTES = 1 << 50  # 1 PiB: a quota is checked against this, never wrapped


def _finish_stats(fields: dict, latencies_ns: list[int]) -> VMStats:
    lat = sorted(latencies_ns)
    return VMStats(**fields, latency_p50_ms=percentile(lat, 50) / 1e6, latency_p99_ms=percentile(lat, 99) / 1e6)


def _default_pool(executor: Executor) -> int:
    info = executor.info()
    if executor.name == "numpy":
        return max(info.device_memory_free // 2, 64 << 20)
    reserve = max(1 << 30, info.device_memory_total // 20)
    return max(info.device_memory_free - reserve, 64 << 20)


def _check_quota(quota: int) -> None:
    if not 0 < quota <= MAX_MEMORY_QUOTA_BYTES:
        raise E.InvalidArgument(f"memory quota must be 1..{MAX_MEMORY_QUOTA_BYTES} bytes "
                                f"(MAX_MEMORY_QUOTA_BYTES), got {quota}")


class SharedIds:
    """What the devices of one host share: the lock and the id counters."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.handles = itertools.count(1)
        self.kernel_ids = itertools.count(1)
        self.launch_ids = itertools.count(1)


class Hypervisor:
    """Shares one device between VMs. ``start()`` runs the dispatcher; ``stop()`` ends it."""

    def __init__(self, *, backend: str | Executor = "auto", device_pool_bytes: int | None = None,
                 host_budget_bytes: int = 0, window_seconds: float = 1.0, lookahead_depth: int = 8,
                 prefetch: bool = True, clock: Callable[[], float] = time.monotonic,
                 device_id: int = 0, shared: SharedIds | None = None, time_slice_s: float | None = None,
                 compiler: Compiler | None = None, gpu_stepping: str = "auto"):
        self.executor = backend if isinstance(backend, Executor) else make_executor(backend)
        pool = device_pool_bytes if device_pool_bytes is not None else _default_pool(self.executor)
        # One device of a DeviceSet (devices.py) shares its lock and its id counters with
        # the others, so handles, kernel and launch ids stay unique across the host and a
        # VM moves between devices under one lock.
        shared = shared if shared is not None else SharedIds()
        self.device_id = device_id
        self._lock = shared.lock
        self.memory = MemoryManager(self.executor, pool, host_budget_bytes, handles=shared.handles)
        self.scheduler = FairScheduler(window_seconds=window_seconds, clock=clock)
        dev = peaks(self.executor)
        self.classifier = Classifier(peak_flops=dev.flops_per_s, peak_bytes_per_s=dev.bytes_per_s,
                                     launch_overhead_s=dev.launch_overhead_s)
        self.clock = clock
        self.prefetch = PrefetchState.initial(lookahead_depth, pool, enabled=prefetch)
        self._vms: dict[int, VMRecord] = {}
        # Launches queued or running on this device: the sum of its VMs' ``inflight``, kept
        # as each changes (_count_launch, _launch_ended, _add_vm, _drop_vm), never summed:
        # the serial fast path reads it under the lock on every try (preemption.py).
        self.launches_in_flight = 0
        # Set by stop() under the lock: launch() refuses from then on (Cancelled), so no
        # launch is queued after stop() cancelled the queues, with no dispatcher to run it.
        self.stopping = False
        self._kernel_ids = shared.kernel_ids
        self._launch_ids = shared.launch_ids
        self._subscribers: list[Callable[[Event], None]] = []
        self._info = self.executor.info()
        self.models = ModelStore(self._lock, self.memory, self._emit)
        self.dispatcher = Dispatcher(self)
        # Compiles off the interpreter lock, within per-VM budgets (compiling.py); one given
        # (the daemon's, a DeviceSet's) is its giver's to close.
        self._own_compiler = compiler is None
        self.compiler = compiler if compiler is not None else Compiler()
        self.compiles = self.compiler.budget
        self.compiler.watch(self.dispatcher)  # a pool compile's rebuild gives way to its launches
        if time_slice_s is not None:  # preemption at op boundaries (docs/scheduling.md); 0 = off
            if not 0 <= time_slice_s <= 1:
                raise E.InvalidArgument(f"time_slice_s must be in [0, 1] seconds, got {time_slice_s!r}")
            self.dispatcher.time_slice_s = float(time_slice_s)
        # Launches as steps on a GPU executor (docs/scheduling.md, "Preemption"): "auto" takes
        # the executor's word (stepping_default: whether it has been checked on its device).
        if gpu_stepping not in ("auto", "on", "off"):
            raise E.InvalidArgument(f"gpu_stepping must be auto, on or off, got {gpu_stepping!r}")
        self.dispatcher.device_steps = (self.executor.stepping_default if gpu_stepping == "auto"
                                        else gpu_stepping == "on")

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Hypervisor:
        # A thread that wants the GIL waits for the holder's switch interval: keep it short
        # so a compile (pure Python) cannot stall the dispatcher for 5 ms at a time.
        if sys.getswitchinterval() > GIL_SWITCH_S:
            sys.setswitchinterval(GIL_SWITCH_S)
        self.stopping = False
        self.dispatcher.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel what is queued, let the running launch finish, stop the dispatcher."""
        with self._lock:
            self.stopping = True
            for vm_id in list(self._vms):
                self._cancel_queued(vm_id, lambda t: True, "the daemon is stopping")
        self.dispatcher.stop(timeout)
        self.executor.close()
        if self._own_compiler:
            self.compiler.close()

    def __enter__(self) -> Hypervisor:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ events
    def subscribe(self, fn: Callable[[Event], None]) -> Callable[[], None]:
        """Call fn(event) for every event (from whichever thread caused it; keep it quick).
        Returns a function that unsubscribes."""
        with self._lock:
            self._subscribers.append(fn)

        def unsubscribe() -> None:
            with self._lock:
                if fn in self._subscribers:
                    self._subscribers.remove(fn)

        return unsubscribe

    def _emit(self, kind: str, vm_id: int | None, **detail) -> None:
        if not self._subscribers:
            return
        ev = Event(kind, vm_id, time.time(), detail)
        for fn in list(self._subscribers):
            try:
                fn(ev)
            except Exception:  # a broken subscriber must not break the hypervisor
                log.exception("event subscriber failed on %s", kind)

    # ------------------------------------------------------------------ VMs
    def register_vm(self, vm_id: int, memory_quota_mb: float, compute_quota_percent: float, *,
                    name: str | None = None, cap_percent: float | None = None,
                    default_class: str | WorkloadClass | None = None, socket: str | None = None,
                    memory_quota_bytes: int | None = None, device: int | None = None) -> VMInfo:
        if device is not None and device != self.device_id:
            raise E.InvalidArgument(f"no device {device}; this daemon has device {self.device_id} only")
        if not isinstance(vm_id, int) or not 0 < vm_id <= MAX_VM_ID:
            raise E.InvalidArgument(f"VM id must be an integer in 1..{MAX_VM_ID}, got {vm_id!r}")
        quota = memory_quota_bytes if memory_quota_bytes is not None else int(memory_quota_mb * 1_000_000)
        _check_quota(quota)
        name = name if name is not None else f"vm{vm_id}"
        if not name or len(name) > MAX_VM_NAME or not name.isprintable():
            raise E.InvalidArgument(f"VM name must be 1..{MAX_VM_NAME} printable characters")
        wclass = class_of(default_class)
        check_share(compute_quota_percent, cap_percent)
        with self._lock:
            if vm_id in self._vms:
                raise E.AlreadyExists(f"VM {vm_id} is already registered")
            try:
                self.scheduler.add_vm(vm_id, compute_quota_percent, cap_percent)
            except ValueError as exc:
                raise E.InvalidArgument(str(exc)) from exc
            try:
                self.memory.add_vm(vm_id, quota)
            except E.PxosError:
                self.scheduler.remove_vm(vm_id)
                raise
            self._add_vm(VMRecord(vm_id, name, compute_quota_percent, cap_percent, wclass, socket))
            info = self._vm_info(vm_id)
        self._emit("vm_registered", vm_id, name=name, memory_quota=quota, share=compute_quota_percent,
                   cap=cap_percent)
        return info

    def unregister_vm(self, vm_id: int) -> None:
        with self._lock:
            self._vm(vm_id)
            why = f"VM {vm_id} was removed from pxos-hvd by the operator"
            self.compiles.forget(vm_id)
            self._reset_locked(vm_id, why, error=E.VMGone)
            for t in self.scheduler.remove_vm(vm_id):  # nothing should be left; be exact anyway
                self._fail_ticket(t, E.VMGone(why))
            self.memory.remove_vm(vm_id)
            self.classifier.forget(vm_id)
            self._drop_vm(vm_id)  # a launch of it still running is no longer counted
        self.dispatcher.flush_completions()  # its cancelled launches are answered now, as on a reset
        self._emit("vm_unregistered", vm_id)

    def set_domain(self, vm_id: int, domain: str | None) -> None:
        """Record which libvirt domain the VM serves now (None: none); shown by vm list."""
        with self._lock:
            self._vm(vm_id).domain = domain

    def set_quota(self, vm_id: int, *, memory_bytes: int | None = None, share_pct: float | None = None,
                  cap_pct: float | None | bool = False,
                  default_class: str | WorkloadClass | None | bool = False, evict: bool = False) -> VMInfo:
        """Change a VM's quota, share, cap or default class at run time. ``cap_pct=None``
        removes the cap and ``default_class=None`` the class (launches are classified by
        inference again); leaving either out (False) keeps the current one. A memory quota
        below the VM's usage is refused (QuotaBelowUsage) unless ``evict``: then its buffers
        go to host RAM now and its launches keep running (MemoryManager.set_quota)."""
        wclass = False if default_class is False else class_of(default_class)
        with self._lock:
            vm = self._vm(vm_id)
            share = vm.share if share_pct is None else share_pct
            cap = vm.cap if cap_pct is False else cap_pct
            check_share(share, cap)
            if memory_bytes is not None:
                _check_quota(memory_bytes)
                used = self.memory.vm(vm_id).used
                if memory_bytes < used and not evict:
                    raise E.QuotaBelowUsage(vm_id, memory_bytes, used)
            if share_pct is not None or cap_pct is not False:
                try:
                    self.scheduler.set_share(vm_id, share, cap)
                except ValueError as exc:
                    raise E.InvalidArgument(str(exc)) from exc
                vm.share, vm.cap = share, cap
                self.dispatcher.wake()  # a cap lifted or widened may make queued work eligible
            moved = 0
            if memory_bytes is not None:
                moved = self.memory.set_quota(vm_id, memory_bytes, evict=evict)
            if wclass is not False:
                vm.default_class = wclass
            info = self._vm_info(vm_id)
        self._emit("quota_changed", vm_id, memory_quota=info.memory_quota, share=info.share_pct,
                   cap=info.cap_pct, default_class=info.default_class, evicted_bytes=moved)
        return info

    def vm_info(self, vm_id: int) -> VMInfo:
        with self._lock:
            return self._vm_info(vm_id)

    def list_vms(self) -> list[VMInfo]:
        with self._lock:
            return [self._vm_info(v) for v in sorted(self._vms)]

    def _vm_info(self, vm_id: int) -> VMInfo:
        vm, mem = self._vm(vm_id), self.memory.vm(vm_id)
        return VMInfo(vm_id, vm.name, mem.quota, mem.used, vm.share, vm.cap,
                      vm.default_class.name if vm.default_class is not None else None, vm.socket, vm.domain,
                      self.device_id)

    # ---- the in-flight counts: a VM's (VMRecord.inflight) and this device's (launches_in_flight)
    def _add_vm(self, vm: VMRecord) -> None:
        """A VM placed on this device (registered, or moved here) with its launches (lock held)."""
        self._vms[vm.vm_id] = vm
        self.launches_in_flight += vm.inflight

    def _drop_vm(self, vm_id: int) -> VMRecord:
        """A VM leaving this device (removed, or moved away) with its launches (lock held)."""
        vm = self._vms.pop(vm_id)
        self.launches_in_flight -= vm.inflight
        return vm

    def _count_launch(self, vm: VMRecord) -> None:
        vm.inflight += 1
        self.launches_in_flight += 1

    def _launch_ended(self, job: Job) -> VMRecord | None:
        """A launch completed, failed or was cancelled (lock held): its VM's record, its
        count taken back; None when its VM is gone (removed: its count left with it). No
        VM of the same id can be registered on this device meanwhile: the memory manager
        refuses the id while a launch of the old VM holds memory (MemoryManager.add_vm),
        and a launch lets go of its memory under the same hold of the lock as this."""
        vm = self._vms.get(job.vm_id)
        if vm is None:
            return None
        vm.inflight -= 1
        self.launches_in_flight -= 1
        return vm

    def _vm(self, vm_id: int) -> VMRecord:
        try:
            return self._vms[vm_id]
        except KeyError:
            raise E.NotFound(f"no VM {vm_id}") from None

    def device_info(self) -> DeviceInfo:
        with self._lock:
            m = self.memory
            i = self._info
            return DeviceInfo(self.executor.name, i.device_name, m.pool_bytes, m.pool_used,
                              m.host_budget, m.host_used, i.vendor, i.api, i.time_source)

    def device_stats(self) -> list[DeviceUse]:
        """This device's use (a DeviceSet lists one per device)."""
        info = self.device_info()
        with self._lock:
            st = self.scheduler.stats()
            share = sum(v.share for v in self._vms.values())
            queued = sum(r.queue_depth for r in st.vms)
        util = min(st.busy_seconds_window / st.window_seconds, 1.0) if st.window_seconds else 0.0
        d = self.dispatcher
        return [DeviceUse(self.device_id, info, len(st.vms), share, util, d.busy_seconds, d.launches, queued)]

    def move_vm(self, vm_id: int, device: int, **_kw) -> dict:
        """One device: nowhere to move to (a DeviceSet moves VMs; devices.py)."""
        with self._lock:
            self._vm(vm_id)
        raise E.InvalidArgument(f"this daemon has one device ({self.device_id}); [daemon] devices names more")

    # ------------------------------------------------------------------ buffers
    def alloc(self, vm_id: int, dtype: DType | str, shape: Sequence[int], *, session: int = 0) -> BufferInfo:
        spec = tensor_spec(dtype, shape)
        with self._lock:
            self._vm(vm_id)
            buf = self.memory.alloc(vm_id, session, spec)
            return buffer_info(buf)

    def free(self, vm_id: int, handle: int, *, session: int = 0) -> None:
        with self._lock:
            self._vm(vm_id)
            if self.models.is_shared_handle(vm_id, session, handle):
                raise E.ReadOnly(f"buffer {handle} is a shared model's tensor; close the model instead")
            self.memory.free(vm_id, session, handle)

    def buffer_info(self, vm_id: int, handle: int, *, session: int = 0) -> BufferInfo:
        with self._lock:
            self._vm(vm_id)
            return buffer_info(self._lookup(vm_id, session, handle))

    def _lookup(self, vm_id: int, session: int, handle: int) -> Buffer:
        """The session's own buffer, or a tensor of a model the session has open."""
        try:
            return self.memory.lookup(vm_id, session, handle)
        except E.NotFound:
            return self.models.shared_buffer(vm_id, session, handle)

    def write(self, vm_id: int, handle: int, offset: int, data, *, session: int = 0) -> int:
        """Copy bytes into a buffer at a byte offset. ``data`` is bytes-like or a sequence of
        bytes-like chunks (a guest's scatter-gather list), written back to back."""
        chunks = [data] if isinstance(data, bytes | bytearray | memoryview) else list(data)
        buf, target, on_device, waits = self._begin_transfer(vm_id, session, handle, writing=True)
        try:
            for fence in waits:
                fence.wait()
            return self.memory.copy_in(target, on_device, offset, chunks)
        finally:
            with self._lock:
                self.memory.end_transfer(buf)

    def write_from(self, vm_id: int, handle: int, offset: int, length: int,
                   fill: Callable[[memoryview], object], *, session: int = 0) -> int:
        """Like write(), but the caller copies: ``fill(view)`` is called once with a writable
        view of exactly ``length`` bytes at ``offset`` (the buffer itself, or pinned staging
        on a GPU), so a scatter-gather source is gathered with a single copy."""
        buf, target, on_device, waits = self._begin_transfer(vm_id, session, handle, writing=True)
        try:
            for fence in waits:
                fence.wait()
            return self.memory.fill_in(target, on_device, offset, length, fill)
        finally:
            with self._lock:
                self.memory.end_transfer(buf)

    def vm_usage(self, vm_id: int) -> tuple[int, int, float, float | None]:
        """(memory quota, memory used, share %, cap %) without building a VMInfo: the
        figures a guest's GET_INFO reports, read on every request."""
        with self._lock:
            vm, mem = self._vm(vm_id), self.memory.vm(vm_id)
            return mem.quota, mem.used, vm.share, vm.cap

    def read_into(self, vm_id: int, handle: int, offset: int, dsts: Sequence[memoryview], *,
                  session: int = 0) -> int:
        buf, source, on_device, waits = self._begin_transfer(vm_id, session, handle, writing=False)
        try:
            for fence in waits:
                fence.wait()
            return self.memory.copy_out(source, on_device, offset, dsts)
        finally:
            with self._lock:
                self.memory.end_transfer(buf)

    def read(self, vm_id: int, handle: int, offset: int = 0, length: int | None = None, *,
             session: int = 0) -> bytes:
        with self._lock:
            self._vm(vm_id)
            nbytes = self._lookup(vm_id, session, handle).nbytes
        length = nbytes - offset if length is None else length
        if length < 0 or offset < 0 or offset + length > nbytes:
            raise E.InvalidArgument(f"range [{offset}, {offset + length}) lies outside the buffer's {nbytes} bytes")
        out = bytearray(length)
        self.read_into(vm_id, handle, offset, [memoryview(out)], session=session)
        return bytes(out)

    def _begin_transfer(self, vm_id: int, session: int, handle: int, writing: bool):
        with self._lock:
            self._vm(vm_id)
            buf = self._lookup(vm_id, session, handle)
            target, on_device, waits = self.memory.begin_transfer(buf, writing)
            return buf, target, on_device, waits

    # ------------------------------------------------------------------ kernels
    def compile(self, vm_id: int, source: str | bytes, *, session: int = 0) -> list[KernelInfo]:
        with self._lock:
            self._vm(vm_id)
        try:  # cache, inline or a worker process; one at a time per VM, within its budget
            program = self.compiler.compile(vm_id, source)
        except primitive_lang.PrimitiveError as exc:
            raise E.PrimitiveError(str(exc), exc.diagnostics) from exc
        with self._lock:
            vm = self._vm(vm_id)
            if len(vm.kernels) + len(program.kernels) > MAX_KERNELS_PER_VM:
                raise E.InvalidArgument(
                    f"VM {vm_id} would hold more than {MAX_KERNELS_PER_VM} compiled kernels; free some")
            records = [KernelRecord(KernelInfo(next(self._kernel_ids), ck.name, ck), session,
                                    host_bytes=kernel_host_bytes(ck)) for ck in program.kernels]
            vm.keep_kernels(records)  # all or none, within the VM's host budget
            return [r.info for r in records]

    def kernel_info(self, vm_id: int, kernel_id: int, *, session: int = 0) -> KernelInfo:
        with self._lock:
            return self._kernel(vm_id, kernel_id, session).info

    def free_kernel(self, vm_id: int, kernel_id: int, *, session: int = 0) -> None:
        with self._lock:
            self._kernel(vm_id, kernel_id, session)
            self._vms[vm_id].drop_kernel(kernel_id)

    def _kernel(self, vm_id: int, kernel_id: int, session: int) -> KernelRecord:
        k = self._vm(vm_id).kernels.get(kernel_id)
        if k is None or k.session != session:
            raise E.NotFound(f"no kernel with id {kernel_id}")
        return k

    # ------------------------------------------------------------------ launches
    def launch(self, vm_id: int, kernel_id: int, bindings: Mapping[str, int | Scalar], *,
               priority: int | None = None, class_hint: str | WorkloadClass | None = None,
               session: int = 0, run_here: bool = False, run_here_max_s: float | None = None) -> Completion:
        """Queue a kernel with its params bound to this VM's buffers (by handle) or to
        scalars. Problems with the request raise here; the run's outcome arrives on the
        returned Completion. ``run_here``: a caller about to wait for it (a serial caller)
        lets it run on its own thread when the device is idle (launch_wait).
        ``run_here_max_s`` bounds that: only a launch estimated at most this long runs
        here, and nothing else with it (a transport's thread that must stay responsive:
        docs/scheduling.md, "Serial fast path")."""
        if priority is not None and (isinstance(priority, bool) or not isinstance(priority, int)
                                     or not 0 <= priority <= 100):
            raise E.InvalidArgument(f"priority must be an integer 0..100, got {priority!r}")
        hint = class_of(class_hint) if class_hint is not None else None
        with self._lock:
            vm = self._vms.get(vm_id)
            if vm is None:
                raise E.NotFound(f"no VM {vm_id}")
            if self.stopping:
                raise E.Cancelled("the daemon is stopping: no new launches")
            record = vm.kernels.get(kernel_id)
            if record is None or record.session != session:
                raise E.NotFound(f"no kernel with id {kernel_id}")  # as _kernel()
            plan, bound, buffers = plan_launch(vm, record, session, bindings,
                                               lambda h: self._lookup(vm_id, session, h),
                                               self.memory._vm(vm_id).buffers)
            if vm.inflight >= MAX_INFLIGHT_PER_VM:
                raise E.Busy(f"VM {vm_id} has {vm.inflight} launches in flight, the limit; wait for one")
            temp, cost = plan.temp_bytes, plan.cost
            prio = priority if priority is not None else plan.priority
            wclass, est = self.classifier.classify(vm_id, hint=hint if hint is not None else plan.hint,
                                                   priority=prio, cost=cost, default=vm.default_class)
            self.memory.queue_launch(vm_id, temp, plan.unique_bytes, buffers.values())  # admitted, pinned
            launch_id = next(self._launch_ids)
            completion = Completion(launch_id, vm_id, session)
            now = self.clock()
            job = Job(launch_id, vm_id, session, vm.generation, bound, buffers, plan.scalars, temp,
                      completion, wclass, now, est_seconds=est, cost=cost, distinct=plan.distinct)
            ticket = Ticket(vm_id, launch_id, wclass, 50 if prio is None else prio, cost, est, now, job)
            if not run_here:
                completion._runner = self.dispatcher.claim  # for a wait() that comes while it is queued
            if vm.held is not None:  # the VM is moving to another device: it runs there (devices.py)
                vm.held.append(ticket)
            else:
                self.scheduler.submit(ticket)
                if not run_here and self.dispatcher.defer_wake():
                    # A serial caller's launch: its wait() runs it (Dispatcher.defer_wake).
                    completion._wake = self.dispatcher.wake
            self._count_launch(vm)
        if not run_here:
            if completion._wake is not None:
                return completion
        elif (run_here_max_s is None or est <= run_here_max_s) and self.dispatcher.run_here(
                completion, own=job if run_here_max_s is not None else None):
            return completion
        self.dispatcher.wake()
        return completion

    def launch_nowait(self, vm_id: int, kernel_id: int, bindings: Mapping[str, int | Scalar], *,
                      run_here_max_s: float, **kw) -> Completion | None:
        """launch(run_here=True, run_here_max_s=...) for a thread that must never wait (a
        transport's loop thread, which also answers QEMU): None, with nothing done, when the
        hypervisor's lock is held elsewhere (its holder may be waiting on the device);
        otherwise the lock is held throughout, so the launch is queued and, when it is the
        only launch on the device, its memory ready and its estimate within the bound, run
        here to its end without anything changing under it (docs/scheduling.md, "Serial
        fast path"). ``run_here_max_s=0``: queue it only."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            return self.launch(vm_id, kernel_id, bindings, run_here=True, run_here_max_s=run_here_max_s, **kw)
        finally:
            self._lock.release()

    def launch_wait(self, vm_id: int, kernel_id: int, bindings: Mapping[str, int | Scalar], *,
                    timeout: float | None = None, **kw) -> LaunchResult:
        """launch() and wait for the result, for a serial caller: when the device is idle
        and the VM eligible, the launch runs on this thread, without the two thread
        hand-offs of the dispatch thread (docs/scheduling.md, "Serial fast path")."""
        return self.launch(vm_id, kernel_id, bindings, run_here=True, **kw).wait(timeout)

    def _cancel_queued(self, vm_id: int, predicate: Callable[[Ticket], bool], why: str,
                       error: type[E.Cancelled] = E.Cancelled) -> int:
        tickets = self.scheduler.cancel(vm_id, predicate)
        vm = self._vms.get(vm_id)
        if vm is not None and vm.held:  # launches waiting for a move to another device: queued too
            tickets += [t for t in vm.held if predicate(t)]
            vm.held[:] = [t for t in vm.held if not predicate(t)]
        for t in tickets:
            self._fail_ticket(t, error(why))
        return len(tickets)

    def _fail_ticket(self, t: Ticket, error: E.PxosError) -> None:
        self._fail_job(t.payload, error)

    def _fail_job(self, job: Job, error: E.PxosError) -> None:
        """Complete a job that never ran: cancelled, or refused at start (lock held)."""
        self.memory.retire_launch(job.temp_bytes)
        for buf, writes in job.buffers.values():
            self.memory.unpin(buf, writes)
        vm = self._launch_ended(job)
        if vm is not None:
            vm.launches_total += 1
            vm.launches_failed += 1
            vm.by_class[job.wclass.name] = vm.by_class.get(job.wclass.name, 0) + 1
        now = self.clock()
        res = LaunchResult(job.launch_id, job.vm_id, error.status, error, 0, int((now - job.enqueued_at) * 1e9),
                           int((now - job.enqueued_at) * 1e9), job.wclass.name, job.bound.kernel.name)
        self.dispatcher.complete_later(job.completion, res)

    # ------------------------------------------------------------------ shared models
    def load_model(self, name: str, path: str, dtype: str = "float32", *, plan=None) -> ModelInfo:
        """Load a GGUF file as a shared read-only model (seconds; other VMs keep running).
        ``plan``: the ids and handles of its copy on another device (devices.py)."""
        return self.models.load(name, path, dtype, plan=plan)

    def remove_model(self, name: str) -> None:
        self.models.remove(name)

    def list_models(self) -> list[ModelInfo]:
        return self.models.list()

    def model_devices(self, name: str) -> list[int]:
        """[this device] if it holds model ``name`` (a DeviceSet asks each device)."""
        return [self.device_id] if any(m.name == name for m in self.models.list()) else []

    def open_model(self, vm_id: int, name: str, *, session: int = 0) -> ModelOpen:
        with self._lock:
            self._vm(vm_id)
            opened = self.models.open(vm_id, session, name)
        self._emit("model_opened", vm_id, model=name, session=session)
        return opened

    def close_model(self, vm_id: int, model_id: int, *, session: int = 0) -> None:
        with self._lock:
            self._vm(vm_id)
            self.models.close(vm_id, session, model_id)

    # ------------------------------------------------------------------ sessions, reset, hints
    def close_session(self, vm_id: int, session: int) -> SessionCloseResult:
        """A guest process went away: cancel its queued launches, free its buffers and kernels."""
        with self._lock:
            vm = self._vm(vm_id)
            cancelled = self._cancel_queued(vm_id, lambda t: t.payload.session == session,
                                            "the guest session was closed")
            nbuf, nbytes = self.memory.release_session(vm_id, session)
            self.models.close_all(vm_id, session)
            mine = [k for k, v in vm.kernels.items() if v.session == session]
            for k in mine:
                vm.drop_kernel(k)
        self.dispatcher.flush_completions()
        return SessionCloseResult(nbuf, nbytes, len(mine), cancelled)

    def reset_vm(self, vm_id: int, why: str = "the device was reset") -> SessionCloseResult:
        """The VM's device was reset (driver unloaded, reboot, QEMU gone): release all of
        its buffers, kernels and queued launches. A launch already running finishes; its
        buffers go as soon as it lets go of them."""
        with self._lock:
            self._vm(vm_id)
            res = self._reset_locked(vm_id, why)
        self.dispatcher.flush_completions()
        self._emit("vm_reset", vm_id, reason=why, buffers_freed=res.buffers_freed,
                   launches_cancelled=res.launches_cancelled)
        return res

    def _reset_locked(self, vm_id: int, why: str, error: type[E.Cancelled] = E.Cancelled) -> SessionCloseResult:
        vm = self._vms[vm_id]
        vm.generation += 1
        cancelled = self._cancel_queued(vm_id, lambda t: True, why, error)
        nbuf, nbytes = self.memory.release_vm(vm_id)
        self.memory.hold_after_reset(vm_id)  # usage is zero now, though a launch still runs
        self.models.close_all(vm_id)
        nk = vm.drop_all_kernels()
        vm.idle = False
        self.memory.idle_hint(vm_id, False)
        return SessionCloseResult(nbuf, nbytes, nk, cancelled)

    def idle_hint(self, vm_id: int, idle: bool) -> None:
        with self._lock:
            self._vm(vm_id).idle = bool(idle)
            self.memory.idle_hint(vm_id, bool(idle))
        self._emit("idle_hint", vm_id, idle=bool(idle))

    # ------------------------------------------------------------------ observation
    def stats(self, vm_id: int) -> VMStats:
        """One VM's figures: O(1) under the lock (a guest's STATS reads this on request), the
        latency percentiles sorted after it is released."""
        with self._lock:
            fields, latencies = self._stats_locked(vm_id)
        return _finish_stats(fields, latencies)

    def all_stats(self) -> list[VMStats]:
        with self._lock:
            taken = [self._stats_locked(v) for v in sorted(self._vms)]
        return [_finish_stats(f, lat) for f, lat in taken]

    def _stats_locked(self, vm_id: int) -> tuple[dict, list[int]]:
        """What stats() reports, read under the lock in time independent of the number of
        VMs and of the VM's buffers: the scheduler's row of this VM alone, counters kept
        as things change, and a copy of the latency ring (bounded by LATENCY_SAMPLES)."""
        vm, mem = self._vm(vm_id), self.memory.vm(vm_id)
        per = self.scheduler.vm_stats(vm_id)
        fields = dict(
            vm_id=vm_id, name=vm.name, memory_quota=mem.quota, memory_used=mem.used,
            memory_device_bytes=mem.device_bytes, memory_host_bytes=mem.host_bytes,
            share_pct=vm.share, cap_pct=vm.cap, achieved_share=per.achieved_pct / 100.0,
            device_seconds_total=vm.device_seconds, launches_total=vm.launches_total,
            launches_failed=vm.launches_failed, launches_by_class=dict(vm.by_class),
            queue_depth=per.queue_depth, inflight=vm.inflight,
            buffers=mem.live_buffers, kernels=len(vm.kernels),
            vm_switches_in=vm.switches_in, idle=vm.idle, device=self.device_id,
            extra={**self.memory.vm_extra(vm_id), "kernel_host_bytes": vm.kernel_host_bytes,
                   "lookahead_depth": self.prefetch.depth,
                   "prefetch_inflight_bytes": self.memory.inflight_bytes},
        )
        return fields, list(vm.latencies_ns)

    @property
    def lookahead_depth(self) -> int:
        """How many launches ahead the scheduler's plan is read (adapted by prefetch)."""
        return self.prefetch.depth

    def lookahead(self, n: int | None = None) -> list[Ticket]:
        with self._lock:
            return self.scheduler.lookahead(self.prefetch.depth if n is None else n)
