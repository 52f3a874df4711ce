"""Typed PXOS commands and responses: what the codec decodes to and encodes from.

Requests become these frozen dataclasses at the edge (``decode.decode_command``); the device's
handlers take one and return one of the responses; ``encode.encode`` turns a response back
into the bytes of the command's response struct. Field meanings are those of
``guest_driver/include/uapi/pxos_gpu.h``; docs/protocol.md specifies each command.

``WriteCmd.data`` and ``ReadCmd.dst`` are memoryviews of guest memory (the chain's
readable / writable segments past the fixed structs): the handler moves bytes straight
between them and the hypervisor's buffer, without an intermediate copy. They are valid
only while the request is being handled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from virtio_backend.wire import PxosBindingKind, PxosClass, PxosDirection, PxosDtype, PxosStatus


class Header(NamedTuple):
    """``struct pxos_ctrl_hdr`` as received; echoed (type aside) in the response.

    An immutable record like the commands, but a ``NamedTuple``: it is built for every
    chain on the queue (standard commands too) straight from the unpacked struct, and a
    frozen dataclass costs about 0.4 us more to build, a tenth of the device's per-request
    budget."""

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


@dataclass(frozen=True, slots=True)
class GetInfoCmd:
    hdr: Header
    abi_major: int
    abi_minor: int


@dataclass(frozen=True, slots=True)
class AllocCmd:
    hdr: Header
    dtype: PxosDtype
    shape: tuple[int, ...]  # rank 0 (a scalar) is ()


@dataclass(frozen=True, slots=True)
class FreeCmd:
    hdr: Header
    handle: int


@dataclass(frozen=True, slots=True)
class WriteCmd:
    hdr: Header
    handle: int
    offset: int
    length: int
    data: tuple[memoryview, ...]  # the readable segments after the struct; sum == length


@dataclass(frozen=True, slots=True)
class ReadCmd:
    hdr: Header
    handle: int
    offset: int
    length: int
    dst: tuple[memoryview, ...]  # the writable segments after pxos_resp_hdr; sum == length


@dataclass(frozen=True, slots=True)
class CompileCmd:
    hdr: Header
    source: str


@dataclass(frozen=True, slots=True)
class KernelInfoCmd:
    hdr: Header
    kernel_id: int


@dataclass(frozen=True, slots=True)
class KernelFreeCmd:
    hdr: Header
    kernel_id: int


@dataclass(frozen=True, slots=True)
class Binding:
    """One ``struct pxos_binding``: a param name bound to a buffer handle or a scalar."""

    name: str
    kind: PxosBindingKind
    dtype: PxosDtype | None  # scalars only
    value: int | float  # handle (BUFFER), float (SCALAR_F64) or int (SCALAR_I64)


@dataclass(frozen=True, slots=True)
class LaunchCmd:
    hdr: Header
    kernel_id: int
    bindings: tuple[Binding, ...]
    priority: int | None  # None: PXOS_PRIORITY_DEFAULT, the kernel's own GPU_PRIORITY
    class_hint: PxosClass


@dataclass(frozen=True, slots=True)
class StatsCmd:
    hdr: Header


@dataclass(frozen=True, slots=True)
class IdleHintCmd:
    hdr: Header
    idle: bool


@dataclass(frozen=True, slots=True)
class SessionCloseCmd:
    hdr: Header


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
)


# ---- responses --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One problem of a rejected program; line and column 1-based, 0 when unknown."""

    line: int
    column: int
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class ErrorResp:
    """Any command's failure: the status, a message, and for COMPILE the diagnostics."""

    status: PxosStatus
    message: str
    diagnostics: tuple[Diagnostic, ...] = ()


@dataclass(frozen=True, slots=True)
class NoDataResp:
    """Success without data: FREE, WRITE, KERNEL_FREE, IDLE_HINT."""


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
class AllocResp:
    handle: int
    nbytes: int


@dataclass(frozen=True, slots=True)
class ReadResp:
    nbytes: int  # bytes placed after pxos_resp_hdr (the response's payload_len)


@dataclass(frozen=True, slots=True)
class KernelDesc:
    kernel_id: int
    name: str
    nparams: int


@dataclass(frozen=True, slots=True)
class CompileResp:
    kernels: tuple[KernelDesc, ...]


@dataclass(frozen=True, slots=True)
class ParamDesc:
    name: str
    dtype: PxosDtype
    direction: PxosDirection
    dims: tuple[int, ...] | None  # None: any rank (float[]); PXOS_DIM_SYMBOLIC per named dim


@dataclass(frozen=True, slots=True)
class KernelInfoResp:
    kernel_id: int
    name: str
    class_hint: PxosClass
    priority: int | None
    nstatements: int
    params: tuple[ParamDesc, ...] = field(default=())


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
class SessionCloseResp:
    bytes_freed: int
    buffers_freed: int
    kernels_freed: int
    launches_cancelled: int


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
)
