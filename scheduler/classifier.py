"""The classifier: a workload class and a device-time estimate for each launch.

Inputs are the launch's hint (the ``GPU_CLASS`` header or the ioctl's class), its priority,
the language's cost model figures, the VM's default class, and what this VM's earlier
launches measured (``observe``). The rules are written out in docs/scheduling.md,
"Classifier"; the constants below are the thresholds that section names.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from scheduler.errors import InvalidCharge, InvalidCost, InvalidTicket
from scheduler.workload import DEFAULT_PRIORITY, MAX_EST_SECONDS, MAX_PRIORITY, MIN_PRIORITY, LaunchCost
from scheduler.workload import WorkloadClass as WC

#: Roofline defaults for the device: peak flop rate, peak memory bandwidth, fixed cost of
#: one launch. Deliberately modest (a CPU running NumPy); the hypervisor passes the GPU's,
#: and the per-VM correction below learns the rest from measurements.
DEFAULT_PEAK_FLOPS = 1e10
DEFAULT_PEAK_BYTES_PER_S = 1e10
DEFAULT_LAUNCH_OVERHEAD_S = 20e-6

#: Smoothing of the measured/modelled time ratio (an EMA of its logarithm: ratios are
#: multiplicative, and one odd launch should not swing the estimate by orders of magnitude).
RATIO_ALPHA = 0.2
#: One measurement moves the ratio by at most this factor's logarithm (outlier guard).
RATIO_SAMPLE_CLAMP = 1e3

#: Time constant of a VM's duty: its device seconds per wall second, decayed exponentially.
DUTY_TAU_SECONDS = 1.0

#: A launch estimated at most this long, from a VM that keeps the device busy less than
#: INTERACTIVE_MAX_DUTY of the time, is someone waiting on a small answer: INTERACTIVE.
INTERACTIVE_MAX_SECONDS = 2e-3
INTERACTIVE_MAX_DUTY = 0.25
#: A launch this long is BATCH; so is one of COMPUTE_BATCH_MIN_SECONDS or more whose
#: arithmetic intensity marks it compute-bound (training-like matmuls).
BATCH_MIN_SECONDS = 50e-3
COMPUTE_BATCH_MIN_SECONDS = 10e-3
COMPUTE_BOUND_INTENSITY = 8.0  # flops per byte moved
#: Priorities at or above / at or below these move an *inferred* class one step.
URGENT_PRIORITY = 75
RELAXED_PRIORITY = 25


_LOG_CLAMP = math.log(RATIO_SAMPLE_CLAMP)


@dataclass(slots=True)
class _History:
    log_ratio: float  # EMA of log(measured / modelled seconds)
    samples: int = 0
    busy: float = 0.0  # decayed device seconds, as of `at`
    at: float = 0.0


class Classifier:
    def __init__(self, *, peak_flops: float = DEFAULT_PEAK_FLOPS,
                 peak_bytes_per_s: float = DEFAULT_PEAK_BYTES_PER_S,
                 launch_overhead_s: float = DEFAULT_LAUNCH_OVERHEAD_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        for name, v in (("peak_flops", peak_flops), ("peak_bytes_per_s", peak_bytes_per_s)):
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise InvalidCost(f"{name} must be a positive number, got {v!r}")
        if not isinstance(launch_overhead_s, (int, float)) or not 0 <= launch_overhead_s < 1:
            raise InvalidCost(f"launch_overhead_s must be in [0, 1), got {launch_overhead_s!r}")
        self._flops, self._bw, self._overhead = float(peak_flops), float(peak_bytes_per_s), float(launch_overhead_s)
        self._clock = clock
        self._vms: dict[int, _History] = {}
        self._global_log_ratio = 0.0  # across every VM: the prior of a VM with no history

    def model_seconds(self, cost: LaunchCost) -> float:
        """Roofline time of a launch on the configured device, before any correction."""
        return self._overhead + max(cost.flops / self._flops, cost.bytes_moved / self._bw)

    def estimate(self, vm_id: int, cost: LaunchCost) -> float:
        """Expected device seconds: the roofline time times the VM's learned ratio (the
        ratio across all VMs for a VM without measurements), capped at MAX_EST_SECONDS."""
        h = self._vms.get(vm_id)
        log_ratio = h.log_ratio if h is not None and h.samples else self._global_log_ratio
        return min(self.model_seconds(cost) * math.exp(log_ratio), MAX_EST_SECONDS)

    def duty(self, vm_id: int) -> float:
        """The VM's recent device seconds per wall second (0 for a VM never observed)."""
        h = self._vms.get(vm_id)
        if h is None:
            return 0.0
        return h.busy * math.exp(-max(0.0, self._clock() - h.at) / DUTY_TAU_SECONDS) / DUTY_TAU_SECONDS

    def classify(self, vm_id: int, *, hint: WC | None, priority: int | None, cost: LaunchCost,
                 default: WC | None) -> tuple[WC, float]:
        """-> (class, estimated device seconds). Hint first, then the VM's default class,
        then inference from the estimate, the intensity and the VM's duty."""
        if not (type(cost) is LaunchCost and (hint is None or type(hint) is WC)
                and (default is None or type(default) is WC)
                and (priority is None or (type(priority) is int and MIN_PRIORITY <= priority <= MAX_PRIORITY))):
            self._check_classify(hint, priority, cost, default)  # raises, saying what is wrong
        est = self.estimate(vm_id, cost)
        if hint is not None:
            return hint, est
        if default is not None:
            return default, est
        return self._infer(vm_id, cost, est, DEFAULT_PRIORITY if priority is None else priority), est

    @staticmethod
    def _check_classify(hint, priority, cost, default) -> None:
        for name, value in (("hint", hint), ("default", default)):
            if value is not None and not isinstance(value, WC):
                raise InvalidTicket(f"{name} must be a WorkloadClass or None, got {value!r}")
        if priority is not None and (not isinstance(priority, int) or isinstance(priority, bool)
                                     or not MIN_PRIORITY <= priority <= MAX_PRIORITY):
            raise InvalidTicket(f"priority must be an int in {MIN_PRIORITY}..{MAX_PRIORITY}, got {priority!r}")
        if not isinstance(cost, LaunchCost):
            raise InvalidCost(f"cost must be a LaunchCost, got {type(cost).__name__}")

    def _infer(self, vm_id: int, cost: LaunchCost, est: float, priority: int) -> WC:
        if est <= INTERACTIVE_MAX_SECONDS and self.duty(vm_id) < INTERACTIVE_MAX_DUTY:
            wclass = WC.INTERACTIVE
        elif est >= BATCH_MIN_SECONDS or (
                est >= COMPUTE_BATCH_MIN_SECONDS and cost.intensity >= COMPUTE_BOUND_INTENSITY):
            wclass = WC.BATCH
        else:
            wclass = WC.THROUGHPUT
        if priority >= URGENT_PRIORITY:
            wclass = WC(max(int(WC.INTERACTIVE), wclass - 1))  # REALTIME is only ever asked for
        elif priority <= RELAXED_PRIORITY:
            wclass = WC(min(int(WC.BATCH), wclass + 1))
        return wclass

    def observe(self, vm_id: int, cost: LaunchCost, device_seconds: float) -> None:
        """Learn from one finished launch of ``vm_id``: its measured device seconds."""
        if not (type(cost) is LaunchCost and type(device_seconds) is float and 0.0 <= device_seconds < math.inf):
            if not isinstance(cost, LaunchCost):
                raise InvalidCost(f"cost must be a LaunchCost, got {type(cost).__name__}")
            if (not isinstance(device_seconds, (int, float)) or isinstance(device_seconds, bool)
                    or not math.isfinite(device_seconds) or device_seconds < 0):
                raise InvalidCharge(f"device_seconds must be finite and >= 0, got {device_seconds!r}")
        now = self._clock()
        h = self._vms.get(vm_id)
        if h is None:
            h = self._vms[vm_id] = _History(log_ratio=self._global_log_ratio, at=now)
        limit = _LOG_CLAMP
        model = self._overhead + max(cost.flops / self._flops, (cost.bytes_read + cost.bytes_written) / self._bw)
        sample = math.log(max(device_seconds, 1e-12) / model)  # the log of measured / model_seconds(cost)
        d = sample - h.log_ratio  # each step clamped to [-limit, limit]
        h.log_ratio += RATIO_ALPHA * (limit if d > limit else -limit if d < -limit else d)
        h.samples += 1
        d = sample - self._global_log_ratio
        self._global_log_ratio += RATIO_ALPHA * (limit if d > limit else -limit if d < -limit else d)
        h.busy = h.busy * math.exp(-max(0.0, now - h.at) / DUTY_TAU_SECONDS) + device_seconds
        h.at = now

    def forget(self, vm_id: int) -> None:
        self._vms.pop(vm_id, None)
