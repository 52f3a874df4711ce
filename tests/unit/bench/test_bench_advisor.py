"""The advisor benchmark's labelled workloads: each compiles with fixed shapes, runs in a
VM of a real (NumPy) Hypervisor, and yields a summary the heuristic can classify."""

from __future__ import annotations

import pytest

from bench.advisor_workloads import WORKLOADS, run_workload
from hypervisor import Hypervisor
from hypervisor.advisor import Advisor
from hypervisor.config import AdvisorSection
from scheduler.advisor import heuristic_class


def test_labels_cover_every_advisable_class():
    assert {w.label for w in WORKLOADS} == {"INTERACTIVE", "THROUGHPUT", "BATCH"}
    assert len({w.name for w in WORKLOADS}) == len(WORKLOADS)


@pytest.mark.parametrize("w", WORKLOADS, ids=lambda w: w.name)
def test_workload_runs_and_is_summarised(w):
    with Hypervisor(backend="numpy", device_pool_bytes=256 << 20) as hv:
        hv.register_vm(1, 200, 10)
        adv = Advisor(hv, AdvisorSection(), {})
        adv.summaries()
        assert run_workload(hv, 1, w, 0.05) >= 1
        (s,) = adv.summaries()
        assert s.launches_per_s > 0 and s.mean_launch_ms > 0 and s.op_mix
        assert heuristic_class(s).name in ("INTERACTIVE", "THROUGHPUT", "BATCH")
