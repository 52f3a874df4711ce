"""``FairScheduler``: per-VM FIFO queues, weighted fair sharing of measured device time,
hard caps over a sliding window, and class ordering within the shares.

Pure and single-threaded: no threads, no I/O, no clock of its own beyond the one passed
in. The hypervisor's dispatcher thread calls ``submit`` / ``pick`` / ``charge``; every
method validates its input and raises a ``SchedulerError`` without changing anything.
The rule itself lives in core.py; the semantics are written in docs/scheduling.md.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

from scheduler.core import IDLE_TIER, NORMAL_TIER, PARKED, TAKEN, THROTTLED, WAITING, Engine, VMState
from scheduler.errors import (
    DuplicateVM,
    InvalidCharge,
    InvalidShare,
    InvalidTicket,
    QueueFull,
    SchedulerError,
    UnknownVM,
)
from scheduler.stats import SchedulerStats, VMSchedStats
from scheduler.window import TIME_EPS
from scheduler.workload import Ticket

#: A more urgent head goes first while its key is at most this far (virtual seconds, i.e.
#: device seconds divided by the share as a fraction) ahead of the smallest key. It bounds
#: how far a class can move a VM ahead of its fair share: 20 ms at a 100 % share, 2 ms of
#: device time at a 10 % share.
CLASS_LAG = 0.020

#: A VM that becomes runnable keeps at most this much credit (virtual seconds) over the
#: tier's virtual clock: it cannot bank the time it spent idle or throttled.
WAKEUP_LAG = 0.005

#: Queued launches per VM. A guest decides how many launches it queues; this bounds the
#: memory one VM can hold in the scheduler and the wait of its last queued launch.
MAX_QUEUE_DEPTH = 4096

#: Look-ahead depth. The prefetcher asks for a handful; this bounds one call's work.
MAX_LOOKAHEAD = 1024

_SHARE_EPS = 1e-9  # float slack when summing percentages


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class FairScheduler:
    """Decides which queued launch runs next. See docs/scheduling.md for the guarantees."""

    def __init__(self, *, window_seconds: float = 1.0, clock: Callable[[], float] = time.monotonic,
                 class_lag: float = CLASS_LAG, wakeup_lag: float = WAKEUP_LAG,
                 max_queue_depth: int = MAX_QUEUE_DEPTH) -> None:
        if not _finite(window_seconds) or window_seconds <= 0:
            raise SchedulerError(f"window_seconds must be a positive number, got {window_seconds!r}")
        for name, lag in (("class_lag", class_lag), ("wakeup_lag", wakeup_lag)):
            if not _finite(lag) or lag < 0:
                raise SchedulerError(f"{name} must be a non-negative number, got {lag!r}")
        if not isinstance(max_queue_depth, int) or max_queue_depth < 1:
            raise SchedulerError(f"max_queue_depth must be a positive int, got {max_queue_depth!r}")
        self._clock = clock
        self._window = float(window_seconds)
        self._max_depth = max_queue_depth
        self._vms: dict[int, VMState] = {}
        self._engine = Engine(self._vms, window=self._window, class_lag=float(class_lag),
                              wakeup_lag=float(wakeup_lag))
        self._picks = 0
        self._switches = 0
        self._switch_seconds = 0.0
        self._last_switch: float | None = None
        self._last_charged: tuple[int, float] | None = None  # (vm, ended) of the last charge
        self._busy = _BusyWindow()  # every VM's charges together: a VM's share reads in O(1)
        self._queued = 0  # tickets in every VM's queue (submitted, not yet picked, cancelled or removed)

    # -- registry ----------------------------------------------------------------------

    def add_vm(self, vm_id: int, share_pct: float, cap_pct: float | None = None) -> None:
        if not isinstance(vm_id, int) or isinstance(vm_id, bool):
            raise InvalidShare(f"vm_id must be an int, got {vm_id!r}")
        if vm_id in self._vms:
            raise DuplicateVM(f"VM {vm_id} is already registered with the scheduler")
        self._check_share(vm_id, share_pct, cap_pct)
        vm = VMState(vm_id)
        self._apply_share(vm, share_pct, cap_pct)
        vm.vruntime = self._engine.tiers[vm.tier].vclock
        self._vms[vm_id] = vm

    def remove_vm(self, vm_id: int) -> list[Ticket]:
        """Forget ``vm_id``; return its queued tickets (for the caller to cancel). A charge
        for its launches still in flight is ignored when it arrives."""
        vm = self._vm(vm_id)
        del self._vms[vm_id]  # its heap entries become stale: their VM is gone
        self._queued -= len(vm.queue)
        self._busy.forget(vm)
        return list(vm.queue)

    def set_share(self, vm_id: int, share_pct: float, cap_pct: float | None) -> None:
        """Change a VM's share and cap at run time; its lead or lag over the tier's virtual
        clock is rescaled so the change neither rewards nor punishes its past."""
        vm = self._vm(vm_id)
        self._check_share(vm_id, share_pct, cap_pct)
        old_tier, old_weight = vm.tier, vm.weight
        self._apply_share(vm, share_pct, cap_pct)
        vclock = self._engine.tiers[vm.tier].vclock
        if vm.tier == old_tier:
            vm.vruntime = vclock + (vm.vruntime - vclock) * old_weight / vm.weight
        else:
            vm.vruntime = vclock
        self._engine.place(vm, self._clock())

    def _check_share(self, vm_id: int, share: float, cap: float | None) -> None:
        if not _finite(share) or not 0.0 <= share <= 100.0:
            raise InvalidShare(f"VM {vm_id}: share must be a percentage in 0..100, got {share!r}")
        if cap is not None:
            if not _finite(cap) or not 0.0 < cap <= 100.0:
                raise InvalidShare(f"VM {vm_id}: cap must be a percentage in (0, 100], got {cap!r}")
            if cap < share:
                raise InvalidShare(f"VM {vm_id}: cap {cap}% is below its share {share}%: "
                                   "the share could never be reached")
        others = sum(v.share_pct for k, v in self._vms.items() if k != vm_id)
        if others + share > 100.0 + _SHARE_EPS:
            raise InvalidShare(f"VM {vm_id}: share {share}% would take the shares to "
                               f"{others + share:g}% (at most 100%; {100.0 - others:g}% is free)")

    def _apply_share(self, vm: VMState, share: float, cap: float | None) -> None:
        cap = None if cap is None else float(cap)
        if cap != vm.cap_pct:
            vm.blocked_until = -math.inf  # the old cap's hold after an oversized launch ends
        vm.share_pct, vm.cap_pct = float(share), cap
        vm.tier = NORMAL_TIER if share > 0 else IDLE_TIER
        vm.weight = share / 100.0 if share > 0 else 1.0
        if cap is None or cap >= 100.0:
            vm.cap_limit, vm.cap_frac = None, 1.0
        else:
            vm.cap_frac = cap / 100.0
            vm.cap_limit = vm.cap_frac * self._window

    def _vm(self, vm_id: int) -> VMState:
        vm = self._vms.get(vm_id)
        if vm is None:
            raise UnknownVM(f"VM {vm_id!r} is not registered with the scheduler")
        return vm

    # -- the queue ---------------------------------------------------------------------

    def submit(self, ticket: Ticket) -> None:
        """Queue a launch behind the VM's earlier ones (launches of a VM run in order)."""
        if type(ticket) is not Ticket and not isinstance(ticket, Ticket):
            raise InvalidTicket(f"submit takes a Ticket, got {type(ticket).__name__}")
        vm = self._vms.get(ticket.vm_id)
        if vm is None:
            vm = self._vm(ticket.vm_id)  # raises UnknownVM
        if vm.last_launch_id is not None and ticket.launch_id <= vm.last_launch_id:
            raise InvalidTicket(f"VM {vm.vm_id}: launch id {ticket.launch_id} does not follow "
                                f"{vm.last_launch_id} (ids increase within a VM)")
        if len(vm.queue) >= self._max_depth:
            raise QueueFull(f"VM {vm.vm_id} already has {len(vm.queue)} queued launches "
                            f"(at most {self._max_depth})")
        vm.queue.append(ticket)
        self._queued += 1
        vm.last_launch_id = ticket.launch_id
        if len(vm.queue) == 1:
            self._engine.place(vm, self._clock())

    def pick(self) -> Ticket | None:
        """Remove and return the ticket to run now, or None when nothing is eligible. Every
        picked ticket must later be charged once (with 0 s if it never ran)."""
        ticket = self._engine.pick(self._clock())
        if ticket is not None:
            self._picks += 1
            self._queued -= 1
        return ticket

    def queued(self) -> int:
        """Tickets queued over every VM, eligible or not (O(1))."""
        return self._queued

    def next_eligible_in(self) -> float | None:
        """Seconds until a VM held back by its cap may run again; None when no VM is waiting
        on time (a VM waiting for its own in-flight launch is freed by ``charge``)."""
        at = self._engine.next_release()
        return None if at is None else max(0.0, at - self._clock())

    def charge(self, vm_id: int, device_seconds: float, *, started: float, ended: float) -> None:
        """Account the measured device time of a VM's oldest picked, uncharged launch."""
        if not (type(device_seconds) is float and 0.0 <= device_seconds < math.inf and type(started) is float
                and type(ended) is float and started <= ended and -math.inf < started and ended < math.inf):
            # Not plain finite floats in order (the dispatcher's always are): check, saying what is wrong.
            if not _finite(device_seconds) or device_seconds < 0:
                raise InvalidCharge(f"device_seconds must be finite and >= 0, got {device_seconds!r}")
            if not _finite(started) or not _finite(ended) or ended < started:
                raise InvalidCharge(f"a launch must end after it starts (started={started!r}, ended={ended!r})")
            device_seconds, ended = float(device_seconds), float(ended)
        vm = self._vms.get(vm_id)
        if vm is None:
            return  # removed while its launch was in flight
        self._engine.charge(vm, device_seconds, ended, self._clock())
        self._busy.add(ended, device_seconds, vm)
        if self._last_charged is not None and self._last_charged[0] != vm_id:
            gap = max(0.0, started - self._last_charged[1])
            self._switches += 1
            self._switch_seconds += gap
            self._last_switch = gap
        self._last_charged = (vm_id, ended)

    def cancel(self, vm_id: int, predicate: Callable[[Ticket], bool]) -> list[Ticket]:
        """Drop the VM's queued tickets for which ``predicate`` is true; return them in
        queue order. In-flight launches are not affected."""
        vm = self._vm(vm_id)
        keep: list[Ticket] = []
        dropped: list[Ticket] = []
        for t in vm.queue:
            (dropped if predicate(t) else keep).append(t)
        if dropped:
            head = vm.queue[0]
            vm.queue = deque(keep)
            self._queued -= len(dropped)
            if not keep or keep[0] is not head:
                self._engine.place(vm, self._clock())
        return dropped

    # -- preemption at op boundaries (docs/scheduling.md, "Preemption") -------------------

    def preempts(self, vm_id: int, wclass: int, ran_seconds: float) -> bool:
        """Whether a waiting launch of another VM should take the device from ``vm_id``'s
        running launch of class ``wclass``, which has run ``ran_seconds`` so far. Reads the
        scheduler; changes nothing but the release of cap-held VMs whose time has come."""
        vm = self._vms.get(vm_id)
        if vm is None:
            return False
        return self._engine.urgent_waiting(vm, int(wclass), max(0.0, float(ran_seconds)), self._clock())

    def park(self, vm_id: int) -> bool:
        """``vm_id``'s running launch yields the device: its queued launches are not picked
        until ``unpark`` (a VM's launches run in order). Its picked launch stays reserved.
        False (nothing done) for a VM no longer registered: its launch does not yield."""
        vm = self._vms.get(vm_id)
        if vm is None:
            return False
        vm.parked = True
        self._engine.place(vm, self._clock())
        return True

    def unpark(self, vm_id: int) -> None:
        vm = self._vms.get(vm_id)
        if vm is None:
            return  # removed while parked
        vm.parked = False
        if vm.where == PARKED:
            vm.where = TAKEN  # its launch ran on: no wake-up floor (it was never idle)
        self._engine.place(vm, self._clock())

    def lookahead(self, n: int) -> list[Ticket]:
        """The next ``n`` tickets ``pick`` would return if nothing else arrived and each ran
        for its ``est_seconds`` back to back from now (idling through cap waits). It reads
        the scheduler and changes nothing."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise SchedulerError(f"lookahead takes a count >= 0, got {n!r}")
        n = min(n, MAX_LOOKAHEAD)
        if n == 0:
            return []
        sim = self._engine.fork(n)
        now = self._clock()
        out: list[Ticket] = []
        while len(out) < n:
            ticket = sim.pick(now)
            if ticket is None:
                at = sim.next_release()
                if at is None:
                    break
                now = max(now, at)
                continue
            out.append(ticket)
            now += ticket.est_seconds
            sim.charge(sim.mut(ticket.vm_id), ticket.est_seconds, now, now, newest=True)
        return out

    # -- reading -----------------------------------------------------------------------

    def queue_depth(self, vm_id: int) -> int:
        return len(self._vm(vm_id).queue)

    def vm_ids(self) -> list[int]:
        return list(self._vms)

    def vm_stats(self, vm_id: int) -> VMSchedStats:
        """One VM's row of ``stats()``, in O(1) (amortised): it reads that VM and the
        running sum of every VM's device time in the window, nothing per other VM."""
        now = self._clock()
        return self._row(self._vm(vm_id), now, self._busy.prune(now, self._window))

    def stats(self) -> SchedulerStats:
        now = self._clock()
        busy = self._busy.prune(now, self._window)
        rows = tuple(self._row(vm, now, busy) for vm in self._vms.values())
        return SchedulerStats(
            window_seconds=self._window, busy_seconds_window=busy, picks_total=self._picks,
            vm_switches_total=self._switches, vm_switch_seconds_total=self._switch_seconds,
            last_vm_switch_seconds=self._last_switch, vms=rows,
        )

    def _row(self, vm: VMState, now: float, busy: float) -> VMSchedStats:
        mine = vm.usage.prune(now, self._window)
        return VMSchedStats(
            vm_id=vm.vm_id, share_pct=vm.share_pct, cap_pct=vm.cap_pct,
            achieved_pct=min(100.0, 100.0 * mine / busy) if busy > 0 else 0.0,
            window_device_seconds=mine, device_seconds_total=vm.device_seconds,
            launches_total=vm.picks, queue_depth=len(vm.queue), inflight=len(vm.inflight),
            vruntime=vm.vruntime, throttled=vm.where in (THROTTLED, WAITING),
        )


class _BusyWindow:
    """The charges of every registered VM within the window, as one sliding sum: what each
    VM's UsageWindow holds, added up as charges arrive instead of VM by VM when read.
    Records carry their VM so that an unregistered VM's can be taken out."""

    __slots__ = ("records", "total")

    def __init__(self) -> None:
        self.records: deque[tuple[float, float, VMState]] = deque()
        self.total = 0.0

    def add(self, ended: float, seconds: float, vm: VMState) -> None:
        self.records.append((ended, seconds, vm))
        self.total += seconds

    def prune(self, now: float, window: float) -> float:
        records, horizon = self.records, now - window + TIME_EPS
        while records and records[0][0] <= horizon:
            self.total -= records.popleft()[1]
        if not records:
            self.total = 0.0  # no float residue once the window is empty
        return max(self.total, 0.0)

    def forget(self, vm: VMState) -> None:
        """An unregistered VM's charges leave the sum (O(records in the window); rare)."""
        keep = deque(r for r in self.records if r[2] is not vm)
        if len(keep) != len(self.records):
            self.records = keep
            self.total = sum(r[1] for r in keep)


