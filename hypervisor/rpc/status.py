"""Hypervisor errors to gRPC status, in one table, and the typed detail that goes with them.

Every host error carries its PXOS wire status (``PxosError.status``, a ``PXOS_S_*`` name);
STATUS_TO_CODE maps those names to gRPC codes. The server aborts a call with the code and
a one-line message, and attaches an ErrorDetail (status name, message, diagnostics of a
compile or bind) in the trailing metadata key ERROR_DETAIL_KEY; ``RpcFailure.from_grpc``
reads it back on the client side.
"""

from __future__ import annotations

import grpc

from .. import errors as E
from . import pxos_pb2 as pb

#: Trailing metadata key of the serialized ErrorDetail ("-bin": gRPC carries it as bytes).
ERROR_DETAIL_KEY = "pxos-error-bin"

STATUS_TO_CODE: dict[str, grpc.StatusCode] = {
    "PXOS_S_INVALID": grpc.StatusCode.INVALID_ARGUMENT,
    "PXOS_S_NOT_FOUND": grpc.StatusCode.NOT_FOUND,
    "PXOS_S_QUOTA": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "PXOS_S_NO_DEVICE_MEMORY": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "PXOS_S_COMPILE": grpc.StatusCode.INVALID_ARGUMENT,
    "PXOS_S_BIND": grpc.StatusCode.INVALID_ARGUMENT,
    "PXOS_S_EXEC": grpc.StatusCode.INTERNAL,
    # gRPC's CANCELLED means "the caller cancelled"; a launch cancelled by a reset or by
    # the daemon stopping is the server aborting the operation.
    "PXOS_S_CANCELLED": grpc.StatusCode.ABORTED,
    "PXOS_S_BUSY": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "PXOS_S_TOO_LARGE": grpc.StatusCode.INVALID_ARGUMENT,
    "PXOS_S_UNSUPPORTED": grpc.StatusCode.UNIMPLEMENTED,
    "PXOS_S_INTERNAL": grpc.StatusCode.INTERNAL,
    "PXOS_S_EXISTS": grpc.StatusCode.ALREADY_EXISTS,
    "PXOS_S_RANGE": grpc.StatusCode.OUT_OF_RANGE,
    "PXOS_S_READ_ONLY": grpc.StatusCode.FAILED_PRECONDITION,
    "PXOS_S_VM_GONE": grpc.StatusCode.NOT_FOUND,
}

class WaitTimeout(E.PxosError):
    """The server stopped waiting for something the client asked it to wait for (a launch
    past the request's timeout_seconds); the work itself carries on."""

    status = "PXOS_S_BUSY"  # the nearest wire status: the device is still busy with it


# Errors whose PXOS status is too coarse for an operator: a config that cannot be applied
# (e.g. a VM socket the transport cannot listen on) is a precondition, not a bad argument.
_CLASS_TO_CODE: dict[type[E.PxosError], grpc.StatusCode] = {
    E.SocketPathRefused: grpc.StatusCode.PERMISSION_DENIED,  # before its base class ConfigError
    E.ConfigError: grpc.StatusCode.FAILED_PRECONDITION,
    WaitTimeout: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def code_of(exc: E.PxosError) -> grpc.StatusCode:
    for cls, code in _CLASS_TO_CODE.items():
        if isinstance(exc, cls):
            return code
    return STATUS_TO_CODE.get(exc.status, grpc.StatusCode.INTERNAL)


def diagnostics_pb(diags) -> list[pb.Diagnostic]:
    """primitive_lang Diagnostics (or anything with code/line/column/message) as messages."""
    out = []
    for d in diags:
        out.append(pb.Diagnostic(code=str(getattr(d, "code", "")), line=max(int(getattr(d, "line", 0)), 0),
                                 column=max(int(getattr(d, "column", 0)), 0),
                                 message=str(getattr(d, "message", d))))
    return out


def detail_of(exc: E.PxosError) -> pb.ErrorDetail:
    return pb.ErrorDetail(status=exc.status, message=str(exc), error_type=type(exc).__name__,
                          diagnostics=diagnostics_pb(getattr(exc, "diagnostics", ())))


def abort(context: grpc.ServicerContext, exc: E.PxosError) -> None:
    """End the call with the error's code, message and ErrorDetail (raises)."""
    context.set_trailing_metadata(((ERROR_DETAIL_KEY, detail_of(exc).SerializeToString()),))
    context.abort(code_of(exc), str(exc))


class RpcFailure(Exception):
    """A call that failed, as a client sees it: code name, message, PXOS status and
    diagnostics (empty when the server sent no detail)."""

    def __init__(self, code: str, message: str, status: str = "",
                 diagnostics: tuple[pb.Diagnostic, ...] = (), error_type: str = ""):
        super().__init__(code, message)
        self.code = code  # grpc.StatusCode name, e.g. "NOT_FOUND"
        self.message = message
        self.status = status  # PXOS_S_* name, "" when the server sent no detail
        self.diagnostics = tuple(diagnostics)
        self.error_type = error_type

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    @property
    def unreachable(self) -> bool:
        """The daemon could not be reached at all (as opposed to refusing the request)."""
        return self.code == "UNAVAILABLE" and not self.status

    @classmethod
    def from_grpc(cls, err: grpc.RpcError) -> RpcFailure:
        code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
        message = err.details() if hasattr(err, "details") else str(err)
        detail = None
        for key, value in (err.trailing_metadata() or ()) if hasattr(err, "trailing_metadata") else ():
            if key == ERROR_DETAIL_KEY:
                detail = pb.ErrorDetail.FromString(value)
        if detail is None:
            return cls(code.name, message or code.name)
        return cls(code.name, detail.message or message, detail.status, tuple(detail.diagnostics),
                   detail.error_type)
