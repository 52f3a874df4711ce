"""Device arrays for the wgpu executor and the NumPy-like namespace the interpreter runs on.

``WgpuArray`` is a strided view (buffer, element offset, shape, strides) of a wgpu storage
buffer, so RESHAPE, PERMUTE, SLICE and a transposed LINEAR weight cost no copy, as on NumPy
and CuPy. ``WgpuNumpy`` implements the part of NumPy's API that interpret.py and array_ops.py
use (ufuncs with broadcasting, matmul, reductions, take, concatenate, copyto, item access) by
recording compute dispatches through ``Runtime``: every dispatch of one launch goes into one
command encoder and one compute pass, submitted once when the launch ends (or earlier where
the interpreter needs a value on the host, e.g. a start computed on the device).
"""

from __future__ import annotations

import math
import threading
import weakref
from collections import OrderedDict
from typing import Any

import numpy as np

from hypervisor.errors import UnsupportedDtype

from . import wgsl

SUPPORTED = ("float32", "float16", "int32")
#: Compiled pipelines kept per device: each distinct fused elementwise chain is a shader, and
#: the chains come from guests' programs, so the cache is bounded (LRU); ~2k shaders of a few
#: KiB to ~100 KiB of driver memory each.
MAX_PIPELINES = 2048


def check_dtype(dtype, has_f16: bool) -> np.dtype:
    dt = np.dtype(dtype)
    if dt.name not in SUPPORTED or (dt.name == "float16" and not has_f16):
        have = ", ".join(d for d in SUPPORTED if d != "float16" or has_f16)
        raise UnsupportedDtype(f"the wgpu executor holds {have} only, not {dt.name} "
                               "(WGSL has no 64-bit types; docs/operations.md)")
    return dt


def contiguous_strides(shape) -> tuple[int, ...]:
    strides, acc = [], 1
    for n in reversed(shape):
        strides.append(acc)
        acc *= n
    return tuple(reversed(strides))


class WgpuArray:
    """A strided view of a device buffer (elements, not bytes). ``host`` is set on a 0-d
    scalar that has no buffer yet (a scalar param): kernels take it as a constant."""

    __slots__ = ("__weakref__", "buffer", "bufs", "dtype", "host", "lazy", "offset", "rt", "shape", "strides")

    def __init__(self, rt: Runtime, buffer, dtype, shape, strides=None, offset=0, host=None):
        self.rt, self.buffer, self.dtype = rt, buffer, np.dtype(dtype)
        self.shape = tuple(int(n) for n in shape)
        self.strides = contiguous_strides(self.shape) if strides is None else tuple(strides)
        self.offset, self.host = offset, host
        self.lazy = None  # (expr, operands): an elementwise result not computed yet (wgpu_numpy)
        self.bufs: frozenset[int] = frozenset()  # ids of the buffers a lazy value reads

    # ---- NumPy's array attributes --------------------------------------------------------
    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def is_contiguous(self) -> bool:
        return all(n == 1 or s == c for n, s, c in zip(self.shape, self.strides,
                                                        contiguous_strides(self.shape), strict=True))

    def device(self) -> WgpuArray:
        """This array with a buffer (a lazy value is computed, a host scalar uploaded now)."""
        if self.lazy is not None:
            expr, operands = self.lazy
            xp = self.rt.xp
            out = xp.empty(self.shape, self.dtype)
            xp.run_elementwise(expr, self.dtype, operands, self.shape, out)
            self.buffer, self.strides, self.offset = out.buffer, out.strides, 0
            self.lazy, self.bufs = None, frozenset()
            self.rt.pending.discard(self)
        elif self.buffer is None:
            check_dtype(self.dtype, self.rt.has_f16)
            self.buffer = self.rt.upload(np.asarray(self.host, self.dtype).reshape(1))
            self.strides, self.offset = (), 0
        return self

    # ---- views -----------------------------------------------------------------------------
    def view(self, shape, strides, offset) -> WgpuArray:
        return WgpuArray(self.rt, self.buffer, self.dtype, shape, strides, offset)

    def reshape(self, *shape) -> WgpuArray:
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], tuple | list) else shape
        shape = list(shape)
        if -1 in shape:
            known = math.prod(n for n in shape if n != -1)
            shape[shape.index(-1)] = self.size // max(known, 1)
        base = self if self.is_contiguous() else self.copy()
        base.device()
        return WgpuArray(self.rt, base.buffer, self.dtype, shape, None, base.offset)

    def __getitem__(self, key) -> WgpuArray:
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            at = next(i for i, k in enumerate(key) if k is Ellipsis)
            fill = self.ndim - (len(key) - 1)
            key = key[:at] + (slice(None),) * fill + key[at + 1:]
        self.device()
        shape, strides, offset = [], [], self.offset
        for d, n in enumerate(self.shape):
            k = key[d] if d < len(key) else slice(None)
            if isinstance(k, slice):
                start, stop, step = k.indices(n)
                if step < 1:
                    raise NotImplementedError("negative steps")
                shape.append(max(0, (stop - start + step - 1) // step))
                strides.append(self.strides[d] * step)
                offset += start * self.strides[d]
            else:
                i = int(k)
                offset += (i + n if i < 0 else i) * self.strides[d]
        return self.view(shape, strides, offset)

    def __setitem__(self, key, value) -> None:
        self.rt.xp.copyto(self[key], value)

    # ---- values ----------------------------------------------------------------------------
    def copy(self) -> WgpuArray:
        return self.rt.xp.elementwise("{0}", self.dtype, (self,), self.shape)

    def astype(self, dtype, copy=True) -> WgpuArray:
        dt = np.dtype(dtype)
        if dt == self.dtype and not copy:
            return self
        check_dtype(dt, self.rt.has_f16)
        return self.rt.xp.elementwise("{0}", dt, (self,), self.shape)

    def get(self) -> np.ndarray:
        """The values on the host (waits for every dispatch recorded so far)."""
        if self.buffer is None and self.lazy is None:
            return np.asarray(self.host, self.dtype)
        self.device()
        src = self if self.is_contiguous() else self.copy()
        raw = self.rt.download(src.buffer, src.offset * self.dtype.itemsize, src.nbytes)
        return np.frombuffer(raw, self.dtype, count=self.size).reshape(self.shape).copy()

    def __int__(self) -> int:
        return int(self.get())

    def __index__(self) -> int:
        return int(self.get())

    def __float__(self) -> float:
        return float(self.get())

    def __bool__(self) -> bool:
        return bool(self.get())

    def __len__(self) -> int:
        return self.shape[0]

    # ---- operators (the compositions in array_ops.py) ---------------------------------------
    def __add__(self, o):
        return self.rt.xp.add(self, o)

    def __radd__(self, o):
        return self.rt.xp.add(o, self)

    def __sub__(self, o):
        return self.rt.xp.subtract(self, o)

    def __rsub__(self, o):
        return self.rt.xp.subtract(o, self)

    def __mul__(self, o):
        return self.rt.xp.multiply(self, o)

    def __rmul__(self, o):
        return self.rt.xp.multiply(o, self)

    def __truediv__(self, o):
        return self.rt.xp.divide(self, o)

    def __rtruediv__(self, o):
        return self.rt.xp.divide(o, self)

    def __neg__(self):
        return self.rt.xp.negative(self)

    def __repr__(self) -> str:
        return f"WgpuArray({self.dtype.name}{list(self.shape)})"


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
        staging.map_sync(self.wgpu.MapMode.READ)
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
            p = pipes[key] = self.device.create_compute_pipeline(
                layout="auto", compute={"module": module, "entry_point": "main"})
            self.compiles += 1
            while len(pipes) > MAX_PIPELINES:
                pipes.popitem(last=False)  # passes that recorded it keep it alive
            return p

    def dispatch(self, key: tuple, make_source, buffers: list, meta: list[int], groups: tuple[int, int, int]):
        pipe = self.pipeline(key, make_source)
        seg = self._segment
        if seg is None:
            seg = self._segment = _Segment(self)
        meta_buf, off, size = seg.meta_slot(np.asarray(meta, dtype=np.uint32).view(np.uint32))
        entries = [{"binding": 0, "resource": {"buffer": meta_buf, "offset": off, "size": size}}]
        entries += [{"binding": i + 1, "resource": {"buffer": b, "offset": 0, "size": b.size}}
                    for i, b in enumerate(buffers)]
        bg = self.device.create_bind_group(layout=pipe.get_bind_group_layout(0), entries=entries)
        cp = seg.compute_pass()
        cp.set_pipeline(pipe)
        cp.set_bind_group(0, bg)
        cp.dispatch_workgroups(*groups)
        seg.keep.append(bg)
        self.dispatches += 1

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
        import time

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
        self.promise = self.readback.map_async(rt.wgpu.MapMode.READ)
        self.encoder = self.pass_ = None
        if self.query is None:  # host clock: completion observed as it happens, in order
            self.observed = rt.clock_thread().submit(self._observe)

    def _observe(self) -> None:
        """On the runtime's clock thread (one, so segments complete in submission order here):
        the device worked on this segment from its submission, or the previous segment's
        completion if later, to now."""
        import time

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
            return max(int(t1) - int(t0), 0) * 1e-9
        finally:
            self.readback.unmap()
            self.readback.destroy()


def _groups(n: int, per: int = wgsl.WG) -> tuple[int, int, int]:
    g = max(1, -(-n // per))
    x = min(g, 65535)
    return (x, -(-g // x), 1)


def _collapse(shape, *strides_list):
    """Merge adjacent dims that every operand walks contiguously; drop size-1 dims."""
    dims = [(n, [s[d] for s in strides_list]) for d, n in enumerate(shape) if n != 1]
    if not dims:
        return (1,), [(0,) for _ in strides_list]
    out = [dims[0]]
    for n, ss in dims[1:]:
        pn, pss = out[-1]
        if all(ps == s * n for ps, s in zip(pss, ss, strict=True)):
            out[-1] = (pn * n, ss)
        else:
            out.append((n, ss))
    return tuple(n for n, _ in out), [tuple(ss[j] for _, ss in out) for j in range(len(strides_list))]


def broadcast_shapes(*shapes):
    nd = max(len(s) for s in shapes)
    out = []
    for d in range(nd):
        dims = {s[len(s) - nd + d] for s in shapes if len(s) - nd + d >= 0} - {1}
        if len(dims) > 1:
            raise ValueError(f"shapes {shapes} do not broadcast")
        out.append(dims.pop() if dims else 1)
    return tuple(out)


def bcast_strides(a: WgpuArray, shape) -> tuple[int, ...]:
    pad = len(shape) - a.ndim
    return tuple(0 if d < pad or a.shape[d - pad] == 1 else a.strides[d - pad] for d in range(len(shape)))


def scalar_bits(value, dtype: np.dtype) -> int:
    if dtype.kind == "f":
        return int(np.asarray(value, np.float32).view(np.uint32))
    return int(np.asarray(value, np.int64).astype(np.int32).view(np.uint32))


from .wgpu_numpy import WgpuNumpy  # noqa: E402  (the namespace uses the classes above)
