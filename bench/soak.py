"""Soak: a real pxos-hvd process with eight VMs under churn for ``--seconds``, watched for
leaks, lost completions and accounting drift (issue 11).

    python -m bench.soak [--seconds 60] [--json] [--seed 1]

It starts ``pxos-hvd`` as an operator does (a config file, ``--ready-fd``; NumPy backend) with
eight VMs, each with its own socket, and runs at once:

- eight guests (``bench/soak_guest.py``): scripted vhost-user front-ends that connect,
  run sessions of allocs, transfers, compiles and launches of every size with hostile
  requests mixed in, and leave gracefully, abruptly (requests in flight) or by a device reset;
- an operator (``Operator`` below) over gRPC, as ``pxosctl`` does: memory quota changes (cuts
  below usage are refused), share and cap changes, ``vm remove`` under a connected guest and
  ``vm add`` again, and hostile control requests (unknown VMs, absurd quotas, sockets outside
  ``socket_dir``, duplicate ids);
- a sampler: the daemon's RSS, open fds, threads and mapped guest-RAM memfds from ``/proc``.

Every ``--checkpoint`` seconds everything pauses: all guests disconnect, removed VMs are back,
and the daemon must hold nothing (every VM's usage, the device pool and host RAM at zero) and
its fds, threads and RSS are taken at rest. The first checkpoint (after ``--warmup``) is the
baseline; the last is the end. The run fails (exit 1) when a completion was lost, accounting
drifted, the daemon answered PXOS_S_INTERNAL or died, or fds, threads or RSS grew at rest
beyond ``FD_SLACK``, ``THREAD_SLACK`` and ``RSS_SLACK``.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.common import Report, parser
from bench.soak_guest import GuestWorker
from hypervisor.rpc import pxos_pb2 as pb
from hypervisor.rpc.client import Client
from hypervisor.rpc.status import RpcFailure

REPO = Path(__file__).resolve().parents[1]
VMS = 8
MIB = 1 << 20
QUOTA_MIB = (8, 96)  # the operator sets quotas in this range; 32 MiB at start
SHARES = (5, 12)     # eight VMs: at most 96 % together
FD_SLACK = 4         # fds more at rest than at the baseline: a leak beyond this
THREAD_SLACK = 2     # threads likewise (gRPC's pool grows on demand, up to its size)
RSS_SLACK = (64 * MIB, 0.5)  # bytes, and a fraction of the baseline's RSS: whichever is larger


def config_text(d: str) -> str:
    vms = "".join(f"""
[[vm]]
id = {i}
name = "soak{i}"
memory = "32Mi"
share = 10
socket = "vm{i}.sock"
""" for i in range(1, VMS + 1))
    return f"""[daemon]
grpc_socket = "{d}/hvd.sock"
socket_dir = "{d}/vms"
metrics_address = "127.0.0.1:0"
backend = "numpy"
log_level = "info"
[memory]
device_pool = "192Mi"
host_budget = "256Mi"
{vms}"""


def start_daemon(d: str) -> subprocess.Popen:
    cfg = Path(d) / "pxos-hvd.toml"
    cfg.write_text(config_text(d))
    r, w = os.pipe()
    log = open(Path(d) / "pxos-hvd.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "hypervisor.daemon", "--config", str(cfg), "--ready-fd", str(w)],
                            cwd=REPO, pass_fds=(w,), stdout=log, stderr=subprocess.STDOUT)
    os.close(w)
    with os.fdopen(r) as ready:
        line = ready.readline()
    if line != "ready\n":
        proc.kill()
        raise RuntimeError(f"pxos-hvd did not start: {(Path(d) / 'pxos-hvd.log').read_text()[-2000:]}")
    return proc


def sample(pid: int) -> dict:
    """The daemon's RSS (bytes), open fds, threads and memfd mappings (guest RAM) now."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) * 1024
    threads = int(re.search(r"Threads:\s+(\d+)", status).group(1))
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    with open(f"/proc/{pid}/maps") as f:
        memfds = sum(1 for line in f if "memfd:" in line)
    return {"t": time.monotonic(), "rss": rss, "fds": fds, "threads": threads, "memfd_maps": memfds}


def refused(e: RpcFailure) -> bool:
    """A typed refusal (what the request deserved), not a host failure or a dead daemon."""
    return e.code not in ("INTERNAL", "UNKNOWN", "UNAVAILABLE", "DEADLINE_EXCEEDED")


class Operator(threading.Thread):
    """What an operator does with ``pxosctl`` while guests run, one action every ``every`` s."""

    def __init__(self, client: Client, present: dict, *, seed: int, stop: threading.Event,
                 pause: threading.Event, every: float):
        super().__init__(name="soak-operator", daemon=True)
        self.c, self.present, self.rng = client, present, random.Random(seed)
        self.stop, self.pause, self.every = stop, pause, every
        self.quota = {i: 32 * MIB for i in present}
        self.share = {i: 10.0 for i in present}
        self.counts = {"quota_set": 0, "quota_refused": 0, "share_set": 0, "vm_removed": 0, "vm_added": 0,
                       "hostile_rejected": 0, "hostile_accepted": 0}
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
            mem = rng.randint(1, 4) * MIB if rng.random() < 0.25 else rng.randint(*QUOTA_MIB) * MIB
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
            if rng.random() < 0.5:
                req.cap = float(rng.randint(int(share) + 10, 100))
            else:
                req.remove_cap = True
            try:
                self.c.call("SetQuota", req)
                self.share[vm] = share
                self.counts["share_set"] += 1
            except RpcFailure as e:
                if not refused(e):
                    raise
        elif roll < 0.75:
            self.remove_and_add(vm, rng.uniform(0.2, 2.0))
        else:
            self.hostile(vm)

    def remove_and_add(self, vm: int, away: float) -> None:
        self.present[vm].clear()
        self.c.call("UnregisterVM", pb.VMRef(vm_id=vm))
        self.counts["vm_removed"] += 1
        time.sleep(away)
        self.add(vm)

    def add(self, vm: int) -> None:
        self.c.call("RegisterVM", pb.RegisterVMRequest(vm_id=vm, name=f"soak{vm}", memory_bytes=self.quota[vm],
                                                       share=self.share[vm], socket=f"vm{vm}.sock"))
        self.counts["vm_added"] += 1
        self.present[vm].set()

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


class LaunchEvents(threading.Thread):
    """Every ``launch_completed`` event of the daemon (gRPC WatchEvents, as ``pxosctl events``):
    the device time of each launch as the dispatcher charged it, abandoned ones included."""

    def __init__(self, socket_path: str):
        super().__init__(name="soak-events", daemon=True)
        self.client = Client(socket_path=socket_path, timeout=None)
        self.ns: dict[int, int] = {}  # launch_id -> device_ns, since the last checkpoint
        self.count = self.total_ns = 0  # over the whole run
        self.dropped = 0
        self.ready = threading.Event()

    def run(self) -> None:
        stream = self.client.watch_events(kinds=["launch_completed"])
        self.ready.set()
        try:
            for ev in stream:
                d = json.loads(ev.detail_json)
                self.ns[int(d["launch_id"])] = int(d["device_ns"])
                self.count += 1
                self.total_ns += int(d["device_ns"])
                self.dropped = ev.dropped
        except RpcFailure:
            pass  # the channel closed at the end of the soak

    def close(self) -> None:
        self.client.close()


class Soak:
    """The daemon, its guests, the operator and the sampler, and the checks between them."""

    def __init__(self, d: str, *, seed: int, think: float, operator_every: float, sample_every: float):
        self.d, self.sample_every = d, sample_every
        self.proc = start_daemon(d)
        self.client = Client(socket_path=f"{d}/hvd.sock", timeout=60)
        self.stop, self.pause = threading.Event(), threading.Event()
        self.present = {i: threading.Event() for i in range(1, VMS + 1)}
        for e in self.present.values():
            e.set()
        self.guests = [GuestWorker(i, f"{d}/vms/vm{i}.sock", seed=seed * 100 + i, stop=self.stop,
                                   pause=self.pause, present=self.present[i], think=think)
                       for i in range(1, VMS + 1)]
        self.operator = Operator(self.client, self.present, seed=seed, stop=self.stop, pause=self.pause,
                                 every=operator_every)
        self.events = LaunchEvents(f"{d}/hvd.sock")
        self.ledger = {"launches": 0, "events_ns": 0, "busy_drift_ns": 0, "guest_mismatch": 0, "checked": 0}
        self.samples: list[dict] = []
        self.checkpoints: list[dict] = []
        self.died: str | None = None
        self._sampler = threading.Thread(target=self._sample_loop, name="soak-sampler", daemon=True)

    def start(self) -> None:
        self.events.start()
        self.events.ready.wait(10)
        self._sampler.start()
        self.operator.start()
        for gw in self.guests:
            gw.start()

    def _sample_loop(self) -> None:
        while not self.stop.is_set():
            if self.proc.poll() is not None:
                self.died = f"pxos-hvd exited with {self.proc.returncode} during the soak"
                self.stop.set()
                return
            try:
                self.samples.append(sample(self.proc.pid))
            except (OSError, AttributeError):
                pass
            self.stop.wait(self.sample_every)

    def checkpoint(self, label: str, timeout: float = 600) -> dict:
        """Pause everything, let every guest disconnect, and check the daemon holds nothing."""
        self.pause.set()
        deadline = time.monotonic() + timeout
        for w in [self.operator, *self.guests]:
            if not w.idle.wait(max(deadline - time.monotonic(), 0.1)):
                raise TimeoutError(f"{w.name} did not pause within {timeout} s")
        rest = self._at_rest(deadline)
        self.pause.clear()
        rest["label"] = label
        self.checkpoints.append(rest)
        b = [gw.books for gw in self.guests]
        print(f"soak {label}: at rest fds {rest['fds']} threads {rest['threads']} RSS {rest['rss'] / MIB:.1f} MiB "
              f"memfd {rest['memfd_maps']} held {rest['drift_bytes']} B; answered {sum(x.answered for x in b)} "
              f"lost {sum(x.lost for x in b)} drift_ns {sum(x.drift_ns for x in b)} ledger {self.ledger} "
              f"errors {sum(len(x.errors) for x in b) + len(self.operator.errors)}", file=sys.stderr, flush=True)
        return rest

    def _at_rest(self, deadline: float) -> dict:
        """Wait until no VM has a front-end connected, then read the books and /proc."""
        while True:
            st = self.client.call("Stats", pb.StatsRequest())
            connected = [v.vm_id for v in st.vms if v.transport.connected]
            if not connected and len(st.vms) == VMS or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        settle = time.monotonic() + 10  # a closed connection is torn down (RAM unmapped) just after
        while (s := sample(self.proc.pid))["memfd_maps"] and time.monotonic() < settle:
            time.sleep(0.05)
        st = self.client.call("Stats", pb.StatsRequest())
        s.update(connected=connected, vms=len(st.vms), pool_used=st.device.pool_used, host_used=st.device.host_used,
                 vm_used={v.vm_id: v.memory_used for v in st.vms if v.memory_used},
                 busy_seconds=st.scheduler.busy_seconds, launches=st.scheduler.launches)
        s["drift_bytes"] = st.device.pool_used + st.device.host_used + sum(v.memory_used for v in st.vms)
        self._check_ledger(st, deadline)
        return s

    def _check_ledger(self, st, deadline: float) -> None:
        """At rest: the dispatcher's busy time is the sum of every launch's device_ns (to the
        ns each was truncated to), and each launch a guest was answered was charged exactly
        the device_ns its answer said."""
        ev = self.events
        if not ev.is_alive():
            return  # before start
        while ev.count < st.scheduler.launches and time.monotonic() < deadline and not ev.dropped:
            time.sleep(0.05)
        if ev.dropped:
            return  # a slow reader lost events: nothing exact to say (reported as events_dropped)
        busy = round(st.scheduler.busy_seconds * 1e9)
        self.ledger.update(launches=ev.count, scheduler_launches=st.scheduler.launches, events_ns=ev.total_ns)
        if abs(busy - ev.total_ns) > ev.count + 1:
            self.ledger["busy_drift_ns"] = abs(busy - ev.total_ns)
        charged, ev.ns = ev.ns, {}  # nothing runs at rest: no event arrives meanwhile
        for gw in self.guests:
            answered, gw.books.launch_ns = gw.books.launch_ns, {}
            for lid, ns in answered.items():
                self.ledger["checked"] += 1
                if charged.get(lid) != ns:
                    self.ledger["guest_mismatch"] += 1

    def finish(self) -> tuple[int, str]:
        """Stop the guests and the operator, then the daemon with SIGTERM: (exit code, log)."""
        self.stop.set()
        for w in [self.operator, *self.guests]:
            w.join(timeout=300)
        self._sampler.join(timeout=10)
        self.client.close()
        self.events.close()
        rc = self.proc.poll()
        if rc is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                rc = self.proc.wait()
        return rc, (Path(self.d) / "pxos-hvd.log").read_text(errors="replace")


def run(seconds: float, *, seed: int = 1, warmup: float | None = None, every: float | None = None,
        think: float = 0.02, operator_every: float = 0.5, sample_every: float = 1.0,
        keep_log: str | None = None) -> dict:
    """Run the soak; returns the summary (``verdict`` lists what failed; empty: passed)."""
    warmup = min(10.0, seconds / 4) if warmup is None else warmup
    every = max((seconds - warmup) / 4, 5.0) if every is None else every
    d = tempfile.mkdtemp(prefix="pxsoak-", dir="/tmp")  # short: unix socket paths fit in 108 bytes
    t0 = time.monotonic()
    try:
        soak = Soak(d, seed=seed, think=think, operator_every=operator_every, sample_every=sample_every)
        soak.checkpoint("start")
        soak.start()
        time.sleep(warmup)
        soak.checkpoint("baseline")
        end = t0 + seconds
        while time.monotonic() < end and not soak.stop.is_set():
            soak.stop.wait(min(every, max(end - time.monotonic(), 0)))
            if not soak.stop.is_set():
                soak.checkpoint(f"t+{time.monotonic() - t0:.0f}s")
        rc, log = soak.finish()
        if keep_log:
            Path(keep_log).write_text(log)
        return summarize(soak, rc, log, time.monotonic() - t0, seconds)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def summarize(soak: Soak, rc: int, log: str, elapsed: float, seconds: float) -> dict:
    books = [gw.books for gw in soak.guests]
    tot = {k: sum(getattr(b, k) for b in books) for k in
           ("requests", "answered", "lost", "abandoned", "internal", "hostile", "hostile_accepted", "vm_gone",
            "launch_errors", "device_ns", "checked_sessions", "drift_ns", "usage_drift", "undercharged")}
    sessions = {k: sum(b.sessions[k] for b in books) for k in ("graceful", "abrupt", "reset")}
    by_size: dict[str, int] = {}
    for b in books:
        for k, n in b.launches.items():
            by_size[k] = by_size.get(k, 0) + n
    errors = [e for b in books for e in b.errors] + soak.operator.errors
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
        "fds": {"baseline": base["fds"], "end": last["fds"], "max": max((x["fds"] for x in s), default=0)},
        "threads": {"baseline": base["threads"], "end": last["threads"],
                    "max": max((x["threads"] for x in s), default=0)},
        "rss_mib": {"baseline": base["rss"] / MIB, "end": last["rss"] / MIB,
                    "max": max((x["rss"] for x in s), default=0) / MIB},
        "memfd_maps_at_rest": max(c["memfd_maps"] for c in cps),
        "checkpoints": [{k: c[k] for k in ("label", "rss", "fds", "threads", "memfd_maps", "drift_bytes", "launches")}
                        for c in cps],
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
    r.notes.append(f"{o['seconds']} s; sessions {o['sessions']}; operator {o['operator']}; "
                   f"abandoned on purpose {o['abandoned']}; VM_GONE answers {o['vm_gone']}")
    r.notes.append("launches by size: " + ", ".join(f"{k} {v}" for k, v in sorted(o["launches_by_size"].items())))
    r.notes.append("at rest (fds/threads/RSS MiB): " + "; ".join(
        f"{c['label']} {c['fds']}/{c['threads']}/{c['rss'] / MIB:.0f}" for c in o["checkpoints"]))
    r.notes.append("verdict: " + ("pass" if not o["verdict"] else "FAIL: " + "; ".join(o["verdict"])))
    return r


def main(argv=None) -> int:
    p = parser("pxos-hvd soak: eight VMs under churn; lost completions, drift, leaks")
    p.add_argument("--seconds", type=float, default=60.0, help="length of the run (default 60)")
    p.add_argument("--warmup", type=float, default=None, help="seconds before the baseline checkpoint")
    p.add_argument("--checkpoint", type=float, default=None, help="seconds between checkpoints at rest")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--think", type=float, default=0.02, help="a guest's pause between rounds, at most (s)")
    p.add_argument("--sample-every", type=float, default=1.0, help="seconds between /proc samples")
    p.add_argument("--keep-log", metavar="PATH", help="copy the daemon's log here")
    a = p.parse_args(argv)
    seconds = min(a.seconds, 20.0) if a.quick else a.seconds
    o = run(seconds, seed=a.seed, warmup=a.warmup, every=a.checkpoint, think=a.think, sample_every=a.sample_every,
            keep_log=a.keep_log)
    r = report(o)
    if a.json:
        import json

        from bench.common import machine

        json.dump({"benchmark": "soak", "machine": machine(), "figures": r.figures, "notes": r.notes, **o},
                  sys.stdout, indent=1, default=float)
        print()
    else:
        r.emit(False)
        for e in o["errors"][:10]:
            print(f"  error: {e}")
    return 1 if o["verdict"] else 0


if __name__ == "__main__":
    sys.exit(main())
