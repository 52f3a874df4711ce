"""pxos_gpu.ko meets a virtio-gpu device whose backend is not pxOS (a display-only
virtio-gpu that answers every command VIRTIO_GPU_RESP_ERR_UNSPEC, as QEMU's own
vhost-user-gpu does for commands it does not know): the module leaves it alone with
-ENODEV and says why, and the guest carries on. The foreign backend is a fake at the far
end of the connection, served by the real vhost-user library."""

from __future__ import annotations

import os
import struct

import pytest

from qemu.guest import Guest

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

VIRTIO_GPU_RESP_ERR_UNSPEC = 0x1200
CTRL_HDR = struct.Struct("<IIQIB3x")  # struct virtio_gpu_ctrl_hdr


class DisplayOnlyGpu:
    """A virtio-gpu that knows no PXOS command: every control request gets ERR_UNSPEC."""

    num_queues = 2

    def __init__(self, connection):
        self.seen_types: list[int] = []

    def device_features(self) -> int:
        return 0

    def protocol_features(self) -> int:
        return 0

    def get_config(self, offset: int, size: int) -> bytes:
        config = struct.pack("<IIII", 0, 0, 1, 0).ljust(256, b"\0")  # one scanout, no capsets
        return config[offset:offset + size]

    def set_config(self, offset: int, data: bytes) -> None:
        pass

    def queue_started(self, index: int, queue) -> None:
        pass

    def queue_kicked(self, index: int, queue) -> None:
        while (req := queue.pop()) is not None:
            head = req.read(0, CTRL_HDR.size) if req.readable_len >= CTRL_HDR.size else b""
            if head:
                ctype, _flags, fence, ctx, ring = CTRL_HDR.unpack(head)
                self.seen_types.append(ctype)
                written = req.write(0, CTRL_HDR.pack(VIRTIO_GPU_RESP_ERR_UNSPEC, 0, fence, ctx, ring))
            else:
                written = 0
            queue.push(req, written)
        queue.notify()

    def queue_stopped(self, index: int) -> None:
        pass

    def reset(self) -> None:
        pass

    def handle_device_message(self, request: int, payload: bytes, fds: list[int]) -> bytes | None:
        for fd in fds:
            os.close(fd)
        return None


def test_foreign_virtio_gpu_is_left_alone(guest_artefacts, tmp_path):
    from virtio_backend.vhost_user import VhostUserServer

    devices: list[DisplayOnlyGpu] = []

    def factory(connection):
        devices.append(DisplayOnlyGpu(connection))
        return devices[-1]

    sock = tmp_path / "foreign.sock"
    server = VhostUserServer(str(sock), factory, name="foreign").start()
    try:
        with Guest(guest_artefacts, sock, "dmesg | grep pxos_gpu; pxos info; echo INFO-RC $?; "
                   "ls /sys/bus/virtio/devices/; ls /sys/bus/virtio/drivers/pxos_gpu/",
                   name="foreign", log_path=tmp_path / "foreign.log") as g:
            r = g.wait(180)
    finally:
        server.close()
    out = r.console
    assert r.exit_status == 0, out[-3000:]
    assert "PXOS-NO-DEVICE" in out
    assert "not a pxOS device: GET_INFO answered with type 0x1200" in out, out[-3000:]
    assert "INFO-RC 1" in out
    assert "virtio0" in out                          # the device is there, unbound
    assert devices and 0x7000 in devices[0].seen_types  # PXOS GET_INFO reached the backend
