"""Engine internals a look-ahead relies on: a clone copies every field and shares nothing
that a simulated pick or charge changes."""

from __future__ import annotations

from scheduler import LaunchCost, Ticket, WorkloadClass
from scheduler.core import VMState


def test_clone_copies_every_slot_and_shares_no_mutable_state():
    vm = VMState(7)
    vm.cap_limit, vm.cap_frac = 0.3, 0.3
    for i in range(5):
        vm.queue.append(Ticket(7, i, WorkloadClass.BATCH, 50, LaunchCost(0, 0, 0, 0), 0.01, 0.0))
    vm.inflight.append(0.01)
    vm.usage.add(1.0, 0.1)
    clone = vm.clone(3)
    for name in VMState.__slots__:
        if name not in ("queue", "inflight", "usage"):
            assert getattr(clone, name) == getattr(vm, name), name
    assert list(clone.queue) == list(vm.queue)[:3]
    clone.queue.popleft()
    clone.inflight.pop()
    clone.usage.add(2.0, 0.1)
    assert len(vm.queue) == 5 and list(vm.inflight) == [0.01] and vm.usage.total == 0.1
