"""The executor's transfer guarantee (hypervisor/executor/base.py), on every executor:
transfers of several VMs at once, through the Hypervisor API from one thread per VM,
never see or move each other's bytes. Every byte of every buffer is checked after every
WRITE, FILL and READ, each with a pattern that names its VM and its round.

A new executor joins by one line in EXECUTORS."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from hypervisor import Hypervisor
from hypervisor.executor import NumpyExecutor, make_executor
from hypervisor.executor.base import StagingPool, byte_view, check_range
from hypervisor.executor.cupy_backend import STAGING_BYTES

EXECUTORS = [
    "numpy",
    pytest.param("cupy", marks=pytest.mark.gpu),
    pytest.param("wgpu", marks=pytest.mark.wgpu),
]

VMS = 4
# Buffer sizes (int32 buffers, so multiples of 4; the transfers inside them start and end
# at odd offsets too): a small one, a 1 MiB one, and one larger than a CuPy staging slot
# (two pieces: the first slot-full is copied while the rest still waits).
SIZES = (100, (1 << 20) + 4, STAGING_BYTES + 4100)


def _pattern(base: np.ndarray, vm: int, rnd: int, n: int) -> np.ndarray:
    """Bytes that say whose they are: VM-specific random bytes, xor-ed with the round."""
    return base[:n] ^ np.uint8((vm * 37 + rnd * 11) % 251 + 1)


def _pieces(data: np.ndarray, cuts: int) -> list[memoryview]:
    """A scatter-gather list of uneven chunks, as a guest's descriptors would give."""
    bounds = sorted({0, len(data), *(len(data) * k // (cuts + 1) + k for k in range(1, cuts + 1))})
    return [memoryview(data[a:b]) for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


def _check(got: bytes | np.ndarray, want: np.ndarray, what: str, patterns: dict) -> None:
    got = np.frombuffer(got, dtype=np.uint8) if not isinstance(got, np.ndarray) else got
    if np.array_equal(got, want):
        return
    bad = int(np.flatnonzero(got != want)[0])
    owner = [who for who, p in patterns.items() if len(p) > bad and p[bad] == got[bad]]
    raise AssertionError(f"{what}: byte {bad} is {got[bad]} instead of {want[bad]} (matches {owner or 'nobody'})")


def run_transfers(executor, rounds: int) -> list[BaseException]:
    """Every VM's thread writes, fills and reads its own buffers; returns what went wrong."""
    quota = sum(SIZES) * 2
    hv = Hypervisor(backend=executor, device_pool_bytes=VMS * quota + (64 << 20)).start()
    try:
        bases = {vm: np.random.default_rng(vm).integers(0, 256, max(SIZES), dtype=np.uint8)
                 for vm in range(1, VMS + 1)}
        handles = {}
        for vm in bases:
            hv.register_vm(vm, 0, 10, memory_quota_bytes=quota)
            handles[vm] = [hv.alloc(vm, "int32", [n // 4]).handle for n in SIZES]
        errors: list[BaseException] = []
        start = threading.Barrier(VMS)
        # Every pattern any VM ever writes, to name the owner of a stray byte.
        patterns = {(vm, r): _pattern(bases[vm], vm, r, max(SIZES)) for vm in bases for r in range(3 * rounds)}

        def one_vm(vm: int) -> None:
            try:
                start.wait()
                for rnd in range(rounds):
                    for h, n in zip(handles[vm], SIZES, strict=True):
                        # WRITE: a scatter-gather list of chunks
                        want = patterns[vm, 3 * rnd][:n].copy()
                        assert hv.write(vm, h, 0, _pieces(want, 3)) == n
                        _check(hv.read(vm, h), want, f"VM {vm} after WRITE of {n}", patterns)
                        # FILL: the caller gathers straight into the view it is given
                        src = patterns[vm, 3 * rnd + 1]
                        half = n // 2 + 1

                        def gather(view: memoryview, src=src, half=half, n=n) -> None:
                            view[:] = memoryview(src[half:n])

                        assert hv.write_from(vm, h, half, n - half, gather) == n - half
                        want[half:] = src[half:n]
                        # READ into several destinations
                        out = bytearray(n)
                        dsts = _pieces(np.frombuffer(out, dtype=np.uint8), 2)
                        assert hv.read_into(vm, h, 0, [memoryview(d) for d in dsts]) == n
                        _check(bytes(out), want, f"VM {vm} after FILL of {n - half} at {half}", patterns)
                        # A WRITE inside the buffer changes exactly its range
                        if n > 8:
                            mid = patterns[vm, 3 * rnd + 2][: n // 4]
                            hv.write(vm, h, n // 8, mid.tobytes())
                            want[n // 8 : n // 8 + len(mid)] = mid
                            _check(hv.read(vm, h), want, f"VM {vm} after a WRITE at {n // 8}", patterns)
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        threads = [threading.Thread(target=one_vm, args=(vm,), name=f"vm{vm}") for vm in bases]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert not any(t.is_alive() for t in threads), "a transfer never returned"
        for vm in bases:  # nobody's accounting moved either
            assert hv.vm_info(vm).memory_used == sum(SIZES)
        return errors
    finally:
        hv.stop()


@pytest.mark.parametrize("backend", EXECUTORS)
def test_concurrent_transfers_of_several_vms_never_mix(backend):
    errors = run_transfers(make_executor(backend), rounds=6 if backend in ("numpy", "wgpu") else 24)
    assert not errors, errors[0]


class _SharedStagingExecutor(NumpyExecutor):
    """What the CuPy executor did before: one staging buffer for every transfer, no lock,
    and the thread lets others run between filling it and copying it out (CuPy's stream
    synchronize releases the GIL there). The harness above must catch it."""

    def __init__(self) -> None:
        super().__init__()
        self._stage = np.empty(max(SIZES), dtype=np.uint8)

    def write(self, array, offset, chunks):
        data = np.frombuffer(b"".join(bytes(c) for c in chunks), dtype=np.uint8)
        check_range(array.nbytes, offset, len(data))
        self._stage[: len(data)] = data
        time.sleep(0.0002)
        byte_view(np, array)[offset : offset + len(data)] = self._stage[: len(data)]
        return len(data)


def test_the_harness_catches_shared_staging():
    errors = run_transfers(_SharedStagingExecutor(), rounds=3)
    assert errors and isinstance(errors[0], AssertionError)
    assert "matches [(" in str(errors[0])  # it names the VM whose bytes landed there


def test_staging_pool_gives_each_transfer_its_own_slot_and_stays_bounded():
    made = []
    pool = StagingPool(lambda: made.append(object()) or made[-1], max_slots=3)
    holders: dict[int, object] = {}
    inside = threading.Semaphore(0)
    go = threading.Event()
    overlap = []

    def transfer(i: int) -> None:
        with pool.slot() as s:
            if s in holders.values():
                overlap.append(i)
            holders[i] = s
            inside.release()
            go.wait(5)
            del holders[i]

    threads = [threading.Thread(target=transfer, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
    for _ in range(3):
        assert inside.acquire(timeout=5)
    # Three transfers hold the three slots; the other two wait rather than share one.
    assert not inside.acquire(timeout=0.2)
    assert pool.made == 3 and pool.in_use == 3
    go.set()
    for t in threads:
        t.join(5)
    assert not overlap and len(made) == 3 and pool.in_use == 0
    assert len(pool.drain()) == 3 and pool.made == 0


def test_staging_pool_forgets_a_slot_that_failed_to_be_made():
    calls = []

    def make():
        calls.append(1)
        if len(calls) == 1:
            raise MemoryError("pinned memory exhausted")
        return "slot"

    pool = StagingPool(make, max_slots=1)
    with pytest.raises(MemoryError):
        pool.acquire()
    assert pool.made == 0 and pool.in_use == 0
    with pool.slot() as s:  # the failed attempt did not use up the only slot
        assert s == "slot"
