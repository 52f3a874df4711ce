"""Guest-to-completion round trips under QEMU (TCG where KVM is not usable), split into the
guest + emulator share and the backend's own share, and boot to first result.

One guest boots against a real pxos-hvd (NumPy backend) and runs, inside the guest:
`pxos run` of a tiny matmul (its result line marks boot-to-first-result), then `pxos bench`,
which times in the guest (CLOCK_MONOTONIC around each ioctl):
  - get_info: a GET_INFO round trip: virtqueue, vhost-user, a trivial handler. The baseline.
  - empty_launch: a LAUNCH of a one-element COPY, and
  - matmul_32: a LAUNCH of a 32x32 @ 32x32 float32 matmul.
For launches the daemon reports its own time per launch (total_ns: arrival at the
hypervisor to completion, from the LAUNCH response): the backend's own share. The rest,
"guest + emulator", is everything outside the hypervisor's timing: the guest kernel and
tool, QEMU's TCG vCPU and interrupt delivery, and the vhost-user transport (eventfds,
ring walking, decode/encode in the daemon); get_info bounds the transport part.

Both paths in one run (issue 14): daemons with the LAUNCH fast path off
(PXOS_INLINE_LAUNCH_US=0: every LAUNCH handed to the VM's worker, then to the dispatch
thread, its completion handed back to the loop) and on (a short LAUNCH on an idle device
runs on the VM's loop thread), ``--rounds`` guest runs each in A B B A order (the load of a
shared machine drifts between runs), each figure the median over the runs of a mode: the
``*_handoff`` figures are the baseline of the same command. ``--fast-only`` skips the
baseline. Run: python -m bench.bench_guest_roundtrip [--json] [--quick] [--accel
kvm|tcg|auto] [--rounds N] [--fast-only]
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from pathlib import Path

from bench.common import Report, median, parser
from qemu import artefacts
from qemu.cmdline import choose_accel
from qemu.guest import Guest
from qemu.hvd import start_hvd
from virtio_backend.gpu.transport import INLINE_LAUNCH_ENV

MM_PROGRAM = b"""GPU_KERNEL mm
GPU_PARAM a float[M, K]
GPU_PARAM b float[K, N]
GPU_PARAM c float[M, N]
GPU_THREAD_CODE:
    PARALLEL_MATMUL a b -> c
GPU_END
"""
FIRST = ("pxos run /root/mm.pxp --bind a=float[2,2]:1,2,3,4 --bind b=float[2,2]:1,0,0,1 "
         "--bind c=float[2,2]")


def _run(art, accel: str, iters: int, inline_us: str | None):
    """One daemon and one guest running `pxos bench`: (rows by bench name, boot result,
    seconds to the first result), or None when the guest run failed."""
    saved = os.environ.get(INLINE_LAUNCH_ENV)
    if inline_us is None:
        os.environ.pop(INLINE_LAUNCH_ENV, None)
    else:
        os.environ[INLINE_LAUNCH_ENV] = inline_us  # the daemon (a child process) reads it
    try:
        with tempfile.TemporaryDirectory(prefix="pxos-bench-") as tmp, \
                start_hvd(Path(tmp) / "hvd", {1: 256 << 20}) as hvd, \
                Guest(art, hvd.sockets[1], f"{FIRST} && pxos bench {iters} --json", accel=accel,
                      files={"/root/mm.pxp": MM_PROGRAM}, name="bench") as guest:
            result = guest.wait(900)
            first = guest.console.find(r"^launched mm x1:")
            t_first = guest.console.stamps[first[0]] - guest.t_start if first else None
    finally:
        if saved is None:
            os.environ.pop(INLINE_LAUNCH_ENV, None)
        else:
            os.environ[INLINE_LAUNCH_ENV] = saved
    if result.exit_status != 0:
        print(result.console[-3000:], file=sys.stderr)
        return None
    rows = {r["bench"]: r for r in (json.loads(m.group(0)) for m in
                                    re.finditer(r"^\{\"bench\".*\}$", result.console, re.M))}
    return rows, result, t_first


def _merge(runs: list[dict]) -> dict:
    """Each bench's figures, the median over the runs (a run's figure is its median)."""
    return {name: {k: median([r[name][k] for r in runs]) for k, v in runs[0][name].items()
                   if isinstance(v, (int, float))} for name in runs[0]}


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--accel", default="auto", help="kvm, tcg or auto")
    p.add_argument("--fast-only", action="store_true", help="skip the baseline runs (fast path off)")
    p.add_argument("--rounds", type=int, default=2,
                   help="guest runs per mode, in A B B A order (the machine's load drifts between runs)")
    args = p.parse_args(argv)
    iters = 30 if args.quick else 500
    rounds = 1 if args.quick else max(args.rounds, 1)
    accel = choose_accel(args.accel)
    art = artefacts.prepare(log=lambda s: print(f"[artefacts] {s}", file=sys.stderr))

    order = [("fast", None)] if args.fast_only else [("handoff", "0"), ("fast", None)]
    runs: dict[str, list] = {mode: [] for mode, _ in order}
    for r in range(rounds):
        for mode, env in (order if r % 2 == 0 else order[::-1]):
            out = _run(art, accel, iters, env)
            if out is None:
                print(f"bench_guest_roundtrip: the guest run ({mode}) failed", file=sys.stderr)
                return 1
            runs[mode].append(out)
    rows = _merge([o[0] for o in runs["fast"]])
    _, result, t_first = runs["fast"][0]
    base = (_merge([o[0] for o in runs["handoff"]]),) if "handoff" in runs else None

    rep = Report(f"guest round trip ({accel}, n={iters} per figure, {rounds} run(s) per mode, medians)")
    info = rows["get_info"]
    if base is not None:
        b = base[0]
        rep.add("get_info_roundtrip_handoff_run_us", b["get_info"]["guest_roundtrip_us_median"], "us")
        for name in ("empty_launch", "matmul_32"):
            r = b[name]
            rep.add(f"{name}_roundtrip_handoff_us", r["guest_roundtrip_us_median"], "us")
            rep.add(f"{name}_roundtrip_p90_handoff_us", r["guest_roundtrip_us_p90"], "us")
            rep.add(f"{name}_backend_handoff_us", r["host_total_us_median"], "us")
            rep.add(f"{name}_backend_queue_handoff_us", r["host_queue_us_median"], "us")
    rep.add("get_info_roundtrip_us", info["guest_roundtrip_us_median"], "us")
    for name in ("empty_launch", "matmul_32"):
        r = rows[name]
        guest_us, host_us = r["guest_roundtrip_us_median"], r["host_total_us_median"]
        rep.add(f"{name}_roundtrip_us", guest_us, "us", baseline="get_info_roundtrip_us")
        if base is not None:
            rep.add(f"{name}_roundtrip_vs_handoff", guest_us, "us", baseline=f"{name}_roundtrip_handoff_us")
        rep.add(f"{name}_roundtrip_p90_us", r["guest_roundtrip_us_p90"], "us")
        rep.add(f"{name}_backend_us", host_us, "us", baseline=f"{name}_roundtrip_us")
        rep.add(f"{name}_backend_device_us", r["host_device_us_median"], "us")
        rep.add(f"{name}_backend_queue_us", r["host_queue_us_median"], "us")
        rep.add(f"{name}_guest_emulator_us", guest_us - host_us, "us", baseline=f"{name}_roundtrip_us")
    rep.add("boot_to_ready_s", result.boot_s or float("nan"), "s")
    rep.add("boot_to_first_result_s", t_first or float("nan"), "s", baseline="boot_to_ready_s")
    share = rep.figures["empty_launch_guest_emulator_us"]["ratio"]
    rep.notes.append(f"{share:.0%} of an empty launch's round trip is outside the hypervisor's own timing "
                     f"(guest + emulator ({accel}) + vhost-user transport)")
    rep.notes.append("get_info is the transport alone (no scheduling, no work): the floor every request pays")
    if base is not None:
        rep.notes.append("*_handoff: the same guest bench against a daemon with the LAUNCH fast path off "
                         f"({INLINE_LAUNCH_ENV}=0); runs of the two modes in A B B A order in this command")
    rep.emit(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
