"""virtio_backend.gpu.virgl: the 3D bookkeeping of the DRM transport, and that no byte
string a guest sends as a 3D command makes it raise (property test)."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from hypervisor.errors import GuestMemoryError
from virtio_backend import wire
from virtio_backend.gpu.decode import decode_header
from virtio_backend.gpu.virgl import (
    CAPSET_DATA,
    MAX_BACKING_ENTRIES,
    MAX_CONTEXTS,
    MAX_DEVICE_BACKING_ENTRIES,
    VIRGL_COMMANDS,
    Virgl3D,
)
from virtio_backend.gpu.virtio_gpu import CTRL_HDR, VirtioGpuCtrlType

V = VirtioGpuCtrlType
RAM = 1 << 20


class FakeMemory:
    """Guest RAM [0, 1 MiB) as the translation sees it."""

    def translate_gpa(self, gpa: int, length: int) -> int:
        if gpa < 0 or length < 0 or gpa + length > RAM:
            raise GuestMemoryError(f"{gpa:#x}+{length:#x} outside guest memory")
        return gpa


def ask(v: Virgl3D, cmd: int, body: bytes = b"", ctx: int = 0) -> int:
    req = CTRL_HDR.pack(cmd, 0, 0, ctx, 0) + body
    rtype, _ = v.handle(decode_header(req), req, FakeMemory())
    return rtype


def test_resources_contexts_and_backing_bookkeeping():
    v = Virgl3D()
    assert ask(v, V.VIRTIO_GPU_CMD_CTX_CREATE, struct.pack("<II64s", 4, 0, b"test"), ctx=3) == V.VIRTIO_GPU_RESP_OK_NODATA
    assert v.contexts[3].debug_name == "test"
    create = struct.pack("<IIIIIIIIIII4x", 7, 0, 64, 0, 8192, 1, 1, 1, 0, 0, 0)
    assert ask(v, V.VIRTIO_GPU_CMD_RESOURCE_CREATE_3D, create) == V.VIRTIO_GPU_RESP_OK_NODATA
    entries = struct.pack("<QI4xQI4x", 0x1000, 4096, 0x8000, 4096)
    assert ask(v, V.VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING, struct.pack("<II", 7, 2) + entries) == V.VIRTIO_GPU_RESP_OK_NODATA
    assert v.resources[7].backing == ((0x1000, 4096), (0x8000, 4096))
    assert ask(v, V.VIRTIO_GPU_CMD_CTX_ATTACH_RESOURCE, struct.pack("<I4x", 7), ctx=3) == V.VIRTIO_GPU_RESP_OK_NODATA
    box = struct.pack("<IIIIIIQIIII", 0, 0, 0, 8192, 1, 1, 0, 7, 0, 0, 0)
    assert ask(v, V.VIRTIO_GPU_CMD_TRANSFER_FROM_HOST_3D, box, ctx=3) == V.VIRTIO_GPU_RESP_OK_NODATA
    assert ask(v, V.VIRTIO_GPU_CMD_TRANSFER_FROM_HOST_3D, box, ctx=4) == V.VIRTIO_GPU_RESP_ERR_INVALID_CONTEXT_ID
    big = struct.pack("<IIIIIIQIIII", 0, 0, 0, 8193, 1, 1, 0, 7, 0, 0, 0)
    assert ask(v, V.VIRTIO_GPU_CMD_TRANSFER_TO_HOST_3D, big, ctx=3) == V.VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER
    assert ask(v, V.VIRTIO_GPU_CMD_RESOURCE_UNREF, struct.pack("<I4x", 7)) == V.VIRTIO_GPU_RESP_OK_NODATA
    assert 7 not in v.contexts[3].resources and not v.resources
    assert v.destroy_context(3) and not v.destroy_context(3)


def test_capset_data_names_the_abi():
    magic, major, minor, max_request, max_reply = struct.unpack("<IHHII", CAPSET_DATA)
    assert (magic, major, minor) == (wire.PXOS_MAGIC, wire.PXOS_ABI_MAJOR, wire.PXOS_ABI_MINOR)
    assert max_request == wire.PXOS_MAX_REQUEST_BYTES and max_reply >= wire.PXOS_MAX_TRANSFER_BYTES


def test_contexts_are_capped():
    v = Virgl3D()
    for i in range(1, MAX_CONTEXTS + 1):
        assert ask(v, V.VIRTIO_GPU_CMD_CTX_CREATE, bytes(72), ctx=i) == V.VIRTIO_GPU_RESP_OK_NODATA
    assert ask(v, V.VIRTIO_GPU_CMD_CTX_CREATE, bytes(72), ctx=MAX_CONTEXTS + 1) == V.VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY


def test_backing_entries_of_all_resources_are_capped():
    v = Virgl3D()
    entries = struct.pack("<QI4x", 0, 4096) * MAX_BACKING_ENTRIES
    n = MAX_DEVICE_BACKING_ENTRIES // MAX_BACKING_ENTRIES
    for rid in range(1, n + 2):
        body = struct.pack("<IIIIIIIIIII4x", rid, 0, 64, 0, 4096, 1, 1, 1, 0, 0, 0)
        assert ask(v, V.VIRTIO_GPU_CMD_RESOURCE_CREATE_3D, body) == V.VIRTIO_GPU_RESP_OK_NODATA
    for rid in range(1, n + 1):
        attach = struct.pack("<II", rid, MAX_BACKING_ENTRIES) + entries
        assert ask(v, V.VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING, attach) == V.VIRTIO_GPU_RESP_OK_NODATA
    attach = struct.pack("<II", n + 1, 1) + entries[:16]
    assert ask(v, V.VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING, attach) == V.VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY
    assert ask(v, V.VIRTIO_GPU_CMD_RESOURCE_UNREF, struct.pack("<I4x", 1)) == V.VIRTIO_GPU_RESP_OK_NODATA
    assert ask(v, V.VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING, attach) == V.VIRTIO_GPU_RESP_OK_NODATA  # room again
    assert v.backing_entries == MAX_DEVICE_BACKING_ENTRIES - MAX_BACKING_ENTRIES + 1


@settings(max_examples=300, deadline=None)
@given(cmd=st.sampled_from(sorted(VIRGL_COMMANDS)), ctx=st.integers(0, 3),
       body=st.binary(max_size=160), prime=st.booleans())
def test_any_bytes_get_an_answer_never_an_exception(cmd, ctx, body, prime):
    v = Virgl3D()
    if prime:  # some state to hit: a context and a backed resource attached to it
        ask(v, V.VIRTIO_GPU_CMD_CTX_CREATE, bytes(72), ctx=1)
        ask(v, V.VIRTIO_GPU_CMD_RESOURCE_CREATE_3D, struct.pack("<IIIIIIIIIII4x", 1, 0, 64, 0, 4096, 1, 1, 1, 0, 0, 0))
        ask(v, V.VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING, struct.pack("<IIQI4x", 1, 1, 0, 4096))
    rtype = ask(v, cmd, body, ctx=ctx)
    assert V(rtype).name.startswith("VIRTIO_GPU_RESP_")
