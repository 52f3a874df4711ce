"""The inline LAUNCH check with many VMs registered (issue 14, transports): a LAUNCH run on
a vhost loop thread (``Hypervisor.launch_nowait``) first checks, under the hypervisor's
lock, that it is the device's only launch (preemption.py ``_alone_and_ready``). That check
summed every VM's in-flight count (O(VMs) under the lock); it now reads the device's kept
count (``Hypervisor.launches_in_flight``).

    python -m bench.bench_inline_count [--json] [--quick]

One VM runs tiny launches one at a time through ``launch_nowait`` (each runs inline), with
0 or 999 more VMs registered and idle. Two checks take turns in interleaved rounds in this
process: ``sum`` (the former check, installed on the dispatcher for the measurement) and
``count`` (the code as it is). Figures: the median launch_nowait round trip, and the check
alone under the lock (timed by wrapping it), per VM count and check; ratios against the
same check with 1 VM."""

from __future__ import annotations

import time
import types

from bench.common import Report, median, parser
from bench.hv_load import TINY_SOURCE, install
from hypervisor import Hypervisor


def _sum_check(self, own) -> bool:
    """The former _alone_and_ready: every VM's in-flight count summed under the lock."""
    hv = self.hv
    if sum(vm.inflight for vm in hv._vms.values()) != 1:
        return False
    return hv.memory.launch_ready(own.unique_buffers(), own.temp_bytes)


def _timed(check, spent: list[float]):
    def wrapper(self, own) -> bool:
        t = time.perf_counter()
        ok = check(self, own)
        spent.append(time.perf_counter() - t)
        return ok
    return wrapper


def run(quick: bool) -> Report:
    from hypervisor.preemption import Preemption

    r = Report("inline_count")
    rounds, per = (3, 300) if quick else (7, 2000)
    rtt: dict[tuple[int, str], list[float]] = {}
    chk: dict[tuple[int, str], list[float]] = {}
    for vms in (1, 1000):
        with Hypervisor(backend="numpy") as hv:
            hv.register_vm(1, 16, 50)
            for v in range(2, vms + 1):
                hv.register_vm(v, 1, 0.01)
            kid, binds = install(hv, 1, TINY_SOURCE)
            d = hv.dispatcher
            while d._device.locked():  # the dispatch thread waits for work: the device is free
                time.sleep(0.001)
            for _ in range(rounds):
                for name, check in (("sum", _sum_check), ("count", Preemption._alone_and_ready)):
                    spent: list[float] = []
                    d._alone_and_ready = types.MethodType(_timed(check, spent), d)
                    times = []
                    for i in range(per + 50):
                        t = time.perf_counter()
                        c = hv.launch_nowait(1, kid, binds, run_here_max_s=1.0)
                        dt = time.perf_counter() - t
                        if not c.done():
                            raise RuntimeError("a launch did not run inline: the benchmark measures nothing")
                        if i >= 50:  # warm-up
                            times.append(dt)
                    rtt.setdefault((vms, name), []).append(median(times) * 1e6)
                    chk.setdefault((vms, name), []).append(median(spent[50:]) * 1e6)
            del d._alone_and_ready
    for name in ("sum", "count"):
        r.add(f"inline_launch_1vm_{name}_us", median(rtt[(1, name)]), "us",
              baseline="inline_launch_1vm_sum_us" if name == "count" else None)
        r.add(f"inline_launch_1000vms_{name}_us", median(rtt[(1000, name)]), "us",
              baseline=f"inline_launch_1vm_{name}_us")
    for name in ("sum", "count"):
        r.add(f"inline_check_1vm_{name}_us", median(chk[(1, name)]), "us")
        r.add(f"inline_check_1000vms_{name}_us", median(chk[(1000, name)]), "us",
              baseline=f"inline_check_1vm_{name}_us")
    r.notes.append(f"{rounds} interleaved rounds of {per} launch_nowait calls per check and VM count "
                   "(tiny ADD of float[16], run inline), medians of round medians; check = "
                   "_alone_and_ready alone, under the hypervisor's lock")
    return r


def main(argv=None) -> int:
    a = parser("the inline LAUNCH check with 1 and 1000 VMs registered: summed vs kept count").parse_args(argv)
    run(a.quick).emit(a.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
