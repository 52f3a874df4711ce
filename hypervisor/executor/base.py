"""The executor interface: where a VM's buffers live on the device and how a launch runs.

Two backends implement it (conventions: the same file set for every pluggable unit,
always with a CPU implementation): ``numpy_backend`` (always there, the reference) and
``cupy_backend`` (an NVIDIA GPU through CuPy). The memory manager owns *which* buffers
exist and where; the executor only allocates storage, copies bytes and runs kernels.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from primitive_lang import BoundKernel, TensorSpec


@dataclass(frozen=True, slots=True)
class HostScalar:
    """A scalar param as ``submit()`` takes it (what ``Executor.scalar`` returns): the value on
    the host, which the interpreter reads for runtime indices (a SLICE start, a RoPE
    position) without touching the device, and the same value as a 0-d device array."""

    value: int | float
    array: Any


@dataclass(frozen=True)
class RunTiming:
    device_s: float  # the kernel's own device time
    stall_s: float  # time the device waited for the launch's buffers to arrive first
    gap_s: float | None = None  # device idle from the previous launch's end to this one's start


class Pending(ABC):
    """A launch handed to the device; wait() returns its timing (or raises its error)."""

    @abstractmethod
    def wait(self) -> RunTiming: ...

    def done(self) -> bool:
        """True once the device has finished it (never blocks)."""
        return False


class DonePending(Pending):
    def __init__(self, timing: RunTiming):
        self.timing = timing

    def wait(self) -> RunTiming:
        return self.timing

    def done(self) -> bool:
        return True


class Steps(ABC):
    """A launch run as bounded steps (issue 14): ``advance`` runs steps until ``budget_s``
    of wall time has passed or the launch is done; between two calls the device is free
    for other launches and this one's state (its locals, the interpreter's place) is kept.
    ``timing()`` once done: device time = the time its steps ran, nothing else."""

    @abstractmethod
    def advance(self, budget_s: float, interrupt: threading.Event | None = None) -> bool:
        """Run steps for about ``budget_s`` (at least one), or until ``interrupt`` is set
        (new work arrived: the caller looks at once); True once the launch is done. Raises
        the launch's error (the launch is then over)."""

    @abstractmethod
    def timing(self) -> RunTiming: ...

    def pause(self) -> None:  # noqa: B027 - optional hook
        """Called before the device runs another launch while this one waits (it yields):
        whatever it has issued goes to the device now and is timed as this launch's (a
        no-op where steps run on the host)."""


class Fence(ABC):
    """Completion of one asynchronous copy on the copy stream (or copy thread)."""

    @abstractmethod
    def done(self) -> bool: ...

    @abstractmethod
    def wait(self) -> float:
        """Block until the copy is complete; returns the seconds waited."""


class FutureFence(Fence):
    """A copy running on a thread pool (the NumPy and wgpu copiers): its Future is the fence."""

    __slots__ = ("_future",)

    def __init__(self, future: Future):
        self._future = future

    def done(self) -> bool:
        return self._future.done()

    def wait(self) -> float:
        if self._future.done():
            self._future.result()
            return 0.0
        t0 = time.perf_counter()
        self._future.result()
        return time.perf_counter() - t0


@dataclass(frozen=True)
class ExecutorInfo:
    backend: str  # "numpy" or "cupy"
    device_name: str  # e.g. "NVIDIA H100 80GB HBM3", or the CPU model
    device_memory_total: int  # bytes the device has (NumPy: host RAM)
    device_memory_free: int  # bytes free now
    vendor: str = ""  # the adapter's vendor (wgpu), "NVIDIA" (cupy), "" (numpy)
    api: str = ""  # how pxOS reaches it: "host" (numpy), "CUDA", or wgpu's "Vulkan", "Metal", "D3D12"
    time_source: str = ""  # where a launch's device time comes from (docs/operations.md)


class Executor(ABC):
    """One device.

    Threads. Launches (``submit``/``run``), allocation and the residency copies come from
    the dispatcher thread or under the hypervisor's lock, one at a time. Transfers
    (``write``, ``read_into``, ``fill``) run outside that lock, concurrently, from every
    VM's vhost-user thread and every gRPC worker at once, each on an array the hypervisor
    has pinned for it (no launch writes it meanwhile; docs/memory.md).

    The transfer guarantee, which every backend keeps and
    tests/unit/hypervisor/test_transfer_isolation.py checks on each one:

    - a transfer reads and writes only the bytes ``[offset, offset + length)`` of its own
      array and the caller's own memory (chunks, destinations, the fill view);
    - any staging memory it passes through (pinned host memory, a stream) belongs to that
      transfer alone from its first byte to its return: per transfer, or taken from a
      bounded pool (``StagingPool``) and given back afterwards, never used by two
      transfers in flight at once. When the pool is empty a transfer waits for a slot:
      transfers are serialised where they must share, never interleaved;
    - it returns only once its bytes have arrived: a write is seen by the next launch and
      the next read, a read's destinations hold the data.

    So one VM's bytes can never land in another VM's buffer or in another guest's READ.
    """

    name: str

    @abstractmethod
    def info(self) -> ExecutorInfo: ...

    #: True when the device is the host's CPU (NumPy, a CPU driver such as lavapipe): the
    #: start-up calibration then sizes its launches for a CPU.
    on_cpu = False

    def check_spec(self, spec: TensorSpec) -> None:  # noqa: B027 - optional hook
        """Raise UnsupportedDtype for a tensor this device cannot hold (default: any dtype)."""

    @abstractmethod
    def empty(self, spec: TensorSpec) -> Any:
        """Device storage for one tensor, contents undefined."""

    @abstractmethod
    def zeros(self, spec: TensorSpec) -> Any:
        """Device storage for one tensor, zero-filled (what ALLOC hands a guest: never
        another VM's stale bytes)."""

    @abstractmethod
    def write(self, array: Any, offset: int, chunks: Sequence[memoryview | bytes]) -> int:
        """Copy the chunks, back to back, into the array's bytes from ``offset``."""

    @abstractmethod
    def read_into(self, array: Any, offset: int, dsts: Sequence[memoryview]) -> int:
        """Copy the array's bytes from ``offset`` into the destinations, in order; returns
        the number of bytes copied."""

    @abstractmethod
    def fill(self, array: Any, offset: int, length: int, fill_fn) -> int:
        """Let ``fill_fn(view)`` copy exactly ``length`` bytes into the array from
        ``offset``, through a writable memoryview (the array's own bytes, or pinned
        staging that is then copied to the device): a caller with a scatter-gather list
        gathers straight into it, with no copy in between."""

    @abstractmethod
    def to_host(self, array: Any) -> Any:
        """A NumPy copy of a device array (tests, `pxosctl run`)."""

    @abstractmethod
    def scalar(self, value: float | int, spec: TensorSpec) -> HostScalar:
        """A scalar param's value for submit()'s ``args``: the host value and a 0-d device
        array of ``spec``'s dtype. (submit() also takes a bare 0-d array; a runtime index it
        gives is then read from the device, which on a GPU waits for the stream.)"""

    #: True when submit() returns before the work is done (a GPU stream), so the dispatcher
    #: prepares the next launch while this one runs; False when submit() does the work.
    asynchronous = False

    #: Whether the dispatcher runs launches as steps (start_steps) on this executor when
    #: ``[scheduler] gpu_stepping = "auto"``: True where stepping has been checked on the
    #: kind of device (NumPy, wgpu); CuPy says False until a GPU run has checked it.
    stepping_default = True

    @abstractmethod
    def submit(self, bound: BoundKernel, args: Mapping[str, Any], wait_for: Sequence[Fence] = ()) -> Pending:
        """Hand one bound kernel to the device, to run after the copies in ``wait_for`` (its
        own buffers arriving) and after every launch submitted before it. ``args`` maps every
        param to its array (outputs are written in place), or a scalar param to what
        ``scalar()`` made. A runtime index out of range raises ``IndexOutOfRange``, from
        submit() or, where the device found it, from the Pending's wait()."""

    def start_steps(self, bound: BoundKernel, args: Mapping[str, Any], wait_for: Sequence[Fence] = (),
                    slice_s: float = 0.001, *, tile: bool | Callable[[], bool] = True) -> Steps | None:
        """The launch as steps, to be run by ``Steps.advance``: one op each, and with
        ``tile`` (or while ``tile()`` says so, asked at each op) the ops estimated over
        ``slice_s`` split to fit (executor/tiling.py); None
        where the executor cannot stop a launch between ops (then the dispatcher uses
        submit()). Same arguments and errors as submit()."""
        return None

    def run(self, bound: BoundKernel, args: Mapping[str, Any], wait_for: Sequence[Fence] = ()) -> RunTiming:
        """Run one bound kernel to completion: its device time and the stall before it."""
        return self.submit(bound, args, wait_for).wait()

    # ---- residency copies (overcommit, docs/memory.md) ----
    # All of them go, in order, through one copy stream (CuPy) or copy thread (NumPy):
    # a copy queued after another sees its result, so a buffer evicted (device->host) and
    # fetched again (host->device) needs no wait in between.
    @abstractmethod
    def host_empty(self, nbytes: int) -> Any:
        """Host backing storage: a flat uint8 NumPy array (page-locked where that makes
        host<->device copies asynchronous)."""

    @abstractmethod
    def h2d_async(self, host: Any, device: Any) -> Fence:
        """Queue a copy of a host backing array into a device array of the same size."""

    @abstractmethod
    def d2h_async(self, device: Any, host: Any) -> Fence:
        """Queue a copy of a device array into its host backing array."""

    @abstractmethod
    def device_empty(self, spec: TensorSpec) -> Any:
        """Device storage for a buffer that is about to receive a queued h2d copy."""

    def release(self, array: Any) -> None:  # noqa: B027 - optional hook
        """Storage no longer needed (backends with pools may reuse it)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free what the backend holds."""


class StagingPool:
    """A bounded pool of staging slots for transfers (pinned host memory with a stream,
    on a GPU): each transfer takes a slot for its whole duration, so no two transfers in
    flight ever share one, and at most ``max_slots`` exist, so staging memory is bounded
    however many threads transfer at once. Slots are made by ``make_slot()`` on first
    need and reused; when all are taken, ``slot()`` waits for one to be given back."""

    def __init__(self, make_slot: Callable[[], Any], max_slots: int):
        if max_slots < 1:
            raise ValueError(f"a staging pool needs at least one slot, got {max_slots}")
        self._make = make_slot
        self.max_slots = max_slots
        self._free: list[Any] = []
        self._made = 0
        self._in_use = 0
        self._cond = threading.Condition()

    @property
    def made(self) -> int:
        """Slots made so far (never more than max_slots)."""
        return self._made

    @property
    def in_use(self) -> int:
        return self._in_use

    def acquire(self) -> Any:
        with self._cond:
            while not self._free and self._made >= self.max_slots:
                self._cond.wait()
            self._in_use += 1
            if self._free:
                return self._free.pop()
            self._made += 1  # counted before making it, so concurrent callers stay bounded
        try:
            return self._make()
        except BaseException:
            with self._cond:
                self._made -= 1
                self._in_use -= 1
                self._cond.notify()
            raise

    def release(self, slot: Any) -> None:
        with self._cond:
            self._in_use -= 1
            self._free.append(slot)
            self._cond.notify()

    @contextmanager
    def slot(self) -> Iterator[Any]:
        s = self.acquire()
        try:
            yield s
        finally:
            self.release(s)

    def drain(self) -> list[Any]:
        """The slots not in use, removed from the pool (close() of a backend frees them)."""
        with self._cond:
            out, self._free = self._free, []
            self._made -= len(out)
            return out


def byte_view(xp, array):
    """A flat uint8 view of a contiguous array."""
    return array.reshape(-1).view(xp.uint8)


def copy_chunks_in(flat: memoryview, offset: int, chunks) -> int:
    """Copy chunks back to back into a flat byte view from ``offset`` (memoryview slice
    assignment: one memcpy per chunk, no temporary arrays)."""
    total = sum(len(c) for c in chunks)
    check_range(len(flat), offset, total)
    pos = offset
    for c in chunks:
        n = len(c)
        flat[pos : pos + n] = c if isinstance(c, memoryview) and c.format == "B" else memoryview(c).cast("B")
        pos += n
    return total


def copy_chunks_out(flat: memoryview, offset: int, dsts) -> int:
    total = sum(len(d) for d in dsts)
    check_range(len(flat), offset, total)
    pos = offset
    for d in dsts:
        n = len(d)
        d[:] = flat[pos : pos + n]
        pos += n
    return total


def check_range(nbytes: int, offset: int, length: int) -> None:
    if offset < 0 or length < 0 or offset + length > nbytes:
        from hypervisor.errors import InvalidArgument

        raise InvalidArgument(
            f"range [{offset}, {offset + length}) lies outside the buffer's {nbytes} bytes"
        )
