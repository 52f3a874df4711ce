"""A device simulated in virtual time, to exercise ``FairScheduler`` deterministically.

The scheduler is pure, so its fairness can be studied without a GPU: a manual clock, VMs
that keep their queues full (saturated) or submit now and then, and a device that runs one
launch at a time for a stated number of seconds. The tests and ``bench/bench_scheduler.py``
use it; the hypervisor's own benchmark measures the real device.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field

from scheduler.fair import FairScheduler
from scheduler.workload import LaunchCost, Ticket, WorkloadClass

_NO_COST = LaunchCost(0, 0, 0, 0)


class ManualClock:
    """A clock that moves only when told to (pass it as ``FairScheduler(clock=...)``)."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = float(start)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass(frozen=True)
class Workload:
    """One simulated VM: launches of ``launch_seconds`` (cycled through), kept ``depth``
    deep in its queue while ``saturated``; otherwise ``burst`` launches every ``period`` s."""

    vm_id: int
    share_pct: float
    launch_seconds: tuple[float, ...] = (1e-3,)
    cap_pct: float | None = None
    wclass: WorkloadClass = WorkloadClass.THROUGHPUT
    saturated: bool = True
    period: float = 0.0
    depth: int = 2
    burst: int = 1


@dataclass
class SimResult:
    elapsed: float  # wall (virtual) seconds simulated
    busy: float  # device seconds used by anyone
    device_seconds: dict[int, float]
    launches: dict[int, int]
    latencies: dict[int, list[float]] = field(default_factory=dict)  # arrival -> end

    def share_pct(self, vm_id: int) -> float:
        """The VM's part of the device's busy time, in percent."""
        return 100.0 * self.device_seconds[vm_id] / self.busy if self.busy else 0.0

    def wall_pct(self, vm_id: int) -> float:
        """The VM's device time as a part of wall time, in percent."""
        return 100.0 * self.device_seconds[vm_id] / self.elapsed if self.elapsed else 0.0


def simulate(workloads: list[Workload], *, duration: float, window_seconds: float = 1.0,
             jitter: float = 0.0, seed: int = 0) -> SimResult:
    """Run ``duration`` seconds of virtual time. With ``jitter`` > 0 a launch's measured
    time is its estimate times a uniform factor in [1 - jitter, 1 + jitter]."""
    clock = ManualClock()
    sched = FairScheduler(window_seconds=window_seconds, clock=clock)
    rng = random.Random(seed)
    ids = itertools.count()
    cycles = {w.vm_id: itertools.cycle(w.launch_seconds) for w in workloads}
    next_arrival = {w.vm_id: 0.0 for w in workloads if not w.saturated}
    result = SimResult(0.0, 0.0, {w.vm_id: 0.0 for w in workloads}, {w.vm_id: 0 for w in workloads},
                       {w.vm_id: [] for w in workloads})
    for w in workloads:
        sched.add_vm(w.vm_id, w.share_pct, w.cap_pct)

    def submit(w: Workload, arrived: float) -> None:
        sched.submit(Ticket(w.vm_id, next(ids), w.wclass, 50, _NO_COST, next(cycles[w.vm_id]), arrived))

    def refill() -> None:
        for w in workloads:
            if w.saturated:
                for _ in range(w.depth - sched.queue_depth(w.vm_id)):
                    submit(w, clock.now)
            else:  # arrivals during a launch are queued when it ends, stamped when they arrived
                while next_arrival[w.vm_id] <= clock.now:
                    for _ in range(w.burst):
                        submit(w, next_arrival[w.vm_id])
                    next_arrival[w.vm_id] += w.period

    while clock.now < duration:
        refill()
        ticket = sched.pick()
        if ticket is None:
            waits = [t - clock.now for t in next_arrival.values()]
            if (cap_wait := sched.next_eligible_in()) is not None:
                waits.append(cap_wait)
            if not waits:
                break
            clock.advance(max(min(waits), 0.0))
            continue
        actual = ticket.est_seconds * (1 + rng.uniform(-jitter, jitter) if jitter else 1.0)
        started = clock.now
        clock.advance(actual)
        sched.charge(ticket.vm_id, actual, started=started, ended=clock.now)
        result.device_seconds[ticket.vm_id] += actual
        result.launches[ticket.vm_id] += 1
        result.busy += actual
        result.latencies[ticket.vm_id].append(clock.now - ticket.enqueued_at)
    result.elapsed = clock.now
    return result
