"""The control plane's guards (issue 17, finding 3): TCP only with mutual TLS, VM sockets
only inside socket_dir, and socket owner and mode set where no one can swap the path."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile

import grpc
import pytest

from hypervisor import Hypervisor
from hypervisor.config import DaemonConfig, parse_config
from hypervisor.ctl import EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE, main
from hypervisor.daemon import Daemon
from hypervisor.errors import ConfigError, SocketPathRefused
from hypervisor.rpc import pxos_pb2 as pb
from hypervisor.rpc import pxos_pb2_grpc as pb_grpc
from hypervisor.rpc.client import Client
from hypervisor.rpc.server import GrpcServer
from hypervisor.rpc.status import RpcFailure
from hypervisor.rpc.tls import TlsFiles
from tests.support.tls_certs import make_pki


@pytest.fixture
def sockdir():
    d = tempfile.mkdtemp(prefix="pxos-", dir="/tmp")  # short: unix socket paths fit in 108 bytes
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def daemon(sockdir):
    cfg = DaemonConfig.model_validate({"daemon": {"grpc_socket": os.path.join(sockdir, "hvd.sock"),
                                                  "metrics_address": None, "backend": "numpy",
                                                  "socket_dir": os.path.join(sockdir, "vms")}})
    d = Daemon(cfg, hypervisor=Hypervisor(backend="numpy", device_pool_bytes=32 << 20)).start(metrics=False)
    yield d
    d.stop(grace=1.0)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_server(daemon, pki):
    srv = GrpcServer(daemon)
    srv.start(unix_path=None, tcp_address="127.0.0.1:0", tls=pki.server)
    yield srv
    srv.stop(grace=0.5)


def _refused(channel: grpc.Channel) -> None:
    stub = pb_grpc.HypervisorStub(channel)
    with pytest.raises(grpc.RpcError) as err:
        stub.ListVMs(pb.ListVMsRequest(), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    channel.close()


# ---------------------------------------------------------------- TCP: mutual TLS only

def test_a_tcp_listener_without_mutual_tls_is_refused(daemon):
    with pytest.raises(ConfigError, match="without mutual TLS"):
        GrpcServer(daemon).start(unix_path=None, tcp_address="127.0.0.1:0")
    with pytest.raises(ConfigError, match="tls_cert, tls_key, tls_client_ca is not"):
        parse_config({"daemon": {"grpc_tcp": "127.0.0.1:0"}})


def test_unreadable_or_non_pem_certificates_refuse_to_start(daemon, pki, tmp_path):
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    for files in (TlsFiles(str(tmp_path / "none.crt"), pki.server.key, pki.server.ca),
                  TlsFiles(pki.server.cert, pki.server.key, str(junk))):
        with pytest.raises(ConfigError, match="TLS"):
            GrpcServer(daemon).start(unix_path=None, tcp_address="127.0.0.1:0", tls=files)


def test_a_client_with_a_certificate_of_the_ca_is_served(tls_server, pki):
    with Client(tcp=f"127.0.0.1:{tls_server.tcp_port}", tls=pki.client, timeout=20) as c:
        c.call("RegisterVM", pb.RegisterVMRequest(vm_id=5, memory_bytes=1 << 20, share=5))
        assert [v.vm_id for v in c.call("ListVMs", pb.ListVMsRequest()).vms] == [5]
    # by name as well as by address: the certificate carries both
    with Client(tcp=f"localhost:{tls_server.tcp_port}", tls=pki.client, timeout=20) as c:
        assert [v.vm_id for v in c.call("ListVMs", pb.ListVMsRequest()).vms] == [5]


def test_clients_without_a_good_certificate_are_refused(tls_server, pki):
    target = f"127.0.0.1:{tls_server.tcp_port}"
    ca = open(pki.client.ca, "rb").read()
    _refused(grpc.insecure_channel(target))  # plain text
    _refused(grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=ca)))  # no certificate
    rogue = pki.rogue_client
    _refused(grpc.secure_channel(target, grpc.ssl_channel_credentials(  # a certificate of another CA
        root_certificates=ca, private_key=open(rogue.key, "rb").read(),
        certificate_chain=open(rogue.cert, "rb").read())))
    with pytest.raises(RpcFailure) as failure:
        with Client(tcp=target, tls=rogue, timeout=10) as c:
            c.call("ListVMs", pb.ListVMsRequest())
    assert failure.value.unreachable
    with pytest.raises(ConfigError, match="mutual TLS"):
        Client(tcp=target)


def test_pxosctl_over_tcp_needs_and_uses_its_certificate(tls_server, pki, capsys, monkeypatch):
    for var in ("PXOS_TLS_CERT", "PXOS_TLS_KEY", "PXOS_TLS_CA"):
        monkeypatch.delenv(var, raising=False)
    target = f"127.0.0.1:{tls_server.tcp_port}"
    assert main(["--tcp", target, "vm", "list"]) == EXIT_USAGE
    assert "--tls-cert, --tls-key, --tls-ca" in capsys.readouterr().err
    mine = ["--tls-cert", pki.client.cert, "--tls-key", pki.client.key, "--tls-ca", pki.client.ca]
    assert main(["--tcp", target, *mine, "--json", "vm", "list"]) == EXIT_OK
    assert '"vms"' in capsys.readouterr().out
    theirs = ["--tls-cert", pki.rogue_client.cert, "--tls-key", pki.rogue_client.key, "--tls-ca", pki.client.ca]
    assert main(["--tcp", target, "--timeout", "5", *theirs, "vm", "list"]) == EXIT_UNREACHABLE
    capsys.readouterr()
    monkeypatch.setenv("PXOS_TLS_CERT", pki.client.cert)
    monkeypatch.setenv("PXOS_TLS_KEY", pki.client.key)
    monkeypatch.setenv("PXOS_TLS_CA", pki.client.ca)
    assert main(["--tcp", target, "vm", "list"]) == EXIT_OK


# ---------------------------------------------------------------- sockets: only in socket_dir

def _register(c: Client, vm: int, socket: str) -> pb.VMInfo:
    return c.call("RegisterVM", pb.RegisterVMRequest(vm_id=vm, memory_bytes=1 << 20, share=1, socket=socket))


def test_addvm_outside_socket_dir_is_refused_and_creates_nothing(daemon, sockdir):
    vms = daemon.config.daemon.socket_dir
    outside = os.path.join(sockdir, "elsewhere")
    with Client(socket_path=daemon.config.daemon.grpc_socket) as c:
        for bad in (os.path.join(outside, "new", "vm1.sock"), "../vm1.sock", os.path.join(vms, "..", "vm1.sock"),
                    vms, "/etc/pxos-vm1.sock"):
            with pytest.raises(RpcFailure) as refused:
                _register(c, 1, bad)
            assert refused.value.code == "PERMISSION_DENIED", refused.value
            assert "outside socket_dir" in refused.value.message
        assert not os.path.exists(outside) and not os.path.exists("/etc/pxos-vm1.sock")
        # A symlink inside socket_dir that leads out of it is refused too.
        os.makedirs(outside)
        os.makedirs(vms, exist_ok=True)
        os.symlink(outside, os.path.join(vms, "out"))
        with pytest.raises(RpcFailure, match="symlink"):
            _register(c, 1, os.path.join(vms, "out", "vm1.sock"))
        # and a directory inside it is never created on a caller's behalf
        with pytest.raises(RpcFailure, match="does not exist"):
            _register(c, 1, os.path.join(vms, "sub", "vm1.sock"))
        assert os.listdir(outside) == [] and not os.path.exists(os.path.join(vms, "sub"))
        assert c.call("ListVMs", pb.ListVMsRequest()).vms == []
        # Inside it, by absolute path or by name, is fine.
        assert _register(c, 1, os.path.join(vms, "vm1.sock")).socket == os.path.join(vms, "vm1.sock")
        assert _register(c, 2, "vm2.sock").socket == os.path.join(vms, "vm2.sock")
        assert stat.S_ISSOCK(os.stat(os.path.join(vms, "vm2.sock")).st_mode)


def test_the_daemon_refuses_a_config_socket_outside_socket_dir(sockdir):
    with pytest.raises(ConfigError, match="outside socket_dir"):
        parse_config({"daemon": {"socket_dir": os.path.join(sockdir, "vms")},
                      "vm": [{"id": 1, "memory": 1, "share": 1, "socket": "/tmp/vm1.sock"}]})
    assert issubclass(SocketPathRefused, ConfigError)


def test_socket_owner_and_mode_are_never_set_through_the_final_path(daemon, monkeypatch):
    # Both are set on the socket inside a private directory before it is renamed into
    # place: a symlink swapped in at the path can never retarget them.
    touched: list[str] = []
    real_chmod, real_chown = os.chmod, os.chown

    def chmod(path, *a, **kw):
        touched.append(os.fspath(path))
        return real_chmod(path, *a, **kw)

    def chown(path, *a, **kw):
        touched.append(os.fspath(path))
        return real_chown(path, *a, **kw)

    monkeypatch.setattr(os, "chmod", chmod)
    monkeypatch.setattr(os, "chown", chown)
    daemon._vm_socket_mode, daemon._vm_socket_gid = 0o660, os.getgid()
    with Client(socket_path=daemon.config.daemon.grpc_socket) as c:
        info = _register(c, 3, "vm3.sock")
    st = os.lstat(info.socket)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == os.getgid()
    assert touched and info.socket not in touched
    assert all(os.path.basename(os.path.dirname(p)).startswith(".pxos-") for p in touched), touched
    assert sorted(os.listdir(daemon.config.daemon.socket_dir)) == ["vm3.sock"]  # no private dir left
