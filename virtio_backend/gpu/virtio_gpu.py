"""The standard virtio-gpu wire names this device answers to, as the spec names them.

Source of truth: the virtio specification, section 5.7 "GPU Device", and Linux's
``include/uapi/linux/virtio_gpu.h`` (which QEMU's ``hw/display/virtio-gpu.c`` also uses).
Only what a headless device needs is here: the command and response types, the header
flags, the feature bits, the config space and the few struct fields we read to pick the
right error. The layouts are written out with ``struct`` formats (little-endian).
"""

from __future__ import annotations

import struct
from enum import IntEnum, IntFlag


class VirtioGpuCtrlType(IntEnum):
    """``enum virtio_gpu_ctrl_type``."""

    VIRTIO_GPU_UNDEFINED = 0
    # 2D commands
    VIRTIO_GPU_CMD_GET_DISPLAY_INFO = 0x0100
    VIRTIO_GPU_CMD_RESOURCE_CREATE_2D = 0x0101
    VIRTIO_GPU_CMD_RESOURCE_UNREF = 0x0102
    VIRTIO_GPU_CMD_SET_SCANOUT = 0x0103
    VIRTIO_GPU_CMD_RESOURCE_FLUSH = 0x0104
    VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D = 0x0105
    VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING = 0x0106
    VIRTIO_GPU_CMD_RESOURCE_DETACH_BACKING = 0x0107
    VIRTIO_GPU_CMD_GET_CAPSET_INFO = 0x0108
    VIRTIO_GPU_CMD_GET_CAPSET = 0x0109
    VIRTIO_GPU_CMD_GET_EDID = 0x010A
    VIRTIO_GPU_CMD_RESOURCE_ASSIGN_UUID = 0x010B
    VIRTIO_GPU_CMD_RESOURCE_CREATE_BLOB = 0x010C
    VIRTIO_GPU_CMD_SET_SCANOUT_BLOB = 0x010D
    # 3D commands
    VIRTIO_GPU_CMD_CTX_CREATE = 0x0200
    VIRTIO_GPU_CMD_CTX_DESTROY = 0x0201
    VIRTIO_GPU_CMD_CTX_ATTACH_RESOURCE = 0x0202
    VIRTIO_GPU_CMD_CTX_DETACH_RESOURCE = 0x0203
    VIRTIO_GPU_CMD_RESOURCE_CREATE_3D = 0x0204
    VIRTIO_GPU_CMD_TRANSFER_TO_HOST_3D = 0x0205
    VIRTIO_GPU_CMD_TRANSFER_FROM_HOST_3D = 0x0206
    VIRTIO_GPU_CMD_SUBMIT_3D = 0x0207
    VIRTIO_GPU_CMD_RESOURCE_MAP_BLOB = 0x0208
    VIRTIO_GPU_CMD_RESOURCE_UNMAP_BLOB = 0x0209
    # cursor commands
    VIRTIO_GPU_CMD_UPDATE_CURSOR = 0x0300
    VIRTIO_GPU_CMD_MOVE_CURSOR = 0x0301
    # success responses
    VIRTIO_GPU_RESP_OK_NODATA = 0x1100
    VIRTIO_GPU_RESP_OK_DISPLAY_INFO = 0x1101
    VIRTIO_GPU_RESP_OK_CAPSET_INFO = 0x1102
    VIRTIO_GPU_RESP_OK_CAPSET = 0x1103
    VIRTIO_GPU_RESP_OK_EDID = 0x1104
    VIRTIO_GPU_RESP_OK_RESOURCE_UUID = 0x1105
    VIRTIO_GPU_RESP_OK_MAP_INFO = 0x1106
    # error responses
    VIRTIO_GPU_RESP_ERR_UNSPEC = 0x1200
    VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY = 0x1201
    VIRTIO_GPU_RESP_ERR_INVALID_SCANOUT_ID = 0x1202
    VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID = 0x1203
    VIRTIO_GPU_RESP_ERR_INVALID_CONTEXT_ID = 0x1204
    VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER = 0x1205


class VirtioGpuFlag(IntFlag):
    """``struct virtio_gpu_ctrl_hdr.flags``."""

    VIRTIO_GPU_FLAG_FENCE = 1 << 0
    VIRTIO_GPU_FLAG_INFO_RING_IDX = 1 << 1


class VirtioGpuFeature(IntEnum):
    """Device feature *bit numbers* (``VIRTIO_GPU_F_*``)."""

    VIRTIO_GPU_F_VIRGL = 0
    VIRTIO_GPU_F_EDID = 1
    VIRTIO_GPU_F_RESOURCE_UUID = 2
    VIRTIO_GPU_F_RESOURCE_BLOB = 3
    VIRTIO_GPU_F_CONTEXT_INIT = 4


class VirtioGpuQueue(IntEnum):
    CONTROLQ = 0
    CURSORQ = 1


VIRTIO_GPU_MAX_SCANOUTS = 16
VIRTIO_GPU_EVENT_DISPLAY = 1 << 0

# struct virtio_gpu_ctrl_hdr: type, flags, fence_id, ctx_id, ring_idx, padding[3]
CTRL_HDR = struct.Struct("<IIQIB3x")
assert CTRL_HDR.size == 24

# struct virtio_gpu_config: events_read, events_clear, num_scanouts, num_capsets
CONFIG = struct.Struct("<IIII")

# struct virtio_gpu_display_one: rect (x, y, width, height), enabled, flags
DISPLAY_ONE = struct.Struct("<IIIIII")
# struct virtio_gpu_resp_display_info: hdr + pmodes[VIRTIO_GPU_MAX_SCANOUTS]
RESP_DISPLAY_INFO_SIZE = CTRL_HDR.size + VIRTIO_GPU_MAX_SCANOUTS * DISPLAY_ONE.size  # 408

# The one field after the header that decides the answer for a command naming a resource:
# resource_create_2d, resource_unref, attach/detach_backing, assign_uuid, create_blob all
# carry resource_id first; transfer_to_host_2d and resource_flush carry it after a rect
# (and, for the transfer, an offset).
RESOURCE_ID_OFFSET = {
    VirtioGpuCtrlType.VIRTIO_GPU_CMD_RESOURCE_CREATE_2D: 24,
    VirtioGpuCtrlType.VIRTIO_GPU_CMD_RESOURCE_UNREF: 24,
    VirtioGpuCtrlType.VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING: 24,
    VirtioGpuCtrlType.VIRTIO_GPU_CMD_RESOURCE_DETACH_BACKING: 24,
    VirtioGpuCtrlType.VIRTIO_GPU_CMD_RESOURCE_ASSIGN_UUID: 24,
    VirtioGpuCtrlType.VIRTIO_GPU_CMD_RESOURCE_CREATE_BLOB: 24,
    VirtioGpuCtrlType.VIRTIO_GPU_CMD_RESOURCE_FLUSH: 24 + 16,
    VirtioGpuCtrlType.VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D: 24 + 16 + 8,
}
# struct virtio_gpu_set_scanout: hdr, rect r, scanout_id, resource_id
SET_SCANOUT = struct.Struct("<24x16xII")
# struct virtio_gpu_set_scanout_blob: hdr, rect r, scanout_id, resource_id, ...
SET_SCANOUT_BLOB_IDS = SET_SCANOUT
# struct virtio_gpu_resp_edid: hdr, size, padding, edid[1024]
EDID_MAX = 1024
RESP_EDID_SIZE = CTRL_HDR.size + 8 + EDID_MAX  # 1056
# struct virtio_gpu_get_capset_info: hdr, capset_index, padding
# struct virtio_gpu_get_edid: hdr, scanout, padding
HDR_AND_U32 = struct.Struct("<24xI")
