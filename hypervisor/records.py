"""The hypervisor's per-VM records and the checks every request's arguments go through:
VM ids, names, shares, dtypes and shapes, scalar values, and the bound-kernel cache.
Plain functions and dataclasses; core.py holds the state and the lock."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import primitive_lang
from primitive_lang import BoundKernel, CheckedKernel, TensorSpec
from primitive_lang.ast import DType
from scheduler import WorkloadClass

from . import errors as E
from .memory import Buffer
from .types import BufferInfo, KernelInfo

# Latency samples kept per VM for p50/p99 (a ring: the most recent launches).
LATENCY_SAMPLES = 2048

# Bound kernels kept per compiled kernel, by the dtypes and shapes of their bindings: a
# guest launching the same kernel on same-shaped buffers binds it once.
BIND_CACHE_SIZE = 8

# Host memory of a VM's compiled kernels (docs/memory.md, "Host memory a guest controls").
# A guest chooses how many kernels it keeps and how large they are, and the daemon holds
# their ASTs, checked steps and bind caches in its own RAM, outside any GPU quota; so each
# kernel is charged an estimate at compile, and a VM's kernels together may not pass the
# budget. The estimate is an upper bound of what tracemalloc measures (2.7 KiB for a
# one-statement kernel, 690-750 B per op statement with names of 1 to 55 characters, and
# per bound kernel 1.1 KiB + 75-90 B per statement), charged whole up front, the
# BIND_CACHE_SIZE bound kernels it may keep included.
KERNEL_BASE_HOST_BYTES = 4 << 10
KERNEL_STATEMENT_HOST_BYTES = 1 << 10
BOUND_BASE_HOST_BYTES = 2 << 10
BOUND_STATEMENT_HOST_BYTES = 128
# The per-VM budget: MAX_KERNELS_PER_VM (4096) one-statement kernels fit (about 92 MiB),
# so for small kernels the count is the limit and for large ones the budget (64 KiB
# sources of dense statements: about 40 of them).
KERNEL_HOST_BUDGET_BYTES = 96 << 20


def kernel_host_bytes(kernel: CheckedKernel) -> int:
    """The host memory charged for keeping one compiled kernel (and its bind cache)."""
    n = max(kernel.statement_count, len(kernel.steps))
    return (KERNEL_BASE_HOST_BYTES + KERNEL_STATEMENT_HOST_BYTES * n
            + BIND_CACHE_SIZE * (BOUND_BASE_HOST_BYTES + BOUND_STATEMENT_HOST_BYTES * n))


@dataclass
class KernelRecord:
    info: KernelInfo
    session: int
    bound: dict[tuple, BoundKernel] = field(default_factory=dict)
    host_bytes: int = 0  # what keeping it is charged (kernel_host_bytes)

    def bind(self, specs: dict[str, TensorSpec]) -> BoundKernel:
        key = tuple(sorted((n, s.dtype, s.shape) for n, s in specs.items()))
        hit = self.bound.get(key)
        if hit is None:
            hit = self.info.checked.bind(specs)  # raises on a mismatch: nothing cached then
            if len(self.bound) >= BIND_CACHE_SIZE:
                self.bound.pop(next(iter(self.bound)))
            self.bound[key] = hit
        return hit


#: Distinct kernels counted per VM for the advisor's op mix; a guest compiling many more
#: than this leaves the rest uncounted (guests choose how many kernels they make).
KERNEL_MIX_MAX = 64
#: Enqueue-to-start waits kept per VM for the advisor's queue-wait p99 (the latest ones).
QUEUE_WAIT_SAMPLES = 512


@dataclass
class VMRecord:
    vm_id: int
    name: str
    share: float
    cap: float | None
    default_class: WorkloadClass | None
    socket: str | None = None
    domain: str | None = None  # the libvirt domain whose connection is served now (handoff)
    kernels: dict[int, KernelRecord] = field(default_factory=dict)
    inflight: int = 0
    launches_total: int = 0
    launches_failed: int = 0
    by_class: dict[str, int] = field(default_factory=dict)
    device_seconds: float = 0.0
    latencies_ns: deque = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))
    switches_in: int = 0
    idle: bool = False
    generation: int = 0  # bumped by reset: launches of an older generation are stale
    kernel_host_bytes: int = 0  # sum of its kernels' host_bytes (KERNEL_HOST_BUDGET_BYTES)
    # What the scheduling advisor summarises (hypervisor/advisor.py): cost-model totals of
    # its successful launches, and launches per checked kernel (at most KERNEL_MIX_MAX kernels).
    flops_total: int = 0
    bytes_total: int = 0
    kernel_mix: dict = field(default_factory=dict)
    queue_waits_ns: deque = field(default_factory=lambda: deque(maxlen=QUEUE_WAIT_SAMPLES))
    # While the VM moves to another device (devices.py): its launches wait here, not queued.
    held: list | None = None
    # Launch plans by (kernel id, session, bindings) (launch_plan.py), at most PLANS_PER_VM.
    plans: dict = field(default_factory=dict)

    def keep_kernels(self, records: list[KernelRecord]) -> None:
        """Keep newly compiled kernels, or refuse them all (HostLimitExceeded) when their
        host memory would take the VM past KERNEL_HOST_BUDGET_BYTES."""
        cost = sum(r.host_bytes for r in records)
        if self.kernel_host_bytes + cost > KERNEL_HOST_BUDGET_BYTES:
            raise E.HostLimitExceeded(
                f"VM {self.vm_id}: {len(records)} more compiled kernels would hold about {cost} bytes of host "
                f"memory beside the {self.kernel_host_bytes} its {len(self.kernels)} kernels hold, over the "
                f"per-VM budget of {KERNEL_HOST_BUDGET_BYTES}; free some kernels")
        for r in records:
            self.kernels[r.info.kernel_id] = r
        self.kernel_host_bytes += cost

    def drop_kernel(self, kernel_id: int) -> None:
        self.kernel_host_bytes -= self.kernels.pop(kernel_id).host_bytes

    def drop_all_kernels(self) -> int:
        n = len(self.kernels)
        self.kernels.clear()
        self.plans.clear()
        self.kernel_host_bytes = 0
        return n


def class_of(name: str | WorkloadClass | None) -> WorkloadClass | None:
    if name is None or isinstance(name, WorkloadClass):
        return name
    try:
        return WorkloadClass[str(name).upper()]
    except KeyError:
        raise E.InvalidArgument(
            f"unknown workload class {name!r}; choose REALTIME, INTERACTIVE, THROUGHPUT or BATCH"
        ) from None


def percentile(sorted_values: list[int], p: float) -> float:
    if not sorted_values:
        return 0.0
    k = min(len(sorted_values) - 1, max(0, round((len(sorted_values) - 1) * p / 100)))
    return float(sorted_values[k])


def check_share(share: float, cap: float | None) -> None:
    if not isinstance(share, int | float) or not 0 <= share <= 100:
        raise E.InvalidArgument(f"compute share must be a percentage 0..100, got {share!r}")
    if cap is not None and (not isinstance(cap, int | float) or not 0 < cap <= 100):
        raise E.InvalidArgument(f"compute cap must be a percentage in (0, 100], got {cap!r}")


def check_scalar(name: str, value, dtype: DType) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise E.BindError(f"scalar {name!r} must be a number")
    if not dtype.is_float:
        if isinstance(value, float) and not value.is_integer():
            raise E.BindError(f"scalar {name!r} is {dtype.value} but got {value!r}")
        bits = 8 * dtype.itemsize
        if not -(2 ** (bits - 1)) <= int(value) < 2 ** (bits - 1):
            raise E.BindError(f"scalar {name!r} = {value} does not fit {dtype.value}")


def tensor_spec(dtype: DType | str, shape: Sequence[int]) -> TensorSpec:
    try:
        dt = dtype if isinstance(dtype, DType) else DType(dtype)
    except ValueError:
        raise E.InvalidArgument(
            f"unknown dtype {dtype!r}; choose one of {', '.join(d.value for d in DType)}") from None
    shape = tuple(shape)
    if len(shape) > primitive_lang.limits.MAX_RANK:
        raise E.InvalidArgument(f"rank {len(shape)} exceeds the limit of {primitive_lang.limits.MAX_RANK}")
    if any(not isinstance(d, int) or isinstance(d, bool) or d < 0 for d in shape):
        raise E.InvalidArgument(f"shape {shape!r} must be non-negative integers")
    n = 1
    for d in shape:
        n *= d
    if n > primitive_lang.limits.MAX_ELEMENTS:
        raise E.InvalidArgument(f"{n} elements exceed the limit of {primitive_lang.limits.MAX_ELEMENTS} per tensor")
    return TensorSpec(dt, shape)


def buffer_info(buf: Buffer) -> BufferInfo:
    return BufferInfo(buf.handle, buf.nbytes, buf.spec.dtype, buf.spec.shape, buf.residency)
