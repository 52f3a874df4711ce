"""The vhost-user decoder: every request we serve decodes to its typed message; every
malformed header or payload is a ProtocolError (hypothesis: arbitrary bytes never
produce anything else)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hypervisor.errors import ProtocolError
from virtio_backend.vhost_user.protocol import (
    DECODERS,
    U64,
    VHOST_USER_MAX_CONFIG_SIZE,
    VHOST_USER_MAX_FDS,
    VHOST_USER_MAX_PAYLOAD,
    VHOST_USER_REPLY_FLAGS,
    ConfigAccess,
    DeviceMessage,
    MemTable,
    Message,
    NoPayload,
    VringAddr,
    VringFile,
    VringState,
    check_header,
    decode,
    encode_reply,
)
from virtio_backend.vhost_user.protocol import (
    VhostUserProtocolFeature as PF,
)
from virtio_backend.vhost_user.protocol import (
    VhostUserRequest as R,
)

ALL_PF = int(PF.CONFIG | PF.RESET_DEVICE | PF.REPLY_ACK)


def test_reply_flags_are_version_1_and_reply():
    assert VHOST_USER_REPLY_FLAGS == 0x5
    assert encode_reply(R.GET_FEATURES, b"12345678")[:12] == struct.pack("<III", 1, 5, 8)


@pytest.mark.parametrize("req,payload,fds,expected", [
    (R.GET_FEATURES, b"", [], NoPayload()),
    (R.SET_FEATURES, struct.pack("<Q", 1 << 32), [], U64(1 << 32)),
    (R.SET_VRING_NUM, struct.pack("<II", 1, 64), [], VringState(1, 64)),
    (R.SET_VRING_ADDR, struct.pack("<IIQQQQ", 0, 0, 1, 2, 3, 4), [], VringAddr(0, 0, 1, 2, 3, 4)),
    (R.SET_VRING_KICK, struct.pack("<Q", 1), [7], VringFile(1, 7)),
    (R.SET_VRING_CALL, struct.pack("<Q", 1 | 0x100), [], VringFile(1, None)),
    (R.GET_CONFIG, struct.pack("<III", 0, 4, 0) + b"\0" * 4, [], ConfigAccess(0, 4, 0, b"\0" * 4)),
    (R.GPU_SET_SOCKET, b"", [9], DeviceMessage(b"", (9,))),
    (R.RESET_DEVICE, b"", [], NoPayload()),
])
def test_decodes_each_shape(req, payload, fds, expected):
    msg = decode(req, 1, payload, fds, ALL_PF)
    assert msg == Message(req, 1, expected)


def test_mem_table():
    payload = struct.pack("<II", 2, 0) + struct.pack("<QQQQ", 0, 0xA0000, 0x7F00, 0) + struct.pack(
        "<QQQQ", 0xC0000, 0x100000, 0x7F00 + 0xC0000, 0xC0000)
    msg = decode(R.SET_MEM_TABLE, 1, payload, [5, 6])
    assert isinstance(msg.body, MemTable)
    assert [(r.guest_phys_addr, r.fd) for r in msg.body.regions] == [(0, 5), (0xC0000, 6)]


@pytest.mark.parametrize("request_,flags,size,why", [
    (1, 0x0, 0, "version"),            # version 0
    (1, 0x2, 0, "version"),            # version 2
    (1, 0x5, 0, "flags"),              # a request with the reply bit
    (1, 0x11, 0, "flags"),             # reserved bit
    (99, 0x1, 0, "unknown"),
    (6, 0x1, 16, "unsupported"),       # SET_LOG_BASE: never offered
    (1, 0x1, VHOST_USER_MAX_PAYLOAD + 1, "exceeds"),
])
def test_bad_headers(request_, flags, size, why):
    with pytest.raises(ProtocolError, match=why):
        check_header(request_, flags, size)


@pytest.mark.parametrize("req,payload,fds", [
    (R.GET_FEATURES, b"\0" * 8, []),
    (R.SET_FEATURES, b"\0" * 4, []),
    (R.SET_VRING_NUM, b"\0" * 12, []),
    (R.SET_VRING_ADDR, b"\0" * 32, []),
    (R.SET_VRING_KICK, struct.pack("<Q", 0), []),          # fd missing
    (R.SET_VRING_KICK, struct.pack("<Q", 0x100), [3]),     # fd despite no-fd flag
    (R.SET_VRING_KICK, struct.pack("<Q", 0x200), [3]),     # reserved bits
    (R.SET_MEM_TABLE, struct.pack("<II", 9, 0) + b"\0" * 32 * 9, list(range(9))),
    (R.SET_MEM_TABLE, struct.pack("<II", 1, 0) + b"\0" * 32, []),   # fd count
    (R.SET_MEM_TABLE, struct.pack("<II", 1, 0) + b"\0" * 31, [3]),  # size
    (R.GET_CONFIG, struct.pack("<III", 250, 16, 0) + b"\0" * 16, []),  # beyond 256
    (R.GET_CONFIG, struct.pack("<III", 0, 16, 0) + b"\0" * 15, []),
    (R.GPU_SET_SOCKET, b"", []),
    (R.SET_OWNER, b"", [3]),
    (R.GET_FEATURES, b"", list(range(VHOST_USER_MAX_FDS + 1))),
])
def test_bad_payloads(req, payload, fds):
    with pytest.raises(ProtocolError):
        decode(req, 1, payload, fds, ALL_PF)


def test_feature_gated_requests():
    with pytest.raises(ProtocolError, match="CONFIG"):
        decode(R.GET_CONFIG, 1, struct.pack("<III", 0, 0, 0), [], 0)
    with pytest.raises(ProtocolError, match="RESET_DEVICE"):
        decode(R.RESET_DEVICE, 1, b"", [], int(PF.CONFIG))


def test_max_config_size_is_the_spec_value():
    assert VHOST_USER_MAX_CONFIG_SIZE == 256
    decode(R.GET_CONFIG, 1, struct.pack("<III", 0, 256, 0) + bytes(256), [], ALL_PF)


@settings(max_examples=2000, deadline=None)
@given(st.integers(0, 60), st.integers(0, 0xFFFFFFFF), st.binary(max_size=300),
       st.lists(st.integers(3, 1000), max_size=10), st.integers(0, 2**20 - 1))
def test_decoder_never_raises_anything_but_protocol_error(request_, flags, payload, fds, pf):
    try:
        msg = decode(request_, flags, payload, fds, pf)
    except ProtocolError:
        return
    assert msg.request in DECODERS
    assert flags & 0x3 == 1 and not flags & ~0xB


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(sorted(DECODERS)), st.binary(max_size=300), st.integers(0, 9))
def test_decoder_on_known_requests(request_, payload, nfds):
    try:
        decode(request_, 1, payload, list(range(100, 100 + nfds)), ALL_PF)
    except ProtocolError:
        pass
