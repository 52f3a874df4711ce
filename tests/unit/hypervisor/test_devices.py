"""Many devices on one host (issue 16): placement, pinning, per-device fairness, moves.

Every rule runs on NumPy devices (one executor, pool and dispatcher per device), so it is
tested without a GPU."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hv_kernels import AXPY

from hypervisor import errors as E
from hypervisor.devices import DeviceSet
from hypervisor.types import Scalar
from tests.support.programs import heavy

MB = 1 << 20


@pytest.fixture
def ds():
    d = DeviceSet("numpy", 3, device_pool_bytes=64 * MB).start()
    yield d
    d.stop()


def test_placement_spreads_by_free_share_and_memory_and_pins(ds):
    # Empty devices tie: the lowest id; then each new VM goes where most is free.
    assert ds.register_vm(1, 0, 40, memory_quota_bytes=8 * MB).device == 0
    assert ds.register_vm(2, 0, 40, memory_quota_bytes=8 * MB).device == 1
    assert ds.register_vm(3, 0, 10, memory_quota_bytes=8 * MB).device == 2
    # Device 2 has the most free share (90%) and memory: it takes the next one too.
    assert ds.register_vm(4, 0, 10, memory_quota_bytes=8 * MB).device == 2
    assert ds.register_vm(5, 0, 70, memory_quota_bytes=MB).device == 2  # 70% fits on device 2 only
    # Same free share on 0 and 1 (60%); device 1 has more free memory once 0 holds more quota.
    ds.set_quota(1, memory_bytes=32 * MB)
    assert ds.register_vm(6, 0, 5, memory_quota_bytes=MB).device == 1
    # Pinning wins over the rule; a pinned VM must fit its device's share.
    assert ds.register_vm(7, 0, 10, memory_quota_bytes=MB, device=0).device == 0
    with pytest.raises(E.InvalidArgument, match="100"):
            ds.register_vm(8, 0, 60, memory_quota_bytes=MB, device=1)
    with pytest.raises(E.InvalidArgument, match="no device 9"):
        ds.register_vm(8, 0, 1, memory_quota_bytes=MB, device=9)
    with pytest.raises(E.InvalidArgument, match="no device has 95% of share free"):
        ds.register_vm(8, 0, 95, memory_quota_bytes=MB)
    with pytest.raises(E.AlreadyExists):
        ds.register_vm(1, 0, 1, memory_quota_bytes=MB)
    assert [(v.vm_id, v.device) for v in ds.list_vms()] == [(1, 0), (2, 1), (3, 2), (4, 2), (5, 2), (6, 1), (7, 0)]
    assert [s.device for s in ds.all_stats()] == [0, 1, 2, 2, 2, 1, 0]
    ds.unregister_vm(6)
    assert ds.register_vm(6, 0, 50, memory_quota_bytes=MB).device == 1
    with pytest.raises(E.NotFound):
        ds.stats(99)


def test_each_device_has_its_own_pool_and_handles_stay_unique(ds):
    ds.register_vm(1, 0, 50, memory_quota_bytes=16 * MB, device=0)
    ds.register_vm(2, 0, 50, memory_quota_bytes=16 * MB, device=1)
    a = ds.alloc(1, "float32", (1024,))
    b = ds.alloc(2, "float32", (2048,))
    assert a.handle != b.handle
    pools = {i: info.pool_used for i, info, _ in ds.device_list()}
    assert pools == {0: 4096, 1: 8192, 2: 0}
    with pytest.raises(E.NotFound):  # another VM's handle, even on another device: not found
        ds.read(1, b.handle)
    assert ds.device_info().pool_bytes == 3 * 64 * MB and ds.device_info().pool_used == 4096 + 8192


def _heavy(ds, vm, n=96):
    k = ds.compile(vm, heavy(4))[0]
    a = ds.alloc(vm, "float32", (n, n))
    c = ds.alloc(vm, "float32", (n, n))
    ds.write(vm, a.handle, 0, (np.eye(n, dtype=np.float32) * 0.5).tobytes())
    return k, {"a": a.handle, "c": c.handle}


def test_fairness_is_per_device():
    """Shares are of the device a VM is on: 60/20 on device 0 split it 3:1 while both are
    backlogged; a 20% VM alone on device 1 gets all of device 1. Every launch is queued
    before the dispatchers start, so that both VMs are backlogged from the first pick (on a
    loaded machine the queueing thread can lag the device, and VMs that are not backlogged
    simply alternate)."""
    ds = DeviceSet("numpy", 3, device_pool_bytes=64 * MB)
    ds.register_vm(1, 0, 60, memory_quota_bytes=16 * MB, device=0)
    ds.register_vm(2, 0, 20, memory_quota_bytes=16 * MB, device=0)
    ds.register_vm(3, 0, 20, memory_quota_bytes=16 * MB, device=1)
    jobs = {vm: _heavy(ds, vm) for vm in (1, 2, 3)}
    done = {1: 0, 2: 0, 3: 0}
    at_a_finish: dict[str, int] = {}
    lock = threading.Lock()
    n = 30

    def finished(vm):
        def cb(_c):
            with lock:
                done[vm] += 1
                if vm == 1 and done[1] == n:
                    at_a_finish["b"] = done[2]
        return cb

    comps = []
    for _ in range(n):
        for vm in (1, 2, 3):
            k, binds = jobs[vm]
            c = ds.launch(vm, k.kernel_id, binds)
            c.add_done_callback(finished(vm))
            comps.append(c)
    ds.start()
    try:
        for c in comps:
            assert c.wait(120).ok
    finally:
        ds.stop()
    # While VM 1 ran its 30 launches, VM 2 (a third of its share) ran about 10.
    assert 3 <= at_a_finish["b"] <= 18, at_a_finish
    st = {s.vm_id: s for s in ds.all_stats()}
    assert st[3].achieved_share == pytest.approx(1.0, abs=0.02)  # device 1 is VM 3's alone
    assert st[1].device == st[2].device == 0 and st[3].device == 1


def _axpy_chain(hv_like, vm, steps, x0, y0, *, move=None):
    """y <- alpha*x + y, `steps` times in order. With ``move``: the first third runs, then
    the rest is queued and the VM moved before any of it starts (the lock held meanwhile,
    so the dispatcher cannot pick one), so the move takes every one of them along."""
    k = hv_like.compile(vm, AXPY)[0]
    x = hv_like.alloc(vm, "float32", (x0.size,))
    y = hv_like.alloc(vm, "float32", (y0.size,))
    hv_like.write(vm, x.handle, 0, x0.tobytes())
    hv_like.write(vm, y.handle, 0, y0.tobytes())

    def go(i):
        return hv_like.launch(vm, k.kernel_id, {"alpha": Scalar(1.0 + i / 7), "x": x.handle, "y": y.handle})

    first = steps // 3 if move else steps
    assert all(go(i).wait(120).ok for i in range(first))
    report = None
    if move:
        with hv_like._lock:
            comps = [go(i) for i in range(first, steps)]
            report = move()
        assert all(c.wait(120).ok for c in comps)
    return hv_like.read(vm, y.handle), report, (x, y)


def test_move_under_load_is_bit_identical_and_accounting_exact(ds):
    rng = np.random.default_rng(7)
    x0 = rng.standard_normal(200_000).astype(np.float32)
    y0 = rng.standard_normal(200_000).astype(np.float32)
    ds.register_vm(1, 0, 50, memory_quota_bytes=16 * MB, device=0)
    ds.register_vm(2, 0, 50, memory_quota_bytes=16 * MB, device=0)  # a neighbour that stays
    ds.register_vm(9, 0, 50, memory_quota_bytes=16 * MB, device=2)  # the reference: never moves
    ref, _, _ = _axpy_chain(ds, 9, 40, x0, y0)
    keep = ds.alloc(2, "float32", (100,))
    got, report, (x, y) = _axpy_chain(ds, 1, 40, x0, y0, move=lambda: ds.move_vm(1, 1))
    assert got == ref  # bit for bit
    assert report["from_device"] == 0 and report["to_device"] == 1 and report["peer_bytes"] == 0  # NumPy: host
    assert report["bytes"] == 2 * 800_000 and report["buffers"] == 2 and report["pause_seconds"] > 0
    assert report["launches_waited"] == 40 - 40 // 3  # queued ones waited and ran on device 1
    assert ds.vm_info(1).device == 1 and ds.stats(1).device == 1
    # Accounting: device 0 gave back exactly the VM's buffers; device 1 holds exactly them.
    assert ds.devices[0].memory.pool_used == 400  # VM 2's buffer alone
    assert ds.devices[1].memory.pool_used == 2 * 800_000
    assert ds.devices[1].memory.committed == 2 * 800_000
    st = ds.stats(1)
    assert st.memory_used == 2 * 800_000 and st.launches_total == 40 and st.launches_failed == 0
    assert st.buffers == 2 and st.kernels == 1
    assert ds.devices[0].scheduler.vm_stats(2) is not None
    with pytest.raises(E.NotFound):
        ds.devices[0].memory.vm(1)
    # Same handles after the move; the VM keeps working there.
    assert ds.buffer_info(1, y.handle).nbytes == 800_000
    ds.free(1, x.handle)
    assert ds.devices[1].memory.pool_used == 800_000
    assert ds.read(2, keep.handle) == bytes(400)


@pytest.mark.wgpu
def test_wgpu_devices_place_and_move_bit_identically():
    """The same on wgpu (lavapipe in CI): one executor per device on the one adapter."""
    with DeviceSet("wgpu", 2, device_pool_bytes=64 * MB) as wds:
        rng = np.random.default_rng(11)
        x0, y0 = rng.standard_normal(20_000).astype(np.float32), rng.standard_normal(20_000).astype(np.float32)
        assert wds.register_vm(1, 0, 50, memory_quota_bytes=8 * MB).device == 0
        assert wds.register_vm(9, 0, 50, memory_quota_bytes=8 * MB).device == 1
        ref, _, _ = _axpy_chain(wds, 9, 12, x0, y0)
        wds.register_vm(2, 0, 40, memory_quota_bytes=8 * MB, device=1)
        wds.unregister_vm(9)
        got, report, _ = _axpy_chain(wds, 1, 12, x0, y0, move=lambda: wds.move_vm(1, 1))
        assert got == ref and report["launches_waited"] == 12 - 12 // 3
        assert wds.vm_info(1).device == 1 and wds.devices[0].memory.pool_used == 0
        assert wds.devices[1].memory.pool_used == 2 * x0.nbytes


@pytest.mark.gpu
def test_cuda_devices_place_and_move_bit_identically():
    """Every CUDA device of the host (one executor each, its own device current in every
    call). With two or more: a move under load, peer to peer where the GPUs reach each
    other, bit for bit. A one-GPU host checks placement and work on its device only."""
    import cupy

    n = cupy.cuda.runtime.getDeviceCount()
    ids = list(range(min(n, 4)))
    rng = np.random.default_rng(13)
    x0, y0 = rng.standard_normal(1 << 20).astype(np.float32), rng.standard_normal(1 << 20).astype(np.float32)
    with DeviceSet("cupy", ids, device_pool_bytes=256 * MB) as cds:
        for i in ids:
            assert cds.register_vm(10 + i, 0, 40, memory_quota_bytes=64 * MB).device == i  # spread
        ref, _, _ = _axpy_chain(cds, 10 + ids[-1], 12, x0, y0)
        if len(ids) == 1:
            got, _, _ = _axpy_chain(cds, 10, 12, x0, y0)
            assert got == ref
            return
        got, report, _ = _axpy_chain(cds, 10, 12, x0, y0, move=lambda: cds.move_vm(10, ids[1]))
        assert got == ref and report["launches_waited"] == 12 - 12 // 3
        assert report["peer_bytes"] in (0, report["bytes"])
        assert cds.devices[0].memory.pool_used == 0 and cds.vm_info(10).device == ids[1]


def test_a_move_the_target_cannot_take_leaves_the_vm_where_it_was(ds):
    ds.register_vm(1, 0, 30, memory_quota_bytes=40 * MB, device=0)
    ds.register_vm(2, 0, 80, memory_quota_bytes=64 * MB, device=1)
    ds.register_vm(3, 0, 10, memory_quota_bytes=64 * MB, device=2)
    data = np.arange(4 * MB // 4, dtype=np.float32)
    b = ds.alloc(1, "float32", (data.size,))
    ds.write(1, b.handle, 0, data.tobytes())
    ds.alloc(3, "float32", (62 * MB // 4,))  # device 2 is nearly full
    before = {i: (info.pool_used, hv.memory.committed) for i, info, hv in ds.device_list()}
    with pytest.raises(E.InvalidArgument, match="share"):
        ds.move_vm(1, 1)  # 30% does not fit beside 80%
    with pytest.raises(E.OutOfDeviceMemory, match="do not fit device 2"):
        ds.move_vm(1, 2)
    with pytest.raises(E.InvalidArgument, match="already on device 0"):
        ds.move_vm(1, 0)
    with pytest.raises(E.InvalidArgument, match="no device 7"):
        ds.move_vm(1, 7)
    assert {i: (info.pool_used, hv.memory.committed) for i, info, hv in ds.device_list()} == before
    assert ds.vm_info(1).device == 0 and ds.read(1, b.handle) == data.tobytes()
    k = ds.compile(1, AXPY)[0]
    y = ds.alloc(1, "float32", (data.size,))
    assert ds.launch(1, k.kernel_id, {"alpha": Scalar(2.0), "x": b.handle, "y": y.handle}).wait(30).ok
    assert np.array_equal(np.frombuffer(ds.read(1, y.handle), np.float32), data * 2)


def test_daemon_with_devices_places_pinned_and_free_vms(tmp_path):
    from hypervisor.config import parse_config
    from hypervisor.daemon import Daemon

    cfg = parse_config({
        "daemon": {"backend": "numpy", "devices": 2, "grpc_socket": str(tmp_path / "g.sock"),
                   "socket_dir": str(tmp_path), "metrics_address": None},
        "memory": {"device_pool": "32Mi"},
        "vm": [{"id": 1, "memory": "4M", "share": 70, "device": 1},
               {"id": 2, "memory": "4M", "share": 70},  # fits device 0 only
               {"id": 3, "memory": "4M", "share": 20}],  # 30% free on each
    })
    dm = Daemon(cfg).start(grpc=False, metrics=False)
    try:
        assert isinstance(dm.hv, DeviceSet) and sorted(dm.hv.devices) == [0, 1]
        where = {v.vm_id: v.device for v in dm.hv.list_vms()}
        assert where == {1: 1, 2: 0, 3: 0}  # VM 3: a tie (30% and 4M free on each): the lowest id
        assert dm.readiness() == (True, "ready")
        assert dm.hv.device_info().pool_bytes == 2 * (32 << 20)
    finally:
        dm.stop()


def test_devices_config_is_checked():
    from hypervisor.config import parse_config
    from hypervisor.errors import ConfigError

    assert parse_config({}).daemon.device_ids() == [0]
    assert parse_config({"daemon": {"devices": 3}}).daemon.device_ids() == [0, 1, 2]
    assert parse_config({"daemon": {"devices": [0, 5]}}).daemon.device_ids() == [0, 5]
    assert parse_config({"daemon": {"devices": "all"}}).daemon.device_ids() is None
    # Shares are of a device: 60 + 60 is fine on two devices, not when both are pinned to one.
    two = {"daemon": {"devices": 2}, "vm": [{"id": 1, "memory": 1, "share": 60}, {"id": 2, "memory": 1, "share": 60}]}
    parse_config(two)
    for bad, msg in (
        ({"daemon": {"devices": [1, 1]}}, "twice"),
        ({"daemon": {"devices": 0}}, "greater than or equal to 1"),
        ({"daemon": {"devices": 2}, "vm": [{"id": 1, "memory": 1, "share": 1, "device": 2}]}, "does not name"),
        ({"vm": [{"id": 1, "memory": 1, "share": 1, "device": 1}]}, "does not name"),
        ({"daemon": {"devices": 2}, "vm": [{"id": 1, "memory": 1, "share": 60, "device": 1},
                                           {"id": 2, "memory": 1, "share": 60, "device": 1}]}, "pinned to device 1"),
        ({"vm": [{"id": 1, "memory": 1, "share": 60}, {"id": 2, "memory": 1, "share": 60}]}, "more than 100"),
    ):
        with pytest.raises(ConfigError, match=msg):
            parse_config(bad)


def test_a_shared_model_is_held_once_per_device_that_uses_it(ds, tmp_path):
    """Held by a device while a VM placed there has it open, once however many; every
    copy has the same handles, so a VM moves with its model open and its launches that
    read the model's tensors run on the target's copy."""
    import json

    from tests.support.tiny_gguf import write_tiny_llama

    copy = "GPU_KERNEL cp\nGPU_PARAM w float[]\nGPU_PARAM o float[]\nGPU_THREAD_CODE:\n    COPY w -> o\nGPU_END\n"
    path = str(write_tiny_llama(tmp_path / "tiny.gguf"))
    for vm, dev in ((1, 0), (2, 1), (3, 1), (4, 2)):
        ds.register_vm(vm, 0, 20, memory_quota_bytes=MB, device=dev)
    pools = lambda: [info.pool_used for _, info, _ in ds.device_list()]  # noqa: E731
    info = ds.load_model("tiny", path)  # checked on device 0, then held nowhere: no VM uses it
    assert pools() == [0, 0, 0] and ds.model_devices("tiny") == []
    [listed] = ds.list_models()
    assert (listed.name, listed.nbytes, listed.device_bytes, listed.users) == ("tiny", info.nbytes, 0, ())
    a = ds.open_model(2, "tiny", session=1)
    b = ds.open_model(3, "tiny", session=1)
    assert pools() == [0, info.nbytes, 0] and ds.model_devices("tiny") == [1]  # once for its two VMs
    assert a.meta_handle == b.meta_handle and a.model_id == b.model_id == info.model_id
    meta = json.loads(ds.read(2, a.meta_handle, 0, a.meta_bytes, session=1))
    [(tname, t)] = list(meta["tensors"].items())[:1]
    n = int(np.prod(t["shape"]))
    want = ds.read(2, t["handle"], session=1)
    assert ds.list_models()[0].users == (2, 3) and ds.list_models()[0].opens == 2
    with pytest.raises(E.ModelInUse):
        ds.remove_model("tiny")
    # VM 2 moves to device 2 with the model open, a launch reading a tensor queued meanwhile.
    k = ds.compile(2, copy, session=1)[0]
    out = ds.alloc(2, "float32", tuple(t["shape"]), session=1)
    with ds._lock:
        c = ds.launch(2, k.kernel_id, {"w": t["handle"], "o": out.handle}, session=1)
        report = ds.move_vm(2, 2)
    assert c.wait(30).ok and report["launches_waited"] == 1
    assert ds.read(2, out.handle, session=1) == want  # read from device 2's copy
    assert ds.read(2, t["handle"], session=1) == want and ds.model_devices("tiny") == [1, 2]
    assert json.loads(ds.read(2, a.meta_handle, 0, a.meta_bytes, session=1)) == meta  # same handles there
    assert pools() == [0, info.nbytes, info.nbytes + 4 * n]
    ds.close_session(3, 1)
    assert pools() == [0, 0, info.nbytes + 4 * n]  # let go on device 1: no VM there has it open
    ds.close_model(2, a.model_id, session=1)
    assert pools() == [0, 0, 4 * n] and ds.model_devices("tiny") == []
    with pytest.raises(E.NotFound):
        ds.read(2, t["handle"], session=1)
    ds.remove_model("tiny")
    assert ds.list_models() == []


def test_launches_submitted_during_a_move_wait_and_run_on_the_target(ds):
    """The move waits for the VM's guest transfer in progress (here: one held open); the
    launches the guest submits meanwhile are held, not queued on the old device, and run
    on the new one in order, after the transfer's bytes arrived there."""
    import time as _time

    ds.register_vm(1, 0, 50, memory_quota_bytes=32 * MB, device=0)
    ds.register_vm(9, 0, 50, memory_quota_bytes=32 * MB, device=2)
    rng = np.random.default_rng(3)
    x0, y0 = rng.standard_normal(50_000).astype(np.float32), rng.standard_normal(50_000).astype(np.float32)
    ref, _, _ = _axpy_chain(ds, 9, 12, x0, y0)
    k = ds.compile(1, AXPY)[0]
    x, y = ds.alloc(1, "float32", (x0.size,)), ds.alloc(1, "float32", (y0.size,))
    ds.write(1, y.handle, 0, y0.tobytes())
    in_fill, go = threading.Event(), threading.Event()

    def fill(view):
        in_fill.set()
        assert go.wait(60)
        view[:] = x0.tobytes()

    writer = threading.Thread(target=lambda: ds.write_from(1, x.handle, 0, x0.nbytes, fill))
    writer.start()
    assert in_fill.wait(60)  # the guest's WRITE of x is in progress
    report = {}
    mover = threading.Thread(target=lambda: report.update(ds.move_vm(1, 1)))
    mover.start()
    vm = ds.devices[0]._vms[1]
    deadline = _time.monotonic() + 60
    while vm.held is None and _time.monotonic() < deadline:  # the move waits for the transfer
        _time.sleep(0.001)
    assert vm.held == [] and ds.vm_info(1).device == 0
    comps = [ds.launch(1, k.kernel_id, {"alpha": Scalar(1.0 + i / 7), "x": x.handle, "y": y.handle})
             for i in range(12)]
    assert len(vm.held) == 12 and ds.devices[0].scheduler.vm_stats(1).queue_depth == 0
    go.set()
    writer.join(60)
    mover.join(120)
    assert all(c.wait(60).ok for c in comps)
    assert report["to_device"] == 1 and report["launches_waited"] == 12
    assert ds.read(1, y.handle) == ref  # bit for bit
    assert ds.stats(1).launches_total == 12 and ds.devices[0].memory.pool_used == 0
    assert ds.devices[1].memory.pool_used == 2 * x0.nbytes


def test_a_one_device_hypervisor_has_nowhere_to_move_to():
    from hypervisor import Hypervisor

    with Hypervisor(backend="numpy", device_pool_bytes=16 * MB) as hv:
        info = hv.register_vm(1, 0, 50, memory_quota_bytes=MB)
        assert info.device == 0 and hv.stats(1).device == 0
        assert [u.device for u in hv.device_stats()] == [0] and hv.device_stats()[0].share_used == 50
        with pytest.raises(E.InvalidArgument, match="one device"):
            hv.move_vm(1, 1)
        with pytest.raises(E.NotFound):
            hv.move_vm(2, 1)
        with pytest.raises(E.InvalidArgument, match="no device 1"):
            hv.register_vm(2, 0, 10, memory_quota_bytes=MB, device=1)


def test_a_vm_with_buffers_in_host_ram_moves_with_them():
    """Overcommit: buffers evicted to host RAM move too (from their host copy), and both
    devices' pools and host budgets come out exact."""
    with DeviceSet("numpy", 2, device_pool_bytes=16 * MB, host_budget_bytes=16 * MB) as d:
        d.register_vm(1, 0, 50, memory_quota_bytes=8 * MB, device=0)
        data = [np.full(MB // 4, i + 0.25, np.float32) for i in range(3)]
        bufs = [d.alloc(1, "float32", (MB // 4,)) for _ in data]
        for b, a in zip(bufs, data, strict=True):
            d.write(1, b.handle, 0, a.tobytes())
        d.set_quota(1, memory_bytes=MB, evict=True)  # its buffers go to host RAM now
        src = d.devices[0].memory
        assert src.host_used == 3 * MB and src.pool_used == 0
        d.set_quota(1, memory_bytes=8 * MB)
        report = d.move_vm(1, 1)
        assert report["bytes"] == 3 * MB
        assert (src.pool_used, src.host_used, src.committed) == (0, 0, 0)
        dst = d.devices[1].memory
        assert dst.committed == 3 * MB and dst.pool_used + dst.host_used == 3 * MB
        for b, a in zip(bufs, data, strict=True):
            assert d.read(1, b.handle) == a.tobytes()
        st = d.stats(1)
        assert st.memory_used == 3 * MB and st.memory_device_bytes + st.memory_host_bytes == 3 * MB


def test_a_reset_or_removal_during_a_move_fails_the_held_launches(ds):
    """Launches held for a move are queued launches: a session close, a reset or the VM's
    removal cancels them (answered, never left hanging); a removal ends the move."""
    import time as _time

    ds.register_vm(1, 0, 50, memory_quota_bytes=8 * MB, device=0)
    k = ds.compile(1, AXPY)[0]
    x, y = ds.alloc(1, "float32", (1000,)), ds.alloc(1, "float32", (1000,))
    in_fill, go = threading.Event(), threading.Event()

    def fill(view):
        in_fill.set()
        assert go.wait(60)
        view[:] = bytes(len(view))

    writer = threading.Thread(target=lambda: ds.write_from(1, x.handle, 0, 4000, fill))
    writer.start()
    assert in_fill.wait(60)
    outcome = {}

    def move():
        try:
            outcome["report"] = ds.move_vm(1, 1)
        except E.PxosError as exc:
            outcome["error"] = exc

    mover = threading.Thread(target=move)
    mover.start()
    vm = ds.devices[0]._vms[1]
    deadline = _time.monotonic() + 60
    while vm.held is None and _time.monotonic() < deadline:
        _time.sleep(0.001)
    comps = [ds.launch(1, k.kernel_id, {"alpha": Scalar(1.0), "x": x.handle, "y": y.handle}) for _ in range(3)]
    assert len(vm.held) == 3
    ds.unregister_vm(1)
    for c in comps:
        assert c.wait(10).status == "PXOS_S_VM_GONE"
    go.set()
    writer.join(60)
    mover.join(60)
    assert isinstance(outcome.get("error"), E.NotFound) and "removed while it was moving" in str(outcome["error"])
    assert [i.pool_used for _, i, _ in ds.device_list()] == [0, 0, 0]
    with pytest.raises(E.NotFound):
        ds.vm_info(1)
