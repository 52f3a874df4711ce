"""The time-slice sweep of bench_preempt (issue 14): what each slice buys the INTERACTIVE
VM and what it costs the BATCH VM, every figure against baselines of the same run.

``python -m bench.bench_preempt --sweep 1,0.5,0.25,0.1 [--backend numpy|wgpu] [--json]``

One hypervisor, one INTERACTIVE VM (bench_preempt's ~100 µs kernel, one launch at a time,
2-8 ms think time) and one saturating BATCH VM (its ~5 ms kernel, a guest thread). The
modes are the slices of the sweep and ``off`` (slice 0: launches run whole, untiled); the
slice is switched on the running hypervisor (``Dispatcher.time_slice_s``, read per launch),
so every mode sees the same VMs, kernels and learned estimates. Rounds, each mode in turn
(the order reversed every other round, so drift on a shared machine hits all modes alike):

1. beside: the INTERACTIVE VM runs ``block_s`` per mode beside the BATCH VM: its client
   latency (p50/p99, the p99 against alone), its wait in the hypervisor's queue, the
   preemptions, and the BATCH VM's launches in the block: completed per second and device
   time per launch (as charged: its own steps only, never the INTERACTIVE launches run
   while it was parked). Against ``off`` that is what tiling and stepping really cost the
   BATCH work beside an urgent VM (its ops are tiled only then);
2. batch alone: the INTERACTIVE VM idle (after ``URGENT_RECENT_S``: no tiling), the BATCH
   VM's device time per launch per mode against ``off``: the cost of the slice checks alone
   (bench_preempt's "BATCH throughput lost to preemption", goal <= 5 %); then the same with
   its ops tiled as if an urgent VM had just run (``Dispatcher._ran_at`` told so; nothing
   preempts it): the cost of the tiles alone, without the preemptions and the INTERACTIVE
   VM's work in the caches between them (the rest of the cost beside);
3. alone: the BATCH VM stopped, the INTERACTIVE VM's latency alone (the denominator).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.common import Report, percentile
from bench.hv_load import GuestThread, Recorder, install
from hypervisor import Hypervisor
from hypervisor.preemption import URGENT_RECENT_S
from scheduler import WorkloadClass

MS = 1e-3
DEFAULT_SWEEP_MS = (1.0, 0.5, 0.25, 0.1)
SETTLE_S = 0.05  # after a slice switch: the launch running under the old slice ends


def parse_sweep(text: str) -> tuple[float, ...]:
    """``"1,0.5,0.25"`` -> slices in ms; each in (0, 1000], no repeats."""
    out = []
    for part in text.split(","):
        ms = float(part)
        if not 0 < ms <= 1000:
            raise ValueError(f"a slice must lie in (0, 1000] ms, got {part!r}")
        if ms in out:
            raise ValueError(f"slice {part!r} given twice")
        out.append(ms)
    if not out:
        raise ValueError("no slices")
    return tuple(out)


def mode_key(ms: float | None) -> str:
    return "off" if ms is None else "slice_" + f"{ms:g}".replace(".", "p") + "ms"


@dataclass
class _Mode:
    slice_s: float
    lat: list[float] = field(default_factory=list)
    queued: list[float] = field(default_factory=list)
    seconds: float = 0.0  # measured beside
    preemptions: int = 0
    batch_done: int = 0  # BATCH launches that ended in the blocks beside
    batch_device: list[float] = field(default_factory=list)  # beside: started and ended in a block
    alone_device: list[float] = field(default_factory=list)  # BATCH alone
    tiled_device: list[float] = field(default_factory=list)  # BATCH alone, its ops tiled


def sweep(report: Report, make_hv: Callable[[float], Hypervisor],
          interactive: Callable[..., list[float]], small, batch, slices_ms: tuple[float, ...], *,
          rounds: int, block_s: float, warmup_s: float, quota_mb: int) -> None:
    modes = {mode_key(None): _Mode(0.0)} | {mode_key(ms): _Mode(ms * MS) for ms in slices_ms}
    alone: list[float] = []
    rnd = random.Random(5)
    hv = make_hv(0.0)
    try:
        hv.register_vm(1, quota_mb, 50, default_class="BATCH")
        hv.register_vm(2, quota_mb, 50, default_class="INTERACTIVE")
        kid, binds = install(hv, 2, small.source)
        interactive(hv, kid, binds, rnd, min(0.3, warmup_s))
        vm1 = GuestThread(hv, 1, batch)
        vm1.prime()
        rec = Recorder(hv, [1, 2])
        vm1.start()
        time.sleep(warmup_s)
        for rnd_i in range(rounds):
            order = list(modes.items())
            if rnd_i % 2:
                order.reverse()
            for _, m in order:  # 1. beside
                hv.dispatcher.time_slice_s = m.slice_s
                interactive(hv, kid, binds, rnd, SETTLE_S)
                t0, p0 = hv.clock(), hv.dispatcher.preemptions
                m.lat += interactive(hv, kid, binds, rnd, block_s, m.queued)
                t1 = hv.clock()
                m.preemptions += hv.dispatcher.preemptions - p0
                m.seconds += t1 - t0
                mine = [r for r in rec.records if r.vm_id == 1 and t0 <= r.ended <= t1]
                m.batch_done += len(mine)
                m.batch_device += [r.device_s for r in mine if r.started >= t0]
            time.sleep(URGENT_RECENT_S + 0.1)  # 2. BATCH alone: no urgent VM lately, no tiling
            for tiled in (False, True):
                if tiled:  # "an INTERACTIVE VM (id 0: none) ran just now", for as long as this lasts
                    hv.dispatcher._ran_at[int(WorkloadClass.INTERACTIVE)][0] = float("inf")
                for _, m in order:
                    hv.dispatcher.time_slice_s = m.slice_s
                    time.sleep(SETTLE_S)
                    t0 = hv.clock()
                    time.sleep(block_s / 2)
                    t1 = hv.clock()
                    (m.tiled_device if tiled else m.alone_device).extend(
                        r.device_s for r in rec.records if r.vm_id == 1 and t0 <= r.started and r.ended <= t1)
            del hv.dispatcher._ran_at[int(WorkloadClass.INTERACTIVE)][0]
            vm1.finish()  # 3. INTERACTIVE alone
            time.sleep(SETTLE_S)
            alone += interactive(hv, kid, binds, rnd, block_s)
            if rnd_i + 1 < rounds:
                vm1.stop_flag.clear()
                vm1.start()
                time.sleep(SETTLE_S)
        rec.close()
    finally:
        hv.stop()
    _report(report, modes, alone, small, batch, rounds, block_s)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def _report(report: Report, modes: dict[str, _Mode], alone: list[float], small, batch, rounds: int,
            block_s: float) -> None:
    report.add("sweep_alone_p50_ms", percentile(alone, 50) / MS, "ms")
    report.add("sweep_alone_p99_ms", percentile(alone, 99) / MS, "ms")
    off = modes["off"]
    report.add("sweep_off_batch_device_ms_per_launch_beside", _mean(off.batch_device) / MS, "ms")
    report.add("sweep_off_batch_device_ms_per_launch_alone", _mean(off.alone_device) / MS, "ms")
    report.add("sweep_off_batch_launches_per_s_beside", off.batch_done / max(off.seconds, 1e-9), "1/s")
    lines = []
    for key, m in modes.items():
        p = f"sweep_{key}_"
        report.add(p + "p50_ms", percentile(m.lat, 50) / MS, "ms", baseline="sweep_alone_p50_ms")
        report.add(p + "p99_ms", percentile(m.lat, 99) / MS, "ms", baseline="sweep_alone_p99_ms",
                   goal="<= x1.2 of alone" if key != "off" else None)
        report.add(p + "queue_p50_ms", percentile(m.queued, 50) / MS, "ms")
        report.add(p + "queue_p99_ms", percentile(m.queued, 99) / MS, "ms")
        report.add(p + "preemptions_per_s", m.preemptions / max(m.seconds, 1e-9), "1/s")
        if key != "off":
            report.add(p + "batch_device_ms_per_launch_beside", _mean(m.batch_device) / MS, "ms",
                       baseline="sweep_off_batch_device_ms_per_launch_beside")
            report.add(p + "batch_launches_per_s_beside", m.batch_done / max(m.seconds, 1e-9), "1/s",
                       baseline="sweep_off_batch_launches_per_s_beside")
            report.add(p + "batch_device_ms_per_launch_alone", _mean(m.alone_device) / MS, "ms",
                       baseline="sweep_off_batch_device_ms_per_launch_alone")
            beside_pct = 100 * (_mean(m.batch_device) / _mean(off.batch_device) - 1)
            alone_pct = 100 * (_mean(m.alone_device) / _mean(off.alone_device) - 1)
            report.add(p + "batch_device_ms_per_launch_alone_tiled", _mean(m.tiled_device) / MS, "ms",
                       baseline="sweep_off_batch_device_ms_per_launch_alone")
            tiled_pct = 100 * (_mean(m.tiled_device) / _mean(off.alone_device) - 1)
            report.add(p + "batch_beside_cost_pct", beside_pct, "%")
            report.add(p + "batch_tiles_alone_cost_pct", tiled_pct, "%")
            report.add(p + "batch_alone_cost_pct", alone_pct, "%", goal="<= 5 %")
        lines.append(f"{key}: p99 x{percentile(m.lat, 99) / percentile(alone, 99):.2f} of alone, queue p50/p99 "
                     f"{percentile(m.queued, 50) / MS:.2f}/{percentile(m.queued, 99) / MS:.2f} ms, "
                     f"{m.preemptions / max(m.seconds, 1e-9):.0f} preemptions/s, BATCH "
                     f"{_mean(m.batch_device) / MS:.2f} ms/launch beside ({len(m.batch_device)}), "
                     f"{m.batch_done / max(m.seconds, 1e-9):.0f}/s, alone {_mean(m.alone_device) / MS:.2f} ms "
                     f"({len(m.alone_device)}), alone tiled {_mean(m.tiled_device) / MS:.2f} ms ({len(m.tiled_device)})")
    report.notes.append(f"sweep: INTERACTIVE {small.describe()} beside BATCH {batch.describe()}; {rounds} rounds of "
                        f"{block_s:g} s per mode beside ({len(alone)} launches alone); BATCH device time = as charged "
                        "(its own steps; NumPy: the dispatcher thread's CPU time), beside = started and ended in a "
                        "block, alone = the INTERACTIVE VM idle for > URGENT_RECENT_S, alone tiled = the same with "
                        "its ops tiled as beside (nothing preempts it); costs against off's")
    report.notes += ["sweep " + line for line in lines]
