"""The CuPy executor: launches run on an NVIDIA GPU.

Kernels run on one non-blocking compute stream; their device time is measured with CUDA
events recorded on that stream around the launch (what the GPU spent, not what Python
spent issuing it). Transfers use their own stream and pinned staging memory, so the
compute stream is never serialised behind a guest's upload.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from primitive_lang import BoundKernel, TensorSpec

from .base import Executor, ExecutorInfo, Fence, HostScalar, Pending, RunTiming, byte_view, check_range
from .interpret import Interpreter

# Pinned staging buffer for host<->device copies of guest data; larger transfers go in
# pieces of this size (bounded host memory, and the copy engine stays busy).
STAGING_BYTES = 8 << 20


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


class CupyExecutor(Executor):
    name = "cupy"
    asynchronous = True

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
        self._staging = cupy.cuda.alloc_pinned_memory(STAGING_BYTES)
        self._staging_np = np.frombuffer(self._staging, dtype=np.uint8, count=STAGING_BYTES)
        self._last_end = None  # end event of the previous launch on the compute stream
        self._consts: dict = {}  # the interpreter's cache across launches (RoPE frequencies)

    def info(self) -> ExecutorInfo:
        free, total = self.cp.cuda.runtime.memGetInfo()
        return ExecutorInfo(self.name, self._device_name, int(total), int(free))

    # Buffers are allocated on the copy stream. CuPy's pool hands a freed block back only
    # to allocations on the stream it came from, so a buffer evicted with a queued
    # device->host copy can be released at once: the next allocation that may reuse its
    # block is itself ordered after that copy on the same stream. Temporaries are
    # allocated on the compute stream and never reuse buffer blocks.
    def empty(self, spec: TensorSpec):
        with self.copy:
            return self.cp.empty(spec.shape, dtype=spec.dtype.value)

    def device_empty(self, spec: TensorSpec):
        return self.empty(spec)

    def zeros(self, spec: TensorSpec):
        with self.copy:
            a = self.cp.zeros(spec.shape, dtype=spec.dtype.value)
        self.copy.synchronize()
        return a

    def host_empty(self, nbytes: int) -> np.ndarray:
        mem = self.cp.cuda.alloc_pinned_memory(max(nbytes, 1))
        return np.frombuffer(mem, dtype=np.uint8, count=nbytes)

    def h2d_async(self, host: np.ndarray, device) -> Fence:
        flat = byte_view(self.cp, device)
        if flat.size:
            self.cp.cuda.runtime.memcpyAsync(flat.data.ptr, host.ctypes.data, flat.size,
                                             self.cp.cuda.runtime.memcpyHostToDevice, self.copy.ptr)
        ev = self.cp.cuda.Event(disable_timing=True)
        ev.record(self.copy)
        return _EventFence(ev)

    def d2h_async(self, device, host: np.ndarray) -> Fence:
        flat = byte_view(self.cp, device)
        # Launches are complete when the dispatcher moves on (it waits for their end event),
        # so the device copy is final; order the copy after any compute anyway.
        done = self.cp.cuda.Event(disable_timing=True)
        done.record(self.compute)
        self.copy.wait_event(done)
        if flat.size:
            self.cp.cuda.runtime.memcpyAsync(host.ctypes.data, flat.data.ptr, flat.size,
                                             self.cp.cuda.runtime.memcpyDeviceToHost, self.copy.ptr)
        ev = self.cp.cuda.Event(disable_timing=True)
        ev.record(self.copy)
        return _EventFence(ev)

    def write(self, array, offset: int, chunks: Sequence[memoryview | bytes]) -> int:
        flat = byte_view(self.cp, array)
        total = sum(len(c) for c in chunks)
        check_range(flat.size, offset, total)
        pos = offset
        stage = self._staging_np
        fill = 0
        for c in chunks:
            src = np.frombuffer(c, dtype=np.uint8)
            i = 0
            while i < src.size:
                n = min(src.size - i, STAGING_BYTES - fill)
                stage[fill : fill + n] = src[i : i + n]
                fill += n
                i += n
                if fill == STAGING_BYTES:
                    self._flush(flat, pos, fill)
                    pos += fill
                    fill = 0
        if fill:
            self._flush(flat, pos, fill)
        return total

    def _flush(self, flat, pos: int, n: int) -> None:
        self.cp.cuda.runtime.memcpyAsync(
            flat.data.ptr + pos, self._staging.ptr, n,
            self.cp.cuda.runtime.memcpyHostToDevice, self.copy.ptr,
        )
        self.copy.synchronize()  # the staging buffer is reused by the next piece

    def fill(self, array, offset: int, length: int, fill_fn) -> int:
        flat = byte_view(self.cp, array)
        check_range(flat.size, offset, length)
        if length <= STAGING_BYTES:
            fill_fn(memoryview(self._staging_np)[:length])
            self._flush(flat, offset, length)
            return length
        tmp = self.host_empty(length)  # larger than the staging buffer: a pinned one of its own
        fill_fn(memoryview(tmp))
        self.cp.cuda.runtime.memcpyAsync(flat.data.ptr + offset, tmp.ctypes.data, length,
                                         self.cp.cuda.runtime.memcpyHostToDevice, self.copy.ptr)
        self.copy.synchronize()
        return length

    def read_into(self, array, offset: int, dsts: Sequence[memoryview]) -> int:
        flat = byte_view(self.cp, array)
        total = sum(len(d) for d in dsts)
        check_range(flat.size, offset, total)
        pos = offset
        for d in dsts:
            dst = np.frombuffer(d, dtype=np.uint8)
            i = 0
            while i < dst.size:
                n = min(dst.size - i, STAGING_BYTES)
                self.cp.cuda.runtime.memcpyAsync(
                    self._staging.ptr, flat.data.ptr + pos, n,
                    self.cp.cuda.runtime.memcpyDeviceToHost, self.copy.ptr,
                )
                self.copy.synchronize()
                dst[i : i + n] = self._staging_np[:n]
                i += n
                pos += n
        return total

    def to_host(self, array) -> np.ndarray:
        return self.cp.asnumpy(array, stream=self.copy, blocking=True)

    def scalar(self, value: float | int, spec: TensorSpec) -> HostScalar:
        return HostScalar(value, self.cp.asarray(value, dtype=spec.dtype.value))

    def submit(self, bound: BoundKernel, args: Mapping[str, Any], wait_for: Sequence[Fence] = ()) -> Pending:
        cp = self.cp
        env = dict(args)
        waiting, start, end = cp.cuda.Event(), cp.cuda.Event(), cp.cuda.Event()
        with self.compute:
            waiting.record(self.compute)
            for f in wait_for:  # the GPU waits for this launch's own buffers; the CPU does not
                self.compute.wait_event(f.event)
            start.record(self.compute)
            interp = Interpreter(cp, bound, env, consts=self._consts, defer_checks=True)
            interp.run()
            checks = interp.deferred_checks()
            end.record(self.compute)
        pending = _StreamPending(cp, waiting, start, end, self._last_end, bool(wait_for), interp, checks)
        self._last_end = end
        return pending

    def release(self, array) -> None:
        del array  # CuPy's pool reuses the block once the last reference goes

    def close(self) -> None:
        self.compute.synchronize()
        self.copy.synchronize()
        self.cp.get_default_memory_pool().free_all_blocks()
