"""The virtio-gpu-pxos device: what the vhost-user library drives for one VM's connection.

Implements ``virtio_backend.vhost_user.device.VirtioDevice`` for virtio device ID 16 with
two queues (virtio spec 5.7.2): the control queue carries the standard virtio-gpu
commands (answered by ``display.HeadlessDisplay``) and the PXOS vendor commands
(0x7000..0x70ff: ``decode`` → ``control.PxosControl`` → ``encode``); the cursor queue is
drained (cursor commands take no response). Rings, decoding and completions run on the
connection's loop thread; the PXOS commands themselves run on the VM's worker (below),
except LAUNCH on its fast path (below); a LAUNCH's chain is held until its completion
arrives from the hypervisor's dispatcher thread through ``connection.call_soon_threadsafe``.

Every chain is completed through one path, ``_complete``, and nothing a guest sends raises
out of ``queue_kicked``: a malformed request becomes an error response, a host bug becomes
``PXOS_S_INTERNAL`` (logged with its traceback), and both are counted in ``stats``.

The loop thread does not wait on the GPU (issue 17, finding 5): a transfer waits for its
copy, the copy stream can be queued behind another VM's kernel, and any call may wait for
the hypervisor's lock while someone else waits on the device; meanwhile QEMU would wait
for this loop's replies. Each decoded PXOS command is a job for the VM's ``DeviceWorker``
(one thread per VM, first in, first out: the VM's commands still run one at a time in
ring order); its result comes back to the loop thread, which encodes it and completes the
chain. A kick drains at most ``KICK_BUDGET`` chains, then the device yields to the loop
(its vhost-user socket, the other queue, completions) and resumes on its own.

LAUNCH on the loop thread, the serial fast path (issue 14; docs/protocol.md): a LAUNCH
with nothing of the VM's ahead of it on the worker is submitted to the hypervisor from
the loop thread (no hop through the worker) when the hypervisor's lock is free at once
(``Hypervisor.launch_nowait``: the loop never waits for it; else the worker takes the
LAUNCH). If it is the device's only launch, its memory ready, the caller is serial
(no launch of the VM's in flight, no more chains on the ring) and the launch's estimate is
at most ``INLINE_LAUNCH_MAX_S``, it also runs there and its chain is completed in the
same pass: no thread hand-off at all. A pass spends at most
``INLINE_PASS_BUDGET_S`` of loop time on LAUNCHes; a longer launch, or one on a busy
device, runs on the dispatcher thread as before, so the loop never waits for long work.

``reset()`` (rings stopped, device reset, QEMU gone) starts a new generation at once: a
completion of the old one that arrives later is dropped, never written to guest memory,
and a queued job of the old one is skipped. The release of the VM's state in the
hypervisor (``hv.reset_vm``: buffers, kernels, queued launches; usage back to zero) is
the worker's next job: after anything of the old generation still running, before
anything of the next driver, so the next driver's first request sees a clean device.

When the operator removes the VM while its guest runs, the transport *retires* the device
(``Retirement``) instead of dropping the connection (QEMU would then leave the guest's
requests unanswered for ever): from then on every PXOS command is answered at once with
``PXOS_S_VM_GONE``, any failure of what was in flight is reported as that status, and the
device never calls the hypervisor again (the VM id may be registered anew meanwhile).

The per-command counters have one ``unknown`` bucket for every type the device does
not know (finding 4): a guest picks the type, the counters stay bounded.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import stat
import threading

from hypervisor import Hypervisor
from hypervisor.core import MAX_INFLIGHT_PER_VM
from hypervisor.errors import NotFound, ProtocolError
from hypervisor.types import Completion
from virtio_backend import wire
from virtio_backend.gpu import commands as c
from virtio_backend.gpu.control import Deferred, PxosControl, launch_response
from virtio_backend.gpu.decode import (
    HDR_SIZE,
    HEAD_BYTES,
    BadRequest,
    decode_command,
    decode_header,
    response_size,
)
from virtio_backend.gpu.display import MAX_STANDARD_REQUEST, HeadlessDisplay
from virtio_backend.gpu.drm_serve import DrmServing, DrmTarget
from virtio_backend.gpu.encode import encode
from virtio_backend.gpu.fences import FenceTimeline
from virtio_backend.gpu.inline_launch import InlineLaunching
from virtio_backend.gpu.metrics import DeviceStats, LogLimiter
from virtio_backend.gpu.virgl import NUM_CAPSETS, Virgl3D
from virtio_backend.gpu.virtio_gpu import VirtioGpuCtrlType, VirtioGpuFeature, VirtioGpuFlag, VirtioGpuQueue
from virtio_backend.gpu.worker import DeviceWorker
from virtio_backend.wire import PxosCmdType, PxosStatus

log = logging.getLogger("pxos.virtio.gpu")

VHOST_USER_GPU_SET_SOCKET = 33  # VhostUserRequest.GPU_SET_SOCKET
CONFIG_SPACE_MAX = 256  # vhost-user GET_CONFIG reads at most this much (VHOST_USER_MAX_CONFIG_SIZE)
DEFAULT_MAX_INFLIGHT = 64  # until the control queue starts: QEMU's control queue size
_PXOS_FIRST, _PXOS_LAST = wire.PXOS_CMD_FIRST, wire.PXOS_CMD_LAST
#: Chains one pass over a queue serves before yielding to the loop: bounds what one VM's
#: flood makes its loop do before it reads its vhost-user socket again (QEMU may be
#: waiting there). A chain costs the loop a few microseconds (pop, decode, hand over).
KICK_BUDGET = 32
#: The counters' bucket for any command type the device does not know: a guest chooses
#: the type (a u32), so a key per type would let it grow the map without bound.
UNKNOWN_COMMAND = "unknown"


class Retirement:
    """Set once (any thread) when the VM is removed under a connected guest: the message
    every later PXOS command is answered with, as ``PXOS_S_VM_GONE``."""

    __slots__ = ("message",)

    def __init__(self) -> None:
        self.message: str | None = None


class GpuDevice(DrmServing, InlineLaunching):
    """One VM's virtio-gpu-pxos device, for one vhost-user connection."""

    num_queues = 2

    def __init__(self, hv: Hypervisor, vm_id: int, connection, stats: DeviceStats | None = None,
                 worker: DeviceWorker | None = None, retirement: Retirement | None = None):
        self.hv = hv
        self.retirement = retirement if retirement is not None else Retirement()
        self.vm_id = vm_id
        self._connection = connection  # call_soon_threadsafe(fn, *args) onto the loop thread
        self.stats = stats if stats is not None else DeviceStats()
        self.display = HeadlessDisplay(NUM_CAPSETS)
        self.control = PxosControl(hv, vm_id, DEFAULT_MAX_INFLIGHT)
        self.virgl = Virgl3D()  # contexts and 3D resources: the DRM transport (drm_serve.py)
        self.fences = FenceTimeline()
        self._generation = 0
        self._display_fd: int | None = None
        self._log = LogLimiter()
        self._own_worker = worker is None
        self._worker = worker if worker is not None else DeviceWorker(f"vm{vm_id}-device")
        self._resume_scheduled: set[int] = set()  # queues whose budget ran out, resume queued
        # Results coming back from the worker, picked up by the loop in batches: one wake
        # of the loop (and one interrupt) per batch, not per command.
        self._results: list[tuple] = []
        self._results_lock = threading.Lock()
        self._results_posted = False
        self._batch: list = []  # jobs of the current pass, handed to the worker at its end
        self._release_queued = False  # a release job is queued and has not started yet
        self._init_inline_launch()

    # ---- VirtioDevice: features and config ----------------------------------------------
    def device_features(self) -> int:
        # Headless, no blob resources. EDID offered (and answered "no monitor", see
        # display.py) because QEMU's vhost-user-gpu asks for it by default; VIRGL so that
        # a guest's stock virtio_gpu driver allows its 3D ioctls, the DRM transport (no
        # renderer runs: see virgl.py). QEMU passes on only VIRGL, EDID and RESOURCE_UUID.
        return (1 << VirtioGpuFeature.VIRTIO_GPU_F_EDID) | (1 << VirtioGpuFeature.VIRTIO_GPU_F_VIRGL)

    def protocol_features(self) -> int:
        return 0  # CONFIG (mandatory for vhost-user-gpu) is among the library's own

    def get_config(self, offset: int, size: int) -> bytes:
        if offset < 0 or size < 0 or offset + size > CONFIG_SPACE_MAX:
            raise ValueError(f"config read [{offset}, {offset + size}) outside {CONFIG_SPACE_MAX} bytes")
        self.stats.config_reads += 1
        space = self.display.config_bytes().ljust(CONFIG_SPACE_MAX, b"\0")
        return space[offset : offset + size]

    def set_config(self, offset: int, data: bytes) -> None:
        self.display.write_config(offset, data)

    # ---- VirtioDevice: queues -----------------------------------------------------------
    def queue_started(self, index: int, queue) -> None:
        if index == VirtioGpuQueue.CONTROLQ:
            self.control.max_inflight = min(queue.size, MAX_INFLIGHT_PER_VM)

    def queue_kicked(self, index: int, queue) -> None:
        if index == VirtioGpuQueue.CONTROLQ:
            serve = self._serve
        elif index == VirtioGpuQueue.CURSORQ:
            serve = self._serve_cursor
        else:
            return
        served = 0
        self._pass_inline_s = 0.0
        try:
            while served < KICK_BUDGET:
                req = queue.pop()
                if req is None:  # empty: the guest's kicks are re-armed
                    break
                serve(queue, req)
                served += 1
            else:  # budget spent, chains may be left: yield to the loop, then carry on
                self._resume_later(index, queue)
        finally:
            self._flush_batch()
        if served:
            queue.notify()

    def _resume_later(self, index: int, queue) -> None:
        if index in self._resume_scheduled:
            return
        self._resume_scheduled.add(index)
        queue.stats.kicks_deferred += 1
        self._connection.call_soon_threadsafe(self._resume, self._generation, index, queue)

    def _resume(self, generation: int, index: int, queue) -> None:
        self._resume_scheduled.discard(index)
        if generation == self._generation and queue.live and queue.enabled:
            self.queue_kicked(index, queue)

    def queue_stopped(self, index: int) -> None:
        pass  # the library invalidated the queue's requests; reset() follows for the device

    def reset(self) -> None:
        self._generation += 1  # completions of the old generation are dropped on arrival
        self.stats.resets_total += 1
        self.stats.launches_inflight = 0
        self._resume_scheduled.clear()
        self.display = HeadlessDisplay(NUM_CAPSETS)
        self.virgl.reset()
        self.stats.drm_contexts = self.stats.drm_resources = 0
        self.fences.reset()
        self._overran.clear()  # the kernels went with the reset
        self._close_display_fd()
        if self.retirement.message is not None:  # removed: the hypervisor released it all
            return
        if self._release_queued:  # one queued release covers any number of resets
            return
        self._release_queued = True
        if not self._worker.submit(self._release_vm):  # the VM is being detached: no worker
            self._release_vm()

    def _release_vm(self) -> None:
        """The worker's job after a reset: release the VM's state in the hypervisor."""
        self._release_queued = False
        if self.retirement.message is not None:  # removed meanwhile: unregister released it
            return
        try:
            res = self.hv.reset_vm(self.vm_id, "the guest's virtio-gpu device was reset")
        except NotFound:  # the VM was removed first (detach): nothing left to release
            return
        # A reset is normal (the guest's driver starts, stops or is reloaded): info only when
        # it released something, and worded as what it is.
        level = logging.INFO if (res.buffers_freed or res.kernels_freed or res.launches_cancelled) else logging.DEBUG
        log.log(level, "vm %d: the guest reset its device; released %d buffers (%d bytes), %d kernels, "
                "%d queued launches", self.vm_id, res.buffers_freed, res.bytes_freed, res.kernels_freed,
                res.launches_cancelled)

    def idle(self, timeout: float = 10.0) -> bool:
        """Wait until the worker ran every job queued so far (tests, detach)."""
        return self._worker.wait_idle(timeout)

    def handle_device_message(self, request: int, payload: bytes, fds: list[int]) -> bytes | None:
        if request != VHOST_USER_GPU_SET_SOCKET:
            for fd in fds:
                os.close(fd)
            raise ProtocolError(f"vhost-user request {request} is not one a virtio-gpu backend serves")
        # QEMU's end of the display socketpair. A headless device never talks on it, but
        # keeps it open so QEMU sees a live peer; a new one replaces the old. It must be a
        # socket (issue 17: every fd a front-end passes is checked for what it must be).
        if fds and not _is_socket(fds[0]):
            for fd in fds:
                os.close(fd)
            raise ProtocolError("GPU_SET_SOCKET: the fd is not a socket")
        self._close_display_fd()
        if fds:
            self._display_fd = fds[0]
            for fd in fds[1:]:
                os.close(fd)
        return None

    def close(self) -> None:
        self._close_display_fd()
        if self._own_worker:
            self._worker.close()

    def _close_display_fd(self) -> None:
        if self._display_fd is not None:
            os.close(self._display_fd)
            self._display_fd = None

    # ---- serving one chain --------------------------------------------------------------
    # The per-request path: the fixed part is copied out of the chain once (HEAD_BYTES),
    # views of guest memory are made only for the commands that move bulk data (WRITE,
    # READ), and the response is packed in one call and written with one copy.
    def _serve(self, queue, req) -> None:
        self.stats.requests_total += 1
        try:
            if req.readable_len < HDR_SIZE:
                self.stats.no_header_total += 1
                self._note("chain of %d readable bytes holds no control header", req.readable_len)
                self._push(queue, req, 0)
                return
            head = req.read(0, HEAD_BYTES)  # the fixed part, copied out of guest memory once
            hdr = decode_header(head)
            if hdr.flags & _FENCE and not self.fences.admit(req, hdr.fence_id):
                self._refuse_fence(queue, req, hdr)
            elif _PXOS_FIRST <= hdr.type <= _PXOS_LAST:
                self._serve_pxos(queue, req, hdr, head)
            elif hdr.type in _DRM_COMMANDS:
                self._serve_drm(queue, req, hdr)
            else:
                self._serve_standard(queue, req, hdr)
        except Exception:  # a host bug: answer it, count it, keep serving
            self.stats.internal_errors_total += 1
            log.exception("vm %d: internal error serving head %d", self.vm_id, req.head)
            if req.live:
                self._push(queue, req, 0)

    def _serve_pxos(self, queue, req, hdr: c.Header, head: bytes) -> None:
        counts = self.stats.pxos_by_command
        name = _cmd_name(hdr)
        counts[name] = counts.get(name, 0) + 1
        gone = self.retirement.message
        if gone is not None:  # answered here: the VM no longer exists in the hypervisor
            fits = req.writable_len >= response_size(hdr)
            self._complete(queue, req, hdr, c.ErrorResp(PxosStatus.PXOS_S_VM_GONE, gone), header_only=not fits)
            return
        try:
            cmd = decode_command(hdr, head, req)
        except BadRequest as exc:
            fits = req.writable_len >= response_size(hdr)
            self._complete(queue, req, hdr, c.ErrorResp(exc.wire_status, str(exc)), header_only=not fits)
            return
        if not (type(cmd) is c.LaunchCmd and self._may_launch_here() and self._launch_here(queue, req, hdr, cmd)):
            self._offload(queue, req, hdr, cmd)

    def _run(self, cmd: c.Command, name: str) -> c.Response | Deferred:
        """Handle one decoded command (worker thread); guest memory views released after.
        A host bug becomes PXOS_S_INTERNAL (counted when the loop completes it)."""
        try:
            return self.control.handle(cmd)
        except Exception as exc:  # a host bug under the handler
            log.exception("vm %d: %s failed inside the host", self.vm_id, name)
            return c.ErrorResp(PxosStatus.PXOS_S_INTERNAL, f"host error: {type(exc).__name__}")
        finally:
            _release_views(cmd)

    def _finish(self, queue, req, hdr: c.Header, result) -> None:
        if type(result) is Deferred:
            self._hold(queue, req, hdr, result.completion)
        else:
            self._complete(queue, req, hdr, result)

    # ---- PXOS commands: on the VM's worker ----------------------------------------------
    def _offload(self, queue, req, hdr: c.Header, cmd: c.Command) -> None:
        generation = self._generation
        name = _cmd_name(hdr)

        def job() -> None:  # the worker thread
            if generation != self._generation:  # reset before it ran: never touch the VM
                _release_views(cmd)
                return
            gone = self.retirement.message
            if gone is not None:  # removed before it ran: never touch the hypervisor
                _release_views(cmd)
                result = c.ErrorResp(PxosStatus.PXOS_S_VM_GONE, gone)
            else:
                result = self._run(cmd, name)
            with self._results_lock:
                self._results.append((generation, queue, req, hdr, result))

        self._batch.append((job, queue, req, hdr, cmd))

    def _flush_batch(self) -> None:
        batch, self._batch = self._batch, []
        # The results of a pass go back together, when the worker has run all of it: one
        # wake of the loop per pass, not a thread ping-pong per command (a guest with one
        # request in flight per thread, the usual driver, sends passes of one).
        if not batch or self._worker.submit_many([b[0] for b in batch], then=self._post_results):
            return
        for _, queue, req, hdr, cmd in batch:  # the worker is closed: the VM is being detached
            _release_views(cmd)
            self._complete(queue, req, hdr, c.ErrorResp(PxosStatus.PXOS_S_CANCELLED, "the device is closing"))

    def _post_results(self) -> None:
        """Wake the loop thread for the results gathered so far (worker thread), unless a
        wake is already on its way."""
        with self._results_lock:
            if self._results_posted or not self._results:
                return
            self._results_posted = True
        self._connection.call_soon_threadsafe(self._take_results)

    def _take_results(self) -> None:
        with self._results_lock:
            items, self._results = self._results, []
            self._results_posted = False
        queues = []
        for generation, queue, req, hdr, result in items:
            # A result of an old generation is dropped: the reset job, queued behind it,
            # releases whatever it made (an ALLOC's buffer, a COMPILE's kernels).
            if generation != self._generation or not req.live:
                self.stats.late_completions_dropped += 1
                continue
            if type(result) is c.ErrorResp and result.status == PxosStatus.PXOS_S_INTERNAL:
                self.stats.internal_errors_total += 1
            try:
                self._finish(queue, req, hdr, result)
            except Exception:
                self.stats.internal_errors_total += 1
                log.exception("vm %d: completing head %d failed", self.vm_id, req.head)
                if req.live:
                    self._push(queue, req, 0)
            if queue not in queues:
                queues.append(queue)
        for queue in queues:
            queue.notify()

    def _serve_standard(self, queue, req, hdr: c.Header) -> None:
        self.stats.count(self.stats.standard_by_command, _cmd_name(hdr))
        out = self.display.handle(hdr, req.read(0, MAX_STANDARD_REQUEST))
        resp_type = int.from_bytes(out[:4], "little")
        if resp_type >= VirtioGpuCtrlType.VIRTIO_GPU_RESP_ERR_UNSPEC:
            self.stats.count(self.stats.errors_by_status, VirtioGpuCtrlType(resp_type).name)
        written = req.write(0, memoryview(out)[: req.writable_len])
        self._push(queue, req, written)

    def _push(self, queue, req, written: int) -> None:
        """Complete a chain: at once, or (fenced) when every earlier fence is complete."""
        for q, r, n in self.fences.complete(queue, req, written):
            q.push(r, n)
        self.stats.fence_waits_total = self.fences.held_total

    def _complete(self, queue, req, hdr: c.Header, resp: c.Response, *, header_only: bool = False) -> None:
        """The one path that encodes a PXOS response and completes its chain (a request
        that came over the DRM transport is answered through ``_complete_drm``)."""
        resp = self._account(hdr, resp)
        if type(hdr) is DrmTarget:
            self._complete_drm(queue, req, hdr, resp, header_only)
            return
        data = encode(hdr, resp, header_only=header_only)
        if len(data) > req.writable_len:  # only an error in a chain too small for its header
            data = memoryview(data)[: req.writable_len]
        written = req.write(0, data)
        if type(resp) is c.ReadResp:
            written += resp.nbytes  # the data the handler placed after the header
        self._push(queue, req, written)

    def _account(self, hdr, resp: c.Response) -> c.Response:
        """The response as sent (a VM removed meanwhile says so), its error counted."""
        kind = type(resp)
        if log.isEnabledFor(logging.DEBUG):  # --log-level debug: every PXOS answer
            log.debug("vm %d: %s -> %s", self.vm_id, _cmd_name(hdr),
                      PxosStatus(resp.status).name if kind is c.ErrorResp or kind is c.LaunchResp else "PXOS_S_OK")
        if kind is c.ErrorResp or kind is c.LaunchResp:  # the only ones that carry a status
            status = resp.status
            gone = self.retirement.message
            if gone is not None and status != PxosStatus.PXOS_S_VM_GONE and (
                    kind is c.LaunchResp or status != PxosStatus.PXOS_S_OK):
                # In flight when the VM was removed (cancelled, its VM not found, or a launch
                # whose outputs were freed with the VM): say why.
                status = PxosStatus.PXOS_S_VM_GONE
                resp = (dataclasses.replace(resp, status=status, message=gone) if kind is c.LaunchResp
                        else c.ErrorResp(status, gone))
            if status != PxosStatus.PXOS_S_OK:
                self.stats.count(self.stats.errors_by_status, PxosStatus(status).name)
                self._note("%s -> %s: %s", _cmd_name(hdr), PxosStatus(status).name, resp.message)
        return resp

    # ---- LAUNCH: held until the work completes --------------------------------------------
    def _hold(self, queue, req, hdr: c.Header, completion: Completion) -> None:
        generation = self._generation
        self.stats.launches_inflight += 1

        def on_done(done: Completion) -> None:  # the dispatcher thread (or here, if done)
            self._connection.call_soon_threadsafe(self._launch_done, generation, queue, req, hdr, done)

        completion.add_done_callback(on_done)

    def _launch_done(self, generation: int, queue, req, hdr: c.Header, done: Completion) -> None:
        if generation != self._generation:  # reset since: launches_inflight was zeroed then
            self.stats.late_completions_dropped += 1
            return
        self.stats.launches_inflight -= 1
        if not req.live:  # its queue was stopped (the library invalidated the chain)
            self.stats.late_completions_dropped += 1
            return
        try:
            self._complete(queue, req, hdr, launch_response(done.result))
        except Exception:
            self.stats.internal_errors_total += 1
            log.exception("vm %d: completing launch %d failed", self.vm_id, done.launch_id)
            if req.live:
                self._push(queue, req, 0)
        queue.notify()

    # ---- cursor queue -------------------------------------------------------------------
    def _serve_cursor(self, queue, req) -> None:
        # UPDATE_CURSOR / MOVE_CURSOR have no response (virtio spec 5.7.6.10): a headless
        # device has no cursor, so each chain is returned with nothing written.
        self._push(queue, req, 0)
        self.stats.cursor_total += 1

    def _note(self, fmt: str, *args) -> None:
        if self._log.allow():
            log.info("vm %d: " + fmt, self.vm_id, *args)


_NAMES = {int(t): t.name for names in (VirtioGpuCtrlType, PxosCmdType) for t in names}
_FENCE = int(VirtioGpuFlag.VIRTIO_GPU_FLAG_FENCE)
_DRM_COMMANDS = DrmServing.COMMANDS


def _cmd_name(hdr: c.Header) -> str:
    return _NAMES.get(hdr.type, UNKNOWN_COMMAND)


def _is_socket(fd: int) -> bool:
    try:
        return stat.S_ISSOCK(os.fstat(fd).st_mode)
    except OSError:
        return False


def _release_views(cmd: c.Command) -> None:
    # Slices of guest memory must not outlive the request (the mapping could not go).
    kind = type(cmd)
    if kind is c.WriteCmd:
        views = cmd.data
    elif kind is c.ReadCmd:
        views = cmd.dst
    else:
        return
    for v in views:
        v.release()
