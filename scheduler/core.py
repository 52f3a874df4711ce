"""The scheduling engine: per-VM state, the ready heaps, caps, and the one pick rule.

``FairScheduler`` (fair.py) owns validation, the registry and statistics; this module
owns the decision. The same engine code serves ``pick()`` and ``lookahead()``: a look-ahead
runs on a *fork* whose heaps are copies and whose VMs are cloned on first write, so the
two can never disagree about the rule (docs/scheduling.md, "The pick rule").

Keys. A ready VM sits in one heap per (tier, class of its head launch), keyed by the
virtual time at the middle of its head launch:
``vruntime + (reserved + est_head / 2) / weight``. Entries are never deleted in place:
each VM carries a generation, an entry whose generation is not its VM's is stale and is
dropped when it reaches the top, and a heap is rebuilt when stale entries outnumber the
VMs. Every decision is O(log n) in the number of registered VMs.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from heapq import heapify, heappop, heappush

from scheduler.window import TIME_EPS, UsageWindow
from scheduler.workload import WorkloadClass

#: Where a VM is. TAKEN: its heap entry was just popped by a pick and it is being re-placed.
#: PARKED: its running launch yielded the device (preempted at an op boundary); its queue
#: waits until that launch resumes, so the VM's launches keep their order.
IDLE, READY, THROTTLED, WAITING, TAKEN, PARKED = range(6)

#: Tier 0 holds the VMs with a share; tier 1 the share-0 VMs, which run only when no tier-0
#: VM is eligible ("idle time only") and share that idle time equally (weight 1).
NORMAL_TIER, IDLE_TIER = 0, 1

_CLASSES = len(WorkloadClass)
#: Stale heap entries tolerated beyond twice the number of VMs before a heap is rebuilt.
HEAP_SLACK = 64

_GEN = itertools.count(1)  # generations are unique across VMs, so an id may be reused


class VMState:
    """Everything the engine knows about one VM (read by fair.py for statistics)."""

    __slots__ = ("vm_id", "share_pct", "cap_pct", "cap_limit", "cap_frac", "weight", "tier",
                 "queue", "vruntime", "gen", "where", "entry", "inflight", "reserved",
                 "usage", "blocked_until", "device_seconds", "picks", "last_launch_id", "parked")

    def __init__(self, vm_id: int) -> None:
        self.vm_id = vm_id
        self.share_pct = 0.0
        self.cap_pct: float | None = None
        self.cap_limit: float | None = None  # cap as device seconds per window, None = no cap
        self.cap_frac = 1.0
        self.weight = 1.0
        self.tier = IDLE_TIER
        self.queue: deque = deque()
        self.vruntime = 0.0
        self.gen = 0
        self.where = IDLE
        self.entry: tuple | None = None  # (tier, class, key) of its live ready entry
        self.inflight: deque[float] = deque()  # est_seconds of picked, not yet charged
        self.reserved = 0.0  # sum of inflight
        self.usage = UsageWindow()
        self.blocked_until = -math.inf
        self.device_seconds = 0.0
        self.picks = 0
        self.last_launch_id: int | None = None
        self.parked = False

    def clone(self, depth: int) -> VMState:
        """A copy a look-ahead may change: the first ``depth`` queued tickets (all it can
        take), its own in-flight list, and its own usage window where a cap reads it."""
        o = VMState.__new__(VMState)
        o.vm_id, o.share_pct, o.cap_pct, o.cap_limit = self.vm_id, self.share_pct, self.cap_pct, self.cap_limit
        o.cap_frac, o.weight, o.tier, o.vruntime = self.cap_frac, self.weight, self.tier, self.vruntime
        o.gen, o.where, o.entry, o.reserved = self.gen, self.where, self.entry, self.reserved
        o.blocked_until, o.device_seconds, o.picks = self.blocked_until, self.device_seconds, self.picks
        o.last_launch_id, o.parked = self.last_launch_id, self.parked
        o.queue = deque(itertools.islice(self.queue, depth))
        o.inflight = deque(self.inflight)
        o.usage = self.usage.copy() if self.cap_limit is not None else UsageWindow()
        return o


class _Tier:
    __slots__ = ("ready", "vclock")

    def __init__(self) -> None:
        self.ready: list[list[tuple[float, int, int]]] = [[] for _ in range(_CLASSES)]
        # Monotonic virtual clock: the smallest key seen at each pick. A VM entering the
        # ready set is not let further behind it than the wake-up lag.
        self.vclock = 0.0

    def copy(self) -> _Tier:
        other = _Tier()
        other.ready = [list(h) for h in self.ready]
        other.vclock = self.vclock
        return other


class Engine:
    """The decision state over a VM table. ``get`` reads a VM; ``mut`` returns one that may
    be changed (the same object here; a clone in a fork)."""

    def __init__(self, vms: dict[int, VMState], *, window: float, class_lag: float,
                 wakeup_lag: float) -> None:
        self.vms = vms
        self.get = vms.get
        self.mut = vms.__getitem__
        self.window = window
        self.class_lag = class_lag
        self.wakeup_lag = wakeup_lag
        self.tiers = [_Tier(), _Tier()]
        self.throttled: list[tuple[float, int, int]] = []
        self.compacting = True

    def fork(self, depth: int) -> Engine:
        """A copy for a look-ahead of up to ``depth`` picks; the original is not touched."""
        f = Engine.__new__(Engine)
        f.vms = self.vms
        base_get, own = self.vms.get, {}

        def get(vm_id: int) -> VMState | None:
            return own.get(vm_id) or base_get(vm_id)

        def mut(vm_id: int) -> VMState:
            vm = own.get(vm_id)
            if vm is None:
                vm = own[vm_id] = self.vms[vm_id].clone(depth)
            return vm

        f.get, f.mut = get, mut
        f.window, f.class_lag, f.wakeup_lag = self.window, self.class_lag, self.wakeup_lag
        f.tiers = [t.copy() for t in self.tiers]
        f.throttled = list(self.throttled)
        f.compacting = False
        return f

    # -- placement ---------------------------------------------------------------------

    def place(self, vm: VMState, now: float) -> None:
        """Put ``vm`` where its head launch belongs at ``now``: nowhere (no work), the
        throttled heap (over its cap), or the ready heap of its tier and head class."""
        if not vm.queue:
            if vm.where != IDLE:
                vm.gen, vm.where, vm.entry = next(_GEN), IDLE, None
            return
        if vm.parked:
            vm.gen, vm.where, vm.entry = next(_GEN), PARKED, None
            return
        head = vm.queue[0]
        if vm.cap_limit is not None:
            at = self.cap_ready_at(vm, head.est_seconds, now)
            if at > now:
                vm.gen, vm.entry = next(_GEN), None
                if at == math.inf:
                    vm.where = WAITING  # only a charge of its in-flight work can free it
                else:
                    vm.where = THROTTLED
                    heappush(self.throttled, (at, vm.gen, vm.vm_id))
                    self._maybe_compact(self.throttled)
                return
        tier = self.tiers[vm.tier]
        key = vm.vruntime + (vm.reserved + 0.5 * head.est_seconds) / vm.weight
        if vm.where not in (READY, TAKEN):
            floor = tier.vclock - self.wakeup_lag  # no banked credit (docs: "Waking up")
            if key < floor:
                vm.vruntime += floor - key
                key = floor
        entry = (vm.tier, int(head.wclass), key)
        if vm.where == READY and vm.entry == entry:
            return  # its live heap entry is still right
        vm.gen, vm.where, vm.entry = next(_GEN), READY, entry
        heap = tier.ready[entry[1]]
        heappush(heap, (key, vm.gen, vm.vm_id))
        self._maybe_compact(heap)

    def cap_ready_at(self, vm: VMState, est: float, now: float) -> float:
        """When ``vm`` may start a launch of ``est`` seconds without its window going over
        the cap: its window sum plus its in-flight estimates plus this estimate (at most
        one whole window's allowance) must fit in ``cap_limit``."""
        limit = vm.cap_limit
        assert limit is not None
        allowed = limit - vm.reserved - min(est, limit)
        at = vm.usage.time_when_at_most(now, self.window, allowed)
        return at if at >= vm.blocked_until else vm.blocked_until

    def release(self, now: float) -> None:
        """Move the throttled VMs whose time has come back into play."""
        th = self.throttled
        while th and th[0][0] <= now:
            _, gen, vm_id = heappop(th)
            vm = self.get(vm_id)
            if vm is not None and vm.gen == gen:
                self.place(self.mut(vm_id), now)

    def next_release(self) -> float | None:
        th = self.throttled
        while th:
            at, gen, vm_id = th[0]
            vm = self.get(vm_id)
            if vm is not None and vm.gen == gen:
                return at
            heappop(th)
        return None

    # -- the decision ------------------------------------------------------------------

    def select(self) -> VMState | None:
        """Pop the VM whose head runs next (docs/scheduling.md, "The pick rule")."""
        get = self.get
        for tier in self.tiers:
            heaps = tier.ready
            best = math.inf
            for heap in heaps:
                while heap:
                    key, gen, vm_id = heap[0]
                    vm = get(vm_id)
                    if vm is not None and vm.gen == gen:
                        if key < best:
                            best = key
                        break
                    heappop(heap)
            if best == math.inf:
                continue
            bound = best + self.class_lag
            for heap in heaps:  # most urgent class first
                if heap and heap[0][0] <= bound:
                    vm = self.mut(heappop(heap)[2])
                    vm.where, vm.entry = TAKEN, None
                    if best > tier.vclock:
                        tier.vclock = best
                    return vm
        return None

    def _live_top(self, heap: list, skip: int) -> float:
        """The smallest live key in ``heap`` of a VM other than ``skip`` (inf: none); stale
        tops are dropped as select() drops them."""
        get = self.get
        while heap:
            key, gen, vm_id = heap[0]
            vm = get(vm_id)
            if vm is not None and vm.gen == gen:
                break
            heappop(heap)
        if not heap:
            return math.inf
        if heap[0][2] != skip:
            return heap[0][0]
        return min((k for k, g, v in heap[1:] if v != skip and (o := get(v)) is not None and o.gen == g),
                   default=math.inf)

    def urgent_waiting(self, running: VMState, wclass: int, ran: float, now: float) -> bool:
        """Whether a head of another VM would be picked ahead of the launch ``running`` has
        had on the device for ``ran`` seconds (docs/scheduling.md, "Preemption"): a head of
        a share VM while a share-0 launch runs, or a head of a strictly more urgent class
        whose key is within CLASS_LAG of the smallest key, the running launch's VM counted
        where it is now (its virtual time plus the time this launch ran)."""
        self.release(now)
        heaps = self.tiers[NORMAL_TIER].ready
        me = running.vm_id
        if running.tier == IDLE_TIER:
            return any(self._live_top(h, me) < math.inf for h in heaps)
        tops = [self._live_top(h, me) for h in heaps]
        best = min(min(tops), running.vruntime + ran / running.weight)
        return any(tops[c] <= best + self.class_lag for c in range(wclass))

    def pick(self, now: float):
        self.release(now)
        vm = self.select()
        if vm is None:
            return None
        ticket = vm.queue.popleft()
        vm.inflight.append(ticket.est_seconds)
        vm.reserved += ticket.est_seconds
        vm.picks += 1
        self.place(vm, now)
        return ticket

    def charge(self, vm: VMState, seconds: float, ended: float, now: float, *,
               newest: bool = False) -> None:
        """Account ``seconds`` of measured device time to ``vm``; it releases the oldest
        in-flight reservation (the newest in a look-ahead, which charges its own picks)."""
        if vm.inflight:
            est = vm.inflight.pop() if newest else vm.inflight.popleft()
            vm.reserved = vm.reserved - est if vm.inflight else 0.0
        vm.vruntime += seconds / vm.weight
        vm.device_seconds += seconds
        vm.usage.add(ended, seconds)
        vm.usage.prune(now, self.window)
        if vm.cap_limit is not None and seconds > vm.cap_limit + TIME_EPS:
            # Longer than a window's allowance: keep its long-run fraction at the cap.
            vm.blocked_until = max(vm.blocked_until, ended - seconds + seconds / vm.cap_frac)
        if vm.where != IDLE:
            self.place(vm, now)

    # -- upkeep ------------------------------------------------------------------------

    def _maybe_compact(self, heap: list) -> None:
        if not self.compacting or len(heap) <= 2 * len(self.vms) + HEAP_SLACK:
            return
        get = self.get
        live = [e for e in heap if (vm := get(e[2])) is not None and vm.gen == e[1]]
        heap[:] = live
        heapify(heap)
