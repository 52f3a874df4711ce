"""Fixtures of the scheduler tests: a manual clock and a ticket factory."""

from __future__ import annotations

import itertools

import pytest

from scheduler import FairScheduler, LaunchCost, Ticket, WorkloadClass
from scheduler.simulate import ManualClock

NO_COST = LaunchCost(0, 0, 0, 0)


class Tickets:
    """Makes tickets with increasing launch ids, enqueued at the clock's time."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.ids = itertools.count(1)

    def __call__(self, vm_id: int, est: float = 1e-3, wclass: WorkloadClass = WorkloadClass.THROUGHPUT,
                 payload: object = None) -> Ticket:
        return Ticket(vm_id, next(self.ids), wclass, 50, NO_COST, est, self.clock.now, payload)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(100.0)


@pytest.fixture
def tickets(clock: ManualClock) -> Tickets:
    return Tickets(clock)


@pytest.fixture
def sched(clock: ManualClock) -> FairScheduler:
    return FairScheduler(window_seconds=1.0, clock=clock)


class Device:
    """The simulated device: runs one picked ticket at a time on the manual clock."""

    def __init__(self, sched: FairScheduler, clock: ManualClock) -> None:
        self.sched, self.clock = sched, clock

    def run(self, ticket: Ticket, seconds: float | None = None) -> None:
        seconds = ticket.est_seconds if seconds is None else seconds
        started = self.clock.now
        self.clock.advance(seconds)
        self.sched.charge(ticket.vm_id, seconds, started=started, ended=self.clock.now)

    def step(self) -> Ticket | None:
        """Pick and run one ticket for its estimate; None when nothing is eligible."""
        ticket = self.sched.pick()
        if ticket is not None:
            self.run(ticket)
        return ticket


@pytest.fixture
def device(sched: FairScheduler, clock: ManualClock) -> Device:
    return Device(sched, clock)
