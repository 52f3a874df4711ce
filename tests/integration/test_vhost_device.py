"""The virtio-gpu-pxos device end to end: the scripted vhost-user frontend (playing QEMU,
memfd guest RAM, real split rings) drives the real transport, device and Hypervisor
(NumPy backend) over real unix sockets. Every PXOS command, and the errors a guest can
cause, each answered with its status while the daemon carries on."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from hypervisor import Hypervisor
from tests.support.vhost_frontend import VhostUserFrontend
from virtio_backend import wire
from virtio_backend.gpu import guest as g
from virtio_backend.gpu.transport import VhostUserTransport
from virtio_backend.gpu.virtio_gpu import CTRL_HDR, VirtioGpuCtrlType
from virtio_backend.wire import PxosClass, PxosCmdType, PxosDirection, PxosStatus

T, S, V = PxosCmdType, PxosStatus, VirtioGpuCtrlType
F32 = wire.PxosDtype.PXOS_DTYPE_FLOAT32
QUOTA = 1 << 20  # bytes per VM: small, so over-quota is easy to reach

SAXPY = """GPU_KERNEL saxpy
GPU_PARAM x float32[N]
GPU_PARAM y float32[N]
GPU_PARAM a float32
GPU_PARAM out float32[N]
GPU_CLASS INTERACTIVE
GPU_THREAD_CODE:
    MUL x a -> t
    ADD t y -> out
GPU_END
"""


class Guest:
    """What a guest driver does: put a request on the control queue, wait for its answer."""

    def __init__(self, fe: VhostUserFrontend):
        self.fe = fe

    def send(self, req: bytes, *, read_length: int = 0, writable: int | None = None, cuts=(), q: int = 0,
             indirect: bool = False) -> int:
        size = g.response_size(_type(req), read_length) if writable is None else writable
        out, prev = [], 0
        for cut in [*sorted(cuts), len(req)]:  # the readable part split into descriptors
            out.append(req[prev:cut])
            prev = cut
        head = self.fe.submit(q, out=out, in_=[size] if size else [], indirect=indirect)
        self.fe.kick(q, force=True)
        return head

    def call(self, req: bytes, **kw) -> dict:
        head = self.send(req, **kw)
        [used] = self.fe.wait_used(0)
        assert used.head == head
        return g.parse_response(_type(req), used.data)

    def ok(self, req: bytes, **kw) -> dict:
        r = self.call(req, **kw)
        assert r["status"] == S.PXOS_S_OK, r["message"]
        return r

    def refused(self, req: bytes, status: PxosStatus, match: str = "", **kw) -> dict:
        r = self.call(req, **kw)
        assert (S(r["status"]), match in r["message"]) == (status, True), r["message"]
        return r

    def alloc(self, n: int, *, session: int = 0) -> int:
        return self.ok(g.alloc(F32, [n], session=session))["handle"]


def _type(req: bytes) -> int:
    return struct.unpack_from("<I", req)[0]


@pytest.fixture
def hv():
    hv = Hypervisor(backend="numpy", device_pool_bytes=64 << 20).start()
    hv.register_vm(1, 0, 60, memory_quota_bytes=QUOTA)
    hv.register_vm(2, 0, 40, memory_quota_bytes=QUOTA)
    yield hv
    hv.stop()


@pytest.fixture
def transport(hv, tmp_path):
    t = VhostUserTransport(hv)
    t.attach(1, str(tmp_path / "vm1.sock"))
    t.attach(2, str(tmp_path / "vm2.sock"))
    yield t
    t.close()


@pytest.fixture
def vm1(transport, tmp_path):
    with VhostUserFrontend(str(tmp_path / "vm1.sock")) as fe:
        fe.boot()
        yield Guest(fe)


@pytest.fixture
def vm2(transport, tmp_path):
    with VhostUserFrontend(str(tmp_path / "vm2.sock")) as fe:
        fe.boot()
        yield Guest(fe)


def test_every_command_end_to_end(vm1, hv, transport):
    info = vm1.ok(g.get_info(session=3))
    assert (info["magic"], info["abi_major"], info["vm_id"]) == (wire.PXOS_MAGIC, wire.PXOS_ABI_MAJOR, 1)
    assert (info["memory_quota"], info["memory_used"], info["compute_share_pct"]) == (QUOTA, 0, 60)
    assert (info["backend"], info["max_inflight"], info["ctx_id"]) == ("numpy", 64, 3)

    n = 1000
    x, y = np.arange(n, dtype=np.float32), np.full(n, 0.5, dtype=np.float32)
    hx, hy, hout = (vm1.alloc(n) for _ in range(3))
    assert len({hx, hy, hout}) == 3 and 0 not in (hx, hy, hout)
    vm1.ok(g.write(hx, 0, x.tobytes()), cuts=(20, 48, 1000, 3001))  # descriptors split anywhere
    vm1.ok(g.write(hy, 0, y.tobytes()))

    comp = vm1.ok(g.compile(SAXPY))
    assert comp["nkernels"] == 1 and comp["kernels"][0]["name"] == "saxpy" and comp["kernels"][0]["nparams"] == 4
    kid = comp["kernels"][0]["kernel_id"]
    ki = vm1.ok(g.kernel_info(kid))
    assert (ki["name"], ki["nparams"], ki["nstatements"], ki["class_hint"]) == ("saxpy", 4, 2, PxosClass.PXOS_CLASS_INTERACTIVE)
    assert ki["priority"] == wire.PXOS_PRIORITY_DEFAULT
    px, _, pa, pout = ki["params"][:4]
    assert (px["name"], px["rank"], px["dims"][0], px["direction"]) == ("x", 1, wire.PXOS_DIM_SYMBOLIC, PxosDirection.PXOS_DIR_IN)
    assert (pa["rank"], pout["direction"]) == (0, PxosDirection.PXOS_DIR_OUT)

    la = vm1.ok(g.launch(kid, [g.bind_buffer("x", hx), g.bind_buffer("y", hy), g.bind_f64("a", 3.0, F32),
                               g.bind_buffer("out", hout)], priority=80))
    assert la["launch_id"] > 0 and la["device_ns"] > 0 and la["total_ns"] >= la["queue_ns"]
    assert la["class_assigned"] == PxosClass.PXOS_CLASS_INTERACTIVE

    rd = vm1.ok(g.read(hout, 0, 4 * n), read_length=4 * n)
    assert rd["payload_len"] == 4 * n and rd["used_len"] == 160 + 4 * n
    np.testing.assert_array_equal(np.frombuffer(rd["payload"], np.float32), 3.0 * x + y)
    part = vm1.ok(g.read(hout, 40, 8), read_length=8)
    assert np.frombuffer(part["payload"], np.float32).tolist() == [30.5, 33.5]

    st = vm1.ok(g.stats())
    assert (st["nbuffers"], st["nkernels"], st["launches_total"], st["memory_used"]) == (3, 1, 1, 3 * 4 * n)
    assert st["device_ns_total"] > 0 and st["compute_share_pct"] == 60
    vm1.ok(g.idle_hint(True))
    vm1.ok(g.idle_hint(False))
    vm1.ok(g.kernel_free(kid))
    vm1.refused(g.kernel_info(kid), S.PXOS_S_NOT_FOUND)
    vm1.ok(g.free(hout))
    assert hv.vm_info(1).memory_used == 2 * 4 * n

    h5 = vm1.alloc(10, session=5)
    vm1.ok(g.compile(SAXPY, session=5))
    closed = vm1.ok(g.session_close(5))
    assert (closed["buffers_freed"], closed["bytes_freed"], closed["kernels_freed"]) == (1, 40, 1)
    vm1.refused(g.free(h5, session=5), S.PXOS_S_NOT_FOUND)

    dev = transport.status()[1]["device"]
    assert dev["pxos_by_command"]["PXOS_CMD_ALLOC"] == 4 and dev["errors_by_status"]["PXOS_S_NOT_FOUND"] == 2


def test_transfers_scatter_gather_through_indirect_tables(vm1):
    data = bytes(range(256)) * 64
    h = vm1.alloc(len(data) // 4)
    vm1.ok(g.write(h, 0, data), cuts=range(48, len(data), 999), indirect=True)
    head = vm1.fe.submit(0, out=[g.read(h, 0, len(data))], in_=[160, 1, 5000, len(data) - 5001], indirect=True)
    vm1.fe.kick(0, force=True)
    [used] = vm1.fe.wait_used(0)
    assert used.head == head and used.len == 160 + len(data) and used.data[160:] == data
    vm1.refused(g.write(h, len(data) - 3, b"abcd"), S.PXOS_S_INVALID)  # past the buffer's end


def test_malformed_requests_get_their_status(vm1):
    vm1.refused(g.get_info()[:30], S.PXOS_S_INVALID, "struct needs 32")
    vm1.refused(g.raw_header(0x70FF), S.PXOS_S_UNSUPPORTED, "unknown PXOS command 0x70ff")
    vm1.refused(g.get_info(abi_major=2), S.PXOS_S_UNSUPPORTED, f"PXOS ABI 2.{wire.PXOS_ABI_MINOR}")
    vm1.refused(g.alloc(9, [4]), S.PXOS_S_INVALID, "ALLOC.dtype 9")
    vm1.refused(g.launch(1, [g.bind_buffer(b"n" * 64, 1)]), S.PXOS_S_INVALID, "not NUL-terminated")
    vm1.refused(g.read(1, 0, wire.PXOS_MAX_TRANSFER_BYTES + 1), S.PXOS_S_TOO_LARGE, "PXOS_MAX_TRANSFER_BYTES")
    vm1.refused(g.compile(b"x" * (wire.PXOS_MAX_SOURCE_BYTES + 1)), S.PXOS_S_TOO_LARGE, "PXOS_MAX_SOURCE_BYTES")
    vm1.refused(g.alloc(F32, [1 << 40]), S.PXOS_S_TOO_LARGE, "PXOS_MAX_BUFFER_BYTES")
    r = vm1.refused(g.alloc(F32, [4]), S.PXOS_S_INVALID, "the response needs 176", writable=170)
    assert r["used_len"] == 160  # the bare header: nothing was allocated
    head = vm1.send(g.alloc(F32, [4]), writable=100)  # not even a header fits: as much as fits
    [used] = vm1.fe.wait_used(0)
    assert used.head == head and used.len == 100
    head = vm1.send(b"\0" * 10)  # no header at all: completed empty
    [used] = vm1.fe.wait_used(0)
    assert (used.head, used.len) == (head, 0)
    assert vm1.ok(g.stats())["nbuffers"] == 0  # none of it changed anything


def test_over_quota_compile_and_bind_errors(vm1):
    h = vm1.alloc(QUOTA // 4)  # the whole quota
    vm1.refused(g.alloc(F32, [1]), S.PXOS_S_QUOTA, "exceeds its memory quota")
    vm1.ok(g.free(h))
    bad = "GPU_KERNEL k\nGPU_PARAM x float32[4]\nGPU_THREAD_CODE:\n    FROB x -> x\nGPU_END\n"
    r = vm1.refused(g.compile(bad), S.PXOS_S_COMPILE)
    assert r["ndiags"] >= 1 and r["used_len"] == wire.sizeof("pxos_resp_compile")
    d = r["diags"][0]
    assert (d["line"], d["column"], d["code"]) == (4, 5, "unknown-op") and "FROB" in d["message"]
    kid = vm1.ok(g.compile(SAXPY))["kernels"][0]["kernel_id"]
    hx = vm1.alloc(4)
    vm1.refused(g.launch(kid, [g.bind_buffer("x", hx)]), S.PXOS_S_BIND)
    vm1.refused(g.launch(kid + 1000, []), S.PXOS_S_NOT_FOUND)
    vm1.refused(g.launch(kid, [g.bind_buffer("x", hx), g.bind_buffer("y", 999_999), g.bind_f64("a", 1.0, F32),
                               g.bind_buffer("out", hx)]), S.PXOS_S_NOT_FOUND)


def test_handles_of_another_vm_or_session_are_not_found(vm1, vm2, hv):
    h2 = vm2.alloc(16)
    vm1.refused(g.free(h2), S.PXOS_S_NOT_FOUND)
    vm1.refused(g.write(h2, 0, b"\1" * 4), S.PXOS_S_NOT_FOUND)
    vm1.refused(g.read(h2, 0, 4), S.PXOS_S_NOT_FOUND, read_length=4)
    h1 = vm1.alloc(16, session=7)
    vm1.refused(g.free(h1, session=8), S.PXOS_S_NOT_FOUND)
    kid = vm2.ok(g.compile(SAXPY))["kernels"][0]["kernel_id"]
    vm1.refused(g.kernel_info(kid), S.PXOS_S_NOT_FOUND)
    assert hv.vm_info(2).memory_used == 64 and hv.vm_info(1).memory_used == 64
    assert vm2.ok(g.get_info())["vm_id"] == 2


def test_standard_virtio_gpu_commands_and_the_cursor_queue(vm1, transport):
    fences = iter(range(77, 1000))  # one increasing timeline per device, as Linux emits them

    def ask(cmd: int, body: bytes = b"", size: int = 24) -> tuple[int, int]:
        fence_id = next(fences)
        head = vm1.fe.submit(0, out=[CTRL_HDR.pack(cmd, 1, fence_id, 0, 0) + body], in_=[size])
        vm1.fe.kick(0, force=True)
        [used] = vm1.fe.wait_used(0)
        rtype, flags, fence, _, _ = CTRL_HDR.unpack_from(used.data)
        assert (used.head, flags, fence) == (head, 1, fence_id)  # the fence signals, error or not
        return rtype, used.len

    assert ask(V.VIRTIO_GPU_CMD_GET_DISPLAY_INFO, size=408) == (V.VIRTIO_GPU_RESP_OK_DISPLAY_INFO, 408)
    assert ask(V.VIRTIO_GPU_CMD_RESOURCE_CREATE_2D, struct.pack("<IIII", 1, 1, 64, 64))[0] == V.VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY
    assert ask(V.VIRTIO_GPU_CMD_SET_SCANOUT, bytes(16) + struct.pack("<II", 0, 1))[0] == V.VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID
    assert ask(V.VIRTIO_GPU_CMD_GET_EDID, bytes(8), size=1056) == (V.VIRTIO_GPU_RESP_OK_EDID, 1056)
    assert ask(V.VIRTIO_GPU_CMD_CTX_CREATE, bytes(72))[0] == V.VIRTIO_GPU_RESP_ERR_INVALID_CONTEXT_ID  # ctx 0
    for _ in range(3):
        vm1.fe.submit(1, out=[CTRL_HDR.pack(V.VIRTIO_GPU_CMD_MOVE_CURSOR, 0, 0, 0, 0) + bytes(32)])
    vm1.fe.kick(1, force=True)
    assert [u.len for u in vm1.fe.wait_used(1, 3)] == [0, 0, 0]
    dev = transport.status()[1]["device"]
    assert dev["cursor_total"] == 3 and dev["standard_by_command"]["VIRTIO_GPU_CMD_GET_DISPLAY_INFO"] == 1
    assert struct.unpack("<IIII", vm1.fe.get_config()) == (0, 0, 1, 1)  # one capset: pxOS's (DRM transport)


def test_a_host_bug_answers_internal_and_the_device_keeps_serving(vm1, hv, monkeypatch):
    def broken(vm_id):
        raise RuntimeError("simulated host defect")

    monkeypatch.setattr(hv, "stats", broken)
    vm1.refused(g.stats(), S.PXOS_S_INTERNAL, "RuntimeError")
    assert vm1.ok(g.get_info())["vm_id"] == 1
