"""The virtio-gpu 3D commands pxOS answers, so that Linux's stock virtio_gpu DRM driver can
carry pxOS requests (the DRM transport, docs/protocol.md "DRM transport").

With ``VIRTIO_GPU_F_VIRGL`` offered, the in-tree driver lets a process of the guest use
``/dev/dri/renderD128``: each open file gets a *context* (CTX_CREATE; here one pxOS
session), buffers are 3D resources backed by guest pages (RESOURCE_CREATE_3D +
ATTACH_BACKING, attached to the contexts that use them), and EXECBUFFER arrives as
SUBMIT_3D. No renderer runs behind this: the only capset offered is pxOS's own
(``PXOS_CAPSET_ID``), a resource's storage *is* its backing pages (the transfers only
check their box), and a SUBMIT_3D must be a pxOS submit (``struct pxos_drm_submit`` then
one pxOS request); ``open_submit`` checks it and hands the device the request as a
chain whose writable part is the reply resource's backing.

This class holds the device's 3D state (contexts, resources, their backing as
guest-physical ranges) and runs on the connection's loop thread only. It never calls the
hypervisor: the device closes a destroyed context's session on its worker. What a guest
gets wrong is answered with the virtio-gpu error QEMU's virgl path gives for it
(``VirglError`` for a submit); every guest-controlled count is capped by a named constant.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from hypervisor.errors import GuestMemoryError
from virtio_backend import wire
from virtio_backend.gpu import commands as c
from virtio_backend.gpu.chain import Segments, slice_views
from virtio_backend.gpu.decode import HDR_SIZE, HEAD_BYTES, RESP_HDR_SIZE
from virtio_backend.gpu.virtio_gpu import VirtioGpuCtrlType

V = VirtioGpuCtrlType

#: Contexts one device keeps (one per open render-node file in the guest): bounds the
#: host's table; a guest with more processes than this using pxOS at once is refused.
MAX_CONTEXTS = 1024
#: 3D resources one device keeps (each holds a backing list): bounds the host's tables.
MAX_RESOURCES = 4096
#: Backing entries of one ATTACH_BACKING: QEMU's own cap (16384), 64 MiB in 4 KiB pages.
MAX_BACKING_ENTRIES = 16384
#: Backing entries of all of a device's resources together: the host keeps each as a small
#: tuple, so this bounds what a guest's backing lists cost the host (tens of MB) at 1 GiB
#: of guest pages in 4 KiB entries; MAX_RESOURCES x MAX_BACKING_ENTRIES would be gigabytes.
MAX_DEVICE_BACKING_ENTRIES = 1 << 18
#: Bytes of one resource (its width): a reply holds at most a READ of
#: PXOS_MAX_TRANSFER_BYTES after its header, so 64 MiB leaves room and bounds the rest.
MAX_RESOURCE_BYTES = 64 << 20
#: Bytes of one submit: the envelope and one request of at most PXOS_MAX_REQUEST_BYTES.
SUBMIT_SIZE = wire.sizeof("pxos_drm_submit")
MAX_SUBMIT_BYTES = SUBMIT_SIZE + wire.PXOS_MAX_REQUEST_BYTES
#: The bytes of a standard 3D request this module reads past the header (ATTACH_BACKING's
#: entries are read separately, bounded by MAX_BACKING_ENTRIES).
MAX_VIRGL_REQUEST = 128
PIPE_BUFFER = 0  # gallium's pipe_texture_target for a plain buffer: the only target served

_U32 = struct.Struct("<I")
_CTX_CREATE = struct.Struct("<24xII64s")           # nlen, context_init, debug_name
_RESOURCE_U32 = struct.Struct("<24xI")              # resource_id (unref, ctx attach/detach, backing)
_CREATE_3D = struct.Struct("<24xIIIIIIIIIII")      # id, target, format, bind, w, h, d, array, level, samples, flags
_ATTACH = struct.Struct("<24xII")                   # resource_id, nr_entries
_MEM_ENTRY = struct.Struct("<QI4x")                # addr, length
_TRANSFER_3D = struct.Struct("<24xIIIIIIQIIII")    # box x y z w h d, offset, resource_id, level, stride, layer_stride
_SUBMIT = struct.Struct("<24xI4x")                  # size
_INNER_HDR = struct.Struct("<IIQIB")               # pxos_ctrl_hdr: type, flags, fence_id, ctx_id, ring_idx
_CAPSET_INFO_REQ = struct.Struct("<24xI")
_CAPSET_REQ = struct.Struct("<24xII")               # capset_id, capset_version
_CAPSET_INFO_BODY = struct.Struct("<IIII")          # capset_id, max_version, max_size, padding
_ENVELOPE = wire.layout("pxos_drm_submit")
_CAPSET = wire.layout("pxos_capset")
_WRITE_SIZE = wire.sizeof("pxos_cmd_transfer")
_WRITE_LENGTH = struct.Struct("<40xQ")  # pxos_cmd_transfer.length (after hdr, handle, offset)
assert wire.layout("pxos_cmd_transfer", ("handle", "offset", "length")).offset + 16 == _WRITE_LENGTH.size - 8
#: The largest reply a request can need: KERNEL_INFO's struct, or a READ's header + data.
MAX_REPLY_BYTES = max(wire.sizeof("pxos_resp_kernel_info"), RESP_HDR_SIZE + wire.PXOS_MAX_TRANSFER_BYTES)
CAPSET_DATA = _CAPSET.struct.pack(wire.PXOS_MAGIC, wire.PXOS_ABI_MAJOR, wire.PXOS_ABI_MINOR,
                                  wire.PXOS_MAX_REQUEST_BYTES, MAX_REPLY_BYTES)
NUM_CAPSETS = 1


class VirglError(Exception):
    """A 3D request the guest got wrong: answered with ``resp_type`` (a virtio-gpu error)."""

    def __init__(self, resp_type: V, message: str):
        super().__init__(message)
        self.resp_type = resp_type


@dataclass
class Resource:
    resource_id: int
    size: int                              # width: bytes of the buffer
    backing: tuple[tuple[int, int], ...] = ()  # (guest-physical address, length)
    backing_len: int = 0


@dataclass
class Context:
    ctx_id: int
    debug_name: str
    resources: set[int] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class Submit:
    """A checked pxOS submit: the inner request's header (its session is the context),
    its fixed part, and the request as a chain whose writable part is the reply space."""

    hdr: c.Header
    head: bytes
    chain: Segments
    resource_id: int
    error: str | None = None  # a request the device answers PXOS_S_INVALID without decoding


class Virgl3D:
    """Contexts and 3D resources of one device (loop thread only)."""

    def __init__(self) -> None:
        self.contexts: dict[int, Context] = {}
        self.resources: dict[int, Resource] = {}
        self.backing_entries = 0  # of all resources, capped by MAX_DEVICE_BACKING_ENTRIES

    def handle(self, hdr: c.Header, request: bytes, memory) -> tuple[int, bytes]:
        """(response type, body) for a standard 3D / capset / resource command."""
        try:
            return _TABLE[hdr.type](self, hdr, request, memory)
        except VirglError as exc:
            return exc.resp_type, b""
        except struct.error:  # shorter than its struct: QEMU answers ERR_UNSPEC
            return V.VIRTIO_GPU_RESP_ERR_UNSPEC, b""

    # ---- capsets ------------------------------------------------------------------------
    def _capset_info(self, hdr, request, memory):
        (index,) = _CAPSET_INFO_REQ.unpack_from(request)
        if index >= NUM_CAPSETS:
            raise VirglError(V.VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER, f"capset index {index}")
        body = _CAPSET_INFO_BODY.pack(wire.PXOS_CAPSET_ID, wire.PXOS_CAPSET_VERSION, len(CAPSET_DATA), 0)
        return V.VIRTIO_GPU_RESP_OK_CAPSET_INFO, body

    def _capset(self, hdr, request, memory):
        capset_id, version = _CAPSET_REQ.unpack_from(request)
        if capset_id != wire.PXOS_CAPSET_ID or version > wire.PXOS_CAPSET_VERSION:
            raise VirglError(V.VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER, f"capset {capset_id} v{version}")
        return V.VIRTIO_GPU_RESP_OK_CAPSET, CAPSET_DATA

    # ---- contexts -----------------------------------------------------------------------
    def _ctx_create(self, hdr, request, memory):
        nlen, context_init, raw = _CTX_CREATE.unpack_from(request)
        if hdr.ctx_id == 0 or hdr.ctx_id in self.contexts:
            raise VirglError(V.VIRTIO_GPU_RESP_ERR_INVALID_CONTEXT_ID, f"context {hdr.ctx_id} exists or is 0")
        # context_init names a capset (CONTEXT_INIT): only pxOS's, or none (stock QEMU).
        if context_init & 0xFF not in (0, wire.PXOS_CAPSET_ID):
            raise VirglError(V.VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER, f"context capset {context_init & 0xFF}")
        if len(self.contexts) >= MAX_CONTEXTS:
            raise VirglError(V.VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY, f"more than {MAX_CONTEXTS} contexts")
        name = raw[: min(nlen, len(raw))].split(b"\0", 1)[0].decode("utf-8", "replace")
        self.contexts[hdr.ctx_id] = Context(hdr.ctx_id, name)
        return V.VIRTIO_GPU_RESP_OK_NODATA, b""

    def destroy_context(self, ctx_id: int) -> bool:
        """CTX_DESTROY: False when there is no such context (the device answers the error
        and closes the session only for a context that existed)."""
        return self.contexts.pop(ctx_id, None) is not None

    def _context(self, ctx_id: int) -> Context:
        ctx = self.contexts.get(ctx_id)
        if ctx is None:
            raise VirglError(V.VIRTIO_GPU_RESP_ERR_INVALID_CONTEXT_ID, f"no context {ctx_id}")
        return ctx

    def _resource(self, resource_id: int) -> Resource:
        res = self.resources.get(resource_id)
        if res is None:
            raise VirglError(V.VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID, f"no resource {resource_id}")
        return res

    def _ctx_attach(self, hdr, request, memory):
        (rid,) = _RESOURCE_U32.unpack_from(request)
        ctx = self._context(hdr.ctx_id)
        self._resource(rid)
        ctx.resources.add(rid)
        return V.VIRTIO_GPU_RESP_OK_NODATA, b""

    def _ctx_detach(self, hdr, request, memory):
        (rid,) = _RESOURCE_U32.unpack_from(request)
        ctx = self._context(hdr.ctx_id)
        if rid not in ctx.resources:
            raise VirglError(V.VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID, f"resource {rid} not attached")
        ctx.resources.discard(rid)
        return V.VIRTIO_GPU_RESP_OK_NODATA, b""

    # ---- resources ----------------------------------------------------------------------
    def _create_3d(self, hdr, request, memory):
        rid, target, _fmt, _bind, width, height, depth, array, level, samples, _flags = _CREATE_3D.unpack_from(request)
        if rid == 0 or rid in self.resources:
            raise VirglError(V.VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID, f"resource id {rid} is 0 or in use")
        # Only plain buffers: a texture (what Mesa's virgl driver would make) has no meaning here.
        if target != PIPE_BUFFER or (height, depth, array) != (1, 1, 1) or level or samples:
            raise VirglError(V.VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER, "only 1-D buffer resources (PIPE_BUFFER)")
        if not 0 < width <= MAX_RESOURCE_BYTES:
            raise VirglError(V.VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER, f"width {width} outside 1..{MAX_RESOURCE_BYTES}")
        if len(self.resources) >= MAX_RESOURCES:
            raise VirglError(V.VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY, f"more than {MAX_RESOURCES} resources")
        self.resources[rid] = Resource(rid, width)
        return V.VIRTIO_GPU_RESP_OK_NODATA, b""

    def _unref(self, hdr, request, memory):
        (rid,) = _RESOURCE_U32.unpack_from(request)
        self.backing_entries -= len(self._resource(rid).backing)
        del self.resources[rid]
        for ctx in self.contexts.values():
            ctx.resources.discard(rid)
        return V.VIRTIO_GPU_RESP_OK_NODATA, b""

    def _attach_backing(self, hdr, request, memory):
        rid, n = _ATTACH.unpack_from(request)
        res = self._resource(rid)
        if res.backing:
            raise VirglError(V.VIRTIO_GPU_RESP_ERR_UNSPEC, f"resource {rid} already has backing")
        if not 0 < n <= MAX_BACKING_ENTRIES:
            raise VirglError(V.VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER, f"{n} backing entries, 1..{MAX_BACKING_ENTRIES}")
        if self.backing_entries + n > MAX_DEVICE_BACKING_ENTRIES:
            raise VirglError(V.VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY,
                             f"over {MAX_DEVICE_BACKING_ENTRIES} backing entries on this device")
        need = _ATTACH.size + n * _MEM_ENTRY.size
        if len(request) < need:
            raise VirglError(V.VIRTIO_GPU_RESP_ERR_UNSPEC, f"{len(request)} bytes hold fewer than {n} entries")
        entries, total = [], 0
        for addr, length in _MEM_ENTRY.iter_unpack(request[_ATTACH.size:need]):
            try:
                memory.translate_gpa(addr, length)
            except GuestMemoryError as exc:  # outside guest RAM
                raise VirglError(V.VIRTIO_GPU_RESP_ERR_UNSPEC, f"backing {addr:#x}+{length:#x}: {exc}") from None
            entries.append((addr, length))
            total += length
        if total < res.size:
            raise VirglError(V.VIRTIO_GPU_RESP_ERR_UNSPEC, f"backing of {total} bytes for a {res.size}-byte resource")
        res.backing, res.backing_len = tuple(entries), total
        self.backing_entries += n
        return V.VIRTIO_GPU_RESP_OK_NODATA, b""

    def _detach_backing(self, hdr, request, memory):
        (rid,) = _RESOURCE_U32.unpack_from(request)
        res = self._resource(rid)
        if not res.backing:
            raise VirglError(V.VIRTIO_GPU_RESP_ERR_UNSPEC, f"resource {rid} has no backing")
        self.backing_entries -= len(res.backing)
        res.backing, res.backing_len = (), 0
        return V.VIRTIO_GPU_RESP_OK_NODATA, b""

    def _transfer_3d(self, hdr, request, memory):
        # The backing pages are the resource's only storage: nothing to copy either way.
        x, y, z, w, h, d, _off, rid, level, _stride, _layer = _TRANSFER_3D.unpack_from(request)
        res = self._usable(hdr.ctx_id, rid)
        if level or y or z or h > 1 or d > 1 or x + w > res.size:
            raise VirglError(V.VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER, f"box outside resource {rid}")
        return V.VIRTIO_GPU_RESP_OK_NODATA, b""

    def _usable(self, ctx_id: int, rid: int) -> Resource:
        """The resource ``rid``, attached to context ``ctx_id`` and backed."""
        ctx = self._context(ctx_id)
        res = self._resource(rid)
        if rid not in ctx.resources:
            raise VirglError(V.VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID, f"resource {rid} not attached to context {ctx_id}")
        if not res.backing:
            raise VirglError(V.VIRTIO_GPU_RESP_ERR_UNSPEC, f"resource {rid} has no backing")
        return res

    # ---- SUBMIT_3D ----------------------------------------------------------------------
    def open_submit(self, hdr: c.Header, req) -> Submit:
        """Check a SUBMIT_3D (``req`` a virtqueue Request) as a pxOS submit; raises
        VirglError for what the device answers with a virtio-gpu error (nothing is
        written into the guest's resources then)."""
        if req.readable_len < _SUBMIT.size:
            raise VirglError(V.VIRTIO_GPU_RESP_ERR_UNSPEC, "SUBMIT_3D shorter than its struct")
        (size,) = _SUBMIT.unpack_from(req.read(0, _SUBMIT.size))
        self._context(hdr.ctx_id)
        if size > req.readable_len - _SUBMIT.size:
            raise VirglError(V.VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER, f"size {size} beyond the request")
        if size < SUBMIT_SIZE + HDR_SIZE or size > MAX_SUBMIT_BYTES:
            raise VirglError(V.VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
                             f"size {size} outside {SUBMIT_SIZE + HDR_SIZE}..{MAX_SUBMIT_BYTES}: not a pxOS submit")
        env = req.read(_SUBMIT.size, SUBMIT_SIZE)
        magic, major, _minor, rid, data_rid, reply_offset, data_offset = _ENVELOPE.struct.unpack(env)
        if magic != wire.PXOS_MAGIC:
            raise VirglError(V.VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER, f"magic {magic:#x}: not a pxOS submit")
        if major != wire.PXOS_ABI_MAJOR:
            raise VirglError(V.VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER, f"pxOS ABI {major}")
        res = self._usable(hdr.ctx_id, rid)
        limit = min(res.size, res.backing_len)
        if reply_offset > limit - RESP_HDR_SIZE:
            raise VirglError(V.VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
                             f"reply at {reply_offset} leaves under {RESP_HDR_SIZE} bytes of resource {rid}")
        inner = _SUBMIT.size + SUBMIT_SIZE
        views = slice_views(req.readable_views(), inner, size - SUBMIT_SIZE)
        head = Segments(views).read(0, HEAD_BYTES)
        itype, flags, fence_id, ctx_id, ring_idx = _INNER_HDR.unpack_from(head)
        error = None
        if data_rid:  # a WRITE whose data is in a resource: the chain goes on in its pages
            views = list(views) + self._data_views(hdr.ctx_id, req, data_rid, data_offset, itype, head, size)
        elif data_offset:
            error = "data_offset without a data_resource"
        try:
            reply = req.guest_views(_ranges(res.backing, reply_offset, limit - reply_offset))
        except GuestMemoryError as exc:  # the memory table changed since ATTACH_BACKING
            raise VirglError(V.VIRTIO_GPU_RESP_ERR_UNSPEC, f"resource {rid}'s backing: {exc}") from None
        # The inner header's other fields are the device's to fill: the session is the context.
        if flags or fence_id or ctx_id or ring_idx:
            error = (f"the request's header carries flags {flags}, fence {fence_id}, ctx {ctx_id}, ring {ring_idx}: "
                     "over DRM only its type is set (the device fills the rest)")
        return Submit(c.Header(itype, 0, 0, hdr.ctx_id, 0), head, Segments(views, reply), rid, error)

    def _data_views(self, ctx_id: int, req, rid: int, offset: int, itype: int, head: bytes, size: int) -> list:
        """The pages of a WRITE's data held in resource ``rid`` (the length is the WRITE's)."""
        if itype != wire.PxosCmdType.PXOS_CMD_WRITE or size - SUBMIT_SIZE != _WRITE_SIZE:
            raise VirglError(V.VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
                             "data_resource is for a WRITE whose request ends with its struct")
        (length,) = _WRITE_LENGTH.unpack_from(head)
        res = self._usable(ctx_id, rid)
        if length > wire.PXOS_MAX_TRANSFER_BYTES or offset + length > min(res.size, res.backing_len):
            raise VirglError(V.VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
                             f"data [{offset}, +{length}) outside resource {rid} (or over PXOS_MAX_TRANSFER_BYTES)")
        try:
            return req.guest_views(_ranges(res.backing, offset, length))
        except GuestMemoryError as exc:
            raise VirglError(V.VIRTIO_GPU_RESP_ERR_UNSPEC, f"resource {rid}'s backing: {exc}") from None

    def reset(self) -> None:
        self.contexts.clear()
        self.resources.clear()
        self.backing_entries = 0


def _ranges(backing, offset: int, length: int) -> list[tuple[int, int]]:
    """The guest-physical ranges of [offset, offset + length) of a backing list."""
    out = []
    for addr, n in backing:
        if length == 0:
            break
        if offset >= n:
            offset -= n
            continue
        take = min(n - offset, length)
        out.append((addr + offset, take))
        length -= take
        offset = 0
    return out


_TABLE = {
    V.VIRTIO_GPU_CMD_GET_CAPSET_INFO: Virgl3D._capset_info,
    V.VIRTIO_GPU_CMD_GET_CAPSET: Virgl3D._capset,
    V.VIRTIO_GPU_CMD_CTX_CREATE: Virgl3D._ctx_create,
    V.VIRTIO_GPU_CMD_CTX_ATTACH_RESOURCE: Virgl3D._ctx_attach,
    V.VIRTIO_GPU_CMD_CTX_DETACH_RESOURCE: Virgl3D._ctx_detach,
    V.VIRTIO_GPU_CMD_RESOURCE_CREATE_3D: Virgl3D._create_3d,
    V.VIRTIO_GPU_CMD_RESOURCE_UNREF: Virgl3D._unref,
    V.VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING: Virgl3D._attach_backing,
    V.VIRTIO_GPU_CMD_RESOURCE_DETACH_BACKING: Virgl3D._detach_backing,
    V.VIRTIO_GPU_CMD_TRANSFER_TO_HOST_3D: Virgl3D._transfer_3d,
    V.VIRTIO_GPU_CMD_TRANSFER_FROM_HOST_3D: Virgl3D._transfer_3d,
}
#: Commands served here (CTX_DESTROY and SUBMIT_3D are the device's: they reach the worker).
VIRGL_COMMANDS = frozenset(_TABLE)
