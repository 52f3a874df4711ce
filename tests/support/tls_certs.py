"""A throw-away PKI for the mutual-TLS tests, made with the openssl command line (the
steps docs/operations.md shows operators): a CA, a server certificate for localhost and
127.0.0.1, a client certificate the CA signed, and a client certificate of another CA."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from hypervisor.rpc.tls import TlsFiles

_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]


@dataclass(frozen=True)
class Pki:
    server: TlsFiles  # the daemon's certificate and key, and the CA its clients must come from
    client: TlsFiles  # a client the CA signed, and the CA that signed the server
    rogue_client: TlsFiles  # a client of another CA


def _openssl(*args: str, cwd: Path) -> None:
    exe = shutil.which("openssl")
    assert exe, "the openssl command is needed to make test certificates (apt-get install openssl)"
    subprocess.run([exe, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(d: Path, name: str) -> None:
    _openssl("req", "-x509", *_KEY, "-days", "2", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
             "-out", f"{name}.crt", cwd=d)


def _leaf(d: Path, name: str, ca: str, ext: str) -> None:
    (d / f"{name}.ext").write_text(ext)
    _openssl("req", *_KEY, "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
             "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=d)


def make_pki(d: Path) -> Pki:
    d.mkdir(parents=True, exist_ok=True)
    _ca(d, "ca")
    _ca(d, "rogue-ca")
    _leaf(d, "server", "ca", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    _leaf(d, "client", "ca", "extendedKeyUsage=clientAuth\n")
    _leaf(d, "rogue", "rogue-ca", "extendedKeyUsage=clientAuth\n")
    f = lambda name: str(d / name)  # noqa: E731
    return Pki(server=TlsFiles(f("server.crt"), f("server.key"), f("ca.crt")),
               client=TlsFiles(f("client.crt"), f("client.key"), f("ca.crt")),
               rogue_client=TlsFiles(f("rogue.crt"), f("rogue.key"), f("ca.crt")))
