"""PXOS request bytes → typed commands, typed responses → response bytes.

The one place that knows the byte layout of a PXOS request (the structs of
``guest_driver/include/uapi/pxos_gpu.h``, unpacked with ``wire.layout`` structs built from
the header). Decoding checks everything before anyone acts on it: exact request length,
zero reserved fields, enum ranges, NUL-terminated names, every ``PXOS_MAX_*`` limit, and
that the writable part can hold the command's response.

A request is read from a ``chain.Chain`` (the device passes its virtqueue ``Request``;
tests and tools pass ``chain.Segments``, memoryview lists split anywhere). The fixed part is copied out of guest memory once, as ``head`` (the first
``HEAD_BYTES``, one copy: a guest cannot change a field between our check and our use);
COMPILE source and LAUNCH bindings are copied once more; bulk data (WRITE source, READ
destination) stays as views of guest memory.

A request the guest got wrong raises ``BadRequest`` (status + message) out of
``decode_command``; the device turns it into an error response. docs/protocol.md specifies
every rule enforced here.
"""

from __future__ import annotations

import struct

from hypervisor.errors import PxosError
from primitive_lang.ast import DType
from virtio_backend import wire
from virtio_backend.gpu import commands as c
from virtio_backend.gpu.chain import Chain, slice_views
from virtio_backend.gpu.virtio_gpu import CTRL_HDR, VirtioGpuFlag
from virtio_backend.wire import PxosBindingKind, PxosClass, PxosCmdType, PxosDtype, PxosStatus

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
    T.PXOS_CMD_MODEL_OPEN: "pxos_cmd_model_open",
    T.PXOS_CMD_MODEL_CLOSE: "pxos_cmd_model_close",
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
    T.PXOS_CMD_MODEL_OPEN: "pxos_resp_model_open",
    T.PXOS_CMD_MODEL_CLOSE: "pxos_resp_hdr",
}
_REQ_SIZE = {k: wire.sizeof(v) for k, v in REQUEST_STRUCT.items()}
_RESP_SIZE = {k: wire.sizeof(v) for k, v in RESPONSE_STRUCT.items()}
#: Bytes copied out of a chain before decoding: the largest fixed request struct (ALLOC).
HEAD_BYTES = max(_REQ_SIZE.values())
assert CTRL_HDR.size == HDR_SIZE

# The fields after the header of each request struct, unpacked by position (wire.layout
# refuses at import a header whose fields are not these, in this order).
_GET_INFO = wire.layout("pxos_cmd_get_info", ("abi_major", "abi_minor", "padding"))
_ALLOC = wire.layout("pxos_cmd_alloc", ("dtype", "rank", "dims"))
_FREE = wire.layout("pxos_cmd_free", ("handle",))
_TRANSFER = wire.layout("pxos_cmd_transfer", ("handle", "offset", "length"))
_COMPILE = wire.layout("pxos_cmd_compile", ("source_len", "padding"))
_KERNEL = wire.layout("pxos_cmd_kernel", ("kernel_id",))
_LAUNCH = wire.layout("pxos_cmd_launch", ("kernel_id", "nbindings", "priority", "class_hint", "flags"))
_IDLE_HINT = wire.layout("pxos_cmd_idle_hint", ("idle", "padding"))
_MODEL_OPEN = wire.layout("pxos_cmd_model_open", ("name",))
_MODEL_CLOSE = wire.layout("pxos_cmd_model_close", ("model_id",))
_BINDING = wire.layout("pxos_binding")
assert _BINDING.fields == ("name", "kind", "dtype", "value") and _BINDING.size == BINDING_SIZE

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


# ---- decoding ---------------------------------------------------------------------------


def read_head(chain: Chain) -> bytes:
    """The chain's first ``HEAD_BYTES`` readable bytes (fewer if it is shorter), copied once."""
    return chain.read(0, HEAD_BYTES)


def decode_header(head: bytes) -> c.Header | None:
    """The ``pxos_ctrl_hdr`` (= ``virtio_gpu_ctrl_hdr``) at the start, None if too short."""
    if len(head) < HDR_SIZE:
        return None
    return c.Header(*CTRL_HDR.unpack_from(head))


def response_size(hdr: c.Header, cmd: c.Command | None = None) -> int:
    """Bytes of the fixed response struct of this command (plus READ's data)."""
    size = _RESP_SIZE.get(hdr.type, RESP_HDR_SIZE)
    if type(cmd) is c.ReadCmd:
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


def decode_command(hdr: c.Header, head: bytes, chain: Chain) -> c.Command:
    """Decode and validate one PXOS request whose header is ``hdr``; raises BadRequest.
    ``head`` is ``read_head(chain)``: the fixed struct is read from it and nowhere else."""
    if hdr.type not in REQUEST_STRUCT:
        raise BadRequest(PxosStatus.PXOS_S_UNSUPPORTED, f"unknown PXOS command 0x{hdr.type:04x}")
    rlen = chain.readable_len
    if rlen > wire.PXOS_MAX_REQUEST_BYTES:
        raise BadRequest(
            PxosStatus.PXOS_S_TOO_LARGE,
            f"request of {rlen} bytes exceeds PXOS_MAX_REQUEST_BYTES ({wire.PXOS_MAX_REQUEST_BYTES})",
        )
    size = _REQ_SIZE[hdr.type]
    if rlen < size:
        raise _invalid(f"{T(hdr.type).name}: {rlen} request bytes, struct needs {size}")
    if len(head) < size:  # read_head reads HEAD_BYTES >= every struct: a caller's bug
        raise ValueError(f"head of {len(head)} bytes is shorter than the {size}-byte struct")
    cmd = _DECODERS[hdr.type](hdr, head, chain, rlen)
    need = response_size(hdr, cmd)
    have = chain.writable_len
    if have < need:
        raise _invalid(f"{T(hdr.type).name}: {have} writable bytes, the response needs {need}")
    return cmd


def _exact(hdr: c.Header, rlen: int, want: int) -> None:
    if rlen != want:
        raise _invalid(f"{T(hdr.type).name}: request is {rlen} bytes, expected exactly {want}")


# Each decoder gets (hdr, head, chain, rlen): ``head`` holds the whole fixed struct.


def _dec_get_info(hdr, head, chain, rlen):
    _exact(hdr, rlen, _REQ_SIZE[hdr.type])
    abi_major, abi_minor, padding = _GET_INFO.struct.unpack_from(head, _GET_INFO.offset)
    _zero(padding, "GET_INFO.padding")
    return c.GetInfoCmd(hdr, abi_major, abi_minor)


def _dec_alloc(hdr, head, chain, rlen):
    _exact(hdr, rlen, _REQ_SIZE[hdr.type])
    dtype_raw, rank, *dims = _ALLOC.struct.unpack_from(head, _ALLOC.offset)
    dtype = _enum(PxosDtype, dtype_raw, "ALLOC.dtype")
    if rank > wire.PXOS_MAX_RANK:
        raise _invalid(f"ALLOC.rank {rank} exceeds PXOS_MAX_RANK ({wire.PXOS_MAX_RANK})")
    for i in range(rank, wire.PXOS_MAX_RANK):
        _zero(dims[i], f"ALLOC.dims[{i}] (past rank {rank})")
    shape = tuple(dims[:rank])
    nbytes = DTYPE_TO_AST[dtype].itemsize
    for d in shape:  # u64 dims: the product is exact in Python, no overflow to check
        nbytes *= d
    if nbytes > wire.PXOS_MAX_BUFFER_BYTES:
        raise BadRequest(
            PxosStatus.PXOS_S_TOO_LARGE,
            f"ALLOC of shape {shape}: {nbytes} bytes exceed PXOS_MAX_BUFFER_BYTES ({wire.PXOS_MAX_BUFFER_BYTES})",
        )
    return c.AllocCmd(hdr, dtype, shape)


def _dec_free(hdr, head, chain, rlen):
    _exact(hdr, rlen, _REQ_SIZE[hdr.type])
    (handle,) = _FREE.struct.unpack_from(head, _FREE.offset)
    return c.FreeCmd(hdr, handle)


def _transfer(hdr, head) -> tuple[int, int, int]:
    handle, offset, length = _TRANSFER.struct.unpack_from(head, _TRANSFER.offset)
    if length > wire.PXOS_MAX_TRANSFER_BYTES:
        raise BadRequest(
            PxosStatus.PXOS_S_TOO_LARGE,
            f"{T(hdr.type).name}.length {length} exceeds PXOS_MAX_TRANSFER_BYTES ({wire.PXOS_MAX_TRANSFER_BYTES})",
        )
    return handle, offset, length


def _dec_write(hdr, head, chain, rlen):
    handle, offset, length = _transfer(hdr, head)
    size = _REQ_SIZE[hdr.type]
    _exact(hdr, rlen, size + length)
    return c.WriteCmd(hdr, handle, offset, length, slice_views(chain.readable_views(), size, length))


def _dec_read(hdr, head, chain, rlen):
    handle, offset, length = _transfer(hdr, head)
    _exact(hdr, rlen, _REQ_SIZE[hdr.type])
    wlen = chain.writable_len
    if wlen < RESP_HDR_SIZE + length:
        raise _invalid(f"READ: {wlen} writable bytes, needs {RESP_HDR_SIZE} + {length}")
    return c.ReadCmd(hdr, handle, offset, length, slice_views(chain.writable_views(), RESP_HDR_SIZE, length))


def _dec_compile(hdr, head, chain, rlen):
    n, padding = _COMPILE.struct.unpack_from(head, _COMPILE.offset)
    _zero(padding, "COMPILE.padding")
    if n > wire.PXOS_MAX_SOURCE_BYTES:
        raise BadRequest(
            PxosStatus.PXOS_S_TOO_LARGE,
            f"COMPILE.source_len {n} exceeds PXOS_MAX_SOURCE_BYTES ({wire.PXOS_MAX_SOURCE_BYTES})",
        )
    size = _REQ_SIZE[hdr.type]
    _exact(hdr, rlen, size + n)
    raw = chain.read(size, n)
    if b"\0" in raw:
        raise _invalid(f"COMPILE: source holds a NUL byte at offset {raw.index(0)}")
    try:
        source = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _invalid(f"COMPILE: source is not UTF-8 (byte {e.start})") from e
    return c.CompileCmd(hdr, source)


def _dec_kernel_info(hdr, head, chain, rlen):
    _exact(hdr, rlen, _REQ_SIZE[hdr.type])
    (kernel_id,) = _KERNEL.struct.unpack_from(head, _KERNEL.offset)
    return c.KernelInfoCmd(hdr, kernel_id)


def _dec_kernel_free(hdr, head, chain, rlen):
    _exact(hdr, rlen, _REQ_SIZE[hdr.type])
    (kernel_id,) = _KERNEL.struct.unpack_from(head, _KERNEL.offset)
    return c.KernelFreeCmd(hdr, kernel_id)


_F64 = struct.Struct("<d")
_I64 = struct.Struct("<q")
_U64 = struct.Struct("<Q")
_I32_RANGE = range(-(2**31), 2**31)


def _binding(i: int, raw_name: bytes, kind_raw: int, dtype_raw: int, value: int) -> c.Binding:
    name = _name(raw_name, f"binding {i} name")
    kind = _enum(PxosBindingKind, kind_raw, f"binding {name!r} kind")
    if kind == PxosBindingKind.PXOS_BIND_BUFFER:
        _zero(dtype_raw, f"binding {name!r} dtype (buffer bindings carry none)")
        return c.Binding(name, kind, None, value)
    dtype = _enum(PxosDtype, dtype_raw, f"binding {name!r} dtype")
    bits = _U64.pack(value)
    if kind == PxosBindingKind.PXOS_BIND_SCALAR_F64:
        if dtype not in _FLOAT_DTYPES:
            raise _invalid(f"binding {name!r}: SCALAR_F64 needs a float dtype, got {dtype.name}")
        return c.Binding(name, kind, dtype, _F64.unpack(bits)[0])
    if dtype not in _INT_DTYPES:
        raise _invalid(f"binding {name!r}: SCALAR_I64 needs an int dtype, got {dtype.name}")
    signed = _I64.unpack(bits)[0]
    if dtype == PxosDtype.PXOS_DTYPE_INT32 and signed not in _I32_RANGE:
        raise _invalid(f"binding {name!r}: {signed} does not fit int32")
    return c.Binding(name, kind, dtype, signed)


def _dec_launch(hdr, head, chain, rlen):
    kernel_id, n, priority_raw, class_raw, flags = _LAUNCH.struct.unpack_from(head, _LAUNCH.offset)
    _zero(flags, "LAUNCH.flags")
    if n > wire.PXOS_MAX_BINDINGS:
        raise BadRequest(
            PxosStatus.PXOS_S_TOO_LARGE,
            f"LAUNCH.nbindings {n} exceeds PXOS_MAX_BINDINGS ({wire.PXOS_MAX_BINDINGS})",
        )
    size = _REQ_SIZE[hdr.type]
    _exact(hdr, rlen, size + n * BINDING_SIZE)
    if priority_raw == wire.PXOS_PRIORITY_DEFAULT:
        priority = None
    elif priority_raw <= PRIORITY_MAX:
        priority = priority_raw
    else:
        raise _invalid(f"LAUNCH.priority {priority_raw} is neither 0..{PRIORITY_MAX} nor PXOS_PRIORITY_DEFAULT")
    class_hint = _enum(PxosClass, class_raw, "LAUNCH.class_hint")
    raw = chain.read(size, n * BINDING_SIZE)
    bindings = tuple(_binding(i, *fields) for i, fields in enumerate(_BINDING.struct.iter_unpack(raw)))
    names = [b.name for b in bindings]
    if len(set(names)) != len(names):
        dup = next(x for x in names if names.count(x) > 1)
        raise _invalid(f"LAUNCH: param {dup!r} bound more than once")
    return c.LaunchCmd(hdr, kernel_id, bindings, priority, class_hint)


def _dec_stats(hdr, head, chain, rlen):
    _exact(hdr, rlen, _REQ_SIZE[hdr.type])
    return c.StatsCmd(hdr)


def _dec_idle_hint(hdr, head, chain, rlen):
    _exact(hdr, rlen, _REQ_SIZE[hdr.type])
    idle, padding = _IDLE_HINT.struct.unpack_from(head, _IDLE_HINT.offset)
    _zero(padding, "IDLE_HINT.padding")
    if idle not in (0, 1):
        raise _invalid(f"IDLE_HINT.idle must be 0 or 1, got {idle}")
    return c.IdleHintCmd(hdr, bool(idle))


def _dec_session_close(hdr, head, chain, rlen):
    _exact(hdr, rlen, _REQ_SIZE[hdr.type])
    return c.SessionCloseCmd(hdr)


def _dec_model_open(hdr, head, chain, rlen):
    _exact(hdr, rlen, _REQ_SIZE[hdr.type])
    (raw,) = _MODEL_OPEN.struct.unpack_from(head, _MODEL_OPEN.offset)
    return c.ModelOpenCmd(hdr, _name(raw, "MODEL_OPEN.name"))


def _dec_model_close(hdr, head, chain, rlen):
    _exact(hdr, rlen, _REQ_SIZE[hdr.type])
    (model_id,) = _MODEL_CLOSE.struct.unpack_from(head, _MODEL_CLOSE.offset)
    return c.ModelCloseCmd(hdr, model_id)


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
    T.PXOS_CMD_MODEL_OPEN: _dec_model_open,
    T.PXOS_CMD_MODEL_CLOSE: _dec_model_close,
}
