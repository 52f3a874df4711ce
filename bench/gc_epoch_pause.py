"""What a full garbage collection pauses the daemon for with compiled programs alive, with
``[scheduler] compile_gc_freeze`` off and on, and what the end of a freeze epoch costs
(docs/scheduling.md "Compiles", item 8).

    python -m bench.gc_epoch_pause [--json] [--quick]

Fills the compile cache with new 63 KiB programs (as a VM compiling at its budget does),
then times, in turns: a full collection of the unfrozen heap (freeze off), a full
collection with the heap frozen (freeze on, between epochs) and the end of an epoch
(``GcEpochs.tick``: unfreeze and one full collection). Medians over the rounds."""

from __future__ import annotations

import gc
import time

import primitive_lang
from bench.bench_preempt import big_source
from bench.common import Report, median, parser
from hypervisor.compiling import GcEpochs


def run(quick: bool) -> Report:
    r = Report("gc_epoch_pause")
    programs = 8 if quick else 24
    held = [primitive_lang.compile_source(big_source(3 * 10**9 + i)) for i in range(programs)]
    now = [0.0]
    g = GcEpochs(60.0, clock=lambda: now[0], background=False)
    off, frozen, epoch = [], [], []
    try:
        for _ in range(3 if quick else 7):
            t = time.perf_counter()
            gc.collect()
            off.append(time.perf_counter() - t)
            g.settle()
            t = time.perf_counter()
            gc.collect()
            frozen.append(time.perf_counter() - t)
            now[0] += g.epoch_s
            t = time.perf_counter()
            assert g.tick()
            epoch.append(time.perf_counter() - t)
    finally:
        g.close()
    objects = len(gc.get_objects())
    r.add("full_collection_freeze_off_ms", median(off) * 1e3, "ms")
    r.add("full_collection_frozen_ms", median(frozen) * 1e3, "ms", baseline="full_collection_freeze_off_ms")
    r.add("epoch_end_ms", median(epoch) * 1e3, "ms", baseline="full_collection_freeze_off_ms")
    r.notes.append(f"{len(held)} programs of 63 KiB alive (the compile cache's share of them too), "
                   f"{objects} objects tracked; medians of {len(off)} rounds")
    return r


def main(argv=None) -> int:
    a = parser("full collections with compiled programs alive: freeze off, frozen, the end of an epoch").parse_args(argv)
    run(a.quick).emit(a.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
