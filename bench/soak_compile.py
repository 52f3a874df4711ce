"""Compile churn for ``bench/soak.py`` (``--compile-churn RATE``): new sources of 7-63 KiB,
never seen before (the compile cache never hits), compiled over gRPC for the VMs in turn at
about ``RATE`` per second, their kernels freed at once. Every such compile builds ~30 000
objects per 63 KiB in the daemon and pushes older programs out of the compile cache, so
garbage keeps coming: what ``[scheduler] compile_gc_freeze`` holds frozen until its epoch
ends (docs/scheduling.md "Compiles", item 8)."""

from __future__ import annotations

import random
import threading
import time

from bench.bench_preempt import big_source
from bench.soak_operator import VMS
from hypervisor.rpc import pxos_pb2 as pb
from hypervisor.rpc.client import Client
from hypervisor.rpc.status import RpcFailure

STATEMENTS = (10, 98)  # per kernel, 16 kernels: ~7-63 KiB (MAX_SOURCE_BYTES is 64 KiB)


class CompileChurn(threading.Thread):
    def __init__(self, client: Client, present: dict, *, seed: int, stop: threading.Event,
                 pause: threading.Event, rate: float):
        super().__init__(name="soak-compiles", daemon=True)
        self.c, self.present, self.rng = client, present, random.Random(seed)
        self.stop, self.pause, self.every = stop, pause, 1.0 / rate
        self.counts = {"compiled": 0, "bytes": 0, "refused": 0, "kernels_freed": 0}
        self.errors: list[str] = []
        self.idle = threading.Event()
        self.idle.set()
        self._tag = seed * 10**9

    def run(self) -> None:
        vm = 0
        while not self.stop.is_set():
            self.idle.clear()  # before looking at pause (see GuestWorker.run)
            if self.pause.is_set():
                self.idle.set()
                time.sleep(0.05)
                continue
            t0 = time.monotonic()
            vm = vm % VMS + 1
            try:
                self.compile_one(vm)
            except Exception as e:  # shown in the report
                self.errors.append(f"{type(e).__name__}: {e}")
            time.sleep(max(self.every - (time.monotonic() - t0), 0.0))
        self.idle.set()

    def compile_one(self, vm: int) -> None:
        if not self.present[vm].is_set():
            return  # removed by the operator just now
        self._tag += 1
        src = big_source(self._tag, self.rng.randint(*STATEMENTS))
        try:
            kernels = self.c.call("Compile", pb.CompileRequest(vm_id=vm, source=src)).kernels
        except RpcFailure as e:
            if e.code != "NOT_FOUND":  # the VM was removed meanwhile: anything else is a failure
                raise
            self.counts["refused"] += 1
            return
        self.counts["compiled"] += 1
        self.counts["bytes"] += len(src)
        for k in kernels:
            try:
                self.c.call("FreeKernel", pb.KernelRef(vm_id=vm, kernel_id=k.kernel_id))
                self.counts["kernels_freed"] += 1
            except RpcFailure as e:
                if e.code != "NOT_FOUND":
                    raise
