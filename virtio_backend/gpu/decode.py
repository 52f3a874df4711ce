"""PXOS request bytes → typed commands, typed responses → response bytes.

The one place that knows the byte layout of a PXOS request and response (the structs of
``guest_driver/include/uapi/pxos_gpu.h``, through ``virtio_backend.wire``). Decoding works
on the chain's readable and writable segments (lists of memoryviews, split anywhere) and
checks everything before anyone acts on it: exact request length, zero reserved fields,
enum ranges, NUL-terminated names, every ``PXOS_MAX_*`` limit, and that the writable part
can hold the command's response. The fixed structs are copied out of guest memory once
(a guest cannot change a field between our check and our use); bulk data (WRITE source,
READ destination) stays as views of guest memory.

A request the guest got wrong raises ``BadRequest`` (status + message) out of
``decode_command``; the device turns it into an error response. docs/protocol.md specifies
every rule enforced here.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from hypervisor.errors import PxosError
from primitive_lang.ast import DType
from virtio_backend import wire
from virtio_backend.gpu import commands as c
from virtio_backend.gpu.virtio_gpu import CTRL_HDR, VirtioGpuFlag
from virtio_backend.wire import PxosBindingKind, PxosClass, PxosCmdType, PxosDtype, PxosStatus, ffi

T = PxosCmdType
HDR_SIZE = wire.sizeof("pxos_ctrl_hdr")
RESP_HDR_SIZE = wire.sizeof("pxos_resp_hdr")
BINDING_SIZE = wire.sizeof("pxos_binding")

# Flags a response echoes from its request (the virtio-gpu rule: a fenced request gets a
# fenced response with the same fence_id, or the guest's fence never signals).
# (A plain int: ``&`` with an IntFlag costs a microsecond on every response.)
ECHOED_FLAGS = int(VirtioGpuFlag.VIRTIO_GPU_FLAG_FENCE | VirtioGpuFlag.VIRTIO_GPU_FLAG_INFO_RING_IDX)

# The request struct and the fixed response struct of every command.
REQUEST_STRUCT: dict[int, str] = {
    T.PXOS_CMD_GET_INFO: "pxos_cmd_get_info",
    T.PXOS_CMD_ALLOC: "pxos_cmd_alloc",
    T.PXOS_CMD_FREE: "pxos_cmd_free",
    T.PXOS_CMD_WRITE: "pxos_cmd_transfer",
    T.PXOS_CMD_READ: "pxos_cmd_transfer",
    T.PXOS_CMD_COMPILE: "pxos_cmd_compile",
    T.PXOS_CMD_KERNEL_INFO: "pxos_cmd_kernel",
    T.PXOS_CMD_KERNEL_FREE: "pxos_cmd_kernel",
    T.PXOS_CMD_LAUNCH: "pxos_cmd_launch",
    T.PXOS_CMD_STATS: "pxos_cmd_stats",
    T.PXOS_CMD_IDLE_HINT: "pxos_cmd_idle_hint",
    T.PXOS_CMD_SESSION_CLOSE: "pxos_cmd_session_close",
}
RESPONSE_STRUCT: dict[int, str] = {
    T.PXOS_CMD_GET_INFO: "pxos_resp_info",
    T.PXOS_CMD_ALLOC: "pxos_resp_alloc",
    T.PXOS_CMD_FREE: "pxos_resp_hdr",
    T.PXOS_CMD_WRITE: "pxos_resp_hdr",
    T.PXOS_CMD_READ: "pxos_resp_hdr",
    T.PXOS_CMD_COMPILE: "pxos_resp_compile",
    T.PXOS_CMD_KERNEL_INFO: "pxos_resp_kernel_info",
    T.PXOS_CMD_KERNEL_FREE: "pxos_resp_hdr",
    T.PXOS_CMD_LAUNCH: "pxos_resp_launch",
    T.PXOS_CMD_STATS: "pxos_resp_stats",
    T.PXOS_CMD_IDLE_HINT: "pxos_resp_hdr",
    T.PXOS_CMD_SESSION_CLOSE: "pxos_resp_session_close",
}
_REQ_SIZE = {k: wire.sizeof(v) for k, v in REQUEST_STRUCT.items()}
_RESP_SIZE = {k: wire.sizeof(v) for k, v in RESPONSE_STRUCT.items()}
_REQ_CTYPE = {k: ffi.typeof(f"struct {v} *") for k, v in REQUEST_STRUCT.items()}

DTYPE_TO_AST: dict[PxosDtype, DType] = {
    PxosDtype.PXOS_DTYPE_FLOAT16: DType.FLOAT16,
    PxosDtype.PXOS_DTYPE_FLOAT32: DType.FLOAT32,
    PxosDtype.PXOS_DTYPE_FLOAT64: DType.FLOAT64,
    PxosDtype.PXOS_DTYPE_INT32: DType.INT32,
    PxosDtype.PXOS_DTYPE_INT64: DType.INT64,
}
AST_TO_DTYPE = {v: k for k, v in DTYPE_TO_AST.items()}
_FLOAT_DTYPES = frozenset(d for d, a in DTYPE_TO_AST.items() if a.is_float)
_INT_DTYPES = frozenset(d for d, a in DTYPE_TO_AST.items() if not a.is_float)
PRIORITY_MAX = 100  # LAUNCH.priority: 0..100 (the language's GPU_PRIORITY range)


class BadRequest(PxosError):
    """A request the guest got wrong; answered with ``wire_status`` and the message."""

    def __init__(self, wire_status: PxosStatus, message: str):
        super().__init__(message)
        self.wire_status = wire_status
        self.status = wire_status.name


def _invalid(message: str) -> BadRequest:
    return BadRequest(PxosStatus.PXOS_S_INVALID, message)


# ---- segments ---------------------------------------------------------------------------


def total_len(views: Sequence[memoryview]) -> int:
    return sum(len(v) for v in views)


def gather(views: Sequence[memoryview], offset: int, length: int) -> bytes:
    """Copy ``length`` bytes starting ``offset`` bytes into the concatenated segments."""
    if offset + length > total_len(views):
        raise _invalid(f"request holds fewer than {offset + length} bytes")
    out = bytearray()
    for v in views:
        n = len(v)
        if offset >= n:
            offset -= n
            continue
        take = min(n - offset, length - len(out))
        out += v[offset : offset + take]
        offset = 0
        if len(out) == length:
            break
    return bytes(out)


def slice_views(views: Sequence[memoryview], offset: int, length: int) -> tuple[memoryview, ...]:
    """The pieces of the concatenated segments covering [offset, offset + length), no copy."""
    out = []
    for v in views:
        if length == 0:
            break
        n = len(v)
        if offset >= n:
            offset -= n
            continue
        take = min(n - offset, length)
        out.append(v[offset : offset + take])
        length -= take
        offset = 0
    return tuple(out)


# ---- decoding ---------------------------------------------------------------------------


def decode_header(readable: Sequence[memoryview]) -> c.Header | None:
    """The ``pxos_ctrl_hdr`` (= ``virtio_gpu_ctrl_hdr``) at the start, None if too short."""
    first = readable[0] if readable else b""
    raw = bytes(first[:HDR_SIZE]) if len(first) >= HDR_SIZE else None
    if raw is None:
        if total_len(readable) < HDR_SIZE:
            return None
        raw = gather(readable, 0, HDR_SIZE)
    return c.Header(*CTRL_HDR.unpack(raw))


def response_size(hdr: c.Header, cmd: c.Command | None = None) -> int:
    """Bytes of the fixed response struct of this command (plus READ's data)."""
    size = _RESP_SIZE.get(hdr.type, RESP_HDR_SIZE)
    if isinstance(cmd, c.ReadCmd):
        size += cmd.length
    return size


def _name(raw: bytes, what: str) -> str:
    end = raw.find(b"\0")
    if end < 0:
        raise _invalid(f"{what}: not NUL-terminated within PXOS_MAX_NAME ({wire.PXOS_MAX_NAME}) bytes")
    if end == 0:
        raise _invalid(f"{what}: empty")
    try:
        return raw[:end].decode("utf-8")
    except UnicodeDecodeError as e:
        raise _invalid(f"{what}: not UTF-8") from e


def _enum(enum_cls, value: int, what: str):
    try:
        return enum_cls(value)
    except ValueError:
        raise _invalid(f"{what} {value} is not a valid {enum_cls.__name__}") from None


def _zero(value: int, what: str) -> None:
    # Reserved fields must be zero: a later ABI minor may give them a meaning, and a device
    # that ignored them would silently misread such a request.
    if value != 0:
        raise _invalid(f"{what} must be 0, got {value}")


def decode_command(
    hdr: c.Header, readable: Sequence[memoryview], writable: Sequence[memoryview]
) -> c.Command:
    """Decode and validate one PXOS request whose header is ``hdr``; raises BadRequest."""
    if hdr.type not in REQUEST_STRUCT:
        raise BadRequest(PxosStatus.PXOS_S_UNSUPPORTED, f"unknown PXOS command 0x{hdr.type:04x}")
    rlen = total_len(readable)
    if rlen > wire.PXOS_MAX_REQUEST_BYTES:
        raise BadRequest(
            PxosStatus.PXOS_S_TOO_LARGE,
            f"request of {rlen} bytes exceeds PXOS_MAX_REQUEST_BYTES ({wire.PXOS_MAX_REQUEST_BYTES})",
        )
    size = _REQ_SIZE[hdr.type]
    if rlen < size:
        raise _invalid(f"{T(hdr.type).name}: {rlen} request bytes, struct needs {size}")
    raw = gather(readable, 0, size)
    p = ffi.from_buffer(_REQ_CTYPE[hdr.type], raw)
    cmd = _DECODERS[hdr.type](hdr, p, readable, writable, rlen)
    need = response_size(hdr, cmd)
    have = total_len(writable)
    if have < need:
        raise _invalid(f"{T(hdr.type).name}: {have} writable bytes, the response needs {need}")
    return cmd


def _exact(hdr: c.Header, rlen: int, want: int) -> None:
    if rlen != want:
        raise _invalid(f"{T(hdr.type).name}: request is {rlen} bytes, expected exactly {want}")


def _dec_get_info(hdr, p, readable, writable, rlen):
    _exact(hdr, rlen, _REQ_SIZE[hdr.type])
    _zero(p.padding, "GET_INFO.padding")
    return c.GetInfoCmd(hdr, p.abi_major, p.abi_minor)


def _dec_alloc(hdr, p, readable, writable, rlen):
    _exact(hdr, rlen, _REQ_SIZE[hdr.type])
    dtype = _enum(PxosDtype, p.dtype, "ALLOC.dtype")
    rank = p.rank
    if rank > wire.PXOS_MAX_RANK:
        raise _invalid(f"ALLOC.rank {rank} exceeds PXOS_MAX_RANK ({wire.PXOS_MAX_RANK})")
    dims = tuple(p.dims[i] for i in range(wire.PXOS_MAX_RANK))
    for i in range(rank, wire.PXOS_MAX_RANK):
        _zero(dims[i], f"ALLOC.dims[{i}] (past rank {rank})")
    shape = dims[:rank]
    nbytes = DTYPE_TO_AST[dtype].itemsize
    for d in shape:  # u64 dims: the product is exact in Python, no overflow to check
        nbytes *= d
    if nbytes > wire.PXOS_MAX_BUFFER_BYTES:
        raise BadRequest(
            PxosStatus.PXOS_S_TOO_LARGE,
            f"ALLOC of shape {shape}: {nbytes} bytes exceed PXOS_MAX_BUFFER_BYTES ({wire.PXOS_MAX_BUFFER_BYTES})",
        )
    return c.AllocCmd(hdr, dtype, shape)


def _dec_free(hdr, p, readable, writable, rlen):
    _exact(hdr, rlen, _REQ_SIZE[hdr.type])
    return c.FreeCmd(hdr, p.handle)


def _transfer_length(hdr, length: int) -> None:
    if length > wire.PXOS_MAX_TRANSFER_BYTES:
        raise BadRequest(
            PxosStatus.PXOS_S_TOO_LARGE,
            f"{T(hdr.type).name}.length {length} exceeds PXOS_MAX_TRANSFER_BYTES ({wire.PXOS_MAX_TRANSFER_BYTES})",
        )


def _dec_write(hdr, p, readable, writable, rlen):
    _transfer_length(hdr, p.length)
    size = _REQ_SIZE[hdr.type]
    _exact(hdr, rlen, size + p.length)
    return c.WriteCmd(hdr, p.handle, p.offset, p.length, slice_views(readable, size, p.length))


def _dec_read(hdr, p, readable, writable, rlen):
    _transfer_length(hdr, p.length)
    _exact(hdr, rlen, _REQ_SIZE[hdr.type])
    wlen = total_len(writable)
    if wlen < RESP_HDR_SIZE + p.length:
        raise _invalid(f"READ: {wlen} writable bytes, needs {RESP_HDR_SIZE} + {p.length}")
    return c.ReadCmd(hdr, p.handle, p.offset, p.length, slice_views(writable, RESP_HDR_SIZE, p.length))


def _dec_compile(hdr, p, readable, writable, rlen):
    _zero(p.padding, "COMPILE.padding")
    n = p.source_len
    if n > wire.PXOS_MAX_SOURCE_BYTES:
        raise BadRequest(
            PxosStatus.PXOS_S_TOO_LARGE,
            f"COMPILE.source_len {n} exceeds PXOS_MAX_SOURCE_BYTES ({wire.PXOS_MAX_SOURCE_BYTES})",
        )
    size = _REQ_SIZE[hdr.type]
    _exact(hdr, rlen, size + n)
    raw = gather(readable, size, n)
    if b"\0" in raw:
        raise _invalid(f"COMPILE: source holds a NUL byte at offset {raw.index(0)}")
    try:
        source = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _invalid(f"COMPILE: source is not UTF-8 (byte {e.start})") from e
    return c.CompileCmd(hdr, source)


def _dec_kernel_info(hdr, p, readable, writable, rlen):
    _exact(hdr, rlen, _REQ_SIZE[hdr.type])
    return c.KernelInfoCmd(hdr, p.kernel_id)


def _dec_kernel_free(hdr, p, readable, writable, rlen):
    _exact(hdr, rlen, _REQ_SIZE[hdr.type])
    return c.KernelFreeCmd(hdr, p.kernel_id)


_F64 = struct.Struct("<d")
_I64 = struct.Struct("<q")
_U64 = struct.Struct("<Q")
_I32_RANGE = range(-(2**31), 2**31)


def _binding(i: int, raw: bytes) -> c.Binding:
    b = ffi.from_buffer("struct pxos_binding *", raw)
    name = _name(bytes(ffi.buffer(b.name)), f"binding {i} name")
    kind = _enum(PxosBindingKind, b.kind, f"binding {name!r} kind")
    if kind == PxosBindingKind.PXOS_BIND_BUFFER:
        _zero(b.dtype, f"binding {name!r} dtype (buffer bindings carry none)")
        return c.Binding(name, kind, None, b.value)
    dtype = _enum(PxosDtype, b.dtype, f"binding {name!r} dtype")
    bits = _U64.pack(b.value)
    if kind == PxosBindingKind.PXOS_BIND_SCALAR_F64:
        if dtype not in _FLOAT_DTYPES:
            raise _invalid(f"binding {name!r}: SCALAR_F64 needs a float dtype, got {dtype.name}")
        return c.Binding(name, kind, dtype, _F64.unpack(bits)[0])
    if dtype not in _INT_DTYPES:
        raise _invalid(f"binding {name!r}: SCALAR_I64 needs an int dtype, got {dtype.name}")
    value = _I64.unpack(bits)[0]
    if dtype == PxosDtype.PXOS_DTYPE_INT32 and value not in _I32_RANGE:
        raise _invalid(f"binding {name!r}: {value} does not fit int32")
    return c.Binding(name, kind, dtype, value)


def _dec_launch(hdr, p, readable, writable, rlen):
    _zero(p.flags, "LAUNCH.flags")
    n = p.nbindings
    if n > wire.PXOS_MAX_BINDINGS:
        raise BadRequest(
            PxosStatus.PXOS_S_TOO_LARGE,
            f"LAUNCH.nbindings {n} exceeds PXOS_MAX_BINDINGS ({wire.PXOS_MAX_BINDINGS})",
        )
    size = _REQ_SIZE[hdr.type]
    _exact(hdr, rlen, size + n * BINDING_SIZE)
    if p.priority == wire.PXOS_PRIORITY_DEFAULT:
        priority = None
    elif p.priority <= PRIORITY_MAX:
        priority = p.priority
    else:
        raise _invalid(f"LAUNCH.priority {p.priority} is neither 0..{PRIORITY_MAX} nor PXOS_PRIORITY_DEFAULT")
    class_hint = _enum(PxosClass, p.class_hint, "LAUNCH.class_hint")
    raw = gather(readable, size, n * BINDING_SIZE)
    bindings = tuple(_binding(i, raw[i * BINDING_SIZE : (i + 1) * BINDING_SIZE]) for i in range(n))
    names = [b.name for b in bindings]
    if len(set(names)) != len(names):
        dup = next(x for x in names if names.count(x) > 1)
        raise _invalid(f"LAUNCH: param {dup!r} bound more than once")
    return c.LaunchCmd(hdr, p.kernel_id, bindings, priority, class_hint)


def _dec_stats(hdr, p, readable, writable, rlen):
    _exact(hdr, rlen, _REQ_SIZE[hdr.type])
    return c.StatsCmd(hdr)


def _dec_idle_hint(hdr, p, readable, writable, rlen):
    _exact(hdr, rlen, _REQ_SIZE[hdr.type])
    _zero(p.padding, "IDLE_HINT.padding")
    if p.idle not in (0, 1):
        raise _invalid(f"IDLE_HINT.idle must be 0 or 1, got {p.idle}")
    return c.IdleHintCmd(hdr, bool(p.idle))


def _dec_session_close(hdr, p, readable, writable, rlen):
    _exact(hdr, rlen, _REQ_SIZE[hdr.type])
    return c.SessionCloseCmd(hdr)


_DECODERS = {
    T.PXOS_CMD_GET_INFO: _dec_get_info,
    T.PXOS_CMD_ALLOC: _dec_alloc,
    T.PXOS_CMD_FREE: _dec_free,
    T.PXOS_CMD_WRITE: _dec_write,
    T.PXOS_CMD_READ: _dec_read,
    T.PXOS_CMD_COMPILE: _dec_compile,
    T.PXOS_CMD_KERNEL_INFO: _dec_kernel_info,
    T.PXOS_CMD_KERNEL_FREE: _dec_kernel_free,
    T.PXOS_CMD_LAUNCH: _dec_launch,
    T.PXOS_CMD_STATS: _dec_stats,
    T.PXOS_CMD_IDLE_HINT: _dec_idle_hint,
    T.PXOS_CMD_SESSION_CLOSE: _dec_session_close,
}
