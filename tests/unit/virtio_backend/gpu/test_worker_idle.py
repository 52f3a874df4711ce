"""DeviceWorker.idle(): what the loop thread asks before it runs a LAUNCH itself (the
fast path): every job queued so far has run; the ``then`` step that posts the results
does not count (the loop may be reading them already)."""

from __future__ import annotations

import threading

from virtio_backend.gpu.worker import DeviceWorker


def test_idle_once_the_jobs_ran_even_while_their_results_are_posted():
    w = DeviceWorker("t")
    run_gate, post_gate = threading.Event(), threading.Event()
    started, posting = threading.Event(), threading.Event()
    try:
        assert w.idle()

        def job():
            started.set()
            assert run_gate.wait(10)

        def post():
            posting.set()
            assert post_gate.wait(10)

        assert w.submit_many([job], then=post)
        assert started.wait(10)
        assert not w.idle()  # the job is running
        run_gate.set()
        assert posting.wait(10)
        assert w.idle()  # the job ran; its results are being posted
        post_gate.set()
        assert w.wait_idle(10) and w.idle()
        assert (w.jobs_total, w.jobs_done) == (2, 2)  # the job and wait_idle's marker
    finally:
        run_gate.set()
        post_gate.set()
        w.close()
    assert w.closed and not w.submit(lambda: None)


def test_a_job_that_fails_still_counts_as_run():
    w = DeviceWorker("t")
    try:
        assert w.submit_many([lambda: 1 / 0, lambda: None])
        assert w.wait_idle(10) and w.idle()
    finally:
        w.close()
