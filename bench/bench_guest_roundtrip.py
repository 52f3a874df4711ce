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

Two daemons in one run (issue 14): first with the LAUNCH fast path off
(PXOS_INLINE_LAUNCH_US=0: every LAUNCH handed to the VM's worker, then to the dispatch
thread, its completion handed back to the loop), then on (a short LAUNCH on an idle device
runs on the VM's loop thread): the ``*_handoff`` figures are the baseline of the same run.
``--fast-only`` skips the baseline. Run: python -m bench.bench_guest_roundtrip [--json]
[--quick] [--accel kvm|tcg|auto] [--fast-only]
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from pathlib import Path

from bench.common import Report, parser
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


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--accel", default="auto", help="kvm, tcg or auto")
    p.add_argument("--fast-only", action="store_true", help="skip the baseline run (fast path off)")
    args = p.parse_args(argv)
    iters = 30 if args.quick else 300
    accel = choose_accel(args.accel)
    art = artefacts.prepare(log=lambda s: print(f"[artefacts] {s}", file=sys.stderr))

    base = None
    if not args.fast_only:
        base = _run(art, accel, iters, "0")
        if base is None:
            print("bench_guest_roundtrip: the guest run (fast path off) failed", file=sys.stderr)
            return 1
    fast = _run(art, accel, iters, None)
    if fast is None:
        print("bench_guest_roundtrip: the guest run failed", file=sys.stderr)
        return 1
    rows, result, t_first = fast

    rep = Report(f"guest round trip ({accel}, n={iters} per figure)")
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
                         f"({INLINE_LAUNCH_ENV}=0), run first in this command")
    rep.emit(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
