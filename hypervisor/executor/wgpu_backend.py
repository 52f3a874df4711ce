"""The wgpu executor: launches run as WGSL compute shaders on any GPU that WebGPU reaches
(Vulkan on Linux, Metal on macOS, D3D12 on Windows) through the ``wgpu`` package, and in CI
on Mesa's lavapipe (a CPU Vulkan driver).

The interpreter is the one every executor runs (interpret.py), over ``WgpuNumpy``
(wgpu_numpy.py) with the fused ops of wgpu_ops.py. Every dispatch of a launch is recorded in
one command encoder and submitted once (in pieces for very long launches): ``submit``
returns before the device is done, and the Pending's wait() blocks on the submission's
completion fence (a small readback buffer it writes last, mapped once the work is done).
Device time comes from
timestamp queries around the launch's compute pass where the adapter offers
``timestamp-query``, from the host clock otherwise (``time_source``).

Dtypes: float32 and int32 everywhere, float16 where the adapter has ``shader-f16``. WGSL has
no 64-bit types: allocating or binding a float64 or int64 tensor raises UnsupportedDtype
(PXOS_S_INVALID); int64 and float64 *scalar* params work, as host values (a position, a
start, a token id).

Transfers: WRITE goes through the queue's own staging (``write_buffer`` copies the bytes
before it returns); READ copies into a MAP_READ staging buffer taken from a bounded
StagingPool, one per transfer. Residency copies (overcommit) run in order on one copy
thread, as on NumPy, each a queue submission of its own.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from hypervisor.errors import UnsupportedDtype
from primitive_lang import BoundKernel, TensorSpec

from . import wgpu_ops
from .base import (
    Executor,
    ExecutorInfo,
    Fence,
    FutureFence,
    HostScalar,
    Pending,
    RunTiming,
    StagingPool,
    check_range,
)
from .interpret import Interpreter
from .stepping import Chunk, DeviceSteps
from .tiling import CostModel
from .wgpu_array import WgpuArray, check_dtype
from .wgpu_runtime import Runtime, SharedDevice

STAGING_BYTES = 8 << 20  # one READ staging buffer; larger reads go in pieces of this size
STAGING_SLOTS = 8  # at most this many READ staging buffers exist (64 MiB)


def _quiet_env() -> None:
    # wgpu-native's Vulkan loader complains on every run without it (harmless).
    if not os.environ.get("XDG_RUNTIME_DIR"):
        path = f"/tmp/pxos-xdg-{os.getuid()}"
        os.makedirs(path, mode=0o700, exist_ok=True)
        os.environ["XDG_RUNTIME_DIR"] = path


#: The native APIs the executor runs on. wgpu also offers OpenGL (Mesa's llvmpipe answers
#: there when no Vulkan driver is installed), which has no timestamp queries and weaker
#: compute support: it is never taken.
APIS = ("Vulkan", "Metal", "D3D12")
#: Preference among adapter types (wgpu's names); lower is better.
_RANK = {"discretegpu": 0, "integratedgpu": 1, "virtualgpu": 2, "cpu": 3}


def request_adapter(power_preference: str = "high-performance"):
    """The adapter the executor uses: among wgpu's Vulkan, Metal and D3D12 adapters, the one
    whose device name contains ``$PXOS_WGPU_ADAPTER`` if that is set, else a discrete GPU,
    then an integrated one (the other way round for ``low-power``), then a CPU driver
    (lavapipe). Raises RuntimeError saying what was found when none fits."""
    _quiet_env()
    import wgpu

    found = wgpu.gpu.enumerate_adapters_sync()
    native = [a for a in found if str(a.info.get("backend_type", "")) in APIS]
    want = os.environ.get("PXOS_WGPU_ADAPTER", "")
    if want:
        native = [a for a in native if want.lower() in str(a.info.get("device", "")).lower()]
    if not native:
        seen = ", ".join(f"{a.info.get('device')} ({a.info.get('backend_type')})" for a in found) or "none"
        raise RuntimeError(f"wgpu found no {'/'.join(APIS)} adapter"
                           + (f" named like PXOS_WGPU_ADAPTER={want!r}" if want else "") + f"; adapters seen: {seen}")

    def rank(a) -> tuple[int, int]:
        r = _RANK.get(str(a.info.get("adapter_type", "")).lower().replace("-", "").replace("_", ""), 4)
        if power_preference == "low-power" and r < 2:
            r = 1 - r
        return (r, APIS.index(str(a.info["backend_type"])))

    return min(native, key=rank)


def wgpu_unavailable_reason(require_gpu: bool = False) -> str | None:
    """None when wgpu imports and finds an adapter (with ``require_gpu``: a real GPU, not a
    CPU driver such as lavapipe), else why not."""
    try:
        import wgpu  # noqa: F401
    except Exception as exc:
        return f"wgpu does not import ({type(exc).__name__}: {exc})"
    try:
        adapter = request_adapter()
    except Exception as exc:
        return f"wgpu has no adapter ({type(exc).__name__}: {exc})"
    kind = str(adapter.info.get("adapter_type", ""))
    if require_gpu and _RANK.get(kind.lower().replace("-", "").replace("_", ""), 4) > 1:
        return f"wgpu's adapter {adapter.info.get('device')!r} is a {kind or 'unknown'} device, not a GPU"
    return None


_SHARED: dict[tuple[str, str], SharedDevice] = {}
_SHARED_LOCK = threading.Lock()


def _shared_device(power_preference: str) -> SharedDevice:
    key = (power_preference, os.environ.get("PXOS_WGPU_ADAPTER", ""))
    with _SHARED_LOCK:
        shared = _SHARED.get(key)
        if shared is None:
            adapter = request_adapter(power_preference)
            want = [f for f in ("shader-f16", "timestamp-query") if f in adapter.features]
            shared = _SHARED[key] = SharedDevice(adapter, want)
        return shared


class _SegmentPending(Pending):
    __slots__ = ("gap", "segments", "stall", "timing")

    def __init__(self, segments, stall: float, gap: float | None):
        self.segments, self.stall, self.gap, self.timing = segments, stall, gap, None

    def done(self) -> bool:
        return all(s.done() for s in self.segments)

    def wait(self) -> RunTiming:
        if self.timing is None:
            device = sum(s.wait() for s in self.segments)
            self.timing = RunTiming(device, self.stall, self.gap)
        return self.timing


class WgpuExecutor(Executor):
    name = "wgpu"
    asynchronous = True

    def __init__(self, power_preference: str = "high-performance", *, timestamps: bool = True) -> None:
        """``timestamps=False`` times launches with the host clock even where the adapter has
        timestamp queries (what an adapter without them does)."""
        shared = _shared_device(power_preference)
        self.adapter_info = shared.adapter_info
        self.rt = Runtime(shared, timestamps=timestamps)
        self.timestamps = self.rt.timestamps
        self.xp = self.rt.xp
        self._copier = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pxos-wgpu-copy")
        self._staging = StagingPool(self._make_staging, STAGING_SLOTS)
        self._last_end: float | None = None
        self._consts: dict = {}
        # The device's speed for step estimates and tiling (executor/stepping.py): low first
        # guesses, corrected by every chunk's measured device time.
        self.cost_model = CostModel(steps_per_s=5e4) if self.on_cpu else CostModel(
            matmul_flops_per_s=5e11, reduce_elems_per_s=2e10, steps_per_s=1e5)
        self._edge_lock = threading.Lock()  # unaligned transfers: read-modify-write of their end words

    # ---- identity ------------------------------------------------------------------------
    @property
    def time_source(self) -> str:
        return "timestamp-query" if self.timestamps else "host-clock"

    def adapter(self) -> dict[str, str]:
        i = self.adapter_info
        return {"name": str(i.get("device", "")), "vendor": str(i.get("vendor", "")),
                "backend": str(i.get("backend_type", "")), "type": str(i.get("adapter_type", "")),
                "description": str(i.get("description", "")), "time_source": self.time_source}

    def info(self) -> ExecutorInfo:
        # WebGPU does not report device memory; the memory manager's pool size is the bound.
        from .numpy_backend import _meminfo

        total = _meminfo("MemTotal")
        a = self.adapter()
        return ExecutorInfo(self.name, a["name"] or "wgpu adapter", total, _meminfo("MemAvailable") or total,
                            vendor=a["vendor"], api=a["backend"], time_source=self.time_source)

    # ---- storage -------------------------------------------------------------------------
    @property
    def on_cpu(self) -> bool:
        return str(self.adapter_info.get("adapter_type", "")).lower() == "cpu"

    def check_spec(self, spec: TensorSpec) -> None:
        check_dtype(spec.dtype.value, self.rt.has_f16)

    def empty(self, spec: TensorSpec) -> WgpuArray:
        return self.xp.empty(spec.shape, spec.dtype.value)

    zeros = empty  # WebGPU zero-fills every new buffer: never another VM's bytes
    device_empty = empty

    def host_empty(self, nbytes: int) -> np.ndarray:
        return np.empty(nbytes, dtype=np.uint8)

    def scalar(self, value: float | int, spec: TensorSpec) -> HostScalar:
        """The value as the dtype holds it (a float16 scalar rounded, as NumPy's 0-d array is),
        kept on the host: kernels take it as a constant, never from a buffer."""
        held = np.asarray(value, dtype=spec.dtype.value)[()].item()
        return HostScalar(held, self.xp.host_scalar(held, spec.dtype.value))

    # ---- transfers -----------------------------------------------------------------------
    def _write_bytes(self, array: WgpuArray, offset: int, data: bytes | memoryview) -> None:
        """Bytes into the buffer at ``offset`` (the queue wants 4-byte alignment: an unaligned
        head or tail is merged with the bytes already there)."""
        rt, n = self.rt, len(data)
        lo, end, hi = offset & ~3, offset + n, (offset + n + 3) & ~3
        if (lo, hi) == (offset, end):
            with rt.queue_lock:
                rt.queue.write_buffer(array.buffer, lo, data)
            return
        # Only the partial words at either end are read back; the lock keeps two transfers
        # into the same word from undoing each other's bytes.
        with self._edge_lock:
            head = rt.download(array.buffer, lo, offset - lo) if offset > lo else b""
            tail = rt.download(array.buffer, end, hi - end) if hi > end else b""
            with rt.queue_lock:
                rt.queue.write_buffer(array.buffer, lo, b"".join((head, bytes(data), tail)))

    def write(self, array: WgpuArray, offset: int, chunks: Sequence[memoryview | bytes]) -> int:
        total = sum(len(c) for c in chunks)
        check_range(array.nbytes, offset, total)
        if total:
            blob = chunks[0] if len(chunks) == 1 else b"".join(bytes(c) for c in chunks)
            self._write_bytes(array, offset, memoryview(blob).cast("B"))
        return total

    def fill(self, array: WgpuArray, offset: int, length: int, fill_fn) -> int:
        check_range(array.nbytes, offset, length)
        tmp = np.empty(length, dtype=np.uint8)
        fill_fn(memoryview(tmp))
        if length:
            self._write_bytes(array, offset, memoryview(tmp))
        return length

    def _make_staging(self):
        U = self.rt.wgpu.BufferUsage
        return self.rt.device.create_buffer(size=STAGING_BYTES, usage=U.MAP_READ | U.COPY_DST)

    def read_into(self, array: WgpuArray, offset: int, dsts: Sequence[memoryview]) -> int:
        total = sum(len(d) for d in dsts)
        check_range(array.nbytes, offset, total)
        if not total:
            return 0
        rt = self.rt
        out = np.empty(total, np.uint8)
        with self._staging.slot() as staging:
            pos = 0
            while pos < total:
                lo = (offset + pos) & ~3
                n = min(STAGING_BYTES, ((offset + total + 3) & ~3) - lo)
                enc = rt.device.create_command_encoder()
                enc.copy_buffer_to_buffer(array.buffer, lo, staging, 0, n)
                with rt.queue_lock:
                    rt.queue.submit([enc.finish()])
                t = rt.map_read(staging, n)  # written by the copy just submitted
                rt.wait_mapped(t)
                got = np.frombuffer(rt.read_unmap(t, offset + pos - lo), np.uint8)
                take = min(total - pos, got.size)
                out[pos: pos + take] = got[:take]
                pos += take
        at = 0
        for d in dsts:
            d[:] = out[at: at + len(d)].data
            at += len(d)
        return total

    def to_host(self, array: WgpuArray | HostScalar) -> np.ndarray:
        return array.array.get() if isinstance(array, HostScalar) else array.get()

    # ---- launches ------------------------------------------------------------------------
    def _begin(self, bound: BoundKernel, wait_for: Sequence[Fence]) -> tuple[float, float | None]:
        """A launch's stall (its buffers' copies, waited for on the host) and gap; refuses a
        64-bit tensor before anything runs."""
        begin = time.perf_counter()
        gap = begin - self._last_end if self._last_end is not None else None
        stall = sum(f.wait() for f in wait_for)
        for spec in bound.shapes.values():
            if spec.shape or spec.dtype.value not in ("int64", "float64"):
                check_dtype(spec.dtype.value, self.rt.has_f16)
        return stall, None if gap is None else gap + stall

    def submit(self, bound: BoundKernel, args: Mapping[str, Any], wait_for: Sequence[Fence] = ()) -> Pending:
        stall, gap = self._begin(bound, wait_for)
        env = dict(args)
        rt = self.rt
        rt.submitted = []
        try:
            Interpreter(self.xp, bound, env, consts=self._consts, ops_table=wgpu_ops).run()
        finally:
            rt.flush()  # also what ran before a failing statement: it was recorded and must run
            segments, rt.submitted = rt.submitted, []
            self._last_end = time.perf_counter()
        return _SegmentPending(segments, stall, gap)

    def start_steps(self, bound: BoundKernel, args: Mapping[str, Any], wait_for: Sequence[Fence] = (),
                    slice_s: float = 0.001, *, tile: bool | Callable[[], bool] = True) -> DeviceSteps:
        """The launch as steps (executor/stepping.py): each chunk of steps one submission,
        timed like a launch (timestamp queries around its pass, or the host clock); its
        first steps are submitted now."""
        stall, gap = self._begin(bound, wait_for)
        interp = Interpreter(self.xp, bound, dict(args), consts=self._consts, ops_table=wgpu_ops)
        steps = _WgpuSteps(self, interp, slice_s if tile is not False else 0.0,
                           None if isinstance(tile, bool) else tile, stall, gap)
        steps.prime()
        return steps

    # ---- residency copies ----------------------------------------------------------------
    def _h2d(self, host: np.ndarray, device: WgpuArray) -> None:
        n = device.nbytes
        if n:
            self._write_bytes(device, 0, memoryview(host).cast("B")[:n])
            self.rt.download(device.buffer, 0, 4)  # returns once the queue has done the write

    def _d2h(self, device: WgpuArray, host: np.ndarray) -> None:
        if device.nbytes:
            self.read_into(device, 0, [memoryview(host).cast("B")[: device.nbytes]])

    def h2d_async(self, host: np.ndarray, device: WgpuArray) -> Fence:
        return FutureFence(self._copier.submit(self._h2d, host, device))

    def d2h_async(self, device: WgpuArray, host: np.ndarray) -> Fence:
        return FutureFence(self._copier.submit(self._d2h, device, host))

    def release(self, array) -> None:
        del array  # the buffer goes with its last reference (wgpu keeps it while queued work uses it)

    def close(self) -> None:
        self._copier.shutdown(wait=True)
        if self.rt._clock is not None:
            self.rt._clock.shutdown(wait=True)
        for buf in self._staging.drain():
            buf.destroy()


class _SegmentChunk(Chunk):
    __slots__ = ("est", "est_s", "segments")

    def __init__(self, segments):
        self.segments = segments

    def done(self) -> bool:
        return all(s.done() for s in self.segments)

    def wait(self) -> float:
        return sum(s.wait() for s in self.segments)


class _WgpuSteps(DeviceSteps):
    """A launch as chunks of steps, each chunk the submissions (segments) its dispatches
    went in (stepping.py). Elementwise ops stay lazy across steps and chunks as in a whole
    launch (a value is computed where it is needed or stored), so a chunk's estimate may
    include work a later chunk does: the estimates are corrected on average only."""

    POLL_S = 200e-6  # on lavapipe the device is the host's CPU: poll gently
    # A submission costs host time (~0.1 ms recorded and submitted on lavapipe since its
    # completion is polled; 0.3-3 ms before: docs/benchmarks.md), and on lavapipe each waits
    # in the driver for the one before: chunks as large as the ahead bound allows, half a slice.
    CHUNK_FRACTION = 1.0

    def __init__(self, ex: WgpuExecutor, interp: Interpreter, slice_s: float, active, stall: float,
                 gap: float | None):
        super().__init__(interp, ex.cost_model, slice_s or 0.001, active, ex.xp.TILE_ROWS, stall, gap,
                         min_cols=ex.xp.TILE_COLS, tail_rows=ex.xp.TILE_TAIL_ROWS)
        if not slice_s:
            self.tiler.slice_s = 0.0
        self.ex, self.rt = ex, ex.rt

    def _open(self) -> None:
        self.rt.submitted = []

    def _close(self, est: dict[str, float], last: bool) -> Chunk:
        rt = self.rt
        try:
            rt.flush()  # also what ran before a failing statement: it was recorded and must run
        finally:
            segments, rt.submitted = rt.submitted, []
            self.ex._last_end = time.perf_counter()
        return _SegmentChunk(segments)


__all__ = ["UnsupportedDtype", "WgpuExecutor", "wgpu_unavailable_reason"]
