"""Measurements the overcommit benchmark (bench_overcommit) takes beside the hypervisor,
on the same executor backend: the host->device copy peak from pinned memory, the time to
copy one pass's weights alone, an explicit copy-then-compute baseline, the duration of
every host->device copy an executor runs, and the batch size that makes a layer's
compute a given multiple of its copy.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

import primitive_lang
from hypervisor.executor import Executor, Fence
from primitive_lang import TensorSpec

from .oc_workload import F32, ITEM, input_rows, layer_bytes, layer_source, weight_matrix

# Distinct weights the direct layer cycles through when timing its compute, so that a
# weight is not still in a cache from the run before (as in a real pass, which never
# reuses a weight back to back).
WEIGHT_ROTATION = 3
# Copies the serial-copy baseline keeps queued at once (their device arrays stay alive
# until then): enough to keep the copy engine busy, few enough to bound device memory.
SERIAL_COPY_WINDOW = 4


class CopyClock:
    """The duration of each host->device copy an executor runs, from markers queued on its
    copy stream (CuPy: CUDA events) or copy thread (NumPy: a timestamp task) right before
    and after the copy. Installed on one executor instance (its h2d_async is wrapped; the
    copy itself is unchanged), for measuring only."""

    def __init__(self, executor: Executor):
        if executor.name not in ("cupy", "numpy"):
            raise ValueError(f"no copy clock for backend {executor.name!r}")
        self.executor = executor
        self._h2d = executor.h2d_async
        self._records: list[tuple[Any, Any, int]] = []
        executor.h2d_async = self._timed  # type: ignore[method-assign]

    def _mark(self) -> Any:
        ex = self.executor
        if ex.name == "cupy":
            ev = ex.cp.cuda.Event()  # timing enabled
            ev.record(ex.copy)
            return ev
        return ex._copier.submit(time.perf_counter)  # runs on the copy thread, in order

    def _timed(self, host: np.ndarray, device: Any) -> Fence:
        start = self._mark()
        fence = self._h2d(host, device)
        self._records.append((start, self._mark(), int(host.nbytes)))
        return fence

    def take(self) -> tuple[int, float, int]:
        """(bytes, seconds, copies) of the copies since the last take; waits for them."""
        nbytes, seconds = 0, 0.0
        for start, end, n in self._records:
            if self.executor.name == "cupy":
                end.synchronize()
                seconds += self.executor.cp.cuda.get_elapsed_time(start, end) / 1e3
            else:
                seconds += end.result() - start.result()
            nbytes += n
        count = len(self._records)
        self._records.clear()
        return nbytes, seconds, count

    def uninstall(self) -> None:
        self.executor.h2d_async = self._h2d  # type: ignore[method-assign]


def _flat_spec(nbytes: int) -> TensorSpec:
    return TensorSpec(F32, (nbytes // ITEM,))


def pinned_peak(executor: Executor, nbytes: int, repeat: int) -> float:
    """Bytes/s of the fastest of ``repeat`` h2d_async copies of one large host buffer from
    executor.host_empty (pinned on CuPy), timed on the copy stream itself."""
    host = executor.host_empty(nbytes)
    host.fill(1)
    device = executor.device_empty(_flat_spec(nbytes))
    clock = CopyClock(executor)
    try:
        best = 0.0
        for _ in range(repeat + 1):  # the first one faults pages in and warms up
            executor.h2d_async(host, device).wait()
            n, s, _ = clock.take()
            best = max(best, n / s) if s > 0 else best
        return best
    finally:
        clock.uninstall()


def serial_copy_seconds(executor: Executor, hosts: Sequence[np.ndarray]) -> float:
    """Wall seconds to copy every host array to a fresh device array (as the hypervisor's
    fetch does: device_empty, then h2d_async), back to back, nothing else running."""
    queued: list[tuple[Fence, Any]] = []
    t0 = time.perf_counter()
    for host in hosts:
        dev = executor.device_empty(_flat_spec(host.nbytes))
        queued.append((executor.h2d_async(host, dev), dev))
        if len(queued) > SERIAL_COPY_WINDOW:
            queued.pop(0)[0].wait()
    for fence, _ in queued:
        fence.wait()
    return time.perf_counter() - t0


class DirectLayer:
    """One layer kernel bound straight on an executor, no hypervisor: its activations and
    weights of its own (for timing the compute alone), or weights passed in per run."""

    def __init__(self, executor: Executor, n: int, batch: int):
        self.executor, self.n, self.batch = executor, n, batch
        ck = primitive_lang.compile_source(layer_source(batch, n)).kernels[0]
        act, w = TensorSpec(F32, (batch, n)), TensorSpec(F32, (n, n))
        self.bound = ck.bind({"x": act, "w": w, "y": act})
        self.acts = [executor.zeros(act), executor.zeros(act)]
        executor.write(self.acts[0], 0, [memoryview(input_rows(batch, n)).cast("B")])
        self.weights = []
        for i in range(WEIGHT_ROTATION):
            self.weights.append(executor.zeros(w))
            executor.write(self.weights[-1], 0, [memoryview(weight_matrix(n, seed=i)).cast("B")])
        self._i = 0

    def run(self, weight: Any = None, wait_for: Sequence[Fence] = ()) -> None:
        i = self._i
        self._i += 1
        w = self.weights[i % WEIGHT_ROTATION] if weight is None else weight
        self.executor.run(self.bound, {"x": self.acts[i % 2], "w": w, "y": self.acts[(i + 1) % 2]}, wait_for)

    def seconds(self, repeat: int) -> float:
        """Median wall seconds of one run (the executor's run returns when it is done)."""
        self.run()
        out = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            self.run()
            out.append(time.perf_counter() - t0)
        return statistics.median(out)

    def offload_pass(self, hosts: Sequence[np.ndarray]) -> float:
        """The explicit synchronous-offload baseline: for each layer, copy its weight from
        host memory to a fresh device array, then run the layer on it, one after the other.
        Returns the wall seconds of the pass."""
        spec = TensorSpec(F32, (self.n, self.n))
        t0 = time.perf_counter()
        for host in hosts:
            dev = self.executor.device_empty(spec)
            self.run(dev, [self.executor.h2d_async(host, dev)])
        return time.perf_counter() - t0


    def resident_pass(self, hosts: Sequence[np.ndarray]) -> float:
        """The same layers with every weight already on the device (uploaded once, before
        the timing): the floor sync_direct is measured against. Wall seconds of the pass."""
        spec = TensorSpec(F32, (self.n, self.n))
        if len(getattr(self, "_resident", ())) != len(hosts):
            self._resident = []
            for host in hosts:
                dev = self.executor.device_empty(spec)
                self.executor.h2d_async(host, dev).wait()
                self._resident.append(dev)
        t0 = time.perf_counter()
        for dev in self._resident:
            self.run(dev)
        return time.perf_counter() - t0


def layer_copy_seconds(executor: Executor, n: int, repeat: int) -> float:
    """Median wall seconds of one layer's host->device copy (calibration only)."""
    host = executor.host_empty(layer_bytes(n))
    host.fill(1)
    out = []
    for _ in range(repeat + 1):
        dev = executor.device_empty(_flat_spec(host.nbytes))
        t0 = time.perf_counter()
        executor.h2d_async(host, dev).wait()
        out.append(time.perf_counter() - t0)
    return statistics.median(out[1:])


@dataclass(frozen=True)
class Calibration:
    batch: int
    compute_s: float  # one layer's run at that batch, direct on the executor
    copy_s: float  # one layer's host->device copy

    @property
    def ratio(self) -> float:
        return self.compute_s / self.copy_s


def calibrate(executor: Executor, n: int, ratio: float, *, b_min: int, b_max: int, step: int,
              repeat: int = 5) -> Calibration:
    """The smallest batch (a multiple of ``step`` in [b_min, b_max]) whose layer compute is
    at least ``ratio`` times the layer's copy: doubling, then one interpolated step back."""
    copy_s = layer_copy_seconds(executor, n, repeat)
    goal = ratio * copy_s
    b = max(step, b_min // step * step)
    prev: tuple[int, float] | None = None
    while True:
        t = DirectLayer(executor, n, b).seconds(repeat)
        if t >= goal or b >= b_max:
            break
        prev, b = (b, t), min(b_max, b * 2)
    if prev is not None and t > goal > prev[1]:
        b0, t0 = prev
        guess = min(b, max(b0 + step, math.ceil((b0 + (goal - t0) * (b - b0) / (t - t0)) / step) * step))
        if guess < b:
            t2 = DirectLayer(executor, n, guess).seconds(repeat)
            if t2 >= goal:
                b, t = guess, t2
    return Calibration(b, t, copy_s)


def measured(executor: Executor, n: int, batch: int, copy_s: float, repeat: int = 5) -> Calibration:
    return Calibration(batch, DirectLayer(executor, n, batch).seconds(repeat), copy_s)
