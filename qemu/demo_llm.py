"""`pxos-vm demo` (`make demo`): three VMs generate text from one shared model.

pxos-hvd starts with SmolLM2-135M-Instruct loaded once and three VMs with compute shares
50/30/20. Three QEMU guests boot at once; in each, pxos_llm (the host's Python over
virtio-9p) opens the model through /dev/pxos0 and generates greedily from its own prompt,
its text streaming on its console. Every two seconds a block shows each VM's tokens per
second and the tail of its text; at the end, `pxosctl vm list`, `pxosctl model list`
(the model's memory, counted once) and each VM's tokens per second while all three were
busy, against its share. Exit status 0 when every guest succeeded.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import artefacts as art
from .cmdline import choose_accel
from .generate import DEFAULT_MODEL, GENERATE_MEM_MIB, default_model_path, guest_command
from .guest import Guest
from .hvd import start_hvd

SHARES = {1: 50.0, 2: 30.0, 3: 20.0}
QUOTA = 256 << 20
STATUS_EVERY_S = 2.0
PROMPTS = {
    1: "<|im_start|>user\nWrite a short story about a lighthouse keeper.<|im_end|>\n<|im_start|>assistant\n",
    2: "<|im_start|>user\nExplain how a GPU runs many threads at once.<|im_end|>\n<|im_start|>assistant\n",
    3: "<|im_start|>user\nGive me a recipe for pancakes.<|im_end|>\n<|im_start|>assistant\n",
}


def contended_rates(samples: list[tuple[float, dict]], launches_per_token: int) -> dict[int, float] | None:
    """Tokens per second of each VM over the samples in which every VM's launch count rose
    (all three busy), from the daemon's own counters; None if they never overlapped."""
    def launches(s):
        return {v["vm_id"]: v["launches_total"] for v in s["vms"]}

    busy = [i for i in range(1, len(samples))
            if all(n > launches(samples[i - 1][1]).get(v, 0) for v, n in launches(samples[i][1]).items())]
    if not busy:
        return None
    (t0, first), (t1, last) = samples[busy[0] - 1], samples[busy[-1]]
    before = launches(first)
    return {v: (n - before.get(v, 0)) / launches_per_token / (t1 - t0) for v, n in launches(last).items()}


def _ctl(hvd, *args: str) -> str:
    return subprocess.run([sys.executable, "-m", "hypervisor.ctl", "--socket", str(hvd.grpc), *args],
                          capture_output=True, text=True, timeout=60).stdout.rstrip()


def run_llm_demo(duration: int = 60, accel: str = "auto", as_json: bool = False, out=sys.stdout) -> int:
    a = art.prepare(log=lambda s: print(f"pxos-vm: {s}", file=sys.stderr))
    accel = choose_accel(accel)
    model_path = default_model_path()
    samples: list[tuple[float, dict]] = []
    with tempfile.TemporaryDirectory(prefix="pxos-demo-") as tmp, \
            start_hvd(Path(tmp), {v: QUOTA for v in SHARES}, shares=SHARES, models={DEFAULT_MODEL: model_path},
                      pool="1Gi") as hvd:
        n_layer = hvd.ctl("model", "list")["models"][0]["config"]["n_layer"]
        # launches of one forward pass: embed, the blocks two at a time (pxos_llm's
        # LAYERS_PER_LAUNCH), head
        per_token = (n_layer + 1) // 2 + 2
        # Enough tokens that the VM with the largest share is still busy after `duration`
        # seconds; the demo stops every guest then (the figures come from the busy window).
        cmds = {v: guest_command([PROMPTS[v]], 1000, as_json=False, ignore_eos=True, ctx=1088) for v in SHARES}
        guests = {v: Guest(a, hvd.sockets[v], cmds[v], accel=accel, name=f"guest{v}", mem_mib=GENERATE_MEM_MIB,
                           host_share=Path("/")) for v in SHARES}
        started = time.monotonic()
        try:
            for g in guests.values():
                g.start()
            if not as_json:
                print(f"pxos-hvd up: model {DEFAULT_MODEL} loaded once; 3 guests booting ({accel}) with shares "
                      "50/30/20, each generating from its own prompt", file=out, flush=True)
            generating_since = None
            while any(g.proc is not None and g.proc.poll() is None for g in guests.values()):
                time.sleep(STATUS_EVERY_S)
                stats = hvd.ctl("stats")
                now = time.monotonic()
                samples.append((now, stats))
                busy = all(vm["launches_total"] > 0 for vm in stats["vms"])
                if busy and generating_since is None:
                    generating_since = now
                if not as_json:
                    _print_block(out, now - started, samples, guests, per_token)
                if generating_since is not None and now - generating_since >= duration:
                    break
            vm_table, model_table = _ctl(hvd, "vm", "list"), _ctl(hvd, "model", "list")
            models = hvd.ctl("model", "list")["models"]
            device = hvd.ctl("stats")["device"]
        finally:
            for g in guests.values():
                g.close()
    rates = contended_rates(samples, per_token) or {}
    total = sum(rates.values())
    ok = bool(rates) and all(r > 0 for r in rates.values())
    summary = {
        "accel": accel, "ok": ok, "launches_per_token": per_token,
        "tokens_per_s_while_all_busy": {str(v): round(r, 2) for v, r in rates.items()},
        "fraction_of_tokens": {str(v): round(r / total, 3) for v, r in rates.items()} if total else {},
        "shares": {str(v): s for v, s in SHARES.items()},
        "model": {k: models[0][k] for k in ("name", "bytes", "device_bytes", "users")} if models else None,
        "pool_used": device["pool_used"],
    }
    if as_json:
        json.dump(summary, out, indent=1)
        print(file=out)
        return 0 if ok else 1
    print("\n$ pxosctl vm list", file=out)
    print(vm_table, file=out)
    print("\n$ pxosctl model list", file=out)
    print(model_table, file=out)
    if models:
        m = models[0]
        print(f"\nthe model is held once: {m['bytes'] >> 20} MiB for {len(m['users'])} VMs "
              f"(pool in use: {device['pool_used'] >> 20} MiB, the VMs' own KV caches included)", file=out)
    if rates:
        print("\ntokens per second while all three VMs were generating:", file=out)
        for v, r in sorted(rates.items()):
            print(f"  guest{v}: share {SHARES[v]:.0f}%  {r:6.2f} tokens/s  ({100 * r / total:5.1f}% of all tokens)",
                  file=out)
    else:
        print("\nthe three VMs never generated at the same time (see the guests' consoles)", file=out)
    return 0 if ok else 1


def _print_block(out, t: float, samples, guests, per_token: int) -> None:
    rates = {}
    if len(samples) >= 2:
        (t0, a), (t1, b) = samples[-2], samples[-1]
        before = {v["vm_id"]: v["launches_total"] for v in a["vms"]}
        rates = {v["vm_id"]: (v["launches_total"] - before.get(v["vm_id"], 0)) / per_token / (t1 - t0)
                 for v in b["vms"]}
    print(f"--- {t:5.1f} s", file=out)
    for v, g in guests.items():
        text = " ".join(g.console.tail(200).split())[-90:]
        print(f"guest{v} {SHARES[v]:3.0f}% {rates.get(v, 0.0):5.1f} tok/s | {text}", file=out, flush=True)
