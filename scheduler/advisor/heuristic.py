"""The ``none`` advisor: the heuristic classifier's rules applied to a VM's summary.

It is the default and the fallback. It never changes a share; its class is the one the
classifier (scheduler/classifier.py) infers for a launch of the VM's mean size and duty,
so the LLM's advice can be compared with it (the agreement rate) on the same figures.
"""

from __future__ import annotations

from scheduler.advisor.advice import Advice
from scheduler.advisor.summary import VMSummary
from scheduler.classifier import (
    BATCH_MIN_SECONDS,
    COMPUTE_BATCH_MIN_SECONDS,
    COMPUTE_BOUND_INTENSITY,
    INTERACTIVE_MAX_DUTY,
    INTERACTIVE_MAX_SECONDS,
)
from scheduler.workload import WorkloadClass as WC


def heuristic_class(s: VMSummary) -> WC:
    est = s.mean_launch_ms / 1e3
    duty = s.device_busy_pct / 100.0
    intensity = s.flops_per_launch / max(1.0, s.bytes_per_launch)
    if est <= INTERACTIVE_MAX_SECONDS and duty < INTERACTIVE_MAX_DUTY:
        return WC.INTERACTIVE
    if est >= BATCH_MIN_SECONDS or (est >= COMPUTE_BATCH_MIN_SECONDS and intensity >= COMPUTE_BOUND_INTENSITY):
        return WC.BATCH
    return WC.THROUGHPUT


def heuristic_advice(s: VMSummary) -> Advice:
    c = heuristic_class(s)
    why = (f"mean launch {s.mean_launch_ms:.3g} ms, device busy {s.device_busy_pct:.3g}%, "
           f"{s.flops_per_launch / max(1.0, s.bytes_per_launch):.3g} flops/byte")
    return Advice(s.vm_id, c, None, why, "heuristic")
