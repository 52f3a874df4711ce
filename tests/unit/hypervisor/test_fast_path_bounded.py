"""The bounded serial fast path (issue 14; docs/scheduling.md, "Serial fast path"): a
transport's loop thread passes ``run_here_max_s`` so that only its own launch, estimated
within the bound, runs on it, once, without yielding; anything longer goes to the dispatch
thread, with the same result and charging."""

from __future__ import annotations

import threading

import numpy as np

from hypervisor import Hypervisor
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
