"""Random submit / pick / charge / cancel / share-change / remove sequences (hypothesis)
keep the scheduler's invariants: no ticket lost or duplicated, per-VM FIFO, work
conservation for uncapped VMs, look-ahead agreeing with pick, caps never exceeded."""

from __future__ import annotations

from collections import deque

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from scheduler import FairScheduler, InvalidShare, LaunchCost, Ticket, WorkloadClass
from scheduler.simulate import ManualClock

VMS = (1, 2, 3, 4)
WINDOW = 0.2  # small beside the launches, so that caps bind often
NO_COST = LaunchCost(0, 0, 0, 0)

shares = st.sampled_from([0, 5, 10, 20, 25, 40])
caps = st.one_of(st.none(), st.sampled_from([30, 50, 80]))


class SchedulerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = ManualClock(10.0)
        self.sched = FairScheduler(window_seconds=WINDOW, clock=self.clock)
        self.queues: dict[int, deque[Ticket]] = {}
        self.caps: dict[int, float | None] = {}
        self.cap_epoch: dict[int, int] = {}  # counts each VM's cap changes
        self.inflight: deque[tuple[Ticket, int]] = deque()  # (ticket, cap epoch when picked)
        self.charges: dict[int, list[tuple[float, float]]] = {}  # vm -> (ended, seconds)
        self.next_id = 1
        self.seen: set[int] = set()
        self.done: set[int] = set()  # picked, cancelled or returned by remove: exactly once

    # -- registry ----------------------------------------------------------------------

    def _try_share(self, vm, share, cap, add):
        cap = None if cap is None else max(cap, share)
        try:
            (self.sched.add_vm if add else self.sched.set_share)(vm, share, cap)
        except InvalidShare:
            assert sum(self.sched.stats().vm(v).share_pct for v in self.queues if v != vm) + share > 100
            return
        if add:
            self.queues[vm] = deque()
            self.charges.setdefault(vm, [])
        if self.caps.get(vm) != cap or add:
            self.cap_epoch[vm] = self.cap_epoch.get(vm, 0) + 1
        self.caps[vm] = cap

    @rule(vm=st.sampled_from(VMS), share=shares, cap=caps)
    def add_or_change(self, vm, share, cap):
        self._try_share(vm, share, cap, add=vm not in self.queues)

    @rule(vm=st.sampled_from(VMS))
    def remove(self, vm):
        if vm not in self.queues:
            return
        returned = self.sched.remove_vm(vm)
        assert returned == list(self.queues.pop(vm))
        self._finish(returned)
        self.caps.pop(vm)

    # -- work --------------------------------------------------------------------------

    @rule(vm=st.sampled_from(VMS), est=st.sampled_from([1e-4, 1e-3, 5e-3, 0.02, 0.05]),
          wclass=st.sampled_from(list(WorkloadClass)), n=st.integers(1, 4))
    def submit(self, vm, est, wclass, n):
        if vm not in self.queues:
            return
        for _ in range(n):
            t = Ticket(vm, self.next_id, wclass, 50, NO_COST, est, self.clock.now)
            self.next_id += 1
            self.sched.submit(t)
            self.queues[vm].append(t)
            self.seen.add(t.launch_id)

    @rule()
    def pick(self):
        ahead = self.sched.lookahead(3)
        t = self.sched.pick()
        if t is None:
            # Only caps (or in-flight work under a cap) may hold back a VM that has work.
            assert all(self.caps[v] is not None for v, q in self.queues.items() if q)
            return
        assert ahead and ahead[0] is t
        q = self.queues[t.vm_id]
        assert q and q[0] is t, "per-VM FIFO"
        q.popleft()
        self._finish([t])
        self.inflight.append((t, self.cap_epoch[t.vm_id]))

    @precondition(lambda self: self.inflight)
    @rule(fraction=st.floats(0.0, 1.0))
    def complete(self, fraction):
        t, epoch = self.inflight.popleft()  # the device runs launches in pick order
        seconds = t.est_seconds * fraction  # never longer than estimated: the exact-cap case
        started = self.clock.now
        self.clock.advance(seconds)
        self.sched.charge(t.vm_id, seconds, started=started, ended=self.clock.now)
        if t.vm_id not in self.queues:
            return  # removed while in flight: ignored
        log = self.charges[t.vm_id]
        log.append((self.clock.now, seconds))
        cap = self.caps[t.vm_id]
        if cap is not None and epoch == self.cap_epoch[t.vm_id]:  # picked under this cap
            used = sum(s for e, s in log if self.clock.now - WINDOW < e <= self.clock.now + 1e-12)
            assert used <= cap / 100 * WINDOW + 1e-9, "cap exceeded"

    @rule(dt=st.sampled_from([1e-4, 0.01, 0.2, 1.0]))
    def advance(self, dt):
        self.clock.advance(dt)

    @rule(vm=st.sampled_from(VMS), mod=st.integers(2, 3))
    def cancel(self, vm, mod):
        if vm not in self.queues:
            return
        dropped = self.sched.cancel(vm, lambda t: t.launch_id % mod == 0)
        assert dropped == [t for t in self.queues[vm] if t.launch_id % mod == 0]
        self.queues[vm] = deque(t for t in self.queues[vm] if t.launch_id % mod != 0)
        self._finish(dropped)

    def _finish(self, tickets):
        for t in tickets:
            assert t.launch_id not in self.done, "ticket duplicated"
            self.done.add(t.launch_id)

    # -- invariants --------------------------------------------------------------------

    @invariant()
    def depths_match(self):
        for vm, q in self.queues.items():
            assert self.sched.queue_depth(vm) == len(q)
        queued = {t.launch_id for q in self.queues.values() for t in q}
        assert queued | self.done == self.seen and not queued & self.done, "ticket lost"

    def teardown(self):
        # Drain: every queued ticket comes out exactly once, in order, caps permitting.
        for _ in range(10_000):
            if not any(self.queues.values()):
                break
            if self.inflight:
                self.complete(1.0)
                continue
            before = len(self.done)
            self.pick()
            if len(self.done) == before:
                wait = self.sched.next_eligible_in()
                assert wait is not None
                self.clock.advance(wait)
        assert not any(self.queues.values())


SchedulerMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=60, deadline=None,
                                              suppress_health_check=[HealthCheck.too_slow])
TestScheduler = SchedulerMachine.TestCase
