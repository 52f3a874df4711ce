"""The PXOS command handlers: typed command in, typed response out, through the Hypervisor.

One ``_handle_<command>`` per PXOS command and one dispatch table. Each handler calls the
Hypervisor API for this device's VM, with ``hdr.ctx_id`` as the session, and returns a
response dataclass; LAUNCH returns ``Deferred`` (the chain is held until the work is
done, then ``launch_response`` turns the completion into the response). What the
hypervisor refuses (``PxosError``: not found, quota, compile and bind errors ...) becomes
an ``ErrorResp`` with that error's wire status and text; nothing raises out of
``handle``. docs/protocol.md gives each command's semantics.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from hypervisor import Hypervisor
from hypervisor.errors import PxosError
from hypervisor.types import Completion, LaunchResult, Scalar
from virtio_backend import wire
from virtio_backend.gpu import commands as c
from virtio_backend.gpu.decode import AST_TO_DTYPE, DTYPE_TO_AST
from virtio_backend.wire import PxosBindingKind, PxosClass, PxosDirection, PxosStatus

log = logging.getLogger("pxos.virtio.gpu")

_ABI_MAJOR = wire.PXOS_ABI_MAJOR
_NO_DATA = c.NoDataResp()  # immutable and field-less: one instance serves every success without data


@dataclass(frozen=True, slots=True)
class Deferred:
    """A LAUNCH the hypervisor accepted: its response comes when ``completion`` is done."""

    completion: Completion


def error_response(exc: PxosError) -> c.ErrorResp:
    """The wire form of a hypervisor error: its status, its text, its diagnostics."""
    try:
        status = PxosStatus[exc.status]
    except KeyError:  # an error class naming no wire status is a host bug
        status = PxosStatus.PXOS_S_INTERNAL
    diags = tuple(
        c.Diagnostic(d.line, d.column, str(d.code), d.message) for d in getattr(exc, "diagnostics", ())
    )
    return c.ErrorResp(status, str(exc), diags)


def _class_name(hint: PxosClass) -> str | None:
    return None if hint == PxosClass.PXOS_CLASS_NONE else hint.name.removeprefix("PXOS_CLASS_")


def _wire_class(name: str | None) -> PxosClass:
    try:
        return PxosClass[f"PXOS_CLASS_{name}"] if name else PxosClass.PXOS_CLASS_NONE
    except KeyError:
        return PxosClass.PXOS_CLASS_NONE


def launch_response(result: LaunchResult) -> c.LaunchResp:
    """The LAUNCH response for a finished (or failed, or cancelled) launch."""
    try:
        status = PxosStatus[result.status]
    except KeyError:
        status = PxosStatus.PXOS_S_INTERNAL
    message = "" if result.error is None else str(result.error)
    return c.LaunchResp(status, message, result.launch_id, result.device_ns, result.queue_ns,
                        result.total_ns, _wire_class(result.wclass))


class PxosControl:
    """Serves the PXOS commands of one VM's device against the Hypervisor."""

    def __init__(self, hv: Hypervisor, vm_id: int, max_inflight: int):
        self.hv = hv
        self.vm_id = vm_id
        self.max_inflight = max_inflight  # reported by GET_INFO: the control queue's size
        self._device: tuple[str, str] | None = None  # (backend, device name), read at first use

    def handle(self, cmd: c.Command) -> c.Response | Deferred:
        """Run one command; a guest's mistake comes back as an ``ErrorResp``."""
        try:
            return _TABLE[type(cmd)](self, cmd)
        except PxosError as exc:
            return error_response(exc)

    def _handle_get_info(self, cmd: c.GetInfoCmd) -> c.Response:
        if cmd.abi_major != _ABI_MAJOR:
            return c.ErrorResp(
                PxosStatus.PXOS_S_UNSUPPORTED,
                f"guest speaks PXOS ABI {cmd.abi_major}.{cmd.abi_minor}; this device speaks "
                f"{wire.PXOS_ABI_MAJOR}.{wire.PXOS_ABI_MINOR}",
            )
        # Quota, usage and shares change at run time (pxosctl, allocations): read every
        # time. Backend and device name are fixed for the daemon's life (cached above).
        quota, used, share, cap = self.hv.vm_usage(self.vm_id)
        if self._device is None:  # fixed for the daemon's life; asked here, on the worker
            dev = self.hv.device_info()
            self._device = (dev.backend, dev.device_name)
        return c.InfoResp(self.vm_id, quota, used, round(share), round(cap or 0),
                          self.max_inflight, *self._device)

    def _handle_alloc(self, cmd: c.AllocCmd) -> c.Response:
        buf = self.hv.alloc(self.vm_id, DTYPE_TO_AST[cmd.dtype], cmd.shape, session=cmd.hdr.session)
        return c.AllocResp(buf.handle, buf.nbytes)

    def _handle_free(self, cmd: c.FreeCmd) -> c.Response:
        self.hv.free(self.vm_id, cmd.handle, session=cmd.hdr.session)
        return _NO_DATA

    def _handle_write(self, cmd: c.WriteCmd) -> c.Response:
        # The chain's readable segments go straight to the hypervisor: guest memory is
        # copied once, into the buffer (no join, no intermediate bytes).
        self.hv.write(self.vm_id, cmd.handle, cmd.offset, cmd.data, session=cmd.hdr.session)
        return _NO_DATA

    def _handle_read(self, cmd: c.ReadCmd) -> c.Response:
        n = self.hv.read_into(self.vm_id, cmd.handle, cmd.offset, cmd.dst, session=cmd.hdr.session)
        return c.ReadResp(n)

    def _handle_compile(self, cmd: c.CompileCmd) -> c.Response:
        kernels = self.hv.compile(self.vm_id, cmd.source, session=cmd.hdr.session)
        return c.CompileResp(tuple(c.KernelDesc(k.kernel_id, k.name, len(k.checked.params)) for k in kernels))

    def _handle_kernel_info(self, cmd: c.KernelInfoCmd) -> c.Response:
        info = self.hv.kernel_info(self.vm_id, cmd.kernel_id, session=cmd.hdr.session)
        k = info.checked
        params = tuple(
            c.ParamDesc(p.name, AST_TO_DTYPE[p.type.dtype], _direction(k, p.name), _dims(p.type.shape))
            for p in k.params
        )
        hint = _wire_class(k.class_hint.value if k.class_hint is not None else None)
        return c.KernelInfoResp(info.kernel_id, info.name, hint, k.priority, k.statement_count, params)

    def _handle_kernel_free(self, cmd: c.KernelFreeCmd) -> c.Response:
        self.hv.free_kernel(self.vm_id, cmd.kernel_id, session=cmd.hdr.session)
        return _NO_DATA

    def launch_here(self, cmd: c.LaunchCmd, max_s: float) -> c.Response | Deferred | None:
        """LAUNCH on the serial fast path, from the VM's loop thread, which must never wait
        (``Hypervisor.launch_nowait``): None, nothing done, when the hypervisor's lock is
        held elsewhere (the worker takes the command then). Otherwise, when the launch is
        the device's only one, estimated at most ``max_s`` seconds, it runs on this thread
        and its response comes back at once; else it is queued (``Deferred``), as
        ``handle`` queues it, minus the hop through the worker. ``max_s=0``: queue only."""
        try:
            return self._handle_launch(cmd, max_s)
        except PxosError as exc:
            return error_response(exc)

    def _handle_launch(self, cmd: c.LaunchCmd, run_here_max_s: float | None = None) -> c.Response | Deferred | None:
        bindings: dict[str, int | Scalar] = {}
        for b in cmd.bindings:
            if b.kind == PxosBindingKind.PXOS_BIND_BUFFER:
                bindings[b.name] = int(b.value)
            else:
                bindings[b.name] = Scalar(b.value, DTYPE_TO_AST[b.dtype])
        if run_here_max_s is None:
            completion = self.hv.launch(self.vm_id, cmd.kernel_id, bindings, priority=cmd.priority,
                                        class_hint=_class_name(cmd.class_hint), session=cmd.hdr.session)
            return Deferred(completion)
        completion = self.hv.launch_nowait(self.vm_id, cmd.kernel_id, bindings, priority=cmd.priority,
                                           class_hint=_class_name(cmd.class_hint), session=cmd.hdr.session,
                                           run_here_max_s=run_here_max_s)
        if completion is None:  # the hypervisor's lock is busy: nothing was done
            return None
        if completion.done():  # ran on this thread (or already finished on the dispatcher's)
            return launch_response(completion.result)
        return Deferred(completion)

    def _handle_stats(self, cmd: c.StatsCmd) -> c.Response:
        s = self.hv.stats(self.vm_id)
        return c.StatsResp(
            memory_quota=s.memory_quota, memory_used=s.memory_used,
            memory_device_bytes=s.memory_device_bytes, memory_host_bytes=s.memory_host_bytes,
            launches_total=s.launches_total, launches_failed=s.launches_failed,
            device_ns_total=int(s.device_seconds_total * 1e9), queue_depth=s.queue_depth,
            inflight=s.inflight, compute_share_pct=round(s.share_pct), compute_cap_pct=round(s.cap_pct or 0),
            achieved_share_ppm=min(int(s.achieved_share * 1_000_000), 1_000_000),
            nbuffers=s.buffers, nkernels=s.kernels,
        )

    def _handle_idle_hint(self, cmd: c.IdleHintCmd) -> c.Response:
        self.hv.idle_hint(self.vm_id, cmd.idle)
        return _NO_DATA

    def _handle_session_close(self, cmd: c.SessionCloseCmd) -> c.Response:
        r = self.hv.close_session(self.vm_id, cmd.hdr.session)
        return c.SessionCloseResp(r.bytes_freed, r.buffers_freed, r.kernels_freed, r.launches_cancelled)


    def _handle_model_open(self, cmd: c.ModelOpenCmd) -> c.Response:
        m = self.hv.open_model(self.vm_id, cmd.name, session=cmd.hdr.session)
        return c.ModelOpenResp(m.model_id, m.meta_handle, m.meta_bytes, m.model_bytes, m.ntensors)

    def _handle_model_close(self, cmd: c.ModelCloseCmd) -> c.Response:
        self.hv.close_model(self.vm_id, cmd.model_id, session=cmd.hdr.session)
        return _NO_DATA


def _direction(kernel, name: str) -> PxosDirection:
    return PxosDirection[f"PXOS_DIR_{kernel.directions[name].name}"]


def _dims(shape) -> tuple[int, ...] | None:
    if shape is None:
        return None
    return tuple(d if isinstance(d, int) else wire.PXOS_DIM_SYMBOLIC for d in shape)


_TABLE = {
    c.GetInfoCmd: PxosControl._handle_get_info,
    c.AllocCmd: PxosControl._handle_alloc,
    c.FreeCmd: PxosControl._handle_free,
    c.WriteCmd: PxosControl._handle_write,
    c.ReadCmd: PxosControl._handle_read,
    c.CompileCmd: PxosControl._handle_compile,
    c.KernelInfoCmd: PxosControl._handle_kernel_info,
    c.KernelFreeCmd: PxosControl._handle_kernel_free,
    c.LaunchCmd: PxosControl._handle_launch,
    c.StatsCmd: PxosControl._handle_stats,
    c.IdleHintCmd: PxosControl._handle_idle_hint,
    c.SessionCloseCmd: PxosControl._handle_session_close,
    c.ModelOpenCmd: PxosControl._handle_model_open,
    c.ModelCloseCmd: PxosControl._handle_model_close,
}
