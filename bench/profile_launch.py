"""Where a tiny launch's host time goes: cProfile of the launch path, per thread.

    python -m bench.profile_launch [--backend numpy|cupy|wgpu] [--n 3000] [--top 25]

Runs N tiny launches (ADD of float[16]) of one VM three ways and prints, for each, the
wall time per launch and the functions with the most own time per launch (µs), for the
caller's thread and for the dispatcher thread (profiled separately: cProfile sees one
thread):

- serial_here: ``launch_wait`` (the serial fast path, on the caller's thread);
- serial: ``launch().wait()`` (a hand-off to the dispatcher and back);
- pipelined: 8 launches kept in flight.

A diagnostic for docs/benchmarks.md's launch-overhead breakdown, not a benchmark: the
profiler itself slows every call, so the wall figures here are inflated; quote the
benchmarks (bench_preempt, bench_hypervisor) for the figures themselves.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from collections import deque

from bench.hv_load import TINY_SOURCE, install
from hypervisor import Hypervisor
from hypervisor.dispatch import Dispatcher

DEPTH = 8


def _own_time(prof: cProfile.Profile, n: int, top: int) -> str:
    out = io.StringIO()
    st = pstats.Stats(prof, stream=out)
    rows = sorted(st.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:top]  # type: ignore[attr-defined]
    lines = [f"{'own us/launch':>13} {'calls/launch':>12}  function"]
    for (file, line, name), (_cc, nc, tt, _ct, _callers) in rows:
        where = file.split("/pxos/")[-1] if "/pxos/" in file else file.rsplit("/", 2)[-1]
        lines.append(f"{1e6 * tt / n:13.2f} {nc / n:12.2f}  {name} ({where}:{line})")
    return "\n".join(lines)


def _run(backend: str, mode: str, n: int, top: int) -> str:
    dispatcher_prof = cProfile.Profile()
    loop = Dispatcher._loop
    # From Python 3.12 cProfile rides on sys.monitoring: one profiler sees every thread, and
    # a second cannot be enabled. Then one profile covers both threads together.
    one_profile = sys.version_info >= (3, 12)

    def profiled_loop(self) -> None:  # the dispatcher thread runs under its own profiler
        dispatcher_prof.runcall(loop, self)

    if not one_profile:
        Dispatcher._loop = profiled_loop  # type: ignore[method-assign]
    try:
        hv = Hypervisor(backend=backend).start()
    finally:
        Dispatcher._loop = loop  # type: ignore[method-assign]
    try:
        hv.register_vm(1, 512, 100)
        kid, binds = install(hv, 1, TINY_SOURCE)
        for _ in range(200):  # warm caches and kernels (on this thread: the dispatcher's profile stays clean)
            hv.launch_wait(1, kid, binds)
        caller = cProfile.Profile()
        t0 = time.perf_counter()
        caller.enable()
        if mode == "serial_here":
            for _ in range(n):
                hv.launch_wait(1, kid, binds)
        elif mode == "serial":
            for _ in range(n):
                hv.launch(1, kid, binds).wait()
        else:
            q: deque = deque()
            for _ in range(n):
                if len(q) == DEPTH:
                    q.popleft().wait()
                q.append(hv.launch(1, kid, binds))
            for c in q:
                c.wait()
        caller.disable()
        wall = (time.perf_counter() - t0) / n
    finally:
        hv.stop()
    head = f"== {mode}: {1e6 * wall:.1f} us/launch under the profiler ({n} launches, backend {backend})\n"
    if one_profile:
        return head + f"-- every thread\n{_own_time(caller, n, top)}\n"
    return (head + f"-- caller thread\n{_own_time(caller, n, top)}\n"
            f"-- dispatcher thread\n{_own_time(dispatcher_prof, n, top)}\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", default="numpy", choices=("numpy", "cupy", "wgpu"))
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--modes", default="serial_here,serial,pipelined")
    args = ap.parse_args(argv)
    for mode in args.modes.split(","):
        print(_run(args.backend, mode, args.n, args.top), flush=True)


if __name__ == "__main__":
    main()
