"""The LAUNCH fast path of the virtio-gpu-pxos device (issue 14; docs/protocol.md, "LAUNCH
on the loop thread"): a short LAUNCH on an idle device runs on the VM's loop thread, no
thread hand-off; a long one, one behind other commands of the VM, or one while the VM has
launches in flight keeps the hand-off path, and the results, the VM's order and the
charging are the same either way. Scripted front-end, real sockets, real Hypervisor."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from hypervisor import Hypervisor
from tests.integration.test_vhost_device import F32, Guest
from tests.integration.test_vhost_device_lifecycle import slow_kernel, wait_until
from tests.integration.test_vhost_isolation import ANSWERED_S, GatedExecutor, gated  # noqa: F401 (a fixture)
from tests.support.drm_guest import DrmGuest
from tests.support.vhost_frontend import VhostUserFrontend
from virtio_backend.gpu import guest as g
from virtio_backend.gpu import transport as transport_mod
from virtio_backend.gpu.inline_launch import INLINE_LAUNCH_MAX_S
from virtio_backend.gpu.transport import VhostUserTransport
from virtio_backend.wire import PxosCmdType, PxosStatus

T, S = PxosCmdType, PxosStatus
COPY = """GPU_KERNEL copy
GPU_PARAM x float32[16]
GPU_PARAM y float32[16]
GPU_THREAD_CODE:
    COPY x -> y
GPU_END
"""


# The fast path on every executor: NumPy (runs in submit), wgpu (lavapipe in CI) and CuPy
# (asynchronous: the loop thread waits for the short launch's stream).
BACKENDS = ["numpy", pytest.param("wgpu", marks=pytest.mark.wgpu), pytest.param("cupy", marks=pytest.mark.gpu)]


@pytest.fixture
def backend():
    return "numpy"


@pytest.fixture
def hv(backend):
    hv = Hypervisor(backend=backend, device_pool_bytes=64 << 20).start()
    hv.register_vm(1, 0, 50, memory_quota_bytes=4 << 20)
    yield hv
    hv.stop()


@pytest.fixture
def transport(hv, tmp_path):
    t = VhostUserTransport(hv)
    t.attach(1, str(tmp_path / "vm1.sock"))
    yield t
    t.close()


@pytest.fixture
def fe(transport, tmp_path):
    with VhostUserFrontend(str(tmp_path / "vm1.sock")) as fe:
        fe.boot()
        yield fe


def _device(transport) -> dict:
    return transport.status()[1]["device"]


def _copy_setup(guest: Guest):
    kid = guest.ok(g.compile(COPY))["kernels"][0]["kernel_id"]
    x, y = guest.alloc(16), guest.alloc(16)
    return kid, x, y, g.launch(kid, [g.bind_buffer("x", x), g.bind_buffer("y", y)])


def _read(guest: Guest, handle: int) -> np.ndarray:
    r = guest.ok(g.read(handle, 0, 64), read_length=64)
    return np.frombuffer(r["payload"], np.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_short_launch_on_an_idle_device_runs_on_the_loop_thread(hv, transport, fe):
    guest = Guest(fe)
    kid, x, y, launch = _copy_setup(guest)
    data = np.arange(16, dtype=np.float32)
    guest.ok(g.write(x, 0, data.tobytes()))
    threads = []
    hv.dispatcher.before_run.append(lambda job: threads.append(threading.current_thread().name))
    r = guest.ok(launch)
    assert r["device_ns"] > 0 and r["launch_id"] > 0
    assert np.array_equal(_read(guest, y), data)
    dev = _device(transport)
    assert (dev["launches_run_inline_total"], dev["launches_submitted_inline_total"]) == (1, 1)
    assert threads and threads[0] not in ("pxos-dispatch", "vm1-device")  # the VM's loop thread
    assert hv.dispatcher.ran_here == 1
    st = hv.stats(1)
    assert (st.launches_total, st.launches_failed, st.inflight) == (1, 0, 0)
    assert st.device_seconds_total > 0  # charged as on the dispatcher's path


def test_a_launch_behind_other_commands_of_the_pass_keeps_their_order(hv, transport, fe):
    """WRITE then LAUNCH in one kick: the WRITE is on the worker, so the LAUNCH follows it
    there (never overtakes it); the LAUNCH sees the written data."""
    guest = Guest(fe)
    kid, x, y, launch = _copy_setup(guest)
    data = np.full(16, 7.5, np.float32)
    w = fe.submit(0, out=[g.write(x, 0, data.tobytes())], in_=[g.response_size(T.PXOS_CMD_WRITE)])
    la = fe.submit(0, out=[launch], in_=[g.response_size(T.PXOS_CMD_LAUNCH)])
    fe.kick(0, force=True)
    used = {u.head: u for u in fe.wait_used(0, 2, timeout=30)}
    assert set(used) == {w, la}
    assert g.parse_response(T.PXOS_CMD_LAUNCH, used[la].data)["status"] == S.PXOS_S_OK
    assert np.array_equal(_read(guest, y), data)
    assert _device(transport)["launches_submitted_inline_total"] == 0  # went through the worker


def test_a_long_launch_is_queued_and_the_loop_keeps_serving(hv, transport, fe):
    guest = Guest(fe)
    kid = guest.ok(g.compile(slow_kernel(3000)))["kernels"][0]["kernel_id"]  # ~1 s: far over the bound
    a, out = (guest.ok(g.alloc(F32, [256, 256]))["handle"] for _ in range(2))
    head = guest.send(g.launch(kid, [g.bind_buffer("a", a), g.bind_buffer("out", out)]))
    info = guest.send(g.get_info())
    first = fe.wait_used(0, 1, timeout=30)
    assert [u.head for u in first] == [info]  # answered while the launch runs
    dev = _device(transport)
    assert (dev["launches_submitted_inline_total"], dev["launches_run_inline_total"]) == (1, 0)
    assert dev["launches_inflight"] == 1
    [done] = fe.wait_used(0, 1, timeout=120)
    assert done.head == head
    assert g.parse_response(T.PXOS_CMD_LAUNCH, done.data)["status"] == S.PXOS_S_OK
    assert hv.dispatcher.ran_here == 0


def test_launches_after_one_in_flight_are_queued_behind_it_in_order(hv, transport, fe):
    """A VM with a launch in flight: the next ones are submitted from the loop but not run
    there (the earlier launch comes first); all complete, in the VM's order."""
    guest = Guest(fe)
    kid, x, y, launch = _copy_setup(guest)
    started = []
    hv.dispatcher.before_run.append(lambda job: started.append(job.launch_id))
    heads = [guest.send(launch) for _ in range(4)]  # each kicked: may be served one by one
    got = {}
    while len(got) < 4:
        for u in fe.wait_used(0, 1, timeout=30):
            got[u.head] = g.parse_response(T.PXOS_CMD_LAUNCH, u.data)
    assert all(got[h]["status"] == S.PXOS_S_OK for h in heads)
    ids = [got[h]["launch_id"] for h in heads]
    assert started == sorted(started) and sorted(started) == sorted(ids)
    assert hv.stats(1).launches_total == 4


def test_launches_queued_together_are_left_to_the_dispatch_thread(hv, transport, fe):
    """Several LAUNCHes on the ring at once (a guest that pipelines): submitted from the
    loop thread, none run there (the dispatch thread pipelines them on a GPU)."""
    guest = Guest(fe)
    kid, x, y, launch = _copy_setup(guest)
    size = g.response_size(T.PXOS_CMD_LAUNCH)
    heads = [fe.submit(0, out=[launch], in_=[size]) for _ in range(5)]
    fe.kick(0, force=True)
    got = {}
    while len(got) < 5:
        for u in fe.wait_used(0, 1, timeout=30):
            got[u.head] = g.parse_response(T.PXOS_CMD_LAUNCH, u.data)
    assert sorted(got) == sorted(heads) and all(r["status"] == S.PXOS_S_OK for r in got.values())
    dev = _device(transport)
    # Submitted from the loop while the pass has loop time left (on a loaded machine the
    # rest go through the worker); none run there.
    assert dev["launches_run_inline_total"] == 0 and dev["launches_submitted_inline_total"] >= 1
    assert hv.dispatcher.ran_here == 0 and hv.stats(1).launches_total == 5


def test_a_kernel_that_overran_its_estimate_on_the_loop_is_queued_after(hv, transport, fe, monkeypatch):
    """The bound trusts the classifier's estimate; a kernel that ran far longer on the loop
    thread than the bound is never run there again by this device (the loop stays free)."""
    guest = Guest(fe)
    kid = guest.ok(g.compile(slow_kernel(40)))["kernels"][0]["kernel_id"]  # ~20 ms
    a, out = (guest.ok(g.alloc(F32, [256, 256]))["handle"] for _ in range(2))
    launch = g.launch(kid, [g.bind_buffer("a", a), g.bind_buffer("out", out)])
    monkeypatch.setattr(hv.classifier, "estimate", lambda vm_id, cost: 1e-6)  # a wrong estimate
    assert guest.ok(launch)["device_ns"] > 4 * INLINE_LAUNCH_MAX_S * 1e9  # it ran here, far too long
    dev = _device(transport)
    assert (dev["launches_run_inline_total"], dev["launches_overran_total"]) == (1, 1)
    wait_until(lambda: not hv.dispatcher._device.locked())
    guest.ok(launch)
    dev = _device(transport)
    assert (dev["launches_run_inline_total"], dev["launches_submitted_inline_total"]) == (1, 2)


def test_the_fast_path_can_be_turned_off(hv, transport, fe):
    transport.set_inline_launch(0)
    guest = Guest(fe)
    kid, x, y, launch = _copy_setup(guest)
    for _ in range(3):
        guest.ok(launch)
    dev = _device(transport)
    assert (dev["launches_submitted_inline_total"], dev["launches_run_inline_total"]) == (0, 0)
    assert hv.dispatcher.ran_here == 0
    transport.set_inline_launch(INLINE_LAUNCH_MAX_S)
    # The dispatch thread ran the three: wait until it waits for work again (it lets go of
    # the device token only then), so that the device is idle for the next one.
    wait_until(lambda: not hv.dispatcher._device.locked())
    guest.ok(launch)
    assert _device(transport)["launches_run_inline_total"] == 1


def test_a_launch_refused_by_the_hypervisor_is_answered_from_the_loop(hv, transport, fe):
    guest = Guest(fe)
    kid, x, y, _ = _copy_setup(guest)
    guest.refused(g.launch(kid, [g.bind_buffer("x", x), g.bind_buffer("y", 999_999)]), S.PXOS_S_NOT_FOUND)
    guest.refused(g.launch(kid + 1000, [g.bind_buffer("x", x), g.bind_buffer("y", y)]), S.PXOS_S_NOT_FOUND)
    dev = _device(transport)
    assert dev["launches_submitted_inline_total"] == 0 and dev["internal_errors_total"] == 0
    assert dev["errors_by_status"] == {"PXOS_S_NOT_FOUND": 2}


def test_a_launch_over_the_drm_transport_takes_the_fast_path_too(hv, transport, fe):
    """The stock virtio_gpu driver's SUBMIT_3D carrying a LAUNCH: run on the loop thread,
    its reply in the resource, the SUBMIT_3D answered in fence order."""
    guest = DrmGuest(fe)
    guest.ctx_create(1)
    r = guest.buffer(1)
    kid = guest.call(1, g.compile(COPY), r)["kernels"][0]["kernel_id"]
    x, y = (guest.call(1, g.alloc(F32, [16]), r)["handle"] for _ in range(2))
    data = np.arange(16, dtype=np.float32) * 3
    assert guest.call(1, g.write(x, 0, data.tobytes()), r)["status"] == S.PXOS_S_OK
    got = guest.call(1, g.launch(kid, [g.bind_buffer("x", x), g.bind_buffer("y", y)]), r)
    assert got["status"] == S.PXOS_S_OK and got["device_ns"] > 0
    out = guest.call(1, g.read(y, 0, 64), r, read_length=64)
    assert np.array_equal(np.frombuffer(out["payload"], np.float32), data)
    assert _device(transport)["launches_run_inline_total"] == 1


def test_another_vms_launch_never_makes_its_loop_wait_for_the_hypervisor(gated):  # noqa: F811 (the fixture)
    """Issue 17's guarantee with the fast path: VM 1's ALLOC waits on the device inside the
    hypervisor's lock; VM 2's LAUNCH arrives meanwhile. VM 2's loop does not wait for the
    lock (the LAUNCH goes to its worker, which may): both loops answer QEMU at once, and
    the LAUNCH completes once the device lets go."""
    ex, hv, t, fe1, fe2 = gated  # (test_vhost_isolation: its teardown lets the device go)
    guest2 = Guest(fe2)
    kid, x, y, launch = _copy_setup(guest2)
    ex.hold.set()
    fe1.submit(0, out=[g.alloc(F32, [64])], in_=[g.response_size(T.PXOS_CMD_ALLOC)])
    fe1.kick(0, force=True)
    assert ex.entered.wait(5)  # VM 1's ALLOC now waits on the device, holding the lock
    head = guest2.send(launch)
    for fe in (fe1, fe2):
        t0 = time.monotonic()
        assert len(fe.get_config()) == 16
        assert time.monotonic() - t0 < ANSWERED_S
    wait_until(lambda: t.status()[2]["device"]["launches_lock_busy_total"] == 1)
    ex.go.set()
    [used] = fe2.wait_used(0, timeout=30)
    assert used.head == head
    assert g.parse_response(T.PXOS_CMD_LAUNCH, used.data)["status"] == S.PXOS_S_OK
    dev = t.status()[2]["device"]
    assert (dev["launches_submitted_inline_total"], dev["launches_run_inline_total"]) == (0, 0)


@pytest.mark.parametrize(("env", "want"), [(None, INLINE_LAUNCH_MAX_S), ("0", 0.0), ("250", 250e-6),
                                           ("abc", INLINE_LAUNCH_MAX_S), ("-5", INLINE_LAUNCH_MAX_S),
                                           ("nan", INLINE_LAUNCH_MAX_S)])
def test_the_bound_from_the_environment(monkeypatch, env, want):
    if env is None:
        monkeypatch.delenv(transport_mod.INLINE_LAUNCH_ENV, raising=False)
    else:
        monkeypatch.setenv(transport_mod.INLINE_LAUNCH_ENV, env)
    assert transport_mod._inline_bound() == want
