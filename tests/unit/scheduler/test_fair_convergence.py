"""The issue's fairness scenarios in virtual time: saturated VMs converge to their shares
within +-1 percentage point of busy device time over 10 s."""

from __future__ import annotations

import pytest

from scheduler.simulate import Workload, simulate

MS, US = 1e-3, 1e-6

SCENARIOS = {
    "3 VMs 50/30/20, equal launches": [Workload(1, 50, (1 * MS,)), Workload(2, 30, (1 * MS,)),
                                       Workload(3, 20, (1 * MS,))],
    "3 VMs 50/30/20, 100 ms beside 100 us": [Workload(1, 50, (100 * MS,)), Workload(2, 30, (100 * US,)),
                                             Workload(3, 20, (1 * MS,))],
    "2 VMs 70/30, the small share has 100 ms launches": [Workload(1, 70, (100 * US,)),
                                                         Workload(2, 30, (100 * MS,))],
    "2 VMs 25/75, 100 us beside 100 ms": [Workload(1, 25, (100 * US,)), Workload(2, 75, (100 * MS,))],
    "4 VMs 40/30/20/10, mixed sizes": [Workload(1, 40, (100 * MS,)), Workload(2, 30, (100 * US,)),
                                       Workload(3, 20, (10 * MS, 1 * MS)),
                                       Workload(4, 10, (100 * US, 100 * MS, 5 * MS))],
    "shares under 100 % (30/20) split the whole device 60/40": [Workload(1, 30, (2 * MS,)),
                                                                Workload(2, 20, (100 * MS,))],
}


def expected(workloads):
    total = sum(w.share_pct for w in workloads)
    return {w.vm_id: 100.0 * w.share_pct / total for w in workloads}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_saturated_vms_converge_within_one_point(name):
    workloads = SCENARIOS[name]
    r = simulate(workloads, duration=10.0)
    for vm_id, target in expected(workloads).items():
        assert r.share_pct(vm_id) == pytest.approx(target, abs=1.0), (name, vm_id, r.share_pct(vm_id))
    assert r.busy == pytest.approx(r.elapsed)  # work-conserving: the device never idled


@pytest.mark.parametrize("seed", [1, 2])
def test_converges_when_launches_run_longer_or_shorter_than_estimated(seed):
    workloads = SCENARIOS["4 VMs 40/30/20/10, mixed sizes"]
    r = simulate(workloads, duration=10.0, jitter=0.5, seed=seed)
    for vm_id, target in expected(workloads).items():
        assert r.share_pct(vm_id) == pytest.approx(target, abs=1.0)


def test_caps_limit_wall_time_and_the_rest_is_shared():
    r = simulate([Workload(1, 30, (1 * MS,), cap_pct=40), Workload(2, 20, (1 * MS,), cap_pct=20)],
                 duration=10.0)
    assert r.wall_pct(1) == pytest.approx(40, abs=1.0) and r.wall_pct(2) == pytest.approx(20, abs=1.0)
    assert r.busy / r.elapsed == pytest.approx(0.6, abs=0.01)  # the cap holds though the device idles
