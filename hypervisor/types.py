"""Plain values the hypervisor API takes and returns (no behaviour beyond Completion)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from primitive_lang import CheckedKernel
from primitive_lang.ast import DType


@dataclass(frozen=True)
class Scalar:
    """A scalar param's value in a launch's bindings (buffers are bound by handle)."""

    value: float | int
    dtype: DType | None = None  # None: the param's declared dtype


@dataclass(frozen=True)
class VMInfo:
    vm_id: int
    name: str
    memory_quota: int  # bytes
    memory_used: int  # bytes: live buffers + temporaries of the running launch
    share_pct: float
    cap_pct: float | None
    default_class: str | None
    socket: str | None = None
    domain: str | None = None  # libvirt domain served now (pxos-vhost-gpu handoff), else None
    device: int = 0  # the device it is placed on (its id in [daemon] devices)


@dataclass(frozen=True)
class DeviceInfo:
    backend: str
    device_name: str
    pool_bytes: int
    pool_used: int
    host_budget: int
    host_used: int
    vendor: str = ""
    api: str = ""
    time_source: str = ""


@dataclass(frozen=True)
class DeviceUse:
    """One device of the daemon as `pxosctl stats` and /metrics show it (devices.py)."""

    device: int  # its id in [daemon] devices
    info: DeviceInfo
    vms: int  # VMs placed on it
    share_used: float  # their shares, percent
    utilisation: float  # busy fraction over the scheduler's window (0..1)
    busy_seconds: float  # device time of every launch run on it, in total
    launches: int  # launches run on it, in total
    queue_depth: int  # launches queued on it now


@dataclass(frozen=True)
class BufferInfo:
    handle: int
    nbytes: int
    dtype: DType
    shape: tuple[int, ...]
    residency: str


@dataclass(frozen=True)
class KernelInfo:
    kernel_id: int
    name: str
    checked: CheckedKernel


@dataclass(frozen=True)
class SessionCloseResult:
    buffers_freed: int
    bytes_freed: int
    kernels_freed: int
    launches_cancelled: int


@dataclass(frozen=True)
class LaunchResult:
    launch_id: int
    vm_id: int
    status: str  # PXOS_S_* name
    error: BaseException | None
    device_ns: int
    queue_ns: int
    total_ns: int
    wclass: str  # the class the scheduler ran it as
    kernel: str

    @property
    def ok(self) -> bool:
        return self.status == "PXOS_S_OK"


def launch_result(launch_id: int, vm_id: int, status: str, error: BaseException | None, device_ns: int,
                  queue_ns: int, total_ns: int, wclass: str, kernel: str) -> LaunchResult:
    """LaunchResult(...) made without the frozen dataclass's per-field setattr (a quarter of
    the time: one is made for every launch); the same value."""
    r = object.__new__(LaunchResult)
    r.__dict__.update(launch_id=launch_id, vm_id=vm_id, status=status, error=error, device_ns=device_ns,
                      queue_ns=queue_ns, total_ns=total_ns, wclass=wclass, kernel=kernel)
    return r

# Guards every Completion's state changes (a few bytecodes each; one lock for all of them
# instead of a lock and an Event per launch: issue 14, the lean launch path).
_GUARD = threading.Lock()


class Completion:
    """The outcome of one launch, filled in by whichever thread completed it (the dispatch
    thread, or a serial caller's on the fast path). A waiter that comes before the result
    blocks on a latch (a lock made by the first such waiter, released by ``_finish``); a
    result delivered before anyone waits costs no synchronisation object at all."""

    __slots__ = ("_callbacks", "_latch", "_runner", "_wake", "launch_id", "result", "session", "vm_id")

    def __init__(self, launch_id: int, vm_id: int, session: int):
        self.launch_id, self.vm_id, self.session = launch_id, vm_id, session
        self.result: LaunchResult | None = None
        self._latch: threading.Lock | None = None
        self._callbacks: list[Callable[[Completion], None]] | None = None
        # The hypervisor's serial fast path (Dispatcher.run_here), offered to the first
        # wait() without a timeout: a caller that is going to block for the result anyway
        # runs the launch itself when the device is idle (docs/scheduling.md).
        self._runner: Callable[[Completion], bool] | None = None
        # Set when launch() left the idle dispatch thread asleep, expecting this wait()
        # (a deferred wake: Dispatcher.defer_wake): anything else that needs the result
        # wakes it first.
        self._wake: Callable[[], None] | None = None

    def done(self) -> bool:
        if self.result is None and self._wake is not None:
            self._woken()
        return self.result is not None

    def _woken(self) -> None:
        wake, self._wake = self._wake, None
        if wake is not None:
            wake()

    def wait(self, timeout: float | None = None) -> LaunchResult:
        result = self.result
        if result is not None:
            return result
        runner = self._runner
        if runner is not None and timeout is None:
            self._runner = self._wake = None  # (run_here wakes the dispatcher if it leaves it queued)
            if runner(self):
                return self.result  # type: ignore[return-value]
        if self._wake is not None:
            self._woken()
        with _GUARD:
            if self.result is not None:
                return self.result
            latch = self._latch
            if latch is None:
                latch = self._latch = threading.Lock()
                latch.acquire()
        if not latch.acquire(True, -1 if timeout is None else max(0.0, timeout)):
            raise TimeoutError(f"launch {self.launch_id} not complete after {timeout} s")
        latch.release()  # the next waiter, if any, passes too
        assert self.result is not None
        return self.result

    def add_done_callback(self, fn: Callable[[Completion], None]) -> None:
        if self._wake is not None:
            self._woken()
        with _GUARD:
            if self.result is None:
                if self._callbacks is None:
                    self._callbacks = [fn]
                else:
                    self._callbacks.append(fn)
                return
        fn(self)

    def _finish(self, result: LaunchResult) -> list[Callable[[Completion], None]]:
        with _GUARD:
            self.result = result
            self._runner = self._wake = None  # (they hold the dispatcher: not kept past the result)
            cbs, self._callbacks = self._callbacks, None
            latch, self._latch = self._latch, None
        if latch is not None:
            latch.release()
        return cbs if cbs is not None else []


@dataclass(frozen=True)
class VMStats:
    vm_id: int
    name: str
    memory_quota: int
    memory_used: int
    memory_device_bytes: int
    memory_host_bytes: int
    share_pct: float
    cap_pct: float | None
    achieved_share: float  # fraction of busy device time over the scheduler's window
    device_seconds_total: float
    launches_total: int
    launches_failed: int
    launches_by_class: dict[str, int]
    queue_depth: int
    inflight: int
    buffers: int
    kernels: int
    latency_p50_ms: float
    latency_p99_ms: float
    vm_switches_in: int
    idle: bool
    extra: dict[str, Any] = field(default_factory=dict)
    device: int = 0  # the device it is placed on


@dataclass(frozen=True)
class Event:
    """Something that happened, for the gRPC event stream and the logs."""

    kind: str  # "vm_registered", "vm_unregistered", "quota_changed", "launch_completed", "vm_reset", ...
    vm_id: int | None
    time: float  # wall clock, seconds since the epoch
    detail: dict[str, Any]
