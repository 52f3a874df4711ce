"""virtio_backend.gpu.display: a headless virtio-gpu answers every standard command."""

from __future__ import annotations

import struct

import pytest

from virtio_backend.gpu.decode import decode_header
from virtio_backend.gpu.display import HeadlessDisplay, response_size
from virtio_backend.gpu.virtio_gpu import CTRL_HDR, RESP_DISPLAY_INFO_SIZE, VirtioGpuCtrlType

V = VirtioGpuCtrlType


def ask(cmd: int, body: bytes = b"", flags: int = 0, fence: int = 0, ctx: int = 0):
    req = CTRL_HDR.pack(cmd, flags, fence, ctx, 0) + body
    out = HeadlessDisplay().handle(decode_header(req), req)
    rtype, rflags, rfence, rctx, _ = CTRL_HDR.unpack_from(out)
    return V(rtype), rflags, rfence, rctx, out


def test_display_info_has_one_disabled_scanout():
    rtype, _, _, _, out = ask(V.VIRTIO_GPU_CMD_GET_DISPLAY_INFO)
    assert rtype == V.VIRTIO_GPU_RESP_OK_DISPLAY_INFO
    assert len(out) == RESP_DISPLAY_INFO_SIZE == response_size(V.VIRTIO_GPU_CMD_GET_DISPLAY_INFO) == 408
    assert out[24:] == bytes(384)  # every pmode: rect 0, enabled 0


def test_edid_of_the_one_scanout_says_no_monitor():
    rtype, _, _, _, out = ask(V.VIRTIO_GPU_CMD_GET_EDID, struct.pack("<II", 0, 0))
    assert rtype == V.VIRTIO_GPU_RESP_OK_EDID
    assert len(out) == 1056 == response_size(V.VIRTIO_GPU_CMD_GET_EDID)
    assert struct.unpack_from("<I", out, 24)[0] == 0  # size: no EDID blocks


def test_fenced_errors_still_signal_the_fence():
    rtype, flags, fence, ctx, _ = ask(V.VIRTIO_GPU_CMD_RESOURCE_CREATE_2D, struct.pack("<IIII", 1, 1, 64, 64),
                                      flags=1, fence=42, ctx=3)
    assert (rtype, flags, fence, ctx) == (V.VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY, 1, 42, 3)


@pytest.mark.parametrize(("cmd", "body", "want"), [
    (V.VIRTIO_GPU_CMD_RESOURCE_CREATE_2D, struct.pack("<IIII", 0, 1, 64, 64), V.VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID),
    (V.VIRTIO_GPU_CMD_RESOURCE_CREATE_BLOB, struct.pack("<IIIIQ", 5, 1, 0, 0, 4096), V.VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY),
    (V.VIRTIO_GPU_CMD_RESOURCE_UNREF, struct.pack("<II", 1, 0), V.VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID),
    (V.VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING, struct.pack("<II", 1, 1) + bytes(16), V.VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID),
    (V.VIRTIO_GPU_CMD_RESOURCE_DETACH_BACKING, struct.pack("<II", 1, 0), V.VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID),
    (V.VIRTIO_GPU_CMD_RESOURCE_FLUSH, bytes(16) + struct.pack("<II", 1, 0), V.VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID),
    (V.VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D, bytes(24) + struct.pack("<II", 1, 0), V.VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID),
    (V.VIRTIO_GPU_CMD_RESOURCE_ASSIGN_UUID, struct.pack("<II", 1, 0), V.VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID),
    (V.VIRTIO_GPU_CMD_SET_SCANOUT, bytes(16) + struct.pack("<II", 0, 0), V.VIRTIO_GPU_RESP_OK_NODATA),
    (V.VIRTIO_GPU_CMD_SET_SCANOUT, bytes(16) + struct.pack("<II", 0, 7), V.VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID),
    (V.VIRTIO_GPU_CMD_SET_SCANOUT, bytes(16) + struct.pack("<II", 1, 0), V.VIRTIO_GPU_RESP_ERR_INVALID_SCANOUT_ID),
    (V.VIRTIO_GPU_CMD_SET_SCANOUT_BLOB, bytes(16) + struct.pack("<II", 0, 3) + bytes(56), V.VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID),
    (V.VIRTIO_GPU_CMD_GET_CAPSET_INFO, struct.pack("<II", 0, 0), V.VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER),
    (V.VIRTIO_GPU_CMD_GET_CAPSET, struct.pack("<II", 1, 0), V.VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER),
    (V.VIRTIO_GPU_CMD_GET_EDID, struct.pack("<II", 1, 0), V.VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER),
    (V.VIRTIO_GPU_CMD_GET_EDID, b"", V.VIRTIO_GPU_RESP_ERR_UNSPEC),
    (V.VIRTIO_GPU_CMD_CTX_CREATE, bytes(72), V.VIRTIO_GPU_RESP_ERR_UNSPEC),
    (V.VIRTIO_GPU_CMD_SUBMIT_3D, bytes(8), V.VIRTIO_GPU_RESP_ERR_UNSPEC),
    (V.VIRTIO_GPU_CMD_UPDATE_CURSOR, bytes(32), V.VIRTIO_GPU_RESP_ERR_UNSPEC),
    (0x0500, b"", V.VIRTIO_GPU_RESP_ERR_UNSPEC),
    # shorter than the struct the answer depends on
    (V.VIRTIO_GPU_CMD_SET_SCANOUT, bytes(16), V.VIRTIO_GPU_RESP_ERR_UNSPEC),
    (V.VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D, bytes(20), V.VIRTIO_GPU_RESP_ERR_UNSPEC),
    (V.VIRTIO_GPU_CMD_GET_CAPSET_INFO, b"", V.VIRTIO_GPU_RESP_ERR_UNSPEC),
])
def test_answers(cmd, body, want):
    rtype, _, _, _, out = ask(cmd, body)
    assert rtype == want
    assert len(out) == 24


def test_config_space_and_events_clear():
    d = HeadlessDisplay()
    assert struct.unpack("<IIII", d.config_bytes()) == (0, 0, 1, 0)
    d.events_read = 1
    d.write_config(4, struct.pack("<I", 1))
    assert struct.unpack("<IIII", d.config_bytes())[0] == 0
    with pytest.raises(ValueError, match="only events_clear"):
        d.write_config(8, b"\1\0\0\0")
