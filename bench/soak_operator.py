"""The operator of ``bench/soak.py``: what an operator does with ``pxosctl`` (gRPC) while
guests run: memory quota changes (deep cuts below a busy guest's usage are refused with the
usage named), share and cap changes, ``vm remove`` under a connected guest and ``vm add``
again, and hostile control requests (unknown VMs, absurd quotas, sockets outside
``socket_dir``, duplicate ids), each of which must get a typed refusal."""

from __future__ import annotations

import random
import threading
import time

from hypervisor.rpc import pxos_pb2 as pb
from hypervisor.rpc.client import Client
from hypervisor.rpc.status import RpcFailure

VMS = 8
MIB = 1 << 20
QUOTA_MIB = (8, 96)  # the operator sets quotas in this range; 32 MiB at start
SHARES = (5, 12)     # eight VMs: at most 96 % together


def refused(e: RpcFailure) -> bool:
    """A typed refusal (what the request deserved), not a host failure or a dead daemon."""
    return e.code not in ("INTERNAL", "UNKNOWN", "UNAVAILABLE", "DEADLINE_EXCEEDED")


class Operator(threading.Thread):
    """What an operator does with ``pxosctl`` while guests run, one action every ``every`` s."""

    def __init__(self, client: Client, present: dict, *, seed: int, stop: threading.Event,
                 pause: threading.Event, every: float, hup=None):
        super().__init__(name="soak-operator", daemon=True)
        self.c, self.present, self.rng = client, present, random.Random(seed)
        self.stop, self.pause, self.every, self.hup = stop, pause, every, hup
        self.quota = {i: 32 * MIB for i in present}
        self.share = {i: 10.0 for i in present}
        self.cap: dict[int, float | None] = {i: None for i in present}
        self.counts = {"quota_set": 0, "quota_refused": 0, "share_set": 0, "vm_removed": 0, "vm_added": 0,
                       "sighup": 0, "hostile_rejected": 0, "hostile_accepted": 0}
        self.errors: list[str] = []
        self.idle = threading.Event()
        self.idle.set()

    def run(self) -> None:
        while not self.stop.is_set():
            self.idle.clear()  # before looking at pause (see GuestWorker.run)
            if self.pause.is_set():
                self.idle.set()
                time.sleep(0.05)
                continue
            try:
                self.act()
            except Exception as e:  # shown in the report
                self.errors.append(f"{type(e).__name__}: {e}")
            time.sleep(self.every * (0.5 + self.rng.random()))
        self.idle.set()

    def act(self) -> None:
        rng, vm = self.rng, self.rng.randint(1, VMS)
        roll = rng.random()
        if roll < 0.4:
            # One cut in four is deep: below what a busy guest holds (refused, usage named) or,
            # when accepted, the guest's next allocs and launches meet PXOS_S_QUOTA.
            mem = rng.choice([64 << 10, 256 << 10]) if rng.random() < 0.25 else rng.randint(*QUOTA_MIB) * MIB
            try:
                self.c.call("SetQuota", pb.SetQuotaRequest(vm_id=vm, memory_bytes=mem))
                self.quota[vm] = mem
                self.counts["quota_set"] += 1
            except RpcFailure as e:
                if not refused(e):
                    raise
                self.counts["quota_refused"] += 1
        elif roll < 0.6:
            share = float(rng.randint(*SHARES))
            req = pb.SetQuotaRequest(vm_id=vm, share=share)
            cap = float(rng.randint(int(share) + 10, 100)) if rng.random() < 0.5 else None
            if cap is None:
                req.remove_cap = True
            else:
                req.cap = cap
            try:
                self.c.call("SetQuota", req)
                self.share[vm], self.cap[vm] = share, cap
                self.counts["share_set"] += 1
            except RpcFailure as e:
                if not refused(e):
                    raise
        elif roll < 0.7:
            self.remove_and_add(vm, rng.uniform(0.2, 2.0))
        elif (roll < 0.75 or not self.counts["sighup"]) and self.hup is not None:
            self.hup()  # SIGHUP, the config file unchanged: the run-time changes above must stay
            self.counts["sighup"] += 1
        else:
            self.hostile(vm)

    def remove_and_add(self, vm: int, away: float) -> None:
        self.present[vm].clear()
        self.c.call("UnregisterVM", pb.VMRef(vm_id=vm))
        self.counts["vm_removed"] += 1
        time.sleep(away)
        self.add(vm)

    def add(self, vm: int) -> None:
        self.cap[vm] = None
        self.c.call("RegisterVM", pb.RegisterVMRequest(vm_id=vm, name=f"soak{vm}", memory_bytes=self.quota[vm],
                                                       share=self.share[vm], socket=f"vm{vm}.sock"))
        self.counts["vm_added"] += 1
        self.present[vm].set()

    def mismatches(self, vms) -> list[str]:
        """VMs (``VMInfo``/``VMStats`` with quota, share, cap) whose settings differ from what
        this operator set last: a run-time change lost (e.g. by a SIGHUP)."""
        out = []
        for v in vms:
            quota = getattr(v, "memory_quota", None)
            cap = v.cap if v.HasField("cap") else None
            want = (self.quota[v.vm_id], self.share[v.vm_id], self.cap[v.vm_id])
            if (quota, v.share, cap) != want:
                out.append(f"VM {v.vm_id}: quota/share/cap {(quota, v.share, cap)}, set {want}")
        return out

    def hostile(self, vm: int) -> None:
        calls = [
            ("SetQuota", pb.SetQuotaRequest(vm_id=4000 + vm, memory_bytes=MIB)),
            ("SetQuota", pb.SetQuotaRequest(vm_id=vm, memory_bytes=(1 << 64) - 1)),
            ("SetQuota", pb.SetQuotaRequest(vm_id=vm, memory_bytes=0)),
            ("SetQuota", pb.SetQuotaRequest(vm_id=vm, share=1000.0)),
            ("SetQuota", pb.SetQuotaRequest(vm_id=vm, share=float("nan"))),
            ("RegisterVM", pb.RegisterVMRequest(vm_id=vm, memory_bytes=MIB, share=1, socket="again.sock")),
            ("RegisterVM", pb.RegisterVMRequest(vm_id=100 + vm, memory_bytes=MIB, share=1,
                                                socket="/etc/pxos-soak.sock")),
            ("RegisterVM", pb.RegisterVMRequest(vm_id=100 + vm, memory_bytes=MIB, share=90)),
            ("UnregisterVM", pb.VMRef(vm_id=4000 + vm)),
            ("GetVM", pb.VMRef(vm_id=0)),
        ]
        method, req = self.rng.choice(calls)
        try:
            self.c.call(method, req)
        except RpcFailure as e:
            if not refused(e):
                raise
            self.counts["hostile_rejected"] += 1
            return
        self.counts["hostile_accepted"] += 1
        self.errors.append(f"hostile {method}({req}) was accepted")
