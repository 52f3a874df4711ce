"""The dispatcher: one thread that asks the scheduler what runs next and runs it.

Launches run one at a time on the executor (so device time is measured cleanly and a
VM's launches keep their order); the lock is released while a launch runs. Before a
launch starts, its buffers are made resident (or their copies queued) and room is made
for its temporaries; then the prefetcher queues copies for the launches the scheduler
intends to run next, which proceed on the copy stream while this launch computes.
After each launch the measured device time is charged to its VM, the classifier and the
prefetcher learn from it, and the completion's callbacks run on this thread, outside
the lock.

A VM switch is the device going from one VM's launch to another's while the second was
already waiting: its time is the gap between the end of one and the start of the next,
including any time the device stalled waiting for the second one's memory.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from primitive_lang import BoundKernel
from scheduler import LaunchCost, WorkloadClass

from . import errors as E
from .executor import Pending, RunTiming, Steps
from .preemption import DEFAULT_TIME_SLICE_S, SHORT_SLICES, Preemption
from .records import KERNEL_MIX_MAX
from .residency import LaunchResidency, NotReady
from .types import Completion, LaunchResult, Scalar, launch_result

if TYPE_CHECKING:
    from .core import Hypervisor
    from .memory import Buffer

log = logging.getLogger("pxos.dispatch")

# VM switch gaps kept for p50/p99 (the most recent).
SWITCH_SAMPLES = 4096
# While a buffer the next launch needs is mid-transfer (a guest WRITE/READ), retry after this.
NOT_READY_RETRY_S = 0.0005
# Late binding of the next launch on an asynchronous device: the dispatcher submits the
# next launch this long before the running one is expected to end, not at once, so that
# a latency-sensitive launch arriving meanwhile can still be picked ahead of queued bulk
# work. Long enough to pick, prepare and issue a launch; launches shorter than this are
# simply pipelined back to back.
PIPELINE_LEAD_S = 0.001
# A stepped launch's queued work is bounded by half a slice (executor/stepping.py): the
# next launch is picked when that much is left, but never with less than this left.
STEPS_LEAD_MIN_S = 0.0002
# While holding, look at the running launch's completion this often (a launch that ends
# early is noticed within this; the device then idles for it plus one pick).
HOLD_POLL_S = 0.0001
# Hold only for this fraction of the estimate: estimates err, and holding past the end of
# a launch idles the device, while picking a little early costs nothing.
HOLD_FRACTION = 0.75
# Say so in the log when a launch has waited this long for memory (a stuck transfer?).
NOT_READY_WARN_S = 2.0
# A launch estimated at most this long (or a quarter of the time slice, if less) runs whole,
# as one step: stepping it costs more host time than the wait it could save an urgent
# launch (docs/scheduling.md, "Preemption").
UNSTEPPED_MAX_S = 0.0001
# Bytes of idle VMs' dirty buffers written back per launch, at most.
WRITEBACK_PER_LAUNCH = 64 << 20
# Deferred wake (docs/scheduling.md, "Serial fast path"): while a serial caller's wait()s
# run its launches, the idle dispatch thread wakes at least this often by itself, and a
# plain launch() of that caller leaves it asleep: a launch whose wait() never comes runs
# at most this late.
DEFERRED_WAKE_MAX_S = 0.005


_NO_TIMING = RunTiming(0.0, 0.0)
CLASS_NAMES = {c: c.name for c in WorkloadClass}  # (an enum's .name is a property: slow per launch)


@dataclass(slots=True)
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
    residency: LaunchResidency | None = None
    args: dict[str, Any] = field(default_factory=dict)
    switch_from: int | None = None
    prev_vm: int | None = None  # the VM whose launch ended while this one was waiting
    pending: Pending | None = None  # handed to the executor
    covered: int | None = None  # look-ahead launches the prefetch after this one could cover
    est_seconds: float = 0.0  # the classifier's estimate of its device time
    submitted_at: float = 0.0  # perf_counter when handed to the device
    error: E.PxosError | None = None
    cost: LaunchCost | None = None  # what the classifier was told at launch (observed again at the end)
    steps: Steps | None = None  # run as bounded steps (preemptible), instead of pending
    yields: int = 0  # times it gave the device to a more urgent launch
    no_yield: bool = False  # finish without yielding again
    completed: bool = False
    distinct: bool = False  # no buffer bound to two params (its launch plan says)

    def unique_buffers(self) -> list[Buffer]:
        if self.distinct:
            return [b for b, _ in self.buffers.values()]
        return list({b.handle: b for b, _ in self.buffers.values()}.values())


class Dispatcher(Preemption):
    def __init__(self, hv: Hypervisor):
        self.hv = hv
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._pending: deque[tuple[Completion, LaunchResult]] = deque()
        self.switch_gaps: deque[float] = deque(maxlen=SWITCH_SAMPLES)
        # The same gap between back-to-back launches of one VM: the baseline of a switch.
        self.same_vm_gaps: deque[float] = deque(maxlen=SWITCH_SAMPLES)
        self.switches = 0
        self.busy_seconds = 0.0
        self.stall_seconds = 0.0
        self.launches = 0
        self._last_vm: int | None = None  # VM of the launch submitted last
        self._last_end = 0.0  # when the last completed launch ended (host clock)
        self.running: Job | None = None
        self._inflight: Job | None = None  # submitted to the device, not yet completed
        self._last_complete = 0.0  # perf_counter when the last launch was completed
        self._wake = threading.Event()  # set only to stop: interrupts a hold
        self._work = threading.Event()  # set when work may be ready
        self._arrived = threading.Event()  # the same, for a stepped launch to look (cleared there only)
        self.before_run: list[Callable[[Job], None]] = []  # test hooks, outside the lock
        self.time_slice_s = DEFAULT_TIME_SLICE_S
        # Whether an asynchronous (GPU) executor runs launches as steps (Hypervisor's
        # gpu_stepping; NumPy launches are always stepped while time_slice_s > 0).
        self.device_steps = True
        self.preemptions = 0  # times a running launch yielded to a more urgent one
        self._parked: Job | None = None  # the launch that yielded, while others run
        self._ran_at: list[dict[int, float]] = [{} for _ in WorkloadClass]  # class -> VM -> last run
        # The device token: whoever runs launches holds it — the dispatch thread (it lets go
        # only while it waits for work, nothing in flight) or a caller on the serial fast
        # path (run_here). Picking under the token keeps one launch at a time and VM order.
        self._device = threading.Lock()
        self.ran_here = 0  # launches run on a caller's thread (the serial fast path)
        # The deferred wake (defer_wake): wait()s that ran their own launch (claim), the
        # count at the dispatch thread's last idle wait, the thread of the latest, and
        # whether the idle wait is bounded by DEFERRED_WAKE_MAX_S (set under the lock).
        self._claims = 0
        self._claims_seen = 0
        self._claimer: int | None = None
        self._polling = False

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping = False
        self._wake.clear()
        self._thread = threading.Thread(target=self._loop, name="pxos-dispatch", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        """Whether the dispatch thread is running (what /readyz checks)."""
        t = self._thread
        return t is not None and t.is_alive() and not self._stopping

    def stop(self, timeout: float) -> None:
        with self.hv._lock:
            self._stopping = True
        self._wake.set()
        self._work.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.flush_completions()

    # Completions decided under the lock (cancellations) are delivered after it is released.
    def complete_later(self, completion: Completion, result: LaunchResult) -> None:
        self._pending.append((completion, result))

    def flush_completions(self) -> None:
        pending = self._pending
        while pending:  # (an empty deque is the common case: no exception raised for it)
            try:
                completion, result = pending.popleft()
            except IndexError:  # another thread flushed it meanwhile
                return
            self._deliver(completion, result)

    def _deliver(self, completion: Completion, result: LaunchResult) -> None:
        cbs = completion._finish(result)
        for cb in cbs:
            try:
                cb(completion)
            except Exception:
                log.exception("completion callback of launch %d failed", completion.launch_id)
        if self.hv._subscribers:
            self.hv._emit("launch_completed", result.vm_id, launch_id=result.launch_id, status=result.status,
                          kernel=result.kernel, wclass=result.wclass, device_ns=result.device_ns,
                          queue_ns=result.queue_ns, total_ns=result.total_ns)

    def _loop(self) -> None:
        with self._device:
            self._loop_holding()

    def _loop_holding(self) -> None:
        """Keep the device fed. On an asynchronous device (a GPU stream) the next launch is
        picked, made resident and submitted before waiting for the current one, so the
        device never idles while the host does bookkeeping; on the NumPy device, where
        submit does the work, each launch is completed before the next one starts. If the
        next launch's memory cannot be made ready beside the one in flight (a pool too
        small for both working sets), the one in flight is completed first."""
        while True:
            job = self._next(block=self._inflight is None)
            if job is None:
                if self._inflight is not None:
                    self._complete_inflight()
                    continue
                return  # stopping, nothing in flight
            submitted = self._prepare(job) and self._submit(job)
            self.flush_completions()
            if self._inflight is not None:
                self._complete_inflight()
            if submitted and job.steps is not None and self.hv.executor.asynchronous:
                # A stepped launch on a GPU: its first steps went with the submit (queued
                # behind the launch just completed); the rest are issued now, a slice ahead
                # of the device, yielding to more urgent launches (preemption.py). Its last
                # steps then run while the next launch is picked and its first steps queued.
                self._issue_steps(job)
                submitted = not job.completed
            if submitted:
                self._inflight = job
                if not self.hv.executor.asynchronous:
                    self._complete_inflight()
                elif job.steps is None:
                    self._hold(job)
                else:
                    self._hold_steps(job)
            self.flush_completions()

    def _hold(self, job: Job) -> None:
        """Wait (without blocking the device) until the launch just submitted is about to
        end, so the next pick sees what arrived meanwhile."""
        start = max(job.submitted_at, self._last_complete)
        target = start + HOLD_FRACTION * job.est_seconds - PIPELINE_LEAD_S
        while not self._stopping and job.pending is not None and not job.pending.done():
            left = target - time.perf_counter()
            if left <= 0:
                return
            self._wake.wait(min(left, HOLD_POLL_S))

    def _hold_steps(self, job: Job) -> None:
        """The same for a stepped launch whose steps are all issued: hold while the work it
        still has queued (its chunks' estimates, corrected by the time the oldest has
        run) is more than the lead needed to pick and prime the next launch."""
        steps = job.steps
        lead = min(PIPELINE_LEAD_S, max(0.5 * self.time_slice_s, STEPS_LEAD_MIN_S))
        while not self._stopping:
            try:
                left = steps.remaining_s()
            except Exception:  # a chunk failed on the device: _complete reports it
                return
            if HOLD_FRACTION * left - lead <= 0:
                return
            self._wake.wait(HOLD_POLL_S)

    def _complete_inflight(self) -> None:
        job, self._inflight = self._inflight, None
        self._complete(job)

    def _next(self, block: bool) -> Job | None:
        """The next ticket's job; None when stopping, or (not blocking) when none is ready.
        Waits on an event that launch() sets after releasing the lock, so a wake-up never
        has to fight the submitter for the lock (cleared before each pick: no lost wake)."""
        hv = self.hv
        while not self._stopping:
            if self._work.is_set():
                self._work.clear()
            with hv._lock:
                ticket = hv.scheduler.pick()
                if ticket is not None:
                    job = ticket.payload
                    if job.completion._wake is not None:  # deferred, and its wait() did not come first
                        self._claimer = None
                    return job
                if not block:
                    return None
                wait = hv.scheduler.next_eligible_in()
                # A serial caller's wait()s ran launches since the last idle wait: wait at
                # most DEFERRED_WAKE_MAX_S, so its launch() need not wake this thread.
                self._polling = self._claims != self._claims_seen and self._claimer is not None
                if self._polling:
                    self._claims_seen = self._claims
                    wait = DEFERRED_WAKE_MAX_S if wait is None else min(wait, DEFERRED_WAKE_MAX_S)
            self._device.release()  # nothing in flight: a caller may run a launch meanwhile
            got = False
            try:
                got = self._wait_for_work(wait)
            finally:
                if not got:
                    self._device.acquire()  # (stopping, or an error: the loop ends holding it)
        return None

    def _wait_for_work(self, timeout: float | None) -> bool:
        """Wait for work, then take the device token back. While a caller holds it (the
        serial fast path) the dispatch thread does not queue up for it: it waits for work
        again, and the caller wakes it when it lets go with launches still queued
        (Preemption.run_here), so a serial caller's next launch finds the device free
        instead of handed to this thread. The token is tried again after each clear, so a
        release before the clear is seen; a release after it comes with a wake. True once
        it holds the token (False: stopping, the caller takes it)."""
        while True:
            self._work.wait(timeout=timeout)
            if self._stopping:
                return False
            if self._device.acquire(blocking=False):
                return True
            self._work.clear()
            if self._device.acquire(blocking=False):
                return True
            if self._claims != self._claims_seen and self._claimer is not None:
                # A caller's wait() holds the device for its own launch: its next launch()
                # may leave this thread asleep (defer_wake) once this wait is bounded.
                self._claims_seen = self._claims
                timeout = DEFERRED_WAKE_MAX_S if timeout is None else min(timeout, DEFERRED_WAKE_MAX_S)
                self._polling = True

    def claim(self, completion: Completion) -> bool:
        """A plain launch()'s wait() without a timeout (Completion._runner): run_here, noted
        for defer_wake; the dispatch thread is woken if the launch is left to it."""
        self._claims += 1
        self._claimer = threading.get_ident()
        if self.run_here(completion):
            return True
        self.wake()
        return False

    def defer_wake(self) -> bool:
        """Lock held; a plain launch() just queued a launch. Whether to leave the dispatch
        thread asleep: it is idle and its wait bounded (DEFERRED_WAKE_MAX_S), this is the
        only launch queued, and the calling thread's last launch ran in its own wait()
        (a serial caller: launch, wait, launch). Its wait() then runs it, as launch_wait
        would, without waking a thread that would only find the device taken (a wake-up
        per launch: ~5 us of the interpreter lock on a tiny launch, a BLAS thread's core
        on a product). Anything else that asks for the result (``wait(timeout)``,
        ``done()``, a callback) wakes it (Completion._wake)."""
        return (self._polling and self._claimer == threading.get_ident() and self.running is None
                and self._inflight is None and self._parked is None and not self._stopping
                and self.hv.scheduler.queued() == 1)

    def wake(self) -> None:
        """New work may be ready (a launch was queued, a cap or share changed). An event
        already set is left alone (Event.set takes its lock even then): the dispatcher
        clears ``_work`` before it picks, and picks under the lock the work was queued
        under, so an event seen set still guarantees this work is seen."""
        if not self._work.is_set():
            self._work.set()
        if not self._arrived.is_set():
            self._arrived.set()

    def _prepare(self, job: Job) -> bool:
        """Make the job's memory ready and note a VM switch. False if the job failed."""
        hv = self.hv
        waiting_since = None
        job.residency = LaunchResidency()
        while True:
            with hv._lock:
                try:
                    vm = hv._vms.get(job.vm_id)
                    if vm is None or vm.generation != job.generation:
                        # Picked just before its VM was reset or unregistered: it belongs to
                        # the old device, like the queued launches the reset cancelled.
                        raise E.Cancelled("the device was reset before the launch started")
                    mem = hv.memory
                    try:
                        mem.check_temps(job.vm_id, job.temp_bytes)
                    except E.QuotaExceeded:
                        # The VM's launch in flight still holds its temporaries; they are gone
                        # once it completes, so that is a wait, not a failure.
                        if self._inflight is not None and self._inflight.vm_id == job.vm_id:
                            raise NotReady("its VM's previous launch still holds its temporaries") from None
                        raise
                    moving = mem.overcommit_active()
                    if moving:
                        ahead = [t.payload for t in hv.scheduler.lookahead(hv.prefetch.depth)]
                        ahead_lists = [a.unique_buffers() for a in ahead]
                        ahead_sets = [{b.handle for b in a} for a in ahead_lists]
                    else:
                        ahead_lists = ahead_sets = []
                    mem.prepare_launch(job.unique_buffers(), job.temp_bytes, ahead_sets, job.residency, unique=True)
                    mem.reserve_temps(job.vm_id, job.temp_bytes, job.launch_id, checked=True)
                except NotReady as exc:
                    retry_now = self._inflight is not None  # it may hold memory this launch needs
                    now = time.monotonic()
                    if waiting_since is None:
                        waiting_since = now
                    elif now - waiting_since > NOT_READY_WARN_S:
                        log.warning("launch %d of VM %d has waited %.1f s for device memory: %s",
                                    job.launch_id, job.vm_id, now - waiting_since, exc)
                        waiting_since = now
                except E.PxosError as exc:
                    self._picked_but_failed(job, exc)
                    return False
                else:
                    job.args = {n: b.device for n, (b, _) in job.buffers.items()}
                    if moving and hv.prefetch.enabled:
                        job.covered = mem.prefetch(job.unique_buffers(), ahead_lists, hv.prefetch.budget)
                    if mem.any_idle():
                        mem.writeback_idle(WRITEBACK_PER_LAUNCH)
                    job.started = hv.clock()
                    if self._last_vm is not None and (self.running is not None
                                                      or job.enqueued_at <= self._last_end):
                        job.prev_vm = self._last_vm  # it was waiting when the previous launch ended
                        if self._last_vm != job.vm_id:
                            job.switch_from = self._last_vm
                    self._last_vm = job.vm_id
                    self.running = job
                    return True
            if retry_now:
                self._complete_inflight()
                self.flush_completions()
            elif self._parked is not None:
                self._finish_parked()
            else:
                time.sleep(NOT_READY_RETRY_S)

    def _picked_but_failed(self, job: Job, exc: E.PxosError) -> None:
        """Lock held. The scheduler charges every picked ticket once: this one with 0 s."""
        now = self.hv.clock()
        self.hv.scheduler.charge(job.vm_id, 0.0, started=now, ended=now)
        self.hv._fail_job(job, exc)

    def _submit(self, job: Job) -> bool:
        hv = self.hv
        try:
            for hook in self.before_run:
                hook(job)
            args = job.args
            ex = hv.executor
            if job.scalars:
                args = dict(args)
                for n, s in job.scalars.items():
                    args[n] = ex.scalar(s.value, job.bound.shapes[n])
            job.submitted_at = time.perf_counter()
            fences = job.residency.fences if job.residency else ()
            if self._stepped(job, ex):
                job.steps = ex.start_steps(job.bound, args, fences, self.time_slice_s,
                                           tile=lambda j=job: self._urgent_recently(j))
            self._note_ran(job)
            if job.steps is None:
                if self._parked is not None and getattr(ex, "priority_stream", False):
                    job.pending = ex.submit_urgent(job.bound, args, fences)  # (CuPy, an experiment)
                else:
                    job.pending = ex.submit(job.bound, args, fences)
        except Exception as exc:
            job.error = self._launch_error(job, exc)
        return True

    def _stepped(self, job: Job, ex) -> bool:
        """Whether the launch runs as steps (docs/scheduling.md, "Preemption"). A launch
        estimated well under a slice runs whole: stepping it would cost host time per step
        and shorten no wait (on a GPU, preemption.py's SHORT_SLICES, where stepping is on;
        on the host, UNSTEPPED_MAX_S or a quarter of the slice, whichever is less). On the
        host a launch of one op that would not be tiled now runs whole too: it has no step
        boundary inside to yield at (the tiling is decided as its op starts, i.e. now)."""
        slice_s = self.time_slice_s
        if slice_s <= 0 or self._parked is not None:
            return False
        if ex.asynchronous:
            return self.device_steps and not 0 < job.est_seconds < SHORT_SLICES * slice_s
        if job.est_seconds <= min(UNSTEPPED_MAX_S, slice_s / 4):
            return False
        return job.bound.kernel.executed_statement_count > 1 or self._urgent_recently(job)

    def _launch_error(self, job: Job, exc: Exception) -> E.PxosError:
        if isinstance(exc, E.PxosError):
            return exc
        log.exception("launch %d of VM %d failed in the executor", job.launch_id, job.vm_id, exc_info=exc)
        return E.LaunchFailed(f"the executor failed: {type(exc).__name__}: {exc}")

    def _complete(self, job: Job) -> None:
        hv = self.hv
        timing = _NO_TIMING
        if job.steps is not None:
            try:
                timing = self._run_steps(job)
            except Exception as exc:  # an error the device found: the steps that ran are charged
                job.error = job.error or self._launch_error(job, exc)
                try:
                    timing = job.steps.timing()
                except Exception:  # the device itself failed (lost): what was measured
                    timing = RunTiming(job.steps.device_s, 0.0)
            if job.completed:
                return  # finished and completed while it was parked (_finish_parked)
            self._last_complete = time.perf_counter()
        elif job.pending is not None:
            try:
                timing = job.pending.wait()
            except Exception as exc:
                job.error = self._launch_error(job, exc)
            self._last_complete = time.perf_counter()
        error = job.error
        ended = hv.clock()
        device_s, stall_s = timing.device_s, timing.stall_s
        vm_id, started, bound = job.vm_id, job.started, job.bound
        wname = CLASS_NAMES[job.wclass]
        total_ns = int((ended - job.enqueued_at) * 1e9)
        queue_ns = int((started - job.enqueued_at) * 1e9)
        with hv._lock:
            if self.running is job:
                self.running = None
            mem = hv.memory
            mem.end_launch(job.buffers.values(), job.launch_id, job.temp_bytes, job.distinct)
            hv.scheduler.charge(vm_id, device_s, started=started, ended=ended)
            gap = None
            if job.prev_vm is not None:
                gap = timing.gap_s if timing.gap_s is not None else max(started - self._last_end, 0.0) + stall_s
                if job.switch_from is None:
                    self.same_vm_gaps.append(gap)
                    gap = None
                else:
                    self.switches += 1
                    self.switch_gaps.append(gap)
                    if vm_id in hv._vms:
                        hv._vms[vm_id].switches_in += 1
            self._last_end = ended
            self.busy_seconds += device_s
            self.stall_seconds += stall_s
            self.launches += 1
            res = job.residency
            if res is not None:
                if res.hit_bytes or res.miss_bytes or stall_s:  # else the prefetcher learns nothing
                    hv.prefetch.observe(res.hit_bytes, res.miss_bytes, stall_s, device_s, mem.wasted_prefetches,
                                        job.covered)
                acct = mem._vms.get(vm_id)
                if acct is not None:
                    acct.stall_seconds += stall_s
                    if res.miss_bytes:
                        acct.prefetch_misses += 1
                    else:
                        acct.prefetch_hits += 1
            result = launch_result(job.launch_id, vm_id, "PXOS_S_OK" if error is None else error.status, error,
                                   int(device_s * 1e9), queue_ns, total_ns, wname, bound.kernel.name)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("launch %d of VM %d (%s, %s): %s, device %.3f ms, queued %.3f ms", job.launch_id,
                          vm_id, bound.kernel.name, wname, result.status, device_s * 1e3, queue_ns / 1e6)
            vm = hv._launch_ended(job)
            if vm is not None:
                vm.device_seconds += device_s
                vm.launches_total += 1
                by_class = vm.by_class
                by_class[wname] = by_class.get(wname, 0) + 1
                if error is None:
                    vm.latencies_ns.append(total_ns)
                    vm.queue_waits_ns.append(queue_ns)
                    c = bound.cost
                    vm.flops_total += c.flops
                    vm.bytes_total += c.bytes_read + c.bytes_written
                    mix, k = vm.kernel_mix, bound.kernel
                    if k in mix or len(mix) < KERNEL_MIX_MAX:
                        mix[k] = mix.get(k, 0) + 1
                    cost = job.cost or LaunchCost(c.flops, c.bytes_read, c.bytes_written, job.temp_bytes)
                    hv.classifier.observe(vm_id, cost, device_s)
                else:
                    vm.launches_failed += 1
        job.completed = True
        if gap is not None and hv._subscribers:
            hv._emit("vm_switch", vm_id, from_vm=job.switch_from, gap_seconds=gap)
        self._deliver(job.completion, result)
