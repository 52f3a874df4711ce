"""A scripted vhost-user front-end that plays QEMU 10 driving ``vhost-user-gpu-pci``.

It stands at the far end of the socket (the back-end under test is real): memfd guest
RAM laid out like QEMU's (two regions, below 640 KiB and from 768 KiB, sealed against
shrinking), the message sequence of ``shared/docs/qemu-facts.md``, eventfds for kick,
call and error, and split rings written by its own Python driver (``driver_ring``).

Typical use (``tests/unit/virtio_backend/``, the device's tests, ``bench/bench_vhost``)::

    with VhostUserFrontend(socket_path) as fe:
        fe.boot()                                  # connect, handshake, GET_CONFIG, start
        head = fe.submit(0, out=[request_bytes], in_=[64])
        fe.kick(0)
        [used] = fe.wait_used(0)                   # Used(head, len, data)

Fault switches: ``send_raw`` / ``send`` (any header, payload, fds), ``ring(q).add_raw``
(any descriptors: outside memory, loops, bad indirect tables, huge lengths),
``ring(q).set_avail_idx`` (a corrupt avail ring), ``disconnect()`` (mid-request), and the
issue 17 ones: ``ram_seals`` ("shrink": sealed as QEMU seals its memfd; "open": sealing
allowed but no seal set, so the back-end may seal it; "none": a memfd that can never be
sealed) with ``shrink_ram()`` (truncate guest RAM under the back-end's mapping: after it
this side must not touch ``mem`` either), ``vring_fd`` with any fd (a pipe, a regular
file, a directory, a socket as kick/call/err fd, or None for a "no fd" kick),
``set_vring_addr(..., flags=)`` (dirty logging) and ``send_mem_table(regions)`` (a new
memory table while the rings run, e.g. one that maps the rings misaligned).
"""

from __future__ import annotations

import array
import fcntl
import mmap
import os
import select
import socket
import struct
import time
from dataclasses import dataclass

from tests.support.driver_ring import DriverRing, GuestHeap

# Spec values, written out independently of the back-end's enums.
GET_FEATURES, SET_FEATURES, SET_OWNER, RESET_OWNER, SET_MEM_TABLE = 1, 2, 3, 4, 5
SET_VRING_NUM, SET_VRING_ADDR, SET_VRING_BASE, GET_VRING_BASE = 8, 9, 10, 11
SET_VRING_KICK, SET_VRING_CALL, SET_VRING_ERR = 12, 13, 14
GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES, GET_QUEUE_NUM, SET_VRING_ENABLE = 15, 16, 17, 18
GET_CONFIG, SET_CONFIG, GPU_SET_SOCKET, RESET_DEVICE = 24, 25, 33, 34
F_VERSION, F_REPLY, F_NEED_REPLY = 0x1, 0x4, 0x8
PROTOCOL_F_REPLY_ACK, PROTOCOL_F_CONFIG = 1 << 3, 1 << 9
F_INDIRECT_DESC, F_EVENT_IDX, F_PROTOCOL_FEATURES, F_VERSION_1 = 1 << 28, 1 << 29, 1 << 30, 1 << 32
NOFD = 1 << 8
HDR = struct.Struct("<III")

#: QEMU's x86 layout: RAM below the VGA hole, then from 768 KiB up.
LOW_END, HIGH_START = 0xA0000, 0xC0000


class FrontendError(Exception):
    pass


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.005):
    """Poll ``predicate`` until it returns something truthy; TimeoutError otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        time.sleep(interval)


@dataclass
class Used:
    head: int
    len: int
    data: bytes  # the first ``len`` bytes of the chain's device-writable buffers


class VhostUserFrontend:
    def __init__(self, socket_path: str, *, ram_size: int = 32 << 20, queue_sizes=(64, 16),
                 event_idx: bool = True, indirect: bool = True, gpu_socket: bool = True,
                 protocol_features: int | None = None, need_reply_all: bool = False,
                 extra_features: int = 0, ram_seals: str = "shrink"):
        self.socket_path = socket_path
        self.queue_sizes = tuple(queue_sizes)
        self.event_idx, self.indirect, self.gpu_socket = event_idx, indirect, gpu_socket
        self.want_protocol = protocol_features
        self.need_reply_all = need_reply_all
        self.extra_features = extra_features  # acked whatever the back-end offered (as QEMU does)
        self.sock: socket.socket | None = None
        self.ram_size = ram_size
        if ram_seals not in ("shrink", "open", "none"):
            raise ValueError(f"ram_seals {ram_seals!r}: shrink, open or none")
        sealing = os.MFD_ALLOW_SEALING if ram_seals != "none" else 0
        self.ram_fd = os.memfd_create("pxos-test-guest-ram", os.MFD_CLOEXEC | sealing)
        os.ftruncate(self.ram_fd, ram_size)
        if ram_seals == "shrink":  # QEMU's memory-backend-memfd default (seal=on)
            fcntl.fcntl(self.ram_fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
        self.ram = mmap.mmap(self.ram_fd, ram_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.mem = memoryview(self.ram)
        import ctypes  # the "QEMU virtual address" of our mapping: what QEMU would send

        self.ram_va = ctypes.addressof(ctypes.c_char.from_buffer(self.ram))
        self.regions = [(0, LOW_END, 0), (HIGH_START, ram_size - HIGH_START, HIGH_START)]  # gpa, size, offset
        self.heap = GuestHeap(1 << 20, ram_size)
        self.features = 0
        self.protocol_features = 0
        self.kick_fds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in self.queue_sizes]
        self.call_fds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in self.queue_sizes]
        self.err_fds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in self.queue_sizes]
        self.rings: list[DriverRing | None] = [None] * len(self.queue_sizes)
        self._display = None  # our end of GPU_SET_SOCKET's socketpair

    # -- connection -----------------------------------------------------------------------
    def connect(self, timeout: float = 5.0) -> VhostUserFrontend:
        deadline = time.monotonic() + timeout
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(self.socket_path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                s.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        s.settimeout(timeout)
        self.sock = s
        return self

    def disconnect(self) -> None:
        """Close the socket abruptly (as a QEMU that died)."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def close(self) -> None:
        self.disconnect()
        for fd in self.kick_fds + self.call_fds + self.err_fds:
            os.close(fd)
        self.kick_fds = self.call_fds = self.err_fds = []
        if self._display is not None:
            self._display.close()
        self.rings = []
        self.mem.release()
        try:
            self.ram.close()
        except BufferError:  # ctypes' from_buffer export lives until collected
            import gc

            gc.collect()
            self.ram.close()
        os.close(self.ram_fd)

    def __enter__(self) -> VhostUserFrontend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- frames ---------------------------------------------------------------------------
    def send_raw(self, data: bytes, fds=()) -> None:
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        self.sock.sendmsg([data], anc)

    def send(self, request: int, payload: bytes = b"", fds=(), *, flags: int = F_VERSION,
             need_reply: bool = False) -> None:
        if need_reply:
            flags |= F_NEED_REPLY
        self.send_raw(HDR.pack(request, flags, len(payload)) + payload, fds)

    def recv_reply(self, request: int) -> bytes:
        hdr = self._recv_exact(HDR.size)
        req, flags, size = HDR.unpack(hdr)
        if req != request or flags != F_VERSION | F_REPLY:
            raise FrontendError(f"reply {req} flags {flags:#x} to request {request}")
        return self._recv_exact(size) if size else b""

    def _recv_exact(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise ConnectionResetError("back-end closed the connection")
            out += chunk
        return out

    def request(self, request: int, payload: bytes = b"", fds=(), *, reply: bool = False) -> bytes | None:
        """Send, then read a reply (``reply``), or the REPLY_ACK when we asked for one."""
        ack = (not reply and self.protocol_features & PROTOCOL_F_REPLY_ACK
               and (self.need_reply_all or request in (SET_MEM_TABLE, SET_CONFIG)))
        self.send(request, payload, fds, need_reply=bool(ack))
        if reply:
            return self.recv_reply(request)
        if ack:
            (status,) = struct.unpack("<Q", self.recv_reply(request))
            if status:
                raise FrontendError(f"request {request} acked with failure {status}")
        return None

    def get_u64(self, request: int) -> int:
        return struct.unpack("<Q", self.request(request, reply=True))[0]

    def set_u64(self, request: int, value: int) -> None:
        self.request(request, struct.pack("<Q", value))

    def vring_state(self, request: int, index: int, num: int) -> None:
        self.request(request, struct.pack("<II", index, num))

    def vring_fd(self, request: int, index: int, fd: int | None) -> None:
        self.request(request, struct.pack("<Q", index | (NOFD if fd is None else 0)), () if fd is None else (fd,))

    def set_vring_addr(self, index: int, desc: int, avail: int, used: int, *, flags: int = 0) -> None:
        """SET_VRING_ADDR with guest-physical offsets into our RAM (sent as our virtual
        addresses, as QEMU sends them); ``flags`` 1 is VHOST_VRING_F_LOG."""
        self.request(SET_VRING_ADDR, struct.pack("<IIQQQQ", index, flags, self.ram_va + desc, self.ram_va + used,
                                                 self.ram_va + avail, 0))

    def send_mem_table(self, regions, *, fd: int | None = None) -> None:
        """SET_MEM_TABLE with ``regions`` = [(gpa, size, userspace_addr, mmap_offset)], each
        with ``fd`` (our RAM by default); REPLY_ACK is asked for when negotiated."""
        body = struct.pack("<II", len(regions), 0)
        for gpa, size, uaddr, off in regions:
            body += struct.pack("<QQQQ", gpa, size, uaddr, off)
        self.request(SET_MEM_TABLE, body, [self.ram_fd if fd is None else fd] * len(regions))

    def shrink_ram(self, size: int = 0) -> None:
        """Truncate guest RAM under the back-end's mapping (PermissionError when sealed).
        Touching ``mem`` past ``size`` afterwards raises SIGBUS in this process too."""
        os.ftruncate(self.ram_fd, size)

    # -- QEMU's sequence ------------------------------------------------------------------
    def handshake(self) -> None:
        """QEMU start: features, protocol features, owner, call/err fds."""
        offered = self.get_u64(GET_FEATURES)
        if not offered & F_PROTOCOL_FEATURES:
            raise FrontendError(f"back-end offers no PROTOCOL_FEATURES ({offered:#x})")
        proto = self.get_u64(GET_PROTOCOL_FEATURES)
        if not proto & PROTOCOL_F_CONFIG:
            raise FrontendError("back-end lacks VHOST_USER_PROTOCOL_F_CONFIG (QEMU refuses it)")
        self.protocol_features = proto if self.want_protocol is None else proto & self.want_protocol
        self.set_u64(SET_PROTOCOL_FEATURES, self.protocol_features)
        self.request(SET_OWNER)
        self.offered = self.get_u64(GET_FEATURES)
        for i in range(len(self.queue_sizes)):
            self.vring_fd(SET_VRING_CALL, i, self.call_fds[i])
            self.vring_fd(SET_VRING_ERR, i, self.err_fds[i])

    def get_config(self, offset: int = 0, size: int = 16) -> bytes:
        out = self.request(GET_CONFIG, struct.pack("<III", offset, size, 0) + bytes(size), reply=True)
        if len(out) != 12 + size:
            raise FrontendError(f"GET_CONFIG answered {len(out)} bytes")
        return out[12:]

    def mem_table_payload(self) -> bytes:
        body = struct.pack("<II", len(self.regions), 0)
        for gpa, size, off in self.regions:
            body += struct.pack("<QQQQ", gpa, size, self.ram_va + off, off)
        return body

    def ring_addrs(self, q: int) -> tuple[int, int, int]:
        """(desc, avail, used) guest-physical addresses of ring ``q``."""
        r = self.ring(q)
        return r.desc, r.avail, r.used

    def start(self, before_enable=None) -> None:
        """DRIVER_OK: GPU socket, features, memory table, rings, enable, fresh call fds.
        ``before_enable(self)`` runs after the kick fds are set and before the enables
        (e.g. to publish and kick early, as a fast guest can)."""
        if self.gpu_socket:
            if self._display is not None:
                self._display.close()
            self._display, theirs = socket.socketpair()
            self.request(GPU_SET_SOCKET, b"", (theirs.fileno(),))
            theirs.close()
        for i in range(len(self.queue_sizes)):
            self.vring_fd(SET_VRING_CALL, i, self.call_fds[i])
        self.features = F_VERSION_1 | F_PROTOCOL_FEATURES
        self.features |= (F_EVENT_IDX if self.event_idx else 0) | (F_INDIRECT_DESC if self.indirect else 0)
        self.features = (self.features & self.offered) | self.extra_features
        self.set_u64(SET_FEATURES, self.features)
        self.request(SET_MEM_TABLE, self.mem_table_payload(), [self.ram_fd] * len(self.regions))
        for i, num in enumerate(self.queue_sizes):
            desc, avail, used = self.heap.alloc(16 * num, 4096), self.heap.alloc(6 + 2 * num), self.heap.alloc(6 + 8 * num)
            self.rings[i] = DriverRing(self.mem, num, desc, avail, used, event_idx=bool(self.features & F_EVENT_IDX))
            self.vring_state(SET_VRING_NUM, i, num)
            self.vring_state(SET_VRING_BASE, i, 0)
            self.set_vring_addr(i, desc, avail, used)
            self.vring_fd(SET_VRING_KICK, i, self.kick_fds[i])
        if before_enable is not None:
            before_enable(self)
        for i in range(len(self.queue_sizes)):
            self.vring_state(SET_VRING_ENABLE, i, 1)
        for i in range(len(self.queue_sizes)):
            self.vring_fd(SET_VRING_CALL, i, self.call_fds[i])

    def stop(self) -> list[int]:
        """Reset / power-off: disable, GET_VRING_BASE per ring (the bases), fresh call fds."""
        for i in range(len(self.queue_sizes)):
            self.vring_state(SET_VRING_ENABLE, i, 0)
        bases = []
        for i in range(len(self.queue_sizes)):
            out = self.request(GET_VRING_BASE, struct.pack("<II", i, 0), reply=True)
            index, num = struct.unpack("<II", out)
            if index != i:
                raise FrontendError(f"GET_VRING_BASE {i} answered for ring {index}")
            bases.append(num)
        for i in range(len(self.queue_sizes)):
            self.vring_fd(SET_VRING_CALL, i, self.call_fds[i])
        return bases

    def boot(self) -> VhostUserFrontend:
        if self.sock is None:
            self.connect()
        self.handshake()
        self.get_config()
        self.start()
        return self

    # -- requests ---------------------------------------------------------------------------
    def ring(self, q: int) -> DriverRing:
        return self.rings[q]

    def submit(self, q: int, out=(), in_=(), *, indirect: bool = False, publish: bool = True) -> int:
        """Copy each ``out`` bytes into fresh guest buffers, add ``in_`` (sizes) writable
        buffers, and publish them as one chain; returns the head."""
        bufs = []
        for data in out:
            gpa = self.heap.alloc(len(data))
            self.mem[gpa:gpa + len(data)] = data
            bufs.append((gpa, len(data), False))
        for size in in_:
            bufs.append((self.heap.alloc(size), size, True))
        table = self.heap.alloc(16 * len(bufs)) if indirect else None
        head = self.ring(q).add(bufs, indirect_table=table, publish=publish)
        return head

    def kick(self, q: int, *, force: bool = False) -> bool:
        if force or self.ring(q).kick_needed():
            os.eventfd_write(self.kick_fds[q], 1)
            return True
        return False

    def poll_used(self, q: int) -> list[Used]:
        """Used elements that arrived, with the data the device wrote; frees their buffers."""
        out = []
        for head, length, chain in self.ring(q).harvest():
            data = bytearray()
            if chain is not None:
                for gpa, size, writable in chain.buffers:
                    if writable and len(data) < length:
                        data += self.mem[gpa:gpa + min(size, length - len(data))]
                if not chain.persistent:
                    for gpa, size, _ in chain.buffers:
                        self.heap.free(gpa, size)
                    if chain.indirect:
                        self.heap.free(*chain.indirect)
            out.append(Used(head, length, bytes(data)))
        return out

    def wait_used(self, q: int, n: int = 1, timeout: float = 5.0) -> list[Used]:
        """Wait (on the call eventfd) until ``n`` used elements arrived; returns them."""
        deadline = time.monotonic() + timeout
        got: list[Used] = []
        ring = self.ring(q)
        while True:
            got += self.poll_used(q)
            if len(got) >= n:
                return got
            ring.arm_interrupt()
            got += self.poll_used(q)  # one may have landed before used_event was written
            if len(got) >= n:
                return got
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"queue {q}: {len(got)} of {n} used elements after {timeout} s")
            r, _, _ = select.select([self.call_fds[q]], [], [], left)
            if r:
                try:
                    os.eventfd_read(self.call_fds[q])
                except BlockingIOError:
                    pass

    def interrupts(self, q: int) -> int:
        """Drain the call eventfd: how many interrupts arrived since the last drain."""
        try:
            return os.eventfd_read(self.call_fds[q])
        except BlockingIOError:
            return 0

    def errors_signalled(self, q: int) -> int:
        try:
            return os.eventfd_read(self.err_fds[q])
        except BlockingIOError:
            return 0
