"""The guest's side of the PXOS wire, in Python: request bytes out, response fields in.

What a guest driver does in C with ``pxos_gpu.h``, done with the host's cffi view of the
same header: build the readable bytes of a request (struct + payload) and turn the
writable bytes the device filled back into plain dicts. The scripted vhost-user frontend
in the tests, the benchmarks and the examples of docs/protocol.md use it; the device never
does (it has its own strict decoder in ``decode``).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from virtio_backend import wire
from virtio_backend.gpu.decode import RESP_HDR_SIZE, RESPONSE_STRUCT
from virtio_backend.wire import PxosBindingKind, PxosClass, PxosCmdType, PxosDtype, ffi

T = PxosCmdType
BindingSpec = tuple[str, int, int, int]  # name, kind, dtype, raw u64 value


def _new(struct_name: str, cmd_type: int, session: int, fence_id: int, flags: int):
    p = ffi.new(f"struct {struct_name} *")
    p.hdr.type = cmd_type
    p.hdr.flags = flags
    p.hdr.fence_id = fence_id
    p.hdr.ctx_id = session
    return p


def _bytes(p) -> bytes:
    return ffi.buffer(p)[:]


def get_info(*, session: int = 0, abi_major: int = wire.PXOS_ABI_MAJOR, abi_minor: int = wire.PXOS_ABI_MINOR,
             fence_id: int = 0, flags: int = 0) -> bytes:
    p = _new("pxos_cmd_get_info", T.PXOS_CMD_GET_INFO, session, fence_id, flags)
    p.abi_major, p.abi_minor = abi_major, abi_minor
    return _bytes(p)


def alloc(dtype: int, shape: Iterable[int], *, session: int = 0, rank: int | None = None) -> bytes:
    shape = list(shape)
    p = _new("pxos_cmd_alloc", T.PXOS_CMD_ALLOC, session, 0, 0)
    p.dtype = dtype
    p.rank = len(shape) if rank is None else rank
    for i, d in enumerate(shape):
        p.dims[i] = d
    return _bytes(p)


def free(handle: int, *, session: int = 0) -> bytes:
    p = _new("pxos_cmd_free", T.PXOS_CMD_FREE, session, 0, 0)
    p.handle = handle
    return _bytes(p)


def transfer_struct(cmd_type: int, handle: int, offset: int, length: int, *, session: int = 0) -> bytes:
    p = _new("pxos_cmd_transfer", cmd_type, session, 0, 0)
    p.handle, p.offset, p.length = handle, offset, length
    return _bytes(p)


def write(handle: int, offset: int, data: bytes, *, session: int = 0) -> bytes:
    return transfer_struct(T.PXOS_CMD_WRITE, handle, offset, len(data), session=session) + bytes(data)


def read(handle: int, offset: int, length: int, *, session: int = 0) -> bytes:
    return transfer_struct(T.PXOS_CMD_READ, handle, offset, length, session=session)


def compile(source: str | bytes, *, session: int = 0, source_len: int | None = None) -> bytes:
    raw = source.encode() if isinstance(source, str) else bytes(source)
    p = _new("pxos_cmd_compile", T.PXOS_CMD_COMPILE, session, 0, 0)
    p.source_len = len(raw) if source_len is None else source_len
    return _bytes(p) + raw


def kernel_info(kernel_id: int, *, session: int = 0) -> bytes:
    p = _new("pxos_cmd_kernel", T.PXOS_CMD_KERNEL_INFO, session, 0, 0)
    p.kernel_id = kernel_id
    return _bytes(p)


def kernel_free(kernel_id: int, *, session: int = 0) -> bytes:
    p = _new("pxos_cmd_kernel", T.PXOS_CMD_KERNEL_FREE, session, 0, 0)
    p.kernel_id = kernel_id
    return _bytes(p)


def bind_buffer(name: str | bytes, handle: int) -> BindingSpec:
    return (name, PxosBindingKind.PXOS_BIND_BUFFER, 0, handle)


def bind_f64(name: str, value: float, dtype: int = PxosDtype.PXOS_DTYPE_FLOAT64) -> BindingSpec:
    return (name, PxosBindingKind.PXOS_BIND_SCALAR_F64, dtype, struct.unpack("<Q", struct.pack("<d", value))[0])


def bind_i64(name: str, value: int, dtype: int = PxosDtype.PXOS_DTYPE_INT64) -> BindingSpec:
    return (name, PxosBindingKind.PXOS_BIND_SCALAR_I64, dtype, value & 0xFFFF_FFFF_FFFF_FFFF)


def binding_bytes(name: str | bytes, kind: int, dtype: int, value: int) -> bytes:
    """One ``struct pxos_binding``; ``name`` as bytes is copied raw (for malformed names)."""
    b = ffi.new("struct pxos_binding *")
    raw = name.encode() if isinstance(name, str) else name
    ffi.memmove(b.name, raw, min(len(raw), wire.PXOS_MAX_NAME))
    b.kind, b.dtype, b.value = kind, dtype, value
    return _bytes(b)


def launch(kernel_id: int, bindings: Iterable[BindingSpec], *, session: int = 0, priority: int | None = None,
           class_hint: int = PxosClass.PXOS_CLASS_NONE, flags: int = 0, nbindings: int | None = None) -> bytes:
    payload = b"".join(binding_bytes(*b) for b in bindings)
    p = _new("pxos_cmd_launch", T.PXOS_CMD_LAUNCH, session, 0, 0)
    p.kernel_id = kernel_id
    p.nbindings = len(payload) // wire.sizeof("pxos_binding") if nbindings is None else nbindings
    p.priority = wire.PXOS_PRIORITY_DEFAULT if priority is None else priority
    p.class_hint = class_hint
    p.flags = flags
    return _bytes(p) + payload


def stats(*, session: int = 0) -> bytes:
    return _bytes(_new("pxos_cmd_stats", T.PXOS_CMD_STATS, session, 0, 0))


def idle_hint(idle: bool | int, *, session: int = 0) -> bytes:
    p = _new("pxos_cmd_idle_hint", T.PXOS_CMD_IDLE_HINT, session, 0, 0)
    p.idle = int(idle)
    return _bytes(p)


def session_close(session: int) -> bytes:
    return _bytes(_new("pxos_cmd_session_close", T.PXOS_CMD_SESSION_CLOSE, session, 0, 0))


def model_open(name: str | bytes, *, session: int = 0) -> bytes:
    p = _new("pxos_cmd_model_open", T.PXOS_CMD_MODEL_OPEN, session, 0, 0)
    p.name = name.encode() if isinstance(name, str) else name
    return _bytes(p)


def model_close(model_id: int, *, session: int = 0) -> bytes:
    p = _new("pxos_cmd_model_close", T.PXOS_CMD_MODEL_CLOSE, session, 0, 0)
    p.model_id = model_id
    return _bytes(p)


def raw_header(cmd_type: int, *, session: int = 0) -> bytes:
    """A bare ``pxos_ctrl_hdr`` of any type (for unknown-command and short-request tests)."""
    p = ffi.new("struct pxos_ctrl_hdr *")
    p.type, p.ctx_id = cmd_type, session
    return _bytes(p)


def response_size(cmd_type: int, read_length: int = 0) -> int:
    """Writable bytes a guest provides for this command's response."""
    return wire.sizeof(RESPONSE_STRUCT.get(cmd_type, "pxos_resp_hdr")) + read_length


def _plain(v):
    t = ffi.typeof(v) if isinstance(v, ffi.CData) else None
    if t is None:
        return v
    if t.kind == "array" and t.item.cname == "char":
        return ffi.string(v).decode("utf-8", errors="replace")
    if t.kind == "array":
        return [_plain(x) for x in v]
    if t.kind in ("struct", "pointer"):
        fields = (t.item if t.kind == "pointer" else t).fields
        return {name: _plain(getattr(v, name)) for name, _ in fields}
    return v


def parse_response(cmd_type: int, data: bytes) -> dict:
    """The fields of the response the device wrote (``data`` = the used bytes). The
    header's fields are at the top level (``status``, ``message``, ``payload_len``,
    ``type``, ``fence_id``, ``ctx_id``); the struct's own fields beside them; READ's data
    under ``payload``."""
    if len(data) < RESP_HDR_SIZE:
        raise ValueError(f"response of {len(data)} bytes is shorter than pxos_resp_hdr")
    struct_name = RESPONSE_STRUCT.get(cmd_type, "pxos_resp_hdr")
    size = wire.sizeof(struct_name)
    if len(data) < size:  # an error may carry the bare header only
        struct_name, size = "pxos_resp_hdr", RESP_HDR_SIZE
    p = ffi.from_buffer(f"struct {struct_name} *", data[:size])
    out = _plain(p)
    r = out.pop("r", None) or out
    hdr = r.pop("hdr")
    result = {**hdr, **r, **{k: v for k, v in out.items() if k not in ("hdr",)}}
    result.pop("r", None)
    result["used_len"] = len(data)
    if cmd_type == T.PXOS_CMD_READ:
        result["payload"] = bytes(data[RESP_HDR_SIZE:RESP_HDR_SIZE + result["payload_len"]])
    return result
