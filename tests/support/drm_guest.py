"""What Linux's stock virtio_gpu DRM driver sends for a render-node client, played over the
scripted vhost-user frontend: contexts, 3D buffer resources backed by scattered guest
pages, fenced SUBMIT_3D carrying pxOS submits. The far end of the connection (tests of
the DRM transport drive the real device with it; the byte layouts are the virtio spec's)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from virtio_backend import wire
from virtio_backend.gpu import guest as g
from virtio_backend.gpu.virtio_gpu import CTRL_HDR, VirtioGpuCtrlType

V = VirtioGpuCtrlType
PAGE = 4096
ENVELOPE = wire.layout("pxos_drm_submit").struct


@dataclass
class Answer:
    head: int
    type: int
    flags: int
    fence_id: int
    data: bytes


@dataclass
class Buffer:
    rid: int
    pages: list[int]  # guest-physical address of each backing page, in order

    @property
    def size(self) -> int:
        return len(self.pages) * PAGE


class DrmGuest:
    def __init__(self, fe):
        self.fe = fe
        self.fence = 0
        self._next_rid = 1

    # ---- raw commands -------------------------------------------------------------------
    def send(self, cmd: int, body: bytes = b"", *, ctx: int = 0, fence: int | None = None, size: int = 24) -> int:
        flags = 0 if fence is None else 1
        head = self.fe.submit(0, out=[CTRL_HDR.pack(cmd, flags, fence or 0, ctx, 0) + body], in_=[size])
        self.fe.kick(0, force=True)
        return head

    def next_fence(self) -> int:
        self.fence += 1
        return self.fence

    def answers(self, n: int = 1, timeout: float = 10.0) -> list[Answer]:
        out = []
        for u in self.fe.wait_used(0, n, timeout=timeout):
            rtype, flags, fence_id, _, _ = CTRL_HDR.unpack_from(u.data)
            out.append(Answer(u.head, rtype, flags, fence_id, u.data))
        return out

    def cmd(self, cmd: int, body: bytes = b"", *, ctx: int = 0, fenced: bool = False, size: int = 24) -> Answer:
        head = self.send(cmd, body, ctx=ctx, fence=self.next_fence() if fenced else None, size=size)
        [a] = self.answers()
        assert a.head == head
        return a

    def ok(self, cmd: int, body: bytes = b"", **kw) -> Answer:
        a = self.cmd(cmd, body, **kw)
        assert a.type in (V.VIRTIO_GPU_RESP_OK_NODATA, V.VIRTIO_GPU_RESP_OK_CAPSET_INFO,
                          V.VIRTIO_GPU_RESP_OK_CAPSET), hex(a.type)
        return a

    # ---- what the driver does for a render-node client ----------------------------------
    def ctx_create(self, ctx: int, name: str = "test") -> Answer:
        raw = name.encode()
        return self.cmd(V.VIRTIO_GPU_CMD_CTX_CREATE, struct.pack("<II64s", len(raw), 0, raw), ctx=ctx)

    def create_3d(self, rid: int, width: int, *, target: int = 0, height: int = 1) -> Answer:
        body = struct.pack("<IIIIIIIIIII4x", rid, target, 64, 0, width, height, 1, 1, 0, 0, 0)
        return self.cmd(V.VIRTIO_GPU_CMD_RESOURCE_CREATE_3D, body, fenced=True)

    def attach_backing(self, rid: int, entries: list[tuple[int, int]]) -> Answer:
        body = struct.pack("<II", rid, len(entries)) + b"".join(struct.pack("<QI4x", a, n) for a, n in entries)
        return self.cmd(V.VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING, body)

    def ctx_attach(self, ctx: int, rid: int) -> Answer:
        return self.cmd(V.VIRTIO_GPU_CMD_CTX_ATTACH_RESOURCE, struct.pack("<I4x", rid), ctx=ctx)

    def buffer(self, ctx: int, npages: int = 16) -> Buffer:
        """A buffer resource of ``npages`` scattered pages, attached to ``ctx``."""
        rid, self._next_rid = self._next_rid, self._next_rid + 1
        pages = []
        for _ in range(npages):  # every other page: the backing is never contiguous
            pages.append(self.fe.heap.alloc(PAGE, PAGE))
            self.fe.heap.alloc(PAGE, PAGE)
        assert self.create_3d(rid, npages * PAGE).type == V.VIRTIO_GPU_RESP_OK_NODATA
        assert self.attach_backing(rid, [(p, PAGE) for p in pages]).type == V.VIRTIO_GPU_RESP_OK_NODATA
        assert self.ctx_attach(ctx, rid).type == V.VIRTIO_GPU_RESP_OK_NODATA
        return Buffer(rid, pages)

    def read_buffer(self, buf: Buffer, offset: int = 0, length: int | None = None) -> bytes:
        data = b"".join(bytes(self.fe.mem[p:p + PAGE]) for p in buf.pages)
        return data[offset:] if length is None else data[offset:offset + length]

    def fill(self, buf: Buffer, data: bytes, offset: int = 0) -> None:
        """Write ``data`` into the buffer's pages from ``offset`` (what a mapped bo gets)."""
        for i, p in enumerate(buf.pages):
            lo, hi = max(offset, i * PAGE), min(offset + len(data), (i + 1) * PAGE)
            if lo < hi:
                self.fe.mem[p + lo - i * PAGE:p + hi - i * PAGE] = data[lo - offset:hi - offset]

    def clear(self, buf: Buffer) -> None:
        for p in buf.pages:
            self.fe.mem[p:p + PAGE] = bytes(PAGE)

    def submit(self, ctx: int, request: bytes, reply: Buffer | int, *, reply_offset: int = 0,
               magic: int = wire.PXOS_MAGIC, major: int = wire.PXOS_ABI_MAJOR, fence: int | None = -1,
               size: int | None = None, data: Buffer | int = 0, data_offset: int = 0) -> int:
        """Send one SUBMIT_3D (fenced with the next fence id unless ``fence`` is given)."""
        rid = reply.rid if isinstance(reply, Buffer) else reply
        data_rid = data.rid if isinstance(data, Buffer) else data
        payload = ENVELOPE.pack(magic, major, wire.PXOS_ABI_MINOR, rid, data_rid, reply_offset, data_offset) + request
        body = struct.pack("<I4x", len(payload) if size is None else size) + payload
        return self.send(V.VIRTIO_GPU_CMD_SUBMIT_3D, body, ctx=ctx, fence=self.next_fence() if fence == -1 else fence)

    def call(self, ctx: int, request: bytes, reply: Buffer, *, read_length: int = 0, **kw) -> dict:
        """A submit and its reply, parsed (the reply resource is cleared first)."""
        self.clear(reply)
        head = self.submit(ctx, request, reply, **kw)
        [a] = self.answers()
        assert (a.head, a.type, a.flags) == (head, V.VIRTIO_GPU_RESP_OK_NODATA, 1)
        cmd_type = struct.unpack_from("<I", request)[0]
        return g.parse_response(cmd_type, self.read_buffer(reply, 0, g.response_size(cmd_type, read_length)))
