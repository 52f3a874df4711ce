"""Plain statistics the scheduler returns; hypervisor/metrics.py turns them into metrics."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class VMSchedStats:
    vm_id: int
    share_pct: float  # the target: its compute share
    cap_pct: float | None  # its hard cap, None for none
    achieved_pct: float  # its part of all device time charged within the window
    window_device_seconds: float  # its device time within the window
    device_seconds_total: float  # all device time ever charged to it
    launches_total: int  # launches picked
    queue_depth: int  # queued, not yet picked
    inflight: int  # picked, not yet charged
    vruntime: float  # virtual time (device seconds / weight; share-0 VMs: weight 1)
    throttled: bool  # waiting for its cap window (or its in-flight work) to make room


@dataclass(frozen=True, slots=True)
class SchedulerStats:
    window_seconds: float
    busy_seconds_window: float  # device time of every VM within the window
    picks_total: int
    vm_switches_total: int  # charges whose VM differs from the previous charge's
    vm_switch_seconds_total: float  # sum of the gaps (start of one - end of the previous)
    last_vm_switch_seconds: float | None
    vms: tuple[VMSchedStats, ...]

    def vm(self, vm_id: int) -> VMSchedStats:
        for v in self.vms:
            if v.vm_id == vm_id:
                return v
        raise KeyError(vm_id)
