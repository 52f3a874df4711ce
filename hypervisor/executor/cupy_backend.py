"""The CuPy executor: launches run on an NVIDIA GPU.

Kernels run on one non-blocking compute stream; their device time is measured with CUDA
events recorded on that stream around the launch (what the GPU spent, not what Python
spent issuing it). Guest transfers (WRITE, FILL, READ) go through pinned staging memory
on streams of their own, so the compute stream is never serialised behind an upload.

Staging belongs to one transfer at a time (executor/base.py, "the transfer guarantee"):
every transfer takes a slot (a pinned buffer and its own stream) from a bounded
StagingPool for its whole duration, and the few transfers larger than a slot fill a pinned
buffer of their own. Transfers of different VMs run concurrently outside the hypervisor's
lock; none can see another's bytes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from typing import Any

import numpy as np

from primitive_lang import BoundKernel, TensorSpec

from .base import (
    Executor,
    ExecutorInfo,
    Fence,
    HostScalar,
    Pending,
    RunTiming,
    StagingPool,
    byte_view,
    check_range,
)
from .interpret import Interpreter
from .stepping import Chunk, DeviceSteps
from .tiling import CostModel

# One staging slot: pinned host memory for host<->device copies of guest data; larger
# transfers go in pieces of this size (a guest WRITE is at most PXOS_MAX_TRANSFER_BYTES,
# 8 MiB, so one piece; a gRPC Write of 16 MiB, two).
STAGING_BYTES = 8 << 20
# Slots at most, so pinned staging is bounded (STAGING_SLOTS * STAGING_BYTES = 64 MiB)
# however many VM threads and gRPC workers transfer at once; a transfer finding every slot
# taken waits for one (transfers are a memcpy each, so the wait is short).
STAGING_SLOTS = 8
# Stepped launches (executor/stepping.py): a matmul's row tiles are multiples of 128 rows
# (cuBLAS's output tiles), so that each output element is computed as in the whole product;
# cuBLAS chooses its kernel by shape, so this is checked, not assumed:
# tests/unit/hypervisor/test_preempt_device.py (gpu) compares tiles with whole ops at the
# sizes the benchmarks use. TILE_KINDS: the kinds of op the tiler may split on this device.
TILE_ROWS = 128
TILE_KINDS = frozenset({"matmul", "reduce", "elementwise"})


def cupy_unavailable_reason() -> str | None:
    """None when CuPy imports and sees a GPU, else why not."""
    try:
        import cupy
    except Exception as exc:
        return f"CuPy does not import ({type(exc).__name__}: {exc})"
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "CuPy sees no CUDA device"
    except Exception as exc:
        return f"CUDA is not usable ({type(exc).__name__}: {exc})"
    return None


class _EventFence(Fence):
    __slots__ = ("event",)

    def __init__(self, event):
        self.event = event

    def done(self) -> bool:
        return self.event.done

    def wait(self) -> float:
        if self.event.done:
            return 0.0
        import time

        t0 = time.perf_counter()
        self.event.synchronize()
        return time.perf_counter() - t0


class _StreamPending(Pending):
    __slots__ = ("checks", "cp", "end", "interp", "prev_end", "start", "waiting", "waited")

    def __init__(self, cp, waiting, start, end, prev_end, waited: bool, interp=None, checks=None):
        self.cp, self.waiting, self.start, self.end = cp, waiting, start, end
        self.prev_end, self.waited = prev_end, waited
        self.interp, self.checks = interp, checks  # runtime index checks made on the device

    def done(self) -> bool:
        return self.end.done

    def wait(self) -> RunTiming:
        self.end.synchronize()
        if self.checks is not None:  # the stream is done: a small copy, no wait
            checks, self.checks = self.checks, None
            self.interp.check_deferred(self.cp.asnumpy(checks))
        elapsed = self.cp.cuda.get_elapsed_time
        stall = elapsed(self.waiting, self.start) / 1000.0 if self.waited else 0.0
        gap = max(elapsed(self.prev_end, self.start) / 1000.0, 0.0) if self.prev_end is not None else None
        return RunTiming(elapsed(self.start, self.end) / 1000.0, stall, gap)


class _StagingSlot:
    """Pinned host memory and a stream, owned by one transfer at a time."""

    __slots__ = ("mem", "np", "stream")

    def __init__(self, cp):
        self.mem = cp.cuda.alloc_pinned_memory(STAGING_BYTES)
        self.np = np.frombuffer(self.mem, dtype=np.uint8, count=STAGING_BYTES)
        self.stream = cp.cuda.Stream(non_blocking=True)


class CupyExecutor(Executor):
    name = "cupy"
    asynchronous = True
    # Stepped launches (start_steps, the priority stream) have not run on a GPU yet: off
    # unless [scheduler] gpu_stepping = "on" (docs/scheduling.md, "Preemption").
    stepping_default = False

    def __init__(self, device_id: int = 0) -> None:
        import cupy

        self.cp = cupy
        self.device = cupy.cuda.Device(device_id)
        self.device.use()
        props = cupy.cuda.runtime.getDeviceProperties(device_id)
        name = props["name"]
        self._device_name = name.decode() if isinstance(name, bytes) else str(name)
        self.compute = cupy.cuda.Stream(non_blocking=True)
        self.copy = cupy.cuda.Stream(non_blocking=True)
        self._staging = StagingPool(self._make_slot, STAGING_SLOTS)
        self._last_end = None  # end event of the previous launch on the compute stream
        self._consts: dict = {}  # the interpreter's cache across launches (RoPE frequencies)
        self._urgent = None  # the priority stream, made on first use (priority_stream)
        self._urgent_spans: deque = deque(maxlen=64)  # (start, end) events of its recent launches
        self._urgent_last = None  # the end event of its last launch
        # The GPU's speed for step estimates and tiling: low first guesses (tiles too fine
        # rather than too coarse at first), corrected by every chunk's CUDA-event time.
        self.cost_model = CostModel(matmul_flops_per_s=2e12, reduce_elems_per_s=5e10, steps_per_s=2e5)

    # Every call that touches the device runs with this executor's device current: a host
    # with several GPUs has one executor per device (hypervisor/devices.py), called from
    # any thread, and CUDA's current device is per thread.
    def info(self) -> ExecutorInfo:
        with self.device:
            free, total = self.cp.cuda.runtime.memGetInfo()
        return ExecutorInfo(self.name, self._device_name, int(total), int(free), vendor="NVIDIA", api="CUDA",
                            time_source="cuda-events")

    # Buffers are allocated on the copy stream. CuPy's pool hands a freed block back only
    # to allocations on the stream it came from, so a buffer evicted with a queued
    # device->host copy can be released at once: the next allocation that may reuse its
    # block is itself ordered after that copy on the same stream. Temporaries are
    # allocated on the compute stream and never reuse buffer blocks.
    def empty(self, spec: TensorSpec):
        with self.device, self.copy:
            return self.cp.empty(spec.shape, dtype=spec.dtype.value)

    def device_empty(self, spec: TensorSpec):
        return self.empty(spec)

    def zeros(self, spec: TensorSpec):
        with self.device, self.copy:
            a = self.cp.zeros(spec.shape, dtype=spec.dtype.value)
        self.copy.synchronize()
        return a

    def host_empty(self, nbytes: int) -> np.ndarray:
        mem = self.cp.cuda.alloc_pinned_memory(max(nbytes, 1))
        return np.frombuffer(mem, dtype=np.uint8, count=nbytes)

    def h2d_async(self, host: np.ndarray, device) -> Fence:
        with self.device:
            flat = byte_view(self.cp, device)
            if flat.size:
                self.cp.cuda.runtime.memcpyAsync(flat.data.ptr, host.ctypes.data, flat.size,
                                                 self.cp.cuda.runtime.memcpyHostToDevice, self.copy.ptr)
            ev = self.cp.cuda.Event(disable_timing=True)
            ev.record(self.copy)
        return _EventFence(ev)

    def d2h_async(self, device, host: np.ndarray) -> Fence:
        with self.device:
            flat = byte_view(self.cp, device)
            # Launches are complete when the dispatcher moves on (it waits for their end event),
            # so the device copy is final; order the copy after any compute anyway.
            done = self.cp.cuda.Event(disable_timing=True)
            done.record(self.compute)
            self.copy.wait_event(done)
            if self._urgent_last is not None:
                self.copy.wait_event(self._urgent_last)
            if flat.size:
                self.cp.cuda.runtime.memcpyAsync(host.ctypes.data, flat.data.ptr, flat.size,
                                                 self.cp.cuda.runtime.memcpyDeviceToHost, self.copy.ptr)
            ev = self.cp.cuda.Event(disable_timing=True)
            ev.record(self.copy)
        return _EventFence(ev)

    def _make_slot(self) -> _StagingSlot:
        with self.device:
            return _StagingSlot(self.cp)

    def _h2d(self, slot: _StagingSlot, dst_ptr: int, src_ptr: int, n: int) -> None:
        """Copy n bytes host->device on the slot's stream and wait for them."""
        rt = self.cp.cuda.runtime
        rt.memcpyAsync(dst_ptr, src_ptr, n, rt.memcpyHostToDevice, slot.stream.ptr)
        slot.stream.synchronize()  # the slot's memory is refilled (or given back) next

    def write(self, array, offset: int, chunks: Sequence[memoryview | bytes]) -> int:
        flat = byte_view(self.cp, array)
        total = sum(len(c) for c in chunks)
        check_range(flat.size, offset, total)
        if not total:
            return 0
        with self.device, self._staging.slot() as slot:
            stage, base = slot.np, slot.mem.ptr
            pos, fill = offset, 0
            for c in chunks:
                src = np.frombuffer(c, dtype=np.uint8)
                i = 0
                while i < src.size:
                    n = min(src.size - i, STAGING_BYTES - fill)
                    stage[fill : fill + n] = src[i : i + n]
                    fill += n
                    i += n
                    if fill == STAGING_BYTES:
                        self._h2d(slot, flat.data.ptr + pos, base, fill)
                        pos += fill
                        fill = 0
            if fill:
                self._h2d(slot, flat.data.ptr + pos, base, fill)
        return total

    def fill(self, array, offset: int, length: int, fill_fn) -> int:
        flat = byte_view(self.cp, array)
        check_range(flat.size, offset, length)
        with self.device, self._staging.slot() as slot:
            if length <= STAGING_BYTES:
                fill_fn(memoryview(slot.np)[:length])
                if length:
                    self._h2d(slot, flat.data.ptr + offset, slot.mem.ptr, length)
                return length
            # Larger than a slot: fill_fn takes one view, so a pinned buffer of its own
            # (CuPy's pinned pool reuses it once this transfer lets go of it).
            tmp = self.host_empty(length)
            fill_fn(memoryview(tmp))
            self._h2d(slot, flat.data.ptr + offset, tmp.ctypes.data, length)
        return length

    def read_into(self, array, offset: int, dsts: Sequence[memoryview]) -> int:
        flat = byte_view(self.cp, array)
        total = sum(len(d) for d in dsts)
        check_range(flat.size, offset, total)
        if not total:
            return 0
        rt = self.cp.cuda.runtime
        with self.device, self._staging.slot() as slot:
            pos = offset
            for d in dsts:
                dst = np.frombuffer(d, dtype=np.uint8)
                i = 0
                while i < dst.size:
                    n = min(dst.size - i, STAGING_BYTES)
                    rt.memcpyAsync(slot.mem.ptr, flat.data.ptr + pos, n, rt.memcpyDeviceToHost, slot.stream.ptr)
                    slot.stream.synchronize()
                    dst[i : i + n] = slot.np[:n]
                    i += n
                    pos += n
        return total

    def to_host(self, array) -> np.ndarray:
        with self.device:
            return self.cp.asnumpy(array, stream=self.copy, blocking=True)

    def scalar(self, value: float | int, spec: TensorSpec) -> HostScalar:
        with self.device:
            return HostScalar(value, self.cp.asarray(value, dtype=spec.dtype.value))

    def submit(self, bound: BoundKernel, args: Mapping[str, Any], wait_for: Sequence[Fence] = ()) -> Pending:
        return self._submit_on(self.compute, bound, args, wait_for)

    def _submit_on(self, stream, bound: BoundKernel, args: Mapping[str, Any], wait_for: Sequence[Fence]):
        cp = self.cp
        env = dict(args)
        with self.device:
            waiting, start, end = cp.cuda.Event(), cp.cuda.Event(), cp.cuda.Event()
        with self.device, stream:
            waiting.record(stream)
            for f in wait_for:  # the GPU waits for this launch's own buffers; the CPU does not
                stream.wait_event(f.event)
            start.record(stream)
            interp = Interpreter(cp, bound, env, consts=self._consts, defer_checks=True)
            interp.run()
            checks = interp.deferred_checks()
            end.record(stream)
        pending = _StreamPending(cp, waiting, start, end, self._last_end, bool(wait_for), interp, checks)
        self._last_end = end
        return pending

    # ---- the priority stream (an experiment, off by default: docs/scheduling.md) ----------
    #: When True, a launch run while a stepped launch is parked (a more urgent one) goes on a
    #: stream of the highest priority: the GPU gives it SMs as the parked launch's queued
    #: kernels free them, instead of after those kernels. Their device time then overlaps;
    #: the overlap is charged to the urgent launch (the parked launch's chunks are charged
    #: their time less the overlap), so every device second is still charged once.
    priority_stream = False

    def submit_urgent(self, bound: BoundKernel, args: Mapping[str, Any], wait_for: Sequence[Fence] = ()) -> Pending:
        """submit() on the priority stream (see priority_stream); its span is remembered for
        the overlap correction of the chunks it overtook."""
        if self._urgent is None:
            with self.device:  # CUDA clamps a priority beyond its range to the greatest one
                self._urgent = self.cp.cuda.Stream(non_blocking=True, priority=-1000)
        pending = self._submit_on(self._urgent, bound, args, wait_for)
        self._urgent_spans.append((pending.start, pending.end))
        self._urgent_last = pending.end
        return pending

    def _overlap_s(self, start, end) -> float:
        """Seconds of [start, end] (events of a chunk on the compute stream, done) during
        which a launch on the priority stream ran; spans wholly before the chunk are dropped."""
        elapsed = self.cp.cuda.get_elapsed_time
        total, c = 0.0, elapsed(start, end)
        for span in list(self._urgent_spans):
            us, ue = span
            ue.synchronize()
            a, b = elapsed(start, us), elapsed(start, ue)
            if b <= 0:
                self._urgent_spans.remove(span)
                continue
            lo, hi = max(a, 0.0), min(b, c)
            if hi > lo:
                total += hi - lo
        return total / 1000.0

    def start_steps(self, bound: BoundKernel, args: Mapping[str, Any], wait_for: Sequence[Fence] = (),
                    slice_s: float = 0.001, *, tile: bool | Callable[[], bool] = True) -> DeviceSteps:
        """The launch as steps on the compute stream (executor/stepping.py): each chunk of
        steps between two CUDA events, its first steps issued now."""
        cp = self.cp
        with self.device:
            waiting = cp.cuda.Event()
        with self.device, self.compute:
            waiting.record(self.compute)
            for f in wait_for:  # the GPU waits for this launch's own buffers; the CPU does not
                self.compute.wait_event(f.event)
        interp = Interpreter(cp, bound, dict(args), consts=self._consts, defer_checks=True)
        steps = _CupySteps(self, interp, slice_s if tile is not False else 0.0,
                           None if isinstance(tile, bool) else tile, waiting, bool(wait_for))
        steps.prime()
        return steps

    def peer_copy(self, array, dst_executor, dst_array) -> bool:
        """Copy a device array straight into another GPU's array, no host memory, where the
        two GPUs reach each other (NVLink, PCIe P2P); False where they do not (the caller
        goes through host memory). Used when a VM moves between devices (hypervisor/moving.py)."""
        if not isinstance(dst_executor, CupyExecutor):
            return False
        rt = self.cp.cuda.runtime
        src_id, dst_id = self.device.id, dst_executor.device.id
        if src_id == dst_id or not rt.deviceCanAccessPeer(dst_id, src_id):
            return False
        a, b = byte_view(self.cp, array), byte_view(self.cp, dst_array)
        check_range(b.size, 0, a.size)
        with self.device:
            done = self.cp.cuda.Event(disable_timing=True)
            done.record(self.compute)  # after any launch that wrote it
            self.copy.wait_event(done)
            if self._urgent_last is not None:
                self.copy.wait_event(self._urgent_last)
            if a.size:
                rt.memcpyPeerAsync(b.data.ptr, dst_id, a.data.ptr, src_id, a.size, self.copy.ptr)
            self.copy.synchronize()
        return True

    def release(self, array) -> None:
        del array  # CuPy's pool reuses the block once the last reference goes

    def close(self) -> None:
        with self.device:
            self.compute.synchronize()
            if self._urgent is not None:
                self._urgent.synchronize()
            self.copy.synchronize()
            for slot in self._staging.drain():
                slot.stream.synchronize()
            self.cp.get_default_memory_pool().free_all_blocks()


class _EventChunk(Chunk):
    __slots__ = ("end", "est", "est_s", "ex", "start")

    def __init__(self, ex: CupyExecutor, start, end):
        self.ex, self.start, self.end = ex, start, end

    def done(self) -> bool:
        return self.end.done

    def wait(self) -> float:
        self.end.synchronize()
        seconds = self.ex.cp.cuda.get_elapsed_time(self.start, self.end) / 1000.0
        if self.ex._urgent_spans:  # launches on the priority stream overtook it: theirs
            seconds = max(seconds - self.ex._overlap_s(self.start, self.end), 0.0)
        return seconds


class _CupySteps(DeviceSteps):
    """A launch on the compute stream as chunks of steps, each between two CUDA events
    (stepping.py). The ops are issued with the executor's device and stream current; a
    GATHER's ids are checked on the device and read once the last chunk is done."""

    def __init__(self, ex: CupyExecutor, interp: Interpreter, slice_s: float, active, waiting, waited: bool):
        # slice_s 0 (no tiling wanted): the chunks still bound what is queued, by the default slice
        super().__init__(interp, ex.cost_model, slice_s or 0.001, active, TILE_ROWS, kinds=TILE_KINDS)
        if not slice_s:
            self.tiler.slice_s = 0.0
        self.ex, self.cp = ex, ex.cp
        self.waiting, self.waited = waiting, waited
        self.prev_end = ex._last_end
        self.first_start = None
        self.checks = None
        self._start = None

    def _issuing(self) -> ExitStack:
        stack = ExitStack()
        stack.enter_context(self.ex.device)
        stack.enter_context(self.ex.compute)
        return stack

    def _open(self) -> None:
        self._start = self.cp.cuda.Event()
        self._start.record(self.ex.compute)
        if self.first_start is None:
            self.first_start = self._start

    def _close(self, est: dict[str, float], last: bool) -> Chunk:
        with self._issuing():  # also from pause(), outside advance()
            if last:
                self.checks = self.interp.deferred_checks()
            end = self.cp.cuda.Event()
            end.record(self.ex.compute)
        self.ex._last_end = end
        return _EventChunk(self.ex, self._start, end)

    def timing(self) -> RunTiming:
        if self._timing is None and self.first_start is not None:
            self._close_open()
            while self.queue:
                self._retire()
            elapsed = self.cp.cuda.get_elapsed_time
            if self.waited:
                self.stall = elapsed(self.waiting, self.first_start) / 1000.0
            if self.prev_end is not None:
                self.gap = max(elapsed(self.prev_end, self.first_start) / 1000.0, 0.0)
        return super().timing()

    def _check(self) -> None:
        if self.checks is not None:  # the stream is done: a small copy, no wait
            checks, self.checks = self.checks, None
            self.interp.check_deferred(self.cp.asnumpy(checks))
