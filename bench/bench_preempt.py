"""Latency isolation and launch overhead (issue 14): the issue's table in one run, each
figure against a baseline taken in the same run.
``python -m bench.bench_preempt [--json] [--quick] [--backend auto|numpy|cupy|wgpu] [--slice-ms MS]
[--sweep MS,MS,...]``

- isolation: an INTERACTIVE VM's launches (a ~100 µs kernel, one at a time, 2-8 ms think
  time) alone, then beside a saturating BATCH VM (~5 ms launches) with preemption off
  (``Dispatcher.time_slice_s = 0``: it waits for the running launch) and on (the default
  slice): p99 latency against alone, goal <= x1.2;
- batch: a BATCH VM saturating the device alone, preemption off and on, rounds
  interleaved: the throughput the slicing and tiling cost (goal <= 5 %); and beside the
  INTERACTIVE VM, how much less the BATCH VM completed with preemption on than off;
- shares: two saturated VMs 70/30 (BATCH and INTERACTIVE, the same ~2 ms kernel),
  preemption on: the device-time share error (goal <= 0.5 pp), and an independent one
  (each VM's completed launches over both VMs');
- compiles: VM 1's tiny launches while VM 2 compiles new 63 KiB sources in a loop: before
  (on VM 2's thread, GIL switch interval 5 ms, no budget), inline (pool off: 0.5 ms and the
  per-VM budget), pool (a compile worker process: the default) and the pool without the
  budget (hypervisor/compiling.py); ``--only compiles`` runs just this;
- overhead: a serial caller of ~2 ms launches against the executor called serially
  (goal <= 3 %), through launch().wait() (two thread hand-offs) and through the serial
  fast path (launch_wait: on the caller's thread when the device is idle); and the host
  overhead of a tiny launch, serial and pipelined, against the executor called the same
  way (goal <= 30 µs).
Launches are stepped on NumPy (through the interpreter on the dispatcher's thread) and on
wgpu (chunks of steps kept at most half a slice ahead of the device, executor/stepping.py);
on CuPy only with ``--gpu-stepping on`` (``[scheduler] gpu_stepping``: not yet run on a GPU,
so off by default; without it "on" equals "off" there, preemptions 0). ``--slice-ms`` sets the slice of the "on" runs (default: the
hypervisor's, 1 ms), to measure the isolation a shorter slice buys and what it costs;
``--sweep`` runs bench/preempt_sweep.py instead: isolation and the BATCH cost for each slice
of a list, in one run against the same run's alone and off baselines.
"""

from __future__ import annotations

# First: importing hypervisor pins BLAS to one thread, which works only before NumPy loads.
import hypervisor  # noqa: F401

# isort: split
import gc
import os
import random
import statistics
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass

from bench import preempt_sweep
from bench.common import Report, parser, percentile
from bench.hv_load import TINY_SOURCE, CallbackLoad, DirectRun, GuestThread, Recorder, install, sized_kernel
from hypervisor import Hypervisor, dispatch
from hypervisor.errors import ConfigError
from hypervisor.executor import BACKENDS, make_executor

MS, US = 1e-3, 1e-6
SLICE_S = dispatch.DEFAULT_TIME_SLICE_S  # the "on" runs' time slice (--slice-ms)
PRIORITY_STREAM = False  # --priority-stream: urgent launches on CuPy's priority stream when "on"
GPU_STEPPING = "auto"  # --gpu-stepping: [scheduler] gpu_stepping of every run
QUOTA_MB = 4000
DEPTH = 8


@dataclass(frozen=True)
class Plan:
    quick: bool
    iso_s: float  # seconds of interactive launches per mode
    warmup_s: float
    batch_rounds: int
    batch_s: float  # seconds per batch throughput block
    share_s: float
    overhead_rounds: int
    tiny_n: int
    sweep_rounds: int
    sweep_block_s: float  # seconds per mode per round beside BATCH (--sweep)

    @classmethod
    def make(cls, quick: bool) -> Plan:
        if quick:
            return cls(True, 1.0, 0.3, 2, 0.5, 2.0, 3, 200, 2, 0.4)
        return cls(False, 4.0, 1.0, 5, 2.0, 10.0, 9, 1000, 4, 1.5)


SECTIONS = ("isolation", "batch", "shares", "overhead", "compiles", "sweep")


def _hv(backend: str, slice_s: float) -> Hypervisor:
    hv = Hypervisor(backend=backend, gpu_stepping=GPU_STEPPING).start()
    hv.dispatcher.time_slice_s = slice_s
    if PRIORITY_STREAM and slice_s > 0:
        hv.executor.priority_stream = True
    return hv


def _check(res) -> None:
    if not res.ok:
        raise RuntimeError(f"launch {res.launch_id} failed: {res.status} {res.error}")


# ---------------------------------------------------------------------------- isolation
def isolation(report: Report, backend: str, small, batch, plan: Plan) -> None:
    lat: dict[str, list[float]] = {}
    queued: dict[str, list[float]] = {"off": [], "on": []}
    done: dict[str, float] = {}
    preempted: dict[str, int] = {}
    for mode, slice_s in (("off", 0.0), ("on", SLICE_S)):
        rnd = random.Random(3)
        hv = _hv(backend, slice_s)
        try:
            hv.register_vm(1, QUOTA_MB, 50, default_class="BATCH")
            hv.register_vm(2, QUOTA_MB, 50, default_class="INTERACTIVE")
            kid, binds = install(hv, 2, small.source)
            _interactive(hv, kid, binds, rnd, min(0.3, plan.warmup_s))
            if mode == "off":
                lat["alone"] = _interactive(hv, kid, binds, rnd, plan.iso_s)
            vm1 = GuestThread(hv, 1, batch)
            vm1.prime()
            rec = Recorder(hv, [1])
            vm1.start()
            try:
                time.sleep(plan.warmup_s)
                t0, p0 = hv.clock(), hv.dispatcher.preemptions
                lat[mode] = _interactive(hv, kid, binds, rnd, plan.iso_s, queued[mode])
                t1 = hv.clock()
                preempted[mode] = hv.dispatcher.preemptions - p0
            finally:
                vm1.finish()
            done[mode] = sum(1 for r in rec.records if r.vm_id == 1 and t0 <= r.ended <= t1) / (t1 - t0)
        finally:
            hv.stop()
    report.add("iso_interactive_p50_alone_ms", percentile(lat["alone"], 50) / MS, "ms")
    report.add("iso_interactive_p99_alone_ms", percentile(lat["alone"], 99) / MS, "ms")
    for mode in ("off", "on"):
        report.add(f"iso_interactive_p50_beside_batch_{mode}_ms", percentile(lat[mode], 50) / MS, "ms",
                   baseline="iso_interactive_p50_alone_ms")
        p99 = percentile(lat[mode], 99) / MS
        ratio = p99 / (percentile(lat["alone"], 99) / MS)
        report.add(f"iso_interactive_p99_beside_batch_{mode}_ms", p99, "ms", baseline="iso_interactive_p99_alone_ms",
                   goal="<= x1.2 of alone" if mode == "on" else None,
                   ok=(ratio <= 1.2 if not plan.quick else None) if mode == "on" else None)
        for p in (50, 99):  # where the time goes: the wait in the hypervisor's queue
            report.add(f"iso_interactive_queue_p{p}_{mode}_ms", percentile(queued[mode], p) / MS, "ms")
        report.add(f"iso_preemptions_{mode}", preempted[mode], "")
        report.add(f"iso_batch_launches_per_s_beside_{mode}", done[mode], "1/s",
                   baseline="iso_batch_launches_per_s_beside_off" if mode == "on" else None)
    report.notes.append(f"isolation: INTERACTIVE {small.describe()}, one at a time, 2-8 ms think time "
                        f"({len(lat['alone'])} alone, {len(lat['off'])} off, {len(lat['on'])} on); BATCH "
                        f"{batch.describe()} saturating (a guest thread); preemption on = time slice "
                        f"{SLICE_S * 1e3:g} ms; latency = launch() to wait() in the client")


def _interactive(hv: Hypervisor, kid: int, binds: dict[str, int], rnd: random.Random, seconds: float,
                 queued: list[float] | None = None) -> list[float]:
    """Client latencies of VM 2's launches one at a time, with think time between (so
    arrivals fall anywhere in a running batch launch); ``queued`` gets each one's wait in
    the hypervisor's queue (enqueue to start)."""
    out, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        res = hv.launch(2, kid, binds).wait()
        out.append(time.perf_counter() - t0)
        _check(res)
        if queued is not None:
            queued.append(res.queue_ns * 1e-9)
        time.sleep(rnd.uniform(2 * MS, 8 * MS))
    return out


# ---------------------------------------------------------------------------- batch throughput
def batch_throughput(report: Report, backend: str, batch, plan: Plan) -> None:
    hvs = {"off": _hv(backend, 0.0), "on": _hv(backend, SLICE_S)}
    rates: dict[str, list[float]] = {m: [] for m in hvs}
    device: dict[str, list[float]] = {m: [] for m in hvs}
    try:
        kids = {}
        for mode, hv in hvs.items():
            hv.register_vm(1, QUOTA_MB, 100, default_class="BATCH")
            kids[mode] = install(hv, 1, batch.source)
        n = max(20, int(plan.batch_s / batch.seconds))
        for mode, hv in hvs.items():  # warm-up
            _pipelined(hv, *kids[mode], n // 5)
        for _ in range(plan.batch_rounds):  # interleaved: drift on the machine hits both
            for mode, hv in hvs.items():
                t0 = time.perf_counter()
                device[mode].append(_pipelined(hv, *kids[mode], n) / n)
                rates[mode].append(n / (time.perf_counter() - t0))
    finally:
        for hv in hvs.values():
            hv.stop()
    off, on = statistics.median(rates["off"]), statistics.median(rates["on"])
    report.add("batch_alone_launches_per_s_off", off, "1/s")
    report.add("batch_alone_launches_per_s_on", on, "1/s", baseline="batch_alone_launches_per_s_off")
    report.add("batch_alone_wall_lost_pct", 100 * (1 - on / off), "%")
    d_off, d_on = statistics.median(device["off"]), statistics.median(device["on"])
    report.add("batch_alone_device_ms_per_launch_off", d_off / MS, "ms")
    report.add("batch_alone_device_ms_per_launch_on", d_on / MS, "ms", baseline="batch_alone_device_ms_per_launch_off")
    lost = 100 * (1 - d_off / d_on)
    report.add("batch_throughput_lost_to_preemption_pct", lost, "%", goal="<= 5 %",
               ok=lost <= 5.0 if not plan.quick else None)
    report.notes.append(f"batch: {batch.describe()}, {DEPTH} in flight, medians of {plan.batch_rounds} interleaved "
                        "rounds; on = launches run as steps (checks after each slice; ops tiled only while a more urgent VM "
                        "is about: not here); lost = 1 - device time per launch off / on (the device time "
                        "charged: CPU time of the dispatcher thread on NumPy, robust to other load; the wall "
                        "rate moves with the machine's load)")


def _pipelined(hv: Hypervisor, kernel_id: int, bindings: dict[str, int], n: int) -> float:
    """n launches of VM 1, DEPTH in flight; returns their device seconds (as charged)."""
    q: deque = deque()
    device = 0.0

    def settle(c) -> float:
        res = c.wait()
        _check(res)
        return res.device_ns * 1e-9

    for _ in range(n):
        if len(q) == DEPTH:
            device += settle(q.popleft())
        q.append(hv.launch(1, kernel_id, bindings))
    return device + sum(settle(c) for c in q)


# ---------------------------------------------------------------------------- shares
def shares(report: Report, backend: str, kernel, plan: Plan) -> None:
    vms = [(70, kernel, "BATCH"), (30, kernel, "INTERACTIVE")]
    hv = _hv(backend, SLICE_S)
    loads = []
    try:
        for vm_id, (share, k, wclass) in enumerate(vms, start=1):
            hv.register_vm(vm_id, QUOTA_MB, share, default_class=wclass)
            loads.append(CallbackLoad(hv, vm_id, k))
        for ld in loads:
            ld.prime()
        rec = Recorder(hv, [1, 2])
        for ld in loads:
            ld.start()
        time.sleep(plan.warmup_s)
        t0, p0 = hv.clock(), hv.dispatcher.preemptions
        time.sleep(plan.share_s)
        t1, p1 = hv.clock(), hv.dispatcher.preemptions
        for ld in loads:
            ld.finish()
    finally:
        for ld in loads:
            ld.stop_flag.set()
        hv.stop()
    achieved = rec.device_share(t0, t1)
    work = {v: sum(1 for r in rec.records if r.vm_id == v and t0 <= r.ended <= t1) * k.seconds
            for v, (_, k, _) in enumerate(vms, start=1)}
    total = sum(work.values()) or 1.0
    errs, werrs = [], []
    for v, (share, _, _) in enumerate(vms, start=1):
        report.add(f"share_vm{v}_target_pct", share, "%")
        report.add(f"share_vm{v}_achieved_pct", achieved[v], "%", baseline=f"share_vm{v}_target_pct")
        report.add(f"share_vm{v}_work_pct", 100 * work[v] / total, "%", baseline=f"share_vm{v}_target_pct")
        errs.append(abs(achieved[v] - share))
        werrs.append(abs(100 * work[v] / total - share))
    report.add("share_max_err_pp", max(errs), "pp", goal="<= 0.5 pp", ok=max(errs) <= 0.5 if not plan.quick else None)
    report.add("share_work_max_err_pp", max(werrs), "pp")
    report.add("share_preemptions", p1 - p0, "")
    report.notes.append(f"shares: VM1 70 % BATCH, VM2 30 % INTERACTIVE, both {kernel.describe()} (the same kernel: "
                        f"the independent measure is a count), saturated (completion callbacks), {plan.share_s:g} s, "
                        "preemption on; work = each VM's completed launches over both VMs' (the scheduler never "
                        "sees it; preempted launches count once, when they complete)")


# ---------------------------------------------------------------------------- overhead
def overhead(report: Report, backend: str, big, plan: Plan) -> None:
    hv = _hv(backend, SLICE_S)
    try:
        hv.register_vm(1, QUOTA_MB, 100)
        for key, source, n in (("large", big.source, max(20, int(0.1 / big.seconds))),
                               ("tiny", TINY_SOURCE, plan.tiny_n)):
            direct = DirectRun(hv.executor, source)
            kid, binds = install(hv, 1, source)
            modes = {"direct_serial": lambda n, d=direct: d.wall(n),
                     "direct_pipelined": lambda n, d=direct: d.pipelined(n, DEPTH),
                     "serial": lambda n, k=kid, b=binds: _serial(hv, k, b, n),
                     "serial_here": lambda n, k=kid, b=binds: _serial_here(hv, k, b, n),
                     "pipelined": lambda n, k=kid, b=binds: _pipelined(hv, k, b, n)}
            for fn in modes.values():
                fn(max(5, n // 5))
            wall: dict[str, list[float]] = {m: [] for m in modes}
            for _ in range(plan.overhead_rounds):
                for mode, fn in modes.items():
                    t0 = time.perf_counter()
                    fn(n)
                    wall[mode].append((time.perf_counter() - t0) / n)
            med = {m: statistics.median(v) for m, v in wall.items()}
            for mode in ("serial", "serial_here", "pipelined"):
                ref = "direct_serial" if mode.startswith("serial") else "direct_pipelined"
                if key == "large":
                    report.add(f"overhead_large_{ref}_ms", med[ref] / MS, "ms")
                    report.add(f"overhead_large_{mode}_ms", med[mode] / MS, "ms", baseline=f"overhead_large_{ref}_ms")
                    if mode != "pipelined":
                        pct = 100 * (med[mode] - med[ref]) / med[ref]
                        report.add(f"overhead_large_{mode}_pct", pct, "%", goal="<= 3 %",
                                   ok=pct <= 3.0 if not plan.quick else None)
                else:
                    report.add(f"overhead_tiny_{ref}_us", med[ref] / US, "us")
                    extra = (med[mode] - med[ref]) / US
                    report.add(f"overhead_tiny_{mode}_us", extra, "us", goal="<= 30 us",
                               ok=extra <= 30.0 if not plan.quick else None)
        report.notes.append(f"overhead: large {big.describe()}, tiny ADD of float[16]; serial against the executor "
                            f"called serially (serial = launch().wait(), serial_here = launch_wait, the fast path), pipelined ({DEPTH} in flight) against the executor kept as deep; "
                            f"medians of {plan.overhead_rounds} interleaved rounds; preemption on")
    finally:
        hv.stop()


def _serial(hv: Hypervisor, kernel_id: int, bindings: dict[str, int], n: int) -> None:
    for _ in range(n):
        _check(hv.launch(1, kernel_id, bindings).wait())


def _serial_here(hv: Hypervisor, kernel_id: int, bindings: dict[str, int], n: int) -> None:
    """The serial fast path: launch_wait runs the launch on this thread when the device is idle."""
    for _ in range(n):
        _check(hv.launch_wait(1, kernel_id, bindings))


# ---------------------------------------------------------------------------- compiles
#: The compile modes, in the order each round runs them: quiet (no compile), before (the
#: issue's state: compile on VM 2's thread, GIL switch interval 5 ms, no budget), inline
#: (pool off: on the thread, 0.5 ms, the per-VM budget), pool (a worker process, 0.5 ms,
#: the budget: the default), pool_unbudgeted (the pool with no budget: VM 2 compiles as
#: fast as the worker goes), pool_gc_freeze (the pool with ``[scheduler] compile_gc_freeze``:
#: programs kept out of full collections; the heap is unfrozen again after the mode).
COMPILE_MODES = ("quiet", "before", "inline", "pool", "pool_unbudgeted", "pool_gc_freeze")


def big_source(tag: int, statements: int = 98) -> str:
    """16 kernels of ``2 * statements + 1`` statements, named by ``tag`` (a new source each
    time: the compile cache never hits); 98 gives 63 KiB, just under MAX_SOURCE_BYTES."""
    body = "".join(f"    ADD a b -> t{i}\n    MUL t{i} a -> t{i}\n" for i in range(statements))
    return "".join(f"GPU_KERNEL k{tag}_{k}\nGPU_PARAM a float[64]\nGPU_PARAM b float[64]\nGPU_PARAM c float[64]\n"
                   f"GPU_THREAD_CODE:\n{body}    COPY t0 -> c\nGPU_END\n" for k in range(16))


def compiles(report: Report, backend: str, plan: Plan) -> None:
    """VM 1's tiny launches, one at a time, while VM 2 compiles new 63 KiB sources in a
    loop, in each of COMPILE_MODES; the modes take turns in rounds (a shared machine's
    load changes during the run), each round ``plan.iso_s / 2`` seconds per mode."""
    from hypervisor.compiling import COMPILE_BUDGET_S, GIL_SWITCH_S, Compiler

    lat: dict[str, list[float]] = {m: [] for m in COMPILE_MODES}
    arrival: dict[str, list[float]] = {m: [] for m in COMPILE_MODES}
    done = dict.fromkeys(COMPILE_MODES, 0)
    spent = dict.fromkeys(COMPILE_MODES, 0.0)
    hv = _hv(backend, SLICE_S)
    before_switch = sys.getswitchinterval()
    inline = Compiler(workers=0)
    pool = Compiler(workers=1).start()
    unbudgeted = Compiler(workers=1).start()
    unbudgeted.budget.budget_s = float("inf")
    frozen = Compiler(workers=1, gc_freeze=True).start()
    before = Compiler(workers=0)
    before.budget.budget_s = float("inf")
    compilers = {"before": before, "inline": inline, "pool": pool, "pool_unbudgeted": unbudgeted,
                 "pool_gc_freeze": frozen}
    tag = [0]
    gc_watch = _FullCollections()
    gc.callbacks.append(gc_watch)
    try:
        hv.register_vm(1, QUOTA_MB, 50)
        hv.register_vm(2, QUOTA_MB, 50)
        kid, binds = install(hv, 1, TINY_SOURCE)
        for n, c in enumerate((pool, unbudgeted, frozen)):  # the workers are up and warm
            hv.compiler = c
            for k in hv.compile(2, big_source(10**9 + n, 2)):
                hv.free_kernel(2, k.kernel_id)
        gc.unfreeze()  # the warm-up of pool_gc_freeze froze the heap
        for _ in range(1 if plan.quick else 2):
            for mode in COMPILE_MODES:
                sys.setswitchinterval(0.005 if mode == "before" else GIL_SWITCH_S)
                hv.compiler = compilers.get(mode, inline)
                hv.compiles = hv.compiler.budget
                stop = threading.Event()
                count = [0]

                def compiler(stop=stop, count=count) -> None:
                    while not stop.is_set():
                        tag[0] += 1
                        for k in hv.compile(2, big_source(tag[0])):  # freed: VM 2 stays under its limits
                            hv.free_kernel(2, k.kernel_id)
                        count[0] += 1

                t = threading.Thread(target=compiler, daemon=True) if mode != "quiet" else None
                if t:
                    t.start()
                t0 = time.perf_counter()
                gc_watch.mode = mode
                lat[mode] += _tiny_serial(hv, kid, binds, plan.iso_s / 2, arrival[mode])
                gc_watch.mode = None
                stop.set()
                if t:
                    t.join()
                spent[mode] += time.perf_counter() - t0
                if mode == "pool_gc_freeze":
                    gc.unfreeze()  # the other modes run with the collector as it was
                done[mode] += count[0]
        pool_stats = pool.stats()
        roundtrip(report, pool)
    finally:
        gc.callbacks.remove(gc_watch)
        sys.setswitchinterval(before_switch)
        hv.compiler = inline
        hv.stop()
        for c in compilers.values():
            c.close()
    for p in (50, 99):
        report.add(f"compile_tiny_p{p}_quiet_ms", percentile(lat["quiet"], p) / MS, "ms")
        for mode in COMPILE_MODES[1:]:
            report.add(f"compile_tiny_p{p}_beside_{mode}_ms", percentile(lat[mode], p) / MS, "ms",
                       baseline=f"compile_tiny_p{p}_quiet_ms")
    report.add("compile_tiny_arrival_p99_quiet_ms", percentile(arrival["quiet"], 99) / MS, "ms")
    for mode in COMPILE_MODES[1:]:
        report.add(f"compile_tiny_arrival_p99_beside_{mode}_ms", percentile(arrival[mode], 99) / MS, "ms",
                   baseline="compile_tiny_arrival_p99_quiet_ms")
    report.add("compile_tiny_arrival_max_quiet_ms", max(arrival["quiet"]) / MS, "ms")
    for mode in COMPILE_MODES[1:]:
        report.add(f"compile_tiny_arrival_max_beside_{mode}_ms", max(arrival[mode]) / MS, "ms",
                   baseline="compile_tiny_arrival_max_quiet_ms")
    for mode in COMPILE_MODES[1:]:
        report.add(f"compile_vm2_sources_per_s_{mode}", done[mode] / spent[mode], "1/s")
    for mode in COMPILE_MODES:
        pauses = gc_watch.pauses.get(mode, [])
        report.add(f"compile_gc_full_per_s_{mode}", len(pauses) / spent[mode], "1/s")
        report.add(f"compile_gc_full_max_ms_{mode}", max(pauses, default=0.0) / MS, "ms")
    report.add("compile_pool_worker_cpu_ms_per_source", 1e3 * pool_stats["worker_cpu_seconds"]
               / max(pool_stats["pool"], 1), "ms")
    report.notes.append(f"compiles: VM 1 tiny launches one at a time (2 ms apart) while VM 2 compiles new "
                        f"{len(big_source(0)) // 1024} KiB sources in a loop; before = on VM 2's thread, GIL "
                        f"switch interval 5 ms, no budget; inline = on VM 2's thread (pool off), "
                        f"{GIL_SWITCH_S * 1e3:g} ms, budget {COMPILE_BUDGET_S:g} s of CPU per s; pool = a worker "
                        "process, the same interval and budget (the default); pool_unbudgeted = the pool, no budget; "
                        "pool_gc_freeze = the pool with compile_gc_freeze; "
                        "arrival = from when the launch was due (2 ms after the previous one ended) to its "
                        "end: with the wait for the interpreter lock before launch() could start; "
                        "gc_full = Python's full garbage collections (a pause of the whole process) while "
                        "VM 1 measured")


class _FullCollections:
    """gc callback: the pauses of full (generation 2) collections, by the mode running."""

    def __init__(self) -> None:
        self.mode: str | None = None
        self.pauses: dict[str, list[float]] = {}
        self._t0 = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._t0 = time.perf_counter()
        elif self.mode is not None:
            self.pauses.setdefault(self.mode, []).append(time.perf_counter() - self._t0)


def roundtrip(report: Report, pool) -> None:
    """What a compile costs this process inline and through a worker, by source size (the
    measurement behind INLINE_BYTES): CPU of the calling thread, and the caller's wait."""
    sizes = {"75b": None, "0k5": 20, "2k": 80, "63k": 98}
    gc.disable()  # the cost of each path, without the collections its allocations trigger (measured apart)
    try:
        _roundtrip(report, pool, sizes)
    finally:
        gc.enable()
    report.notes.append(f"compile round trip: sources of {', '.join(sizes)} bytes (75b = the tiny kernel, 0k5 "
                        "~490 B, 2k ~1.9 KiB, 63k 63 KiB): inline = the calling thread's CPU to compile; "
                        "pool_caller = its CPU for the same through a worker (send, wait, rebuild the result); "
                        "pool_wait = its wall time for that; the garbage collector off meanwhile")


def _roundtrip(report: Report, pool, sizes: dict) -> None:
    import hashlib

    import primitive_lang

    for name, n in sizes.items():
        src = (TINY_SOURCE if n is None else big_source(2 * 10**9 + n, n) if name == "63k"
               else "GPU_KERNEL s\nGPU_PARAM a float[64]\nGPU_PARAM b float[64]\nGPU_THREAD_CODE:\n"
               + "".join(f"    ADD a b -> t{i}\n" for i in range(n)) + "    COPY t0 -> b\nGPU_END\n")
        data = src.encode()
        key = hashlib.sha256(data).hexdigest()
        inline, parent, wall = [], [], []
        for _ in range(3 if name == "63k" else 9):
            c0 = time.thread_time()
            primitive_lang.compile_uncached(data, key)
            inline.append(time.thread_time() - c0)
            c0, w0 = time.thread_time(), time.perf_counter()
            pool.pool.run(data, key)
            parent.append(time.thread_time() - c0)
            wall.append(time.perf_counter() - w0)
        report.add(f"compile_{name}_inline_cpu_ms", statistics.median(inline) / MS, "ms")
        report.add(f"compile_{name}_pool_caller_cpu_ms", statistics.median(parent) / MS, "ms",
                   baseline=f"compile_{name}_inline_cpu_ms")
        report.add(f"compile_{name}_pool_wait_ms", statistics.median(wall) / MS, "ms",
                   baseline=f"compile_{name}_inline_cpu_ms")


def _tiny_serial(hv: Hypervisor, kid: int, binds: dict[str, int], seconds: float,
                 from_arrival: list[float] | None = None) -> list[float]:
    """Latencies, launch() to wait() returning. ``from_arrival`` gets each launch's time
    from when it was due (2 ms after the previous one ended): that includes the wait for
    the interpreter lock before launch() could even start (a collection, a long C call)."""
    out, end = [], time.perf_counter() + seconds
    due = time.perf_counter()
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        _check(hv.launch(1, kid, binds).wait())
        t1 = time.perf_counter()
        out.append(t1 - t0)
        if from_arrival is not None:
            from_arrival.append(t1 - due)
        time.sleep(2 * MS)
        due = t1 + 2 * MS
    return out


def main(argv: list[str] | None = None) -> None:
    p = parser("Latency isolation and launch overhead (issue 14): preemption off and on, in one run")
    p.add_argument("--backend", choices=BACKENDS, default="auto", help="executor backend (default auto)")
    p.add_argument("--slice-ms", type=float, default=None,
                   help="time slice of the runs with preemption on (default: the hypervisor's)")
    p.add_argument("--gpu-stepping", choices=("auto", "on", "off"), default="auto",
                   help="[scheduler] gpu_stepping: GPU launches as steps (auto: wgpu yes, CuPy not yet)")
    p.add_argument("--priority-stream", action="store_true",
                   help="CuPy: with preemption on, urgent launches go on a priority stream (an experiment)")
    p.add_argument("--only", choices=SECTIONS, action="append",
                   help="run only this section (may be given more than once; default: all but sweep)")
    p.add_argument("--sweep", default=None, metavar="MS,MS,...",
                   help="the slice sweep (bench/preempt_sweep.py) over these slices; alone, unless --only "
                        f"adds sections (--only sweep: {','.join(f'{s:g}' for s in preempt_sweep.DEFAULT_SWEEP_MS)})")
    args = p.parse_args(argv)
    try:
        sweep_ms = preempt_sweep.DEFAULT_SWEEP_MS if args.sweep is None else preempt_sweep.parse_sweep(args.sweep)
    except ValueError as exc:
        p.error(f"--sweep: {exc}")
    if args.priority_stream and args.backend != "cupy":
        p.error("--priority-stream needs --backend cupy")
    if args.slice_ms is not None and not 0 < args.slice_ms <= 1000:
        p.error("--slice-ms must lie in (0, 1000]")
    global SLICE_S, PRIORITY_STREAM, GPU_STEPPING  # this run's (main() may run more than once in a process)
    PRIORITY_STREAM = args.priority_stream
    GPU_STEPPING = args.gpu_stepping
    SLICE_S = dispatch.DEFAULT_TIME_SLICE_S if args.slice_ms is None else args.slice_ms * MS
    try:
        executor = make_executor(args.backend)
    except ConfigError as exc:
        p.error(str(exc))
    sections = set(args.only or ()) | ({"sweep"} if args.sweep else set()) or set(SECTIONS) - {"sweep"}
    plan = Plan.make(args.quick)
    report = Report("preempt")
    report.notes.append(f"preemption on: time slice {SLICE_S * 1e3:g} ms, gpu_stepping {GPU_STEPPING}"
                        + (", urgent launches on CuPy's priority stream" if PRIORITY_STREAM else ""))
    report.notes.append(f"backend {executor.name} ({executor.info().device_name}); load average at start "
                        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    started = time.perf_counter()
    if sections - {"compiles"}:
        small = sized_kernel(executor, 100 * US)
        big, batch = sized_kernel(executor, 2 * MS), sized_kernel(executor, 5 * MS)
    name = executor.name
    executor.close()
    if "isolation" in sections:
        isolation(report, name, small, batch, plan)
    if "batch" in sections:
        batch_throughput(report, name, batch, plan)
    if "shares" in sections:
        shares(report, name, big, plan)
    if "overhead" in sections:
        overhead(report, name, big, plan)
    if "compiles" in sections:
        compiles(report, name, plan)
    if "sweep" in sections:
        preempt_sweep.sweep(report, lambda s: _hv(name, s), _interactive, small, batch, sweep_ms,
                            rounds=plan.sweep_rounds, block_s=plan.sweep_block_s, warmup_s=plan.warmup_s,
                            quota_mb=QUOTA_MB)
    if plan.quick:
        report.notes.append("--quick: short runs, goals shown but not judged")
    report.notes.append(f"ran in {time.perf_counter() - started:.1f} s")
    report.emit(args.json)


if __name__ == "__main__":
    main()
