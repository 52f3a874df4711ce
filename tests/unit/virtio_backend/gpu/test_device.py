"""virtio_backend.gpu.device: config space, device messages, reset, and the log limiter."""

from __future__ import annotations

import os
import socket
import struct

import pytest

from hypervisor import Hypervisor
from hypervisor.errors import ProtocolError
from virtio_backend.gpu.device import VHOST_USER_GPU_SET_SOCKET, GpuDevice
from virtio_backend.gpu.metrics import LogLimiter


@pytest.fixture
def device():
    hv = Hypervisor(backend="numpy", device_pool_bytes=16 << 20).start()
    hv.register_vm(1, 0, 50, memory_quota_bytes=1 << 20)
    dev = GpuDevice(hv, 1, connection=None)
    yield dev
    dev.close()
    hv.stop()


def test_features_and_config(device):
    assert device.device_features() == 1 << 1 | 1 << 0  # VIRTIO_GPU_F_EDID, VIRTIO_GPU_F_VIRGL (DRM transport)
    assert device.protocol_features() == 0
    assert struct.unpack("<IIII", device.get_config(0, 16)) == (0, 0, 1, 1)  # one capset: pxOS's
    assert device.get_config(8, 4) == struct.pack("<I", 1)
    assert device.get_config(16, 8) == bytes(8)  # past the struct: zero
    with pytest.raises(ValueError):
        device.get_config(250, 16)
    device.set_config(4, struct.pack("<I", 1))
    with pytest.raises(ValueError):
        device.set_config(8, struct.pack("<I", 2))
    assert device.stats.config_reads == 3


def test_gpu_set_socket_keeps_one_fd_and_closes_the_rest(device):
    a, b = socket.socketpair()
    fd1, fd2 = os.dup(a.fileno()), os.dup(b.fileno())
    assert device.handle_device_message(VHOST_USER_GPU_SET_SOCKET, b"", [fd1, fd2]) is None
    with pytest.raises(OSError):
        os.fstat(fd2)  # extra fds closed
    os.fstat(fd1)
    fd3 = os.dup(a.fileno())
    device.handle_device_message(VHOST_USER_GPU_SET_SOCKET, b"", [fd3])
    with pytest.raises(OSError):
        os.fstat(fd1)  # the old one replaced
    device.reset()
    with pytest.raises(OSError):
        os.fstat(fd3)  # and dropped on reset
    a.close()
    b.close()


def test_other_device_messages_end_the_connection(device):
    fd = os.eventfd(0)
    with pytest.raises(ProtocolError, match="request 99"):
        device.handle_device_message(99, b"", [fd])
    with pytest.raises(OSError):
        os.fstat(fd)


def test_reset_releases_the_vms_state(device):
    device.hv.alloc(1, "float32", (100,))
    assert device.hv.vm_info(1).memory_used == 400
    device.reset()
    assert device.stats.resets_total == 1
    # The release runs on the VM's worker (the loop thread never calls the hypervisor),
    # before anything the next driver sends.
    assert device.idle()
    assert device.hv.vm_info(1).memory_used == 0


def test_log_limiter_allows_a_burst_then_a_rate():
    now = [0.0]
    lim = LogLimiter(per_second=2, burst=3, clock=lambda: now[0])
    assert [lim.allow() for _ in range(5)] == [True, True, True, False, False]
    now[0] = 1.0
    assert [lim.allow() for _ in range(3)] == [True, True, False]
    assert lim.suppressed == 3


@pytest.mark.parametrize("make", [lambda: os.eventfd(0), lambda: os.pipe()[0]])
def test_gpu_set_socket_refuses_an_fd_that_is_not_a_socket(device, make):
    fd = make()
    with pytest.raises(ProtocolError, match="not a socket"):
        device.handle_device_message(VHOST_USER_GPU_SET_SOCKET, b"", [fd])
    with pytest.raises(OSError):
        os.fstat(fd)  # closed: the device owns every fd it is handed
