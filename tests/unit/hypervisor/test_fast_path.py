"""The serial fast path (issue 14): Hypervisor.launch_wait runs a launch on the caller's
thread when the device is idle, and hands it to the dispatch thread when it is not; either
way the result, the VM's order and the charging are those of the dispatch thread's path."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from hypervisor import Hypervisor

WAIT_S = 60
ADD = """GPU_KERNEL add
GPU_PARAM a float[64]
GPU_PARAM b float[64]
GPU_PARAM c float[64]
GPU_THREAD_CODE:
    ADD a b -> c
GPU_END
"""


def _setup(hv, vm):
    hv.register_vm(vm, 16, 50)
    (k,) = hv.compile(vm, ADD)
    h = {}
    for i, name in enumerate("abc"):
        h[name] = hv.alloc(vm, "float32", (64,)).handle
        hv.write(vm, h[name], 0, np.full(64, i + 1, np.float32).tobytes())
    return k.kernel_id, h


def test_launch_wait_runs_on_the_callers_thread_when_the_device_is_idle():
    with Hypervisor(backend="numpy") as hv:
        kid, h = _setup(hv, 1)
        threads = []
        hv.subscribe(lambda ev: threads.append(threading.get_ident()) if ev.kind == "launch_completed" else None)
        res = hv.launch_wait(1, kid, h, timeout=WAIT_S)
        assert res.ok and res.device_ns > 0
        assert hv.dispatcher.ran_here == 1
        assert threads == [threading.get_ident()]  # delivered here: no hop through another thread
        out = np.frombuffer(hv.read(1, h["c"]), np.float32)
        assert np.array_equal(out, np.full(64, 3, np.float32))
        assert hv.stats(1).launches_total == 1


def test_launch_wait_hands_over_when_the_device_is_busy():
    with Hypervisor(backend="numpy") as hv:
        kid, h = _setup(hv, 1)
        kid2, h2 = _setup(hv, 2)
        entered, gate = threading.Event(), threading.Event()

        def hold(job):
            if job.vm_id == 2:
                entered.set()
                assert gate.wait(WAIT_S)

        hv.dispatcher.before_run.append(hold)
        busy = hv.launch(2, kid2, h2)  # the dispatch thread runs it and stops inside
        assert entered.wait(WAIT_S)
        results = []
        t = threading.Thread(target=lambda: results.append(hv.launch_wait(1, kid, h, timeout=WAIT_S)))
        t.start()
        # The device token is held by the dispatch thread: VM 1's launch is queued for it.
        assert not hv.dispatcher.run_here(busy)
        gate.set()
        t.join(WAIT_S)
        assert busy.wait(WAIT_S).ok and results and results[0].ok
        assert hv.dispatcher.ran_here == 0


def test_a_vms_order_holds_with_the_fast_path():
    with Hypervisor(backend="numpy") as hv:
        kid, h = _setup(hv, 1)
        order = []
        queued = [hv.launch(1, kid, h) for _ in range(5)]  # the dispatch thread's
        for c in queued:
            c.add_done_callback(lambda c: order.append(c.launch_id))
        last = hv.launch(1, kid, h, run_here=True)
        last.add_done_callback(lambda c: order.append(c.launch_id))
        assert last.wait(WAIT_S).ok
        for c in queued:
            assert c.wait(WAIT_S).ok
        assert order == sorted(order) and len(order) == 6


def test_a_wait_without_timeout_runs_the_queued_launch_on_the_waiting_thread():
    # The dispatch thread is not woken (wake is a no-op here): only the waiter can run it.
    with Hypervisor(backend="numpy") as hv:
        kid, h = _setup(hv, 1)
        threads = []
        hv.subscribe(lambda ev: threads.append(threading.get_ident()) if ev.kind == "launch_completed" else None)
        wake, hv.dispatcher.wake = hv.dispatcher.wake, lambda: None
        c = hv.launch(1, kid, h)
        assert not c.done()
        res = c.wait()
        hv.dispatcher.wake = wake
        assert res.ok and hv.dispatcher.ran_here == 1 and threads == [threading.get_ident()]
        assert np.array_equal(np.frombuffer(hv.read(1, h["c"]), np.float32), np.full(64, 3, np.float32))
        assert hv.stats(1).launches_total == 1


def test_a_wait_with_a_timeout_leaves_the_launch_to_the_dispatch_thread():
    with Hypervisor(backend="numpy") as hv:
        kid, h = _setup(hv, 1)
        wake, hv.dispatcher.wake = hv.dispatcher.wake, lambda: None
        c = hv.launch(1, kid, h)
        with pytest.raises(TimeoutError):
            c.wait(0.05)  # it stays queued: a bounded wait never runs it here
        hv.dispatcher.wake = wake
        wake()
        assert c.wait(WAIT_S).ok and hv.dispatcher.ran_here == 0


def test_a_launch_queued_while_a_caller_holds_the_device_runs_after_it_lets_go():
    # VM 2's launch is queued from inside VM 1's fast-path launch (the caller holds the
    # device token then): the dispatch thread does not queue up for the token, and the
    # caller wakes it when it lets go with VM 2's launch still queued.
    with Hypervisor(backend="numpy") as hv:
        kid, h = _setup(hv, 1)
        kid2, h2 = _setup(hv, 2)
        other, names = [], []

        def hook(job):
            names.append((job.vm_id, threading.current_thread().name))
            if job.vm_id == 1 and not other:
                other.append(hv.launch(2, kid2, h2))

        hv.dispatcher.before_run.append(hook)
        assert hv.launch_wait(1, kid, h, timeout=WAIT_S).ok
        assert other[0].wait(WAIT_S).ok
        assert names == [(1, threading.current_thread().name), (2, "pxos-dispatch")]
        assert hv.scheduler.queued() == 0 and hv.stats(2).launches_total == 1


def test_the_scheduler_counts_what_is_queued():
    from scheduler import FairScheduler, LaunchCost, Ticket, WorkloadClass

    s = FairScheduler()
    s.add_vm(1, 50)
    s.add_vm(2, 50)
    cost = LaunchCost(1, 1, 1, 0)
    for i in range(1, 7):
        s.submit(Ticket(1 + i % 2, i, WorkloadClass.BATCH, 50, cost, 0.001, 0.0, None))
    assert s.queued() == 6
    assert s.pick() is not None and s.queued() == 5
    assert len(s.cancel(1, lambda t: t.launch_id == 2)) == 1 and s.queued() == 4
    left_on_2 = s.queue_depth(2)
    s.remove_vm(2)
    assert s.queued() == 4 - left_on_2 == s.queue_depth(1)
