"""The bounded serial fast path (issue 14; docs/scheduling.md, "Serial fast path"): a
transport's loop thread (``Hypervisor.launch_nowait``) never waits for the hypervisor's
lock, and runs a launch only when it is the device's only one, its memory ready and its
estimate within the bound, once, without yielding; anything else goes to the dispatch
thread, with the same result and charging."""

from __future__ import annotations

import threading
import time

import numpy as np

from hypervisor import Hypervisor
from tests.integration.test_vhost_isolation import GatedExecutor
from tests.unit.hypervisor.test_fast_path import WAIT_S, _setup


def test_a_launch_within_the_bound_runs_here_once_without_yielding():
    with Hypervisor(backend="numpy") as hv:
        kid, h = _setup(hv, 1)
        seen = []
        hv.dispatcher.before_run.append(lambda job: seen.append((threading.get_ident(), job.no_yield)))
        c = hv.launch(1, kid, h, run_here=True, run_here_max_s=1.0)
        assert c.done()  # ran on this thread before launch() returned
        assert c.result.ok and hv.dispatcher.ran_here == 1
        assert seen == [(threading.get_ident(), True)]
        assert np.array_equal(np.frombuffer(hv.read(1, h["c"]), np.float32), np.full(64, 3, np.float32))
        assert hv.stats(1).launches_total == 1 and hv.stats(1).device_seconds_total > 0


def test_a_launch_over_the_bound_goes_to_the_dispatch_thread():
    with Hypervisor(backend="numpy") as hv:
        kid, h = _setup(hv, 1)
        seen = []
        hv.dispatcher.before_run.append(lambda job: seen.append(threading.current_thread().name))
        res = hv.launch(1, kid, h, run_here=True, run_here_max_s=1e-12).wait(WAIT_S)
        assert res.ok and hv.dispatcher.ran_here == 0
        assert seen == ["pxos-dispatch"]
        assert hv.stats(1).launches_total == 1


def test_launch_nowait_does_nothing_while_the_lock_is_held_elsewhere():
    with Hypervisor(backend="numpy") as hv:
        kid, h = _setup(hv, 1)
        held, release = threading.Event(), threading.Event()

        def holder():
            with hv._lock:  # e.g. an ALLOC waiting on the device under the lock
                held.set()
                release.wait(WAIT_S)

        t = threading.Thread(target=holder)
        t.start()
        try:
            assert held.wait(WAIT_S)
            assert hv.launch_nowait(1, kid, h, run_here_max_s=1.0) is None  # at once, not after the holder
        finally:
            release.set()
            t.join(WAIT_S)
        assert hv.stats(1).launches_total == 0 and hv.stats(1).inflight == 0  # nothing was done
        c = hv.launch_nowait(1, kid, h, run_here_max_s=1.0)
        assert c is not None and c.done() and c.result.ok and hv.dispatcher.ran_here == 1


def test_launch_nowait_leaves_a_launch_whose_memory_is_not_ready_to_the_dispatch_thread():
    """A buffer it binds is mid-transfer (a write copying outside the lock): run here, the
    launch would have to wait for it; it is queued instead and runs after the write."""
    ex = GatedExecutor()
    with Hypervisor(backend=ex) as hv:
        kid, h = _setup(hv, 1)
        ex.hold.set()
        w = threading.Thread(target=hv.write, args=(1, h["a"], 0, np.full(64, 5, np.float32).tobytes()))
        w.start()
        try:
            assert ex.entered.wait(WAIT_S)
            c = hv.launch_nowait(1, kid, h, run_here_max_s=1.0)
            assert c is not None and not c.done() and hv.dispatcher.ran_here == 0
        finally:
            ex.go.set()
            w.join(WAIT_S)
        assert c.wait(WAIT_S).ok
        assert np.array_equal(np.frombuffer(hv.read(1, h["c"]), np.float32), np.full(64, 7, np.float32))


def test_launch_nowait_runs_nothing_here_while_another_launch_is_on_the_device():
    with Hypervisor(backend="numpy") as hv:
        kid, h = _setup(hv, 1)
        kid2, h2 = _setup(hv, 2)
        entered, gate = threading.Event(), threading.Event()

        def hold(job):
            if job.vm_id == 2:
                entered.set()
                assert gate.wait(WAIT_S)

        hv.dispatcher.before_run.append(hold)
        busy = hv.launch(2, kid2, h2)
        try:
            assert entered.wait(WAIT_S)
            c = hv.launch_nowait(1, kid, h, run_here_max_s=1.0)
            assert c is not None and not c.done() and hv.dispatcher.ran_here == 0
        finally:
            gate.set()
        assert busy.wait(WAIT_S).ok and c.wait(WAIT_S).ok


def _device_released(hv) -> None:
    deadline = time.monotonic() + WAIT_S  # the dispatch thread lets go of the device
    while hv.dispatcher._device.locked() and time.monotonic() < deadline:  # once it waits again
        time.sleep(0.001)
    assert not hv.dispatcher._device.locked()


def test_launch_nowait_runs_nothing_here_while_another_vm_has_a_launch_queued():
    """Another VM's launch queued but not picked (here its VM is parked, as by a yield; a
    cap or a move's hold does the same: the dispatch thread is idle) could come first and
    be of any length: the caller's thread does not pick. The rule is the device's count of
    launches in flight, which every launch, queued, held or running, is in."""
    with Hypervisor(backend="numpy") as hv:
        kid, h = _setup(hv, 1)
        kid2, h2 = _setup(hv, 2)
        with hv._lock:
            assert hv.scheduler.park(2)
        other = hv.launch(2, kid2, h2)  # queued, not picked while its VM is parked
        _device_released(hv)
        assert hv.launches_in_flight == 1 and not other.done()
        c = hv.launch_nowait(1, kid, h, run_here_max_s=1.0)
        assert c is not None and c.wait(WAIT_S).ok
        assert hv.dispatcher.ran_here == 0  # refused here: the dispatch thread ran it
        assert not other.done() and hv.launches_in_flight == 1
        with hv._lock:
            hv.scheduler.unpark(2)
        hv.dispatcher.wake()
        assert other.wait(WAIT_S).ok and hv.launches_in_flight == 0
        _device_released(hv)
        c = hv.launch_nowait(1, kid, h, run_here_max_s=1.0)  # alone now: here
        assert c.done() and c.result.ok and hv.dispatcher.ran_here == 1
