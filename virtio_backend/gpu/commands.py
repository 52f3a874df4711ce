"""Typed PXOS commands and responses: what the codec decodes to and encodes from.

Requests become these frozen dataclasses (``_record``: a frozen slots dataclass with a
cheaper ``__init__``) at the edge (``decode.decode_command``); the device's
handlers take one and return one of the responses; ``encode.encode`` turns a response back
into the bytes of the command's response struct. Field meanings are those of
``guest_driver/include/uapi/pxos_gpu.h``; docs/protocol.md specifies each command.

``WriteCmd.data`` and ``ReadCmd.dst`` are memoryviews of guest memory (the chain's
readable / writable segments past the fixed structs): the handler moves bytes straight
between them and the hypervisor's buffer, without an intermediate copy. They are valid
only while the request is being handled.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import dataclass_transform

from virtio_backend.wire import PxosBindingKind, PxosClass, PxosDirection, PxosDtype, PxosStatus


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def _record(cls):
    """``@dataclass(frozen=True, slots=True)``, with an ``__init__`` that stores each field
    through its slot descriptor.

    The dataclass-generated ``__init__`` of a frozen class goes through
    ``object.__setattr__`` by name for every field: about 0.1 us a field, which for the
    command and response of every request is a sixth of the device's per-request cost.
    Everything else is the dataclass's own (fields, ``==``, ``repr``, ``replace``,
    ``FrozenInstanceError`` on assignment)."""
    cls = dataclass(frozen=True, slots=True)(cls)
    params, body, env = [], [], {}
    for i, f in enumerate(fields(cls)):
        env[f"_set{i}"] = cls.__dict__[f.name].__set__
        if f.default is not MISSING:
            env[f"_default{i}"] = f.default
            params.append(f"{f.name}=_default{i}")
        else:
            params.append(f.name)
        body.append(f"    _set{i}(self, {f.name})")
    src = f"def __init__(self, {', '.join(params)}):\n" + "\n".join(body or ["    pass"]) + "\n"
    exec(src, env)  # our own field names only, as dataclasses itself builds __init__
    env["__init__"].__qualname__ = f"{cls.__qualname__}.__init__"
    cls.__init__ = env["__init__"]
    return cls


@_record
class Header:
    """``struct pxos_ctrl_hdr`` as received; echoed (type aside) in the response."""

    type: int
    flags: int
    fence_id: int
    ctx_id: int
    ring_idx: int

    @property
    def session(self) -> int:
        """The guest session: one per open file of /dev/pxosN, 0 for the driver itself."""
        return self.ctx_id


# ---- commands ---------------------------------------------------------------------------


@_record
class GetInfoCmd:
    hdr: Header
    abi_major: int
    abi_minor: int


@_record
class AllocCmd:
    hdr: Header
    dtype: PxosDtype
    shape: tuple[int, ...]  # rank 0 (a scalar) is ()


@_record
class FreeCmd:
    hdr: Header
    handle: int


@_record
class WriteCmd:
    hdr: Header
    handle: int
    offset: int
    length: int
    data: tuple[memoryview, ...]  # the readable segments after the struct; sum == length


@_record
class ReadCmd:
    hdr: Header
    handle: int
    offset: int
    length: int
    dst: tuple[memoryview, ...]  # the writable segments after pxos_resp_hdr; sum == length


@_record
class CompileCmd:
    hdr: Header
    source: str


@_record
class KernelInfoCmd:
    hdr: Header
    kernel_id: int


@_record
class KernelFreeCmd:
    hdr: Header
    kernel_id: int


@_record
class Binding:
    """One ``struct pxos_binding``: a param name bound to a buffer handle or a scalar."""

    name: str
    kind: PxosBindingKind
    dtype: PxosDtype | None  # scalars only
    value: int | float  # handle (BUFFER), float (SCALAR_F64) or int (SCALAR_I64)


@_record
class LaunchCmd:
    hdr: Header
    kernel_id: int
    bindings: tuple[Binding, ...]
    priority: int | None  # None: PXOS_PRIORITY_DEFAULT, the kernel's own GPU_PRIORITY
    class_hint: PxosClass


@_record
class StatsCmd:
    hdr: Header


@_record
class IdleHintCmd:
    hdr: Header
    idle: bool


@_record
class SessionCloseCmd:
    hdr: Header


@_record
class ModelOpenCmd:
    hdr: Header
    name: str


@_record
class ModelCloseCmd:
    hdr: Header
    model_id: int


Command = (
    GetInfoCmd
    | AllocCmd
    | FreeCmd
    | WriteCmd
    | ReadCmd
    | CompileCmd
    | KernelInfoCmd
    | KernelFreeCmd
    | LaunchCmd
    | StatsCmd
    | IdleHintCmd
    | SessionCloseCmd
    | ModelOpenCmd
    | ModelCloseCmd
)


# ---- responses --------------------------------------------------------------------------


@_record
class Diagnostic:
    """One problem of a rejected program; line and column 1-based, 0 when unknown."""

    line: int
    column: int
    code: str
    message: str


@_record
class ErrorResp:
    """Any command's failure: the status, a message, and for COMPILE the diagnostics."""

    status: PxosStatus
    message: str
    diagnostics: tuple[Diagnostic, ...] = ()


@_record
class NoDataResp:
    """Success without data: FREE, WRITE, KERNEL_FREE, IDLE_HINT."""


@_record
class InfoResp:
    vm_id: int
    memory_quota: int
    memory_used: int
    compute_share_pct: int
    compute_cap_pct: int
    max_inflight: int
    backend: str
    device_name: str
    flags: int = 0


@_record
class AllocResp:
    handle: int
    nbytes: int


@_record
class ReadResp:
    nbytes: int  # bytes placed after pxos_resp_hdr (the response's payload_len)


@_record
class KernelDesc:
    kernel_id: int
    name: str
    nparams: int


@_record
class CompileResp:
    kernels: tuple[KernelDesc, ...]


@_record
class ParamDesc:
    name: str
    dtype: PxosDtype
    direction: PxosDirection
    dims: tuple[int, ...] | None  # None: any rank (float[]); PXOS_DIM_SYMBOLIC per named dim


@_record
class KernelInfoResp:
    kernel_id: int
    name: str
    class_hint: PxosClass
    priority: int | None
    nstatements: int
    params: tuple[ParamDesc, ...] = field(default=())


@_record
class LaunchResp:
    """A finished launch. It carries its own status: a failed or cancelled launch still
    reports its id and the time it took."""

    status: PxosStatus
    message: str
    launch_id: int
    device_ns: int
    queue_ns: int
    total_ns: int
    class_assigned: PxosClass


@_record
class StatsResp:
    memory_quota: int
    memory_used: int
    memory_device_bytes: int
    memory_host_bytes: int
    launches_total: int
    launches_failed: int
    device_ns_total: int
    queue_depth: int
    inflight: int
    compute_share_pct: int
    compute_cap_pct: int
    achieved_share_ppm: int
    nbuffers: int
    nkernels: int


@_record
class SessionCloseResp:
    bytes_freed: int
    buffers_freed: int
    kernels_freed: int
    launches_cancelled: int


@_record
class ModelOpenResp:
    model_id: int
    meta_handle: int
    meta_bytes: int
    model_bytes: int
    ntensors: int


Response = (
    ErrorResp
    | NoDataResp
    | InfoResp
    | AllocResp
    | ReadResp
    | CompileResp
    | KernelInfoResp
    | LaunchResp
    | StatsResp
    | SessionCloseResp
    | ModelOpenResp
)
