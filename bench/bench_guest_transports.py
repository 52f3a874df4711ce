"""The two guest transports side by side: pxos_gpu.ko (/dev/pxos0) against the stock
virtio_gpu driver (the DRM transport, /dev/dri/renderD128), same daemon, same kernel.

Two guests boot one after the other against one pxos-hvd (NumPy backend), one per
driver (`pxos-vm --driver module|stock`), and each runs `pxos bench N --json`, which times
in the guest (CLOCK_MONOTONIC around each ioctl): a GET_INFO round trip, an empty launch,
a 32x32 matmul, and 1 MiB WRITEs. Each DRM figure is reported with its ratio to the
module's (the baseline, run in the same command). Under TCG the absolute figures are the
emulator's; the ratio is what the transport costs.
Run: python -m bench.bench_guest_transports [--json] [--quick] [--with-handoff]
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

TRANSPORTS = {"module": "module", "drm": "stock"}  # transport -> the guest driver it needs


def run_bench(art, socket: Path, driver: str, transport: str, iters: int, accel: str) -> dict[str, dict]:
    with Guest(art, socket, f"pxos --transport {transport} bench {iters} --json", accel=accel,
               name=f"bench-{transport}", driver=driver) as guest:
        result = guest.wait(900)
    if result.exit_status != 0:
        print(result.console[-3000:], file=sys.stderr)
        raise SystemExit(f"bench_guest_transports: the {transport} guest run failed")
    return {r["bench"]: r for r in (json.loads(m.group(0)) for m in
                                    re.finditer(r"^\{\"bench\".*\}$", result.console, re.M))}


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--accel", default="auto", help="kvm, tcg or auto")
    p.add_argument("--with-handoff", action="store_true",
                   help="first the same against a daemon with the LAUNCH fast path off (issue 14): *_handoff figures")
    args = p.parse_args(argv)
    iters = 30 if args.quick else 200
    accel = choose_accel(args.accel)
    art = artefacts.prepare(log=lambda s: print(f"[artefacts] {s}", file=sys.stderr))
    handoff: dict = {}
    rows: dict = {}
    for out, inline_us in ((handoff, "0"), (rows, None)) if args.with_handoff else ((rows, None),):
        saved = os.environ.pop(INLINE_LAUNCH_ENV, None)
        if inline_us is not None:
            os.environ[INLINE_LAUNCH_ENV] = inline_us  # read by the daemon (a child process)
        try:
            with tempfile.TemporaryDirectory(prefix="pxos-bench-") as tmp, \
                    start_hvd(Path(tmp) / "hvd", {1: 256 << 20}) as hvd:
                for transport, driver in TRANSPORTS.items():
                    out[transport] = run_bench(art, hvd.sockets[1], driver, transport, iters, accel)
        finally:
            os.environ.pop(INLINE_LAUNCH_ENV, None)
            if saved is not None:
                os.environ[INLINE_LAUNCH_ENV] = saved

    rep = Report(f"guest transports: pxos_gpu.ko vs stock virtio_gpu ({accel}, n={iters} per figure)")
    for name in ("get_info", "empty_launch", "matmul_32", "write_1MiB"):
        base = f"module_{name}_us"
        rep.add(base, rows["module"][name]["guest_roundtrip_us_median"], "us")
        rep.add(f"drm_{name}_us", rows["drm"][name]["guest_roundtrip_us_median"], "us", baseline=base)
    rep.add("module_write_1MiB_mib_per_s", rows["module"]["write_1MiB"]["mib_per_s"], "MiB/s")
    rep.add("drm_write_1MiB_mib_per_s", rows["drm"]["write_1MiB"]["mib_per_s"], "MiB/s",
            baseline="module_write_1MiB_mib_per_s")
    for t in TRANSPORTS:
        rep.add(f"{t}_empty_launch_backend_us", rows[t]["empty_launch"]["host_total_us_median"], "us")
    for t in handoff:  # --with-handoff: the LAUNCH fast path against the hand-off path, per transport
        for name in ("empty_launch", "matmul_32"):
            rep.add(f"{t}_{name}_handoff_us", handoff[t][name]["guest_roundtrip_us_median"], "us")
            rep.add(f"{t}_{name}_vs_handoff", rows[t][name]["guest_roundtrip_us_median"], "us",
                    baseline=f"{t}_{name}_handoff_us")
        rep.add(f"{t}_empty_launch_backend_handoff_us", handoff[t]["empty_launch"]["host_total_us_median"], "us")
    rep.notes.append("medians of guest-timed round trips; ratio = DRM / module (the baseline) in the same run")
    rep.notes.append("DRM: one EXECBUFFER + fence wait per request, the reply read from a mapped resource")
    rep.emit(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
