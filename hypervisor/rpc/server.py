"""GrpcServer: serves pxos.v1 on a unix socket (mode 0600) and, when configured, on TCP
with mutual TLS (tls.py): a TCP listener without a server certificate, its key and a
client CA is refused, never opened insecure.

The unix socket is created race-free with its final mode: gRPC binds it inside a private
directory (mode 0700) next to the requested path, we chmod it 0600, then rename it into
place, so there is never a moment when the path exists with looser permissions. A stale
socket left by a crashed daemon is replaced; a live one (something answers) is an error.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import tempfile
from concurrent import futures
from pathlib import Path

import grpc

from .. import errors as E
from . import limits
from . import pxos_pb2_grpc as pb_grpc
from .servicer import HypervisorServicer
from .tls import TlsFiles, server_credentials

log = logging.getLogger("pxos.rpc")

#: Options both ends use: message size limits from limits.py, and no port sharing (two
#: daemons must not silently split one TCP port between them).
SERVER_OPTIONS = (
    ("grpc.max_receive_message_length", limits.MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", limits.MAX_MESSAGE_BYTES),
    ("grpc.so_reuseport", 0),
)
CLIENT_OPTIONS = (
    ("grpc.max_receive_message_length", limits.MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", limits.MAX_MESSAGE_BYTES),
)


class GrpcServer:
    def __init__(self, daemon):
        self.daemon = daemon
        self.servicer = HypervisorServicer(daemon)
        self._server: grpc.Server | None = None
        self.unix_path: str | None = None
        self.tcp_port: int | None = None

    def start(self, unix_path: str | None = "/run/pxos/pxos-hvd.sock", tcp_address: str | None = None,
              tls: TlsFiles | None = None) -> None:
        if self._server is not None:
            raise E.ConfigError("the gRPC server is already running")
        if not unix_path and not tcp_address:
            raise E.ConfigError("the gRPC server needs a unix socket path or a TCP address")
        if tcp_address and tls is None:
            raise E.ConfigError(f"refusing to listen on {tcp_address} without mutual TLS: set tls_cert, tls_key "
                                "and tls_client_ca in [daemon] (docs/operations.md, 'Remote control over TCP')")
        creds = server_credentials(tls) if tcp_address else None  # ConfigError before any socket exists
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=limits.MAX_RPC_WORKERS,
                                                        thread_name_prefix="pxos-rpc"),
                             options=SERVER_OPTIONS, maximum_concurrent_rpcs=limits.MAX_RPC_WORKERS)
        pb_grpc.add_HypervisorServicer_to_server(self.servicer, server)
        private_dir = None
        try:
            if unix_path:
                path = Path(unix_path)
                _remove_stale_socket(path)
                path.parent.mkdir(parents=True, exist_ok=True)
                private_dir = tempfile.mkdtemp(prefix=".pxos-rpc-", dir=path.parent)  # mode 0700
                staging = os.path.join(private_dir, "s")
                if not server.add_insecure_port(f"unix:{staging}"):
                    raise E.ConfigError(f"cannot bind the gRPC unix socket {unix_path}")
            if tcp_address:
                try:
                    port = server.add_secure_port(tcp_address, creds)
                except RuntimeError as exc:
                    raise E.ConfigError(f"cannot listen on {tcp_address}: {exc}") from exc
                if not port:
                    raise E.ConfigError(f"cannot listen on {tcp_address}")
                self.tcp_port = port
            server.start()
            if unix_path:
                os.chmod(staging, 0o600)
                os.rename(staging, unix_path)
                self.unix_path = unix_path
        except BaseException:
            server.stop(None)
            raise
        finally:
            if private_dir is not None:
                _rmdir_quietly(private_dir, "s")
        self._server = server

    def stop(self, grace: float | None = 5.0) -> None:
        """Refuse new calls, end event streams, give calls in progress ``grace`` seconds."""
        if self._server is None:
            return
        self.servicer.close()
        self._server.stop(grace).wait()
        self._server = None
        if self.unix_path:
            try:
                os.unlink(self.unix_path)
            except FileNotFoundError:
                pass
            self.unix_path = None


def _remove_stale_socket(path: Path) -> None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise E.ConfigError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError:  # nobody listens: a stale socket from a daemon that died
        log.info("removing stale socket %s", path)
        path.unlink()
        return
    finally:
        probe.close()
    raise E.ConfigError(f"{path}: another process is already serving on this socket")


def _rmdir_quietly(directory: str, leftover: str) -> None:
    for name in (leftover,):
        try:
            os.unlink(os.path.join(directory, name))
        except FileNotFoundError:
            pass
    try:
        os.rmdir(directory)
    except OSError:
        log.warning("could not remove %s", directory)
