"""The rebalancer: moves a VM off a busy device onto an idle one (off by default).

Every ``interval`` seconds it reads each device's utilisation (its busy fraction over the
scheduler window). When the busiest and the least busy device differ by at least ``gap``
(REBALANCE_GAP), and the same two devices have stood that far apart for ``dwell`` seconds
without a break, it moves one VM from the busiest to the least busy: a VM with work there
(it used the device in the window or has launches queued), not moved in the last
``dwell`` seconds, whose part of the busy device's time evens the two out best; a VM the
target cannot take (share, memory) is passed over for the next. The busy
device must have at least two VMs with work (moving its only one moves the load, and
would move it back). After a move the imbalance must stand a whole dwell again before the
next, so nothing flaps. Moves go through DeviceSet.move_vm (hypervisor/moving.py) and are
logged, and their ``vm_moved`` events say ``by = "rebalancer"``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import errors as E

if TYPE_CHECKING:
    from .devices import DeviceSet

log = logging.getLogger("pxos.rebalance")

REBALANCE_GAP = 0.5  # utilisation difference (0..1) between two devices that counts as uneven


class Rebalancer:
    def __init__(self, ds: DeviceSet, interval: float, dwell: float, *, gap: float = REBALANCE_GAP,
                 clock: Callable[[], float] = time.monotonic,
                 loads: Callable[[], dict[int, float]] | None = None):
        self.ds, self.interval, self.dwell, self.gap = ds, interval, dwell, gap
        self.clock = clock
        self._loads = loads if loads is not None else self._utilisation
        self._pair: tuple[int, int] | None = None
        self._since: float | None = None
        self._moved_at: dict[int, float] = {}
        self.moves = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _utilisation(self) -> dict[int, float]:
        return {u.device: u.utilisation for u in self.ds.device_stats()}

    def start(self) -> Rebalancer:
        self._thread = threading.Thread(target=self._run, name="pxos-rebalance", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.step()
            except Exception:  # one bad look must not end the rebalancer
                log.exception("rebalancer step failed")

    def step(self, now: float | None = None) -> dict | None:
        """One look. Returns the move's report when it moved a VM."""
        now = self.clock() if now is None else now
        loads = self._loads()
        if len(loads) < 2:
            return None
        order = sorted(loads, key=lambda d: (loads[d], d))
        lo, hi = order[0], sorted(loads, key=lambda d: (-loads[d], d))[0]
        if loads[hi] - loads[lo] < self.gap:
            self._pair = self._since = None
            return None
        if self._pair != (hi, lo) or self._since is None:
            self._pair, self._since = (hi, lo), now
            return None
        if now - self._since < self.dwell:
            return None
        busy = [s for s in self.ds.all_stats()
                if s.device == hi and (s.achieved_share > 0 or s.queue_depth > 0 or s.inflight > 0)]
        if len(busy) < 2:
            return None
        l_hi, l_lo = loads[hi], loads[lo]

        def uneven_after(s) -> float:
            a = s.achieved_share * l_hi
            return abs((l_hi - a) - (l_lo + a))

        for s in sorted(busy, key=lambda s: (uneven_after(s), s.vm_id)):
            if now - self._moved_at.get(s.vm_id, -float("inf")) < self.dwell:
                continue
            try:
                report = self.ds.move_vm(s.vm_id, lo, by="rebalancer")
            except E.PxosError as exc:
                log.info("rebalancer: VM %d stays on device %d: %s", s.vm_id, hi, exc)
                continue
            self._moved_at[s.vm_id] = now
            self._pair = self._since = None
            self.moves += 1
            log.info("rebalancer: VM %d moved from device %d (busy %.0f%%) to device %d (busy %.0f%%), paused %.3f s",
                     s.vm_id, hi, 100 * l_hi, lo, 100 * l_lo, report["pause_seconds"])
            return report
        return None
