"""vhost-user wire protocol: spec names, message payloads, and the strict decoder.

Follows QEMU's ``docs/interop/vhost-user.rst`` ("Message structure", "Message types",
"Protocol features"). Bytes become frozen dataclasses here, at the edge: ``decode``
checks the header flags, that the request is one we serve, that the payload size is the
one the request defines and that the number of fds is right, and raises ``ProtocolError``
otherwise (which ends that connection only). Handlers never see raw bytes.

Payloads are little-endian (vhost-user is host-endian; pxOS hosts are little-endian).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag

from hypervisor.errors import ProtocolError


class VhostUserRequest(IntEnum):
    """Front-end requests (``VhostUserRequest`` in QEMU's hw/virtio/vhost-user.c)."""

    NONE = 0
    GET_FEATURES = 1
    SET_FEATURES = 2
    SET_OWNER = 3
    RESET_OWNER = 4
    SET_MEM_TABLE = 5
    SET_LOG_BASE = 6
    SET_LOG_FD = 7
    SET_VRING_NUM = 8
    SET_VRING_ADDR = 9
    SET_VRING_BASE = 10
    GET_VRING_BASE = 11
    SET_VRING_KICK = 12
    SET_VRING_CALL = 13
    SET_VRING_ERR = 14
    GET_PROTOCOL_FEATURES = 15
    SET_PROTOCOL_FEATURES = 16
    GET_QUEUE_NUM = 17
    SET_VRING_ENABLE = 18
    SEND_RARP = 19
    NET_SET_MTU = 20
    SET_BACKEND_REQ_FD = 21
    IOTLB_MSG = 22
    SET_VRING_ENDIAN = 23
    GET_CONFIG = 24
    SET_CONFIG = 25
    CREATE_CRYPTO_SESSION = 26
    CLOSE_CRYPTO_SESSION = 27
    POSTCOPY_ADVISE = 28
    POSTCOPY_LISTEN = 29
    POSTCOPY_END = 30
    GET_INFLIGHT_FD = 31
    SET_INFLIGHT_FD = 32
    GPU_SET_SOCKET = 33
    RESET_DEVICE = 34
    VRING_KICK = 35
    GET_MAX_MEM_SLOTS = 36
    ADD_MEM_REG = 37
    REM_MEM_REG = 38
    SET_STATUS = 39
    GET_STATUS = 40


class VhostUserHeaderFlag(IntFlag):
    """Bits of the header's ``flags`` word."""

    VERSION_1 = 0x1  # bits 0-1 hold the version; 1 is the only one
    REPLY = 0x4
    NEED_REPLY = 0x8


VHOST_USER_VERSION_MASK = 0x3
#: Flags a request may carry (a plain int: ``~`` of an IntFlag keeps only named bits).
_REQUEST_FLAGS = VHOST_USER_VERSION_MASK | int(VhostUserHeaderFlag.NEED_REPLY)
VHOST_USER_VERSION = 0x1
#: Flags of every reply we send: version 1 | reply (0x5).
VHOST_USER_REPLY_FLAGS = VhostUserHeaderFlag.VERSION_1 | VhostUserHeaderFlag.REPLY


class VhostUserProtocolFeature(IntFlag):
    """``VHOST_USER_PROTOCOL_F_*`` as bit masks."""

    MQ = 1 << 0
    LOG_SHMFD = 1 << 1
    RARP = 1 << 2
    REPLY_ACK = 1 << 3
    NET_MTU = 1 << 4
    BACKEND_REQ = 1 << 5
    CROSS_ENDIAN = 1 << 6
    CRYPTO_SESSION = 1 << 7
    PAGEFAULT = 1 << 8
    CONFIG = 1 << 9
    BACKEND_SEND_FD = 1 << 10
    HOST_NOTIFIER = 1 << 11
    INFLIGHT_SHMFD = 1 << 12
    RESET_DEVICE = 1 << 13
    INBAND_NOTIFICATIONS = 1 << 14
    CONFIGURE_MEM_SLOTS = 1 << 15
    STATUS = 1 << 16
    XEN_MMAP = 1 << 17
    SHARED_OBJECT = 1 << 18
    DEVICE_STATE = 1 << 19


class VirtioFeature(IntFlag):
    """Transport feature bits the library itself deals with (virtio spec 6, vhost.h)."""

    VIRTIO_F_NOTIFY_ON_EMPTY = 1 << 24
    VHOST_F_LOG_ALL = 1 << 26
    VIRTIO_F_ANY_LAYOUT = 1 << 27
    VIRTIO_RING_F_INDIRECT_DESC = 1 << 28
    VIRTIO_RING_F_EVENT_IDX = 1 << 29
    VHOST_USER_F_PROTOCOL_FEATURES = 1 << 30
    VIRTIO_F_VERSION_1 = 1 << 32
    VIRTIO_F_ACCESS_PLATFORM = 1 << 33
    VIRTIO_F_RING_PACKED = 1 << 34
    VIRTIO_F_IN_ORDER = 1 << 35
    VIRTIO_F_RING_RESET = 1 << 40


#: The header: request, flags, size (``VhostUserHeader``).
HEADER = struct.Struct("<III")
HEADER_SIZE = HEADER.size
#: Largest payload we read: the biggest message we serve is GET_CONFIG (12 + 256 bytes) or
#: an 8-region SET_MEM_TABLE (8 + 8 * 32); anything larger is refused before it is read,
#: so a peer cannot make us buffer arbitrary amounts.
VHOST_USER_MAX_PAYLOAD = 4096
#: Most fds one message may carry: QEMU sends at most VHOST_MEMORY_BASELINE_NREGIONS (8),
#: one per memory region.
VHOST_USER_MAX_FDS = 8
#: Memory regions in one SET_MEM_TABLE (VHOST_MEMORY_BASELINE_NREGIONS).
VHOST_USER_MAX_REGIONS = 8
#: Config space bytes a GET_CONFIG / SET_CONFIG may address (VHOST_USER_MAX_CONFIG_SIZE).
VHOST_USER_MAX_CONFIG_SIZE = 256
#: SET_VRING_KICK/CALL/ERR payload: bits 0-7 the index, bit 8 "no fd follows".
VHOST_USER_VRING_IDX_MASK = 0xFF
VHOST_USER_VRING_NOFD_MASK = 1 << 8

_U64 = struct.Struct("<Q")
_VRING_STATE = struct.Struct("<II")
_VRING_ADDR = struct.Struct("<IIQQQQ")
_MEM_HEADER = struct.Struct("<II")
_MEM_REGION = struct.Struct("<QQQQ")
_CONFIG_HEADER = struct.Struct("<III")


@dataclass(frozen=True, slots=True)
class NoPayload:
    pass


@dataclass(frozen=True, slots=True)
class U64:
    value: int


@dataclass(frozen=True, slots=True)
class VringState:
    index: int
    num: int


@dataclass(frozen=True, slots=True)
class VringAddr:
    index: int
    flags: int
    desc: int  # front-end virtual addresses
    used: int
    avail: int
    log: int


@dataclass(frozen=True, slots=True)
class VringFile:
    index: int
    fd: int | None  # None: VHOST_USER_VRING_NOFD_MASK was set


@dataclass(frozen=True, slots=True)
class MemoryRegion:
    guest_phys_addr: int
    memory_size: int
    userspace_addr: int
    mmap_offset: int
    fd: int


@dataclass(frozen=True, slots=True)
class MemTable:
    regions: tuple[MemoryRegion, ...]


@dataclass(frozen=True, slots=True)
class ConfigAccess:
    offset: int
    size: int
    flags: int
    data: bytes


@dataclass(frozen=True, slots=True)
class DeviceMessage:
    payload: bytes
    fds: tuple[int, ...]


Body = NoPayload | U64 | VringState | VringAddr | VringFile | MemTable | ConfigAccess | DeviceMessage


@dataclass(frozen=True, slots=True)
class Message:
    request: VhostUserRequest
    flags: int
    body: Body

    @property
    def need_reply(self) -> bool:
        return bool(self.flags & VhostUserHeaderFlag.NEED_REPLY)


def _exact(size: int, fds: int = 0):
    def check(req: VhostUserRequest, payload: bytes, nfds: int) -> None:
        if len(payload) != size:
            raise ProtocolError(f"{req.name}: payload of {len(payload)} bytes, expected {size}")
        if nfds != fds:
            raise ProtocolError(f"{req.name}: {nfds} fds, expected {fds}")

    return check


def _no_payload(req, payload, fds):
    _exact(0)(req, payload, len(fds))
    return NoPayload()


def _u64(req, payload, fds):
    _exact(8)(req, payload, len(fds))
    return U64(_U64.unpack(payload)[0])


def _vring_state(req, payload, fds):
    _exact(8)(req, payload, len(fds))
    return VringState(*_VRING_STATE.unpack(payload))


def _vring_addr(req, payload, fds):
    _exact(_VRING_ADDR.size)(req, payload, len(fds))
    return VringAddr(*_VRING_ADDR.unpack(payload))


def _vring_file(req, payload, fds):
    if len(payload) != 8:
        raise ProtocolError(f"{req.name}: payload of {len(payload)} bytes, expected 8")
    (value,) = _U64.unpack(payload)
    if value & ~(VHOST_USER_VRING_IDX_MASK | VHOST_USER_VRING_NOFD_MASK):
        raise ProtocolError(f"{req.name}: reserved bits set in {value:#x}")
    nofd = bool(value & VHOST_USER_VRING_NOFD_MASK)
    if len(fds) != (0 if nofd else 1):
        raise ProtocolError(f"{req.name}: {len(fds)} fds with no-fd flag {nofd}")
    return VringFile(value & VHOST_USER_VRING_IDX_MASK, None if nofd else fds[0])


def _mem_table(req, payload, fds):
    if len(payload) < _MEM_HEADER.size:
        raise ProtocolError(f"{req.name}: payload of {len(payload)} bytes is shorter than its header")
    nregions, _padding = _MEM_HEADER.unpack_from(payload)
    if nregions > VHOST_USER_MAX_REGIONS:
        raise ProtocolError(f"{req.name}: {nregions} regions, at most {VHOST_USER_MAX_REGIONS}")
    expected = _MEM_HEADER.size + nregions * _MEM_REGION.size
    if len(payload) != expected:
        raise ProtocolError(f"{req.name}: payload of {len(payload)} bytes, expected {expected}")
    if len(fds) != nregions:
        raise ProtocolError(f"{req.name}: {len(fds)} fds for {nregions} regions")
    regions = []
    for i in range(nregions):
        gpa, size, uaddr, offset = _MEM_REGION.unpack_from(payload, _MEM_HEADER.size + i * _MEM_REGION.size)
        regions.append(MemoryRegion(gpa, size, uaddr, offset, fds[i]))
    return MemTable(tuple(regions))


def _config(req, payload, fds):
    if len(payload) < _CONFIG_HEADER.size:
        raise ProtocolError(f"{req.name}: payload of {len(payload)} bytes is shorter than its header")
    offset, size, flags = _CONFIG_HEADER.unpack_from(payload)
    if size > VHOST_USER_MAX_CONFIG_SIZE or offset > VHOST_USER_MAX_CONFIG_SIZE - size:
        raise ProtocolError(f"{req.name}: config range {offset}+{size} beyond {VHOST_USER_MAX_CONFIG_SIZE}")
    _exact(_CONFIG_HEADER.size + size)(req, payload, len(fds))
    return ConfigAccess(offset, size, flags, bytes(payload[_CONFIG_HEADER.size:]))


def _gpu_set_socket(req, payload, fds):
    _exact(0, 1)(req, payload, len(fds))
    return DeviceMessage(b"", tuple(fds))


R = VhostUserRequest
PF = VhostUserProtocolFeature
#: Every request we serve: its decoder and the protocol feature it needs (None: always).
#: Anything else (logging, postcopy, inflight, mem slots, status...) is a ProtocolError:
#: we never offer the features that would make QEMU send it.
DECODERS = {
    R.GET_FEATURES: (_no_payload, None),
    R.SET_FEATURES: (_u64, None),
    R.SET_OWNER: (_no_payload, None),
    R.RESET_OWNER: (_no_payload, None),
    R.SET_MEM_TABLE: (_mem_table, None),
    R.SET_VRING_NUM: (_vring_state, None),
    R.SET_VRING_ADDR: (_vring_addr, None),
    R.SET_VRING_BASE: (_vring_state, None),
    R.GET_VRING_BASE: (_vring_state, None),
    R.SET_VRING_KICK: (_vring_file, None),
    R.SET_VRING_CALL: (_vring_file, None),
    R.SET_VRING_ERR: (_vring_file, None),
    R.GET_PROTOCOL_FEATURES: (_no_payload, None),
    R.SET_PROTOCOL_FEATURES: (_u64, None),
    R.GET_QUEUE_NUM: (_no_payload, None),
    R.SET_VRING_ENABLE: (_vring_state, None),
    R.GET_CONFIG: (_config, PF.CONFIG),
    R.SET_CONFIG: (_config, PF.CONFIG),
    R.GPU_SET_SOCKET: (_gpu_set_socket, None),
    R.RESET_DEVICE: (_no_payload, PF.RESET_DEVICE),
}
#: Requests handed to the device (``VirtioDevice.handle_device_message``).
DEVICE_REQUESTS = frozenset({R.GPU_SET_SOCKET})


def check_header(request: int, flags: int, size: int) -> VhostUserRequest:
    """Validate a header before its payload is read; the request as its enum member."""
    if flags & VHOST_USER_VERSION_MASK != VHOST_USER_VERSION:
        raise ProtocolError(f"bad version in header flags {flags:#x} (request {request})")
    if flags & ~_REQUEST_FLAGS:
        raise ProtocolError(f"unexpected header flags {flags:#x} (request {request})")
    if size > VHOST_USER_MAX_PAYLOAD:
        raise ProtocolError(f"payload of {size} bytes exceeds {VHOST_USER_MAX_PAYLOAD} (request {request})")
    try:
        req = VhostUserRequest(request)
    except ValueError:
        raise ProtocolError(f"unknown request {request}") from None
    if req not in DECODERS:
        raise ProtocolError(f"unsupported request {req.name} ({request})")
    return req


def decode(request: int, flags: int, payload: bytes, fds: list[int], protocol_features: int = 0) -> Message:
    """Header fields, payload and received fds -> a typed ``Message``. Raises
    ``ProtocolError``; the caller still owns (and closes) ``fds`` then."""
    req = check_header(request, flags, len(payload))
    if len(fds) > VHOST_USER_MAX_FDS:
        raise ProtocolError(f"{req.name}: {len(fds)} fds, at most {VHOST_USER_MAX_FDS}")
    decoder, needs = DECODERS[req]
    if needs is not None and not protocol_features & needs:
        raise ProtocolError(f"{req.name} needs protocol feature {needs.name}, not negotiated")
    return Message(req, flags, decoder(req, payload, list(fds)))


def encode_reply(request: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(request, VHOST_USER_REPLY_FLAGS, len(payload)) + payload


def encode_u64(value: int) -> bytes:
    return _U64.pack(value)


def encode_vring_state(index: int, num: int) -> bytes:
    return _VRING_STATE.pack(index, num)


def encode_config(offset: int, size: int, flags: int, data: bytes) -> bytes:
    return _CONFIG_HEADER.pack(offset, size, flags) + data
