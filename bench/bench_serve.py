"""Networked guests serving completions under load (issue 15) — `python -m bench.bench_serve`.

pxos-hvd with SmolLM2-135M loaded once and three VMs; three QEMU guests on a pxOS-made
network (qemu/network.py) each run pxos_serve. bench/serve_load.py runs inside the
namespace (as `ip netns exec` would) and drives them:

1. **shares**: VM shares 50/30/20, every VM saturated (closed loop, ``--concurrency``
   requests in flight each): tokens/s per VM and its fraction of all tokens, against its share.
2. **interactive beside batch**: shares equal; VM 1's server asks for INTERACTIVE, VMs 2
   and 3 for BATCH. VM 1 at a light open-loop rate (short completions) alone, then the same
   with VMs 2 and 3 saturated: its TTFT and end-to-end p99 against alone; then once more
   with VM 1's guest rebooted to ask for no class (what the class itself buys).

    python -m bench.bench_serve [--duration 40] [--warmup 10] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import machine
from qemu.generate import DEFAULT_MODEL, GENERATE_QUOTA, default_model_path
from qemu.hvd import start_hvd
from qemu.serve import ServeSession

SHARES = {1: 50.0, 2: 30.0, 3: 20.0}
CLASSES = {1: "INTERACTIVE", 2: "BATCH", 3: "BATCH"}
REPO = Path(__file__).resolve().parent.parent


def load(session: ServeSession, specs: list[str], *, duration: float, warmup: float, max_tokens: int) -> dict:
    """bench.serve_load in the guests' namespace, its JSON report."""
    argv = [sys.executable, "-m", "bench.serve_load", *specs, "--duration", str(duration), "--warmup", str(warmup),
            "--max-tokens", str(max_tokens), "--json"]
    proc = session.network.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    out, err = proc.communicate(timeout=warmup + duration + 900)
    if proc.returncode != 0:
        raise RuntimeError(f"serve_load exited {proc.returncode}: {err[-2000:]}")
    return json.loads(out)


def run(duration: float, warmup: float, concurrency: int, max_tokens: int, rate: float, short_tokens: int,
        accel: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="pxos-bench-serve-") as tmp, \
            start_hvd(Path(tmp), {v: GENERATE_QUOTA for v in SHARES}, shares=SHARES,
                      models={DEFAULT_MODEL: default_model_path()}, pool="1Gi") as hvd, \
            ServeSession(hvd.sockets, classes=CLASSES, tag="bench", accel=accel) as session:
        session.wait_ready()
        url = {vm: sg.url for vm, sg in session.guests.items()}
        saturated = [f"vm{v}={url[v]},concurrency={concurrency}" for v in SHARES]
        shares = load(session, saturated, duration=duration, warmup=warmup, max_tokens=max_tokens)
        for v in SHARES:
            hvd.ctl("quota", "set", str(v), "--share", "33")
        light = f"vm1={url[1]},rate={rate},max_tokens={short_tokens}"
        alone = load(session, [light], duration=duration, warmup=warmup / 2, max_tokens=short_tokens)
        beside = load(session, [light, *saturated[1:]], duration=duration, warmup=warmup, max_tokens=max_tokens)
        # the same, VM 1's server asking for no class: what INTERACTIVE itself buys
        session.restart(1, "NONE")
        unhinted = load(session, [light, *saturated[1:]], duration=duration, warmup=warmup, max_tokens=max_tokens)
        stats = hvd.ctl("stats")
    a, b, c = alone["vms"]["vm1"], beside["vms"]["vm1"], unhinted["vms"]["vm1"]

    def ratio(key: str, x: dict = b) -> float | None:
        return round(x[key] / a[key], 3) if a.get(key) and x.get(key) is not None else None

    return {
        "machine": machine(), "accel": session.accel, "duration_s": duration, "warmup_s": warmup,
        "shares": {"targets": {f"vm{v}": s for v, s in SHARES.items()}, "load": shares},
        "interactive": {"alone": alone["vms"]["vm1"], "beside_two_batch": beside["vms"],
                        "ttft_p99_ratio": ratio("ttft_p99_s"), "e2e_p99_ratio": ratio("e2e_p99_s"),
                        "no_class_beside_two_batch": unhinted["vms"],
                        "no_class_ttft_p99_ratio": ratio("ttft_p99_s", c),
                        "no_class_e2e_p99_ratio": ratio("e2e_p99_s", c),
                        "rate": rate, "max_tokens": short_tokens},
        "launches_failed": sum(vm["launches_failed"] for vm in stats["vms"]),
    }


def print_report(r: dict) -> None:
    from bench.serve_load import format_report

    m = r["machine"]
    print(f"machine: {m['cpu']}, {m['cores']} cores ({r['accel']}); {r['duration_s']:.0f} s measured after "
          f"{r['warmup_s']:.0f} s warm-up")
    print("\n1. shares 50/30/20, every VM saturated:")
    print(format_report(r["shares"]["load"]))
    i = r["interactive"]
    print(f"\n2. VM 1 INTERACTIVE at {i['rate']} req/s ({i['max_tokens']} tokens), equal shares; alone:")
    print(format_report({"vms": {"vm1": i["alone"]}}))
    print("   beside VMs 2 and 3 (BATCH, saturated):")
    print(format_report({"vms": i["beside_two_batch"]}))
    print(f"   VM 1 p99 against alone: TTFT {i['ttft_p99_ratio']}x, end-to-end {i['e2e_p99_ratio']}x")
    print("   the same with VM 1's server asking for no class:")
    print(format_report({"vms": i["no_class_beside_two_batch"]}))
    print(f"   VM 1 p99 against alone: TTFT {i['no_class_ttft_p99_ratio']}x, "
          f"end-to-end {i['no_class_e2e_p99_ratio']}x")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_serve", description="networked guests serving completions under load")
    p.add_argument("--duration", type=float, default=40.0, help="seconds measured per phase")
    p.add_argument("--warmup", type=float, default=10.0)
    p.add_argument("--concurrency", type=int, default=2, help="requests in flight per saturated VM")
    p.add_argument("--max-tokens", type=int, default=32, help="tokens per request of the saturated VMs")
    p.add_argument("--rate", type=float, default=0.5, help="requests/s of the INTERACTIVE VM")
    p.add_argument("--short-tokens", type=int, default=8, help="tokens per request of the INTERACTIVE VM")
    p.add_argument("--accel", default="auto")
    p.add_argument("--quick", action="store_true", help="15 s measured after 5 s of warm-up")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.warmup = 15.0, 5.0
    r = run(args.duration, args.warmup, args.concurrency, args.max_tokens, args.rate, args.short_tokens, args.accel)
    if args.json:
        print(json.dumps(r, indent=1))
    else:
        print_report(r)
    return 0 if r["launches_failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
