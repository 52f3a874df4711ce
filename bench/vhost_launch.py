"""One LAUNCH at a time through the vhost-user device (bench_vhost's LAUNCH figures): the
round trip of an empty launch (a one-element COPY, the guest bench's ``empty_launch``) with
the LAUNCH fast path off (every LAUNCH handed to the VM's worker, then to the dispatch
thread, its completion handed back to the loop: the baseline) and on (submitted from the
loop thread and, the device being idle, run there: device.py "LAUNCH on the loop thread"),
rounds of the two interleaved, medians.

``phases``: where the time of one round trip goes, each mode measured on its own, by
timestamps taken (perf_counter, the same clock in every thread) at the points a LAUNCH
passes: the front-end's kick, the loop thread serving the chain, the worker starting the
command, ``Hypervisor.launch`` entered and returned, the dispatcher preparing the launch
(picked), the completion delivered (the executor done, the charge made), the loop taking
the completion, the used element pushed, the call eventfd signalled, the front-end seeing
the used element. The wrappers cost about a microsecond each and are only installed for
that part.
"""

from __future__ import annotations

import time
from collections import defaultdict
from itertools import pairwise

from bench.common import Report, median

NOP = b"""GPU_KERNEL nop
GPU_PARAM x float[1]
GPU_PARAM y float[1]
GPU_THREAD_CODE:
    COPY x -> y
GPU_END
"""
#: The points, in the order a LAUNCH passes them (the ones a mode does not pass are absent).
POINTS = ("kick", "loop_serves_chain", "worker_starts_command", "hv_launch_entered", "hv_launch_returned",
          "dispatcher_picked", "completion_delivered", "loop_takes_completion", "used_pushed",
          "call_signalled", "frontend_sees_used")


class _Launcher:
    def __init__(self, fe, kernel_id: int, x: int, y: int):
        from virtio_backend.gpu import guest as g
        from virtio_backend.wire import PxosCmdType as T
        self.fe, self.g, self.T = fe, g, T
        self.req = g.launch(kernel_id, [g.bind_buffer("x", x), g.bind_buffer("y", y)])
        self.size = g.response_size(T.PXOS_CMD_LAUNCH)

    def once(self, stamp=None) -> dict:
        fe = self.fe
        fe.submit(0, out=[self.req], in_=[self.size])
        if stamp is not None:
            stamp("kick")
        fe.kick(0, force=True)
        [used] = fe.wait_used(0)
        if stamp is not None:
            stamp("frontend_sees_used")
        r = self.g.parse_response(self.T.PXOS_CMD_LAUNCH, used.data)
        if r["status"] != 0:
            raise RuntimeError(f"LAUNCH failed: {r.get('message')}")
        return r


def measure(report: Report, fe, transport, vm_id: int, quick: bool) -> None:
    from virtio_backend.gpu import guest as g
    from virtio_backend.wire import PxosCmdType as T
    from virtio_backend.wire import PxosDtype

    def call(cmd_type, req):
        fe.submit(0, out=[req], in_=[g.response_size(cmd_type)])
        fe.kick(0, force=True)
        r = g.parse_response(cmd_type, fe.wait_used(0)[0].data)
        if r["status"] != 0:
            raise RuntimeError(f"{T(cmd_type).name} failed: {r.get('message')}")
        return r

    kid = call(T.PXOS_CMD_COMPILE, g.compile(NOP))["kernels"][0]["kernel_id"]
    x, y = (call(T.PXOS_CMD_ALLOC, g.alloc(PxosDtype.PXOS_DTYPE_FLOAT32, [1]))["handle"] for _ in range(2))
    launcher = _Launcher(fe, kid, x, y)
    on = transport.inline_launch_max_s or 0.0005
    modes = {"handoff": 0.0, "fast": on}
    rounds, per = (3, 100) if quick else (7, 300)
    rtt: dict[str, list[float]] = defaultdict(list)
    host_total: dict[str, list[float]] = defaultdict(list)
    host_queue: dict[str, list[float]] = defaultdict(list)
    for _ in range(rounds):
        for mode, bound in modes.items():
            transport.set_inline_launch(bound)
            for _ in range(20):  # warm-up
                launcher.once()
            times, totals, queues = [], [], []
            for _ in range(per):
                t = time.perf_counter()
                r = launcher.once()
                times.append(time.perf_counter() - t)
                totals.append(r["total_ns"] / 1e3)
                queues.append(r["queue_ns"] / 1e3)
            rtt[mode].append(median(times) * 1e6)
            host_total[mode].append(median(totals))
            host_queue[mode].append(median(queues))
    transport.set_inline_launch(on)
    report.add("gpu_launch_rtt_handoff_us", median(rtt["handoff"]), "us")
    report.add("gpu_launch_rtt_us", median(rtt["fast"]), "us", baseline="gpu_launch_rtt_handoff_us")
    report.add("gpu_launch_one_at_a_time_handoff_per_s", 1e6 / median(rtt["handoff"]), "launch/s")
    report.add("gpu_launch_one_at_a_time_per_s", 1e6 / median(rtt["fast"]), "launch/s",
               baseline="gpu_launch_one_at_a_time_handoff_per_s")
    for mode, suffix in (("handoff", "_handoff"), ("fast", "")):
        report.add(f"gpu_launch_backend{suffix}_us", median(host_total[mode]), "us")
        report.add(f"gpu_launch_backend_queue{suffix}_us", median(host_queue[mode]), "us")
    report.notes.append(f"gpu_launch_*: one empty LAUNCH per kick, {rounds} interleaved rounds of {per} per mode "
                        "(handoff: fast path off; fast: on), medians; backend = the daemon's total_ns")
    for mode, bound in modes.items():
        transport.set_inline_launch(bound)
        for name, us in phases(launcher, 60 if quick else 300).items():
            report.add(f"gpu_launch_phase_{mode}_{name}_us", us, "us")
    transport.set_inline_launch(on)


def phases(launcher: _Launcher, n: int) -> dict[str, float]:
    """Median microseconds between consecutive points a LAUNCH passes (see the module
    docstring), over ``n`` launches one at a time."""
    from hypervisor.core import Hypervisor
    from hypervisor.dispatch import Dispatcher
    from virtio_backend.gpu.control import PxosControl
    from virtio_backend.gpu.device import GpuDevice
    from virtio_backend.vhost_user.virtqueue import Virtqueue

    seen: dict[str, float] = {}
    clock = time.perf_counter

    def stamp(point: str) -> None:
        seen.setdefault(point, clock())

    def wrap(cls, name: str, before: str | None = None, after: str | None = None, only=None):
        orig = getattr(cls, name)

        def wrapper(*args, **kw):
            if before is not None and (only is None or only(args)):
                stamp(before)
            out = orig(*args, **kw)
            if after is not None and (only is None or only(args)):
                stamp(after)
            return out

        setattr(cls, name, wrapper)
        return cls, name, orig

    patched = [
        wrap(GpuDevice, "_serve", before="loop_serves_chain"),
        wrap(PxosControl, "handle", before="worker_starts_command"),
        wrap(Hypervisor, "launch", before="hv_launch_entered", after="hv_launch_returned"),
        wrap(Dispatcher, "_prepare", before="dispatcher_picked"),
        wrap(Dispatcher, "_deliver", before="completion_delivered"),
        wrap(GpuDevice, "_launch_done", before="loop_takes_completion"),
        wrap(Virtqueue, "push", before="used_pushed"),
    ]
    # The call eventfd: stamped just before the write (after it, the front-end may already
    # have run on and begun the next launch).
    from virtio_backend.vhost_user import notifiers
    orig_signal = notifiers.signal

    def signal(fd: int):
        stamp("call_signalled")
        return orig_signal(fd)

    notifiers.signal = signal
    patched.append((notifiers, "signal", orig_signal))
    gaps: dict[str, list[float]] = defaultdict(list)
    try:
        for _ in range(20):
            launcher.once()
        for _ in range(n):
            seen.clear()
            launcher.once(stamp)
            path = [(p, seen[p]) for p in POINTS if p in seen]
            path.sort(key=lambda pt: pt[1])
            for (a, ta), (b, tb) in pairwise(path):
                gaps[f"{a}__{b}"].append((tb - ta) * 1e6)
            gaps["total"].append((seen["frontend_sees_used"] - seen["kick"]) * 1e6)
    finally:
        for cls, name, orig in reversed(patched):
            setattr(cls, name, orig)
    # Keep the steps every launch passed (a gap seen in most launches), in path order.
    return {k: median(v) for k, v in gaps.items() if len(v) >= n // 2}
