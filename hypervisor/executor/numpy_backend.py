"""The NumPy executor: the reference backend, always available.

Device time is the dispatcher thread's own CPU time over the launch (time.thread_time),
so a VM is charged for the work it caused and not for time the thread waited. The daemon
pins BLAS to one thread (OPENBLAS_NUM_THREADS etc.) so that this is the launch's whole cost.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from primitive_lang import BoundKernel, TensorSpec

from .base import (
    DonePending,
    Executor,
    ExecutorInfo,
    Fence,
    FutureFence,
    HostScalar,
    Pending,
    RunTiming,
    Steps,
    byte_view,
    check_range,
    copy_chunks_in,
    copy_chunks_out,
)
from .interpret import Interpreter, run_bound
from .tiling import CostModel, Tiler


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return "cpu: " + line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"


def _meminfo(key: str) -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def _copy(dst: np.ndarray, src: np.ndarray) -> None:
    np.copyto(dst, src)  # releases the GIL for large arrays: overlaps the compute thread


class NumpyExecutor(Executor):
    """Device arrays are their own NumPy arrays, apart from the host backing arrays;
    residency copies between the two are real copies, made in order by one copy thread
    so that they overlap the dispatcher's compute, as a GPU's copy engine would."""

    name = "numpy"
    on_cpu = True

    def __init__(self) -> None:
        self._device_name = _cpu_name()
        self._copier = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pxos-copy")
        self._last_end: float | None = None
        self._consts: dict = {}  # the interpreter's cache across launches (RoPE frequencies)
        self.cost_model = CostModel()  # this CPU's measured speed, for tiling (start_steps)

    def info(self) -> ExecutorInfo:
        total = _meminfo("MemTotal") or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return ExecutorInfo(self.name, self._device_name, total, _meminfo("MemAvailable") or total,
                            api="host", time_source="thread-cpu-time")

    def empty(self, spec: TensorSpec) -> np.ndarray:
        return np.empty(spec.shape, dtype=spec.dtype.value)

    def zeros(self, spec: TensorSpec) -> np.ndarray:
        return np.zeros(spec.shape, dtype=spec.dtype.value)

    def write(self, array: np.ndarray, offset: int, chunks: Sequence[memoryview | bytes]) -> int:
        return copy_chunks_in(memoryview(array).cast("B"), offset, chunks)

    def read_into(self, array: np.ndarray, offset: int, dsts: Sequence[memoryview]) -> int:
        return copy_chunks_out(memoryview(array).cast("B"), offset, dsts)

    def fill(self, array: np.ndarray, offset: int, length: int, fill_fn) -> int:
        flat = memoryview(array).cast("B")
        check_range(len(flat), offset, length)
        fill_fn(flat[offset : offset + length])
        return length

    def to_host(self, array: np.ndarray) -> np.ndarray:
        return np.array(array, copy=True)

    def scalar(self, value: float | int, spec: TensorSpec) -> HostScalar:
        return HostScalar(value, np.asarray(value, dtype=spec.dtype.value))

    def submit(self, bound: BoundKernel, args: Mapping[str, Any], wait_for: Sequence[Fence] = ()) -> Pending:
        begin = time.perf_counter()
        gap = begin - self._last_end if self._last_end is not None else None
        stall = sum(f.wait() for f in wait_for)
        env = dict(args)
        t0 = time.thread_time()
        try:
            with np.errstate(all="ignore"):  # inf/nan follow IEEE, as on the GPU; no warnings
                run_bound(np, bound, env, consts=self._consts)
        finally:
            self._last_end = time.perf_counter()
        return DonePending(RunTiming(time.thread_time() - t0, stall, None if gap is None else gap + stall))

    def start_steps(self, bound: BoundKernel, args: Mapping[str, Any], wait_for: Sequence[Fence] = (),
                    slice_s: float = 0.001, *, tile: bool | Callable[[], bool] = True) -> Steps | None:
        if type(self).submit is not NumpyExecutor.submit:
            return None  # a subclass that changes submit() (a wrapper, a test's gate) keeps it
        if tile is False:
            slice_s = 0.0
        return _NumpySteps(self, bound, args, wait_for, slice_s, None if isinstance(tile, bool) else tile)

    def host_empty(self, nbytes: int) -> np.ndarray:
        return np.empty(nbytes, dtype=np.uint8)

    def device_empty(self, spec: TensorSpec) -> np.ndarray:
        return np.empty(spec.shape, dtype=spec.dtype.value)

    def h2d_async(self, host: np.ndarray, device: np.ndarray) -> Fence:
        return FutureFence(self._copier.submit(_copy, byte_view(np, device), host))

    def d2h_async(self, device: np.ndarray, host: np.ndarray) -> Fence:
        return FutureFence(self._copier.submit(_copy, host, byte_view(np, device)))

    def close(self) -> None:
        self._copier.shutdown(wait=True)


class _NumpySteps(Steps):
    """A launch on the NumPy device as an interpreter generator: each step is one op or one
    tile (tiling.py); device time is the dispatcher thread's CPU time inside advance()."""

    def __init__(self, ex: NumpyExecutor, bound: BoundKernel, args: Mapping[str, Any],
                 wait_for: Sequence[Fence], slice_s: float, active: Callable[[], bool] | None = None):
        self.ex = ex
        begin = time.perf_counter()
        self.gap = begin - ex._last_end if ex._last_end is not None else None
        self.stall = sum(f.wait() for f in wait_for)
        self.tiler = Tiler(slice_s, ex.cost_model, active)
        self.interp = Interpreter(np, bound, dict(args), consts=ex._consts)
        self.gen = self.interp.steps(self.tiler)
        self.device_s = 0.0
        self.slices = 0  # advance() calls that ran
        self.done = False

    def advance(self, budget_s: float, interrupt: threading.Event | None = None) -> bool:
        if self.done:
            return True
        t0, c0 = time.perf_counter(), time.thread_time()
        end = t0 + budget_s
        try:
            with np.errstate(all="ignore"):
                while True:
                    next(self.gen)
                    if time.perf_counter() >= end or (interrupt is not None and interrupt.is_set()):
                        break
        except StopIteration:
            self.done = True
        except BaseException:
            self.done = True
            raise
        finally:
            self.device_s += time.thread_time() - c0
            self.slices += 1
            self.ex._last_end = time.perf_counter()
        return self.done

    def timing(self) -> RunTiming:
        return RunTiming(self.device_s, self.stall, None if self.gap is None else self.gap + self.stall)
