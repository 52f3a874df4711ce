"""The device's side of the DRM transport: 3D commands and pxOS submits on the control queue.

``GpuDevice`` mixes this in. A guest driven by Linux's stock virtio_gpu driver sends, on
the same control queue as everything else:

- the 3D housekeeping of its contexts and buffer resources (CTX_CREATE, RESOURCE_CREATE_3D,
  ATTACH_BACKING, ...), answered at once by ``virgl.Virgl3D`` on the loop thread;
- CTX_DESTROY: the context's pxOS session is closed (its buffers, kernels and queued
  launches released) as a job on the VM's worker, behind that context's earlier requests;
- SUBMIT_3D: a pxOS request in an envelope (``virgl.open_submit`` checks it). The request
  is decoded exactly as on the module's path, run on the worker (a LAUNCH: on the loop
  thread's fast path when it may, as on the module's path, device.py), and its response
  (READ's data after it) written into the reply resource's backing pages; then, in fence
  order (``fences.FenceTimeline``), the SUBMIT_3D itself is answered OK_NODATA.

What the guest gets wrong at the virtio level (unknown context or resource, no backing,
not a pxOS submit, a fence id that does not increase) is answered with a virtio-gpu
error and writes nothing into its memory; a pxOS-level refusal is a pxOS status in the
reply, as on the module's path. The guest's DRM driver only logs a virtio-gpu error (the
process sees its reply untouched), so the guest library checks that a reply arrived.
"""

from __future__ import annotations

from dataclasses import dataclass

from virtio_backend.gpu import commands as c
from virtio_backend.gpu.decode import ECHOED_FLAGS, BadRequest, decode_command, response_size
from virtio_backend.gpu.encode import encode
from virtio_backend.gpu.virgl import MAX_BACKING_ENTRIES, MAX_VIRGL_REQUEST, VIRGL_COMMANDS, VirglError
from virtio_backend.gpu.virtio_gpu import CTRL_HDR, VirtioGpuCtrlType
from virtio_backend.wire import PxosCmdType, PxosStatus

V = VirtioGpuCtrlType
_ATTACH_BYTES = 32 + 16 * MAX_BACKING_ENTRIES  # ATTACH_BACKING with its most entries


@dataclass(frozen=True, slots=True)
class DrmTarget:
    """Where the result of a request that came over DRM goes: ``outer`` is the SUBMIT_3D
    (or CTX_DESTROY) header, answered with a virtio-gpu header; ``inner`` the pxOS
    request's header, whose response is written into ``reply`` (None: no reply)."""

    type: int  # the pxOS command (or CTX_DESTROY): the device's counters and log name it
    outer: c.Header
    inner: c.Header | None
    reply: tuple[memoryview, ...]


class DrmServing:
    """The DRM-transport half of ``GpuDevice`` (needs its virgl, fences, stats, _push,
    _complete, _offload, _may_launch_here, _launch_here, retirement and _note)."""

    COMMANDS = frozenset({*VIRGL_COMMANDS, V.VIRTIO_GPU_CMD_CTX_DESTROY, V.VIRTIO_GPU_CMD_SUBMIT_3D})

    def _answer_virtio(self, queue, req, hdr: c.Header, resp_type: int, body: bytes = b"", *,
                       fence: bool = True) -> None:
        if resp_type >= V.VIRTIO_GPU_RESP_ERR_UNSPEC:
            self.stats.count(self.stats.errors_by_status, V(resp_type).name)
        flags = hdr.flags & ECHOED_FLAGS if fence else 0
        out = CTRL_HDR.pack(resp_type, flags, hdr.fence_id if fence else 0, hdr.ctx_id, hdr.ring_idx) + body
        written = req.write(0, memoryview(out)[: req.writable_len])
        self._push(queue, req, written)

    def _refuse_fence(self, queue, req, hdr: c.Header) -> None:
        """A fence id not above the timeline's last: refused, and not echoed (a response
        carrying it would signal fences the device has not completed)."""
        self._note("%s: fence %d does not follow fence %d", _name(hdr.type), hdr.fence_id,
                   self.fences.last_fence_id)
        self.stats.count(self.stats.standard_by_command, _name(hdr.type))
        self._answer_virtio(queue, req, hdr, V.VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER, fence=False)

    def _serve_drm(self, queue, req, hdr: c.Header) -> None:
        self.stats.count(self.stats.standard_by_command, _name(hdr.type))
        if hdr.type == V.VIRTIO_GPU_CMD_SUBMIT_3D:
            self._serve_submit(queue, req, hdr)
            return
        if hdr.type == V.VIRTIO_GPU_CMD_CTX_DESTROY:
            self._serve_ctx_destroy(queue, req, hdr)
        else:
            n = _ATTACH_BYTES if hdr.type == V.VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING else MAX_VIRGL_REQUEST
            resp_type, body = self.virgl.handle(hdr, req.read(0, n), req.memory)
            if resp_type >= V.VIRTIO_GPU_RESP_ERR_UNSPEC:
                self._note("%s -> %s", _name(hdr.type), V(resp_type).name)
            self._answer_virtio(queue, req, hdr, resp_type, body)
        self.stats.drm_contexts, self.stats.drm_resources = len(self.virgl.contexts), len(self.virgl.resources)

    def _serve_ctx_destroy(self, queue, req, hdr: c.Header) -> None:
        if not self.virgl.destroy_context(hdr.ctx_id):
            self._answer_virtio(queue, req, hdr, V.VIRTIO_GPU_RESP_ERR_INVALID_CONTEXT_ID)
            return
        # The session's release runs on the worker, after the context's earlier requests.
        target = DrmTarget(V.VIRTIO_GPU_CMD_CTX_DESTROY, hdr, None, ())
        self._offload(queue, req, target,
                      c.SessionCloseCmd(c.Header(PxosCmdType.PXOS_CMD_SESSION_CLOSE, 0, 0, hdr.ctx_id, 0)))

    def _serve_submit(self, queue, req, hdr: c.Header) -> None:
        try:
            sub = self.virgl.open_submit(hdr, req)
        except VirglError as exc:
            self._note("SUBMIT_3D -> %s: %s", exc.resp_type.name, exc)
            self._answer_virtio(queue, req, hdr, exc.resp_type)
            return
        target = DrmTarget(sub.hdr.type, hdr, sub.hdr, tuple(sub.chain.writable_views()))
        counts = self.stats.pxos_by_command
        name = _name(sub.hdr.type)
        counts[name] = counts.get(name, 0) + 1
        fits = sub.chain.writable_len >= response_size(sub.hdr)
        gone = self.retirement.message
        if gone is not None:
            self._complete(queue, req, target, c.ErrorResp(PxosStatus.PXOS_S_VM_GONE, gone), header_only=not fits)
            return
        if sub.error is not None:
            self._complete(queue, req, target, c.ErrorResp(PxosStatus.PXOS_S_INVALID, sub.error), header_only=not fits)
            return
        try:
            cmd = decode_command(sub.hdr, sub.head, sub.chain)
        except BadRequest as exc:
            self._complete(queue, req, target, c.ErrorResp(exc.wire_status, str(exc)), header_only=not fits)
            return
        # A LAUNCH takes the loop thread's fast path when it may, as on the module's path.
        if not (type(cmd) is c.LaunchCmd and self._may_launch_here() and self._launch_here(queue, req, target, cmd)):
            self._offload(queue, req, target, cmd)

    def _complete_drm(self, queue, req, target: DrmTarget, resp: c.Response, header_only: bool) -> None:
        """Write the pxOS response into the reply resource, then answer the virtio request
        (the guest's fence signals on that answer, so the reply is there before it)."""
        if target.inner is not None and req.live:
            data = memoryview(encode(target.inner, resp, header_only=header_only))
            pos = 0
            for view in target.reply:  # scatter into the backing pages
                if pos >= len(data):
                    break
                n = min(len(view), len(data) - pos)
                view[:n] = data[pos:pos + n]
                pos += n
        self._answer_virtio(queue, req, target.outer, V.VIRTIO_GPU_RESP_OK_NODATA)


_NAMES = {int(t): t.name for names in (VirtioGpuCtrlType, PxosCmdType) for t in names}


def _name(t: int) -> str:
    return _NAMES.get(t, "unknown")
