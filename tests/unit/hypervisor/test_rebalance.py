"""The rebalancer (issue 16): off by default; moves a VM off a busy device only after the
imbalance has stood a dwell time, never its device's only busy VM, and nothing flaps.
Loads and time are given to it, so every decision here is exact; the moves are real."""

from __future__ import annotations

import pytest
from hv_kernels import AXPY

from hypervisor.devices import DeviceSet
from hypervisor.rebalance import Rebalancer
from hypervisor.types import Scalar

MB = 1 << 20


@pytest.fixture
def ds():
    d = DeviceSet("numpy", 2, device_pool_bytes=32 * MB, window_seconds=3600).start()
    for vm, share in ((1, 30), (2, 30), (3, 30)):
        d.register_vm(vm, 0, share, memory_quota_bytes=4 * MB, device=0)
    for vm in (1, 2):  # VMs 1 and 2 have used device 0; VM 3 has not
        k = d.compile(vm, AXPY)[0]
        x, y = d.alloc(vm, "float32", (1000,)), d.alloc(vm, "float32", (1000,))
        assert d.launch(vm, k.kernel_id, {"alpha": Scalar(2.0), "x": x.handle, "y": y.handle}).wait(30).ok
    yield d
    d.stop()


def test_moves_one_busy_vm_after_the_dwell_and_does_not_flap(ds):
    real = Rebalancer(ds, interval=1, dwell=1)._utilisation()  # what it reads by default
    assert set(real) == {0, 1} and 0 <= real[0] <= 1 and real[1] == 0.0
    loads = {0: 0.9, 1: 0.1}
    rb = Rebalancer(ds, interval=1, dwell=10, loads=lambda: dict(loads))
    assert rb.step(now=0) is None  # the imbalance starts standing now
    assert rb.step(now=9.9) is None  # not for a whole dwell yet
    report = rb.step(now=10)
    assert report is not None and report["by"] == "rebalancer" and report["to_device"] == 1
    moved = report["vm_id"]
    assert moved in (1, 2) and ds.vm_info(moved).device == 1 and ds.vm_info(3).device == 0
    # Still uneven (the loads say so): a new dwell must pass, and then device 0 has one busy
    # VM left, which is never moved (it would only take the load along).
    assert rb.step(now=11) is None and rb.step(now=30) is None and rb.step(now=100) is None
    assert rb.moves == 1
    # Loads reversed: the moved VM is now device 1's only busy VM: it stays there.
    loads.update({0: 0.0, 1: 1.0})
    assert rb.step(now=200) is None and rb.step(now=300) is None
    assert ds.vm_info(moved).device == 1


def test_no_move_below_the_gap_or_when_the_imbalance_breaks(ds):
    loads = {0: 0.6, 1: 0.2}
    rb = Rebalancer(ds, interval=1, dwell=10, loads=lambda: dict(loads))
    assert all(rb.step(now=t) is None for t in (0, 10, 20, 100))  # 0.4 apart: below REBALANCE_GAP
    loads.update({0: 0.9, 1: 0.1})
    assert rb.step(now=200) is None
    loads.update({0: 0.5})  # the imbalance breaks before the dwell is over
    assert rb.step(now=205) is None
    loads.update({0: 0.9})
    assert rb.step(now=210) is None  # it starts standing again only now
    assert rb.step(now=219) is None
    assert rb.step(now=220) is not None


def test_a_vm_the_target_cannot_take_is_passed_over(ds):
    ds.register_vm(9, 0, 80, memory_quota_bytes=MB, device=1)  # device 1: 20% of share free
    rb = Rebalancer(ds, interval=1, dwell=0, loads=lambda: {0: 1.0, 1: 0.0})
    assert rb.step(now=0) is None  # starts standing
    assert rb.step(now=1) is None  # VMs 1 and 2 (30% each) do not fit: nothing moves
    assert {v.vm_id: v.device for v in ds.list_vms()} == {1: 0, 2: 0, 3: 0, 9: 1}


def test_off_by_default_and_started_by_the_daemon(tmp_path):
    from hypervisor.config import parse_config
    from hypervisor.daemon import Daemon

    base = {"backend": "numpy", "devices": 2, "grpc_socket": str(tmp_path / "g.sock"), "socket_dir": str(tmp_path),
            "metrics_address": None}
    assert parse_config({}).daemon.rebalance_seconds == 0
    for extra, running in (({}, False), ({"rebalance_seconds": 0.5, "rebalance_dwell_seconds": 5}, True)):
        cfg = parse_config({"daemon": {**base, **extra}, "memory": {"device_pool": "16Mi"}})
        dm = Daemon(cfg).start(grpc=False, metrics=False)
        try:
            rb = dm.hv.rebalancer
            assert (rb is not None) == running
            if running:
                assert rb.interval == 0.5 and rb.dwell == 5 and rb._thread.is_alive()
        finally:
            dm.stop()
        if running:
            assert not rb._thread.is_alive()
