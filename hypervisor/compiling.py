"""Compiling without stalling the other VMs (issue 14, docs/scheduling.md "Compiles").

A compile is pure Python: parsing and validating a 64 KiB source takes 60-250 ms of CPU
and, done on a VM's thread, holds the interpreter lock (the GIL) that the dispatcher and
every other VM's thread need. ``Compiler.compile`` keeps it off that lock:

- the compile cache (primitive_lang, by sha256) answers a source seen before at once;
- a miss of more than ``inline_bytes`` (INLINE_BYTES) is compiled in a worker process
  (compile_pool.py): this process only waits, then builds the result's objects from the
  worker's answer (about a third of the compile's CPU); smaller sources compile on the
  calling thread, where they cost less than the round trip would;
- a per-VM compile budget (``CompileBudget``): a VM's compiles run one at a time and may
  use at most ``COMPILE_BUDGET_S`` seconds of CPU (the worker's and this process's) in any
  ``COMPILE_WINDOW_S``; beyond, its next compile waits (on the VM's own thread: no other
  VM waits) until its usage is back under the budget. Cache hits are not counted;
- the GIL's switch interval: a thread that wants the GIL waits for the holder's interval
  to run out (5 ms by default). ``Hypervisor.start`` lowers it to ``GIL_SWITCH_S``
  (process-wide), which bounds what the remaining Python work (an inline compile,
  building a result) can make the dispatcher wait.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import primitive_lang
from primitive_lang import CompiledProgram

from . import errors as E
from .compile_pool import COMPILE_TIMEOUT_S, MAX_WORKERS, CompilePool

#: The GIL switch interval the hypervisor runs with (seconds).
GIL_SWITCH_S = 0.0005
#: CPU seconds of compiling one VM may use per window.
COMPILE_BUDGET_S = 0.25
COMPILE_WINDOW_S = 1.0
#: Sources of at most this many bytes compile on the calling thread even with a pool:
#: below it the round trip to a worker costs this process more than compiling does
#: (measured: docs/benchmarks.md, issue 14).
INLINE_BYTES = 512
#: Compile workers when the configuration does not say: one per 4 CPUs, 1..4.
DEFAULT_WORKERS = max(1, min(4, (os.cpu_count() or 1) // 4))


class Charge:
    """What one compile costs its VM beyond its thread's CPU time (a worker's)."""

    __slots__ = ("extra_s",)

    def __init__(self) -> None:
        self.extra_s = 0.0


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
    def turn(self, vm_id: int) -> Iterator[Charge]:
        """Wait for the VM's budget and its previous compile; charge the CPU time of the
        body to the VM, plus what the body adds to the ``Charge`` it gets."""
        lock, records = self._vm(vm_id)
        with lock:
            while self._prune(records) >= self.budget_s and records:
                wait = records[0][0] + self.window_s - self._clock()
                if wait > 0:
                    self.waited_s += wait
                    self._sleep(wait)
            c0 = self._cpu()
            charge = Charge()
            try:
                yield charge
            finally:
                records.append((self._clock(), self._cpu() - c0 + charge.extra_s))


#: Seconds between two full collections of the frozen heap (``GcEpochs``).
GC_EPOCH_S = 60.0


class GcEpochs:
    """Keeps compiled programs out of Python's full garbage collections (``[scheduler]
    compile_gc_freeze``; docs/scheduling.md "Compiles").

    Every compile allocates ~30 000 tracked objects per 63 KiB of source in this process,
    and with a few such programs alive a full collection pauses the whole daemon for
    ~100 ms, every couple of seconds while a VM compiles at its budget. ``settle()``,
    after each compile that built a program here, moves everything tracked so far to the
    collector's permanent generation (``gc.freeze()``, O(1)), which full collections skip.
    The price: cyclic garbage frozen with it is not reclaimed at once. So ``epoch_s``
    after the first freeze the heap is unfrozen and collected once (one full pause per
    epoch) and stays unfrozen until the next compile freezes it again: frozen garbage
    lives at most one epoch, whether or not anything compiles after it. That end of an
    epoch is ``tick()``: called by the next ``settle()`` when the epoch is over, else by
    a thread of its own (``background``; started at the first freeze, ended by ``close()``)."""

    def __init__(self, epoch_s: float = GC_EPOCH_S, *, clock: Callable[[], float] = time.monotonic,
                 freeze: Callable[[], None] | None = None, unfreeze: Callable[[], None] | None = None,
                 collect: Callable[[], object] | None = None, background: bool = True):
        import gc

        self.epoch_s = epoch_s
        self._clock = clock
        self._freeze = freeze or gc.freeze
        self._unfreeze = unfreeze or gc.unfreeze
        self._collect = collect or gc.collect
        self._lock = threading.Lock()
        self._frozen_at: float | None = None  # when the epoch began (the first freeze); None: not frozen
        self.epochs = 0
        self._background = background
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._closed = False

    @property
    def frozen(self) -> bool:
        return self._frozen_at is not None

    def settle(self) -> None:
        """After a compile that built a program here: freeze the heap (the epoch begins
        with the first freeze; one that is over ends first)."""
        self.tick()
        with self._lock:
            if self._closed:
                return
            first = self._frozen_at is None
            if first:
                self._frozen_at = self._clock()
            self._freeze()
            if first and self._background:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="pxos-gc-epochs", daemon=True)
                    self._thread.start()
                self._wake.set()  # a new epoch: its end to wait for

    def tick(self) -> bool:
        """End the epoch if it is over: unfreeze and collect once. True when it did."""
        with self._lock:
            if self._frozen_at is None or self._clock() - self._frozen_at < self.epoch_s:
                return False
            self._unfreeze()
            self._frozen_at = None
            self._collect()
            self.epochs += 1
            return True

    def _run(self) -> None:
        while not self._closed:
            with self._lock:
                at = self._frozen_at
            self._wake.wait(None if at is None else max(at + self.epoch_s - self._clock(), 0.0) + 0.01)
            self._wake.clear()
            if not self._closed:
                self.tick()

    def close(self) -> None:
        """End the thread and unfreeze: nothing stays frozen past the compiler's life."""
        with self._lock:
            self._closed = True
            if self._frozen_at is not None:
                self._unfreeze()
                self._frozen_at = None
        self._wake.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(5.0)


class Compiler:
    """Compiles for the hypervisor: cache, then inline or a worker process, within each
    VM's budget. ``workers=0``: every compile runs on the calling thread (no processes).
    Workers start when first needed, or all at ``start()``; ``close()`` ends them."""

    def __init__(self, *, workers: int | None = None, timeout_s: float = COMPILE_TIMEOUT_S,
                 inline_bytes: int = INLINE_BYTES, budget_s: float = COMPILE_BUDGET_S,
                 budget: CompileBudget | None = None, gc_freeze: bool = False):
        workers = DEFAULT_WORKERS if workers is None else workers
        if not 0 < budget_s <= COMPILE_WINDOW_S:
            raise E.InvalidArgument(f"a compile budget is (0, {COMPILE_WINDOW_S:g}] s of CPU per "
                                    f"{COMPILE_WINDOW_S:g} s, got {budget_s!r}")
        if not 0 <= workers <= MAX_WORKERS:
            raise E.InvalidArgument(f"compile workers must be 0..{MAX_WORKERS} (MAX_WORKERS), got {workers}")
        if not 0 <= inline_bytes <= primitive_lang.limits.MAX_SOURCE_BYTES:
            raise E.InvalidArgument(f"inline_bytes must be 0..{primitive_lang.limits.MAX_SOURCE_BYTES}, "
                                    f"got {inline_bytes}")
        self.budget = budget if budget is not None else CompileBudget(budget_s)
        self.pool = CompilePool(workers, timeout_s=timeout_s) if workers else None
        self.inline_bytes = inline_bytes
        self.gc = GcEpochs() if gc_freeze else None  # opt-in: programs out of full collections
        self._lock = threading.Lock()
        self.counts = {"inline": 0, "pool": 0}
        self._dispatchers: weakref.WeakSet = weakref.WeakSet()  # the devices a rebuild gives way to

    def watch(self, dispatcher) -> None:
        """A device whose launches a pool compile's rebuild gives way to (compile_pool.py)."""
        self._dispatchers.add(dispatcher)

    def _busy(self) -> bool:
        # The dispatcher holds its device token while it picks or runs launches (a caller on
        # the serial fast path too), and its work event is set from a launch's queueing.
        return any(d._device.locked() or d._work.is_set() for d in list(self._dispatchers))

    def start(self) -> Compiler:
        if self.pool is not None:
            self.pool.start()
        return self

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
        if self.gc is not None:
            self.gc.close()

    def forget(self, vm_id: int) -> None:
        self.budget.forget(vm_id)

    def compile(self, vm_id: int, source: str | bytes) -> CompiledProgram:
        """The program, or primitive_lang.PrimitiveError for a source it rejects;
        E.CompileTimeout, E.CompileFailed or E.Cancelled (stopping) from a worker."""

        def run(data: bytes, key: str):
            with self.budget.turn(vm_id) as charge:  # one at a time per VM, within its CPU budget
                where = "pool" if self.pool is not None and len(data) > self.inline_bytes else "inline"
                with self._lock:
                    self.counts[where] += 1
                if where == "inline":
                    result = primitive_lang.compile_uncached(data, key)
                else:
                    result = self.pool.run(data, key, charge, self._busy)
                if self.gc is not None and len(data) > self.inline_bytes:
                    self.gc.settle()
                return result

        return primitive_lang.compile_source(source, run=run)

    def stats(self) -> dict:
        """Counts for metrics: compiles by where they ran, the pool's state and failures."""
        cache = primitive_lang.cache_info()
        with self._lock:
            out = {"inline": self.counts["inline"], "pool": self.counts["pool"], "cache_hits": cache["hits"]}
        out["budget_wait_seconds"] = self.budget.waited_s
        pool = self.pool.stats() if self.pool is not None else {}
        out.update({k: pool.get(k, 0) for k in ("workers", "busy", "waiting", "timeouts", "crashes", "errors",
                                                "started", "worker_cpu_seconds", "queue_wait_seconds")})
        out["pool_size"] = self.pool.size if self.pool is not None else 0
        return out
