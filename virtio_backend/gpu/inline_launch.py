"""LAUNCH on the loop thread: the serial fast path of the vhost-user device (issue 14;
docs/protocol.md, "LAUNCH on the loop thread"; docs/scheduling.md, "Serial fast path").

``GpuDevice`` mixes this in. A LAUNCH with nothing of the VM's ahead of it on the worker
is submitted to the hypervisor from the VM's loop thread (no hop through the worker) when
the hypervisor's lock is free at once (``Hypervisor.launch_nowait``: the loop never waits
for it; else the worker takes the LAUNCH, as before). If it is the device's only launch,
its memory ready, the caller serial (no launch of the VM's in flight, no more chains on
the ring) and its estimate at most ``INLINE_LAUNCH_MAX_S``, it also runs there and its
chain is completed in the same pass: no thread hand-off at all. A pass spends at most
``INLINE_PASS_BUDGET_S`` of loop time on LAUNCHes; a longer launch, or one on a busy
device, runs on the dispatcher thread, so the loop never waits for long work.
"""

from __future__ import annotations

import logging
import time

from virtio_backend.gpu import commands as c
from virtio_backend.wire import PxosStatus

log = logging.getLogger("pxos.virtio.gpu")

#: The serial fast path for LAUNCH (issue 14; docs/protocol.md, "LAUNCH on the loop thread"):
#: a LAUNCH is submitted to the hypervisor from the VM's loop thread when nothing of the
#: VM's is ahead of it on the worker, and when the device is idle and its estimated device
#: time is at most this, it also runs there (Hypervisor.launch run_here_max_s), its chain
#: completed in the same pass: no thread hand-off at all. Longer launches are queued for
#: the dispatcher as before: they never hold the loop that serves the VM's socket.
INLINE_LAUNCH_MAX_S = 0.0005
#: A kernel whose LAUNCH, run on the loop thread, took more than this many times the bound
#: (its estimate was wrong) is never run there again by this device: queued instead. At
#: most MAX_OVERRAN kernels are remembered (a guest picks the kernels; the set stays bounded).
INLINE_OVERRUN_FACTOR = 4
MAX_OVERRAN = 1024
#: Loop time one pass over the control queue may spend on LAUNCHes (binding, submitting,
#: running the short ones) before the rest of the pass goes through the worker.
INLINE_PASS_BUDGET_S = 0.002


class InlineLaunching:
    """The LAUNCH fast path of ``GpuDevice`` (needs its stats, control, _worker, _batch,
    _finish and _note; ``_init_inline_launch`` from its constructor, and
    ``_pass_inline_s`` zeroed at the start of each pass over the control queue)."""

    def _init_inline_launch(self) -> None:
        # The estimate bound (INLINE_LAUNCH_MAX_S); 0 turns the path off (every LAUNCH
        # through the worker, as before it: a benchmark's baseline).
        self.inline_launch_max_s = INLINE_LAUNCH_MAX_S
        self._pass_inline_s = 0.0  # loop time spent on LAUNCHes in the current pass
        self._overran: set[int] = set()  # kernels whose LAUNCH ran far longer here than the bound

    def _may_launch_here(self) -> bool:
        """Whether a LAUNCH may be submitted from the loop thread: nothing of the VM's is
        ahead of it (no command of this pass waiting for the worker, the worker idle: the
        VM's commands keep their order, a reset's release runs before the next driver's
        requests), the device is not closing, and the pass has loop time left."""
        return (self.inline_launch_max_s > 0 and not self._batch and self._pass_inline_s < INLINE_PASS_BUDGET_S
                and self._worker.idle() and not self._worker.closed)

    def _launch_here(self, queue, req, hdr: c.Header, cmd: c.LaunchCmd) -> bool:
        """Submit a LAUNCH from the loop thread without ever waiting (False: the
        hypervisor's lock was busy, nothing done: the worker takes it); run it here too
        when it is the device's only launch, the caller is serial (the VM has no launch in
        flight, no more chains wait on the ring) and the estimate is within the bound. Its
        response then goes out in this pass; otherwise it is held as a worker-submitted
        launch is. The retirement check before it (``_serve_pxos``) is exact: ``retire``
        sets the message, then waits for this loop to finish its pass."""
        t0 = time.perf_counter()
        # Run here only for a serial caller: no launch of the VM's in flight (its earlier
        # ones come first) and nothing more on the ring (a guest that queues several
        # launches at once gets them pipelined by the dispatch thread, which on a GPU
        # submits the next before the current one ends; run here, each would wait).
        serial = self.stats.launches_inflight == 0 and queue.pending() == 0
        bound = self.inline_launch_max_s
        max_s = bound if serial and cmd.kernel_id not in self._overran else 0.0
        try:
            result = self.control.launch_here(cmd, max_s)
        except Exception as exc:  # a host bug under the handler
            log.exception("vm %d: PXOS_CMD_LAUNCH failed inside the host", self.vm_id)
            result = c.ErrorResp(PxosStatus.PXOS_S_INTERNAL, f"host error: {type(exc).__name__}")
        took = time.perf_counter() - t0
        self._pass_inline_s += took
        if result is None:  # the hypervisor's lock is busy (its holder may wait on the GPU)
            self.stats.launches_lock_busy_total += 1
            return False
        kind = type(result)
        if kind is c.ErrorResp and result.status == PxosStatus.PXOS_S_INTERNAL:
            self.stats.internal_errors_total += 1
        if kind is not c.ErrorResp:
            self.stats.launches_submitted_inline_total += 1
            if kind is c.LaunchResp:
                self.stats.launches_run_inline_total += 1
                if max_s and took > INLINE_OVERRUN_FACTOR * bound:  # the estimate was wrong: never again here
                    self.stats.launches_overran_total += 1
                    if len(self._overran) < MAX_OVERRAN:
                        self._overran.add(cmd.kernel_id)
                    self._note("kernel %d ran %.1f ms on the loop thread, estimated within %.1f ms: queued from "
                               "now on", cmd.kernel_id, took * 1e3, bound * 1e3)
        self._finish(queue, req, hdr, result)
        return True
