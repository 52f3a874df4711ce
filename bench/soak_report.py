"""The figures and the verdict of ``bench/soak.py``: the guests' and the operator's books,
the checkpoints at rest, the daemon's log, added up and judged."""

from __future__ import annotations

import re

from bench.common import Report

MIB = 1 << 20
VMS = 8
FD_SLACK = 4         # fds more at rest than at the baseline: a leak beyond this
THREAD_SLACK = 2     # threads likewise (gRPC's pool grows on demand, up to its size)
RSS_SLACK = (64 * MIB, 0.5)  # bytes, and a fraction of the baseline's RSS: whichever is larger


def summarize(soak, rc: int, log: str, elapsed: float, seconds: float) -> dict:
    books = [gw.books for gw in soak.guests]
    tot = {k: sum(getattr(b, k) for b in books) for k in
           ("requests", "answered", "lost", "abandoned", "internal", "hostile", "hostile_accepted", "vm_gone",
            "launch_errors", "device_ns", "checked_sessions", "drift_ns", "usage_drift", "undercharged")}
    sessions = {k: sum(b.sessions[k] for b in books) for k in ("graceful", "abrupt", "reset")}
    by_size: dict[str, int] = {}
    for b in books:
        for k, n in b.launches.items():
            by_size[k] = by_size.get(k, 0) + n
    churn = getattr(soak, "churn", None)
    errors = [e for b in books for e in b.errors] + soak.operator.errors + (churn.errors if churn else [])
    connect_errors = [e for b in books for e in b.connect_errors]
    cps = soak.checkpoints
    base, last = (cps[1] if len(cps) > 1 else cps[0]), cps[-1]
    rest_drift = sum(c["drift_bytes"] for c in cps)
    tracebacks = log.count("Traceback")
    levels = {lv: [ln for ln in log.splitlines() if f" {lv} " in ln] for lv in ("ERROR", "CRITICAL", "WARNING")}
    excerpt = ""
    if tracebacks:
        at = log.index("Traceback")
        excerpt = log[max(at - 600, 0):at + 3000]
    s = soak.samples
    out = {
        "seconds": round(elapsed, 1), "asked_seconds": seconds, "daemon_exit": rc, "sessions": sessions,
        **tot, "launches_ok": sum(by_size.values()), "launches_by_size": by_size,
        "requests_per_second": tot["answered"] / elapsed if elapsed else 0.0,
        "operator": dict(soak.operator.counts), "connect_errors": len(connect_errors),
        "ledger": dict(soak.ledger), "events_dropped": soak.events.dropped,
        "accounting_drift": tot["drift_ns"] + tot["usage_drift"] + rest_drift + tot["undercharged"]
        + soak.ledger["busy_drift_ns"] + soak.ledger["guest_mismatch"],
        "rest_drift_bytes": rest_drift,
        "vms_missing_at_rest": sum(VMS - c["vms"] for c in cps),
        "settings_lost": [m for c in cps for m in c["settings_lost"]][:10],
        "fds": {"baseline": base["fds"], "end": last["fds"], "max": max((x["fds"] for x in s), default=0)},
        "threads": {"baseline": base["threads"], "end": last["threads"],
                    "max": max((x["threads"] for x in s), default=0)},
        "rss_mib": {"baseline": base["rss"] / MIB, "end": last["rss"] / MIB,
                    "max": max((x["rss"] for x in s), default=0) / MIB},
        "memfd_maps_at_rest": max(c["memfd_maps"] for c in cps),
        "rss_slope_mib_per_hour": _slope([(c["t"], c["rss"] / MIB) for c in cps[1:]]) * 3600,
        "checkpoints": [{k: c.get(k) for k in ("label", "t", "rss", "fds", "threads", "memfd_maps", "drift_bytes",
                                               "launches", "gc_collections", "gc_frozen_objects", "gc_epochs",
                                               "pool_compiles")}
                        for c in cps],
        "compile_churn": dict(churn.counts) if churn else None,
        "series": _decimate([{"t": round(x["t"] - s[0]["t"], 1), "rss_mib": round(x["rss"] / MIB, 1), "fds": x["fds"],
                              "threads": x["threads"]} for x in s], 120) if s else [],
        "log_tracebacks": tracebacks, "log_excerpt": excerpt,
        "log_errors": len(levels["ERROR"]) + len(levels["CRITICAL"]), "log_warnings": len(levels["WARNING"]),
        "log_error_samples": (levels["ERROR"] + levels["CRITICAL"])[:5],
        "log_warning_kinds": _kinds(levels["WARNING"]), "errors": errors[:20], "connect_error_samples": connect_errors[:5],
    }
    out["verdict"] = verdict(out, soak.died)
    return out


def verdict(o: dict, died: str | None) -> list[str]:
    bad = []
    if died or o["daemon_exit"] != 0:
        bad.append(died or f"pxos-hvd exited {o['daemon_exit']} on SIGTERM")
    if o["lost"]:
        bad.append(f"{o['lost']} completions lost")
    if o["accounting_drift"]:
        led = o.get("ledger", {})
        bad.append(f"accounting drift: {o['drift_ns']} ns of device time in sessions, {led.get('busy_drift_ns', 0)} "
                   f"ns between busy time and the launches' sum, {led.get('guest_mismatch', 0)} launches charged "
                   f"other than answered, {o['usage_drift']} bytes after sessions freed all, "
                   f"{o['rest_drift_bytes']} bytes held at rest, {o['undercharged']} sessions undercharged")
    if o["internal"]:
        bad.append(f"{o['internal']} requests answered PXOS_S_INTERNAL")
    if o["hostile_accepted"] or o["operator"]["hostile_accepted"]:
        bad.append("hostile requests accepted")
    if o.get("vms_missing_at_rest") or o.get("settings_lost"):
        bad.append(f"the operator's changes did not hold: {o.get('vms_missing_at_rest', 0)} VMs missing at rest; "
                   + "; ".join(o.get("settings_lost", [])[:3]))
    if o["connect_errors"]:
        bad.append(f"{o['connect_errors']} connections to a present VM failed")
    if o["errors"]:
        bad.append(f"{len(o['errors'])}+ errors (see errors)")
    if o["log_tracebacks"] or o.get("log_errors"):
        bad.append(f"{o.get('log_errors', 0)} ERROR lines, {o['log_tracebacks']} tracebacks in the daemon's log")
    if o["memfd_maps_at_rest"]:
        bad.append(f"{o['memfd_maps_at_rest']} guest-RAM mappings kept with no guest connected")
    if o["fds"]["end"] - o["fds"]["baseline"] > FD_SLACK:
        bad.append(f"fds grew at rest: {o['fds']['baseline']} -> {o['fds']['end']}")
    if o["threads"]["end"] - o["threads"]["baseline"] > THREAD_SLACK:
        bad.append(f"threads grew at rest: {o['threads']['baseline']} -> {o['threads']['end']}")
    rss = o["rss_mib"]
    if (rss["end"] - rss["baseline"]) * MIB > max(RSS_SLACK[0], RSS_SLACK[1] * rss["baseline"] * MIB):
        bad.append(f"RSS grew at rest: {rss['baseline']:.1f} -> {rss['end']:.1f} MiB")
    return bad


def _kinds(lines: list[str], n: int = 8) -> dict[str, int]:
    """Warning lines grouped by what they say (numbers and names of sockets blanked)."""
    out: dict[str, int] = {}
    for ln in lines:
        msg = ln.split(" WARNING ", 1)[-1]
        msg = re.sub(r"/tmp/\S+|\d+", "#", msg)[:110]
        out[msg] = out.get(msg, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1])[:n])


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x (0 for fewer than three points): RSS at rest over time."""
    if len(points) < 3:
        return 0.0
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    den = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / den if den else 0.0


def _decimate(rows: list, n: int) -> list:
    step = max(1, len(rows) // n)
    return rows[::step] + ([rows[-1]] if (len(rows) - 1) % step else [])


def report(o: dict) -> Report:
    r = Report("soak")
    r.add("requests_answered", o["answered"], "req")
    r.add("completions_lost", o["lost"], "req", goal="0", ok=o["lost"] == 0)
    r.add("lost_per_request", o["lost"] / max(o["requests"] - o["abandoned"], 1), "ratio", goal="0", ok=o["lost"] == 0)
    r.add("accounting_drift", o["accounting_drift"], "ns+B", goal="0", ok=o["accounting_drift"] == 0)
    r.add("launch_device_seconds", o["device_ns"] / 1e9, "s")
    r.add("launches_ok", o["launches_ok"], "launch")
    r.add("requests_per_second", o["requests_per_second"], "req/s")
    r.add("hostile_refused", o["hostile"] + o["operator"]["hostile_rejected"], "req")
    for k in ("fds", "threads", "rss_mib"):
        r.add(f"{k}_baseline", o[k]["baseline"], "MiB" if k == "rss_mib" else "")
        r.add(f"{k}_end", o[k]["end"], "MiB" if k == "rss_mib" else "", baseline=f"{k}_baseline")
        r.add(f"{k}_max", o[k]["max"], "MiB" if k == "rss_mib" else "", baseline=f"{k}_baseline")
    r.add("rss_at_rest_slope", o["rss_slope_mib_per_hour"], "MiB/h")
    r.notes.append(f"{o['seconds']} s; sessions {o['sessions']}; operator {o['operator']}; "
                   f"abandoned on purpose {o['abandoned']}; VM_GONE answers {o['vm_gone']}")
    r.notes.append("launches by size: " + ", ".join(f"{k} {v}" for k, v in sorted(o["launches_by_size"].items())))
    r.notes.append("at rest (fds/threads/RSS MiB): " + "; ".join(
        f"{c['label']} {c['fds']}/{c['threads']}/{c['rss'] / MIB:.0f}" for c in o["checkpoints"]))
    if o.get("compile_churn"):
        r.notes.append(f"compile churn: {o['compile_churn']}")
    r.notes.append("at rest (full collections/all collections/frozen objects/epochs): " + "; ".join(
        f"{c['label']} {(c.get('gc_collections') or [0, 0, 0])[2]}/{sum(c.get('gc_collections') or [])}/"
        f"{c.get('gc_frozen_objects')}/{c.get('gc_epochs')}" for c in o["checkpoints"]))
    r.notes.append("verdict: " + ("pass" if not o["verdict"] else "FAIL: " + "; ".join(o["verdict"])))
    return r
