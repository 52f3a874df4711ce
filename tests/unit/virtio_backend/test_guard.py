"""The C core's SIGBUS guard (pxq_guard.c): a guest memory mapping whose file shrank is
replaced with zeros and counted instead of killing the process; a SIGBUS anywhere else
still ends the process as it would have without the guard (and Python's faulthandler,
installed first or last, still reports it). Each case runs in a child process: a guard
that failed would kill the test runner."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]

PRELUDE = """
import faulthandler, mmap, os, threading
import numpy as np
from virtio_backend.core import ffi, lib

def mapping(size=1 << 20, name="guest"):
    fd = os.memfd_create(name)
    os.ftruncate(fd, size)
    mm = mmap.mmap(fd, size)
    anchor = ffi.from_buffer("char[]", mm)
    return fd, mm, anchor, int(ffi.cast("uintptr_t", anchor))
"""


def run(body: str) -> subprocess.CompletedProcess:
    code = PRELUDE + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)


def test_a_truncated_guest_mapping_reads_zeros_and_is_counted():
    p = run("""
        fd, mm, anchor, base = mapping()
        mm[:5] = b"hello"
        slot = lib.pxq_guard_add(base, len(mm), fd)
        assert slot >= 0 and lib.pxq_guard_faults(slot) == 0
        events = lib.pxq_guard_events()
        os.ftruncate(fd, 0)                       # the front-end pulls the memory away
        a = np.frombuffer(mm, dtype=np.uint8)
        assert int(a.sum()) == 0                  # a NumPy read (not our C) faulted
        mm[100:110] = b"x" * 10                   # writes land in the private replacement
        assert bytes(mm[100:110]) == b"x" * 10 and bytes(mm[:5]) == bytes(5)
        assert lib.pxq_guard_faults(slot) == 1 and lib.pxq_guard_events() == events + 1
        del a
        ffi.release(anchor)
        mm.close()
        assert lib.pxq_guard_remove(slot) == 0
        print("survived")
    """)
    assert p.returncode == 0 and "survived" in p.stdout, p.stderr


def test_faults_on_several_threads_at_once_are_all_absorbed():
    p = run("""
        fd, mm, anchor, base = mapping(8 << 20)
        slot = lib.pxq_guard_add(base, len(mm), fd)
        os.ftruncate(fd, 4096)
        view = memoryview(mm)
        sums = []
        def reader(i):
            sums.append(int(np.frombuffer(view[i << 20:(i + 1) << 20], dtype=np.uint8).sum()))
        ts = [threading.Thread(target=reader, args=(i,)) for i in range(1, 8)]
        for t in ts: t.start()
        for t in ts: t.join()
        assert sums == [0] * 7, sums
        assert lib.pxq_guard_faults(slot) >= 1
        print("survived")
    """)
    assert p.returncode == 0 and "survived" in p.stdout, p.stderr


@pytest.mark.parametrize("faulthandler_first", [False, True])
def test_a_sigbus_outside_guest_memory_still_ends_the_process(faulthandler_first):
    p = run(f"""
        if {faulthandler_first}:
            faulthandler.enable()
        fd, mm, anchor, base = mapping()
        slot = lib.pxq_guard_add(base, len(mm), fd)   # installs the handler
        if not {faulthandler_first}:
            faulthandler.enable()                     # on top of ours
            assert lib.pxq_guard_install() == 1       # the next mapping puts ours back on top
        other = os.memfd_create("not-guest")
        os.ftruncate(other, 8192)
        m2 = mmap.mmap(other, 8192)
        os.ftruncate(other, 0)
        print("touching", flush=True)
        m2[0]
        print("not reached")
    """)
    assert p.returncode == -signal.SIGBUS, (p.returncode, p.stderr)
    assert "touching" in p.stdout and "not reached" not in p.stdout
    assert "Bus error" in p.stderr  # faulthandler, chained, still reported it


def test_a_guest_fault_is_absorbed_with_faulthandler_installed_first():
    p = run("""
        faulthandler.enable()
        fd, mm, anchor, base = mapping()
        slot = lib.pxq_guard_add(base, len(mm), fd)
        os.ftruncate(fd, 0)
        assert mm[4096] == 0 and lib.pxq_guard_faults(slot) == 1
        print("survived")
    """)
    assert p.returncode == 0 and "survived" in p.stdout and "Fatal" not in p.stderr, p.stderr


def test_slots_are_refused_when_full_and_reused_when_freed():
    p = run("""
        slots = [lib.pxq_guard_add(0x10000 + i * 0x1000, 0x1000, -1) for i in range(lib.PXQ_GUARD_SLOTS)]
        assert sorted(slots) == list(range(lib.PXQ_GUARD_SLOTS))
        assert lib.pxq_guard_add(0x5000000, 0x1000, -1) < 0          # -ENOSPC
        assert lib.pxq_guard_remove(slots[7]) == 0
        assert lib.pxq_guard_remove(slots[7]) < 0                    # already free
        assert lib.pxq_guard_add(0x5000000, 0x1000, -1) == slots[7]
        assert lib.pxq_guard_add(0, 0x1000, -1) < 0 and lib.pxq_guard_add(0x1000, 0, -1) < 0
        print("ok")
    """)
    assert p.returncode == 0 and "ok" in p.stdout, p.stderr
