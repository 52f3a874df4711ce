"""Typed PXOS responses → the bytes of the command's response struct.

Every response starts with ``struct pxos_resp_hdr``: the request's header echoed with
``type = PXOS_RESP`` (fence flag, fence_id, ctx_id and ring_idx kept), the status,
``payload_len`` and a NUL-terminated message. A success fills the command's fixed response
struct; an error fills the same struct with everything after the header zero, except that
a COMPILE rejected with ``PXOS_S_COMPILE`` lists its diagnostics and a LAUNCH that ran
and failed keeps its id and timings. ``header_only`` asks for the bare 160-byte header
(for an unknown command, or a writable part too small for the command's struct).
docs/protocol.md shows each layout.

This is on every request's path, so every response but COMPILE's and KERNEL_INFO's (arrays
of structs, rare) is packed by one ``struct.Struct`` call from a ``wire.layout`` of its
struct: no cffi object per response, no intermediate buffer. The two big ones are filled
through cffi after the header is packed.
"""

from __future__ import annotations

from functools import lru_cache

from virtio_backend import wire
from virtio_backend.gpu import commands as c
from virtio_backend.gpu.decode import ECHOED_FLAGS, RESPONSE_STRUCT
from virtio_backend.wire import PxosStatus, ffi

_SIZES = {name: wire.sizeof(name) for name in {*RESPONSE_STRUCT.values(), "pxos_resp_hdr"}}

# Whole response structs, flattened: the 9 values of pxos_resp_hdr (ctrl_hdr's type,
# flags, fence_id, ctx_id, ring_idx, padding; status, payload_len, message) come first.
_HDR = wire.layout("pxos_resp_hdr")
_HDR_VALUES = 9
_INFO = wire.layout("pxos_resp_info")
_ALLOC = wire.layout("pxos_resp_alloc")
_LAUNCH = wire.layout("pxos_resp_launch")
_STATS = wire.layout("pxos_resp_stats")
_SESSION_CLOSE = wire.layout("pxos_resp_session_close")
_MODEL_OPEN = wire.layout("pxos_resp_model_open")
# The order the encoders below pack in; a header that reorders a struct fails here, at import.
assert _HDR.fields == ("hdr", "status", "payload_len", "message") and len(_HDR.struct.unpack(bytes(160))) == _HDR_VALUES
assert _INFO.fields == ("r", "magic", "abi_major", "abi_minor", "vm_id", "flags", "memory_quota", "memory_used",
                        "compute_share_pct", "compute_cap_pct", "max_rank", "max_bindings", "max_source_bytes",
                        "max_name", "max_transfer_bytes", "max_buffer_bytes", "max_inflight", "max_kernels",
                        "backend", "device_name")
assert _ALLOC.fields == ("r", "handle", "nbytes")
assert _LAUNCH.fields == ("r", "launch_id", "device_ns", "queue_ns", "total_ns", "class_assigned", "padding")
assert _STATS.fields == ("r", *c.StatsResp.__slots__, "padding")
assert _SESSION_CLOSE.fields == ("r", "bytes_freed", "buffers_freed", "kernels_freed", "launches_cancelled", "padding")
assert _MODEL_OPEN.fields == ("r", *c.ModelOpenResp.__slots__, "padding")
_BACKEND_SIZE = ffi.sizeof(ffi.typeof("struct pxos_resp_info").fields[-2][1].type)
_DEVICE_NAME_SIZE = ffi.sizeof(ffi.typeof("struct pxos_resp_info").fields[-1][1].type)


def _text(s: str, size: int) -> bytes:
    """UTF-8 of ``s`` cut to fit ``char[size]`` with its NUL, never inside a character."""
    raw = s.encode("utf-8", errors="replace")
    if len(raw) < size:
        return raw
    return raw[: size - 1].decode("utf-8", errors="ignore").encode("utf-8")


@lru_cache(maxsize=64)
def _identity_text(s: str, size: int) -> bytes:
    # GET_INFO's backend and device name are the same few strings for the daemon's life.
    return _text(s, size)


_RESP = wire.PXOS_RESP
_OK = int(PxosStatus.PXOS_S_OK)
_MAX_MESSAGE = wire.PXOS_MAX_MESSAGE
# GET_INFO's constant fields, in _INFO's order: (magic, abi_major, abi_minor) after the
# header, then the limits between compute_cap_pct and max_inflight, then max_kernels.
_INFO_ABI = (wire.PXOS_MAGIC, wire.PXOS_ABI_MAJOR, wire.PXOS_ABI_MINOR)
_INFO_LIMITS = (wire.PXOS_MAX_RANK, wire.PXOS_MAX_BINDINGS, wire.PXOS_MAX_SOURCE_BYTES, wire.PXOS_MAX_NAME,
                wire.PXOS_MAX_TRANSFER_BYTES, wire.PXOS_MAX_BUFFER_BYTES)


def _head(hdr: c.Header, status: int, message: str = "", payload_len: int = 0) -> tuple:
    """The values of pxos_resp_hdr answering ``hdr`` (in ``_HDR``'s order)."""
    return (_RESP, hdr.flags & ECHOED_FLAGS, hdr.fence_id, hdr.ctx_id, hdr.ring_idx, b"",
            status, payload_len, _text(message, _MAX_MESSAGE) if message else b"")


def encode(hdr: c.Header, resp: c.Response, *, header_only: bool = False) -> bytes | bytearray:
    """The response bytes for ``resp`` to the request whose header is ``hdr``."""
    kind = type(resp)
    if kind is c.ErrorResp:
        return _encode_error(hdr, resp, header_only)
    if header_only:
        return _HDR.struct.pack(*_head(hdr, getattr(resp, "status", _OK), getattr(resp, "message", "")))
    if kind is c.InfoResp:
        return _INFO.struct.pack(
            *_head(hdr, _OK), *_INFO_ABI, resp.vm_id, resp.flags, resp.memory_quota, resp.memory_used,
            resp.compute_share_pct, resp.compute_cap_pct, *_INFO_LIMITS, resp.max_inflight, wire.PXOS_MAX_KERNELS,
            _identity_text(resp.backend, _BACKEND_SIZE), _identity_text(resp.device_name, _DEVICE_NAME_SIZE))
    if kind is c.NoDataResp:
        return _HDR.struct.pack(*_head(hdr, _OK))
    if kind is c.ReadResp:  # the data itself was placed after the header by the handler
        return _HDR.struct.pack(*_head(hdr, _OK, "", resp.nbytes))
    if kind is c.AllocResp:
        return _ALLOC.struct.pack(*_head(hdr, _OK), resp.handle, resp.nbytes)
    if kind is c.LaunchResp:  # a failed launch still reports its id and timings
        return _LAUNCH.struct.pack(*_head(hdr, resp.status, resp.message), resp.launch_id, resp.device_ns,
                                   resp.queue_ns, resp.total_ns, resp.class_assigned, 0)
    if kind is c.StatsResp:
        return _STATS.struct.pack(*_head(hdr, _OK), *(getattr(resp, name) for name in c.StatsResp.__slots__), 0)
    if kind is c.SessionCloseResp:
        return _SESSION_CLOSE.struct.pack(*_head(hdr, _OK), resp.bytes_freed, resp.buffers_freed,
                                          resp.kernels_freed, resp.launches_cancelled, 0)
    if kind is c.ModelOpenResp:
        return _MODEL_OPEN.struct.pack(*_head(hdr, _OK), *(getattr(resp, n) for n in c.ModelOpenResp.__slots__), 0)
    struct_name = RESPONSE_STRUCT.get(hdr.type, "pxos_resp_hdr")
    fill = _CFFI_FILLERS.get(kind)
    if fill is None or _CFFI_STRUCT[kind] != struct_name:
        raise TypeError(f"no encoding of {kind.__name__} as struct {struct_name}")
    buf = bytearray(_SIZES[struct_name])
    _HDR.struct.pack_into(buf, 0, *_head(hdr, _OK))
    fill(ffi.from_buffer(f"struct {struct_name} *", buf), resp)
    return buf


def _encode_error(hdr: c.Header, resp: c.ErrorResp, header_only: bool) -> bytearray:
    # The command's whole struct, zero after the header, so a guest reading its fields
    # reads zeros; COMPILE's carries the diagnostics.
    struct_name = "pxos_resp_hdr" if header_only else RESPONSE_STRUCT.get(hdr.type, "pxos_resp_hdr")
    buf = bytearray(_SIZES[struct_name])
    _HDR.struct.pack_into(buf, 0, *_head(hdr, resp.status, resp.message))
    if resp.diagnostics and struct_name == "pxos_resp_compile":
        _fill_diagnostics(ffi.from_buffer("struct pxos_resp_compile *", buf), resp.diagnostics)
    return buf


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


# The two responses with arrays of structs, filled through cffi.
_CFFI_FILLERS = {c.CompileResp: _fill_compile, c.KernelInfoResp: _fill_kernel_info}
_CFFI_STRUCT = {c.CompileResp: "pxos_resp_compile", c.KernelInfoResp: "pxos_resp_kernel_info"}
