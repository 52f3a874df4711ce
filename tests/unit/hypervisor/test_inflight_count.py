"""The device's count of launches in flight (``Hypervisor.launches_in_flight``; the serial
fast path reads it on every try, preemption.py ``_alone_and_ready``): kept as launches are
queued, end and are cancelled, and as VMs come, go and move, it equals the sum of the
device's VMs' ``inflight`` after every path that changes one — completion, failure in the
executor (a device lost), cancellation (session close, reset), a VM removed with launches
in flight, the daemon stopping, a move."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from hv_kernels import AXPY

from hypervisor import Hypervisor
from hypervisor import errors as E
from hypervisor.devices import DeviceSet
from hypervisor.executor.numpy_backend import NumpyExecutor
from hypervisor.types import Scalar
from tests.unit.hypervisor.test_fast_path import WAIT_S, _setup

MB = 1 << 20


def check(hv) -> int:
    """The debug check: the kept count is the recomputed sum, and no VM's count is negative."""
    with hv._lock:
        counts = {v.vm_id: v.inflight for v in hv._vms.values()}
        assert all(n >= 0 for n in counts.values()), counts
        assert hv.launches_in_flight == sum(counts.values()), (hv.launches_in_flight, counts)
        return hv.launches_in_flight


class Gate:
    """Holds the next launch of ``vm`` at the start of its run (dispatch thread, outside the lock)."""

    def __init__(self, hv, vm: int):
        self.vm, self.entered, self.go, self.armed = vm, threading.Event(), threading.Event(), True
        hv.dispatcher.before_run.append(self)

    def __call__(self, job) -> None:
        if self.armed and job.vm_id == self.vm:
            self.armed = False
            self.entered.set()
            assert self.go.wait(WAIT_S)


class LosableExecutor(NumpyExecutor):
    """A device that can be lost: every launch fails in the executor from then on."""

    lost = False

    def submit(self, *a, **kw):
        if self.lost:
            raise RuntimeError("device lost")
        return super().submit(*a, **kw)

    def start_steps(self, *a, **kw):
        if self.lost:
            raise RuntimeError("device lost")
        return super().start_steps(*a, **kw)


def test_completion_and_failure_in_the_executor_give_the_count_back():
    ex = LosableExecutor()
    with Hypervisor(backend=ex) as hv:
        kid, h = _setup(hv, 1)
        kid2, h2 = _setup(hv, 2)
        assert check(hv) == 0
        comps = [hv.launch(1, kid, h) for _ in range(3)] + [hv.launch(2, kid2, h2) for _ in range(2)]
        assert all(c.wait(WAIT_S).ok for c in comps)
        assert check(hv) == 0
        ex.lost = True
        comps = [hv.launch(1, kid, h) for _ in range(3)] + [hv.launch(2, kid2, h2)]
        assert all(c.wait(WAIT_S).status == "PXOS_S_EXEC" for c in comps)
        assert check(hv) == 0
        assert hv.launch_wait(2, kid2, h2, timeout=WAIT_S).status == "PXOS_S_EXEC"  # here too
        assert check(hv) == 0 and hv.stats(1).launches_failed == 3 and hv.stats(2).launches_failed == 2


def test_cancelled_launches_give_the_count_back():
    with Hypervisor(backend="numpy") as hv:
        kid, h = _setup(hv, 1)
        kid2, h2 = _setup(hv, 2)
        gate = Gate(hv, 1)
        running = hv.launch(1, kid, h)
        assert gate.entered.wait(WAIT_S)
        queued1 = [hv.launch(1, kid, h) for _ in range(3)]
        queued2 = [hv.launch(2, kid2, h2) for _ in range(2)]
        assert check(hv) == 6
        assert hv.close_session(1, 0).launches_cancelled == 3  # the running one is not queued
        assert check(hv) == 3
        assert hv.reset_vm(2).launches_cancelled == 2
        assert check(hv) == 1
        gate.go.set()
        assert running.wait(WAIT_S).ok  # it was running: it finishes
        assert all(c.wait(WAIT_S).status == "PXOS_S_CANCELLED" for c in queued1 + queued2)
        assert check(hv) == 0


def test_a_vm_removed_with_launches_in_flight_takes_its_count_with_it():
    with Hypervisor(backend="numpy") as hv:
        kid, h = _setup(hv, 1)
        kid2, h2 = _setup(hv, 2)
        gate = Gate(hv, 2)
        running = hv.launch(2, kid2, h2)
        assert gate.entered.wait(WAIT_S)
        queued = [hv.launch(2, kid2, h2) for _ in range(2)]
        mine = hv.launch(1, kid, h)  # behind the running one
        assert check(hv) == 4
        hv.unregister_vm(2)
        assert check(hv) == 1  # VM 1's: VM 2's running launch left with VM 2
        assert all(c.wait(WAIT_S).status == "PXOS_S_VM_GONE" for c in queued)
        with pytest.raises(E.AlreadyExists, match="running launch"):
            hv.register_vm(2, 16, 50)  # not its id again while its old launch runs (and is uncounted)
        gate.go.set()
        running.wait(WAIT_S)  # the old VM's launch ends: counted by no one now
        assert mine.wait(WAIT_S).ok and check(hv) == 0
        kid2, h2 = _setup(hv, 2)
        assert hv.launch(2, kid2, h2).wait(WAIT_S).ok and check(hv) == 0
        st = hv.stats(2)
        assert st.inflight == 0 and st.launches_total == 1


def test_stopping_gives_every_count_back():
    hv = Hypervisor(backend="numpy").start()
    kid, h = _setup(hv, 1)
    kid2, h2 = _setup(hv, 2)
    gate = Gate(hv, 1)
    running = hv.launch(1, kid, h)
    assert gate.entered.wait(WAIT_S)
    queued = [hv.launch(1, kid, h), hv.launch(2, kid2, h2), hv.launch(2, kid2, h2)]
    assert check(hv) == 4
    stopper = threading.Thread(target=hv.stop)
    stopper.start()
    deadline = time.monotonic() + WAIT_S
    while not hv.dispatcher._stopping and time.monotonic() < deadline:  # the queued ones are cancelled first
        time.sleep(0.001)
    assert check(hv) == 1  # the running one, still running
    gate.go.set()
    stopper.join(WAIT_S)
    assert running.wait(WAIT_S).ok and check(hv) == 0
    assert all(c.wait(WAIT_S).status == "PXOS_S_CANCELLED" for c in queued)


def test_a_move_carries_the_held_launches_count_to_the_target():
    with DeviceSet("numpy", 2, device_pool_bytes=64 * MB) as ds:
        ds.register_vm(1, 0, 50, memory_quota_bytes=16 * MB, device=0)
        ds.register_vm(2, 0, 50, memory_quota_bytes=16 * MB, device=1)
        src, dst = ds.devices[0], ds.devices[1]
        k = ds.compile(1, AXPY)[0]
        x, y = ds.alloc(1, "float32", (1000,)), ds.alloc(1, "float32", (1000,))
        kid2, h2 = _setup_on(ds, 2)
        in_fill, go = threading.Event(), threading.Event()

        def fill(view):
            in_fill.set()
            assert go.wait(WAIT_S)
            view[:] = np.ones(1000, np.float32).tobytes()

        writer = threading.Thread(target=lambda: ds.write_from(1, x.handle, 0, 4000, fill))
        writer.start()
        assert in_fill.wait(WAIT_S)  # a guest WRITE in progress: the move waits for it
        mover = threading.Thread(target=lambda: ds.move_vm(1, 1))
        mover.start()
        vm = src._vms[1]
        deadline = time.monotonic() + WAIT_S
        while vm.held is None and time.monotonic() < deadline:
            time.sleep(0.001)
        comps = [ds.launch(1, k.kernel_id, {"alpha": Scalar(2.0), "x": x.handle, "y": y.handle}) for _ in range(5)]
        assert len(vm.held) == 5
        assert check(src) == 5 and check(dst) == 0  # held launches count where their VM is
        gate = Gate(dst, 2)
        other = ds.launch(2, kid2, h2)
        assert gate.entered.wait(WAIT_S) and check(dst) == 1
        go.set()
        writer.join(WAIT_S)
        mover.join(WAIT_S)
        assert ds.device_of(1) == 1
        assert check(src) == 0 and check(dst) == 6  # queued on the target, behind VM 2's
        gate.go.set()
        assert other.wait(WAIT_S).ok and all(c.wait(WAIT_S).ok for c in comps)
        assert check(src) == 0 and check(dst) == 0
        assert np.array_equal(np.frombuffer(ds.read(1, y.handle), np.float32), np.full(1000, 10, np.float32))


DOUBLE = """GPU_KERNEL double
GPU_PARAM a float[64]
GPU_PARAM c float[64]
GPU_THREAD_CODE:
    ADD a a -> c
GPU_END
"""


def _setup_on(ds, vm):
    (k,) = ds.compile(vm, DOUBLE)
    return k.kernel_id, {n: ds.alloc(vm, "float32", (64,)).handle for n in "ac"}


@pytest.mark.parametrize("vms", [1, 200])
def test_the_inline_path_reads_the_count_not_the_vms(vms):
    """With many VMs registered and idle, the one with work still runs here (the count is 1)."""
    with Hypervisor(backend="numpy") as hv:
        kid, h = _setup(hv, 1)
        for v in range(2, vms + 1):
            hv.register_vm(v, 1, 0.1)
        assert check(hv) == 0
        deadline = time.monotonic() + WAIT_S
        while hv.dispatcher._device.locked() and time.monotonic() < deadline:
            time.sleep(0.001)
        c = hv.launch_nowait(1, kid, h, run_here_max_s=1.0)
        assert c.done() and c.result.ok and hv.dispatcher.ran_here == 1 and check(hv) == 0
