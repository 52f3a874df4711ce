"""The standard virtio-gpu control commands, answered as a headless device.

pxOS's virtio-gpu has no display: one scanout that is never enabled and has no monitor
behind it, no 2D resources. (The 3D commands, capsets and the resource commands that can
name a 3D resource are the DRM transport's: ``GpuDevice`` sends them to ``virgl.py``;
this class's answers for them hold for a device without it.) ``VIRTIO_GPU_F_EDID`` is offered (QEMU's vhost-user-gpu asks for it by default and
warns when a back-end lacks it), and GET_EDID answers truthfully that no monitor is there:
an EDID of size 0. A guest's
stock virtio-gpu DRM driver must still probe and run against it, so every command gets the
answer the virtio spec (5.7.6) gives for that situation:

====================================  =============================================
GET_DISPLAY_INFO                      OK_DISPLAY_INFO, every scanout disabled
SET_SCANOUT[_BLOB], resource 0        OK_NODATA (disabling a disabled scanout)
SET_SCANOUT[_BLOB], bad scanout       ERR_INVALID_SCANOUT_ID
SET_SCANOUT[_BLOB], any resource      ERR_INVALID_RESOURCE_ID (none exists)
RESOURCE_CREATE_2D / _BLOB            ERR_OUT_OF_MEMORY: a headless device keeps no
                                      resource memory (ERR_INVALID_RESOURCE_ID for id 0)
UNREF, FLUSH, TRANSFER_TO_HOST_2D,
ATTACH/DETACH_BACKING, ASSIGN_UUID    ERR_INVALID_RESOURCE_ID (none exists)
GET_CAPSET_INFO / GET_CAPSET          ERR_INVALID_PARAMETER (num_capsets is 0)
GET_EDID, scanout 0                   OK_EDID with size 0 (no monitor, no EDID)
GET_EDID, another scanout             ERR_INVALID_PARAMETER (as QEMU answers)
3D, cursor, unknown types             ERR_UNSPEC (not offered / not a control command)
a request shorter than its struct     ERR_UNSPEC (as QEMU answers a short command)
====================================  =============================================

The response echoes the fence (flag, fence_id, ctx_id, ring_idx): the guest's fences
signal on any response, error or not. One ``_handle_<command>`` per command, one table.
"""

from __future__ import annotations

from virtio_backend.gpu import commands as c
from virtio_backend.gpu.decode import ECHOED_FLAGS
from virtio_backend.gpu.virtio_gpu import (
    CONFIG,
    CTRL_HDR,
    HDR_AND_U32,
    RESOURCE_ID_OFFSET,
    RESP_DISPLAY_INFO_SIZE,
    RESP_EDID_SIZE,
    SET_SCANOUT,
    VirtioGpuCtrlType,
)

V = VirtioGpuCtrlType
NUM_SCANOUTS = 1  # QEMU's vhost-user-gpu reports its own max_outputs (1) to the guest anyway
NUM_CAPSETS = 0


class HeadlessDisplay:
    """Answers standard virtio-gpu control commands; holds only the config's event bits."""

    def __init__(self, num_capsets: int = NUM_CAPSETS) -> None:
        self.events_read = 0  # no display, so no display-change events are ever raised
        self.num_capsets = num_capsets  # those the device serves elsewhere (virgl.py)

    # ---- config space (struct virtio_gpu_config) -----------------------------------------
    def config_bytes(self) -> bytes:
        return CONFIG.pack(self.events_read, 0, NUM_SCANOUTS, self.num_capsets)

    def write_config(self, offset: int, data: bytes) -> None:
        """Only ``events_clear`` (offset 4, 4 bytes) is writable by the driver."""
        if offset != 4 or len(data) != 4:
            raise ValueError(f"virtio-gpu config: only events_clear (offset 4, 4 bytes) is writable, "
                             f"not offset {offset} size {len(data)}")
        self.events_read &= ~int.from_bytes(data, "little")

    # ---- control commands ---------------------------------------------------------------
    def handle(self, hdr: c.Header, request: bytes) -> bytes:
        """The response bytes for one standard control command. ``request`` holds the
        readable bytes (at most ``MAX_STANDARD_REQUEST`` of them, enough for any struct
        we read)."""
        handler = _TABLE.get(hdr.type, HeadlessDisplay._handle_unsupported)
        resp_type, body = handler(self, hdr, request)
        return _header(hdr, resp_type) + body

    def _handle_get_display_info(self, hdr, request):
        # Every pmode zero: rect 0x0, enabled 0 - a scanout with nothing connected.
        return V.VIRTIO_GPU_RESP_OK_DISPLAY_INFO, bytes(RESP_DISPLAY_INFO_SIZE - CTRL_HDR.size)

    def _handle_get_edid(self, hdr, request):
        if len(request) < HDR_AND_U32.size:
            return V.VIRTIO_GPU_RESP_ERR_UNSPEC, b""
        (scanout,) = HDR_AND_U32.unpack_from(request)
        if scanout >= NUM_SCANOUTS:
            return V.VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER, b""
        return V.VIRTIO_GPU_RESP_OK_EDID, bytes(RESP_EDID_SIZE - CTRL_HDR.size)  # size 0, no blocks

    def _handle_set_scanout(self, hdr, request):
        if len(request) < SET_SCANOUT.size:
            return V.VIRTIO_GPU_RESP_ERR_UNSPEC, b""
        scanout_id, resource_id = SET_SCANOUT.unpack_from(request)
        if scanout_id >= NUM_SCANOUTS:
            return V.VIRTIO_GPU_RESP_ERR_INVALID_SCANOUT_ID, b""
        if resource_id == 0:
            return V.VIRTIO_GPU_RESP_OK_NODATA, b""
        return V.VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID, b""

    def _handle_resource_create(self, hdr, request):
        resource_id = _resource_id(hdr, request)
        if resource_id is None:
            return V.VIRTIO_GPU_RESP_ERR_UNSPEC, b""
        if resource_id == 0:
            return V.VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID, b""
        return V.VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY, b""

    def _handle_resource_command(self, hdr, request):
        if _resource_id(hdr, request) is None:
            return V.VIRTIO_GPU_RESP_ERR_UNSPEC, b""
        return V.VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID, b""

    def _handle_get_capset(self, hdr, request):
        if len(request) < HDR_AND_U32.size:
            return V.VIRTIO_GPU_RESP_ERR_UNSPEC, b""
        return V.VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER, b""

    def _handle_unsupported(self, hdr, request):
        return V.VIRTIO_GPU_RESP_ERR_UNSPEC, b""


def _resource_id(hdr: c.Header, request: bytes) -> int | None:
    off = RESOURCE_ID_OFFSET[hdr.type]
    if len(request) < off + 4:
        return None
    return int.from_bytes(request[off : off + 4], "little")


def _header(hdr: c.Header, resp_type: int) -> bytes:
    return CTRL_HDR.pack(resp_type, hdr.flags & ECHOED_FLAGS, hdr.fence_id, hdr.ctx_id, hdr.ring_idx)


def response_size(resp_type_of_request: int) -> int:
    """Bytes the answer to this command takes (so the device can check the writable part)."""
    if resp_type_of_request == V.VIRTIO_GPU_CMD_GET_DISPLAY_INFO:
        return RESP_DISPLAY_INFO_SIZE
    if resp_type_of_request == V.VIRTIO_GPU_CMD_GET_EDID:
        return RESP_EDID_SIZE
    return CTRL_HDR.size


# The largest struct this module reads from a request: set_scanout (48 bytes). Reading
# more of a guest's chain than that would be wasted work on bytes we ignore.
MAX_STANDARD_REQUEST = 64

_TABLE = {
    V.VIRTIO_GPU_CMD_GET_DISPLAY_INFO: HeadlessDisplay._handle_get_display_info,
    V.VIRTIO_GPU_CMD_GET_EDID: HeadlessDisplay._handle_get_edid,
    V.VIRTIO_GPU_CMD_SET_SCANOUT: HeadlessDisplay._handle_set_scanout,
    V.VIRTIO_GPU_CMD_SET_SCANOUT_BLOB: HeadlessDisplay._handle_set_scanout,
    V.VIRTIO_GPU_CMD_RESOURCE_CREATE_2D: HeadlessDisplay._handle_resource_create,
    V.VIRTIO_GPU_CMD_RESOURCE_CREATE_BLOB: HeadlessDisplay._handle_resource_create,
    V.VIRTIO_GPU_CMD_RESOURCE_UNREF: HeadlessDisplay._handle_resource_command,
    V.VIRTIO_GPU_CMD_RESOURCE_FLUSH: HeadlessDisplay._handle_resource_command,
    V.VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D: HeadlessDisplay._handle_resource_command,
    V.VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING: HeadlessDisplay._handle_resource_command,
    V.VIRTIO_GPU_CMD_RESOURCE_DETACH_BACKING: HeadlessDisplay._handle_resource_command,
    V.VIRTIO_GPU_CMD_RESOURCE_ASSIGN_UUID: HeadlessDisplay._handle_resource_command,
    V.VIRTIO_GPU_CMD_GET_CAPSET_INFO: HeadlessDisplay._handle_get_capset,
    V.VIRTIO_GPU_CMD_GET_CAPSET: HeadlessDisplay._handle_get_capset,
}
