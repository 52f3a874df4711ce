"""What a per-VM process for the guest-facing side would cost on the WRITE path (issue 17).

    python -m bench.bench_isolation [--json] [--quick] [--no-pin]

The design a Firecracker or libvirt reviewer expects puts each VM's vhost-user side (the
rings, guest memory, the request parser) in a process of its own, privileges dropped and
a seccomp filter on, and keeps the scheduler and the executor in the daemon. A WRITE's
payload must then cross from that process to the daemon. This measures the crossing, per
request and round trip, into a VM buffer of a real Hypervisor (NumPy backend), from
guest memory that is a memfd as QEMU shares it:

- ``inproc`` (baseline): the daemon copies from its own mapping of guest memory
  (``Hypervisor.write`` of a view): one copy, what pxos-hvd did before issue 17;
- ``thread``: the same copy run on the VM's ``DeviceWorker`` and the result handed back
  (a thread hop each way): what the device does since issue 17;
- ``process_copy``: a child process (the per-VM process) maps guest memory, copies the
  payload into a staging memfd it shares with the daemon and sends a 16-byte request on
  a SOCK_SEQPACKET socketpair; the daemon writes the buffer from the staging mapping and
  answers 8 bytes: two copies and a process round trip;
- ``process_ipc``: the same round trip with no payload: the hop alone, which is all it
  would cost where the staging copy replaces one the path makes anyway (on a GPU, the
  executor's pinned staging buffer could be the shared one).

Sizes: 64 KiB (the guest driver's data chunk) and 1 MiB. All on one core unless
``--no-pin`` (as ``bench_vhost``: the figures are per request of CPU work, not overlap).
"""

from __future__ import annotations

import json
import mmap
import os
import socket
import struct
import subprocess
import sys
import threading
import time

from bench.common import Report, parser

KIB, MIB = 1 << 10, 1 << 20
SIZES = {"64kib": 64 * KIB, "1mib": MIB}
REQ = struct.Struct("<QQ")  # op, size
OP_WRITE, OP_STOP = 1, 2
ROUNDS, ROUNDS_QUICK = 400, 40
TRIALS, TRIALS_QUICK = 7, 2


def _child(guest_fd: int, staging_fd: int, sock_fd: int, rounds: int, trials: int) -> None:
    """The would-be per-VM process: times its own round trips and prints them as JSON."""
    guest = mmap.mmap(guest_fd, MIB, mmap.MAP_SHARED)
    staging = mmap.mmap(staging_fd, MIB, mmap.MAP_SHARED)
    gv, sv = memoryview(guest), memoryview(staging)
    sock = socket.socket(fileno=sock_fd)
    out = {}
    for name, size in (("ipc", 0), *SIZES.items()):
        best = float("inf")
        for _ in range(trials):
            t0 = time.perf_counter()
            for _ in range(rounds):
                if size:
                    sv[:size] = gv[:size]  # guest memory -> the staging both processes map
                sock.send(REQ.pack(OP_WRITE, size))
                sock.recv(8)
            best = min(best, (time.perf_counter() - t0) / rounds)
        out[name] = best
    sock.send(REQ.pack(OP_STOP, 0))
    print(json.dumps(out), flush=True)


def _memfd(name: str, size: int) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    os.ftruncate(fd, size)
    return fd


def bench(report: Report, quick: bool) -> None:
    from hypervisor import Hypervisor
    from virtio_backend.gpu.worker import DeviceWorker

    rounds, trials = (ROUNDS_QUICK, TRIALS_QUICK) if quick else (ROUNDS, TRIALS)
    hv = Hypervisor(backend="numpy", device_pool_bytes=64 << 20).start()
    worker = DeviceWorker("bench-worker")
    guest_fd, staging_fd = _memfd("bench-guest", MIB), _memfd("bench-staging", MIB)
    try:
        hv.register_vm(1, 0, 100, memory_quota_bytes=8 << 20)
        handle = hv.alloc(1, "float32", (MIB // 4,)).handle
        os.pwrite(guest_fd, os.urandom(MIB), 0)
        guest = mmap.mmap(guest_fd, MIB, mmap.MAP_SHARED)
        gv = memoryview(guest)

        def best_of(fn) -> float:
            best = float("inf")
            for _ in range(trials):
                t0 = time.perf_counter()
                for _ in range(rounds):
                    fn()
                best = min(best, (time.perf_counter() - t0) / rounds)
            return best

        done = threading.Event()
        for name, size in SIZES.items():
            view = gv[:size]

            def inproc(view=view):
                hv.write(1, handle, 0, [view])

            def hop(view=view):
                done.clear()
                worker.submit(lambda: (hv.write(1, handle, 0, [view]), done.set()))
                done.wait()

            report.add(f"inproc_write_{name}_us", best_of(inproc) * 1e6, "us")
            report.add(f"thread_write_{name}_us", best_of(hop) * 1e6, "us", baseline=f"inproc_write_{name}_us")
            view.release()

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        child = subprocess.Popen(
            [sys.executable, "-c", "import sys; from bench.bench_isolation import _child; "
             f"_child({guest_fd}, {staging_fd}, {theirs.fileno()}, {rounds}, {trials})"],
            pass_fds=(guest_fd, staging_fd, theirs.fileno()), stdout=subprocess.PIPE, text=True,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        theirs.close()
        staging = mmap.mmap(staging_fd, MIB, mmap.MAP_SHARED)
        sv = memoryview(staging)
        while True:  # the daemon's side: one request, one buffer write, one answer
            op, size = REQ.unpack(ours.recv(REQ.size))
            if op == OP_STOP:
                break
            if size:
                hv.write(1, handle, 0, [sv[:size]])
            ours.send(b"\0" * 8)
        times = json.loads(child.communicate(timeout=120)[0])
        ours.close()
        sv.release()
        staging.close()
        report.add("process_ipc_us", times["ipc"] * 1e6, "us")
        for name in SIZES:
            report.add(f"process_copy_write_{name}_us", times[name] * 1e6, "us", baseline=f"inproc_write_{name}_us")
            est = report.figures[f"inproc_write_{name}_us"]["value"] + times["ipc"] * 1e6
            report.add(f"process_shared_staging_write_{name}_us", est, "us", baseline=f"inproc_write_{name}_us")
        gv.release()
        guest.close()
    finally:
        worker.close()
        hv.stop()
        os.close(guest_fd)
        os.close(staging_fd)


def main(argv=None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--no-pin", action="store_true", help="do not pin the processes to one CPU")
    args = p.parse_args(argv)
    report = Report("per-VM process hop on the WRITE path")
    if not args.no_pin:
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})  # the child inherits it
        report.notes.append(f"pinned to CPU {cpu}: daemon, worker thread and child process share one core")
    bench(report, args.quick)
    trials, rounds = (TRIALS_QUICK, ROUNDS_QUICK) if args.quick else (TRIALS, ROUNDS)
    report.notes.append(f"best of {trials} runs of {rounds} requests; process_shared_staging_* is an estimate, "
                        "inproc + process_ipc: the hop where the staging copy replaces one the path "
                        "already makes (a GPU executor's pinned staging)")
    report.emit(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
