"""Typed PXOS responses → the bytes of the command's response struct.

Every response starts with ``struct pxos_resp_hdr``: the request's header echoed with
``type = PXOS_RESP`` (fence flag, fence_id, ctx_id and ring_idx kept), the status,
``payload_len`` and a NUL-terminated message. A success fills the command's fixed response
struct; an error fills the same struct with everything after the header zero, except that
a COMPILE rejected with ``PXOS_S_COMPILE`` lists its diagnostics. ``header_only`` asks
for the bare 160-byte header (for an unknown command, or a writable part too small for the
command's struct). docs/protocol.md shows each layout.
"""

from __future__ import annotations

from virtio_backend import wire
from virtio_backend.gpu import commands as c
from virtio_backend.gpu.decode import ECHOED_FLAGS, RESPONSE_STRUCT
from virtio_backend.wire import PxosCmdType, PxosStatus, ffi

T = PxosCmdType


def _text(s: str, size: int) -> bytes:
    """UTF-8 of ``s`` cut to fit ``char[size]`` with its NUL, never inside a character."""
    raw = s.encode("utf-8", errors="replace")
    if len(raw) < size:
        return raw
    return raw[: size - 1].decode("utf-8", errors="ignore").encode("utf-8")


def _fill_header(r, hdr: c.Header, status: int, message: str, payload_len: int = 0) -> None:
    r.hdr.type = wire.PXOS_RESP
    r.hdr.flags = hdr.flags & ECHOED_FLAGS
    r.hdr.fence_id = hdr.fence_id
    r.hdr.ctx_id = hdr.ctx_id
    r.hdr.ring_idx = hdr.ring_idx
    r.status = status
    r.payload_len = payload_len
    if message:
        r.message = _text(message, wire.PXOS_MAX_MESSAGE)


def encode(hdr: c.Header, resp: c.Response, *, header_only: bool = False) -> bytes:
    """The response bytes for ``resp`` to the request whose header is ``hdr``."""
    struct_name = "pxos_resp_hdr" if header_only else RESPONSE_STRUCT.get(hdr.type, "pxos_resp_hdr")
    p = ffi.new(f"struct {struct_name} *")
    r = p if struct_name == "pxos_resp_hdr" else p.r
    if isinstance(resp, c.ErrorResp):
        _fill_header(r, hdr, resp.status, resp.message)
        if resp.diagnostics and struct_name == "pxos_resp_compile":
            _fill_diagnostics(p, resp.diagnostics)
    else:
        _ENCODERS[type(resp)](p, r, hdr, resp)
    return ffi.buffer(p)[:]


def _enc_nodata(p, r, hdr, resp: c.NoDataResp) -> None:
    _fill_header(r, hdr, PxosStatus.PXOS_S_OK, "")


def _enc_info(p, r, hdr, resp: c.InfoResp) -> None:
    _fill_header(r, hdr, PxosStatus.PXOS_S_OK, "")
    p.magic = wire.PXOS_MAGIC
    p.abi_major = wire.PXOS_ABI_MAJOR
    p.abi_minor = wire.PXOS_ABI_MINOR
    p.vm_id = resp.vm_id
    p.flags = resp.flags
    p.memory_quota = resp.memory_quota
    p.memory_used = resp.memory_used
    p.compute_share_pct = resp.compute_share_pct
    p.compute_cap_pct = resp.compute_cap_pct
    p.max_rank = wire.PXOS_MAX_RANK
    p.max_bindings = wire.PXOS_MAX_BINDINGS
    p.max_source_bytes = wire.PXOS_MAX_SOURCE_BYTES
    p.max_name = wire.PXOS_MAX_NAME
    p.max_transfer_bytes = wire.PXOS_MAX_TRANSFER_BYTES
    p.max_buffer_bytes = wire.PXOS_MAX_BUFFER_BYTES
    p.max_inflight = resp.max_inflight
    p.max_kernels = wire.PXOS_MAX_KERNELS
    p.backend = _text(resp.backend, ffi.sizeof(p.backend))
    p.device_name = _text(resp.device_name, ffi.sizeof(p.device_name))


def _enc_alloc(p, r, hdr, resp: c.AllocResp) -> None:
    _fill_header(r, hdr, PxosStatus.PXOS_S_OK, "")
    p.handle = resp.handle
    p.nbytes = resp.nbytes


def _enc_read(p, r, hdr, resp: c.ReadResp) -> None:
    _fill_header(r, hdr, PxosStatus.PXOS_S_OK, "", payload_len=resp.nbytes)


def _enc_compile(p, r, hdr, resp: c.CompileResp) -> None:
    _fill_header(r, hdr, PxosStatus.PXOS_S_OK, "")
    if len(resp.kernels) > wire.PXOS_MAX_KERNELS:  # the hypervisor refuses such a program first
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


def _enc_kernel_info(p, r, hdr, resp: c.KernelInfoResp) -> None:
    _fill_header(r, hdr, PxosStatus.PXOS_S_OK, "")
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
        else:
            if len(prm.dims) > wire.PXOS_MAX_RANK:
                raise ValueError(f"param {prm.name}: rank {len(prm.dims)} exceeds PXOS_MAX_RANK")
            slot.rank = len(prm.dims)
            for i, d in enumerate(prm.dims):
                slot.dims[i] = d


def _enc_launch(p, r, hdr, resp: c.LaunchResp) -> None:
    _fill_header(r, hdr, resp.status, resp.message)
    p.launch_id = resp.launch_id
    p.device_ns = resp.device_ns
    p.queue_ns = resp.queue_ns
    p.total_ns = resp.total_ns
    p.class_assigned = resp.class_assigned


def _enc_stats(p, r, hdr, resp: c.StatsResp) -> None:
    _fill_header(r, hdr, PxosStatus.PXOS_S_OK, "")
    for name in c.StatsResp.__slots__:
        setattr(p, name, getattr(resp, name))


def _enc_session_close(p, r, hdr, resp: c.SessionCloseResp) -> None:
    _fill_header(r, hdr, PxosStatus.PXOS_S_OK, "")
    p.bytes_freed = resp.bytes_freed
    p.buffers_freed = resp.buffers_freed
    p.kernels_freed = resp.kernels_freed
    p.launches_cancelled = resp.launches_cancelled


_ENCODERS = {
    c.NoDataResp: _enc_nodata,
    c.InfoResp: _enc_info,
    c.AllocResp: _enc_alloc,
    c.ReadResp: _enc_read,
    c.CompileResp: _enc_compile,
    c.KernelInfoResp: _enc_kernel_info,
    c.LaunchResp: _enc_launch,
    c.StatsResp: _enc_stats,
    c.SessionCloseResp: _enc_session_close,
}
