"""`pxos-vm demo`: the whole journey with real guests. pxos-hvd starts with three VMs
(compute shares 50/30/20), three QEMU guests boot at once, each keeps matmuls in flight
with `pxos load`, and every two seconds a line per VM shows what `pxosctl stats` says:
share target against the share of device time achieved, launches, memory against quota.
At the end, each guest's own summary line. Exit status 0 when every guest succeeded."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import artefacts as art
from .cmdline import choose_accel
from .guest import Guest
from .hvd import start_hvd

SHARES = {1: 50.0, 2: 30.0, 3: 20.0}
QUOTA = 256 << 20
STATUS_EVERY_S = 2.0


def _status_line(stats: dict) -> str:
    parts = []
    for vm in stats["vms"]:
        parts.append(f"{vm['name']}: share {vm['share']:.0f}% achieved {100 * vm['achieved_share']:5.1f}% "
                     f"launches {vm['launches_total']:5d} mem {vm['memory_used'] >> 10}K/{vm['memory_quota'] >> 20}M")
    return " | ".join(parts)


def contended_shares(samples: list[dict]) -> dict[int, float] | None:
    """Each VM's share of device time while all of them were busy (every VM's launch count
    rose between consecutive samples): what the scheduler promises, free of boot and
    finish skew. None if the VMs never overlapped."""
    def launches(s):
        return {v["vm_id"]: v["launches_total"] for v in s["vms"]}

    busy = [i for i in range(1, len(samples))
            if all(n > launches(samples[i - 1]).get(v, 0) for v, n in launches(samples[i]).items())]
    if not busy:
        return None
    first, last = samples[busy[0] - 1], samples[busy[-1]]
    t0 = {v["vm_id"]: v["device_seconds_total"] for v in first["vms"]}
    delta = {v["vm_id"]: v["device_seconds_total"] - t0.get(v["vm_id"], 0.0) for v in last["vms"]}
    total = sum(delta.values())
    return {v: 100 * d / total for v, d in delta.items()} if total > 0 else None


def run_demo(duration: int = 20, size: int = 384, depth: int = 4, accel: str = "auto",
             as_json: bool = False, out=sys.stdout) -> int:
    a = art.prepare(log=lambda s: print(f"pxos-vm: {s}", file=sys.stderr))
    accel = choose_accel(accel)
    cmd = f"pxos info && pxos load {duration} --depth {depth} --size {size}"
    samples: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="pxos-demo-") as tmp, \
            start_hvd(Path(tmp), {v: QUOTA for v in SHARES}, shares=SHARES) as hvd:
        guests = [Guest(a, hvd.sockets[v], cmd, accel=accel, name=f"guest{v}") for v in SHARES]
        try:
            for g in guests:
                g.start()
            if not as_json:
                print(f"pxos-hvd up; 3 guests booting ({accel}); each runs: {cmd}", file=out)
            while any(g.proc is not None and g.proc.poll() is None for g in guests):
                time.sleep(STATUS_EVERY_S)
                stats = hvd.ctl("stats")
                samples.append(stats)
                if not as_json:
                    print(_status_line(stats), file=out, flush=True)
            results = [g.wait(60) for g in guests]
            final = hvd.ctl("stats")
            table = subprocess.run([sys.executable, "-m", "hypervisor.ctl", "--socket", str(hvd.grpc), "vm", "list"],
                                   capture_output=True, text=True, timeout=60).stdout
        finally:
            for g in guests:
                g.close()
    ok = all(r.exit_status == 0 for r in results)
    shares = contended_shares(samples)
    summary = {
        "accel": accel, "ok": ok,
        "share_while_all_busy": {str(v): round(x, 2) for v, x in (shares or {}).items()},
        "vms": [{k: vm[k] for k in ("vm_id", "name", "share", "achieved_share", "launches_total",
                                     "device_seconds_total", "memory_quota")} for vm in final["vms"]],
        "guests": [next((line for line in r.console.splitlines() if line.startswith("load:")), None)
                   for r in results],
    }
    if as_json:
        json.dump(summary, out, indent=1)
        print(file=out)
    else:
        print("\n$ pxosctl vm list", file=out)
        print(table.rstrip(), file=out)
        if shares:
            print("\nshare of device time while all three guests were busy:", file=out)
            for vm in final["vms"]:
                print(f"  {vm['name']}: target {vm['share']:.0f}%  achieved {shares.get(vm['vm_id'], 0.0):5.1f}%  "
                      f"launches {vm['launches_total']}", file=out)
        for v, line in zip(SHARES, summary["guests"], strict=True):
            print(f"guest{v}: {line or 'no result (see its console)'}", file=out)
    return 0 if ok else 1
