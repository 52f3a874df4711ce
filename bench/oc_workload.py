"""The workload of the overcommit benchmark (bench_overcommit): a stack of layers
``y = tanh(x @ W_i)`` held by one VM of a real Hypervisor, run pass after pass, each pass
submitted as a whole so that the scheduler's look-ahead sees its launches.

A VM holds L weight matrices W_i (float32 N x N) and, per batch size B, a kernel and two
activation buffers (float32 B x N) that the layers read and write in turn (ping-pong).
``drive`` keeps whole passes in flight for one or several such VMs and records when each
pass ends. The measurements taken beside the hypervisor (copy peak, serial copy of a
pass, an explicit copy-then-compute baseline, copy durations) are in bench/oc_measure.py.
"""

from __future__ import annotations

# First: importing hypervisor pins BLAS to one thread, which works only before NumPy loads.
import hypervisor  # noqa: F401

# isort: split
import queue
import time
from collections.abc import Callable, Sequence

import numpy as np

from hypervisor import Completion, Hypervisor
from hypervisor.core import MAX_INFLIGHT_PER_VM
from primitive_lang.ast import DType

F32 = DType("float32")
ITEM = 4  # bytes of a float32
# Whole passes one VM keeps queued: two, so that the look-ahead at the end of a pass
# already sees the next one (as a training loop that queues ahead would), within the
# hypervisor's limit of launches in flight per VM.
PASSES_IN_FLIGHT = 2
# A pass that has not ended after this long means the hypervisor is stuck: fail loudly.
PASS_TIMEOUT_S = 300.0


def layer_source(batch: int, n: int) -> str:
    """One layer: h = x @ w (a temporary of B x N), y = tanh(h)."""
    return (f"GPU_KERNEL layer_b{batch}_n{n}\n"
            "GPU_CLASS THROUGHPUT\n"
            f"GPU_PARAM x float[{batch}, {n}]\nGPU_PARAM w float[{n}, {n}]\nGPU_PARAM y float[{batch}, {n}]\n"
            "GPU_THREAD_CODE:\n"
            "    PARALLEL_MATMUL x w -> h\n"
            "    TANH h -> y\n"
            "GPU_END\n")


def layer_bytes(n: int) -> int:
    return n * n * ITEM


def act_bytes(batch: int, n: int) -> int:
    """One activation buffer; a launch's temporary (h) is the same size."""
    return batch * n * ITEM


def weight_matrix(n: int, seed: int = 0) -> np.ndarray:
    """Scaled so that tanh(x @ W) keeps activations in (-1, 1), away from slow paths."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, n), dtype=np.float32) / np.float32(np.sqrt(n))).astype(np.float32)


def input_rows(batch: int, n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (batch, n)).astype(np.float32)


def vm_bytes(n: int, layers: int, batches: Sequence[int]) -> int:
    """Everything one LayerStack allocates, plus the largest launch's temporary."""
    return layers * layer_bytes(n) + sum(2 * act_bytes(b, n) for b in batches) + act_bytes(max(batches), n)


class LayerStack:
    """One VM of ``hv`` with L layers. Activations are allocated first, so that they are
    on the device when the weights start spilling to host memory."""

    def __init__(self, hv: Hypervisor, vm_id: int, n: int, layers: int, batches: Sequence[int], *,
                 share: float = 100.0, weight: np.ndarray | None = None):
        self.hv, self.vm_id, self.n, self.layers = hv, vm_id, n, layers
        # Quota: what it allocates plus one more temporary (admission counts a queued
        # launch's temporaries beside the running launch's); the quota is not under test.
        quota = vm_bytes(n, layers, batches) + act_bytes(max(batches), n)
        hv.register_vm(vm_id, 0, share, memory_quota_bytes=quota)
        w = weight if weight is not None else weight_matrix(n)
        self.kernels: dict[int, int] = {}
        self.acts: dict[int, tuple[int, int]] = {}
        for b in batches:
            self.kernels[b] = hv.compile(vm_id, layer_source(b, n))[0].kernel_id
            pair = tuple(hv.alloc(vm_id, "float32", (b, n)).handle for _ in range(2))
            hv.write(vm_id, pair[0], 0, memoryview(input_rows(b, n, seed=vm_id)).cast("B"))
            self.acts[b] = pair
        self.weights = []
        for _ in range(layers):
            h = hv.alloc(vm_id, "float32", (n, n)).handle
            hv.write(vm_id, h, 0, memoryview(w).cast("B"))
            self.weights.append(h)

    @property
    def passes_in_flight(self) -> int:
        return max(1, min(PASSES_IN_FLIGHT, MAX_INFLIGHT_PER_VM // self.layers))

    def submit_pass(self, batch: int, on_end: Callable[[float], None]) -> list[Completion]:
        """Queue one pass (L launches, in order); ``on_end(perf_counter)`` runs on the
        dispatcher thread when its last launch completes."""
        kid, (a0, a1) = self.kernels[batch], self.acts[batch]
        acts = (a0, a1)
        out = [self.hv.launch(self.vm_id, kid, {"x": acts[i % 2], "w": h, "y": acts[(i + 1) % 2]})
               for i, h in enumerate(self.weights)]
        out[-1].add_done_callback(lambda _c: on_end(time.perf_counter()))
        return out

    def host_copies(self) -> list[np.ndarray]:
        """The host backing arrays of the weights (read-only use: the serial-copy and
        explicit-offload baselines copy from the very memory the hypervisor copies from).
        Every weight has one once a pass has run with the pool overcommitted."""
        with self.hv._lock:
            bufs = [self.hv.memory.lookup(self.vm_id, 0, h) for h in self.weights]
            if any(b.host is None for b in bufs):
                raise RuntimeError(f"VM {self.vm_id}: some weights have no host copy yet; run a pass first")
            return [b.host for b in bufs]

    def counters(self) -> dict[str, float]:
        """Cumulative figures of this VM from the hypervisor's stats: host->device bytes,
        launches that found their buffers on the device or on their way (hits) or not
        (misses), seconds the device stalled for its buffers, and device seconds."""
        st = self.hv.stats(self.vm_id)
        return {"h2d_bytes": st.extra["h2d_bytes"], "hits": st.extra["prefetch_hits"],
                "misses": st.extra["prefetch_misses"], "stall_s": st.extra["stall_seconds"],
                "device_s": st.device_seconds_total}


def drive(jobs: Sequence[tuple[LayerStack, int]], passes: int) -> list[list[float]]:
    """Run ``passes`` passes of each (stack, batch), all at once, each VM keeping
    ``passes_in_flight`` passes queued; returns each job's pass end times (perf_counter).
    Raises if any launch failed."""
    ended: queue.Queue[tuple[int, float]] = queue.Queue()
    ends: list[list[float]] = [[] for _ in jobs]
    submitted = [0] * len(jobs)
    completions: list[Completion] = []

    def submit(i: int) -> None:
        stack, batch = jobs[i]
        completions.extend(stack.submit_pass(batch, lambda t, i=i: ended.put((i, t))))
        submitted[i] += 1

    for i, (stack, _) in enumerate(jobs):
        for _ in range(min(stack.passes_in_flight, passes)):
            submit(i)
    for _ in range(len(jobs) * passes):
        try:
            i, t = ended.get(timeout=PASS_TIMEOUT_S)
        except queue.Empty:
            raise RuntimeError(f"a pass did not end within {PASS_TIMEOUT_S:g} s: the hypervisor is stuck") from None
        ends[i].append(t)
        if submitted[i] < passes:
            submit(i)
    failed = [c.result for c in completions if c.result is None or not c.result.ok]
    if failed:
        r = failed[0]
        raise RuntimeError(f"{len(failed)} launches failed; first: {r.status if r else 'no result'} "
                           f"{r.error if r else ''}")
    return ends


def per_pass(ends: list[float], warmup: int) -> float:
    """Seconds per pass after the first ``warmup`` (>= 1) passes: steady state, end to end."""
    if warmup < 1 or len(ends) <= warmup:
        raise ValueError(f"need at least one warm-up pass and one more, got {len(ends)} passes, warm-up {warmup}")
    return (ends[-1] - ends[warmup - 1]) / (len(ends) - warmup)


def disable_prefetch(hv: Hypervisor) -> None:
    """The modes without prefetch: the hypervisor's own switch ([memory] prefetch = false).
    Eviction (LRU), demand fetch and the look-ahead's protection are unchanged."""
    hv.prefetch.enabled = False
