"""A small synchronous client of pxos.v1 (what pxosctl and the tests use).

Every failed call raises ``RpcFailure`` with the gRPC code, the server's message and,
when the server sent one, its ErrorDetail (PXOS status and diagnostics). Buffer data
moves in pieces of at most MAX_TRANSFER_BYTES, the server's per-call limit.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import grpc

from . import limits
from . import pxos_pb2 as pb
from . import pxos_pb2_grpc as pb_grpc
from .server import CLIENT_OPTIONS
from .status import RpcFailure
from .tls import TlsFiles, channel_credentials

DEFAULT_SOCKET = "/run/pxos/pxos-hvd.sock"


def default_socket() -> str:
    return os.environ.get("PXOS_SOCKET") or DEFAULT_SOCKET


class Client:
    """``Client(socket_path=...)`` over the unix socket; ``Client(tcp="host:port", tls=TlsFiles(
    cert, key, ca))`` over TCP, where the daemon accepts only mutual TLS (``server_name``
    overrides the name checked against the server's certificate)."""

    def __init__(self, *, socket_path: str | None = None, tcp: str | None = None, timeout: float = 30.0,
                 tls: TlsFiles | None = None, server_name: str | None = None):
        self.target = tcp if tcp else f"unix:{socket_path or default_socket()}"
        self.timeout = timeout
        if tcp:
            if tls is None:
                from ..errors import ConfigError

                raise ConfigError("pxos-hvd accepts TCP clients only with mutual TLS: give a client "
                                  "certificate, its key and the CA of the server's certificate")
            options = CLIENT_OPTIONS + ((("grpc.ssl_target_name_override", server_name),) if server_name else ())
            self.channel = grpc.secure_channel(self.target, channel_credentials(tls), options=options)
        else:
            self.channel = grpc.insecure_channel(self.target, options=CLIENT_OPTIONS)
        self.stub = pb_grpc.HypervisorStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def call(self, method: str, request, timeout: float | None = None):
        """``call("GetVM", pb.VMRef(vm_id=1))``; raises RpcFailure."""
        try:
            return getattr(self.stub, method)(request, timeout=timeout or self.timeout)
        except grpc.RpcError as err:
            failure = RpcFailure.from_grpc(err)
            if failure.unreachable:
                failure.message = f"cannot reach pxos-hvd at {self.target}: {failure.message}"
            raise failure from None

    # ---- buffers, in pieces the server accepts ----
    def write_all(self, vm_id: int, handle: int, data: bytes | memoryview) -> int:
        view = memoryview(data).cast("B")
        for start in range(0, len(view), limits.MAX_TRANSFER_BYTES):
            piece = bytes(view[start:start + limits.MAX_TRANSFER_BYTES])
            self.call("Write", pb.WriteRequest(vm_id=vm_id, handle=handle, offset=start, data=piece))
        return len(view)

    def read_all(self, vm_id: int, handle: int) -> bytes:
        out = bytearray()
        while True:
            resp = self.call("Read", pb.ReadRequest(vm_id=vm_id, handle=handle, offset=len(out)))
            out += resp.data
            if len(out) >= resp.nbytes or not resp.data:
                return bytes(out)

    def watch_events(self, vm_ids=(), kinds=()) -> Iterator[pb.Event]:
        stream = self.stub.WatchEvents(pb.WatchEventsRequest(vm_ids=list(vm_ids), kinds=list(kinds)))
        try:
            yield from stream
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.CANCELLED:
                return
            raise RpcFailure.from_grpc(err) from None
        finally:
            stream.cancel()
