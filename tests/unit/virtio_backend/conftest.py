"""Fixtures of the vhost-user library tests: a server with the test echo device on a
short socket path (unix socket paths are limited to 107 bytes)."""

from __future__ import annotations

import shutil
import tempfile

import pytest

from tests.support.echo_device import EchoDevice
from tests.support.vhost_frontend import VhostUserFrontend
from virtio_backend.vhost_user import VhostUserServer


@pytest.fixture
def sock_dir():
    d = tempfile.mkdtemp(prefix="pxq-", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def server(sock_dir):
    """(server, devices): devices lists every EchoDevice the factory built, in order."""
    devices: list[EchoDevice] = []
    srv = VhostUserServer(f"{sock_dir}/vm.sock", EchoDevice.factory(devices)).start()
    yield srv, devices
    srv.close()


@pytest.fixture
def other_vm(sock_dir):
    """Another VM's front-end, booted on its own server: what must never notice a fault."""
    srv = VhostUserServer(f"{sock_dir}/other.sock", EchoDevice.factory()).start()
    fe = VhostUserFrontend(srv.socket_path).boot()
    # A round trip: the messages boot() sent without replies (fresh call fds) are all
    # handled, so their fds are not in flight while a test counts open fds.
    fe.get_config()
    yield fe
    fe.close()
    srv.close()
