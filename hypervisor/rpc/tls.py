"""Mutual TLS for the gRPC control API over TCP (docs/operations.md, "Remote control over TCP").

The unix socket is guarded by its mode (0600: root, or whoever runs pxos-hvd). TCP has no
such guard, so pxos-hvd serves TCP only with mutual TLS: the server presents its
certificate, and every client must present a certificate signed by the configured client
CA, or the handshake fails before any call is read. There is no insecure TCP mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from ..errors import ConfigError

#: Largest PEM file read (a certificate chain or a key): a path that names something
#: else (a device, a huge file) fails clearly instead of being read whole.
MAX_PEM_BYTES = 1 << 20


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: our certificate (chain) and its key, and the CA certificate(s) that
    must have signed the peer's certificate."""

    cert: str
    key: str
    ca: str

    def read(self) -> tuple[bytes, bytes, bytes]:
        return _pem(self.cert, "certificate"), _pem(self.key, "private key"), _pem(self.ca, "CA certificate")


def server_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    cert, key, ca = files.read()
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)


def channel_credentials(files: TlsFiles) -> grpc.ChannelCredentials:
    cert, key, ca = files.read()
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def _pem(path: str, what: str) -> bytes:
    p = Path(path)
    try:
        with p.open("rb") as f:
            data = f.read(MAX_PEM_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"TLS {what} {path}: cannot read: {exc.strerror or exc}") from exc
    if len(data) > MAX_PEM_BYTES:
        raise ConfigError(f"TLS {what} {path}: larger than {MAX_PEM_BYTES} bytes; not a PEM file")
    if b"-----BEGIN " not in data:
        raise ConfigError(f"TLS {what} {path}: not PEM (no -----BEGIN line)")
    return data
