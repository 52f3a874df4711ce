"""pxos_drm: the DRM transport of the guest Python library (standard library only).

A guest without pxos_gpu.ko reaches pxOS through Linux's own virtio_gpu driver and its
render node, ``/dev/dri/renderD128`` (docs/protocol.md §11). ``DrmTransport`` does in user
space what the module does in the kernel for each /dev/pxosN ioctl: it builds the same
wire request (``guest_driver/include/uapi/pxos_gpu.h``), sends it with
``DRM_IOCTL_VIRTGPU_EXECBUFFER`` behind a ``struct pxos_drm_submit`` envelope, waits on the
submit's fence, reads the response from a 3D buffer resource it mapped, and fills the
ioctl struct the caller passed, failing with the errno the module would. So
``pxos_guest.Device`` (and every program on it) runs unchanged on either transport.

The render node's file is the pxOS session (its virtio-gpu context); closing it ends the
session. Access control is the render node's: on a distribution, members of the
``render`` group (udev's ``0660 root:render``).
"""

from __future__ import annotations

import ctypes as C
import errno
import mmap
import os
import select
import struct

RENDER_NODE = "/dev/dri/renderD128"
CAPSET_ID, CAPSET_VERSION = 24, 1                       # PXOS_CAPSET_ID, PXOS_CAPSET_VERSION
MAGIC, ABI_MAJOR, ABI_MINOR = 0x534F5850, 1, 3     # PXOS_MAGIC, the ABI (1.3: DRM transport)
MAX_TRANSFER = 8 << 20                                   # PXOS_MAX_TRANSFER_BYTES
MAX_SUBMITTED = 64                                       # PXOS_MAX_SUBMITTED
RESP_HDR = 160
RESP_TYPE = 0x7100                                       # PXOS_RESP
PAGE = 4096
SMALL_REPLY = 2 * PAGE                                   # the largest fixed response (KERNEL_INFO, 4856)
SLOT = 256                                               # one LAUNCH reply (200 bytes) per async slot
WAIT_DEFAULT_MS = 60000                                  # PXOS_LAUNCH_TIMEOUT_DEFAULT_MS

# enum pxos_cmd_type
GET_INFO, ALLOC, FREE, WRITE, READ, COMPILE, KERNEL_INFO, KERNEL_FREE, LAUNCH, STATS, IDLE_HINT, \
    SESSION_CLOSE, MODEL_OPEN, MODEL_CLOSE = range(0x7000, 0x700E)
# pxos_status_errno() of the module, by status code
_ERRNO = {1: errno.EINVAL, 2: errno.ENOENT, 3: errno.EDQUOT, 4: errno.ENOMEM, 5: errno.EBADMSG, 6: errno.EINVAL,
          7: errno.EIO, 8: errno.ECANCELED, 9: errno.EBUSY, 10: errno.E2BIG, 11: errno.EOPNOTSUPP,
          12: errno.EIO, 13: errno.EEXIST, 14: errno.ERANGE, 15: errno.EROFS, 16: errno.ENODEV}


def _drm_iowr(nr: int, size: int) -> int:
    return (3 << 30) | (size << 16) | (ord("d") << 8) | nr


_MAP = _drm_iowr(0x41, 16)                     # drm_virtgpu_map
_EXECBUFFER = _drm_iowr(0x42, 40)              # drm_virtgpu_execbuffer
_GETPARAM = _drm_iowr(0x43, 16)
_RESOURCE_CREATE = _drm_iowr(0x44, 56)
_WAIT = _drm_iowr(0x48, 8)                     # drm_virtgpu_3d_wait
_GET_CAPS = _drm_iowr(0x49, 24)
_GEM_CLOSE = (1 << 30) | (8 << 16) | (ord("d") << 8) | 0x09
_FENCE_FD_OUT = 0x02
_PARAM_3D_FEATURES = 1
_HDR = struct.Struct("<IIQIB3x")
_RESP = struct.Struct("<IIQIB3xII128s")
_ENVELOPE = struct.Struct("<IHHIIQQ")  # struct pxos_drm_submit
_TRANSFER = struct.Struct("<QQQ")


def _ioctl(fd: int, request: int, buf: bytearray) -> None:
    import fcntl

    fcntl.ioctl(fd, request, buf, True)


class _Bo:
    """A 3D buffer resource of the render node, mapped."""

    def __init__(self, fd: int, size: int):
        size = -(-size // PAGE) * PAGE
        args = bytearray(struct.pack("<14I", 0, 64, 0, size, 1, 1, 1, 0, 0, 0, 0, 0, size, 0))
        _ioctl(fd, _RESOURCE_CREATE, args)  # PIPE_BUFFER, R8_UNORM, width = size
        self.fd, self.size = fd, size
        self.handle, self.res_handle = struct.unpack_from("<II", args, 40)
        m = bytearray(struct.pack("<QII", 0, self.handle, 0))
        _ioctl(fd, _MAP, m)
        self.map = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE,
                             offset=struct.unpack_from("<Q", m)[0])

    def close(self) -> None:
        self.map.close()
        try:
            _ioctl(self.fd, _GEM_CLOSE, bytearray(struct.pack("<II", self.handle, 0)))
        except OSError:
            pass


class _Pending:
    """A submitted request: its fence fd and where its reply lands."""

    __slots__ = ("bo", "fence_fd", "offset", "slot", "token", "what")

    def __init__(self, bo: _Bo, offset: int, fence_fd: int, what: int, slot: int = -1, token: int = 0):
        self.bo, self.offset, self.fence_fd, self.what, self.slot, self.token = bo, offset, fence_fd, what, slot, token

    def wait(self, timeout_ms: int | None) -> bool:
        p = select.poll()
        p.register(self.fence_fd, select.POLLIN)
        return bool(p.poll(timeout_ms))

    def done(self) -> bool:
        return self.wait(0)

    def close(self) -> None:
        if self.fence_fd >= 0:
            os.close(self.fence_fd)
            self.fence_fd = -1


def is_pxos_render_node(path: str = RENDER_NODE) -> bool:
    """True when ``path`` is a virtio-gpu render node whose device offers the pxOS capset."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return _capset(fd) is not None
    finally:
        os.close(fd)


def _capset(fd: int) -> tuple[int, int] | None:
    data = C.create_string_buffer(16)
    args = bytearray(struct.pack("<IIQII", CAPSET_ID, CAPSET_VERSION, C.addressof(data), 16, 0))
    try:
        _ioctl(fd, _GET_CAPS, args)
    except OSError:
        return None
    magic, major, minor = struct.unpack_from("<IHH", data.raw)
    return (major, minor) if magic == MAGIC else None


class DrmTransport:
    """The module's ioctls, served over the render node (one session per instance)."""

    def __init__(self, path: str | None = None):
        self.path = path or os.environ.get("PXOS_DRM_DEVICE", RENDER_NODE)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        try:
            abi = _capset(self.fd)
            if abi is None:
                raise OSError(errno.ENODEV, f"{self.path}: no pxOS capset (not a pxOS virtio-gpu device)")
            if abi[0] != ABI_MAJOR:
                raise OSError(errno.EPROTO, f"{self.path}: the device speaks pxOS ABI {abi[0]}.{abi[1]}")
            self._small = _Bo(self.fd, SMALL_REPLY)
            self._slots = _Bo(self.fd, MAX_SUBMITTED * SLOT)
        except BaseException:
            os.close(self.fd)
            raise
        self._big: _Bo | None = None
        self._data: _Bo | None = None  # WRITE's bytes, mapped: the device reads them from its pages
        self._free_slots = list(range(MAX_SUBMITTED - 1, -1, -1))
        self._submitted: list[_Pending] = []   # SUBMIT tokens not reaped, oldest first
        self._orphans: list[_Pending] = []     # timed-out LAUNCHes: their slot is freed when done
        self._next_token = 0
        self.session_id = 0
        self.counters = {"requests_total": 0, "requests_failed": 0, "bytes_written": 0, "bytes_read": 0}

    def close(self) -> None:
        for p in self._submitted + self._orphans:
            p.close()
        for bo in (self._small, self._slots, self._big, self._data):
            if bo is not None:
                bo.close()
        os.close(self.fd)  # the context goes: the device closes the session

    # ---- one request --------------------------------------------------------------------
    def _send(self, body: bytes, bo: _Bo, offset: int = 0, data: _Bo | None = None, *,
              fence: bool = True) -> _Pending:
        bo.map[offset:offset + RESP_HDR] = bytes(RESP_HDR)  # cleared: an untouched reply means none came
        cmd = _ENVELOPE.pack(MAGIC, ABI_MAJOR, ABI_MINOR, bo.res_handle, data.res_handle if data else 0,
                             offset, 0) + body
        buf = C.create_string_buffer(cmd, len(cmd))
        # The kernel holds these resources until the submit's fence signals.
        handles = (C.c_uint32 * 2)(bo.handle, data.handle if data else 0)
        args = bytearray(struct.pack("<IIQQIiII", _FENCE_FD_OUT if fence else 0, len(cmd), C.addressof(buf),
                                     C.addressof(handles), 2 if data else 1, -1, 0, 0))
        _ioctl(self.fd, _EXECBUFFER, args)
        self.counters["requests_total"] += 1
        return _Pending(bo, offset, struct.unpack_from("<i", args, 28)[0], struct.unpack_from("<I", body)[0])

    def _finish(self, p: _Pending, res) -> bytes:
        """The reply of a completed request; raises OSError as the module's ioctl would."""
        p.close()
        raw = p.bo.map[p.offset:p.offset + RESP_HDR]
        rtype, _f, _fence, ctx, _r, status, _plen, message = _RESP.unpack(raw)
        if rtype != RESP_TYPE:
            self.counters["requests_failed"] += 1
            raise OSError(errno.EPROTO, "the device answered no reply (it refused the submit: see the guest's dmesg)")
        self.session_id = ctx
        if res is not None:
            res.status, res.message = status, message.split(b"\0", 1)[0][:127]
        if status:
            self.counters["requests_failed"] += 1
            raise OSError(_ERRNO.get(status, errno.EIO), os.strerror(_ERRNO.get(status, errno.EIO)))
        return raw

    def call(self, body: bytes, res, size: int = SMALL_REPLY, data: _Bo | None = None) -> memoryview:
        """Send ``body``, wait for its reply (up to ``size`` bytes) and return it."""
        bo = self._small
        if size > SMALL_REPLY:
            if self._big is None or self._big.size < size:
                if self._big is not None:
                    self._big.close()
                self._big = _Bo(self.fd, size)
            bo = self._big
        p = self._send(body, bo, 0, data, fence=False)
        p.fence_fd = -1
        self._wait_bo(bo)
        self._finish(p, res)
        return memoryview(bo.map)[:size]

    def _wait_bo(self, bo: _Bo) -> None:
        """Until every fence on ``bo`` signalled (VIRTGPU_WAIT: no sync_file per request;
        the kernel gives up after 15 s with EBUSY, so ask again)."""
        while True:
            try:
                _ioctl(self.fd, _WAIT, bytearray(struct.pack("<II", bo.handle, 0)))
                return
            except OSError as e:
                if e.errno not in (errno.EBUSY, errno.EINTR):
                    raise

    # ---- the module's ioctls ------------------------------------------------------------
    def ioctl(self, name: str, io) -> None:
        getattr(self, "_ioc_" + name.lower())(io)

    def _ioc_info(self, io) -> None:
        r = self.call(_HDR.pack(GET_INFO, 0, 0, 0, 0) + struct.pack("<HHI", ABI_MAJOR, ABI_MINOR, 0), io.res)
        (_magic, io.abi_major, io.abi_minor, io.vm_id, _flags, io.memory_quota, io.memory_used,
         io.compute_share_pct, io.compute_cap_pct, io.max_rank, io.max_bindings, io.max_source_bytes,
         io.max_name, io.max_transfer_bytes, io.max_buffer_bytes, io.max_inflight, io.max_kernels,
         backend, device) = struct.unpack_from("<IHHIIQQIIIIIIQQII16s64s", r, RESP_HDR)
        io.backend, io.device_name = backend.split(b"\0")[0], device.split(b"\0")[0]
        io.ioctl_version, io.session_id = 1, self.session_id

    def _ioc_alloc(self, io) -> None:
        body = _HDR.pack(ALLOC, 0, 0, 0, 0) + struct.pack("<II8Q", io.dtype, io.rank, *io.dims)
        io.handle, io.nbytes = struct.unpack_from("<QQ", self.call(body, io.res), RESP_HDR)

    def _ioc_free(self, io) -> None:
        self.call(_HDR.pack(FREE, 0, 0, 0, 0) + struct.pack("<Q", io.handle), io.res)

    def _ioc_kernel_free(self, io) -> None:
        self.call(_HDR.pack(KERNEL_FREE, 0, 0, 0, 0) + struct.pack("<Q", io.kernel_id), io.res)

    def _ioc_write(self, io) -> None:
        io.done = 0
        while io.done < io.length:
            n = min(io.length - io.done, MAX_TRANSFER)
            if self._data is None or self._data.size < n:
                if self._data is not None:
                    self._data.close()
                self._data = _Bo(self.fd, n)
            C.memmove(C.addressof(C.c_char.from_buffer(self._data.map)), io.user_ptr + io.done, n)
            body = _HDR.pack(WRITE, 0, 0, 0, 0) + _TRANSFER.pack(io.handle, io.offset + io.done, n)
            self.call(body, io.res, data=self._data)
            io.done += n
            self.counters["bytes_written"] += n

    def _ioc_read(self, io) -> None:
        io.done = 0
        while io.done < io.length:
            n = min(io.length - io.done, MAX_TRANSFER)
            body = _HDR.pack(READ, 0, 0, 0, 0) + _TRANSFER.pack(io.handle, io.offset + io.done, n)
            r = self.call(body, io.res, RESP_HDR + n)
            if struct.unpack_from("<I", r, 28)[0] != n:  # payload_len: every byte asked for
                raise OSError(errno.EPROTO, "READ: short reply")
            C.memmove(io.user_ptr + io.done, bytes(r[RESP_HDR:RESP_HDR + n]), n)
            io.done += n
            self.counters["bytes_read"] += n

    def _ioc_compile(self, io) -> None:
        src = C.string_at(io.source_ptr, io.source_len)
        body = _HDR.pack(COMPILE, 0, 0, 0, 0) + struct.pack("<II", len(src), 0) + src
        try:
            r = self.call(body, io.res)
        except OSError as e:
            if e.errno == errno.EBADMSG:  # the diagnostics came with the refusal
                self._compile_out(io, self._small.map[:SMALL_REPLY])
            raise
        self._compile_out(io, r)

    @staticmethod
    def _compile_out(io, r) -> None:
        io.nkernels, io.ndiags = struct.unpack_from("<II", r, RESP_HDR)
        C.memmove(C.addressof(io.kernels), bytes(r[RESP_HDR + 8:RESP_HDR + 8 + C.sizeof(io.kernels)]),
                  C.sizeof(io.kernels))
        off = RESP_HDR + 8 + C.sizeof(io.kernels)
        C.memmove(C.addressof(io.diags), bytes(r[off:off + C.sizeof(io.diags)]), C.sizeof(io.diags))

    def _ioc_kernel_info(self, io) -> None:
        r = self.call(_HDR.pack(KERNEL_INFO, 0, 0, 0, 0) + struct.pack("<Q", io.kernel_id), io.res)
        (io.kernel_id, io.nparams, io.class_hint, io.priority, io.nstatements,
         io.name) = struct.unpack_from("<QIIII64s", r, RESP_HDR)
        C.memmove(C.addressof(io.params), bytes(r[RESP_HDR + 88:RESP_HDR + 88 + C.sizeof(io.params)]),
                  C.sizeof(io.params))

    def _ioc_stats(self, io) -> None:
        r = self.call(_HDR.pack(STATS, 0, 0, 0, 0), io.res)
        (io.memory_quota, io.memory_used, io.memory_device_bytes, io.memory_host_bytes, io.launches_total,
         io.launches_failed, io.device_ns_total, io.queue_depth, io.inflight, io.compute_share_pct,
         io.compute_cap_pct, io.achieved_share_ppm, io.nbuffers, io.nkernels) = struct.unpack_from(
            "<7Q7I", r, RESP_HDR)
        io.sessions_open = 1  # this transport sees its own session only
        for k, v in self.counters.items():
            setattr(io, k, v)

    def _ioc_idle_hint(self, io) -> None:
        self.call(_HDR.pack(IDLE_HINT, 0, 0, 0, 0) + struct.pack("<II", io.idle, 0), io.res)

    def _ioc_model_open(self, io) -> None:
        body = _HDR.pack(MODEL_OPEN, 0, 0, 0, 0) + struct.pack("<64s", bytes(io.name))
        (io.model_id, io.meta_handle, io.meta_bytes, io.model_bytes,
         io.ntensors, _) = struct.unpack_from("<QQQQII", self.call(body, io.res), RESP_HDR)

    def _ioc_model_close(self, io) -> None:
        self.call(_HDR.pack(MODEL_CLOSE, 0, 0, 0, 0) + struct.pack("<Q", io.model_id), io.res)

    # ---- LAUNCH, SUBMIT, REAP: each launch in a slot of its own ----------------------------
    def _launch_send(self, io) -> _Pending:
        self._reap_orphans()
        if not self._free_slots:
            raise OSError(errno.EBUSY, "too many launches in flight: reap first")
        slot = self._free_slots.pop()
        body = (_HDR.pack(LAUNCH, 0, 0, 0, 0) + struct.pack("<QIIII", io.kernel_id, io.nbindings, io.priority,
                                                             io.class_hint, 0)
                + C.string_at(io.bindings_ptr, 80 * io.nbindings))
        try:
            p = self._send(body, self._slots, slot * SLOT)
        except BaseException:
            self._free_slots.append(slot)
            raise
        p.slot = slot
        return p

    def _launch_done(self, p: _Pending, io) -> None:
        try:
            r = None
            try:
                self._finish(p, io.res)
            finally:
                r = self._slots.map[p.offset:p.offset + 200]
                (io.launch_id, io.device_ns, io.queue_ns, io.total_ns,
                 io.class_assigned, _) = struct.unpack_from("<QQQQII", r, RESP_HDR)
        finally:
            self._free_slots.append(p.slot)

    def _ioc_launch(self, io) -> None:
        p = self._launch_send(io)
        if not p.wait(io.timeout_ms or WAIT_DEFAULT_MS):
            self._orphans.append(p)  # still runs on the host; its slot waits for it
            raise OSError(errno.ETIMEDOUT, "launch not finished in time (it may still run)")
        self._launch_done(p, io)

    def _ioc_submit(self, io) -> None:
        if len(self._submitted) >= MAX_SUBMITTED:
            raise OSError(errno.EBUSY, "too many submits not reaped")
        p = self._launch_send(io)
        self._next_token += 1
        p.token = io.token = self._next_token
        self._submitted.append(p)

    def _ioc_reap(self, io) -> None:
        wanted = [p for p in self._submitted if io.token in (0, p.token)]
        io.pending = len(self._submitted)
        if not wanted:
            raise OSError(errno.ENOENT, "no such submit")
        while True:
            ready = next((p for p in wanted if p.done()), None)
            if ready is not None:
                break
            if not io.flags & 1:
                raise OSError(errno.EAGAIN, "not finished")
            self.poll(None, wanted)
        self._submitted.remove(ready)
        io.token, io.pending = ready.token, len(self._submitted)
        self._launch_done(ready, io)

    def poll(self, timeout_ms: int | None, pending: list[_Pending] | None = None) -> bool:
        """True when a submitted launch finished (a fence of one signalled)."""
        pending = self._submitted if pending is None else pending
        if not pending:
            return False
        p = select.poll()
        for q in pending:
            p.register(q.fence_fd, select.POLLIN)
        return bool(p.poll(timeout_ms))

    def _reap_orphans(self) -> None:
        for p in [p for p in self._orphans if p.done()]:
            self._orphans.remove(p)
            p.close()
            self._free_slots.append(p.slot)
