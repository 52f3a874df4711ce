"""The host's error hierarchy: everything pxOS raises on the host derives from PxosError.

Two channels (docs/protocol.md): what a guest gets wrong becomes a response code in its
reply and never raises across the virtqueue; what goes wrong on the host raises one of
these. Each class carries the PXOS wire status it maps to (``status``), so the device
and the gRPC service translate errors in one place.
"""

from __future__ import annotations


class PxosError(Exception):
    """Root of every pxOS host error."""

    #: Name of the PXOS wire status (``PXOS_S_*`` in guest_driver/include/uapi/pxos_gpu.h).
    status = "PXOS_S_INTERNAL"


class ConfigError(PxosError, ValueError):
    status = "PXOS_S_INVALID"


class SocketPathRefused(ConfigError):
    """A VM socket named outside the daemon's ``socket_dir`` (by the config or AddVM): the
    daemon creates sockets, and directories, nowhere else."""


class InvalidArgument(PxosError, ValueError):
    """A request is malformed: bad dtype, shape, offset, length, name."""

    status = "PXOS_S_INVALID"


class UnsupportedDtype(InvalidArgument):
    """A dtype the executor cannot hold on its device (wgpu: float64 and int64, which WGSL
    lacks). An ALLOC or a launch that needs one fails with PXOS_S_INVALID; docs/operations.md
    lists each backend's dtypes."""


class QuotaBelowUsage(InvalidArgument):
    """A memory quota cut below what the VM holds now: refused, so that the guest's next
    launch does not fail for lack of room it already had (free buffers first)."""

    def __init__(self, vm_id: int, quota: int, usage: int):
        self.vm_id, self.quota, self.usage = vm_id, quota, usage
        super().__init__(
            f"VM {vm_id} holds {usage} bytes now; a memory quota of {quota} bytes is below that "
            f"(refused: the guest's next launches would fail; free buffers first, cut to at least {usage}, "
            "or evict its buffers to host RAM: quota set --evict)"
        )


class NotFound(PxosError, KeyError):
    """A handle, kernel or VM that does not exist (or belongs to someone else: the two are
    indistinguishable on purpose)."""

    status = "PXOS_S_NOT_FOUND"

    def __str__(self) -> str:  # KeyError quotes its argument; we want the sentence
        return str(self.args[0]) if self.args else "not found"


class AlreadyExists(PxosError):
    status = "PXOS_S_EXISTS"


class QuotaExceeded(PxosError):
    """An allocation (or a launch's temporaries) would take a VM over its memory quota."""

    status = "PXOS_S_QUOTA"

    def __init__(self, vm_id: int, quota: int, usage: int, request: int, what: str = "allocation"):
        self.vm_id, self.quota, self.usage, self.request = vm_id, quota, usage, request
        super().__init__(
            f"VM {vm_id}: {what} of {request} bytes exceeds its memory quota "
            f"({usage} of {quota} bytes in use, {max(quota - usage, 0)} free)"
        )


class HostLimitExceeded(PxosError):
    """A VM would make the daemon hold more host memory than its per-VM limit allows
    (compiled kernels past KERNEL_HOST_BUDGET_BYTES; docs/memory.md, "Host memory")."""

    status = "PXOS_S_QUOTA"


class OutOfDeviceMemory(PxosError):
    """The device pool (and, with overcommit, the host backing budget) cannot hold it."""

    status = "PXOS_S_NO_DEVICE_MEMORY"


class PrimitiveError(PxosError):
    """A primitive program failed to compile or to bind; ``diagnostics`` lists every problem."""

    status = "PXOS_S_COMPILE"

    def __init__(self, message: str, diagnostics=()):
        self.diagnostics = tuple(diagnostics)
        super().__init__(message)


class CompileTimeout(PrimitiveError):
    """A compile ran past the host's time limit in its worker process, which was killed
    (docs/scheduling.md "Compiles"): the source is rejected with one ``limit`` diagnostic
    that has no place in the source (line 0, column 0)."""

    def __init__(self, limit_s: float, cpu_s: float, wall_s: float):
        from primitive_lang import Code, Diagnostic

        self.limit_s, self.cpu_s, self.wall_s = limit_s, cpu_s, wall_s
        message = (f"compiling this source took more than the host's limit of {limit_s:g} s "
                   f"({cpu_s:.2f} s of CPU in {wall_s:.2f} s); it was stopped, nothing was compiled")
        super().__init__(message, (Diagnostic(Code.LIMIT, 0, 0, message),))


class CompileFailed(PxosError):
    """A compile worker ended before it answered (it crashed or was killed), or the
    compiler failed on the source: a host fault, logged; another compile may succeed."""


class LaunchFailed(PxosError):
    """The executor failed while running a launch (an error of the backend, not the guest)."""

    status = "PXOS_S_EXEC"


class Cancelled(PxosError):
    """The launch was cancelled: its VM was reset or unregistered, or the daemon stopped."""

    status = "PXOS_S_CANCELLED"


class VMGone(Cancelled):
    """The operator removed the VM from pxos-hvd while its guest ran: what it had in flight
    and everything it sends afterwards ends with this (wire ``PXOS_S_VM_GONE``, ABI 1.2), so
    guest programs stop with a clear message instead of waiting on a device that is gone."""

    status = "PXOS_S_VM_GONE"


class Busy(PxosError):
    """A per-VM limit on requests in flight was reached; retry after one completes."""

    status = "PXOS_S_BUSY"


class ProtocolError(PxosError):
    """The vhost-user peer broke the protocol; ends that connection, nothing else."""


class GuestMemoryError(PxosError):
    """A guest address or length lies outside the guest memory the VMM shared with us."""

    status = "PXOS_S_INVALID"


class BindError(PrimitiveError):
    """A launch's bindings do not fit its kernel: a missing param, a dtype or shape that
    does not match, a buffer too small."""

    status = "PXOS_S_BIND"


class IndexOutOfRange(LaunchFailed):
    """A launch's runtime index (a GATHER id, a SLICE or SLICE_WRITE start given by a
    param) lies outside its tensor: a typed launch error, never a wrap or a read outside
    the buffer (docs/language.md)."""

    status = "PXOS_S_RANGE"


class ReadOnly(PxosError):
    """A write, free or output binding of a read-only buffer (a shared model's tensor)."""

    status = "PXOS_S_READ_ONLY"


class ModelError(PxosError, ValueError):
    """A model file cannot be loaded: not GGUF, an unsupported architecture or tensor type,
    a tensor over the language's limits."""

    status = "PXOS_S_INVALID"


class ModelInUse(PxosError):
    """A model cannot be removed while a VM has it open or a launch reads its tensors."""

    status = "PXOS_S_BUSY"
