"""Cost of a decision does not grow with idle VMs and grows at most logarithmically with
busy ones, counted (heap sizes, VM look-ups per pick), never timed: the time of a decision
against the number of VMs is bench/bench_scheduler.py's (issue 14: no timed assertions)."""

from __future__ import annotations

from scheduler import FairScheduler, LaunchCost, Ticket, WorkloadClass
from scheduler.core import HEAP_SLACK
from scheduler.simulate import ManualClock

NO_COST = LaunchCost(0, 0, 0, 0)
CLASSES = list(WorkloadClass)


def build(registered: int, busy: int, *, cap_every: int = 0):
    clock = ManualClock()
    sched = FairScheduler(clock=clock)
    share = 100.0 / registered
    for vm in range(registered):
        cap = min(100.0, 3 * share) if cap_every and vm % cap_every == 0 else None
        sched.add_vm(vm, share, cap)
    ids = iter(range(1, 10**9))

    def decide() -> None:
        t = sched.pick()
        if t is None:
            clock.advance(sched.next_eligible_in() or 0.0)
            return
        clock.advance(t.est_seconds)
        sched.charge(t.vm_id, t.est_seconds * 1.1, started=clock.now - t.est_seconds, ended=clock.now)
        sched.submit(Ticket(t.vm_id, next(ids), CLASSES[next(ids) % 4], 50, NO_COST, 1e-4 * (1 + t.vm_id % 7),
                            clock.now))

    for vm in range(busy):
        for _ in range(2):
            sched.submit(Ticket(vm, next(ids), CLASSES[vm % 4], 50, NO_COST, 1e-4, clock.now))
    return sched, decide


def test_heaps_stay_bounded_and_lookups_per_pick_stay_constant():
    for registered, busy in ((10, 10), (1000, 10), (1000, 1000)):
        sched, decide = build(registered, busy, cap_every=5)
        engine = sched._engine
        lookups = 0
        real_get = engine.get

        def counting_get(vm_id, _get=real_get):
            nonlocal lookups
            lookups += 1
            return _get(vm_id)

        engine.get = counting_get
        for _ in range(5000):
            decide()
        heaps = [h for tier in engine.tiers for h in tier.ready] + [engine.throttled]
        assert max(len(h) for h in heaps) <= 2 * registered + HEAP_SLACK
        assert lookups / 5000 <= 12, (registered, busy, lookups / 5000)  # 4 class heaps, some stale
