"""virtio_backend.gpu.encode: typed responses → the bytes of each response struct."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from virtio_backend import wire
from virtio_backend.gpu import commands as c
from virtio_backend.gpu import guest as g
from virtio_backend.gpu.decode import decode_header
from virtio_backend.gpu.encode import encode
from virtio_backend.wire import PxosClass, PxosCmdType, PxosDirection, PxosDtype, PxosStatus

T = PxosCmdType
S = PxosStatus


def hdr_of(req: bytes) -> c.Header:
    return decode_header(req)


def roundtrip(req: bytes, resp) -> dict:
    h = hdr_of(req)
    return g.parse_response(h.type, encode(h, resp))


def test_header_echoes_fence_session_and_ring_but_not_other_flags():
    req = bytearray(g.get_info(session=5, fence_id=77, flags=1 | 2 | 0x80))
    req[20] = 3  # ring_idx
    out = encode(hdr_of(bytes(req)), c.NoDataResp())
    rtype, flags, fence, ctx, ring = struct.unpack_from("<IIQIB", out)
    assert (rtype, flags, fence, ctx, ring) == (wire.PXOS_RESP, 3, 77, 5, 3)


def test_info_fills_limits_and_identity():
    r = roundtrip(g.get_info(), c.InfoResp(7, 1 << 30, 4096, 50, 0, 64, "numpy", "cpu"))
    assert r["status"] == S.PXOS_S_OK and r["message"] == ""
    assert r["magic"] == wire.PXOS_MAGIC and r["abi_major"] == wire.PXOS_ABI_MAJOR
    assert (r["vm_id"], r["memory_quota"], r["memory_used"], r["compute_share_pct"]) == (7, 1 << 30, 4096, 50)
    assert (r["max_rank"], r["max_bindings"], r["max_name"]) == (8, 32, 64)
    assert r["max_transfer_bytes"] == wire.PXOS_MAX_TRANSFER_BYTES and r["max_inflight"] == 64
    assert (r["backend"], r["device_name"]) == ("numpy", "cpu")
    assert r["used_len"] == 320


def test_alloc_read_session_close_stats():
    assert roundtrip(g.alloc(1, [2]), c.AllocResp(11, 4))["handle"] == 11
    r = roundtrip(g.read(1, 0, 8), c.ReadResp(8))
    assert r["payload_len"] == 8 and r["used_len"] == 160
    r = roundtrip(g.session_close(2), c.SessionCloseResp(100, 2, 3, 4))
    assert (r["bytes_freed"], r["buffers_freed"], r["kernels_freed"], r["launches_cancelled"]) == (100, 2, 3, 4)
    fields = {f: i + 1 for i, f in enumerate(c.StatsResp.__slots__)}
    r = roundtrip(g.stats(), c.StatsResp(**fields))
    assert all(r[f] == v for f, v in fields.items())


def test_compile_kernels_and_diagnostics():
    r = roundtrip(g.compile("x"), c.CompileResp((c.KernelDesc(3, "saxpy", 4), c.KernelDesc(4, "dot", 3))))
    assert r["nkernels"] == 2 and r["kernels"][1]["name"] == "dot" and r["kernels"][0]["nparams"] == 4
    diags = tuple(c.Diagnostic(i + 1, 2 * i + 1, "E_SYNTAX", f"problem {i}") for i in range(20))
    r = roundtrip(g.compile("x"), c.ErrorResp(S.PXOS_S_COMPILE, "20 problems", diags))
    assert r["status"] == S.PXOS_S_COMPILE and r["ndiags"] == wire.PXOS_MAX_DIAGS
    assert r["diags"][15] == {"line": 16, "column": 31, "code": "E_SYNTAX", "message": "problem 15"}
    assert r["used_len"] == wire.sizeof("pxos_resp_compile")


def test_kernel_info_params_and_symbolic_dims():
    params = (
        c.ParamDesc("x", PxosDtype.PXOS_DTYPE_FLOAT32, PxosDirection.PXOS_DIR_IN, (64, wire.PXOS_DIM_SYMBOLIC)),
        c.ParamDesc("y", PxosDtype.PXOS_DTYPE_FLOAT32, PxosDirection.PXOS_DIR_OUT, None),
        c.ParamDesc("a", PxosDtype.PXOS_DTYPE_FLOAT64, PxosDirection.PXOS_DIR_IN, ()),
    )
    r = roundtrip(g.kernel_info(5), c.KernelInfoResp(5, "k", PxosClass.PXOS_CLASS_BATCH, None, 7, params))
    assert (r["kernel_id"], r["nparams"], r["name"], r["nstatements"]) == (5, 3, "k", 7)
    assert r["priority"] == wire.PXOS_PRIORITY_DEFAULT and r["class_hint"] == PxosClass.PXOS_CLASS_BATCH
    p0, p1, p2 = r["params"][:3]
    assert p0["rank"] == 2 and p0["dims"][:3] == [64, wire.PXOS_DIM_SYMBOLIC, 0]
    assert p1["rank"] == wire.PXOS_RANK_ANY and p1["direction"] == PxosDirection.PXOS_DIR_OUT
    assert p2["rank"] == 0


def test_launch_carries_its_own_status_and_timings():
    r = roundtrip(g.launch(1, []), c.LaunchResp(S.PXOS_S_EXEC, "boom", 9, 100, 20, 150, PxosClass.PXOS_CLASS_THROUGHPUT))
    assert (r["status"], r["message"], r["launch_id"], r["device_ns"], r["queue_ns"], r["total_ns"]) == (
        S.PXOS_S_EXEC, "boom", 9, 100, 20, 150)
    assert r["class_assigned"] == PxosClass.PXOS_CLASS_THROUGHPUT


def test_errors_fill_the_full_struct_or_the_bare_header():
    h = hdr_of(g.alloc(1, [1]))
    full = encode(h, c.ErrorResp(S.PXOS_S_QUOTA, "over quota"))
    assert len(full) == wire.sizeof("pxos_resp_alloc") and full[160:] == bytes(16)
    bare = encode(h, c.ErrorResp(S.PXOS_S_INVALID, "too small"), header_only=True)
    assert len(bare) == 160
    unknown = encode(hdr_of(g.raw_header(0x70AA)), c.ErrorResp(S.PXOS_S_UNSUPPORTED, "unknown"))
    assert len(unknown) == 160 and struct.unpack_from("<I", unknown, 24)[0] == S.PXOS_S_UNSUPPORTED


@given(st.text(max_size=300))
def test_messages_are_cut_at_a_character_boundary_and_nul_terminated(text):
    out = encode(hdr_of(g.free(1)), c.ErrorResp(S.PXOS_S_NOT_FOUND, text))
    raw = out[32:160]
    assert raw[-1] == 0
    msg = raw[: raw.index(0)].decode("utf-8")  # never a broken character
    assert text.encode("utf-8", "replace").startswith(msg.encode()) or "\0" in text
