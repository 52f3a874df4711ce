"""Compiling without stalling the other VMs (issue 14, docs/scheduling.md "Compiles").

A compile is pure Python: it holds the interpreter lock (the GIL) while it parses and
validates, up to tens of milliseconds for a 64 KiB source. Two things keep that from
stalling the dispatcher and the other VMs' threads:

- the GIL's switch interval: a thread that wants the GIL waits for the holder's interval
  to run out (5 ms by default), and the dispatcher takes the GIL back after every op.
  ``Hypervisor.start`` lowers it to ``GIL_SWITCH_S`` (process-wide): with a compile
  running beside, a tiny launch's p50 went from 7.5 ms to 0.18 ms (docs/benchmarks.md);
- a per-VM compile budget (``CompileBudget``): a VM's compiles run one at a time and may
  use at most ``COMPILE_BUDGET_S`` seconds of CPU in any ``COMPILE_WINDOW_S``; beyond,
  its next compile waits (on the VM's own thread: no other VM waits) until its usage is
  back under the budget. A guest compiling varied sources in a loop gets a quarter of a
  core, not the whole interpreter. Cache hits cost next to nothing and barely count.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

#: The GIL switch interval the hypervisor runs with (seconds).
GIL_SWITCH_S = 0.0005
#: CPU seconds of compiling one VM may use per window.
COMPILE_BUDGET_S = 0.25
COMPILE_WINDOW_S = 1.0


class CompileBudget:
    """Per-VM compile CPU time over a sliding window, and one compile at a time per VM."""

    def __init__(self, budget_s: float = COMPILE_BUDGET_S, window_s: float = COMPILE_WINDOW_S, *,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 cpu: Callable[[], float] = time.thread_time):
        self.budget_s, self.window_s = budget_s, window_s
        self._clock, self._sleep, self._cpu = clock, sleep, cpu
        self._lock = threading.Lock()
        self._vms: dict[int, tuple[threading.Lock, deque[tuple[float, float]]]] = {}
        self.waited_s = 0.0  # total time compiles waited for their VM's budget

    def _vm(self, vm_id: int) -> tuple[threading.Lock, deque[tuple[float, float]]]:
        with self._lock:
            entry = self._vms.get(vm_id)
            if entry is None:
                entry = self._vms[vm_id] = (threading.Lock(), deque())
            return entry

    def forget(self, vm_id: int) -> None:
        with self._lock:
            self._vms.pop(vm_id, None)

    def used(self, vm_id: int) -> float:
        _, records = self._vm(vm_id)
        return self._prune(records)

    def _prune(self, records: deque[tuple[float, float]]) -> float:
        horizon = self._clock() - self.window_s
        while records and records[0][0] <= horizon:
            records.popleft()
        return sum(s for _, s in records)

    @contextmanager
    def turn(self, vm_id: int) -> Iterator[None]:
        """Wait for the VM's budget and its previous compile; charge the CPU time of the
        body to the VM."""
        lock, records = self._vm(vm_id)
        with lock:
            while self._prune(records) >= self.budget_s and records:
                wait = records[0][0] + self.window_s - self._clock()
                if wait > 0:
                    self.waited_s += wait
                    self._sleep(wait)
            c0 = self._cpu()
            try:
                yield
            finally:
                records.append((self._clock(), self._cpu() - c0))
