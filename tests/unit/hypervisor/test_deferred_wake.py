"""The deferred wake (issue 14; docs/scheduling.md, "Serial fast path"): a serial caller's
plain launch() leaves the idle dispatch thread asleep and its wait() runs the launch; a
launch whose wait() never comes still runs (the dispatch thread's idle wait is bounded),
and anything else that asks for the result wakes the dispatch thread at once."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import hypervisor.dispatch as dispatch
from hypervisor import Hypervisor
from hypervisor import errors as E
from tests.unit.hypervisor.test_fast_path import WAIT_S, _setup


def _deferred_launch(hv, kid, h, tries=2000):
    """Launch-and-wait serially until a launch() leaves the dispatch thread asleep; return
    that launch's completion, not waited for, or None."""
    for _ in range(tries):
        c = hv.launch(1, kid, h)
        if c._wake is not None:
            return c
        assert c.wait().ok
        time.sleep(0.0005)  # the dispatch thread goes back to its idle wait
    return None


def _threads_of_completions(hv):
    names = []
    hv.subscribe(lambda ev: names.append(threading.current_thread().name) if ev.kind == "launch_completed" else None)
    return names


def test_a_serial_callers_launch_runs_in_its_wait_without_waking_the_dispatcher(monkeypatch):
    monkeypatch.setattr(dispatch, "DEFERRED_WAKE_MAX_S", 60.0)  # (no idle wake-up runs it meanwhile)
    with Hypervisor(backend="numpy") as hv:
        kid, h = _setup(hv, 1)
        c = _deferred_launch(hv, kid, h)
        assert c is not None, "a serial caller's launch() never deferred the wake"
        before = hv.stats(1).launches_total
        names = _threads_of_completions(hv)
        ran_here = hv.dispatcher.ran_here
        assert c.result is None and hv.scheduler.queued() == 1  # the dispatch thread left it queued
        res = c.wait()
        assert res.ok and hv.dispatcher.ran_here == ran_here + 1
        assert names == [threading.current_thread().name]  # run and delivered by the wait
        n = 50
        for _ in range(n):
            assert hv.launch(1, kid, h).wait().ok
        assert hv.stats(1).launches_total == before + 1 + n  # every launch counted once
        assert names.count(threading.current_thread().name) >= n // 2  # mostly run by the waits
        assert hv.scheduler.queued() == 0
        assert np.array_equal(np.frombuffer(hv.read(1, h["c"]), np.float32), np.full(64, 3, np.float32))


def test_a_deferred_launch_whose_wait_never_comes_still_runs():
    with Hypervisor(backend="numpy") as hv:
        kid, h = _setup(hv, 1)
        names = _threads_of_completions(hv)
        c = _deferred_launch(hv, kid, h)
        assert c is not None
        deadline = time.monotonic() + WAIT_S
        while c.result is None and time.monotonic() < deadline:  # (not done(): that would wake it)
            time.sleep(0.001)
        assert c.result is not None and c.result.ok
        assert names[-1] == "pxos-dispatch"  # the dispatch thread's bounded idle wait ran it


@pytest.mark.parametrize("ask", ["wait_timeout", "callback", "done"])
def test_asking_for_a_deferred_launch_wakes_the_dispatcher(monkeypatch, ask):
    # With the idle wait bounded at 60 s, only the wake can run the launch within 10 s.
    monkeypatch.setattr(dispatch, "DEFERRED_WAKE_MAX_S", 60.0)
    with Hypervisor(backend="numpy") as hv:
        kid, h = _setup(hv, 1)
        c = _deferred_launch(hv, kid, h)
        assert c is not None
        if ask == "wait_timeout":
            assert c.wait(10).ok
        elif ask == "callback":
            got = threading.Event()
            c.add_done_callback(lambda _c: got.set())
            assert got.wait(10) and c.result.ok
        else:
            deadline = time.monotonic() + 10
            while not c.done() and time.monotonic() < deadline:
                time.sleep(0.001)
            assert c.done() and c.result.ok


def test_another_threads_launch_wakes_the_dispatcher(monkeypatch):
    # The serial caller is this thread: a launch from another thread is not deferred.
    monkeypatch.setattr(dispatch, "DEFERRED_WAKE_MAX_S", 60.0)
    with Hypervisor(backend="numpy") as hv:
        kid, h = _setup(hv, 1)
        c = _deferred_launch(hv, kid, h)
        assert c is not None and c.wait().ok
        got = []
        t = threading.Thread(target=lambda: got.append(hv.launch(1, kid, h)))
        t.start()
        t.join(WAIT_S)
        assert got[0]._wake is None
        done = threading.Event()
        got[0].add_done_callback(lambda _c: done.set())
        assert done.wait(10) and got[0].result.ok


@pytest.mark.parametrize("action, status", [("unregister", "PXOS_S_VM_GONE"), ("reset", "PXOS_S_CANCELLED"),
                                            ("stop", "PXOS_S_CANCELLED")])
def test_a_deferred_launch_is_answered_when_its_vm_goes_or_the_hypervisor_stops(monkeypatch, action, status):
    # A deferred launch stays a queued ticket of its VM: removing the VM, resetting it or
    # stopping the hypervisor cancels it and answers its completion at once (no wait()
    # needed, no idle wake-up: the idle wait is bounded at 60 s here), its count given back.
    monkeypatch.setattr(dispatch, "DEFERRED_WAKE_MAX_S", 60.0)
    hv = Hypervisor(backend="numpy").start()
    try:
        kid, h = _setup(hv, 1)
        c = _deferred_launch(hv, kid, h)
        assert c is not None and c.result is None and hv.launches_in_flight == 1
        if action == "unregister":
            hv.unregister_vm(1)
        elif action == "reset":
            hv.reset_vm(1)
        else:
            hv.stop()
        assert c.result is not None and c.result.status == status  # answered by the action itself
        assert c.wait() is c.result and c._wake is None and c._runner is None
        assert hv.launches_in_flight == 0
    finally:
        if action != "stop":
            hv.stop()


def test_a_launch_after_stop_began_is_refused_not_left_queued():
    # stop() cancels what is queued, then stops the dispatcher: a launch() that came
    # between the two would stay queued with nothing to run it and its wait() never
    # return. From stop() on, launch() refuses with Cancelled instead.
    hv = Hypervisor(backend="numpy").start()
    kid, h = _setup(hv, 1)
    hv.stop()
    with pytest.raises(E.Cancelled, match="stopping"):
        hv.launch(1, kid, h)
    assert hv.launches_in_flight == 0
