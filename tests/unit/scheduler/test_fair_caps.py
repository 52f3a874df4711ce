"""Hard caps: a VM's device time within any window stays under its cap (exactly when
launches run no longer than estimated, by at most the overrun otherwise), even while the
device idles; a capped VM's room goes to the others."""

from __future__ import annotations

import pytest


def shares_of(picked, vm_ids):
    total = sum(t.est_seconds for t in picked)
    return {v: 100.0 * sum(t.est_seconds for t in picked if t.vm_id == v) / total for v in vm_ids}


def window_usage_ok(charges, cap_seconds, window):
    """No window (t - W, t] holds more device time than the cap allows (checked at ends)."""
    for _, end in charges:
        used = sum(d for d, e in charges if end - window < e <= end)
        if used > cap_seconds + 1e-9:
            return False
    return True


def test_a_cap_holds_even_when_the_device_would_idle(sched, clock, tickets, device):
    sched.add_vm(1, 10, 30)
    charges = []
    start = clock.now
    while clock.now - start < 5.0:
        while sched.queue_depth(1) < 3:
            sched.submit(tickets(1, est=0.01))
        t = sched.pick()
        if t is None:
            wait = sched.next_eligible_in()
            assert wait is not None and wait > 0
            clock.advance(wait)
            continue
        device.run(t)
        charges.append((t.est_seconds, clock.now))
    used = sum(d for d, _ in charges)
    assert used / (clock.now - start) == pytest.approx(0.30, abs=0.01)
    assert window_usage_ok(charges, 0.3, 1.0)


def test_a_capped_vms_room_goes_to_others(sched, clock, tickets, device):
    sched.add_vm(1, 50, 50)
    sched.add_vm(2, 10)
    picked = []
    for _ in range(3000):
        for vm in (1, 2):
            while sched.queue_depth(vm) < 2:
                sched.submit(tickets(vm))
        picked.append(device.step())
    got = shares_of(picked, (1, 2))
    assert got[1] == pytest.approx(50, abs=1.0)  # its share alone would be 5/6 of the device


def test_a_launch_longer_than_the_cap_allows_runs_alone_then_waits(sched, clock, tickets, device):
    sched.add_vm(1, 5, 10)  # 0.1 s per 1 s window
    for _ in range(3):
        sched.submit(tickets(1, est=0.5))
    start = clock.now
    device.step()  # an empty window admits it
    assert sched.pick() is None
    assert sched.next_eligible_in() == pytest.approx(4.5)  # started + 0.5 / 10 %
    clock.advance(sched.next_eligible_in())
    device.step()
    assert (clock.now - start) == pytest.approx(5.5)


def test_a_capped_vm_with_work_in_flight_waits_for_its_charge(sched, clock, tickets):
    sched.add_vm(1, 10, 20)
    sched.submit(tickets(1, est=0.15))
    sched.submit(tickets(1, est=0.15))
    first = sched.pick()
    assert sched.pick() is None and sched.next_eligible_in() is None  # only the charge can free it
    clock.advance(0.05)
    sched.charge(1, 0.05, started=clock.now - 0.05, ended=clock.now)  # ran shorter than estimated
    assert sched.pick() is not None and first.vm_id == 1


def test_a_launch_over_its_estimate_overruns_the_cap_by_at_most_the_overrun(sched, clock, tickets, device):
    sched.add_vm(1, 10, 30)
    charges = []
    start = clock.now
    while clock.now - start < 3.0:
        while sched.queue_depth(1) < 2:
            sched.submit(tickets(1, est=0.01))
        t = sched.pick()
        if t is None:
            clock.advance(sched.next_eligible_in())
            continue
        device.run(t, 0.019)  # every launch takes 1.9 times its estimate
        charges.append((0.019, clock.now))
    assert not window_usage_ok(charges, 0.30, 1.0)  # the estimate was wrong: the cap is overrun
    assert window_usage_ok(charges, 0.30 + 0.009, 1.0)  # by at most one launch's overrun
