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
- a sampler: the daemon's RSS, open fds, threads and mapped guest-RAM memfds from ``/proc``;
- with ``--compile-churn RATE``, new 7-63 KiB sources compiled over gRPC at about RATE per
  second (``bench/soak_compile.py``): garbage for ``--gc-freeze on`` (``[scheduler]
  compile_gc_freeze``) to hold; the daemon's collections and frozen objects are read from
  its ``/metrics`` at each checkpoint.

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
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from bench.common import parser
from bench.soak_compile import CompileChurn
from bench.soak_guest import GuestWorker
from bench.soak_operator import VMS, Operator
from bench.soak_report import report, summarize
from hypervisor.rpc import pxos_pb2 as pb
from hypervisor.rpc.client import Client
from hypervisor.rpc.status import RpcFailure

REPO = Path(__file__).resolve().parents[1]
MIB = 1 << 20


def config_text(d: str, gc_freeze: bool | None = None) -> str:
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
{"" if gc_freeze is None else f"[scheduler]{chr(10)}compile_gc_freeze = {str(gc_freeze).lower()}{chr(10)}"}{vms}"""


def start_daemon(d: str, gc_freeze: bool | None = None) -> subprocess.Popen:
    cfg = Path(d) / "pxos-hvd.toml"
    cfg.write_text(config_text(d, gc_freeze))
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


_GC_SERIES = re.compile(r'^(pxos_gc_collections_total\{generation="(\d)"\}|pxos_gc_frozen_objects|'
                        r'pxos_compile_gc_epochs_total|pxos_compiles_total\{where="pool"\}) (\S+)$', re.M)


def gc_figures(log_path: Path) -> dict:
    """The daemon's collector as its /metrics says (the port from its log): full collections
    (generation 2) and all, objects frozen now, compile_gc_freeze epochs ended, pool compiles."""
    m = re.search(r"metrics on (http://\S+/metrics)", log_path.read_text(errors="replace"))
    if m is None:
        return {}
    with urllib.request.urlopen(m.group(1), timeout=10) as r:
        text = r.read().decode()
    out = {"gc_collections": [0, 0, 0]}
    for name, gen, val in _GC_SERIES.findall(text):
        if gen:
            out["gc_collections"][int(gen)] = int(float(val))
        else:
            key = {"pxos_gc_frozen_objects": "gc_frozen_objects", "pxos_compile_gc_epochs_total": "gc_epochs"}
            out[key.get(name, "pool_compiles")] = int(float(val))
    return out


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

    def __init__(self, d: str, *, seed: int, think: float, operator_every: float, sample_every: float,
                 compile_churn: float = 0.0, gc_freeze: bool | None = None):
        self.d, self.sample_every, self.t0 = d, sample_every, time.monotonic()
        self.proc = start_daemon(d, gc_freeze)
        self.client = Client(socket_path=f"{d}/hvd.sock", timeout=60)
        self.stop, self.pause = threading.Event(), threading.Event()
        self.present = {i: threading.Event() for i in range(1, VMS + 1)}
        for e in self.present.values():
            e.set()
        self.guests = [GuestWorker(i, f"{d}/vms/vm{i}.sock", seed=seed * 100 + i, stop=self.stop,
                                   pause=self.pause, present=self.present[i], think=think)
                       for i in range(1, VMS + 1)]
        self.operator = Operator(self.client, self.present, seed=seed, stop=self.stop, pause=self.pause,
                                 hup=lambda: self.proc.send_signal(signal.SIGHUP),
                                 every=operator_every)
        self.churn = (CompileChurn(Client(socket_path=f"{d}/hvd.sock", timeout=60), self.present, seed=seed,
                                   stop=self.stop, pause=self.pause, rate=compile_churn) if compile_churn else None)
        self.events = LaunchEvents(f"{d}/hvd.sock")
        self.ledger = {"launches": 0, "events_ns": 0, "busy_drift_ns": 0, "guest_mismatch": 0, "checked": 0}
        self.samples: list[dict] = []
        self.checkpoints: list[dict] = []
        self.died: str | None = None
        self._sampler = threading.Thread(target=self._sample_loop, name="soak-sampler", daemon=True)

    def workers(self) -> list[threading.Thread]:
        return [self.operator, *self.guests, *([self.churn] if self.churn is not None else [])]

    def start(self) -> None:
        self.events.start()
        self.events.ready.wait(10)
        self._sampler.start()
        self.operator.start()
        if self.churn is not None:
            self.churn.start()
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
        for w in self.workers():
            if not w.idle.wait(max(deadline - time.monotonic(), 0.1)):
                raise TimeoutError(f"{w.name} did not pause within {timeout} s")
        rest = self._at_rest(deadline)
        self.pause.clear()
        rest["label"], rest["t"] = label, round(time.monotonic() - self.t0, 1)
        self.checkpoints.append(rest)
        b = [gw.books for gw in self.guests]
        print(f"soak {label}: at rest fds {rest['fds']} threads {rest['threads']} RSS {rest['rss'] / MIB:.1f} MiB "
              f"gc {rest.get('gc_collections')} frozen {rest.get('gc_frozen_objects')} epochs {rest.get('gc_epochs')} "
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
        s["settings_lost"] = self.operator.mismatches(st.vms)  # nothing undid what the operator set
        try:
            s.update(gc_figures(Path(self.d) / "pxos-hvd.log"))
        except OSError as e:  # the figures are reported, not judged: a scrape that failed is noted
            s["gc_error"] = str(e)
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
        for w in self.workers():
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
        keep_log: str | None = None, compile_churn: float = 0.0, gc_freeze: bool | None = None) -> dict:
    """Run the soak; returns the summary (``verdict`` lists what failed; empty: passed)."""
    warmup = min(10.0, seconds / 4) if warmup is None else warmup
    every = max((seconds - warmup) / 4, 5.0) if every is None else every
    d = tempfile.mkdtemp(prefix="pxsoak-", dir="/tmp")  # short: unix socket paths fit in 108 bytes
    t0, soak = time.monotonic(), None
    try:
        soak = Soak(d, seed=seed, think=think, operator_every=operator_every, sample_every=sample_every,
                    compile_churn=compile_churn, gc_freeze=gc_freeze)
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
        if soak is not None and soak.proc.poll() is None:  # interrupted: never leave the daemon behind
            soak.stop.set()
            soak.proc.kill()
            soak.proc.wait()
        shutil.rmtree(d, ignore_errors=True)


def main(argv=None) -> int:
    p = parser("pxos-hvd soak: eight VMs under churn; lost completions, drift, leaks")
    p.add_argument("--seconds", type=float, default=60.0, help="length of the run (default 60)")
    p.add_argument("--warmup", type=float, default=None, help="seconds before the baseline checkpoint")
    p.add_argument("--checkpoint", type=float, default=None, help="seconds between checkpoints at rest")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--think", type=float, default=0.02, help="a guest's pause between rounds, at most (s)")
    p.add_argument("--sample-every", type=float, default=1.0, help="seconds between /proc samples")
    p.add_argument("--keep-log", metavar="PATH", help="copy the daemon's log here")
    p.add_argument("--compile-churn", type=float, default=0.0, metavar="RATE",
                   help="also compile new 7-63 KiB sources over gRPC, about RATE per second (default 0: off)")
    p.add_argument("--gc-freeze", choices=("on", "off"), default=None,
                   help="[scheduler] compile_gc_freeze for the daemon (default: the daemon's default)")
    a = p.parse_args(argv)
    seconds = min(a.seconds, 20.0) if a.quick else a.seconds
    o = run(seconds, seed=a.seed, warmup=a.warmup, every=a.checkpoint, think=a.think, sample_every=a.sample_every,
            keep_log=a.keep_log, compile_churn=a.compile_churn,
            gc_freeze=None if a.gc_freeze is None else a.gc_freeze == "on")
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
