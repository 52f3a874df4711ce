"""pxos_guest: the guest's Python library for pxOS (standard library + NumPy only).

It wraps the ioctls of guest_driver/include/uapi/pxos_gpu.h (the ctypes structures below
mirror that header field for field; tests/unit/guest_driver checks sizes, offsets and
ioctl numbers against the C compiler's). They go to /dev/pxosN (pxos_gpu.ko), or, on a
guest with only the stock virtio_gpu driver, through its render node (pxos_drm.py, the
DRM transport: copy it beside this file): ``Device(transport="auto"|"module"|"drm")`` or
$PXOS_TRANSPORT; programs do not change::

    import numpy as np, pxos_guest as px
    with px.Device() as dev:
        a = dev.upload(np.ones((4, 3), np.float32))
        b = dev.upload(np.ones((3, 2), np.float32))
        c = dev.alloc(np.float32, (4, 2))
        mm = dev.compile(open("matmul.pxp").read())["mm"]
        dev.launch(mm, a=a, b=b, c=c)
        print(c.read())

Every failure raises PxosDeviceError (an OSError) carrying the device's status name and
message; a rejected program raises CompileError with its diagnostics, and a VM the
operator removed from pxos-hvd raises VMGone at its next request.
"""

from __future__ import annotations

import ctypes as C
import errno
import fcntl
import os
import select
import struct
from dataclasses import dataclass

import numpy as np

MAX_RANK, MAX_NAME, MAX_MESSAGE = 8, 64, 128
MAX_BINDINGS, MAX_PARAMS, MAX_KERNELS, MAX_DIAGS = 32, 32, 16, 16
MAX_SOURCE_BYTES = 65536
PRIORITY_DEFAULT = 0xFFFFFFFF
IOCTL_VERSION = 1
IOC_MAGIC = 0xE6
REAP_WAIT = 0x1

STATUS_NAMES = ("OK", "INVALID", "NOT_FOUND", "QUOTA", "NO_DEVICE_MEMORY", "COMPILE", "BIND", "EXEC",
                "CANCELLED", "BUSY", "TOO_LARGE", "UNSUPPORTED", "INTERNAL", "EXISTS", "RANGE",
                "READ_ONLY", "VM_GONE")
DTYPES = {1: np.dtype(np.float16), 2: np.dtype(np.float32), 3: np.dtype(np.float64),
          4: np.dtype(np.int32), 5: np.dtype(np.int64)}
DTYPE_CODES = {v: k for k, v in DTYPES.items()}
BIND_BUFFER, BIND_SCALAR_F64, BIND_SCALAR_I64 = 1, 2, 3
CLASSES = {"NONE": 0, "REALTIME": 1, "INTERACTIVE": 2, "THROUGHPUT": 3, "BATCH": 4}

u32, u64, u16 = C.c_uint32, C.c_uint64, C.c_uint16


class Result(C.Structure):
    _fields_ = [("status", u32), ("padding", u32), ("message", C.c_char * MAX_MESSAGE)]


class KernelDesc(C.Structure):
    _fields_ = [("kernel_id", u64), ("nparams", u32), ("padding", u32), ("name", C.c_char * MAX_NAME)]


class Diag(C.Structure):
    _fields_ = [("line", u32), ("column", u32), ("code", C.c_char * 24), ("message", C.c_char * MAX_MESSAGE)]


class ParamDesc(C.Structure):
    _fields_ = [("name", C.c_char * MAX_NAME), ("dtype", u32), ("direction", u32), ("rank", u32),
                ("padding", u32), ("dims", u64 * MAX_RANK)]


class Binding(C.Structure):
    _fields_ = [("name", C.c_char * MAX_NAME), ("kind", u32), ("dtype", u32), ("value", u64)]


class IocInfo(C.Structure):
    _fields_ = [("ioctl_version", u32), ("session_id", u32), ("abi_major", u16), ("abi_minor", u16),
                ("vm_id", u32), ("memory_quota", u64), ("memory_used", u64), ("compute_share_pct", u32),
                ("compute_cap_pct", u32), ("max_rank", u32), ("max_bindings", u32),
                ("max_source_bytes", u32), ("max_name", u32), ("max_transfer_bytes", u64),
                ("max_buffer_bytes", u64), ("max_inflight", u32), ("max_kernels", u32),
                ("backend", C.c_char * 16), ("device_name", C.c_char * 64), ("res", Result)]


class IocAlloc(C.Structure):
    _fields_ = [("dtype", u32), ("rank", u32), ("dims", u64 * MAX_RANK), ("handle", u64), ("nbytes", u64),
                ("res", Result)]


class IocFree(C.Structure):
    _fields_ = [("handle", u64), ("res", Result)]


class IocTransfer(C.Structure):
    _fields_ = [("handle", u64), ("offset", u64), ("length", u64), ("user_ptr", u64), ("done", u64),
                ("res", Result)]


class IocCompile(C.Structure):
    _fields_ = [("source_ptr", u64), ("source_len", u32), ("nkernels", u32), ("ndiags", u32),
                ("padding", u32), ("kernels", KernelDesc * MAX_KERNELS), ("diags", Diag * MAX_DIAGS),
                ("res", Result)]


class IocKernelInfo(C.Structure):
    _fields_ = [("kernel_id", u64), ("nparams", u32), ("class_hint", u32), ("priority", u32),
                ("nstatements", u32), ("name", C.c_char * MAX_NAME), ("params", ParamDesc * MAX_PARAMS),
                ("res", Result)]


class IocKernelFree(C.Structure):
    _fields_ = [("kernel_id", u64), ("res", Result)]


class IocLaunch(C.Structure):
    _fields_ = [("kernel_id", u64), ("bindings_ptr", u64), ("nbindings", u32), ("priority", u32),
                ("class_hint", u32), ("timeout_ms", u32), ("token", u64), ("launch_id", u64),
                ("device_ns", u64), ("queue_ns", u64), ("total_ns", u64), ("class_assigned", u32),
                ("padding", u32), ("res", Result)]


class IocReap(C.Structure):
    _fields_ = [("token", u64), ("flags", u32), ("pending", u32), ("launch_id", u64), ("device_ns", u64),
                ("queue_ns", u64), ("total_ns", u64), ("class_assigned", u32), ("padding", u32),
                ("res", Result)]


class IocStats(C.Structure):
    _fields_ = [("memory_quota", u64), ("memory_used", u64), ("memory_device_bytes", u64),
                ("memory_host_bytes", u64), ("launches_total", u64), ("launches_failed", u64),
                ("device_ns_total", u64), ("queue_depth", u32), ("inflight", u32),
                ("compute_share_pct", u32), ("compute_cap_pct", u32), ("achieved_share_ppm", u32),
                ("nbuffers", u32), ("nkernels", u32), ("sessions_open", u32), ("requests_total", u64),
                ("requests_failed", u64), ("bytes_written", u64), ("bytes_read", u64), ("res", Result)]


class IocIdleHint(C.Structure):
    _fields_ = [("idle", u32), ("padding", u32), ("res", Result)]


class IocModelOpen(C.Structure):
    _fields_ = [("name", C.c_char * MAX_NAME), ("model_id", u64), ("meta_handle", u64), ("meta_bytes", u64),
                ("model_bytes", u64), ("ntensors", u32), ("padding", u32), ("res", Result)]


class IocModelClose(C.Structure):
    _fields_ = [("model_id", u64), ("res", Result)]


def _iowr(nr: int, struct_type: type[C.Structure]) -> int:
    """Linux _IOWR(IOC_MAGIC, nr, struct) on x86 and arm64 (asm-generic/ioctl.h)."""
    return (3 << 30) | (C.sizeof(struct_type) << 16) | (IOC_MAGIC << 8) | nr


IOCTLS = {
    "INFO": _iowr(0x00, IocInfo), "ALLOC": _iowr(0x01, IocAlloc), "FREE": _iowr(0x02, IocFree),
    "WRITE": _iowr(0x03, IocTransfer), "READ": _iowr(0x04, IocTransfer),
    "COMPILE": _iowr(0x05, IocCompile), "KERNEL_INFO": _iowr(0x06, IocKernelInfo),
    "KERNEL_FREE": _iowr(0x07, IocKernelFree), "LAUNCH": _iowr(0x08, IocLaunch),
    "SUBMIT": _iowr(0x09, IocLaunch), "REAP": _iowr(0x0A, IocReap), "STATS": _iowr(0x0B, IocStats),
    "IDLE_HINT": _iowr(0x0C, IocIdleHint), "MODEL_OPEN": _iowr(0x0D, IocModelOpen),
    "MODEL_CLOSE": _iowr(0x0E, IocModelClose),
}


class PxosDeviceError(OSError):
    """An ioctl failed; ``status`` is the device's PXOS status name ("" when it was not asked)."""

    def __init__(self, what: str, err: int, res: Result | None = None):
        code = res.status if res is not None else 0
        # 0: the device was not asked (the driver refused first) or said OK.
        self.status = "" if code == 0 else STATUS_NAMES[code] if code < len(STATUS_NAMES) else str(code)
        self.detail = res.message.decode(errors="replace") if res is not None else ""
        text = f"{what}: {os.strerror(err)}"
        if self.status:
            text += f" [PXOS_S_{self.status}: {self.detail}]"
        super().__init__(err, text)


class VMGone(PxosDeviceError):
    """The operator removed this VM from pxos-hvd (PXOS_S_VM_GONE, ABI 1.2): nothing more will
    run on this device; a program should stop, saying so."""


def device_error(what: str, err: int, res: Result | None = None) -> PxosDeviceError:
    """The exception for a failed ioctl: VMGone when the VM was removed, else PxosDeviceError."""
    e = PxosDeviceError(what, err, res)
    return VMGone(what, err, res) if e.status == "VM_GONE" else e


@dataclass(frozen=True)
class Diagnostic:
    line: int
    column: int
    code: str
    message: str


class CompileError(PxosDeviceError):
    def __init__(self, what: str, err: int, res: Result, diagnostics: list[Diagnostic]):
        super().__init__(what, err, res)
        self.diagnostics = diagnostics


@dataclass(frozen=True)
class LaunchResult:
    launch_id: int
    device_ns: int
    queue_ns: int
    total_ns: int
    class_assigned: int
    token: int = 0


@dataclass(frozen=True)
class Param:
    name: str
    dtype: np.dtype
    direction: str        # "in", "out", "inout"
    shape: tuple[int | None, ...] | None   # None: any shape (float[]); None dims: symbolic


class Buffer:
    """A device buffer of one dtype and shape, owned by the Device's session."""

    def __init__(self, dev: Device, handle: int, dtype: np.dtype, shape: tuple[int, ...], *,
                 read_only: bool = False):
        self.dev, self.handle, self.dtype, self.shape = dev, handle, dtype, shape
        self.read_only = read_only  # a shared model's tensor: never written or freed

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def write(self, array: np.ndarray, offset: int = 0) -> None:
        data = np.ascontiguousarray(array, dtype=self.dtype)
        self.dev._transfer("WRITE", self.handle, offset, data)

    def read(self) -> np.ndarray:
        out = np.empty(self.shape, dtype=self.dtype)
        self.dev._transfer("READ", self.handle, 0, out)
        return out

    def free(self) -> None:
        if self.handle and not self.read_only:
            self.dev._call("FREE", IocFree(handle=self.handle), "free")
            self.handle = 0


class SharedModel:
    """A model the host's operator loaded, opened by this session (MODEL_OPEN): its
    metadata (``meta``: config, tokenizer, tensor table) and its tensors, read-only
    buffers shared with every VM, bound to launches like the session's own buffers."""

    def __init__(self, dev: Device, name: str, io: IocModelOpen):
        import json

        self.dev, self.name, self.model_id = dev, name, io.model_id
        self.model_bytes, self.ntensors = io.model_bytes, io.ntensors
        raw = np.empty(io.meta_bytes, dtype=np.uint8)
        dev._transfer("READ", io.meta_handle, 0, raw)
        self.meta = json.loads(raw.tobytes().decode("utf-8"))
        self.config = self.meta["config"]
        self.tensors = {n: Buffer(dev, t["handle"], np.dtype(t["dtype"]), tuple(t["shape"]), read_only=True)
                        for n, t in self.meta["tensors"].items()}

    def __getitem__(self, name: str) -> Buffer:
        return self.tensors[name]

    def close(self) -> None:
        if self.model_id:
            self.dev._call("MODEL_CLOSE", IocModelClose(model_id=self.model_id), f"model close {self.name}")
            self.model_id = 0


class Kernel:
    def __init__(self, dev: Device, kernel_id: int, name: str):
        self.dev, self.id, self.name = dev, kernel_id, name
        self._params: list[Param] | None = None

    def params(self) -> list[Param]:
        """The kernel's params (KERNEL_INFO, asked once)."""
        if self._params is None:
            self._params = self._kernel_info()
        return self._params

    def _kernel_info(self) -> list[Param]:
        io = self.dev._call("KERNEL_INFO", IocKernelInfo(kernel_id=self.id), f"kernel info {self.name}")
        out = []
        for p in io.params[: io.nparams]:
            shape = None if p.rank == 0xFFFFFFFF else tuple(
                None if d == 0xFFFFFFFFFFFFFFFF else int(d) for d in p.dims[: p.rank])
            out.append(Param(p.name.decode(), DTYPES.get(p.dtype, np.dtype(np.float32)),
                             {1: "in", 2: "out", 3: "inout"}.get(p.direction, "?"), shape))
        return out

    def free(self) -> None:
        self.dev._call("KERNEL_FREE", IocKernelFree(kernel_id=self.id), f"kernel free {self.name}")


class PreparedLaunch:
    """A launch whose wire bindings are built once (``Device.prepare``) and submitted many
    times (``Device.submit_prepared``), changing only scalar values in between: a decode
    loop then pays one ioctl per launch, not the building of its bindings."""

    def __init__(self, kernel: Kernel, io: IocLaunch, arr: C.Array, names: list[str]):
        self.kernel, self.io, self._arr = kernel, io, arr
        self._slots = dict(zip(names, arr, strict=False))

    def set(self, name: str, value: float | int) -> None:
        """Change a scalar binding's value (its dtype stays the param's)."""
        b = self._slots[name]
        if b.kind == BIND_SCALAR_I64:
            b.value = struct.unpack("<Q", struct.pack("<q", int(value)))[0]
        elif b.kind == BIND_SCALAR_F64:
            b.value = struct.unpack("<Q", struct.pack("<d", float(value)))[0]
        else:
            raise ValueError(f"{name} is bound to a buffer, not a scalar")


def choose_transport(transport: str | None = None) -> str:
    """"module" (/dev/pxosN of pxos_gpu.ko) or "drm" (the stock virtio_gpu driver's render
    node): as asked (argument, else $PXOS_TRANSPORT), or "auto": the module's device when
    it exists, else a render node that offers the pxOS capset."""
    want = transport or os.environ.get("PXOS_TRANSPORT", "auto")
    if want not in ("auto", "module", "drm"):
        raise ValueError(f"transport {want!r}: auto, module or drm")
    if want != "auto":
        return want
    if os.path.exists(os.environ.get("PXOS_DEVICE", "/dev/pxos0")):
        return "module"
    drm = _pxos_drm()
    return "drm" if drm.is_pxos_render_node(os.environ.get("PXOS_DRM_DEVICE", drm.RENDER_NODE)) else "module"


def _pxos_drm():
    """The DRM transport, pxos_drm.py: beside this file (copy both into a guest)."""
    try:
        import pxos_drm
    except ImportError:
        import sys

        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import pxos_drm
    return pxos_drm


class Device:
    """One session of pxOS: an open file of /dev/pxosN, or of the render node (the DRM
    transport, ``pxos_drm``); the file's lifetime is the session's. ``transport``: see
    ``choose_transport``; ``path`` names the device file of that transport."""

    def __init__(self, path: str | None = None, transport: str | None = None):
        self.transport = choose_transport(transport)
        self._drm = None
        if self.transport == "drm":
            self._drm = _pxos_drm().DrmTransport(path)
            self.path, self.fd = self._drm.path, self._drm.fd
        else:
            self.path = path or os.environ.get("PXOS_DEVICE", "/dev/pxos0")
            self.fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)

    def close(self) -> None:
        if self._drm is not None:
            self._drm.close()
            self._drm, self.fd = None, -1
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _ioctl(self, name: str, io: C.Structure) -> None:
        """One /dev/pxosN ioctl, or its DRM transport's rendering of it (same errnos)."""
        if self._drm is not None:
            self._drm.ioctl(name, io)
        else:
            fcntl.ioctl(self.fd, IOCTLS[name], io)

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, name: str, io: C.Structure, what: str) -> C.Structure:
        try:
            self._ioctl(name, io)
        except OSError as e:
            raise device_error(what, e.errno, io.res) from None
        return io

    def _transfer(self, name: str, handle: int, offset: int, array: np.ndarray) -> None:
        io = IocTransfer(handle=handle, offset=offset, length=array.nbytes, user_ptr=array.ctypes.data)
        self._call(name, io, name.lower())

    def info(self) -> dict:
        io = self._call("INFO", IocInfo(), "info")
        return {n: (getattr(io, n).decode() if isinstance(getattr(io, n), bytes) else getattr(io, n))
                for n, _ in IocInfo._fields_ if n != "res"}

    def stats(self) -> dict:
        io = self._call("STATS", IocStats(), "stats")
        return {n: getattr(io, n) for n, _ in IocStats._fields_ if n != "res"}

    def alloc(self, dtype, shape: tuple[int, ...]) -> Buffer:
        dt = np.dtype(dtype)
        if dt not in DTYPE_CODES or len(shape) > MAX_RANK:
            raise ValueError(f"alloc: dtype {dt} or rank {len(shape)} not supported")
        io = IocAlloc(dtype=DTYPE_CODES[dt], rank=len(shape))
        for i, d in enumerate(shape):
            io.dims[i] = int(d)
        self._call("ALLOC", io, f"alloc {dt}{list(shape)}")
        return Buffer(self, io.handle, dt, tuple(int(d) for d in shape))

    def upload(self, array: np.ndarray) -> Buffer:
        buf = self.alloc(array.dtype, array.shape)
        buf.write(array)
        return buf

    def compile(self, source: str) -> dict[str, Kernel]:
        data = source.encode()
        if len(data) > MAX_SOURCE_BYTES:
            raise ValueError(f"compile: source of {len(data)} bytes is over {MAX_SOURCE_BYTES}")
        text = C.create_string_buffer(data, len(data))
        io = IocCompile(source_ptr=C.addressof(text), source_len=len(data))
        try:
            self._ioctl("COMPILE", io)
        except OSError as e:
            diags = [Diagnostic(d.line, d.column, d.code.decode(), d.message.decode())
                     for d in io.diags[: io.ndiags]]
            if e.errno == errno.EBADMSG:
                raise CompileError("compile", e.errno, io.res, diags) from None
            raise device_error("compile", e.errno, io.res) from None
        return {k.name.decode(): Kernel(self, k.kernel_id, k.name.decode()) for k in io.kernels[: io.nkernels]}

    @staticmethod
    def _bindings(bindings: dict[str, Buffer | float | int],
                  scalar_dtypes: dict[str, np.dtype] | None = None) -> C.Array:
        """Wire bindings. A scalar's dtype is its param's (scalar_dtypes), else its NumPy
        type's, else float64 / int64; the value travels as binary64 or int64 bits."""
        if len(bindings) > MAX_BINDINGS:
            raise ValueError(f"launch: {len(bindings)} bindings, at most {MAX_BINDINGS}")
        arr = (Binding * max(len(bindings), 1))()
        for b, (name, value) in zip(arr, bindings.items(), strict=False):
            b.name = name.encode()
            if isinstance(value, Buffer):
                b.kind, b.dtype, b.value = BIND_BUFFER, 0, value.handle
                continue
            dt = (scalar_dtypes or {}).get(name)
            if dt is None:
                dt = value.dtype if isinstance(value, np.generic) else np.dtype(
                    np.int64 if isinstance(value, int) and not isinstance(value, bool) else np.float64)
            if dt not in DTYPE_CODES:
                raise ValueError(f"launch: scalar {name} of dtype {dt} is not supported")
            b.dtype = DTYPE_CODES[dt]
            if dt.kind == "i":
                b.kind = BIND_SCALAR_I64
                b.value = struct.unpack("<Q", struct.pack("<q", int(value)))[0]
            else:
                b.kind = BIND_SCALAR_F64
                b.value = struct.unpack("<Q", struct.pack("<d", float(value)))[0]
        return arr

    def _launch_io(self, kernel: Kernel, bindings: dict, priority: int | None, class_hint: str,
                   timeout_ms: int) -> tuple[IocLaunch, C.Array]:
        scalars = {n for n, v in bindings.items() if not isinstance(v, Buffer)}
        dtypes = {p.name: p.dtype for p in kernel.params() if p.name in scalars} if scalars else {}
        arr = self._bindings(bindings, dtypes)
        io = IocLaunch(kernel_id=kernel.id, bindings_ptr=C.addressof(arr), nbindings=len(bindings),
                       priority=PRIORITY_DEFAULT if priority is None else priority,
                       class_hint=CLASSES[class_hint], timeout_ms=timeout_ms)
        return io, arr

    def launch(self, kernel: Kernel, *, priority: int | None = None, class_hint: str = "NONE",
               timeout_ms: int = 0, **bindings) -> LaunchResult:
        io, _keep = self._launch_io(kernel, bindings, priority, class_hint, timeout_ms)
        self._call("LAUNCH", io, f"launch {kernel.name}")
        return LaunchResult(io.launch_id, io.device_ns, io.queue_ns, io.total_ns, io.class_assigned)

    def submit(self, kernel: Kernel, *, priority: int | None = None, class_hint: str = "NONE",
               **bindings) -> int:
        io, _keep = self._launch_io(kernel, bindings, priority, class_hint, 0)
        self._call("SUBMIT", io, f"submit {kernel.name}")
        return io.token

    def prepare(self, kernel: Kernel, *, priority: int | None = None, class_hint: str = "NONE",
                **bindings) -> PreparedLaunch:
        io, arr = self._launch_io(kernel, bindings, priority, class_hint, 0)
        return PreparedLaunch(kernel, io, arr, list(bindings))

    def submit_prepared(self, p: PreparedLaunch) -> int:
        self._call("SUBMIT", p.io, f"submit {p.kernel.name}")
        return p.io.token

    def reap(self, token: int = 0, *, wait: bool = True) -> LaunchResult | None:
        """A finished submit (token 0: any); None when nothing is pending, or when none
        finished and wait is False. A launch that failed raises, as launch() does."""
        io = IocReap(token=token, flags=REAP_WAIT if wait else 0)
        try:
            self._ioctl("REAP", io)
        except OSError as e:
            # EAGAIN: none finished yet; ENOENT for token 0: none submitted at all.
            if e.errno == errno.EAGAIN or (e.errno == errno.ENOENT and token == 0):
                return None
            raise device_error("reap", e.errno, io.res) from None
        return LaunchResult(io.launch_id, io.device_ns, io.queue_ns, io.total_ns, io.class_assigned, io.token)

    def poll(self, timeout_s: float | None = None) -> bool:
        """True when a submitted launch finished (ready to reap)."""
        if self._drm is not None:
            return self._drm.poll(None if timeout_s is None else int(timeout_s * 1000))
        p = select.poll()
        p.register(self.fd, select.POLLIN)
        return bool(p.poll(None if timeout_s is None else int(timeout_s * 1000)))

    def open_model(self, name: str) -> SharedModel:
        """Open a model the host loaded (``pxosctl model add``), by name."""
        data = name.encode()
        if not data or len(data) >= MAX_NAME:
            raise ValueError(f"open_model: a model name is 1..{MAX_NAME - 1} bytes")
        io = self._call("MODEL_OPEN", IocModelOpen(name=data), f"model open {name}")
        return SharedModel(self, name, io)

    def idle_hint(self, idle: bool) -> None:
        self._call("IDLE_HINT", IocIdleHint(idle=int(idle)), "idle hint")
