"""The wgpu device as the executor uses it: one device and pipeline cache per process
(``SharedDevice``), and per executor a ``Runtime`` that records a launch's dispatches into one
command encoder and compute pass (a ``_Segment``) and submits it once, with its meta arena,
its completion fence (a mapped readback buffer) and, where the adapter has them, timestamp
queries around the pass (else the host clock, observed on a clock thread).
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import OrderedDict
from typing import Any

import numpy as np

from .wgpu_array import WgpuArray
from .wgpu_numpy import WgpuNumpy

#: Compiled pipelines kept per device: each distinct fused elementwise chain is a shader, and
#: the chains come from guests' programs, so the cache is bounded (LRU); ~2k shaders of a few
#: KiB to ~100 KiB of driver memory each.
MAX_PIPELINES = 2048


#: Dispatches recorded into one submission at most. A launch may execute 65536 statements
#: (primitive_lang MAX_EXECUTED_STATEMENTS); in pieces of this size the bind groups and meta
#: of one submission stay a few MiB, and the device starts before the recording ends.
SEGMENT_DISPATCHES = 2048


class SharedDevice:
    """One wgpu device per process and adapter, with its compiled pipelines: executors made
    one after another (tests, a restarted hypervisor) reuse both; each executor records its
    own launches (``Runtime``)."""

    def __init__(self, adapter, features: list[str]):
        lim = adapter.limits
        limits = {k: lim[k] for k in ("max-storage-buffer-binding-size", "max-buffer-size",
                                      "max-storage-buffers-per-shader-stage") if k in lim}
        self.adapter_info = dict(adapter.info)
        self.features = set(features)
        self.device = adapter.request_device_sync(required_features=features, required_limits=limits)
        self.pipelines: OrderedDict[tuple, Any] = OrderedDict()  # LRU, at most MAX_PIPELINES
        self.pipeline_lock = threading.Lock()
        self.queue_lock = threading.Lock()  # queue writes and submits, from every thread
        self.timestamp_ns = _timestamp_period(self.device)  # ns per timestamp tick


def _timestamp_period(device) -> float:
    """Nanoseconds per timestamp tick: wgpu-native resolves raw ticks (1 ns on lavapipe and
    NVIDIA; other GPUs tick slower). wgpu-py 0.32 has no method for it: the C call."""
    try:
        from wgpu.backends.wgpu_native._api import libf

        period = float(libf.wgpuQueueGetTimestampPeriod(device.queue._internal))
    except Exception:  # another wgpu version: assume nanoseconds, as WebGPU defines them
        return 1.0
    return period if period > 0 else 1.0


#: Whether read mappings skip the extra submission wgpu-py makes first (see map_read_async).
#: Off: measured on lavapipe, skipping it made a tiny launch 21 % cheaper (468 -> 369 us,
#: interleaved A/B) but an urgent launch's completion beside a BATCH VM was seen ~0.1 ms
#: later (completions then ride on wgpu-py's poll thread alone), and the isolation figures
#: were too noisy on the shared machine to show which way the balance goes.
_NOSYNC = [False]


def map_read_async(buffer, wgpu):
    """``buffer.map_async(READ)``; with _NOSYNC, without the extra submission wgpu-py 0.32
    makes before a buffer's first read mapping (an empty command buffer: a workaround for
    data written through a mapping, wgpu-native #305, which never reach our readbacks: they
    are written by a copy in the submission just made), through wgpu-py's internal
    "READ_NOSYNC" mode (wgpu pinned in pyproject); the public call where a version lacks it."""
    if _NOSYNC[0]:
        try:
            return buffer.map_async("READ_NOSYNC")
        except (KeyError, ValueError, TypeError, AttributeError):
            _NOSYNC[0] = False
    return buffer.map_async(wgpu.MapMode.READ)


class Runtime:
    """Records dispatches into the current segment (one encoder and compute pass) and
    submits segments in order, on a SharedDevice."""

    def __init__(self, shared: SharedDevice, timestamps: bool = True):
        import wgpu

        device = shared.device
        self.shared = shared
        self.wgpu, self.device, self.queue = wgpu, device, device.queue
        self.has_f16 = "shader-f16" in shared.features
        self.timestamps = timestamps and "timestamp-query" in shared.features
        self.align = max(int(device.limits.get("min-storage-buffer-offset-alignment", 256)), 16)
        self.max_binding = int(device.limits["max-storage-buffer-binding-size"])
        self.pipelines = shared.pipelines
        self.queue_lock = shared.queue_lock
        self.xp = WgpuNumpy(self)
        self._segment: _Segment | None = None
        self.pending: weakref.WeakSet[WgpuArray] = weakref.WeakSet()  # lazy values not computed yet
        self.submitted: list[_Segment] = []  # segments of the launch in progress (the executor takes them)
        self.dispatches = 0
        self.compiles = 0
        self._clock = None  # the host-clock observer thread, made on first need
        self.last_done = 0.0  # when the clock thread saw the last segment complete

    def clock_thread(self):
        if self._clock is None:
            from concurrent.futures import ThreadPoolExecutor

            self._clock = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pxos-wgpu-clock")
        return self._clock

    def storage(self, nbytes: int):
        U = self.wgpu.BufferUsage
        size = max(4, (nbytes + 3) & ~3)
        if size > self.max_binding:
            from hypervisor.errors import OutOfDeviceMemory

            raise OutOfDeviceMemory(f"a buffer of {nbytes} bytes is larger than this adapter binds at once "
                                    f"({self.max_binding} bytes: max-storage-buffer-binding-size)")
        return self.device.create_buffer(size=size, usage=U.STORAGE | U.COPY_SRC | U.COPY_DST)

    def upload(self, host: np.ndarray):
        buf = self.storage(host.nbytes)
        data = host.tobytes()
        if len(data) % 4:
            data += b"\0" * (4 - len(data) % 4)
        with self.queue_lock:
            self.queue.write_buffer(buf, 0, data)
        return buf

    def download(self, buffer, offset: int, nbytes: int) -> bytes:
        """Bytes of a buffer, after every dispatch this thread recorded so far (its segment is
        submitted first; another thread's segment in progress is left alone)."""
        seg = self._segment
        if seg is not None and seg.owner == threading.get_ident():
            self.flush()
        lo, hi = offset & ~3, (offset + nbytes + 3) & ~3
        U = self.wgpu.BufferUsage
        staging = self.device.create_buffer(size=max(hi - lo, 4), usage=U.MAP_READ | U.COPY_DST)
        enc = self.device.create_command_encoder()
        enc.copy_buffer_to_buffer(buffer, lo, staging, 0, hi - lo)
        with self.queue_lock:
            self.queue.submit([enc.finish()])
        map_read_async(staging, self.wgpu).sync_wait()  # written by the copy just submitted
        try:
            return bytes(staging.read_mapped(0, max(hi - lo, 4)))[offset - lo: offset - lo + nbytes]
        finally:
            staging.unmap()
            staging.destroy()

    def pipeline(self, key: tuple, make_source):
        """The compiled pipeline of ``key`` (compiled on first use; the least recently used
        goes when there are MAX_PIPELINES: guests choose the op chains that become shaders)."""
        pipes = self.pipelines
        with self.shared.pipeline_lock:
            p = pipes.get(key)
            if p is not None:
                pipes.move_to_end(key)
                return p
            module = self.device.create_shader_module(code=make_source())
            pipe = self.device.create_compute_pipeline(layout="auto", compute={"module": module, "entry_point": "main"})
            p = pipes[key] = (pipe, pipe.get_bind_group_layout(0))  # the layout asked once, not per dispatch
            self.compiles += 1
            while len(pipes) > MAX_PIPELINES:
                pipes.popitem(last=False)  # passes that recorded it keep it alive
            return p

    def dispatch(self, key: tuple, make_source, buffers: list, meta: list[int], groups: tuple[int, int, int]):
        pipe, layout = self.pipeline(key, make_source)
        seg = self._segment
        if seg is None:
            seg = self._segment = _Segment(self)
        meta_buf, off, size = seg.meta_slot(np.asarray(meta, dtype=np.uint32).view(np.uint32))
        bg = self._bind_group(layout, meta_buf, off, size, buffers)
        cp = seg.compute_pass()
        cp.set_pipeline(pipe)
        cp.set_bind_group(0, bg)
        cp.dispatch_workgroups(*groups)
        seg.keep.append(bg)
        self.dispatches += 1
        if len(seg.keep) >= SEGMENT_DISPATCHES:
            self.flush()  # a long launch goes in several submissions; the device starts on the first

    _fast_bind = True  # False once the direct call has failed (another wgpu version)

    def _bind_group(self, layout, meta_buf, off: int, size: int, buffers: list):
        """The dispatch's bind group: meta at binding 0, the buffers whole after it. Made
        with one C call through wgpu-py's own cffi handles (wgpu pinned in pyproject): a
        quarter of the public create_bind_group's cost (~6 against ~24 us), and a launch
        makes one per dispatch. Falls back to the public call if the internals differ."""
        if Runtime._fast_bind:
            try:
                from wgpu.backends.wgpu_native import _api

                ffi = _api.ffi
                n = 1 + len(buffers)
                entries = ffi.new("WGPUBindGroupEntry[]", n)
                e = entries[0]
                e.binding, e.buffer, e.offset, e.size = 0, meta_buf._internal, off, size
                for i, b in enumerate(buffers, 1):
                    e = entries[i]
                    e.binding, e.buffer, e.offset, e.size = i, b._internal, 0, b.size
                desc = ffi.new("WGPUBindGroupDescriptor *")
                desc.layout, desc.entries, desc.entryCount = layout._internal, entries, n
                desc.label = _api.to_c_string_view("")
                return _api.GPUBindGroup("", _api.libf.wgpuDeviceCreateBindGroup(self.device._internal, desc),
                                         self.device)
            except (ImportError, AttributeError, TypeError):
                Runtime._fast_bind = False
        entries = [{"binding": 0, "resource": {"buffer": meta_buf, "offset": off, "size": size}}]
        entries += [{"binding": i + 1, "resource": b} for i, b in enumerate(buffers)]
        return self.device.create_bind_group(layout=layout, entries=entries)

    def flush(self) -> _Segment | None:
        """Submit what was recorded; returns the submitted segment (None if there was none)."""
        seg, self._segment = self._segment, None
        if seg is not None:
            seg.submit()
            self.submitted.append(seg)
        return seg


class _Segment:
    """Dispatches recorded into one compute pass, with their meta arena; optional timestamps
    at the pass's beginning and end."""

    ARENA = 64 << 10

    def __init__(self, rt: Runtime):
        self.rt = rt
        self.owner = threading.get_ident()
        self.encoder = rt.device.create_command_encoder()
        self.pass_ = None
        self.arenas: list[tuple[Any, bytearray]] = []
        self.keep: list = []
        self.query = self.resolve = self.readback = None
        self.promise = None
        self.observed = None  # host clock: the clock thread's future (_observe)
        self.t_submit = self.device_s = 0.0

    def meta_slot(self, meta: np.ndarray):
        data = meta.tobytes()
        size = (len(data) + 3) & ~3
        if not self.arenas or len(self.arenas[-1][1]) + size > self.ARENA:
            U = self.rt.wgpu.BufferUsage
            self.arenas.append((self.rt.device.create_buffer(size=self.ARENA, usage=U.STORAGE | U.COPY_DST | U.COPY_SRC),
                                bytearray()))
        buf, blob = self.arenas[-1]
        off = len(blob)
        blob += data
        pad = (-len(blob)) % self.rt.align
        blob += b"\0" * pad
        return buf, off, size

    def compute_pass(self):
        if self.pass_ is None:
            desc = {}
            if self.rt.timestamps:
                self.query = self.rt.device.create_query_set(type="timestamp", count=2)
                desc["timestamp_writes"] = {"query_set": self.query, "beginning_of_pass_write_index": 0,
                                            "end_of_pass_write_index": 1}
            self.pass_ = self.encoder.begin_compute_pass(**desc)
        return self.pass_

    def submit(self) -> None:
        rt = self.rt
        if self.pass_ is not None:
            self.pass_.end()
        # Completion is seen through a mapping: a buffer this submission writes last maps once
        # all of it is done (wgpu-py 0.32's on_submitted_work_done does not work with the
        # wgpu-native it bundles). With timestamps that buffer carries the two timestamps.
        U = rt.wgpu.BufferUsage
        self.readback = rt.device.create_buffer(size=16, usage=U.MAP_READ | U.COPY_DST)
        if self.query is not None:
            self.resolve = rt.device.create_buffer(size=16, usage=U.QUERY_RESOLVE | U.COPY_SRC)
            self.encoder.resolve_query_set(self.query, 0, 2, self.resolve, 0)
            self.encoder.copy_buffer_to_buffer(self.resolve, 0, self.readback, 0, 16)
        else:
            self.encoder.copy_buffer_to_buffer(self.arenas[0][0], 0, self.readback, 0, 16)
        with rt.queue_lock:
            for buf, blob in self.arenas:
                rt.queue.write_buffer(buf, 0, bytes(blob))
            self.t_submit = time.perf_counter()
            rt.queue.submit([self.encoder.finish()])
        self.promise = map_read_async(self.readback, rt.wgpu)
        self.encoder = self.pass_ = None
        if self.query is None:  # host clock: completion observed as it happens, in order
            self.observed = rt.clock_thread().submit(self._observe)

    def _observe(self) -> None:
        """On the runtime's clock thread (one, so segments complete in submission order here):
        the device worked on this segment from its submission, or the previous segment's
        completion if later, to now."""
        self.promise.sync_wait()  # wgpu's poll thread blocks on the device and wakes this
        now = time.perf_counter()
        self.device_s = now - max(self.t_submit, self.rt.last_done)
        self.rt.last_done = now

    def done(self) -> bool:
        if self.observed is not None:
            return self.observed.done()
        # wgpu's native backend resolves the promise from its own poll thread.
        return self.promise is not None and self.promise._thread_event.is_set()

    def wait(self) -> float:
        """Block until the segment's work is done; its device seconds (timestamp queries, or
        the host clock: see _observe)."""
        try:
            if self.observed is not None:
                self.observed.result()
                return self.device_s
            self.promise.sync_wait()
            t0, t1 = np.frombuffer(bytes(self.readback.read_mapped(0, 16)), np.uint64)
            return max(int(t1) - int(t0), 0) * self.rt.shared.timestamp_ns * 1e-9
        finally:
            self.readback.unmap()
            self.readback.destroy()
