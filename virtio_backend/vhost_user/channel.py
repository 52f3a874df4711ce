"""Reading and writing vhost-user frames on a unix stream socket, with SCM_RIGHTS fds.

A frame is the 12-byte header (request, flags, size) then ``size`` payload bytes; QEMU
attaches fds to the header's first byte (``docs/interop/vhost-user.rst``, "Communication").
The header is checked (``protocol.check_header``) before the payload is read, so a bad
size is refused without reading it. Every fd received is either handed to the caller or
closed here: a frame that fails leaves nothing open.
"""

from __future__ import annotations

import array
import os
import socket

from hypervisor.errors import ProtocolError
from virtio_backend.vhost_user.protocol import (
    HEADER,
    HEADER_SIZE,
    VHOST_USER_MAX_FDS,
    Message,
    check_header,
    decode,
)

#: Room for more fds than any message may carry, so "too many" is seen and refused
#: rather than silently truncated by the kernel (which would drop the extra ones).
_FD_ROOM = VHOST_USER_MAX_FDS + 8
_CMSG_SPACE = socket.CMSG_SPACE(_FD_ROOM * array.array("i").itemsize)
#: How long the rest of a frame may take once its first byte arrived: a peer that stalls
#: mid-frame is broken; this bounds how long it can hold the connection's loop.
FRAME_TIMEOUT_S = 5.0


def _take_fds(ancdata, fds: list[int]) -> bool:
    """Collect SCM_RIGHTS fds into ``fds``; True when something else or a partial fd came."""
    odd = False
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            whole = len(data) - len(data) % 4
            fds.extend(array.array("i", data[:whole]))
            odd |= whole != len(data)
        else:
            odd = True
    return odd


def close_fds(fds) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _recv_exact(sock: socket.socket, n: int, fds: list[int]) -> bytes | None:
    """n bytes (collecting any fds on the way); None on EOF before the first byte."""
    chunks, got = [], 0
    while got < n:
        try:
            data, anc, flags, _ = sock.recvmsg(n - got, _CMSG_SPACE)
        except TimeoutError:
            raise ProtocolError(f"peer stalled mid-frame ({got} of {n} bytes)") from None
        except InterruptedError:
            continue
        if _take_fds(anc, fds) or flags & socket.MSG_CTRUNC:
            raise ProtocolError("unexpected or truncated ancillary data")
        if not data:
            if got == 0 and not chunks:
                return None
            raise ProtocolError(f"peer closed mid-frame ({got} of {n} bytes)")
        chunks.append(data)
        got += len(data)
    return b"".join(chunks)


def recv_message(sock: socket.socket, protocol_features: int) -> Message | None:
    """Read and decode one frame; None when the peer closed cleanly between frames.
    Raises ``ProtocolError`` (all fds of the frame closed) for anything malformed."""
    fds: list[int] = []
    try:
        header = _recv_exact(sock, HEADER_SIZE, fds)
        if header is None:
            return None
        request, flags, size = HEADER.unpack(header)
        check_header(request, flags, size)
        payload = _recv_exact(sock, size, fds) if size else b""
        if payload is None:
            raise ProtocolError("peer closed before the payload")
        if len(fds) > VHOST_USER_MAX_FDS:
            raise ProtocolError(f"{len(fds)} fds in one message, at most {VHOST_USER_MAX_FDS}")
        msg = decode(request, flags, payload, fds, protocol_features)
    except BaseException:
        close_fds(fds)
        raise
    return msg


def send_frame(sock: socket.socket, frame: bytes) -> None:
    try:
        sock.sendall(frame)
    except OSError as exc:
        raise ProtocolError(f"sending a reply failed: {exc}") from exc
