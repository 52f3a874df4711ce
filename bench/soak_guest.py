"""One soak guest: a scripted vhost-user front-end (plays QEMU, ``tests/support/vhost_frontend``)
that connects to its VM's socket, runs a session of mixed requests, and leaves again, over
and over, keeping the books ``bench/soak.py`` checks.

A session: boot the device, then rounds of up to ``DEPTH`` requests published together
(allocs, writes, reads, compiles, launches of every size from a 16-element AXPY to a 512 x 512
matmul and a slow matmul chain, stats) with hostile requests mixed in (unknown commands,
truncated and garbage bytes, sizes over the ``PXOS_MAX_*`` caps and over quota, foreign
handles, bad programs and bindings, a response buffer too small for the answer, descriptors
outside guest RAM or running past its end: completed empty, the queue goes on). It ends in
one of three ways, as a real guest's QEMU would:

- ``graceful``: wait for every answer, free everything, check the VM's usage is back to zero
  and its charged device time grew by exactly the ``device_ns`` its launches reported, then
  reset the device and disconnect;
- ``abrupt``: disconnect with requests in flight (QEMU killed); those are *abandoned*, not lost;
- ``reset``: a device reset (``GET_VRING_BASE``) with nothing in flight, then a new session on
  the same connection (a guest reboot).

Every request published must get exactly one used element with its head before the session
ends (``lost`` counts those that do not, and used elements nobody asked for); a request
answered ``PXOS_S_INTERNAL`` (a host bug) is counted too.
"""

from __future__ import annotations

import os
import random
import struct
import threading
import time
from dataclasses import dataclass, field

from tests.support.programs import AXPY, MATMUL, heavy
from tests.support.vhost_frontend import VhostUserFrontend
from virtio_backend import wire
from virtio_backend.gpu import guest as g
from virtio_backend.wire import PxosCmdType, PxosStatus

T, S = PxosCmdType, PxosStatus
F32 = wire.PxosDtype.PXOS_DTYPE_FLOAT32
VRING_DESC_F_WRITE = 2
DEPTH = 6             # requests published together (one kick)
ANSWER_TIMEOUT = 120  # seconds one round may wait for its answers: a slow launch on a loaded host
RAM = 48 << 20        # guest RAM of one front-end: room for 8 MiB transfers and the rings

#: Launch shapes: (program name, size). AXPY sizes are elements; MATMUL and HEAVY are N of N x N.
LAUNCH_SIZES = [("axpy", 16), ("axpy", 4096), ("axpy", 262144), ("matmul", 8), ("matmul", 64),
                ("matmul", 256), ("matmul", 512), ("heavy", 128)]
PROGRAMS = {"axpy": AXPY, "matmul": MATMUL, "heavy": heavy(4)}
BAD_SOURCE = "GPU_KERNEL k\nGPU_PARAM a float[N]\nGPU_THREAD_CODE:\n    FROB a -> a\nGPU_END\n"


@dataclass
class Books:
    """What one guest counted; ``bench/soak.py`` adds them up."""

    sessions: dict[str, int] = field(default_factory=lambda: {"graceful": 0, "abrupt": 0, "reset": 0})
    requests: int = 0          # published, each expecting one answer
    answered: int = 0
    lost: int = 0              # never answered within ANSWER_TIMEOUT, or answered twice / unasked
    abandoned: int = 0         # in flight when the front-end disconnected on purpose
    internal: int = 0          # PXOS_S_INTERNAL answers: host bugs
    hostile: int = 0           # hostile requests answered with an error, as they should be
    hostile_accepted: int = 0  # hostile requests answered OK: a hole
    vm_gone: int = 0           # answers PXOS_S_VM_GONE (the operator removed the VM)
    launches: dict[str, int] = field(default_factory=dict)  # by "name:size", answered OK
    launch_errors: int = 0     # launches answered with an error (quota cut, VM gone, ...)
    device_ns: int = 0         # summed over answered launches
    checked_sessions: int = 0  # graceful sessions whose accounting was compared
    drift_ns: int = 0          # |charged - sum of launch device_ns| beyond integer-ns rounding
    launch_ns: dict[int, int] = field(default_factory=dict)  # launch_id -> device_ns answered (since a checkpoint)
    usage_drift: int = 0       # bytes still charged to the VM after a graceful session freed all
    undercharged: int = 0      # sessions charged less device time than their launches reported
    connect_errors: list[str] = field(default_factory=list)  # unexpected: the VM was present
    errors: list[str] = field(default_factory=list)


class GuestWorker(threading.Thread):
    """Sessions against VM ``vm_id`` until ``stop`` is set; pauses (disconnected) while
    ``pause`` is set and the VM's ``present`` event is clear (removed by the controller)."""

    def __init__(self, vm_id: int, socket_path: str, *, seed: int, stop: threading.Event,
                 pause: threading.Event, present: threading.Event, think: float = 0.02):
        super().__init__(name=f"soak-guest-{vm_id}", daemon=True)
        self.vm_id, self.path, self.rng = vm_id, socket_path, random.Random(seed)
        self.stop, self.pause, self.present, self.think = stop, pause, present, think
        self.books = Books()
        self.idle = threading.Event()  # set while disconnected and waiting
        self.idle.set()
        self.removed_seen = False

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> None:
        while not self.stop.is_set():
            self.idle.clear()  # before looking at pause: a checkpoint that saw idle set can trust it
            if self.pause.is_set() or not self.present.is_set():
                self.idle.set()
                time.sleep(0.05)
                continue
            try:
                self._connection()
            except Exception as e:  # counted and shown in the report, never hidden
                self.books.errors.append(f"VM {self.vm_id}: {type(e).__name__}: {e}")
                time.sleep(0.2)
        self.idle.set()

    def _connection(self) -> None:
        present_before = self.present.is_set()
        fe = VhostUserFrontend(self.path, ram_size=RAM)
        try:
            try:
                fe.connect(timeout=2.0)
                fe.sock.settimeout(30.0)
                fe.boot()
            except (OSError, TimeoutError) as e:
                if present_before and self.present.is_set():
                    self.books.connect_errors.append(f"VM {self.vm_id}: {type(e).__name__}: {e}")
                time.sleep(0.1)
                return
            self.removed_seen = False
            end = self._session(fe)
            if end == "reset" and not self.removed_seen:
                fe.stop()
                fe.start()
                self._session(fe, allow_reset=False)
            if end != "abrupt" and fe.sock is not None:
                try:
                    fe.stop()
                except OSError:
                    pass
        finally:
            fe.close()

    # -- one session ------------------------------------------------------------------------
    def _session(self, fe: VhostUserFrontend, allow_reset: bool = True) -> str:
        rng = self.rng
        state = {"buffers": {}, "kernels": {}, "launch_ns": 0, "launches": 0}
        start = self._settled(fe)
        rounds = rng.randint(2, 12)
        end = rng.choices(["graceful", "abrupt", "reset"], weights=[6, 2, 2 if allow_reset else 0])[0]
        for i in range(rounds):
            if self.stop.is_set() or self.pause.is_set():
                end = "graceful" if end == "abrupt" else end
                break
            batch = []
            for _ in range(rng.randint(1, DEPTH)):
                item = self._request(fe, state)
                batch += self._shaped(fe, state, item[1], item[2]) if item[0] == "launch" else [item]
            if end == "abrupt" and i == rounds - 1:
                self._publish(fe, batch)
                self.books.abandoned += len(batch)
                fe.disconnect()
                self.books.sessions["abrupt"] += 1
                return "abrupt"
            self._answer(fe, batch, self._call(fe, batch), state)
            time.sleep(self.think * rng.random())
        self._drain(fe, state, start)
        self.books.sessions[end if end != "abrupt" else "graceful"] += 1
        return end

    def _settled(self, fe) -> dict:
        """STATS once the VM runs nothing: a launch abandoned by the previous connection is
        still charged when it finishes, which may be after this one began."""
        deadline = time.monotonic() + ANSWER_TIMEOUT
        while True:
            r = self._call(fe, [(g.stats(), "stats")])[0]
            if r["status"] != S.PXOS_S_OK or not (r["inflight"] or r["queue_depth"]):
                break
            if time.monotonic() > deadline:
                self.books.errors.append(f"VM {self.vm_id}: still {r['inflight']} launches in flight and "
                                         f"{r['queue_depth']} queued {ANSWER_TIMEOUT} s after its guest left")
                break
            time.sleep(0.01)
        if r["status"] == S.PXOS_S_OK and r["memory_used"]:  # a new connection starts with nothing
            self.books.usage_drift += r["memory_used"]
            self.books.errors.append(f"VM {self.vm_id}: a new connection starts with {r['memory_used']} bytes held")
        return r

    def _drain(self, fe, state, start) -> None:
        """Free what the session holds, then compare the VM's books with the session's."""
        reqs = [(g.free(h), "free") for h in state["buffers"]] + \
               [(g.kernel_free(k), "kfree") for k in set(state["kernels"].values())]
        for i in range(0, len(reqs), DEPTH):
            self._call(fe, reqs[i:i + DEPTH])
        state["buffers"].clear()
        state["kernels"].clear()
        end = self._call(fe, [(g.stats(), "stats")])[0]
        if self.removed_seen or start["status"] != S.PXOS_S_OK or end["status"] != S.PXOS_S_OK:
            return
        self.books.checked_sessions += 1
        self.books.usage_drift += end["memory_used"]
        charged = end["device_ns_total"] - start["device_ns_total"]
        slack = state["launches"] + 1  # each launch's device_ns is truncated to whole ns
        if charged < state["launch_ns"] - slack:
            self.books.undercharged += 1
        if abs(charged - state["launch_ns"]) > slack:
            self.books.drift_ns += abs(charged - state["launch_ns"])
            self.books.errors.append(f"VM {self.vm_id}: charged {charged} ns for launches that reported "
                                     f"{state['launch_ns']} ns")

    # -- requests ---------------------------------------------------------------------------
    def _request(self, fe, state) -> tuple:
        """One request (bytes, kind, extra...) for this round; hostile about one in six."""
        rng, bufs, kernels = self.rng, state["buffers"], state["kernels"]
        if rng.random() < 1 / 6:
            return self._hostile(rng, bufs)
        roll = rng.random()
        if roll < 0.15 or not bufs:
            n = rng.choice([16, 1024, 65536, 262144])
            return (g.alloc(F32, [n]), "alloc", n * 4)
        if roll < 0.25 and len(bufs) > 1:
            h = rng.choice(list(bufs))
            bufs.pop(h)
            return (g.free(h), "free")
        if roll < 0.35:
            h = rng.choice(list(bufs))
            size = min(bufs[h], rng.choice([4, 4096, 1 << 20]))
            return (g.write(h, 0, os.urandom(size)), "write")
        if roll < 0.42:
            h = rng.choice(list(bufs))
            size = min(bufs[h], rng.choice([4, 4096, 1 << 20]))
            return (g.read(h, 0, size), "read", size)
        if roll < 0.48:
            return (g.stats(), "stats")
        name, size = rng.choice(LAUNCH_SIZES)
        if name not in kernels:
            return (g.compile(PROGRAMS[name]), "compile", name)
        return ("launch", name, size)  # shaped buffers first: see _call

    def _hostile(self, rng, bufs) -> tuple:
        kind = rng.randrange(11)
        if kind == 10:  # a chain outside guest RAM (the hole below 768 KiB) or running past its end
            return (b"", "hostile", rng.choice([(0xA0000, 16, 0), (RAM - 8, 4096, VRING_DESC_F_WRITE)]))
        if kind == 0:
            req = g.raw_header(0x7FF0 + rng.randrange(15))
        elif kind == 1:
            req = g.alloc(F32, [64])[:rng.randrange(1, 24)]
        elif kind == 2:
            req = struct.pack("<I", 0x8000 + rng.randrange(1 << 16)) + os.urandom(rng.randrange(0, 300))
        elif kind == 3:
            req = g.alloc(F32, [1 << 30, 4])  # 16 GiB: over PXOS_MAX_BUFFER_BYTES
        elif kind == 4:
            req = g.transfer_struct(T.PXOS_CMD_WRITE, next(iter(bufs), 1), 0, 64 << 20)  # claims 64 MiB
        elif kind == 5:
            req = g.alloc(F32, [(1 << 31) // 4 - 1])  # just under 2 GiB: over any quota here
        elif kind == 6:
            req = g.read(0xDEAD_0000 + rng.randrange(1 << 16), 0, 16)
        elif kind == 7:
            req = g.compile(BAD_SOURCE)
        elif kind == 8:
            req = g.compile(b"\xff\xfe" + os.urandom(64))
        else:
            req = g.launch(0xBEEF, [g.bind_buffer("x", 7)])
        return (req, "hostile")

    def _shaped(self, fe, state, name: str, size: int) -> list[tuple]:
        """The buffers a launch binds, allocated for it (kept until the session ends)."""
        shapes = {"axpy": [[size], [size]], "matmul": [[size, size]] * 3, "heavy": [[size, size]] * 2}[name]
        got = self._call(fe, [(g.alloc(F32, s), "alloc", 4 * s[0] * (s[1] if len(s) > 1 else 1)) for s in shapes])
        hs = []
        for r, s in zip(got, shapes, strict=True):
            if r["status"] == S.PXOS_S_OK:  # kept (and freed at the end) even if a sibling failed
                state["buffers"][r["handle"]] = 4 * s[0] * (s[1] if len(s) > 1 else 1)
                hs.append(r["handle"])
        if len(hs) < len(shapes) or name not in state["kernels"]:
            return []
        kid = state["kernels"][name]
        if name == "axpy":
            binds = [g.bind_f64("alpha", 0.5, F32), g.bind_buffer("x", hs[0]), g.bind_buffer("y", hs[1])]
        elif name == "matmul":
            binds = [g.bind_buffer("a", hs[0]), g.bind_buffer("b", hs[1]), g.bind_buffer("c", hs[2])]
        else:
            binds = [g.bind_buffer("a", hs[0]), g.bind_buffer("c", hs[1])]
        return [(g.launch(kid, binds), "launch", f"{name}:{size}")]

    def _call(self, fe, batch) -> list[dict]:
        """Publish, kick once, wait for every answer."""
        return self._collect(fe, batch, self._publish(fe, batch))

    def _answer(self, fe, batch, results, state) -> None:
        for item, r in zip(batch, results, strict=True):
            ok = r["status"] == S.PXOS_S_OK
            kind = item[1]
            if kind == "hostile":
                if ok:
                    self.books.hostile_accepted += 1
                    self.books.errors.append(f"VM {self.vm_id}: hostile request {item[0][:16].hex()} answered OK")
                else:
                    self.books.hostile += 1
            elif kind == "alloc" and ok:
                state["buffers"][r["handle"]] = item[2]
            elif kind == "compile" and ok:
                state["kernels"][item[2]] = r["kernels"][0]["kernel_id"]
            elif kind == "launch":
                if "device_ns" in r:
                    state["launch_ns"] += r["device_ns"]
                    state["launches"] += 1
                    self.books.device_ns += r["device_ns"]
                    if r.get("launch_id"):
                        self.books.launch_ns[r["launch_id"]] = r["device_ns"]
                if ok:
                    self.books.launches[item[2]] = self.books.launches.get(item[2], 0) + 1
                else:
                    self.books.launch_errors += 1

    def _publish(self, fe, batch) -> list[int]:
        heads = []
        for item in batch:
            req = item[0]
            if item[1] == "hostile" and len(item) > 2:  # a raw descriptor: answered empty, the queue goes on
                ring = fe.ring(0)
                idx = ring.free[-1]
                heads.append(ring.add_raw({idx: (*item[2], 0)}, head=idx))
                self.books.requests += 1
                continue
            ctype = struct.unpack_from("<I", req.ljust(4, b"\0"))[0]
            small = item[1] == "hostile" and self.rng.random() < 0.1  # response buffer too small
            size = 16 if small else g.response_size(ctype, item[2] if item[1] == "read" else 0)
            heads.append(fe.submit(0, out=[req], in_=[size]))
            self.books.requests += 1
        fe.kick(0, force=True)
        return heads

    def _collect(self, fe, batch, heads) -> list[dict]:
        want = {h: i for i, h in enumerate(heads)}
        out: list[dict | None] = [None] * len(heads)
        deadline = time.monotonic() + ANSWER_TIMEOUT
        while want and time.monotonic() < deadline:
            try:
                used = fe.wait_used(0, 1, timeout=min(5.0, max(deadline - time.monotonic(), 0.01)))
            except TimeoutError:
                continue
            for u in used:
                i = want.pop(u.head, None)
                if i is None:
                    self.books.lost += 1
                    self.books.errors.append(f"VM {self.vm_id}: used element for head {u.head} nobody waits for")
                    continue
                self.books.answered += 1
                ctype = struct.unpack_from("<I", batch[i][0].ljust(4, b"\0"))[0]
                try:
                    out[i] = g.parse_response(ctype if ctype in set(T) else 0, u.data)
                except ValueError:
                    out[i] = {"status": -1, "message": f"{u.len} bytes"}
                st = out[i]["status"]
                if st == S.PXOS_S_INTERNAL:
                    self.books.internal += 1
                    self.books.errors.append(f"VM {self.vm_id}: PXOS_S_INTERNAL: {out[i]['message']}")
                if st == S.PXOS_S_VM_GONE:
                    self.books.vm_gone += 1
                    self.removed_seen = True
        if want:
            self.books.lost += len(want)
            self.books.errors.append(f"VM {self.vm_id}: {len(want)} requests unanswered after {ANSWER_TIMEOUT} s")
        return [o if o is not None else {"status": -1, "message": "lost"} for o in out]
