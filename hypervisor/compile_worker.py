"""A compile worker process (hypervisor/compile_pool.py starts it; docs/scheduling.md "Compiles").

It imports the language and nothing of the hypervisor but this module, then answers
requests on its stdin/stdout pipes, one at a time, until stdin ends:

- every message is a frame: a 4-byte little-endian length, then that many bytes;
- the worker's first frame says it is ready: ``b"ready"``;
- a request is the source's sha256 in hex (64 ASCII bytes) followed by its UTF-8 bytes;
- the answer is the CPU time the compile and its pickling took in this process (a
  little-endian double: the host charges it to the VM), then a pickle of ``(kind,
  value)``: ``("ok", result)`` with what ``primitive_lang.compile_uncached`` returned (the
  program or its diagnostics), or ``("error", text)`` when the compiler raised (a bug of
  the language, or the worker's memory limit): the host turns it into a typed error.

The process holds its address space to the size given as its argument (a hostile source
cannot make it take the host's memory), lowers its priority by WORKER_NICE, ignores
SIGINT (a terminal's Ctrl-C reaches the whole process group; the daemon stops the worker
itself), writes stray output to stderr, and exits when its parent goes, even mid-compile.
"""

from __future__ import annotations

import os
import pickle
import signal
import struct
import sys
import threading
import time

HEADER = struct.Struct("<I")
CPU = struct.Struct("<d")
READY = b"ready"
KEY_BYTES = 64
#: Nice increment of a worker: the dispatcher and the VMs' threads win a contended CPU.
WORKER_NICE = 5


def _read_exact(fd: int, n: int) -> bytes | None:
    chunks, got = [], 0
    while got < n:
        b = os.read(fd, n - got)
        if not b:
            return None
        chunks.append(b)
        got += len(b)
    return b"".join(chunks)


def _write_frame(fd: int, payload: bytes) -> None:
    view = memoryview(HEADER.pack(len(payload)) + payload)
    while view:
        view = view[os.write(fd, view):]


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:  # orphaned (the daemon was killed): nobody wants the answer
            os._exit(1)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    memory = int(argv[0]) if argv else 0
    if memory > 0:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    try:
        os.nice(WORKER_NICE)
    except OSError:
        pass
    out = os.dup(1)
    os.dup2(2, 1)  # a stray print must not corrupt the answers
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True, name="parent-watch").start()
    import primitive_lang

    primitive_lang.compile_uncached(b"", "0" * KEY_BYTES)  # builds the parser's tables now, not in a request
    _write_frame(out, READY)
    while True:
        head = _read_exact(0, HEADER.size)
        if head is None:
            return 0
        request = _read_exact(0, HEADER.unpack(head)[0])
        if request is None:
            return 0
        key, data = request[:KEY_BYTES].decode("ascii"), request[KEY_BYTES:]
        c0 = time.process_time()
        try:
            answer = ("ok", primitive_lang.compile_uncached(data, key))
        except Exception as exc:  # MemoryError included: the host reports it, the worker goes on
            answer = ("error", f"{type(exc).__name__}: {exc}"[:1000])
        try:
            payload = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            payload = pickle.dumps(("error", f"the result cannot be sent: {type(exc).__name__}: {exc}"[:1000]))
        try:
            _write_frame(out, CPU.pack(time.process_time() - c0) + payload)
        except BrokenPipeError:
            return 0


if __name__ == "__main__":
    sys.exit(main())
