"""Preemption at op boundaries and the serial fast path (issue 14; docs/scheduling.md,
"Preemption" and "Serial fast path"): the part of the dispatcher (dispatch.py) that runs a
launch as bounded steps, yields it to a more urgent launch of another VM and resumes it,
and lets a serial caller run a launch on its own thread when the device is idle.

A mixin of ``Dispatcher``: it uses the dispatcher's state (``hv``, ``_device``,
``_arrived``, ``_parked``, ``_inflight``, ``running``) and its steps (``_prepare``,
``_submit``, ``_complete``).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .executor import RunTiming
from .types import Completion

if TYPE_CHECKING:
    from .dispatch import Job

# Preemption at op boundaries (docs/scheduling.md, "Preemption"): on an executor that can
# run a launch as bounded steps (NumPy), the running launch checks after each slice of
# this many seconds whether a more urgent launch of another VM waits, and yields to it.
# Ops estimated longer than a slice are tiled (executor/tiling.py). 0 turns it off.
DEFAULT_TIME_SLICE_S = 0.001
# Tiling costs throughput (each tile of a matmul is a BLAS call of its own, which packs the
# right operand again: +4-6 % per extra tile of a 5 ms product on a CPU), so a launch's ops
# are tiled only while a VM of a more urgent class than the launch's ran a launch within
# this many seconds: latency-sensitive work is about. Op boundaries are yield points always.
URGENT_RECENT_S = 0.5
# On an asynchronous device (a GPU) a launch the classifier estimates under this many time
# slices is submitted whole, not stepped: it is over sooner than a slice's worth of queued
# steps would be, and stepping costs host time per step (executor/stepping.py).
SHORT_SLICES = 0.25
# Launches a caller's thread runs at most on the serial fast path (Dispatcher.run_here).
RUN_HERE_MAX = 4


class Preemption:
    """Dispatcher methods for stepped launches and the serial fast path (see above)."""

    def run_here(self, completion: Completion, own: Job | None = None) -> bool:
        """The serial fast path (issue 14): when the device is idle (the dispatch thread is
        waiting for work), run what the scheduler picks now on the caller's thread — no
        hand-off to the dispatch thread and back, and the completion is delivered on this
        thread — until ``completion`` is done (at most RUN_HERE_MAX launches; the VM may
        not be eligible, or another VM's head may come first). False when the device was
        busy or the launch is still queued: the dispatch thread then runs it. ``own``
        (``completion``'s job; Hypervisor.launch_nowait, a transport's loop thread, which
        must stay responsive): run it alone, without yielding, and only if it is the only
        launch on the device (none of another VM's, of any length, is picked instead) and
        its memory is ready (no wait for a transfer or for room)."""
        if self._thread is None or self._stopping or not self._device.acquire(blocking=False):
            return False
        try:
            for _ in range(1 if own is not None else RUN_HERE_MAX):
                if self._inflight is not None or self._parked is not None:
                    break
                with self.hv._lock:
                    if own is not None and not self._alone_and_ready(own):
                        break
                    ticket = self.hv.scheduler.pick()
                if ticket is None:
                    break
                job = ticket.payload
                if job is own:
                    job.no_yield = True  # short (its estimate bounded): urgent work waits at most that
                self.ran_here += 1
                if self._prepare(job) and self._submit(job):
                    self._complete(job)
                self.flush_completions()
                if completion.done():
                    break
        finally:
            self._device.release()
            if self.hv.scheduler.queued():  # launches left: the dispatch thread's (it waits for this)
                self.wake()
        return completion.done()

    def _alone_and_ready(self, own: Job) -> bool:
        """Lock held. ``own`` is the only launch queued or running on this device (its
        count of launches in flight, which every VM's queued, held and running launches are
        in, is 1: pick() returns it or nothing) and its memory is ready (``_prepare`` takes
        its common case: no NotReady wait). O(1): the count is kept, not summed."""
        hv = self.hv
        if hv.launches_in_flight != 1:
            return False
        return hv.memory.launch_ready(own.unique_buffers(), own.temp_bytes)

    # ---- preemption at op boundaries (docs/scheduling.md, "Preemption") ----------------

    def _run_steps(self, job: Job) -> RunTiming:
        """Run a stepped launch to its end, yielding the device between slices to the more
        urgent launches of other VMs that the scheduler says should go first."""
        self._issue_steps(job)
        return job.steps.timing()

    def _issue_steps(self, job: Job) -> None:
        """Advance a stepped launch until every step is issued (on NumPy: has run; on a GPU
        the last ones, at most a slice, may still run), yielding between slices."""
        hv, steps = self.hv, job.steps
        assert steps is not None
        # A launch arriving sets _arrived (wake): the running launch stops at its next step
        # boundary, not at the end of its slice, and the scheduler is asked at once.
        try:
            while not steps.advance(self.time_slice_s, None if job.no_yield or self._stopping else self._arrived):
                if job.no_yield or self._stopping:
                    continue
                self._arrived.clear()  # before the look: an arrival after it sets it again
                with hv._lock:
                    urgent = hv.scheduler.preempts(job.vm_id, job.wclass, steps.device_s)
                if urgent:
                    self._yield_to_urgent(job)
                    if job.completed:
                        break
        except Exception as exc:
            job.error = self._launch_error(job, exc)

    def _note_ran(self, job: Job) -> None:
        seen = self._ran_at[int(job.wclass)]
        seen[job.vm_id] = job.submitted_at
        if len(seen) > 256:  # forget VMs long quiet
            for vm_id in [v for v, t in seen.items() if job.submitted_at - t > URGENT_RECENT_S]:
                del seen[vm_id]

    def _urgent_recently(self, job: Job) -> bool:
        """Whether another VM ran a launch of a more urgent class than ``job``'s lately
        (asked before each tileable op of a stepped launch)."""
        now = time.perf_counter()
        return any(vm_id != job.vm_id and now - t < URGENT_RECENT_S
                   for seen in self._ran_at[:int(job.wclass)] for vm_id, t in seen.items())

    def _yield_to_urgent(self, job: Job) -> None:
        """``job`` stays where it is (its state in its Steps, its buffers pinned, its pick
        uncharged) while the launches the scheduler picks now run to completion; its VM is
        parked meanwhile, so none of its later launches overtakes it."""
        hv = self.hv
        with hv._lock:
            if not hv.scheduler.park(job.vm_id):
                return  # its VM left the scheduler meanwhile (removed, moving): run on
            self.running = None
        job.steps.pause()  # what it issued goes to the device, timed as its own
        self.preemptions += 1
        job.yields += 1
        self._parked = job
        try:
            while not self._stopping and not job.completed:
                with hv._lock:
                    ticket = hv.scheduler.pick()
                if ticket is None:
                    break
                other = ticket.payload
                if self._prepare(other) and self._submit(other):
                    self._complete(other)
                self.flush_completions()
                if job.completed:
                    break
                with hv._lock:
                    if not hv.scheduler.preempts(job.vm_id, job.wclass, job.steps.device_s):
                        break
        finally:
            self._resume(job)

    def _resume(self, job: Job) -> None:
        if self._parked is not job:
            return
        self._parked = None
        with self.hv._lock:
            self.hv.scheduler.unpark(job.vm_id)
            self.running = job
            self._last_vm = job.vm_id

    def _finish_parked(self) -> None:
        """A launch picked while another is parked waits for memory the parked one may
        hold: finish the parked launch now (no more yielding), then retry."""
        job = self._parked
        if job is None:
            return
        self._resume(job)
        job.no_yield = True
        self._complete(job)
        self.flush_completions()

