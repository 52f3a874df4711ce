"""virtio_backend.wire: the host's cffi view of pxos_gpu.h matches the header and the ABI."""

from __future__ import annotations

import struct

import pytest

from virtio_backend import wire
from virtio_backend.wire import PxosCmdType, PxosStatus, ffi


def test_every_struct_has_the_size_the_host_expects():
    for name, size in wire.STRUCT_SIZES.items():
        assert ffi.sizeof(f"struct {name}") == size, name


def test_sizes_follow_the_header_static_asserts():
    text = wire.HEADER_PATH.read_text()
    wire._check_layout(ffi, text)  # raises on any mismatch
    assert "_Static_assert(sizeof(struct pxos_resp_launch) == 160 + 40" in text


def test_a_header_asserting_another_size_is_refused():
    text = wire.HEADER_PATH.read_text().replace(
        "sizeof(struct pxos_cmd_transfer) == 48", "sizeof(struct pxos_cmd_transfer) == 56"
    )
    with pytest.raises(wire.WireAbiMismatch, match="pxos_cmd_transfer"):
        wire._check_layout(ffi, text)


def test_size_expressions_other_than_arithmetic_are_refused():
    with pytest.raises(wire.WireAbiMismatch):
        wire._eval_size_expr("__import__('os')")


def test_field_offsets_match_a_hand_written_layout():
    # struct pxos_cmd_transfer = ctrl_hdr(type, flags, fence_id, ctx_id, ring_idx, pad[3]) + 3 x u64
    fmt = struct.Struct("<IIQIB3xQQQ")
    p = ffi.new("struct pxos_cmd_transfer *")
    p.hdr.type, p.hdr.fence_id, p.hdr.ctx_id, p.handle, p.offset, p.length = 0x7003, 9, 4, 11, 22, 33
    assert fmt.unpack(ffi.buffer(p)[:]) == (0x7003, 0, 9, 4, 0, 11, 22, 33)
    assert ffi.offsetof("struct pxos_resp_hdr", "status") == 24
    assert ffi.offsetof("struct pxos_resp_hdr", "message") == 32
    assert ffi.offsetof("struct pxos_resp_info", "magic") == 160


def test_enums_carry_the_header_names_and_values():
    assert PxosCmdType.PXOS_CMD_GET_INFO == 0x7000
    assert PxosCmdType.PXOS_CMD_SESSION_CLOSE == 0x700B
    assert PxosStatus.PXOS_S_UNSUPPORTED == 11
    assert wire.PxosDtype.PXOS_DTYPE_INT64 == 5
    assert wire.PxosClass.PXOS_CLASS_BATCH == 4
    assert wire.PxosBindingKind.PXOS_BIND_SCALAR_I64 == 3
    assert wire.PxosDirection.PXOS_DIR_INOUT == 3
    assert all(wire.PXOS_CMD_FIRST <= t <= wire.PXOS_CMD_LAST for t in PxosCmdType)


def test_every_error_class_of_the_host_names_a_wire_status():
    from hypervisor import errors

    for obj in vars(errors).values():
        if isinstance(obj, type) and issubclass(obj, errors.PxosError):
            assert obj.status in PxosStatus.__members__, obj


def test_defines_are_module_constants():
    assert wire.PXOS_MAGIC.to_bytes(4, "little") == b"PXOS"
    assert wire.PXOS_MAX_TRANSFER_BYTES == 8 << 20
    assert wire.PXOS_MAX_REQUEST_BYTES == wire.PXOS_MAX_TRANSFER_BYTES + 4096
    assert wire.PXOS_DIM_SYMBOLIC == 2**64 - 1
    assert "struct pxos_binding" in wire.cdef_text()


# ---- precompiled layouts -----------------------------------------------------------------


def test_layout_of_a_whole_struct_agrees_with_cffi_field_by_field():
    lay = wire.layout("pxos_resp_info")
    assert lay.offset == 0 and lay.size == ffi.sizeof("struct pxos_resp_info")
    p = ffi.new("struct pxos_resp_info *")
    p.r.hdr.type, p.r.hdr.fence_id, p.r.hdr.ring_idx, p.r.status = 0x7100, 2**64 - 1, 7, 3
    p.r.message = b"hi"
    p.magic, p.vm_id, p.memory_used, p.max_inflight = wire.PXOS_MAGIC, 9, 2**40, 64
    p.device_name = b"cpu"
    values = lay.struct.unpack(ffi.buffer(p)[:])
    assert values[:5] == (0x7100, 0, 2**64 - 1, 0, 7) and values[6] == 3
    assert values[8] == b"hi".ljust(wire.PXOS_MAX_MESSAGE, b"\0")
    assert values[9] == wire.PXOS_MAGIC and values[-1].rstrip(b"\0") == b"cpu"
    assert lay.struct.pack(*values) == ffi.buffer(p)[:]  # and back, byte for byte


def test_layout_of_some_fields_starts_at_the_first_one():
    lay = wire.layout("pxos_cmd_alloc", ("dtype", "rank", "dims"))
    assert lay.offset == ffi.offsetof("struct pxos_cmd_alloc", "dtype") == 24
    p = ffi.new("struct pxos_cmd_alloc *")
    p.dtype, p.rank, p.dims[7] = 2, 8, 5
    assert lay.struct.unpack_from(ffi.buffer(p)[:], lay.offset) == (2, 8, 0, 0, 0, 0, 0, 0, 0, 5)
    binding = wire.layout("pxos_binding")
    assert binding.struct.format == "<64sIIQ" and binding.fields == ("name", "kind", "dtype", "value")


def test_layout_refuses_fields_the_header_does_not_have_in_that_order():
    with pytest.raises(wire.WireAbiMismatch, match="no field"):
        wire.layout("pxos_cmd_transfer", ("handle", "size"))
    with pytest.raises(wire.WireAbiMismatch, match="not consecutive"):
        wire.layout("pxos_cmd_transfer", ("handle", "length"))
    with pytest.raises(wire.WireAbiMismatch, match="not consecutive"):
        wire.layout("pxos_cmd_transfer", ("offset", "handle"))
    with pytest.raises(wire.WireAbiMismatch, match="arrays of structs"):
        wire.layout("pxos_resp_compile")
