"""Frames on a real unix socket pair: fds arrive with their message, and every failure
path is a ProtocolError that leaves no received fd open."""

from __future__ import annotations

import array
import os
import socket
import struct

import pytest

from hypervisor.errors import ProtocolError
from tests.support.leaks import open_fds
from virtio_backend.vhost_user import channel
from virtio_backend.vhost_user.protocol import VhostUserRequest as R


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    b.settimeout(1.0)
    yield a, b
    a.close()
    b.close()


def send(sock, request, flags, payload, fds=(), size=None):
    hdr = struct.pack("<III", request, flags, len(payload) if size is None else size)
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    sock.sendmsg([hdr + payload], anc)


def test_message_with_fd(pair):
    a, b = pair
    r, w = os.pipe()
    try:
        send(a, R.SET_VRING_KICK, 1, struct.pack("<Q", 0), [r])
        msg = channel.recv_message(b, 0)
        assert msg.request == R.SET_VRING_KICK
        os.write(w, b"x")
        assert os.read(msg.body.fd, 1) == b"x"  # a real, working duplicate
        os.close(msg.body.fd)
    finally:
        os.close(r)
        os.close(w)


def test_clean_eof_between_frames(pair):
    a, b = pair
    a.close()
    assert channel.recv_message(b, 0) is None


@pytest.mark.parametrize("frame", [
    lambda a, fds: send(a, 77, 1, b"", fds),                                  # unknown request
    lambda a, fds: send(a, R.GET_FEATURES, 0x2, b"", fds),                    # bad version
    lambda a, fds: send(a, R.SET_FEATURES, 1, b"\0" * 4, fds),                # wrong size
    lambda a, fds: send(a, R.GET_FEATURES, 1, b"", fds * 5),                  # too many fds (10)
    lambda a, fds: send(a, R.SET_FEATURES, 1, b"\0" * 4, fds, size=8),        # peer stops mid-frame
    lambda a, fds: send(a, R.GET_FEATURES, 1, b"", fds, size=1 << 20),        # huge size
])
def test_bad_frames_raise_and_close_their_fds(pair, frame):
    a, b = pair
    r, w = os.pipe()
    before = open_fds()
    frame(a, [r, w])
    a.shutdown(socket.SHUT_WR)
    with pytest.raises(ProtocolError):
        channel.recv_message(b, 0)
    assert open_fds() == before
    os.close(r)
    os.close(w)


def test_partial_header_then_eof(pair):
    a, b = pair
    a.sendall(b"\x01\x00\x00")
    a.close()
    with pytest.raises(ProtocolError, match="mid-frame"):
        channel.recv_message(b, 0)


def test_send_frame_to_a_closed_peer_is_a_protocol_error(pair):
    a, b = pair
    a.close()
    with pytest.raises(ProtocolError):
        for _ in range(100):
            channel.send_frame(b, b"\0" * 65536)
