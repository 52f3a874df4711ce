"""Typed PXOS responses → the bytes of the command's response struct.

Every response starts with ``struct pxos_resp_hdr``: the request's header echoed with
``type = PXOS_RESP`` (fence flag, fence_id, ctx_id and ring_idx kept), the status,
``payload_len`` and a NUL-terminated message. A success fills the command's fixed response
struct; an error fills the same struct with everything after the header zero, except that
a COMPILE rejected with ``PXOS_S_COMPILE`` lists its diagnostics and a LAUNCH that ran
and failed keeps its id and timings. ``header_only`` asks for the bare 160-byte header
(for an unknown command, or a writable part too small for the command's struct).
docs/protocol.md shows each layout.

This is on every request's path, so the header is packed in one ``struct`` call and
GET_INFO's constant fields come from a template built once.
"""

from __future__ import annotations

import struct

from virtio_backend import wire
from virtio_backend.gpu import commands as c
from virtio_backend.gpu.decode import ECHOED_FLAGS, RESPONSE_STRUCT
from virtio_backend.wire import PxosStatus, ffi

# struct pxos_resp_hdr up to its message: ctrl_hdr (type, flags, fence_id, ctx_id,
# ring_idx, padding[3]), status, payload_len.
_RESP_HDR_HEAD = struct.Struct("<IIQIB3xII")
_MESSAGE_OFFSET = ffi.offsetof("struct pxos_resp_hdr", "message")
assert _RESP_HDR_HEAD.size == _MESSAGE_OFFSET
_SIZES = {name: wire.sizeof(name) for name in {*RESPONSE_STRUCT.values(), "pxos_resp_hdr"}}


def _text(s: str, size: int) -> bytes:
    """UTF-8 of ``s`` cut to fit ``char[size]`` with its NUL, never inside a character."""
    raw = s.encode("utf-8", errors="replace")
    if len(raw) < size:
        return raw
    return raw[: size - 1].decode("utf-8", errors="ignore").encode("utf-8")


def _fill_header(buf: bytearray, hdr: c.Header, status: int, message: str, payload_len: int = 0) -> None:
    _RESP_HDR_HEAD.pack_into(buf, 0, wire.PXOS_RESP, hdr.flags & ECHOED_FLAGS, hdr.fence_id, hdr.ctx_id,
                             hdr.ring_idx, status, payload_len)
    if message:
        raw = _text(message, wire.PXOS_MAX_MESSAGE)
        buf[_MESSAGE_OFFSET : _MESSAGE_OFFSET + len(raw)] = raw


def _template(struct_name: str, **fields) -> bytes:
    """A response struct with its constant fields filled in once."""
    p = ffi.new(f"struct {struct_name} *")
    for name, value in fields.items():
        setattr(p, name, value)
    return ffi.buffer(p)[:]


_INFO_TEMPLATE = _template(
    "pxos_resp_info", magic=wire.PXOS_MAGIC, abi_major=wire.PXOS_ABI_MAJOR, abi_minor=wire.PXOS_ABI_MINOR,
    max_rank=wire.PXOS_MAX_RANK, max_bindings=wire.PXOS_MAX_BINDINGS, max_source_bytes=wire.PXOS_MAX_SOURCE_BYTES,
    max_name=wire.PXOS_MAX_NAME, max_transfer_bytes=wire.PXOS_MAX_TRANSFER_BYTES,
    max_buffer_bytes=wire.PXOS_MAX_BUFFER_BYTES, max_kernels=wire.PXOS_MAX_KERNELS,
)


def encode(hdr: c.Header, resp: c.Response, *, header_only: bool = False) -> bytearray:
    """The response bytes for ``resp`` to the request whose header is ``hdr``."""
    struct_name = "pxos_resp_hdr" if header_only else RESPONSE_STRUCT.get(hdr.type, "pxos_resp_hdr")
    kind = type(resp)
    if kind is c.ErrorResp:
        buf = bytearray(_SIZES[struct_name])
        _fill_header(buf, hdr, resp.status, resp.message)
        if resp.diagnostics and struct_name == "pxos_resp_compile":
            _fill_diagnostics(ffi.from_buffer("struct pxos_resp_compile *", buf), resp.diagnostics)
        return buf
    if kind is c.InfoResp:
        buf = bytearray(_INFO_TEMPLATE)
    else:
        buf = bytearray(_SIZES[struct_name])
    if kind is c.LaunchResp:
        _fill_header(buf, hdr, resp.status, resp.message)
    else:
        _fill_header(buf, hdr, PxosStatus.PXOS_S_OK, "", resp.nbytes if kind is c.ReadResp else 0)
    fill = _FILLERS.get(kind)
    if fill is not None:
        fill(ffi.from_buffer(f"struct {struct_name} *", buf), resp)
    return buf


def _fill_info(p, resp: c.InfoResp) -> None:  # magic, ABI and limits: from _INFO_TEMPLATE
    p.vm_id = resp.vm_id
    p.flags = resp.flags
    p.memory_quota = resp.memory_quota
    p.memory_used = resp.memory_used
    p.compute_share_pct = resp.compute_share_pct
    p.compute_cap_pct = resp.compute_cap_pct
    p.max_inflight = resp.max_inflight
    p.backend = _text(resp.backend, ffi.sizeof(p.backend))
    p.device_name = _text(resp.device_name, ffi.sizeof(p.device_name))


def _fill_alloc(p, resp: c.AllocResp) -> None:
    p.handle = resp.handle
    p.nbytes = resp.nbytes


def _fill_compile(p, resp: c.CompileResp) -> None:
    if len(resp.kernels) > wire.PXOS_MAX_KERNELS:  # the language refuses such a program first
        raise ValueError(f"{len(resp.kernels)} kernels exceed PXOS_MAX_KERNELS")
    p.nkernels = len(resp.kernels)
    for slot, k in zip(p.kernels, resp.kernels, strict=False):
        slot.kernel_id = k.kernel_id
        slot.nparams = k.nparams
        slot.name = _text(k.name, wire.PXOS_MAX_NAME)


def _fill_diagnostics(p, diagnostics: tuple[c.Diagnostic, ...]) -> None:
    shown = diagnostics[: wire.PXOS_MAX_DIAGS]
    p.ndiags = len(shown)
    for slot, d in zip(p.diags, shown, strict=False):
        slot.line = max(d.line, 0)
        slot.column = max(d.column, 0)
        slot.code = _text(d.code, ffi.sizeof(slot.code))
        slot.message = _text(d.message, wire.PXOS_MAX_MESSAGE)


def _fill_kernel_info(p, resp: c.KernelInfoResp) -> None:
    if len(resp.params) > wire.PXOS_MAX_PARAMS:
        raise ValueError(f"{len(resp.params)} params exceed PXOS_MAX_PARAMS")
    p.kernel_id = resp.kernel_id
    p.nparams = len(resp.params)
    p.class_hint = resp.class_hint
    p.priority = wire.PXOS_PRIORITY_DEFAULT if resp.priority is None else resp.priority
    p.nstatements = resp.nstatements
    p.name = _text(resp.name, wire.PXOS_MAX_NAME)
    for slot, prm in zip(p.params, resp.params, strict=False):
        slot.name = _text(prm.name, wire.PXOS_MAX_NAME)
        slot.dtype = prm.dtype
        slot.direction = prm.direction
        if prm.dims is None:
            slot.rank = wire.PXOS_RANK_ANY
            continue
        if len(prm.dims) > wire.PXOS_MAX_RANK:
            raise ValueError(f"param {prm.name}: rank {len(prm.dims)} exceeds PXOS_MAX_RANK")
        slot.rank = len(prm.dims)
        for i, d in enumerate(prm.dims):
            slot.dims[i] = d


def _fill_launch(p, resp: c.LaunchResp) -> None:  # a failed launch still reports its timings
    p.launch_id = resp.launch_id
    p.device_ns = resp.device_ns
    p.queue_ns = resp.queue_ns
    p.total_ns = resp.total_ns
    p.class_assigned = resp.class_assigned


def _fill_stats(p, resp: c.StatsResp) -> None:
    for name in c.StatsResp.__slots__:
        setattr(p, name, getattr(resp, name))


def _fill_session_close(p, resp: c.SessionCloseResp) -> None:
    p.bytes_freed = resp.bytes_freed
    p.buffers_freed = resp.buffers_freed
    p.kernels_freed = resp.kernels_freed
    p.launches_cancelled = resp.launches_cancelled


# NoDataResp and ReadResp add nothing to the header (READ's payload_len is in it).
_FILLERS = {
    c.InfoResp: _fill_info,
    c.AllocResp: _fill_alloc,
    c.CompileResp: _fill_compile,
    c.KernelInfoResp: _fill_kernel_info,
    c.LaunchResp: _fill_launch,
    c.StatsResp: _fill_stats,
    c.SessionCloseResp: _fill_session_close,
}
