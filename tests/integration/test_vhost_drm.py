"""The DRM transport end to end on the host: the scripted frontend plays QEMU and a guest's
stock virtio_gpu driver (contexts, 3D buffer resources on scattered pages, fenced
SUBMIT_3D) against the real transport, device and Hypervisor (NumPy). The same pxOS
requests as on the module's path; replies in the resources' backing pages; fences in
order; every malformed context, resource, backing, submit and fence refused with a typed
error while the device keeps serving."""

from __future__ import annotations

import struct
import threading

import numpy as np
import pytest

from hypervisor import Hypervisor
from tests.support.drm_guest import PAGE, DrmGuest
from tests.support.vhost_frontend import VhostUserFrontend
from virtio_backend import wire
from virtio_backend.gpu import guest as g
from virtio_backend.gpu.transport import VhostUserTransport
from virtio_backend.gpu.virtio_gpu import VirtioGpuCtrlType
from virtio_backend.wire import PxosCmdType, PxosStatus

T, S, V = PxosCmdType, PxosStatus, VirtioGpuCtrlType
F32 = wire.PxosDtype.PXOS_DTYPE_FLOAT32
QUOTA = 1 << 20
SAXPY = """GPU_KERNEL saxpy
GPU_PARAM x float32[N]
GPU_PARAM y float32[N]
GPU_PARAM a float32
GPU_PARAM out float32[N]
GPU_THREAD_CODE:
    MUL x a -> t
    ADD t y -> out
GPU_END
"""


@pytest.fixture
def hv():
    hv = Hypervisor(backend="numpy", device_pool_bytes=64 << 20).start()
    hv.register_vm(1, 0, 60, memory_quota_bytes=QUOTA)
    yield hv
    hv.stop()


@pytest.fixture
def guest(hv, tmp_path):
    t = VhostUserTransport(hv)
    t.attach(1, str(tmp_path / "vm1.sock"))
    with VhostUserFrontend(str(tmp_path / "vm1.sock")) as fe:
        fe.boot()
        g = DrmGuest(fe)
        g.transport = t  # the device's counters: g.transport.status()
        yield g
    t.close()


def test_capset_and_features_say_pxos(guest):
    assert guest.fe.offered & 0b11 == 0b11  # VIRGL (the stock driver's 3D ioctls need it) and EDID
    assert struct.unpack("<IIII", guest.fe.get_config())[3] == 1  # num_capsets
    a = guest.cmd(V.VIRTIO_GPU_CMD_GET_CAPSET_INFO, struct.pack("<I4x", 0), size=40)
    assert a.type == V.VIRTIO_GPU_RESP_OK_CAPSET_INFO
    capset_id, version, size, _ = struct.unpack_from("<IIII", a.data, 24)
    assert (capset_id, version, size) == (wire.PXOS_CAPSET_ID, wire.PXOS_CAPSET_VERSION, 16)
    a = guest.cmd(V.VIRTIO_GPU_CMD_GET_CAPSET, struct.pack("<II", capset_id, version), size=24 + size)
    magic, major, minor, max_req, _ = struct.unpack_from("<IHHII", a.data, 24)
    assert (a.type, magic, major, minor, max_req) == (V.VIRTIO_GPU_RESP_OK_CAPSET, wire.PXOS_MAGIC,
                                                     wire.PXOS_ABI_MAJOR, wire.PXOS_ABI_MINOR, wire.PXOS_MAX_REQUEST_BYTES)
    assert guest.cmd(V.VIRTIO_GPU_CMD_GET_CAPSET_INFO, struct.pack("<I4x", 1)).type == V.VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER
    assert guest.cmd(V.VIRTIO_GPU_CMD_GET_CAPSET, struct.pack("<II", 1, 1)).type == V.VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER


def test_pxos_work_through_submits_and_sessions_per_context(guest, hv):
    assert guest.ctx_create(1).type == V.VIRTIO_GPU_RESP_OK_NODATA
    assert guest.ctx_create(2).type == V.VIRTIO_GPU_RESP_OK_NODATA
    r1, r2 = guest.buffer(1), guest.buffer(2)
    info = guest.call(1, g.get_info(), r1)
    assert (info["status"], info["vm_id"], info["ctx_id"], info["magic"]) == (S.PXOS_S_OK, 1, 1, wire.PXOS_MAGIC)
    n = 1000
    x, y = np.arange(n, dtype=np.float32), np.full(n, 0.5, dtype=np.float32)
    hx, hy, hout = (guest.call(1, g.alloc(F32, [n]), r1)["handle"] for _ in range(3))
    for h, arr in ((hx, x), (hy, y)):
        assert guest.call(1, g.write(h, 0, arr.tobytes()), r1)["status"] == S.PXOS_S_OK
    kid = guest.call(1, g.compile(SAXPY), r1)["kernels"][0]["kernel_id"]
    launch = guest.call(1, g.launch(kid, [g.bind_buffer("x", hx), g.bind_buffer("y", hy),
                                          g.bind_f64("a", 2.0, F32), g.bind_buffer("out", hout)]), r1)
    assert launch["status"] == S.PXOS_S_OK, launch["message"]
    got = guest.call(1, g.read(hout, 0, 4 * n), r1, read_length=4 * n)  # spans 1 page boundary at least
    assert got["status"] == S.PXOS_S_OK and got["payload_len"] == 4 * n
    np.testing.assert_allclose(np.frombuffer(got["payload"], np.float32), 2 * x + y)
    # Each context is its own session: context 2 cannot see context 1's buffers.
    assert guest.call(2, g.free(hx), r2)["status"] == S.PXOS_S_NOT_FOUND
    assert hv.vm_info(1).memory_used == 3 * 4 * n
    # CTX_DESTROY closes the session: everything it held is released.
    assert guest.cmd(V.VIRTIO_GPU_CMD_CTX_DESTROY, ctx=1).type == V.VIRTIO_GPU_RESP_OK_NODATA
    assert guest.call(2, g.get_info(), r2)["memory_used"] == 0  # behind the close on the worker
    assert guest.cmd(V.VIRTIO_GPU_CMD_CTX_DESTROY, ctx=1).type == V.VIRTIO_GPU_RESP_ERR_INVALID_CONTEXT_ID


def test_pxos_errors_arrive_in_the_reply(guest):
    guest.ctx_create(1)
    r = guest.buffer(1, npages=2)
    assert guest.call(1, g.free(12345), r)["status"] == S.PXOS_S_NOT_FOUND
    assert guest.call(1, g.raw_header(0x70EE), r)["status"] == S.PXOS_S_UNSUPPORTED
    bad = guest.call(1, g.get_info(session=5), r)  # the session is the context's, not the guest's to pick
    assert bad["status"] == S.PXOS_S_INVALID and "only its type" in bad["message"]
    small = guest.call(1, g.compile(SAXPY), r)  # a reply of 4008 bytes fits 2 pages
    assert small["status"] == S.PXOS_S_OK
    # A reply resource too small for the response gets the bare header with the reason.
    guest.clear(r)
    head = guest.submit(1, g.kernel_info(1), r, reply_offset=2 * PAGE - 200)
    [a] = guest.answers()
    assert (a.head, a.type) == (head, V.VIRTIO_GPU_RESP_OK_NODATA)
    hdr = g.parse_response(T.PXOS_CMD_FREE, guest.read_buffer(r, 2 * PAGE - 200, 160))
    assert hdr["status"] == S.PXOS_S_INVALID and "writable bytes" in hdr["message"]


def test_fences_complete_in_order_while_work_runs_out_of_order(guest, hv, monkeypatch):
    """A LAUNCH of context 1 (fence n) held on the GPU; context 2's request (fence n+1)
    finishes first but its answer waits: a later fence must never signal first."""
    guest.ctx_create(1)
    guest.ctx_create(2)
    r1, r2 = guest.buffer(1), guest.buffer(2)
    h, out = (guest.call(1, g.alloc(F32, [4]), r1)["handle"] for _ in range(2))
    kid = guest.call(1, g.compile(SAXPY), r1)["kernels"][0]["kernel_id"]
    gate, real_launch = threading.Event(), hv.launch

    def held_launch(*a, **kw):
        completion = real_launch(*a, **kw)
        completion.wait(10)
        assert gate.wait(10)
        return completion

    monkeypatch.setattr(hv, "launch", lambda *a, **kw: _later(held_launch, *a, **kw))
    launch = g.launch(kid, [g.bind_buffer("x", h), g.bind_buffer("y", h), g.bind_f64("a", 1.0, F32),
                            g.bind_buffer("out", out)])
    first = guest.submit(1, launch, r1)
    second = guest.submit(2, g.get_info(), r2)
    with pytest.raises(TimeoutError):
        guest.answers(1, timeout=0.5)  # context 2's answer is ready, but fence n is not
    assert g.parse_response(T.PXOS_CMD_GET_INFO, guest.read_buffer(r2, 0, 320))["status"] == S.PXOS_S_OK
    gate.set()
    answers = guest.answers(2)
    assert [(a.head, a.fence_id) for a in answers] == [(first, guest.fence - 1), (second, guest.fence)]
    dev = guest.transport.status()[1]["device"]
    assert dev["fence_waits_total"] >= 1 and dev["drm_contexts"] == 2 and dev["drm_resources"] == 2
    assert g.parse_response(T.PXOS_CMD_LAUNCH, guest.read_buffer(r1, 0, 200))["status"] == S.PXOS_S_OK


def _later(fn, *a, **kw):
    """Run ``fn`` on a thread; hand back a Completion-like object finishing with its result."""
    from hypervisor.types import Completion

    proxy = Completion(0, 1, kw.get("session", 0))

    def run():
        real = fn(*a, **kw)
        for cb in proxy._finish(real.result):
            cb(proxy)

    threading.Thread(target=run, daemon=True).start()
    return proxy


@pytest.mark.parametrize("case", ["no-context", "no-resource", "not-attached", "no-backing", "magic",
                                  "abi", "size-beyond", "size-short", "reply-offset", "virgl-stream"])
def test_malformed_submits_get_typed_errors(guest, hv, case):
    guest.ctx_create(1)
    guest.ctx_create(2)
    r = guest.buffer(1, npages=2)
    other = guest.buffer(2, npages=2)
    guest.create_3d(77, PAGE)  # exists, attached to context 1, but no backing
    guest.ctx_attach(1, 77)
    req = g.get_info()
    kw, ctx, reply = {}, 1, r
    want = V.VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER
    if case == "no-context":
        ctx, want = 9, V.VIRTIO_GPU_RESP_ERR_INVALID_CONTEXT_ID
    elif case == "no-resource":
        reply, want = 4242, V.VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID
    elif case == "not-attached":
        reply, want = other, V.VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID
    elif case == "no-backing":
        reply, want = 77, V.VIRTIO_GPU_RESP_ERR_UNSPEC
    elif case == "magic":
        kw = {"magic": 0x12345678}
    elif case == "abi":
        kw = {"major": wire.PXOS_ABI_MAJOR + 1}
    elif case == "size-beyond":
        kw = {"size": 1 << 20}
    elif case == "size-short":
        kw = {"size": 8}
    elif case == "reply-offset":
        kw = {"reply_offset": 2 * PAGE - 100}
    if case == "virgl-stream":  # what Mesa's virgl driver would send: a bare command stream
        stream = struct.pack("<IIII", (1 << 16) | 1, 0, 0, 0) * 8
        head = guest.send(V.VIRTIO_GPU_CMD_SUBMIT_3D, struct.pack("<I4x", len(stream)) + stream, ctx=1,
                          fence=guest.next_fence())
    else:
        head = guest.submit(ctx, req, reply, **kw)
    [a] = guest.answers()
    assert (a.head, a.type) == (head, want)
    assert a.flags == 1  # a well-formed fence still signals: the guest's waiters go on
    assert guest.read_buffer(r, 0, 160) == bytes(160)  # nothing written into the guest
    assert guest.call(1, g.get_info(), r)["status"] == S.PXOS_S_OK  # the device serves on


def test_fence_ids_must_increase(guest):
    guest.ctx_create(1)
    r = guest.buffer(1, npages=2)
    guest.submit(1, g.get_info(), r, fence=100)
    assert guest.answers()[0].fence_id == 100
    for bad in (100, 99):
        head = guest.submit(1, g.get_info(), r, fence=bad)
        [a] = guest.answers()
        assert (a.head, a.type, a.flags, a.fence_id) == (head, V.VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER, 0, 0)
    guest.fence = 100
    assert guest.call(1, g.get_info(), r)["status"] == S.PXOS_S_OK


@pytest.mark.parametrize(("what", "want"), [
    ("outside-ram", V.VIRTIO_GPU_RESP_ERR_UNSPEC),
    ("too-many", V.VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER),
    ("too-short", V.VIRTIO_GPU_RESP_ERR_UNSPEC),
    ("twice", V.VIRTIO_GPU_RESP_ERR_UNSPEC),
    ("texture", V.VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER),
    ("huge", V.VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER),
    ("dup-id", V.VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID),
])
def test_bad_resources_and_backing(guest, what, want):
    guest.ctx_create(1)
    guest.create_3d(5, PAGE)
    page = guest.fe.heap.alloc(PAGE, PAGE)
    if what == "outside-ram":
        a = guest.attach_backing(5, [(guest.fe.ram_size + PAGE, PAGE)])
    elif what == "too-many":
        a = guest.attach_backing(5, [(page, 1)] * 16385)
    elif what == "too-short":
        a = guest.attach_backing(5, [(page, 16)])
    elif what == "twice":
        guest.attach_backing(5, [(page, PAGE)])
        a = guest.attach_backing(5, [(page, PAGE)])
    elif what == "texture":
        a = guest.create_3d(6, 64, target=2, height=64)
    elif what == "huge":
        a = guest.create_3d(6, 1 << 30)
    else:
        a = guest.create_3d(5, PAGE)
    assert a.type == want
    assert guest.ctx_create(2).type == V.VIRTIO_GPU_RESP_OK_NODATA  # still serving


def test_write_data_from_a_resource(guest, hv):
    """WRITE's data left in a mapped resource (no copy into the submit): read from its pages."""
    guest.ctx_create(1)
    guest.ctx_create(2)
    r, data = guest.buffer(1, npages=4), guest.buffer(1, npages=4)
    other = guest.buffer(2, npages=4)
    n = 3000  # 12000 bytes from offset 100: across three of the data resource's scattered pages
    x = np.arange(n, dtype=np.float32)
    h = guest.call(1, g.alloc(F32, [n]), r)["handle"]
    guest.fill(data, x.tobytes(), 100)
    write = g.transfer_struct(T.PXOS_CMD_WRITE, h, 0, 4 * n)
    assert guest.call(1, write, r, data=data, data_offset=100)["status"] == S.PXOS_S_OK
    got = guest.call(1, g.read(h, 0, 4 * n), r, read_length=4 * n)
    np.testing.assert_array_equal(np.frombuffer(got["payload"], np.float32), x)
    # Refused at the virtio level, nothing written: another context's resource, data past
    # the resource's end, a data resource with anything but a bare WRITE.
    for kw, req, want in (({"data": other}, write, V.VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID),
                          ({"data": data, "data_offset": 4 * PAGE - 100}, write, V.VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER),
                          ({"data": data}, g.write(h, 0, x[:4].tobytes()), V.VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER),
                          ({"data": data}, g.get_info(), V.VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER)):
        head = guest.submit(1, req, r, **kw)
        [a] = guest.answers()
        assert (a.head, a.type) == (head, want), kw
    bad = guest.call(1, write, r, data_offset=8)
    assert bad["status"] == S.PXOS_S_INVALID and "data_offset" in bad["message"]


def test_random_submits_and_3d_commands_never_break_the_device(guest):
    """Seeded garbage where a guest controls bytes: the SUBMIT_3D body, the envelope's
    fields, the pxOS request inside, and the 3D commands' bodies. Each gets an answer;
    nothing is a host error; the device serves a good request after."""
    import random

    rng = random.Random(1212)
    guest.ctx_create(1)
    r = guest.buffer(1, npages=2)
    kinds = sorted(int(t) for t in V if 0x0200 <= t <= 0x0209 and t != V.VIRTIO_GPU_CMD_CTX_DESTROY)
    for i in range(300):
        roll = rng.random()
        if roll < 0.35:  # a well-formed envelope around random request bytes
            req = struct.pack("<I", rng.choice([*range(0x7000, 0x700E), rng.getrandbits(32)])) + \
                rng.randbytes(rng.randrange(0, 200))
            guest.submit(1, req.ljust(24, b"\0"), r, reply_offset=rng.choice([0, 8, 4096, 8000]),
                         data=rng.choice([0, 0, r.rid, 999]), data_offset=rng.choice([0, 0, 16, 1 << 40]))
        elif roll < 0.7:  # a random SUBMIT_3D body, size field and all
            body = rng.randbytes(rng.randrange(0, 300))
            guest.send(V.VIRTIO_GPU_CMD_SUBMIT_3D, body, ctx=rng.choice([0, 1, 2]), fence=guest.next_fence())
        else:  # a random 3D command
            guest.send(rng.choice(kinds), rng.randbytes(rng.randrange(0, 120)), ctx=rng.choice([0, 1, 2]),
                       fence=guest.next_fence() if rng.random() < 0.5 else None)
        [a] = guest.answers()
        assert V(a.type).name.startswith("VIRTIO_GPU_RESP_"), (i, hex(a.type))
    dev = guest.transport.status()[1]["device"]
    assert dev["internal_errors_total"] == 0
    guest.ctx_create(5)
    r5 = guest.buffer(5, npages=2)
    assert guest.call(5, g.get_info(), r5)["status"] == S.PXOS_S_OK
