"""What the virtio-gpu-pxos device counts, as a plain stats dataclass.

Domain code returns plain stats; only ``hypervisor/metrics.py`` turns them into Prometheus
metrics. The transport's ``status()`` reports these per VM (``as_dict``), so ``pxosctl``
and the exporter see every request served, every error a guest caused, by status, and
every late completion the device dropped after a reset.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field


@dataclass
class DeviceStats:
    requests_total: int = 0  # chains popped from the control queue
    # Keys are the command names the device knows, and "unknown" for every other type a
    # guest sends: bounded by the two enums, whatever the guest does (issue 17).
    pxos_by_command: dict[str, int] = field(default_factory=dict)  # "PXOS_CMD_ALLOC": n
    standard_by_command: dict[str, int] = field(default_factory=dict)  # "VIRTIO_GPU_CMD_...": n
    errors_by_status: dict[str, int] = field(default_factory=dict)  # PXOS_S_* / VIRTIO_GPU_RESP_ERR_*
    no_header_total: int = 0  # chains too short for a ctrl header: completed with 0 bytes
    cursor_total: int = 0  # cursor-queue chains drained
    config_reads: int = 0  # GET_CONFIG answered (QEMU asks while the guest's vCPU waits)
    internal_errors_total: int = 0  # host bugs caught at the queue boundary
    launches_inflight: int = 0  # LAUNCH chains held until their work completes
    # The serial fast path (device.py, "LAUNCH on the loop thread"): LAUNCHes submitted from
    # the VM's loop thread (no hop through the worker), and those of them that also ran
    # there, the device being idle (no thread hop at all).
    launches_submitted_inline_total: int = 0
    launches_run_inline_total: int = 0
    launches_lock_busy_total: int = 0  # the hypervisor's lock was held elsewhere: sent to the worker
    launches_overran_total: int = 0  # ran on the loop far longer than the bound (its kernel is queued after)
    late_completions_dropped: int = 0  # completions that arrived after a reset
    resets_total: int = 0
    drm_contexts: int = 0  # contexts open (DRM transport: one per render-node session)
    drm_resources: int = 0  # 3D buffer resources the guest's driver made
    fence_waits_total: int = 0  # fenced answers held until an earlier fence completed

    def count(self, table: dict[str, int], key: str) -> None:
        table[key] = table.get(key, 0) + 1

    def as_dict(self) -> dict:
        return asdict(self)


class LogLimiter:
    """At most ``burst`` log lines, refilled at ``per_second``: a guest that sends a flood of
    bad requests gets every one counted, but cannot flood the host's log."""

    def __init__(self, per_second: float = 10.0, burst: int = 50, clock=time.monotonic):
        self._rate, self._burst, self._clock = per_second, burst, clock
        self._tokens = float(burst)
        self._last = clock()
        self.suppressed = 0

    def allow(self) -> bool:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        self.suppressed += 1
        return False
