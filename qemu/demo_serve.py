"""`pxos-vm demo --serve` (`make demo-serve`): three VMs serve completions over their network.

pxos-hvd starts with SmolLM2-135M-Instruct loaded once and three VMs (shares 50/30/20);
three QEMU guests boot on a pxOS-made network (qemu/network.py) and each serves
OpenAI-compatible /v1/completions (pxos_serve). The load generator (bench/serve_load.py)
runs inside the network namespace and keeps every VM saturated, printing each VM's tokens
per second every two seconds; `pxosctl top` on the printed socket shows the daemon's side
live. At the end, the per-VM report (requests/s, tokens/s, TTFT and end-to-end p50/p99,
errors). Exit status 0 when no request failed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from .generate import DEFAULT_MODEL, GENERATE_QUOTA, default_model_path
from .hvd import REPO, start_hvd
from .serve import ServeSession

SHARES = {1: 50.0, 2: 30.0, 3: 20.0}
WARMUP_S = 10.0


def run_serve_demo(duration: int = 60, accel: str = "auto", as_json: bool = False, out=sys.stdout) -> int:
    with tempfile.TemporaryDirectory(prefix="pxos-demo-serve-") as tmp, \
            start_hvd(Path(tmp), {v: GENERATE_QUOTA for v in SHARES}, shares=SHARES,
                      models={DEFAULT_MODEL: default_model_path()}, pool="1Gi") as hvd, \
            ServeSession(hvd.sockets, tag="demo", accel=accel) as session:
        if not as_json:
            print(f"pxos-hvd up: model {DEFAULT_MODEL} loaded once, VMs with shares 50/30/20; 3 guests booting "
                  f"({session.accel}) on network namespace {session.network.name}\n"
                  f"watch the daemon beside this:  {sys.executable} -m hypervisor.ctl --socket {hvd.grpc} top",
                  file=out, flush=True)
        session.wait_ready()
        specs = [f"vm{v}={sg.url}" for v, sg in session.guests.items()]
        if not as_json:
            print("serving: " + "  ".join(specs) + f"\nload (inside the namespace): every VM saturated, "
                  f"{WARMUP_S:.0f} s warm-up then {duration} s measured", file=out, flush=True)
        argv = [sys.executable, "-m", "bench.serve_load", *specs, "--concurrency", "2", "--max-tokens", "32",
                "--duration", str(duration), "--warmup", str(WARMUP_S), "--json"]
        if not as_json:
            argv += ["--live", "2"]
        proc = session.network.popen(argv, stdout=subprocess.PIPE, stderr=None if not as_json else subprocess.PIPE,
                                     text=True, cwd=REPO)
        stdout, _ = proc.communicate()
        if proc.returncode != 0:
            print(f"pxos-vm: the load generator exited {proc.returncode}", file=sys.stderr)
            return 1
        result = json.loads(stdout)
    ok = all(v["errors"] == 0 for v in result["vms"].values())
    if as_json:
        json.dump({"ok": ok, "shares": {f"vm{v}": s for v, s in SHARES.items()}, **result}, out, indent=1)
        print(file=out)
    else:
        from bench.serve_load import format_report

        print("\nper VM over the measured window (share = fraction of all tokens; targets 50/30/20):", file=out)
        print(format_report(result), file=out)
    return 0 if ok else 1
