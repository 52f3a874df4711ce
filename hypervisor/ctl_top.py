"""``pxosctl top``: a live dashboard of pxos-hvd in plain ANSI (no curses).

One Stats call per frame. Per VM: share target vs achieved, memory used vs quota, device
use vs pool, queue depth, p50/p99 latency, VM switches, prefetch hit rate and stall time
(the last two from VMStats.extra, which overcommit fills; "-" until the keys exist).
``--once`` prints a single frame without escape codes (scripts, files, pipes).
"""

from __future__ import annotations

import sys
import time

from .ctl import EXIT_OK, UsageError
from .ctl_format import pct, print_json, size, table
from .rpc import pxos_pb2 as pb
from .rpc.client import Client

_CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear screen
_BOLD, _RESET = "\x1b[1m", "\x1b[0m"
HEADERS = ["VM", "NAME", "DEV", "SHARE", "ACHIEVED", "MEM USED/QUOTA", "DEVICE/POOL", "QUEUE", "P50 ms", "P99 ms",
           "SWITCHES", "HIT", "STALL s"]


def _hit_rate(extra) -> float | None:
    if "prefetch_hits" not in extra and "prefetch_misses" not in extra:
        return None
    hits, misses = extra.get("prefetch_hits", 0.0), extra.get("prefetch_misses", 0.0)
    return hits / (hits + misses) if hits + misses > 0 else None


def frame_data(resp: pb.StatsResponse) -> dict:
    """One frame as plain data (what --json prints). Every key that `pxosctl stats --json`
    also has carries the same name, unit and meaning there (vm_id, share in percent,
    achieved_share 0..1, latency_p50_ms, switch_p50_seconds, ...); the rest are top's own."""
    d, s = resp.device, resp.scheduler
    pools = {u.id: u.pool_bytes for u in resp.devices}  # a VM's pool is its own device's
    vms = []
    for v in resp.vms:
        pool = pools.get(v.device, d.pool_bytes)
        vms.append({
            "vm_id": v.vm_id, "name": v.name, "device": v.device, "share": v.share,
            "achieved_share": v.achieved_share, "cap": v.cap if v.HasField("cap") else None,
            "memory_used": v.memory_used, "memory_quota": v.memory_quota,
            "memory_device_bytes": v.memory_device_bytes, "device_pool": pool,
            "device_use": v.memory_device_bytes / pool if pool else None,
            "queue_depth": v.queue_depth, "inflight": v.inflight,
            "latency_p50_ms": v.latency_p50_ms, "latency_p99_ms": v.latency_p99_ms,
            "vm_switches_in": v.vm_switches_in, "launches_total": v.launches_total,
            "hit_rate": _hit_rate(v.extra),
            "stall_seconds": v.extra["stall_seconds"] if "stall_seconds" in v.extra else None,
        })
    return {
        "time": resp.time,
        "device": {"backend": d.backend, "device_name": d.device_name, "pool_bytes": d.pool_bytes,
                   "pool_used": d.pool_used, "host_budget": d.host_budget, "host_used": d.host_used,
                   "vendor": d.vendor, "api": d.api, "time_source": d.time_source},
        "scheduler": {"busy_seconds": s.busy_seconds, "launches": s.launches, "vm_switches": s.vm_switches,
                      "switch_p50_seconds": s.switch_p50_seconds, "switch_p99_seconds": s.switch_p99_seconds,
                      "lookahead_planned": len(s.lookahead), "lookahead_depth": s.lookahead_depth},
        "vms": vms,
        "devices": [{"id": u.id, "device_name": u.device_name, "vms": u.vms, "share_used": u.share_used,
                     "utilisation": u.utilisation, "pool_used": u.pool_used, "pool_bytes": u.pool_bytes,
                     "launches": u.launches, "queue_depth": u.queue_depth} for u in resp.devices],
    }


def render(frame: dict, ansi: bool) -> str:
    d, s = frame["device"], frame["scheduler"]
    title = (f"pxOS  {time.strftime('%H:%M:%S', time.localtime(frame['time']))}  {d['backend']} ({d['device_name']})  "
             f"pool {size(d['pool_used'])}/{size(d['pool_bytes'])}")
    if d["host_budget"]:
        title += f"  host {size(d['host_used'])}/{size(d['host_budget'])}"
    sched = (f"busy {s['busy_seconds']:.2f} s  launches {s['launches']}  VM switches {s['vm_switches']} "
             f"(p50 {1e6 * s['switch_p50_seconds']:.1f} us, p99 {1e6 * s['switch_p99_seconds']:.1f} us)  "
             f"look-ahead {s['lookahead_planned']}/{s['lookahead_depth']}")
    for u in frame.get("devices", []) if len(frame.get("devices", [])) > 1 else []:
        sched += (f"\ndevice {u['id']}  busy {pct(100 * u['utilisation'])}  shares {pct(u['share_used'], 0)}  "
                  f"{u['vms']} VMs  pool {size(u['pool_used'])}/{size(u['pool_bytes'])}  queued {u['queue_depth']}")
    rows = []
    for v in frame["vms"]:
        use = "-" if v["device_use"] is None else pct(100 * v["device_use"])
        rows.append([
            str(v["vm_id"]), v["name"], str(v["device"]), pct(v["share"], 0) + (f" (cap {v['cap']:g})" if v["cap"] else ""),
            pct(100 * v["achieved_share"]), f"{size(v['memory_used'])}/{size(v['memory_quota'])}",
            f"{size(v['memory_device_bytes'])} {use}", str(v["queue_depth"]), f"{v['latency_p50_ms']:.3f}",
            f"{v['latency_p99_ms']:.3f}", str(v["vm_switches_in"]),
            "-" if v["hit_rate"] is None else pct(100 * v["hit_rate"]),
            "-" if v["stall_seconds"] is None else f"{v['stall_seconds']:.3f}",
        ])
    body = table(HEADERS, rows, left=2) if rows else "(no VMs registered)"
    if ansi:
        head, _, rest = body.partition("\n")
        body = f"{_BOLD}{head}{_RESET}\n{rest}" if rest else f"{_BOLD}{head}{_RESET}"
        return f"{_CLEAR}{_BOLD}{title}{_RESET}\n{sched}\n\n{body}\n"
    return f"{title}\n{sched}\n\n{body}\n"


def cmd_top(c: Client, args) -> int:
    ansi = sys.stdout.isatty() and not args.once and not args.json
    count = 1 if args.once else args.count
    if args.interval <= 0:
        raise UsageError("--interval must be positive")
    shown = 0
    while count is None or shown < count:
        started = time.monotonic()
        frame = frame_data(c.call("Stats", pb.StatsRequest()))
        if args.json:
            print_json(frame)
        else:
            sys.stdout.write(render(frame, ansi))
            if not ansi and (count is None or shown + 1 < count):
                sys.stdout.write("\n")
            sys.stdout.flush()
        shown += 1
        if count is not None and shown >= count:
            break
        time.sleep(max(0.0, args.interval - (time.monotonic() - started)))
    return EXIT_OK
