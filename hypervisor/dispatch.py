"""The dispatcher: one thread that asks the scheduler what runs next and runs it.

Launches run one at a time on the executor (so device time is measured cleanly and a
VM's launches keep their order); the lock is released while a launch runs. After each
launch the measured device time is charged to its VM, the classifier learns from it, and
the completion's callbacks run on this thread, outside the lock.

A VM switch is the device going from one VM's launch to another's while the second was
already waiting: its time is the gap between the end of one and the start of the next.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from primitive_lang import BoundKernel
from scheduler import LaunchCost, WorkloadClass

from . import errors as E
from .types import Completion, LaunchResult, Scalar

if TYPE_CHECKING:
    from .core import Hypervisor
    from .memory import Buffer

log = logging.getLogger("pxos.dispatch")

# VM switch gaps kept for p50/p99 (the most recent).
SWITCH_SAMPLES = 4096


@dataclass
class Job:
    launch_id: int
    vm_id: int
    session: int
    generation: int
    bound: BoundKernel
    buffers: dict[str, tuple[Buffer, bool]]  # param -> (buffer, written?)
    scalars: dict[str, Scalar]
    temp_bytes: int
    completion: Completion
    wclass: WorkloadClass
    enqueued_at: float
    started: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


class Dispatcher:
    def __init__(self, hv: Hypervisor):
        self.hv = hv
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._pending: deque[tuple[Completion, LaunchResult]] = deque()
        self.switch_gaps: deque[float] = deque(maxlen=SWITCH_SAMPLES)
        self.switches = 0
        self.busy_seconds = 0.0
        self.launches = 0
        self._last_vm: int | None = None
        self._last_end = 0.0
        self.running: Job | None = None
        self.before_run: list[Callable[[Job], None]] = []  # memory residency hooks
        self.on_complete: list[Callable[[Job, LaunchResult, float | None], None]] = []

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="pxos-dispatch", daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> None:
        with self.hv._cond:
            self._stopping = True
            self.hv._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.flush_completions()

    # Completions decided under the lock (cancellations) are delivered after it is released.
    def complete_later(self, completion: Completion, result: LaunchResult) -> None:
        self._pending.append((completion, result))

    def flush_completions(self) -> None:
        while True:
            try:
                completion, result = self._pending.popleft()
            except IndexError:
                return
            self._deliver(completion, result)

    def _deliver(self, completion: Completion, result: LaunchResult) -> None:
        for cb in completion._finish(result):
            try:
                cb(completion)
            except Exception:
                log.exception("completion callback of launch %d failed", completion.launch_id)
        self.hv._emit("launch_completed", result.vm_id, launch_id=result.launch_id, status=result.status,
                      kernel=result.kernel, wclass=result.wclass, device_ns=result.device_ns,
                      queue_ns=result.queue_ns, total_ns=result.total_ns)

    def _loop(self) -> None:
        hv = self.hv
        while True:
            with hv._cond:
                job = None
                while not self._stopping:
                    ticket = hv.scheduler.pick()
                    if ticket is not None:
                        job = ticket.payload
                        break
                    wait = hv.scheduler.next_eligible_in()
                    hv._cond.wait(timeout=wait if wait is not None else None)
                if job is None:
                    return
                ready = self._prepare(job)
            self.flush_completions()
            if ready:
                self._run(job)
            self.flush_completions()

    def _prepare(self, job: Job) -> bool:
        """Lock held: reserve the temporaries, note a VM switch. False if the job failed."""
        hv = self.hv
        try:
            hv.memory.reserve_temps(job.vm_id, job.temp_bytes)
        except E.PxosError as exc:
            hv._fail_job(job, exc)
            return False
        job.started = hv.clock()
        if self._last_vm is not None and self._last_vm != job.vm_id and job.enqueued_at <= self._last_end:
            self.switches += 1
            gap = job.started - self._last_end
            self.switch_gaps.append(gap)
            job.extra["switch"] = (self._last_vm, gap)
            vm = hv._vms.get(job.vm_id)
            if vm is not None:
                vm.switches_in += 1
        self.running = job
        return True

    def _run(self, job: Job) -> None:
        hv = self.hv
        error: E.PxosError | None = None
        device_s = 0.0
        if "switch" in job.extra:
            prev, gap = job.extra["switch"]
            hv._emit("vm_switch", job.vm_id, from_vm=prev, gap_seconds=gap)
        try:
            for hook in self.before_run:
                hook(job)
            args: dict[str, Any] = {n: b.device for n, (b, _) in job.buffers.items()}
            for n, s in job.scalars.items():
                args[n] = hv.executor.scalar(s.value, job.bound.shapes[n])
            device_s = hv.executor.run(job.bound, args)
        except E.PxosError as exc:
            error = exc
        except Exception as exc:  # the backend failed; the VM gets EXEC, the daemon carries on
            log.exception("launch %d of VM %d failed in the executor", job.launch_id, job.vm_id)
            error = E.LaunchFailed(f"the executor failed: {type(exc).__name__}: {exc}")
        ended = hv.clock()
        with hv._cond:
            self.running = None
            hv.memory.release_temps(job.vm_id, job.temp_bytes)
            for buf, writes in job.buffers.values():
                hv.memory.unpin(buf, writes)
            hv.scheduler.charge(job.vm_id, device_s, started=job.started, ended=ended)
            self._last_vm, self._last_end = job.vm_id, ended
            self.busy_seconds += device_s
            self.launches += 1
            total_ns = int((ended - job.enqueued_at) * 1e9)
            result = LaunchResult(
                job.launch_id, job.vm_id, "PXOS_S_OK" if error is None else error.status, error,
                int(device_s * 1e9), int((job.started - job.enqueued_at) * 1e9), total_ns,
                job.wclass.name, job.bound.kernel.name)
            vm = hv._vms.get(job.vm_id)
            if vm is not None:
                vm.inflight -= 1
                vm.device_seconds += device_s
                vm.launches_total += 1
                vm.by_class[job.wclass.name] = vm.by_class.get(job.wclass.name, 0) + 1
                if error is None:
                    vm.latencies_ns.append(total_ns)
                    c = job.bound.cost
                    hv.classifier.observe(job.vm_id, LaunchCost(c.flops, c.bytes_read, c.bytes_written,
                                                                job.temp_bytes), device_s)
                else:
                    vm.launches_failed += 1
            for hook in self.on_complete:
                hook(job, result, None)
        self._deliver(job.completion, result)
