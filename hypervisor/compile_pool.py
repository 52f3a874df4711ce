"""Compiles in worker processes, off the daemon's interpreter lock (issue 14,
docs/scheduling.md "Compiles").

``CompilePool(size)`` keeps up to ``size`` worker processes (hypervisor/compile_worker.py),
each compiling one source at a time. They are started with fork+exec of a fresh
interpreter (``subprocess``, the equivalent of multiprocessing's "spawn"): the daemon is
threaded and is never forked without an exec. ``start()`` starts them all now (the
daemon does, at start-up); otherwise each starts when a compile first needs it.

``run(data, key, charge)`` sends one source to an idle worker (waiting for one, first
come first served, when all are busy) and returns what ``primitive_lang.compile_uncached``
returned there. What only a separate process allows:

- a time limit: a compile that used ``timeout_s`` of CPU in its worker (or, on a starved
  machine, ``WALL_FACTOR`` times that of wall time) is ended by killing the worker: the
  caller gets ``CompileTimeout`` (PXOS_S_COMPILE with a ``limit`` diagnostic);
- a worker that dies (a crash, its memory limit, a kill from outside) costs only that
  compile: ``CompileFailed`` (PXOS_S_INTERNAL);
- in both cases a fresh worker takes its place at once, and other VMs' compiles in other
  workers never notice.
``charge.extra_s`` gets the worker CPU time of the compile (the VM's compile budget counts
it). ``close()`` ends every worker: stdin closed (a worker exits at its end), killed if
it has not exited within a second; compiles in flight end with ``Cancelled``.
"""

from __future__ import annotations

import logging
import os
import pickle
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from primitive_lang import CompiledProgram, Diagnostic
from primitive_lang import ast as _ast

from . import errors as E
from .compile_worker import CPU, HEADER, KEY_BYTES, READY

log = logging.getLogger("pxos.compile")

#: CPU seconds one compile may take in a worker before the worker is killed. A 64 KiB
#: source (MAX_SOURCE_BYTES) takes 0.06-0.25 s; this is 20x or more of that.
COMPILE_TIMEOUT_S = 5.0
#: A compile ends at this many times ``timeout_s`` of wall time even if its worker got
#: less CPU (a starved machine): no caller waits without bound.
WALL_FACTOR = 4.0
#: Wall seconds a new worker may take to start (import the language) and say it is ready.
STARTUP_TIMEOUT_S = 30.0
#: Address space of one worker (RLIMIT_AS): a hostile source cannot make a worker take the
#: host's memory. A worker compiling a 64 KiB source uses well under 200 MiB.
WORKER_MEMORY_BYTES = 1 << 30
#: Bytes of one answer a worker may send (a 64 KiB source's program pickles to ~400 KiB).
MAX_ANSWER_BYTES = 64 << 20
#: Workers one pool may keep.
MAX_WORKERS = 64

_ROOT = str(Path(__file__).resolve().parent.parent)  # holds hypervisor/ and primitive_lang/
_BOOT = "from hypervisor.compile_worker import main; raise SystemExit(main())"
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


#: While rebuilding a worker's answer, the longest one pause for a busy device may last
#: (per REBUILD_CHUNK statements), and how often the device is looked at meanwhile.
YIELD_CAP_S = 0.001
YIELD_POLL_S = 0.00005
_rebuilding = threading.local()  # .busy: the device probe of the rebuild on this thread


def _let_others_run() -> None:
    """Rebuilding a worker's answer (pickle.loads) is the one long Python job a pool
    compile leaves in this process. Every REBUILD_CHUNK statements it gives the GIL up, so
    a thread that is waiting for it runs now, not a switch interval later; and while a
    device of this process is busy (a launch queued or running) it waits, up to
    YIELD_CAP_S per chunk, so that the launch does not share the interpreter with it."""
    time.sleep(0)
    busy = getattr(_rebuilding, "busy", None)
    if busy is None:
        return
    end = time.monotonic() + YIELD_CAP_S
    while busy() and time.monotonic() < end:
        time.sleep(YIELD_POLL_S)


_ast.rebuild_hook = _let_others_run


class _Lost(Exception):
    """The worker ended (or broke the protocol) before it answered."""


class _Timeout(Exception):
    def __init__(self, cpu_s: float, wall_s: float):
        self.cpu_s, self.wall_s = cpu_s, wall_s


class _Worker:
    def __init__(self, memory_bytes: int):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen([sys.executable, "-c", _BOOT, str(memory_bytes)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, cwd=_ROOT, env=env, close_fds=True)
        self.pid = self.proc.pid
        self.ready = False
        self.compiles = 0
        self.cpu_at_send: float | None = None  # the process's CPU time when the compile was sent

    def cpu_s(self) -> float | None:
        """CPU time the process used so far (Linux /proc), or None."""
        try:
            with open(f"/proc/{self.pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / _TICK
        except (OSError, IndexError, ValueError):
            return None

    def send(self, payload: bytes, wall_limit_s: float) -> None:
        """One frame; a worker that does not read it (stopped, hung) within
        ``wall_limit_s`` is a _Timeout, never a caller blocked for good."""
        view = memoryview(HEADER.pack(len(payload)) + payload)
        fd = self.proc.stdin.fileno()
        os.set_blocking(fd, False)
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        start = time.monotonic()
        deadline = start + wall_limit_s
        try:
            while view:
                try:
                    view = view[os.write(fd, view):]
                except BlockingIOError:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise _Timeout(0.0, time.monotonic() - start) from None
                    poller.poll(max(1, int(left * 1000) + 1))
        except OSError as exc:  # BrokenPipeError: it is gone
            raise _Lost(str(exc)) from None

    def receive(self, wall_limit_s: float, cpu_limit_s: float | None = None) -> bytes:
        """One frame. ``cpu_limit_s``: raise _Timeout once the worker used that much CPU
        since the call (checked when the wall limit is reached, which then moves on by
        what is left, up to WALL_FACTOR times), else at ``wall_limit_s``."""
        start = time.monotonic()
        cpu0 = self.cpu_s() if cpu_limit_s is not None else None
        deadline, hard = start + wall_limit_s, start + wall_limit_s * (WALL_FACTOR if cpu_limit_s else 1.0)
        fd = self.proc.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        buf, size = bytearray(), None
        while True:
            now = time.monotonic()
            if now >= deadline:
                used = None if cpu0 is None else (self.cpu_s() or cpu0) - cpu0
                if cpu_limit_s is None or now >= hard or used is None or used >= cpu_limit_s:
                    raise _Timeout(used if used is not None else now - start, now - start)
                deadline = min(hard, now + max(cpu_limit_s - used, 0.01))
                continue
            if not poller.poll(max(1, int((deadline - now) * 1000) + 1)):
                continue
            want = HEADER.size - len(buf) if size is None else HEADER.size + size - len(buf)
            chunk = os.read(fd, min(want, 1 << 20))
            if not chunk:  # not reaped here: its CPU time is read (and charged) first
                raise _Lost(f"worker {self.pid} ended its answer pipe")
            buf += chunk
            if size is None and len(buf) == HEADER.size:
                size = HEADER.unpack(buf)[0]
                if size > MAX_ANSWER_BYTES:
                    raise _Lost(f"worker {self.pid} sent a frame of {size} bytes (MAX_ANSWER_BYTES)")
            if size is not None and len(buf) == HEADER.size + size:
                return bytes(buf[HEADER.size:])

    def stop(self, grace_s: float) -> None:
        """End the process (stdin closed, then killed after ``grace_s``) and reap it."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        try:
            self.proc.kill()
        except OSError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:  # unkillable (D state): nothing more to do
            log.error("compile worker %d did not exit after SIGKILL", self.pid)

    def close_pipes(self) -> None:
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass


def _exit_note(proc: subprocess.Popen) -> str:
    code = proc.returncode  # reaped by _drop
    if code is None:
        return ""
    return f": killed by signal {-code}" if code < 0 else f": exited with status {code}"


class CompilePool:
    def __init__(self, size: int, *, timeout_s: float = COMPILE_TIMEOUT_S,
                 memory_bytes: int = WORKER_MEMORY_BYTES):
        if not 1 <= size <= MAX_WORKERS:
            raise E.InvalidArgument(f"a compile pool has 1..{MAX_WORKERS} workers (MAX_WORKERS), got {size}")
        if not 0 < timeout_s <= 3600:
            raise E.InvalidArgument(f"compile timeout must be in (0, 3600] seconds, got {timeout_s!r}")
        self.size, self.timeout_s, self.memory_bytes = size, float(timeout_s), memory_bytes
        self._cond = threading.Condition()
        self._idle: list[_Worker] = []
        self._live: set[_Worker] = set()
        self._closed = False
        self.waiting = 0  # compiles waiting for a worker now
        self.counts = {"compiles": 0, "timeouts": 0, "crashes": 0, "errors": 0, "started": 0}
        self.worker_cpu_s = 0.0
        self.queue_wait_s = 0.0

    # ---- lifecycle
    def start(self) -> CompilePool:
        """Start every worker now (each imports the language in its own process meanwhile)."""
        with self._cond:
            while not self._closed and len(self._live) < self.size:
                self._idle.append(self._spawn())
        return self

    def close(self, grace_s: float = 1.0) -> None:
        with self._cond:
            self._closed = True
            workers = list(self._live)
            idle = set(self._idle)
            self._idle.clear()
            self._cond.notify_all()
        for w in workers:
            if w in idle:
                w.stop(grace_s)
                w.close_pipes()
                with self._cond:
                    self._live.discard(w)
            else:  # busy: its caller reads the end, says Cancelled, closes the pipes
                w.kill()

    @property
    def closed(self) -> bool:
        return self._closed

    def pids(self) -> list[int]:
        with self._cond:
            return sorted(w.pid for w in self._live)

    def stats(self) -> dict:
        with self._cond:
            return {"workers": len(self._live), "busy": len(self._live) - len(self._idle), "waiting": self.waiting,
                    **self.counts, "worker_cpu_seconds": self.worker_cpu_s, "queue_wait_seconds": self.queue_wait_s}

    # ---- work
    def run(self, data: bytes, key: str, charge=None, busy: Callable[[], bool] | None = None
            ) -> CompiledProgram | tuple[Diagnostic, ...]:
        """The compile of ``data`` (sha256 ``key``) in a worker. ``busy``: whether a device
        of this process is busy now; the rebuild of the answer gives way while it is."""
        if len(key) != KEY_BYTES:
            raise ValueError("key is a sha256 in hex")
        w = self._take()
        try:
            if not w.ready:
                try:
                    if w.receive(STARTUP_TIMEOUT_S) != READY:
                        raise _Lost(f"worker {w.pid} did not start the protocol")
                except _Timeout:
                    raise _Lost(f"worker {w.pid} did not start within {STARTUP_TIMEOUT_S:g} s") from None
                w.ready = True
            w.cpu_at_send = w.cpu_s()
            w.send(key.encode("ascii") + data, self.timeout_s * WALL_FACTOR)
            frame = w.receive(self.timeout_s, self.timeout_s)
        except _Timeout as t:
            self._drop(w, "timeouts", t.cpu_s, charge)
            raise E.CompileTimeout(self.timeout_s, t.cpu_s, t.wall_s) from None
        except (_Lost, OSError) as exc:
            cpu = self._drop(w, "crashes", None, charge)
            if self._closed:
                raise E.Cancelled("the compile was cancelled: the daemon is stopping") from None
            why = f"{exc}{_exit_note(w.proc)}"
            log.warning("compile worker lost: %s (%.2f s of CPU)", why, cpu)
            raise E.CompileFailed(f"the compile worker ended before it answered ({why}); retry") from None
        except BaseException:
            self._drop(w, None, None, charge)
            raise
        w.compiles += 1
        self._give(w)
        if len(frame) <= CPU.size:
            raise E.CompileFailed(f"a compile worker sent a short answer ({len(frame)} bytes)")
        (cpu,) = CPU.unpack_from(frame)
        _rebuilding.busy = busy
        try:  # what this process pays: building the objects
            kind, value = pickle.loads(memoryview(frame)[CPU.size:])
        finally:
            _rebuilding.busy = None
        if charge is not None:
            charge.extra_s += cpu
        with self._cond:
            self.worker_cpu_s += cpu
            self.counts["compiles"] += 1
            if kind != "ok":
                self.counts["errors"] += 1
        if kind != "ok":
            raise E.CompileFailed(f"the compiler failed on this source: {value}")
        if not isinstance(value, CompiledProgram | tuple):
            raise E.CompileFailed(f"a compile worker answered {type(value).__name__}")
        return value

    def _spawn(self) -> _Worker:  # under _cond
        w = _Worker(self.memory_bytes)
        self._live.add(w)
        self.counts["started"] += 1
        return w

    def _take(self) -> _Worker:
        t0 = time.monotonic()
        with self._cond:
            self.waiting += 1
            try:
                while True:
                    if self._closed:
                        raise E.Cancelled("the compile was cancelled: the daemon is stopping")
                    if self._idle:
                        w = self._idle.pop()
                        if w.proc.poll() is None:
                            return w
                        self._live.discard(w)  # died while idle (killed from outside): not this compile's fault
                        w.close_pipes()
                        self.counts["crashes"] += 1
                        continue
                    if len(self._live) < self.size:
                        return self._spawn()
                    self._cond.wait()
            finally:
                self.waiting -= 1
                self.queue_wait_s += time.monotonic() - t0

    def _give(self, w: _Worker) -> None:
        with self._cond:
            if not self._closed:
                self._idle.append(w)
                self._cond.notify()
                return
        w.stop(0.5)
        w.close_pipes()
        with self._cond:
            self._live.discard(w)

    def _drop(self, w: _Worker, why: str | None, cpu_s: float | None, charge) -> float:
        """Kill and reap a worker; charge its compile's CPU; start a fresh one in its place."""
        if cpu_s is None:  # lost: what it used since the compile was sent (a zombie still has it)
            end, sent = w.cpu_s(), w.cpu_at_send
            cpu_s = end - sent if end is not None and sent is not None else 0.0
        w.kill()
        w.close_pipes()
        cpu = max(cpu_s, 0.0)
        if charge is not None:
            charge.extra_s += cpu
        with self._cond:
            self._live.discard(w)
            self.worker_cpu_s += cpu
            if why is not None:
                self.counts[why] += 1
            if not self._closed and w.ready:  # a worker that never started is not restarted at once
                self._idle.append(self._spawn())
                self._cond.notify()
        return cpu
