"""The wgpu device as the executor uses it: one device and pipeline cache per process
(``SharedDevice``), and per executor a ``Runtime`` that records a launch's dispatches into one
command encoder and compute pass (a ``_Segment``) and submits it once, with its meta arena,
its completion fence (a mapped readback buffer) and, where the adapter has them, timestamp
queries around the pass (else the host clock, observed on a clock thread).
"""

from __future__ import annotations

import itertools
import os
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


class _Native:
    """wgpu-native's C calls for reading a buffer back, made directly through wgpu-py's cffi
    handles (wgpu pinned in pyproject), because wgpu-py's ``map_async`` costs a submission
    its pipelining: it wakes wgpu-py's poll thread, which blocks in ``wgpuDevicePoll(wait)``
    until the device is idle, holding wgpu-core's fence lock; every ``queue.submit`` from
    another thread (the next chunk, another VM's launch, its own extra empty submission)
    waits for that lock, i.e. for all the work in flight (measured on lavapipe: a second
    submission returned after the first one's 60 ms of device work). Here mappings are
    issued with a callback of our own (no poll token) and completion is learned with
    non-blocking polls (~1 us each), so a submission never waits for the device."""

    def __init__(self):
        from wgpu.backends.wgpu_native import _api

        self.ffi, self.lib, self.libf = _api.ffi, _api.lib, _api.libf
        self.read_mode = int(self.lib.WGPUMapMode_Read)
        self.success = int(self.lib.WGPUMapAsyncStatus_Success)
        self.mode = self.lib.WGPUCallbackMode_AllowProcessEvents
        self.tickets: dict[int, list] = {}  # id -> [status]: mappings whose callback has not come
        self.ids = itertools.count(1)
        ffi, tickets = self.ffi, self.tickets

        def on_mapped(status, _message, userdata1, _userdata2):
            # Runs inside whichever thread's wgpu call processed the device's events (a poll,
            # a submit): set the status only, never raise.
            t = tickets.pop(int(ffi.cast("uintptr_t", userdata1)), None)
            if t is not None:
                t[0] = int(status)

        self.callback = ffi.callback("void(WGPUMapAsyncStatus, WGPUStringView, void *, void *)", on_mapped)


_NATIVE: list = []  # [_Native] once made; [None] where wgpu-py's internals differ


def _native() -> _Native | None:
    if not _NATIVE:
        try:
            _NATIVE.append(_Native())
        except (ImportError, AttributeError, TypeError):
            _NATIVE.append(None)
    return _NATIVE[0]


#: Waiting for a mapping: spin on non-blocking polls for the runtime's ``spin_s`` (a small
#: launch on a GPU is done within tens of microseconds), then sleep between polls, each
#: sleep a sixteenth of the time waited so far (a completion is seen ~6 % late at most, plus
#: the sleep's own overshoot) and at most ``max_sleep_s``. On a GPU the host's cores are free
#: to spin and poll often; on a CPU driver (lavapipe) polling takes them from the device (an
#: ADD of 2^22 f32 ran 3 % slower polling every 100 us than every 500 us, dev-x).
SPIN_S = {"gpu": 200e-6, "cpu": 40e-6}
MAX_SLEEP_S = {"gpu": 100e-6, "cpu": 500e-6}


class Ticket:
    """A read mapping in progress (``Runtime.map_read``)."""

    __slots__ = ("buffer", "promise", "size", "status")

    def __init__(self, buffer, size: int):
        self.buffer, self.size = buffer, size
        self.status: list = [None]
        self.promise = None  # the public call's promise, where the C calls are unavailable


def _cpu_threads() -> int:
    """Workgroups a CPU driver runs at once: lavapipe's threads (LP_NUM_THREADS, else one
    per CPU this process may use)."""
    try:
        return max(1, int(os.environ["LP_NUM_THREADS"]))
    except (KeyError, ValueError):
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


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
        self.native = _native()
        self._poll_device = device._internal
        cpu = str(shared.adapter_info.get("adapter_type", "")).lower() == "cpu"
        # Matmul tiles by columns too (executor/tiling.py) on a CPU driver only, each at least
        # as many 64x64 workgroups wide as the driver runs at once (lavapipe: a thread per
        # CPU): a tile narrower than that leaves threads idle, and a GPU, which runs hundreds
        # of workgroups at once, would idle nearly all of them for such a small product.
        self.xp.TILE_COLS = self.xp.TILE_COLS * _cpu_threads() if cpu else None
        self.spin_s = SPIN_S["cpu" if cpu else "gpu"]
        self.max_sleep_s = MAX_SLEEP_S["cpu" if cpu else "gpu"]
        self.slots: list[_Slot] = []  # a submission's fixed resources, reused once it completed

    # ---- reading buffers back -------------------------------------------------------------
    def map_read(self, buffer, size: int) -> Ticket:
        """Start mapping ``buffer``'s first ``size`` bytes for reading (it must have been
        written by a copy already submitted: no extra submission is made, see _Native)."""
        t = Ticket(buffer, size)
        n = self.native
        if n is None:
            t.promise = buffer.map_async(self.wgpu.MapMode.READ, 0, size)
            return t
        key = next(n.ids)
        n.tickets[key] = t.status
        info = n.ffi.new("WGPUBufferMapCallbackInfo *")
        info.mode, info.callback, info.userdata1 = n.mode, n.callback, n.ffi.cast("void *", key)
        n.libf.wgpuBufferMapAsync(buffer._internal, n.read_mode, 0, size, info[0])
        return t

    def poll(self) -> None:
        """Let the device report what completed (non-blocking; runs the mapping callbacks)."""
        n = self.native
        if n is not None:
            n.libf.wgpuDevicePoll(self._poll_device, False, n.ffi.NULL)

    def mapped(self, t: Ticket) -> bool:
        if t.promise is not None:
            return t.promise._thread_event.is_set()  # wgpu's poll thread resolves it
        if t.status[0] is None:
            self.poll()
        return t.status[0] is not None

    def wait_mapped(self, t: Ticket, max_sleep: float | None = None) -> None:
        """Block until the mapping is done (RuntimeError if the device refused it)."""
        if t.promise is not None:
            t.promise.sync_wait()
            return
        status = t.status
        if status[0] is None:
            # The raw call (no wgpu-py error capture: a poll raises nothing) in the loop.
            poll, dev, null = self.native.lib.wgpuDevicePoll, self._poll_device, self.native.ffi.NULL
            spin, t0 = self.spin_s, time.perf_counter()
            max_sleep = self.max_sleep_s if max_sleep is None else max_sleep
            while True:
                poll(dev, False, null)
                if status[0] is not None:
                    break
                waited = time.perf_counter() - t0
                if waited > spin:
                    time.sleep(min(max_sleep, waited / 16))
        if status[0] != self.native.success:
            raise RuntimeError(f"could not map a readback buffer (status {status[0]}: device lost?)")

    def read_unmap(self, t: Ticket, lo: int = 0, hi: int | None = None) -> bytes:
        """The mapped bytes [lo, hi) (after wait_mapped), then the buffer is unmapped."""
        hi = t.size if hi is None else hi
        if t.promise is not None:
            try:
                return bytes(t.buffer.read_mapped(0, t.size))[lo:hi]
            finally:
                t.buffer.unmap()
        n = self.native
        try:
            ptr = n.libf.wgpuBufferGetConstMappedRange(t.buffer._internal, 0, t.size)
            return bytes(n.ffi.buffer(ptr, t.size)[lo:hi])
        finally:
            n.libf.wgpuBufferUnmap(t.buffer._internal)

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
        t = self.map_read(staging, max(hi - lo, 4))  # written by the copy just submitted
        try:
            self.wait_mapped(t)
            return self.read_unmap(t, offset - lo, offset - lo + nbytes)
        finally:
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
        n = self.native
        if n is not None:
            # The raw C calls: a pass's commands report their errors when the encoder is
            # finished (a GPUValidationError from finish(), tested), not here.
            lib, c = n.lib, cp._internal
            lib.wgpuComputePassEncoderSetPipeline(c, pipe._internal)
            lib.wgpuComputePassEncoderSetBindGroup(c, 0, bg._internal, 0, n.ffi.NULL)
            lib.wgpuComputePassEncoderDispatchWorkgroups(c, *groups)
        else:
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


#: Submissions' fixed resources kept for reuse (a query set, three small buffers and a
#: meta arena each: ~40 us of C calls to make and destroy per submission on lavapipe).
MAX_SLOTS = 16
ARENA = 64 << 10  # bytes of one meta arena


class _Slot:
    """What every submission needs, reused from one to the next once it completed: the meta
    arena (rewritten by ``queue.write_buffer`` before each submission: queue-ordered), the
    readback buffer its completion is learned from, and with timestamps the query set and
    the buffer the queries resolve into. A slot goes back to the pool only after its
    submission completed and its readback was unmapped, so two submissions never share
    one, and it holds meta words and timestamps only, never a VM's data."""

    __slots__ = ("arena", "query", "readback", "resolve")

    def __init__(self, rt: Runtime):
        U, dev = rt.wgpu.BufferUsage, rt.device
        self.arena = dev.create_buffer(size=ARENA, usage=U.STORAGE | U.COPY_DST | U.COPY_SRC)
        self.readback = dev.create_buffer(size=16, usage=U.MAP_READ | U.COPY_DST)
        self.query = self.resolve = None
        if rt.timestamps:
            self.query = dev.create_query_set(type="timestamp", count=2)
            self.resolve = dev.create_buffer(size=16, usage=U.QUERY_RESOLVE | U.COPY_SRC)


class _Segment:
    """Dispatches recorded into one compute pass, with their meta arenas (the slot's first,
    more made for a long segment); optional timestamps at the pass's beginning and end."""

    ARENA = ARENA

    def __init__(self, rt: Runtime):
        self.rt = rt
        self.owner = threading.get_ident()
        self.encoder = rt.device.create_command_encoder()
        self.pass_ = None
        try:
            self.slot = rt.slots.pop()  # (list.pop is atomic: threads may record at once)
        except IndexError:
            self.slot = _Slot(rt)
        self.arenas: list[tuple[Any, bytearray]] = [(self.slot.arena, bytearray())]
        self.keep: list = []
        self.ticket: Ticket | None = None
        self.observed = None  # host clock: the clock thread's future (_observe)
        self.t_submit = self.device_s = 0.0
        self.result: float | None = None

    def meta_slot(self, meta: np.ndarray):
        data = meta.tobytes()
        size = (len(data) + 3) & ~3
        if len(self.arenas[-1][1]) + size > self.ARENA:
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
            if self.slot.query is not None:
                desc["timestamp_writes"] = {"query_set": self.slot.query, "beginning_of_pass_write_index": 0,
                                            "end_of_pass_write_index": 1}
            self.pass_ = self.encoder.begin_compute_pass(**desc)
        return self.pass_

    def submit(self) -> None:
        rt, slot = self.rt, self.slot
        if self.pass_ is not None:
            self.pass_.end()
        # Completion is seen through a mapping: the readback, which this submission writes
        # last, maps once all of it is done (wgpu-py 0.32's on_submitted_work_done does not
        # work with the wgpu-native it bundles). With timestamps it carries the two
        # timestamps (a pass that never began leaves them 0: a segment without dispatches).
        timed = slot.query is not None and self.pass_ is not None
        if timed:
            self.encoder.resolve_query_set(slot.query, 0, 2, slot.resolve, 0)
            self.encoder.copy_buffer_to_buffer(slot.resolve, 0, slot.readback, 0, 16)
        else:
            self.encoder.copy_buffer_to_buffer(slot.arena, 0, slot.readback, 0, 16)
        with rt.queue_lock:
            for buf, blob in self.arenas:
                if blob:
                    rt.queue.write_buffer(buf, 0, blob)
            self.t_submit = time.perf_counter()
            rt.queue.submit([self.encoder.finish()])
        self.ticket = rt.map_read(slot.readback, 16)
        self.encoder = self.pass_ = None
        if not timed:  # host clock: completion observed as it happens, in order
            self.observed = rt.clock_thread().submit(self._observe)

    def _observe(self) -> None:
        """On the runtime's clock thread (one, so segments complete in submission order here):
        the device worked on this segment from its submission, or the previous segment's
        completion if later, to now."""
        self.rt.wait_mapped(self.ticket, max_sleep=20e-6)  # polled finely: "now" is the charge
        now = time.perf_counter()
        self.device_s = now - max(self.t_submit, self.rt.last_done)
        self.rt.last_done = now

    def done(self) -> bool:
        if self.result is not None:
            return True
        if self.observed is not None:
            return self.observed.done()
        return self.ticket is not None and self.rt.mapped(self.ticket)

    def wait(self) -> float:
        """Block until the segment's work is done; its device seconds (timestamp queries, or
        the host clock: see _observe). The slot goes back to the pool afterwards; waiting
        again returns the same seconds."""
        if self.result is not None:
            return self.result
        rt, t = self.rt, self.ticket
        if self.observed is not None:
            self.observed.result()
            seconds = self.device_s
        else:
            rt.wait_mapped(t)
            seconds = None
        raw = rt.read_unmap(t)
        if seconds is None:
            t0, t1 = np.frombuffer(raw, np.uint64)
            seconds = max(int(t1) - int(t0), 0) * rt.shared.timestamp_ns * 1e-9
        self.result = seconds
        if len(rt.slots) < MAX_SLOTS:
            rt.slots.append(self.slot)
        self.slot = None
        return seconds
