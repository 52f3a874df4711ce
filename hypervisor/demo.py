"""`pxos-hvd demo`: the daemon in-process, three VMs sharing the device, live.

The seed's three VMs (8000 MB each; shares 50, 30, 20) each keep the device busy with
their own kind of work: VM 1 training-like BATCH matmuls, VM 2 INTERACTIVE small
kernels, VM 3 THROUGHPUT elementwise work. Every second a line shows what the scheduler
decided; at the end a table (or, with --json, one object) shows each VM's share target
against the share of busy device time it achieved, its launches and latency, and the
VM switch time.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass

import numpy as np

from . import errors as E
from .core import Hypervisor
from .types import Event


@dataclass(frozen=True)
class Workload:
    vm_id: int
    name: str
    share: float
    wclass: str
    source: str
    inputs: dict[str, tuple[int, ...]]
    outputs: dict[str, tuple[int, ...]]
    depth: int  # launches kept in flight


def workloads(backend: str) -> list[Workload]:
    big = backend == "cupy"
    n = 2048 if big else 192  # matmul size: ~1-3 ms per launch either way
    m = 1 << 22 if big else 1 << 16  # elementwise length
    return [
        Workload(1, "train", 50, "BATCH", f"""
GPU_KERNEL train_step
GPU_CLASS BATCH
GPU_PARAM w float[{n}, {n}]
GPU_PARAM x float[{n}, {n}]
GPU_PARAM y float[{n}, {n}]
GPU_THREAD_CODE:
    PARALLEL_MATMUL x w -> h
    RELU h -> h
    PARALLEL_MATMUL h w -> y
GPU_END
""", {"w": (n, n), "x": (n, n)}, {"y": (n, n)}, 4),
        Workload(2, "chat", 30, "INTERACTIVE", """
GPU_KERNEL respond
GPU_CLASS INTERACTIVE
GPU_PARAM q float[64, 64]
GPU_PARAM k float[64, 64]
GPU_PARAM out float[64, 64]
GPU_THREAD_CODE:
    TRANSPOSE k -> kt
    PARALLEL_MATMUL q kt -> s
    SOFTMAX s -> p
    PARALLEL_MATMUL p k -> out
GPU_END
""", {"q": (64, 64), "k": (64, 64)}, {"out": (64, 64)}, 8),
        Workload(3, "etl", 20, "THROUGHPUT", f"""
GPU_KERNEL transform
GPU_CLASS THROUGHPUT
GPU_PARAM a float[{m}]
GPU_PARAM b float[{m}]
GPU_PARAM c float[{m}]
GPU_THREAD_CODE:
    MUL a b -> t
    ADD t 1.0 -> t
    SQRT t -> t
    RELU t -> c
GPU_END
""", {"a": (m,), "b": (m,)}, {"c": (m,)}, 4),
    ]


class _Submitter(threading.Thread):
    """Keeps `depth` launches of one VM in flight until told to stop."""

    def __init__(self, hv: Hypervisor, wl: Workload, stop: threading.Event):
        super().__init__(name=f"demo-vm{wl.vm_id}", daemon=True)
        self.hv, self.wl, self.stop_flag = hv, wl, stop
        self.errors: Counter[str] = Counter()
        rng = np.random.default_rng(wl.vm_id)
        kernel = hv.compile(wl.vm_id, wl.source)[0]
        self.kernel_id = kernel.kernel_id
        self.bindings: dict[str, int] = {}
        for name, shape in {**wl.inputs, **wl.outputs}.items():
            buf = hv.alloc(wl.vm_id, "float32", shape)
            if name in wl.inputs:
                hv.write(wl.vm_id, buf.handle, 0, rng.random(shape, dtype=np.float32).tobytes())
            self.bindings[name] = buf.handle

    def run(self) -> None:
        inflight: deque = deque()
        while not self.stop_flag.is_set():
            while len(inflight) < self.wl.depth:
                try:
                    inflight.append(self.hv.launch(self.wl.vm_id, self.kernel_id, self.bindings))
                except E.Busy:
                    break
            res = inflight.popleft().wait()
            if not res.ok:
                self.errors[res.status] += 1
        for c in inflight:
            c.wait()


def run_demo(duration: float, backend: str, quiet: bool, out=sys.stdout) -> dict:
    hv = Hypervisor(backend=backend).start()
    picks: Counter[int] = Counter()
    lock = threading.Lock()

    def on_event(ev: Event) -> None:
        if ev.kind == "launch_completed" and ev.detail["status"] == "PXOS_S_OK":
            with lock:
                picks[ev.vm_id] += 1

    hv.subscribe(on_event)
    wls = workloads(hv.executor.name)
    for wl in wls:
        hv.register_vm(wl.vm_id, 8000, wl.share, name=wl.name, default_class=wl.wclass)
    stop = threading.Event()
    subs = [_Submitter(hv, wl, stop) for wl in wls]
    if not quiet:
        print(f"pxos demo: backend {hv.executor.name} ({hv.device_info().device_name}), "
              f"{len(wls)} VMs, {duration:g} s", file=out)
        for wl in wls:
            print(f"  VM {wl.vm_id} {wl.name:<6} share {wl.share:>3g}%  {wl.wclass:<11} "
                  f"{wl.source.split()[1]}", file=out)
    base = {wl.vm_id: 0.0 for wl in wls}
    t0 = time.monotonic()
    for s in subs:
        s.start()
    try:
        while (now := time.monotonic()) - t0 < duration:
            time.sleep(min(1.0, duration - (now - t0)))
            if quiet:
                continue
            stats = {s.vm_id: s for s in hv.all_stats()}
            with lock:
                window, _ = dict(picks), picks.clear()
            busy = sum(stats[v].device_seconds_total for v in stats) or 1e-9
            parts = [f"VM{v}:{window.get(v, 0):>4} runs {100 * stats[v].device_seconds_total / busy:5.1f}% "
                     f"q{stats[v].queue_depth}" for v in sorted(stats)]
            print(f"[{time.monotonic() - t0:5.1f}s] " + " | ".join(parts), file=out)
    finally:
        stop.set()
        for s in subs:
            s.join(timeout=30)
    result = summarize(hv, wls, base)
    result["errors"] = {wl.vm_id: dict(s.errors) for wl, s in zip(wls, subs, strict=True) if s.errors}
    hv.stop()
    return result


def summarize(hv: Hypervisor, wls: list[Workload], base: dict[int, float]) -> dict:
    stats = {s.vm_id: s for s in hv.all_stats()}
    busy = sum(stats[w.vm_id].device_seconds_total - base[w.vm_id] for w in wls) or 1e-9
    gaps = sorted(hv.dispatcher.switch_gaps)
    vms = []
    for w in wls:
        s = stats[w.vm_id]
        vms.append({
            "id": w.vm_id, "name": w.name, "class": w.wclass,
            "share_target": w.share,
            "share_achieved": round(100 * (s.device_seconds_total - base[w.vm_id]) / busy, 2),
            "launches": s.launches_total,
            "latency_ms": {"p50": round(s.latency_p50_ms, 3), "p99": round(s.latency_p99_ms, 3)},
        })
    return {
        "backend": hv.executor.name,
        "device": hv.device_info().device_name,
        "busy_seconds": round(busy, 3),
        "vms": vms,
        "vm_switch_us": {"p50": round(_pct(gaps, 50) * 1e6, 1), "p99": round(_pct(gaps, 99) * 1e6, 1),
                         "count": hv.dispatcher.switches},
    }


def _pct(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    return values[min(len(values) - 1, round((len(values) - 1) * p / 100))]


def print_table(r: dict, out=sys.stdout) -> None:
    print(f"\nbackend {r['backend']} ({r['device']}), busy device time {r['busy_seconds']} s", file=out)
    print(f"{'VM':>3} {'name':<6} {'class':<11} {'target':>7} {'achieved':>9} {'launches':>9} "
          f"{'p50 ms':>8} {'p99 ms':>8}", file=out)
    for v in r["vms"]:
        print(f"{v['id']:>3} {v['name']:<6} {v['class']:<11} {v['share_target']:>6g}% {v['share_achieved']:>8.2f}% "
              f"{v['launches']:>9} {v['latency_ms']['p50']:>8.3f} {v['latency_ms']['p99']:>8.3f}", file=out)
    sw = r["vm_switch_us"]
    print(f"VM switches: {sw['count']}, gap p50 {sw['p50']} us, p99 {sw['p99']} us", file=out)
    if r.get("errors"):
        print(f"errors: {r['errors']}", file=out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="pxos-hvd demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=10.0, metavar="S", help="seconds to run (default 10)")
    p.add_argument("--backend", choices=["auto", "numpy", "cupy", "wgpu"], default="auto")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = p.parse_args(argv)
    if args.duration <= 0:
        p.error("--duration must be positive")
    result = run_demo(args.duration, args.backend, quiet=args.json)
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
    else:
        print_table(result)
    return 0
