"""virtio_backend.gpu.decode: request bytes → typed commands, and every malformed request
refused with its status before anything acts on it."""

from __future__ import annotations

import dataclasses
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from virtio_backend import wire
from virtio_backend.gpu import commands as c
from virtio_backend.gpu import guest as g
from virtio_backend.gpu.chain import Segments, gather, slice_views
from virtio_backend.gpu.decode import BadRequest, decode_command, decode_header, read_head
from virtio_backend.wire import PxosBindingKind, PxosClass, PxosCmdType, PxosDtype, PxosStatus

T = PxosCmdType
S = PxosStatus
F32, I32 = PxosDtype.PXOS_DTYPE_FLOAT32, PxosDtype.PXOS_DTYPE_INT32


def split(data: bytes, cuts=()) -> list[memoryview]:
    """The request as a chain of readable segments cut at ``cuts``."""
    mv, out, prev = memoryview(bytes(data)), [], 0
    for cut in sorted(set(x for x in cuts if 0 < x < len(data))):
        out.append(mv[prev:cut])
        prev = cut
    out.append(mv[prev:])
    return out


def header(data: bytes) -> c.Header:
    return decode_header(read_head(Segments(split(data))))


def decode(data: bytes, writable: int | None = None, cuts=()) -> c.Command:
    readable = split(data, cuts)
    head = read_head(Segments(readable))
    hdr = decode_header(head)
    assert hdr is not None
    if writable is None:
        writable = g.response_size(hdr.type, 1 << 16)
    return decode_command(hdr, head, Segments(readable, [memoryview(bytearray(writable))]))


def refused(data: bytes, status: PxosStatus, match: str, **kw) -> None:
    with pytest.raises(BadRequest, match=match) as exc:
        decode(data, **kw)
    assert exc.value.wire_status == status
    assert exc.value.status == status.name


# ---- every command decodes ---------------------------------------------------------------


def test_get_info_and_header_fields():
    cmd = decode(g.get_info(session=7, fence_id=99, flags=1))
    assert isinstance(cmd, c.GetInfoCmd)
    assert (cmd.abi_major, cmd.abi_minor) == (wire.PXOS_ABI_MAJOR, wire.PXOS_ABI_MINOR)
    assert (cmd.hdr.session, cmd.hdr.fence_id, cmd.hdr.flags) == (7, 99, 1)


def test_alloc_shapes():
    assert decode(g.alloc(F32, [3, 4])) == c.AllocCmd(header(g.alloc(F32, [3, 4])), F32, (3, 4))
    assert decode(g.alloc(I32, [])).shape == ()
    assert decode(g.alloc(I32, [0, 5])).shape == (0, 5)
    assert decode(g.alloc(F32, [1] * wire.PXOS_MAX_RANK)).shape == (1,) * 8


def test_write_keeps_the_data_as_views_of_the_chain():
    data = bytes(range(256)) * 4
    req = g.write(5, 16, data)
    cmd = decode(req, cuts=(10, 48, 300, 700))
    assert isinstance(cmd, c.WriteCmd)
    assert (cmd.handle, cmd.offset, cmd.length) == (5, 16, len(data))
    assert all(isinstance(v, memoryview) for v in cmd.data)
    assert b"".join(bytes(v) for v in cmd.data) == data
    assert len(cmd.data) == 3  # 48..300, 300..700, 700..end: no copy, no merge


def test_read_points_at_the_writable_part_after_the_response_header():
    cmd = decode(g.read(5, 0, 100), writable=160 + 100)
    assert isinstance(cmd, c.ReadCmd)
    assert sum(len(v) for v in cmd.dst) == 100


def test_compile_kernel_free_stats_idle_session_close():
    assert decode(g.compile("KERNEL k\n")).source == "KERNEL k\n"
    assert decode(g.kernel_info(3)) == c.KernelInfoCmd(header(g.kernel_info(3)), 3)
    assert isinstance(decode(g.kernel_free(3)), c.KernelFreeCmd)
    assert isinstance(decode(g.stats()), c.StatsCmd)
    assert decode(g.idle_hint(True)).idle is True
    assert decode(g.idle_hint(0)).idle is False
    assert decode(g.session_close(4)).hdr.session == 4


def test_launch_bindings():
    req = g.launch(9, [g.bind_buffer("x", 12), g.bind_f64("alpha", -0.5, F32), g.bind_i64("n", -7, I32)],
                   priority=100, class_hint=PxosClass.PXOS_CLASS_REALTIME)
    cmd = decode(req, cuts=(7, 100, 151))
    assert isinstance(cmd, c.LaunchCmd)
    assert cmd.kernel_id == 9 and cmd.priority == 100 and cmd.class_hint == PxosClass.PXOS_CLASS_REALTIME
    assert cmd.bindings == (
        c.Binding("x", PxosBindingKind.PXOS_BIND_BUFFER, None, 12),
        c.Binding("alpha", PxosBindingKind.PXOS_BIND_SCALAR_F64, F32, -0.5),
        c.Binding("n", PxosBindingKind.PXOS_BIND_SCALAR_I64, I32, -7),
    )
    assert decode(g.launch(9, [])).priority is None


# ---- refusals ---------------------------------------------------------------------------


def test_short_header_has_no_header():
    assert decode_header(read_head(Segments(split(b"\0" * 23, cuts=(5, 11))))) is None
    assert decode_header(read_head(Segments([]))) is None
    assert decode_header(b"") is None


def test_unknown_command_in_the_pxos_range():
    refused(g.raw_header(0x70FE), S.PXOS_S_UNSUPPORTED, "unknown PXOS command 0x70fe")


def test_request_shorter_or_longer_than_its_struct():
    refused(g.get_info()[:30], S.PXOS_S_INVALID, "30 request bytes, struct needs 32")
    refused(g.free(1) + b"\0", S.PXOS_S_INVALID, "expected exactly 32")
    refused(g.write(1, 0, b"abcd")[:-1], S.PXOS_S_INVALID, "expected exactly 52")


def test_request_over_the_chain_limit():
    big = g.transfer_struct(T.PXOS_CMD_WRITE, 1, 0, 0) + bytes(wire.PXOS_MAX_REQUEST_BYTES)
    refused(big, S.PXOS_S_TOO_LARGE, "PXOS_MAX_REQUEST_BYTES")


def test_reserved_fields_must_be_zero():
    p = bytearray(g.get_info())
    p[28] = 1
    refused(bytes(p), S.PXOS_S_INVALID, r"GET_INFO.padding must be 0")
    refused(g.compile("x") [:28] + b"\1\0\0\0" + b"x", S.PXOS_S_INVALID, "COMPILE.padding")
    refused(g.launch(1, [], flags=2), S.PXOS_S_INVALID, "LAUNCH.flags must be 0")
    p = bytearray(g.idle_hint(1))
    p[28] = 1
    refused(bytes(p), S.PXOS_S_INVALID, "IDLE_HINT.padding")


def test_alloc_refusals():
    refused(g.alloc(0, [1]), S.PXOS_S_INVALID, "ALLOC.dtype 0")
    refused(g.alloc(6, [1]), S.PXOS_S_INVALID, "ALLOC.dtype 6")
    refused(g.alloc(F32, [1], rank=9), S.PXOS_S_INVALID, "exceeds PXOS_MAX_RANK")
    refused(g.alloc(F32, [4, 4, 7], rank=2), S.PXOS_S_INVALID, r"dims\[2\] \(past rank 2\) must be 0")
    refused(g.alloc(F32, [1 << 29, 2]), S.PXOS_S_TOO_LARGE, "PXOS_MAX_BUFFER_BYTES")
    refused(g.alloc(F32, [2**64 - 1] * 8), S.PXOS_S_TOO_LARGE, "PXOS_MAX_BUFFER_BYTES")
    assert decode(g.alloc(PxosDtype.PXOS_DTYPE_INT64, [1 << 28])).shape == (1 << 28,)  # exactly 2 GiB


def test_transfer_refusals():
    refused(g.read(1, 0, wire.PXOS_MAX_TRANSFER_BYTES + 1), S.PXOS_S_TOO_LARGE, "PXOS_MAX_TRANSFER_BYTES")
    fake_write = g.transfer_struct(T.PXOS_CMD_WRITE, 1, 0, wire.PXOS_MAX_TRANSFER_BYTES + 1)
    refused(fake_write, S.PXOS_S_TOO_LARGE, "PXOS_MAX_TRANSFER_BYTES")
    refused(g.read(1, 0, 64), S.PXOS_S_INVALID, "needs 160 \\+ 64", writable=160 + 63)
    refused(g.transfer_struct(T.PXOS_CMD_WRITE, 1, 0, 10) + b"x" * 9, S.PXOS_S_INVALID, "expected exactly 58")


def test_compile_refusals():
    refused(g.compile(b"x" * (wire.PXOS_MAX_SOURCE_BYTES + 1)), S.PXOS_S_TOO_LARGE, "PXOS_MAX_SOURCE_BYTES")
    refused(g.compile(b"abc\0def"), S.PXOS_S_INVALID, "NUL byte at offset 3")
    refused(g.compile(b"ab\xffc"), S.PXOS_S_INVALID, "not UTF-8 \\(byte 2\\)")
    refused(g.compile(b"abc", source_len=4), S.PXOS_S_INVALID, "expected exactly 36")


def test_launch_refusals():
    too_many = [g.bind_buffer(f"p{i}", 1) for i in range(wire.PXOS_MAX_BINDINGS + 1)]
    refused(g.launch(1, too_many), S.PXOS_S_TOO_LARGE, "PXOS_MAX_BINDINGS")
    refused(g.launch(1, [g.bind_buffer("x", 1)], nbindings=2), S.PXOS_S_INVALID, "expected exactly 208")
    refused(g.launch(1, [g.bind_buffer(b"y" * 64, 1)]), S.PXOS_S_INVALID, "not NUL-terminated")
    refused(g.launch(1, [g.bind_buffer(b"", 1)]), S.PXOS_S_INVALID, "binding 0 name: empty")
    refused(g.launch(1, [g.bind_buffer(b"\xff\xfe", 1)]), S.PXOS_S_INVALID, "not UTF-8")
    refused(g.launch(1, [("x", 4, 0, 1)]), S.PXOS_S_INVALID, "kind 4 is not a valid PxosBindingKind")
    refused(g.launch(1, [("x", 1, 2, 1)]), S.PXOS_S_INVALID, "buffer bindings carry none")
    refused(g.launch(1, [g.bind_f64("a", 1.0, I32)]), S.PXOS_S_INVALID, "SCALAR_F64 needs a float dtype")
    refused(g.launch(1, [g.bind_i64("a", 1, F32)]), S.PXOS_S_INVALID, "SCALAR_I64 needs an int dtype")
    refused(g.launch(1, [g.bind_i64("a", 2**31, I32)]), S.PXOS_S_INVALID, "does not fit int32")
    refused(g.launch(1, [g.bind_f64("a", 1.0, 9)]), S.PXOS_S_INVALID, "dtype 9")
    refused(g.launch(1, [g.bind_buffer("x", 1), g.bind_buffer("x", 2)]), S.PXOS_S_INVALID, "bound more than once")
    refused(g.launch(1, [], priority=101), S.PXOS_S_INVALID, "LAUNCH.priority 101")
    refused(g.launch(1, [], class_hint=5), S.PXOS_S_INVALID, "class_hint 5")


def test_idle_hint_is_a_boolean():
    refused(g.idle_hint(2), S.PXOS_S_INVALID, "must be 0 or 1")


def test_response_space_is_checked_before_anything_runs():
    refused(g.alloc(F32, [1]), S.PXOS_S_INVALID, "175 writable bytes, the response needs 176", writable=175)
    refused(g.compile("x"), S.PXOS_S_INVALID, "the response needs 4008", writable=4000)


# ---- properties ---------------------------------------------------------------------------

_valid_requests = st.sampled_from([
    g.get_info(), g.alloc(F32, [2, 3]), g.free(4), g.write(1, 0, b"0123456789abcdef" * 8), g.read(1, 8, 64),
    g.compile("KERNEL k(float[4] x):\n"), g.kernel_info(2), g.kernel_free(2), g.stats(), g.idle_hint(1),
    g.session_close(3), g.launch(2, [g.bind_buffer("x", 1), g.bind_i64("n", 3)], priority=5),
])


@settings(max_examples=300, deadline=None)
@given(req=_valid_requests, cuts=st.lists(st.integers(1, 400), max_size=6))
def test_any_split_of_a_request_decodes_the_same(req, cuts):
    assert _plain(decode(req, cuts=cuts)) == _plain(decode(req))


def _plain(cmd):
    # The views differ with the split; what they hold must not.
    if isinstance(cmd, c.WriteCmd):
        return dataclasses.replace(cmd, data=(b"".join(map(bytes, cmd.data)),))
    if isinstance(cmd, c.ReadCmd):
        return dataclasses.replace(cmd, dst=(sum(map(len, cmd.dst)),))
    return cmd


@settings(max_examples=500, deadline=None)
@given(cmd=st.sampled_from(list(T)), body=st.binary(max_size=600), writable=st.integers(0, 5000),
       cuts=st.lists(st.integers(1, 600), max_size=4))
def test_arbitrary_bytes_decode_or_are_refused_never_crash(cmd, body, writable, cuts):
    data = struct.pack("<IIQIB3x", cmd, 0, 0, 1, 0) + body
    try:
        out = decode(data, writable=writable, cuts=cuts)
    except BadRequest as exc:
        assert exc.wire_status in (S.PXOS_S_INVALID, S.PXOS_S_TOO_LARGE, S.PXOS_S_UNSUPPORTED)
    else:
        assert out.hdr.type == cmd


@given(data=st.binary(max_size=200), cuts=st.lists(st.integers(1, 200), max_size=5),
       offset=st.integers(0, 200), length=st.integers(0, 200))
def test_gather_and_slice_agree_with_plain_slicing(data, cuts, offset, length):
    views = split(data, cuts)
    if offset + length <= len(data):
        assert gather(views, offset, length) == data[offset : offset + length]
        assert b"".join(map(bytes, slice_views(views, offset, length))) == data[offset : offset + length]
    else:
        with pytest.raises(ValueError):
            gather(views, offset, length)
