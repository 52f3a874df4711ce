"""The scheduler's vocabulary: workload classes, launch costs and queued tickets.

Plain frozen values that the hypervisor builds and the scheduler reads; they validate
their own fields so that nothing malformed ever reaches a queue (docs/scheduling.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum

from scheduler.errors import InvalidCost, InvalidTicket

#: Largest device-time estimate a ticket may carry. Estimates come from a guest's cost
#: figures; a bounded one keeps virtual-time arithmetic exact to far below a microsecond
#: and stops one absurd estimate from parking its VM behind a cap for days.
MAX_EST_SECONDS = 600.0

#: Priorities run from 0 (least urgent) to 100 (most urgent); 50 when none is given.
MIN_PRIORITY, DEFAULT_PRIORITY, MAX_PRIORITY = 0, 50, 100


class WorkloadClass(IntEnum):
    """How urgent a launch is; a lower value is more urgent."""

    REALTIME = 0
    INTERACTIVE = 1
    THROUGHPUT = 2
    BATCH = 3

    @classmethod
    def from_name(cls, name: str) -> WorkloadClass:
        """``"interactive"`` / ``"INTERACTIVE"`` -> ``WorkloadClass.INTERACTIVE``."""
        if not isinstance(name, str):
            raise InvalidTicket(f"workload class name must be a string, got {type(name).__name__}")
        try:
            return cls[name.strip().upper()]
        except KeyError:
            known = ", ".join(c.name for c in cls)
            raise InvalidTicket(f"unknown workload class {name!r} (known: {known})") from None


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@dataclass(frozen=True, slots=True)
class LaunchCost:
    """What the language's cost model says about one launch (primitive_lang ``cost.py``)."""

    flops: int
    bytes_read: int
    bytes_written: int
    temp_bytes: int

    def __post_init__(self) -> None:
        for name in ("flops", "bytes_read", "bytes_written", "temp_bytes"):
            if not _is_count(getattr(self, name)):
                raise InvalidCost(f"launch cost {name} must be a non-negative int, "
                                  f"got {getattr(self, name)!r}")

    @property
    def bytes_moved(self) -> int:
        return self.bytes_read + self.bytes_written

    @property
    def intensity(self) -> float:
        """Arithmetic intensity: flops per byte moved (flops itself when nothing moves)."""
        return self.flops / max(1, self.bytes_moved)


@dataclass(frozen=True, slots=True)
class Ticket:
    """One queued launch. ``payload`` is the hypervisor's launch object: never read here.

    ``priority`` does not reorder anything inside the scheduler (launches of one VM run in
    submit order, and classes order VMs); the classifier uses it to move an inferred class
    by one step, and it is reported with the launch (docs/scheduling.md, "Classifier").
    """

    vm_id: int
    launch_id: int
    wclass: WorkloadClass
    priority: int
    cost: LaunchCost
    est_seconds: float
    enqueued_at: float
    payload: object = None

    def __post_init__(self) -> None:
        # The common case in plain types first (the hypervisor's own tickets, every launch);
        # anything else goes through the full checks below, which say what is wrong.
        est = self.est_seconds
        if (type(self.vm_id) is int and type(self.launch_id) is int and type(self.wclass) is WorkloadClass
                and type(self.priority) is int and MIN_PRIORITY <= self.priority <= MAX_PRIORITY
                and type(self.cost) is LaunchCost and type(est) is float and 0.0 <= est <= MAX_EST_SECONDS
                and type(self.enqueued_at) is float and math.isfinite(self.enqueued_at)):
            return
        if not isinstance(self.vm_id, int) or isinstance(self.vm_id, bool):
            raise InvalidTicket(f"vm_id must be an int, got {self.vm_id!r}")
        if not isinstance(self.launch_id, int) or isinstance(self.launch_id, bool):
            raise InvalidTicket(f"launch_id must be an int, got {self.launch_id!r}")
        if not isinstance(self.wclass, WorkloadClass):
            raise InvalidTicket(f"wclass must be a WorkloadClass, got {self.wclass!r}")
        if (not isinstance(self.priority, int) or isinstance(self.priority, bool)
                or not MIN_PRIORITY <= self.priority <= MAX_PRIORITY):
            raise InvalidTicket(f"priority must be an int in {MIN_PRIORITY}..{MAX_PRIORITY}, "
                                f"got {self.priority!r}")
        if not isinstance(self.cost, LaunchCost):
            raise InvalidTicket(f"cost must be a LaunchCost, got {type(self.cost).__name__}")
        if (not isinstance(est, (int, float)) or isinstance(est, bool) or not math.isfinite(est)
                or not 0.0 <= est <= MAX_EST_SECONDS):
            raise InvalidTicket(f"est_seconds must be finite and in 0..{MAX_EST_SECONDS}, got {est!r}")
        if not isinstance(self.enqueued_at, (int, float)) or not math.isfinite(self.enqueued_at):
            raise InvalidTicket(f"enqueued_at must be a finite time, got {self.enqueued_at!r}")
