"""Load for the hypervisor benchmark (bench_hypervisor): kernels sized to a target run time
on the backend at hand, VMs that keep the device saturated, and a recorder of every
launch's start and end taken from the dispatcher.

Kernels are matrix products (``PARALLEL_MATMUL``), optionally chained with ``REPEAT`` when
one product of the largest size we allow is still shorter than the target (a 100 ms launch
on a GPU). Sizes are found by timing ``executor.run`` directly, so a "1 ms kernel" is
1 ms on this machine, whatever it is.
"""

from __future__ import annotations

# First: importing hypervisor pins BLAS to one thread, which works only before NumPy loads.
import hypervisor  # noqa: F401

# isort: split
import statistics
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

import primitive_lang
from hypervisor import Hypervisor
from hypervisor import errors as E
from hypervisor.core import MAX_INFLIGHT_PER_VM
from hypervisor.executor import Executor
from primitive_lang import TensorSpec
from primitive_lang.ast import DType
from scheduler import LaunchCost

F32 = DType("float32")
# Largest square matrix a benchmark kernel uses: three of them must fit the NumPy pool
# (3 x 2048^2 x 4 B = 48 MiB) or a GPU's memory beside the other VMs' (3 x 768 MiB).
MAX_N = {"numpy": 2048, "cupy": 8192}
# A kernel longer than one product of MAX_N repeats the product; this bounds the chain.
MAX_CHAIN = 64
# Launches a saturating VM keeps in flight: enough queued work to cover this long. A VM
# that is owed time (another VM just ran a long launch) catches up in a burst; if its
# queue runs dry meanwhile, the scheduler rightly treats it as idle and it loses the time
# it was owed (shares bind only backlogged VMs). 2 shared cores and the GIL can keep a
# submitter thread off the CPU for tens of ms, so the backlog is generous; the hypervisor
# caps it at MAX_INFLIGHT_PER_VM launches.
BACKLOG_SECONDS = 0.25
MAX_DEPTH = MAX_INFLIGHT_PER_VM


@dataclass(frozen=True)
class Kernel:
    """A matmul kernel: ``a[n,n] @ w`` repeated ``chain`` more times, into ``c``."""

    n: int
    chain: int
    seconds: float  # measured direct executor.run wall time, median

    @property
    def source(self) -> str:
        return matmul_source(self.n, self.chain)

    def describe(self) -> str:
        more = f" x{self.chain + 1}" if self.chain else ""
        return f"matmul {self.n}x{self.n}{more} ({self.seconds * 1e3:.3g} ms)"


def matmul_source(n: int, chain: int = 0) -> str:
    body = "    PARALLEL_MATMUL a w -> c\n" if chain == 0 else (
        "    PARALLEL_MATMUL a w -> h\n"
        f"    REPEAT {chain}:\n"
        "        PARALLEL_MATMUL h w -> h\n"
        "    END_REPEAT\n"
        "    COPY h -> c\n")
    return (f"GPU_KERNEL mm{n}_{chain}\n"
            f"GPU_PARAM a float[{n}, {n}]\nGPU_PARAM w float[{n}, {n}]\nGPU_PARAM c float[{n}, {n}]\n"
            f"GPU_THREAD_CODE:\n{body}GPU_END\n")


TINY_SOURCE = """GPU_KERNEL tiny
GPU_PARAM a float[16]
GPU_PARAM b float[16]
GPU_PARAM c float[16]
GPU_THREAD_CODE:
    ADD a b -> c
GPU_END
"""


def inputs_for(source: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Host data for every param of the source's first kernel. ``w`` is scaled by 1/n so a
    chain of products keeps values near 1 (no inf/nan slow paths)."""
    specs = primitive_lang.compile_source(source).kernels[0].declared_specs()
    rng = np.random.default_rng(seed)
    out = {}
    for name, spec in specs.items():
        x = rng.random(spec.shape, dtype=np.float32)
        if name == "w":
            x /= spec.shape[0]
        out[name] = x
    return out


class DirectRun:
    """The baseline: one bound kernel run straight on the executor, no hypervisor."""

    def __init__(self, executor: Executor, source: str):
        self.executor = executor
        ck = primitive_lang.compile_source(source).kernels[0]
        data = inputs_for(source)
        self.args = {}
        for name, x in data.items():
            arr = executor.zeros(TensorSpec(F32, x.shape))
            executor.write(arr, 0, [memoryview(x).cast("B")])
            self.args[name] = arr
        self.bound = ck.bind({n: TensorSpec(F32, x.shape) for n, x in data.items()})

    def __call__(self) -> None:
        self.executor.run(self.bound, self.args)

    def wall(self, n: int) -> float:
        """Seconds per run over n back-to-back runs."""
        t0 = time.perf_counter()
        for _ in range(n):
            self.executor.run(self.bound, self.args)
        return (time.perf_counter() - t0) / n

    def pipelined(self, n: int, depth: int) -> float:
        """Seconds per run with ``depth`` runs kept in flight, the way the hypervisor's
        pipelined caller keeps them: on an asynchronous executor straight on its stream; on
        a synchronous one through one worker thread (what the dispatcher thread is to the
        hypervisor), so the caller's side overlaps the device's work on both sides of the
        comparison (issue 14: compare pipelined with pipelined, serial with serial)."""
        inflight: deque = deque()
        t0 = time.perf_counter()
        if self.executor.asynchronous:
            for _ in range(n):
                if len(inflight) == depth:
                    inflight.popleft().wait()
                inflight.append(self.executor.submit(self.bound, self.args))
            for p in inflight:
                p.wait()
        else:
            with ThreadPoolExecutor(1, thread_name_prefix="direct-device") as pool:
                for _ in range(n):
                    if len(inflight) == depth:
                        inflight.popleft().result()
                    inflight.append(pool.submit(self.executor.run, self.bound, self.args))
                for f in inflight:
                    f.result()
        return (time.perf_counter() - t0) / n

    def median_wall(self, repeat: int) -> float:
        self()
        out = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            self()
            out.append(time.perf_counter() - t0)
        return statistics.median(out)


def sized_kernel(executor: Executor, target_s: float) -> Kernel:
    """The matmul kernel whose direct run takes about ``target_s`` here (the smallest, 8x8,
    when even that is longer)."""
    n_max = MAX_N.get(executor.name, MAX_N["numpy"])
    n, t = 32, 0.0
    for _ in range(10):
        t = _time(executor, n, 0, target_s)
        if 0.8 * target_s <= t <= 1.25 * target_s:
            break
        step = (target_s / t) ** (1 / 3)
        nxt = int(min(n_max, max(8, round(n * min(4.0, max(0.25, step)) / 8) * 8)))
        if nxt == n:
            break
        n = nxt
    chain = 0
    if t < 0.8 * target_s and n == n_max:
        chain = min(MAX_CHAIN, max(0, round(target_s / t) - 1))
        if chain:
            t = _time(executor, n, chain, target_s)
    return Kernel(n, chain, t)


def _time(executor: Executor, n: int, chain: int, target_s: float) -> float:
    run = DirectRun(executor, matmul_source(n, chain))
    return run.median_wall(int(min(15, max(3, 0.15 / max(target_s, 1e-6)))))


@dataclass
class Record:
    vm_id: int
    enqueued: float
    started: float
    ended: float
    device_s: float
    all_backlogged: bool  # when it started, every other VM of the recorder had launches queued


class Recorder:
    """Every launch the dispatcher runs: when it was queued, started and ended (the
    hypervisor's clock), its device time, and whether every VM was backlogged when it was
    chosen (a VM with an empty queue is idle to the scheduler, and shares bind only
    backlogged VMs). Start times come from the dispatcher's ``before_run`` hook, the rest
    from the ``launch_completed`` event."""

    def __init__(self, hv: Hypervisor, vm_ids: list[int]):
        self.hv, self.vm_ids = hv, vm_ids
        self.records: list[Record] = []
        self._running: dict[int, tuple[int, float, float, bool]] = {}
        hv.dispatcher.before_run.append(self._before_run)
        self._unsubscribe = hv.subscribe(self._on_event)

    def _before_run(self, job) -> None:  # dispatcher thread, the launch chosen and about to run
        depth = self.hv.scheduler.queue_depth  # a len() read; the GIL makes it atomic
        backlogged = all(v == job.vm_id or depth(v) for v in self.vm_ids)
        self._running[job.launch_id] = (job.vm_id, job.enqueued_at, job.started, backlogged)

    def _on_event(self, ev) -> None:  # dispatcher thread, after the completion is delivered
        if ev.kind != "launch_completed":
            return
        ran = self._running.pop(ev.detail["launch_id"], None)
        if ran is None:  # cancelled or refused: it never ran
            return
        vm_id, enqueued, started, backlogged = ran
        ended = enqueued + ev.detail["total_ns"] * 1e-9
        self.records.append(Record(vm_id, enqueued, started, ended, ev.detail["device_ns"] * 1e-9, backlogged))

    def close(self) -> None:
        if self._before_run in self.hv.dispatcher.before_run:
            self.hv.dispatcher.before_run.remove(self._before_run)
        self._unsubscribe()

    def within(self, t0: float, t1: float) -> list[Record]:
        return [r for r in self.records if t0 <= r.started <= t1]

    def device_share(self, t0: float, t1: float) -> dict[int, float]:
        """Each VM's percent of the device time spent in [t0, t1]; a launch that straddles an
        end counts in proportion to its overlap."""
        per = {v: 0.0 for v in self.vm_ids}
        for r in self.records:
            span = r.ended - r.started
            overlap = min(r.ended, t1) - max(r.started, t0)
            if overlap > 0 and span > 0:
                per[r.vm_id] = per.get(r.vm_id, 0.0) + r.device_s * overlap / span
        total = sum(per.values()) or 1e-12
        return {v: 100.0 * s / total for v, s in per.items()}

    def backlogged_pct(self, t0: float, t1: float) -> float:
        """Percent of the launches started in [t0, t1] that were chosen while every VM had
        work queued."""
        recs = self.within(t0, t1)
        return 100.0 * sum(r.all_backlogged for r in recs) / max(1, len(recs))

    def same_vm_gaps(self, t0: float, t1: float) -> list[float]:
        """Start of a launch minus the end of the one before it, where both are the same
        VM's and the second was already queued when the first ended (the dispatcher's own
        definition of a switch, with the VM unchanged)."""
        recs = sorted(self.within(t0, t1), key=lambda r: r.started)
        return [b.started - a.ended for a, b in zip(recs, recs[1:], strict=False)
                if a.vm_id == b.vm_id and b.enqueued <= a.ended]


class Load:
    """One VM kept saturated with launches of one kernel: ``depth`` in flight until
    ``finish()``. Launch failures are counted in ``errors`` by status."""

    def __init__(self, hv: Hypervisor, vm_id: int, kernel: Kernel):
        self.hv, self.vm_id, self.kernel = hv, vm_id, kernel
        self.errors: dict[str, int] = {}
        self.depth = int(min(MAX_DEPTH, max(4, BACKLOG_SECONDS / max(kernel.seconds, 1e-6))))
        self.kernel_id, self.bindings = install(hv, vm_id, kernel.source)
        self.stop_flag = threading.Event()

    def prime(self, *, max_launches: int = 40, max_seconds: float = 3.0, tolerance: float = 1.5) -> int:
        """Run launches one at a time until the hypervisor's estimate of this VM's launch is
        within ``tolerance`` of what it measures (a VM that has been running a while), or
        the limits are reached; returns the launches it took. Estimates are taken when a
        launch is queued, so a saturating VM that starts cold queues its whole backlog with
        the prior's estimate (see bench_hypervisor's cold-start figure)."""
        cost = launch_cost(self.kernel.source)
        end = time.monotonic() + max_seconds
        for i in range(1, max_launches + 1):
            res = self.launch().wait()
            if not res.ok:
                raise RuntimeError(f"VM {self.vm_id}: priming launch failed: {res.status} {res.error}")
            est = self.hv.classifier.estimate(self.vm_id, cost)  # a pure read of the learned ratio
            ratio = est / max(res.device_ns * 1e-9, 1e-9)
            if (i >= 3 and 1 / tolerance <= ratio <= tolerance) or time.monotonic() > end:
                return i
        return max_launches

    def launch(self):
        return self.hv.launch(self.vm_id, self.kernel_id, self.bindings)

    def settle(self, completion) -> None:
        res = completion.wait()
        if not res.ok:
            self.errors[res.status] = self.errors.get(res.status, 0) + 1

    def start(self) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        raise NotImplementedError


class GuestThread(Load):
    """Saturation as a guest program does it: a thread that waits for its oldest launch
    and tops the queue up again. It has to win the GIL and a core to refill, so on a
    loaded machine its queue can run dry (the Recorder tells how often)."""

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"bench-vm{self.vm_id}", daemon=True)
        self._thread.start()

    def finish(self) -> None:
        self.stop_flag.set()
        self._thread.join()

    def _run(self) -> None:
        inflight: deque = deque()
        while not self.stop_flag.is_set():
            while len(inflight) < self.depth:
                try:
                    inflight.append(self.launch())
                except E.Busy:
                    break
            self.settle(inflight.popleft())
            while inflight and inflight[0].done():
                self.settle(inflight.popleft())
        for c in inflight:
            self.settle(c)


class CallbackLoad(Load):
    """Saturation by construction: each completion queues its replacement from its done
    callback, on the dispatcher thread, before the next decision. The VM's queue never
    runs dry, whatever else runs on the machine; the replacement's launch() is paid on the
    dispatcher thread (it lowers device busy time, not the shares of it)."""

    def start(self) -> None:
        self._lock = threading.Lock()
        self._inflight = 0
        self._drained = threading.Event()
        for _ in range(self.depth):
            self._submit()

    def finish(self, timeout: float = 120.0) -> None:
        self.stop_flag.set()
        if not self._drained.wait(timeout):
            raise TimeoutError(f"VM {self.vm_id}: launches still in flight after {timeout} s")

    def _submit(self) -> None:
        with self._lock:
            self._inflight += 1
        try:
            completion = self.launch()
        except E.PxosError as exc:
            self._done_one(exc.status)
            return
        completion.add_done_callback(self._on_done)

    def _on_done(self, completion) -> None:  # dispatcher thread
        res = completion.result
        self._done_one(None if res.ok else res.status)
        if not self.stop_flag.is_set():
            self._submit()

    def _done_one(self, failed: str | None) -> None:
        with self._lock:
            if failed is not None:
                self.errors[failed] = self.errors.get(failed, 0) + 1
            self._inflight -= 1
            if self._inflight == 0 and self.stop_flag.is_set():
                self._drained.set()


def launch_cost(source: str) -> LaunchCost:
    """What the hypervisor hands the classifier for one launch of the source's kernel."""
    ck = primitive_lang.compile_source(source).kernels[0]
    c = ck.bind(ck.declared_specs()).cost
    return LaunchCost(c.flops, c.bytes_read, c.bytes_written, c.peak_temp_bytes)


def install(hv: Hypervisor, vm_id: int, source: str) -> tuple[int, dict[str, int]]:
    """Compile the source in the VM and give each param a buffer holding its input data."""
    kernel_id = hv.compile(vm_id, source)[0].kernel_id
    bindings = {}
    for name, x in inputs_for(source, seed=vm_id).items():
        buf = hv.alloc(vm_id, "float32", x.shape)
        hv.write(vm_id, buf.handle, 0, x.tobytes())
        bindings[name] = buf.handle
    return kernel_id, bindings
