"""The guest library's Device API (guest_driver/python/pxos_guest.py) served straight by an
in-process Hypervisor: the same guest programs (pxos_llm) run on the host in tests,
without QEMU, and inside real guests in the e2e tests, unchanged.

Only the transport differs: calls go to the Hypervisor API a guest's requests reach
through the device (virtio_backend/gpu/control.py), with the same statuses.
"""

from __future__ import annotations

import errno
import sys
from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from hypervisor import errors as E
from hypervisor.types import Scalar

GUEST_PY = Path(__file__).resolve().parents[2] / "guest_driver" / "python"
if str(GUEST_PY) not in sys.path:
    sys.path.insert(0, str(GUEST_PY))

import pxos_guest as px  # noqa: E402  (a guest module: found through GUEST_PY)

_ERRNO = {"PXOS_S_NOT_FOUND": errno.ENOENT, "PXOS_S_QUOTA": errno.EDQUOT, "PXOS_S_BUSY": errno.EBUSY,
          "PXOS_S_RANGE": errno.ERANGE, "PXOS_S_READ_ONLY": errno.EROFS, "PXOS_S_CANCELLED": errno.ECANCELED}


def _device_error(what: str, exc: E.PxosError) -> px.PxosDeviceError:
    name = exc.status.removeprefix("PXOS_S_")
    code = px.STATUS_NAMES.index(name) if name in px.STATUS_NAMES else px.STATUS_NAMES.index("INTERNAL")
    res = px.Result(status=code, message=str(exc).encode()[: px.MAX_MESSAGE - 1])
    return px.PxosDeviceError(what, _ERRNO.get(exc.status, errno.EIO), res)


class HostDevice:
    """``HostDevice(hv, vm_id)``: one session of a VM, as ``pxos_guest.Device`` is one open
    file of /dev/pxos0."""

    def __init__(self, hv, vm_id: int, session: int = 1):
        self.hv, self.vm_id, self.session = hv, vm_id, session
        self._submitted: OrderedDict[int, object] = OrderedDict()

    def close(self) -> None:
        self.hv.close_session(self.vm_id, self.session)

    def __enter__(self) -> HostDevice:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _do(self, what: str, fn, *args, **kw):
        try:
            return fn(self.vm_id, *args, session=self.session, **kw)
        except E.PxosError as exc:
            raise _device_error(what, exc) from None

    def _transfer(self, name: str, handle: int, offset: int, array: np.ndarray) -> None:
        view = memoryview(array).cast("B")
        if name == "WRITE":
            self._do("write", self.hv.write, handle, offset, view)
        else:
            self._do("read", self.hv.read_into, handle, offset, [view])

    def info(self) -> dict:
        quota, used, share, cap = self.hv.vm_usage(self.vm_id)
        return {"vm_id": self.vm_id, "memory_quota": quota, "memory_used": used, "max_inflight": 64}

    def alloc(self, dtype, shape) -> px.Buffer:
        dt = np.dtype(dtype)
        info = self._do("alloc", self.hv.alloc, dt.name, tuple(int(d) for d in shape))
        return px.Buffer(self, info.handle, dt, tuple(int(d) for d in shape))

    def upload(self, array: np.ndarray) -> px.Buffer:
        buf = self.alloc(array.dtype, array.shape)
        buf.write(array)
        return buf

    def compile(self, source: str) -> dict[str, px.Kernel]:
        kernels = self._do("compile", self.hv.compile, source)
        return {k.name: px.Kernel(self, k.kernel_id, k.name) for k in kernels}

    def open_model(self, name: str) -> px.SharedModel:
        m = self._do("model open", self.hv.open_model, name)
        io = SimpleNamespace(model_id=m.model_id, meta_handle=m.meta_handle, meta_bytes=m.meta_bytes,
                             model_bytes=m.model_bytes, ntensors=m.ntensors)
        return px.SharedModel(self, name, io)

    def _call(self, name: str, io, what: str):
        if name == "MODEL_CLOSE":
            self._do(what, self.hv.close_model, io.model_id)
        elif name == "FREE":
            self._do(what, self.hv.free, io.handle)
        else:
            raise NotImplementedError(name)
        return io

    def submit(self, kernel: px.Kernel, *, priority: int | None = None, class_hint: str = "NONE",
               **bindings) -> int:
        wire = {n: v.handle if isinstance(v, px.Buffer) else Scalar(v) for n, v in bindings.items()}
        c = self._do(f"submit {kernel.name}", self.hv.launch, kernel.id, wire, priority=priority,
                     class_hint=None if class_hint == "NONE" else class_hint)
        self._submitted[c.launch_id] = c
        return c.launch_id

    def prepare(self, kernel: px.Kernel, *, priority: int | None = None, class_hint: str = "NONE",
                **bindings) -> SimpleNamespace:
        bound = dict(bindings)
        return SimpleNamespace(kernel=kernel, bindings=bound, priority=priority, class_hint=class_hint,
                               set=bound.__setitem__)

    def submit_prepared(self, p) -> int:
        return self.submit(p.kernel, priority=p.priority, class_hint=p.class_hint, **p.bindings)

    def reap(self, token: int = 0, *, wait: bool = True) -> px.LaunchResult | None:
        if not self._submitted:
            return None
        token = token or next(iter(self._submitted))
        c = self._submitted.pop(token)
        r = c.wait(600.0)
        if r.error is not None:
            raise _device_error("reap", r.error)
        return px.LaunchResult(r.launch_id, r.device_ns, r.queue_ns, r.total_ns, 0, token)

    def launch(self, kernel: px.Kernel, **kw) -> px.LaunchResult:
        return self.reap(self.submit(kernel, **kw))
