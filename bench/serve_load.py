"""A load generator for VMs serving OpenAI-compatible completions (pxos-vm serve): run it
inside the guests' network namespace (``ip netns exec NAME``, or GuestNetwork.popen).

    python -m bench.serve_load vm1=http://10.97.0.2:8000 vm2=http://10.97.0.3:8000,rate=0.5 \\
        [--concurrency 2] [--rate R] [--max-tokens 32] [--duration 30] [--warmup 5] [--live 2] [--json]

Each target is ``NAME=URL`` with optional ``,rate=R`` (open loop: a request every 1/R s,
whether or not earlier ones finished), ``,concurrency=C`` (closed loop: C requests always in
flight, which saturates the VM) and ``,max_tokens=N``; ``--rate``/``--concurrency`` set the
default. Every request streams (``stream: true``, ``ignore_eos: true``, so each asks for
exactly ``max_tokens``): time to first token is the first chunk with text, end-to-end the
``[DONE]``. Per target, over the measured window (after ``--warmup``): requests/s
(requests finished in it), tokens/s (chunks received in it, scaled to the tokens the server
reported), TTFT and end-to-end p50/p99 of the requests finished in it, and errors (non-200
answers, broken streams, requests refused for being too many outstanding). At the end the
requests still in flight are cut (their servers stop generating: the client went away).
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

DEFAULT_PROMPT = "<|im_start|>user\nTell me about the sea.<|im_end|>\n<|im_start|>assistant\n"
#: Open-loop requests of one target in flight at once; beyond it a request is counted as an
#: error instead of growing the generator's threads without bound.
MAX_OUTSTANDING = 64
REQUEST_TIMEOUT_S = 600.0
#: A guest is not trusted: one line of its stream longer than this ends that request as an
#: error instead of growing the generator's memory.
MAX_LINE_BYTES = 1 << 20


@dataclass
class Target:
    name: str
    host: str
    port: int
    rate: float = 0.0          # requests per second (open loop); 0: closed loop
    concurrency: int = 1
    max_tokens: int = 32
    prompt: str = DEFAULT_PROMPT


@dataclass
class Sample:
    start: float
    ttft: float | None = None
    end: float | None = None
    tokens: int = 0
    chunk_times: list[float] = field(default_factory=list)
    error: str | None = None


def parse_target(spec: str, *, rate: float, concurrency: int, max_tokens: int, prompt: str) -> Target:
    name, sep, rest = spec.partition("=")
    if not sep or not name:
        raise ValueError(f"target {spec!r}: want NAME=URL[,rate=R][,concurrency=C][,max_tokens=N]")
    url, *opts = rest.split(",")
    u = urlsplit(url)
    if u.scheme != "http" or not u.hostname:
        raise ValueError(f"target {spec!r}: want an http:// URL")
    t = Target(name, u.hostname, u.port or 80, rate, concurrency, max_tokens, prompt)
    for opt in opts:
        key, _, value = opt.partition("=")
        try:
            if key == "rate":
                t.rate = float(value)
            elif key == "concurrency":
                t.concurrency = int(value)
            elif key == "max_tokens":
                t.max_tokens = int(value)
            else:
                raise ValueError(f"unknown option {key!r}")
        except ValueError as e:
            raise ValueError(f"target {spec!r}: {e}") from None
    if t.rate < 0 or t.concurrency < 1 or t.max_tokens < 1:
        raise ValueError(f"target {spec!r}: rate >= 0, concurrency >= 1, max_tokens >= 1")
    return t


class Load:
    """The requests of every target, their samples, and the connections to cut at the end."""

    def __init__(self, targets: list[Target]):
        self.targets = targets
        self.samples: dict[str, list[Sample]] = {t.name: [] for t in targets}
        self.stopping = threading.Event()
        self._open: set[http.client.HTTPConnection] = set()
        self._outstanding = {t.name: 0 for t in targets}
        self._lock = threading.Lock()

    def request(self, t: Target) -> Sample:
        s = Sample(time.monotonic())
        conn = http.client.HTTPConnection(t.host, t.port, timeout=REQUEST_TIMEOUT_S)
        with self._lock:
            self._open.add(conn)
            self.samples[t.name].append(s)
        body = json.dumps({"prompt": t.prompt, "max_tokens": t.max_tokens, "stream": True, "ignore_eos": True})
        try:
            conn.request("POST", "/v1/completions", body=body.encode(), headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            if r.status != 200:
                s.error = f"HTTP {r.status}: {r.read(300)!r}"
                return s
            chunks, done = 0, False
            while line := r.readline(MAX_LINE_BYTES + 1):
                if len(line) > MAX_LINE_BYTES:
                    s.error = f"a stream line over {MAX_LINE_BYTES} bytes"
                    return s
                if not line.startswith(b"data: "):
                    continue
                payload = line[6:].strip()
                if payload == b"[DONE]":
                    done = True
                    break
                obj = json.loads(payload)
                if "error" in obj:
                    s.error = str(obj["error"])[:300]
                    return s
                now = time.monotonic()
                choice = obj["choices"][0]
                if choice.get("text"):
                    chunks += 1
                    s.chunk_times.append(now)
                    if s.ttft is None:
                        s.ttft = now - s.start
                if "usage" in obj:
                    s.tokens = int(obj["usage"]["completion_tokens"])
            if not done and not self.stopping.is_set():  # stop() cuts streams still open: not an error
                s.error = "the stream ended without [DONE]"
            else:
                s.end = time.monotonic()
        except (OSError, http.client.HTTPException, ValueError, KeyError) as e:
            if not self.stopping.is_set():
                s.error = f"{type(e).__name__}: {e}"
        finally:
            with self._lock:
                self._open.discard(conn)
            conn.close()
        return s

    def _closed_loop(self, t: Target) -> None:
        while not self.stopping.is_set():
            s = self.request(t)
            if s.error and not self.stopping.is_set():
                time.sleep(0.2)  # a failing server is not hammered

    def _open_loop(self, t: Target) -> None:
        interval = 1.0 / t.rate
        due = time.monotonic()
        while not self.stopping.wait(max(0.0, due - time.monotonic())):
            due += interval
            with self._lock:
                if self._outstanding[t.name] >= MAX_OUTSTANDING:
                    self.samples[t.name].append(Sample(time.monotonic(), error="too many outstanding"))
                    continue
                self._outstanding[t.name] += 1
            threading.Thread(target=self._one_open, args=(t,), daemon=True).start()

    def _one_open(self, t: Target) -> None:
        try:
            self.request(t)
        finally:
            with self._lock:
                self._outstanding[t.name] -= 1

    def start(self) -> list[threading.Thread]:
        threads = []
        for t in self.targets:
            if t.rate > 0:
                threads.append(threading.Thread(target=self._open_loop, args=(t,), daemon=True))
            else:
                threads += [threading.Thread(target=self._closed_loop, args=(t,), daemon=True)
                            for _ in range(t.concurrency)]
        for th in threads:
            th.start()
        return threads

    def stop(self, threads: list[threading.Thread]) -> None:
        self.stopping.set()
        with self._lock:
            conns = list(self._open)
        for c in conns:
            try:
                if c.sock is not None:
                    c.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for th in threads:
            th.join(30)


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile; None without values."""
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v), max(1, math.ceil(len(v) * q / 100))) - 1]


def report(samples: list[Sample], t0: float, t1: float) -> dict:
    """Figures of one target over the window [t0, t1)."""
    span = t1 - t0
    done = [s for s in samples if s.end is not None and t0 <= s.end < t1]
    tokens = 0.0
    for s in samples:
        if s.chunk_times:
            scale = s.tokens / len(s.chunk_times) if s.tokens else 1.0
            tokens += scale * sum(1 for c in s.chunk_times if t0 <= c < t1)
    ttft = [s.ttft for s in done if s.ttft is not None]
    e2e = [s.end - s.start for s in done]
    r4 = lambda x: None if x is None else round(x, 4)  # noqa: E731
    return {"requests": len(done), "requests_per_s": round(len(done) / span, 4),
            "tokens_per_s": round(tokens / span, 3),
            "ttft_p50_s": r4(percentile(ttft, 50)), "ttft_p99_s": r4(percentile(ttft, 99)),
            "e2e_p50_s": r4(percentile(e2e, 50)), "e2e_p99_s": r4(percentile(e2e, 99)),
            "errors": sum(1 for s in samples if s.error and t0 <= s.start < t1),
            "error_examples": sorted({s.error for s in samples if s.error})[:3]}


def run_load(targets: list[Target], *, duration: float, warmup: float = 0.0, live: float = 0.0,
             out=sys.stdout) -> dict:
    """Drive every target for warmup + duration seconds; the report of the window after warmup."""
    load = Load(targets)
    start = time.monotonic()
    threads = load.start()
    t0, t1 = start + warmup, start + warmup + duration
    try:
        last = start
        while (now := time.monotonic()) < t1:
            time.sleep(min(live or 1.0, t1 - now))
            if live:
                now = time.monotonic()
                line = " | ".join(f"{t.name}: {report(load.samples[t.name], last, now)['tokens_per_s']:6.2f} tok/s "
                                  f"{sum(1 for s in load.samples[t.name] if s.end):4d} done" for t in targets)
                print(f"[{now - start:6.1f} s] {line}", file=out, flush=True)
                last = now
    finally:
        load.stop(threads)
    vms = {t.name: report(load.samples[t.name], t0, t1) for t in targets}
    total = sum(v["tokens_per_s"] for v in vms.values())
    for v in vms.values():
        v["fraction_of_tokens"] = round(v["tokens_per_s"] / total, 4) if total else 0.0
    return {"duration_s": duration, "warmup_s": warmup, "vms": vms,
            "targets": {t.name: {"url": f"http://{t.host}:{t.port}", "rate": t.rate, "concurrency": t.concurrency,
                                 "max_tokens": t.max_tokens} for t in targets}}


def format_report(result: dict) -> str:
    rows = [f"{'vm':>6} {'req/s':>7} {'tok/s':>8} {'share':>6} {'ttft p50':>9} {'ttft p99':>9} "
            f"{'e2e p50':>8} {'e2e p99':>8} {'errors':>6}"]
    f = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
    for name, v in result["vms"].items():
        rows.append(f"{name:>6} {v['requests_per_s']:7.3f} {v['tokens_per_s']:8.2f} {100 * v['fraction_of_tokens']:5.1f}% "
                    f"{f(v['ttft_p50_s']):>9} {f(v['ttft_p99_s']):>9} {f(v['e2e_p50_s']):>8} {f(v['e2e_p99_s']):>8} "
                    f"{v['errors']:6d}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="serve_load", description=__doc__.split("\n\n")[0])
    p.add_argument("targets", nargs="+", metavar="NAME=URL[,rate=R][,concurrency=C][,max_tokens=N]")
    p.add_argument("--rate", type=float, default=0.0, help="requests/s per target (open loop); default closed loop")
    p.add_argument("--concurrency", type=int, default=2, help="closed loop: requests in flight per target")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--prompt", default=DEFAULT_PROMPT)
    p.add_argument("--duration", type=float, default=30.0, help="seconds measured")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds of load before measuring")
    p.add_argument("--live", type=float, default=0.0, help="print tokens/s every this many seconds")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    try:
        targets = [parse_target(s, rate=args.rate, concurrency=args.concurrency, max_tokens=args.max_tokens,
                                prompt=args.prompt) for s in args.targets]
    except ValueError as e:
        p.error(str(e))
    if args.duration <= 0 or args.warmup < 0:
        p.error("--duration must be positive and --warmup not negative")
    result = run_load(targets, duration=args.duration, warmup=args.warmup, live=args.live,
                      out=sys.stderr if args.json else sys.stdout)
    print(json.dumps(result) if args.json else format_report(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
