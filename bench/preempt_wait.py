"""Where an urgent launch's wait goes beside a saturating BATCH VM (issue 14, (c)).

    python -m bench.preempt_wait [--backend numpy|cupy|wgpu] [--gpu-stepping auto|on|off]
                                 [--slice-ms MS] [--seconds 3]

An INTERACTIVE VM launches a ~100 µs kernel one at a time (2-8 ms apart) beside a BATCH VM
saturating the device with ~5 ms launches (bench_preempt's isolation scenario, preemption
on). The dispatcher's methods are timed as they run (a wrapper around each: when it
started and ended); for every INTERACTIVE launch, the time each method overlapped its wait
in the queue (enqueue to the end of its preparation, ``queue_ns``) is summed. Printed: the
queue wait's p50/p99 and, per method, its share of the wait (ms per INTERACTIVE launch).

A diagnostic beside bench_preempt, not a benchmark: the wrappers add a few µs per call.
``_close_open`` is a chunk going to the device (a wgpu submission: host time), ``_wait_oldest``
the host waiting for the device's queue to drain below the ahead bound, ``_hold``/``_hold_steps``
the late-bound pick, ``_submit``/``prime`` a launch's first steps being issued.
"""

from __future__ import annotations

# First: importing hypervisor pins BLAS to one thread, which works only before NumPy loads.
import hypervisor  # noqa: F401

# isort: split
import argparse
import random
import time
from collections import Counter

from bench.common import percentile
from bench.hv_load import GuestThread, install, sized_kernel
from hypervisor import Hypervisor, dispatch
from hypervisor.executor import BACKENDS, make_executor, stepping, tiling

METHODS = {dispatch.Dispatcher: ("_issue_steps", "_yield_to_urgent", "_hold_steps", "_hold", "_prepare", "_submit",
                                 "_complete", "_next"),
           stepping.DeviceSteps: ("_wait_oldest", "_close_open", "prime")}


def _timed(spans: list, name: str, fn):
    def wrapper(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(self, *args, **kwargs)
        finally:
            spans.append((name, t0, time.perf_counter()))
    return wrapper


def measure(backend: str, gpu_stepping: str, slice_ms: float | None, seconds: float) -> str:
    ex = make_executor(backend)
    small, batch = sized_kernel(ex, 100e-6), sized_kernel(ex, 5e-3)
    ex.close()
    spans: list[tuple[str, float, float]] = []
    saved = [(cls, n, getattr(cls, n)) for cls, names in METHODS.items() for n in names]
    for cls, n, fn in saved:
        setattr(cls, n, _timed(spans, n, fn))
    waits: list[tuple[float, float]] = []
    chunks: list[tuple[float, float]] = []  # (estimated, device) seconds of each chunk retired
    observe = tiling.CostModel.observe_chunk

    def observe_chunk(model, est, seconds):
        chunks.append((sum(est.values()), seconds))
        return observe(model, est, seconds)

    tiling.CostModel.observe_chunk = observe_chunk
    try:
        hv = Hypervisor(backend=backend, gpu_stepping=gpu_stepping).start()
        if slice_ms is not None:
            hv.dispatcher.time_slice_s = slice_ms / 1000
        try:
            hv.register_vm(1, 4000, 50, default_class="BATCH")
            hv.register_vm(2, 4000, 50, default_class="INTERACTIVE")
            kid, binds = install(hv, 2, small.source)
            load = GuestThread(hv, 1, batch)
            load.prime()
            load.start()
            try:
                time.sleep(0.5)
                spans.clear()
                chunks.clear()  # (the priming launches ran whole: no urgent VM yet)
                rnd, end = random.Random(1), time.perf_counter() + seconds
                while time.perf_counter() < end:
                    t0 = time.perf_counter()
                    res = hv.launch(2, kid, binds).wait()
                    if not res.ok:
                        raise RuntimeError(f"launch failed: {res.status} {res.error}")
                    waits.append((t0, res.queue_ns * 1e-9))
                    time.sleep(rnd.uniform(0.002, 0.008))
            finally:
                load.finish()
        finally:
            hv.stop()
    finally:
        for cls, n, fn in saved:
            setattr(cls, n, fn)
        tiling.CostModel.observe_chunk = observe
    qs = [q for _, q in waits]
    tail_q = percentile(qs, 95)
    tail = [(t0, q) for t0, q in waits if q >= tail_q]
    share, tail_share = _shares(waits, spans), _shares(tail, spans)
    lines = [f"backend {backend}, gpu_stepping {gpu_stepping}, slice {hv.dispatcher.time_slice_s * 1e3:g} ms; "
             f"INTERACTIVE {small.describe()} beside BATCH {batch.describe()}, {len(waits)} launches",
             f"queue wait p50 {percentile(qs, 50) * 1e3:.3f} ms, p99 {percentile(qs, 99) * 1e3:.3f} ms; "
             "by the dispatcher method running meanwhile (ms per INTERACTIVE launch; nested methods count in each):"]
    lines += [f"  {name:18s} {v / max(len(waits), 1) * 1e3:8.3f}   (the slowest 5 %, waits >= {tail_q * 1e3:.2f} ms: "
              f"{tail_share[name] / max(len(tail), 1) * 1e3:.3f})" for name, v in share.most_common()]
    if chunks:
        late = [d / e for e, d in chunks if e > 0]
        lines.append(f"chunks retired: {len(chunks)}; estimated p50/p99 {percentile([e for e, _ in chunks], 50) * 1e3:.3f}/"
                     f"{percentile([e for e, _ in chunks], 99) * 1e3:.3f} ms, on the device p50/p99 "
                     f"{percentile([d for _, d in chunks], 50) * 1e3:.3f}/{percentile([d for _, d in chunks], 99) * 1e3:.3f}"
                     f" ms; device / estimate p50/p90/p99 {percentile(late, 50):.2f}/{percentile(late, 90):.2f}/"
                     f"{percentile(late, 99):.2f}")
    return "\n".join(lines)


def _shares(waits: list[tuple[float, float]], spans: list[tuple[str, float, float]]) -> Counter:
    """Per method, the time it overlapped the given launches' waits in the queue (summed)."""
    share: Counter = Counter()
    for t0, q in waits:
        for name, a, b in spans:
            overlap = min(b, t0 + q) - max(a, t0)
            if overlap > 0:
                share[name] += overlap
    return share


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Where an urgent launch's queue wait goes beside a BATCH VM")
    p.add_argument("--backend", choices=BACKENDS, default="auto")
    p.add_argument("--gpu-stepping", choices=("auto", "on", "off"), default="auto")
    p.add_argument("--slice-ms", type=float, default=None)
    p.add_argument("--seconds", type=float, default=3.0)
    args = p.parse_args(argv)
    print(measure(args.backend, args.gpu_stepping, args.slice_ms, args.seconds))


if __name__ == "__main__":
    main()
