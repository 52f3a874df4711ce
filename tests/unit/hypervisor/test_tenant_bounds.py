"""Tenant isolation on the host side of the Hypervisor (issue 17): what one VM can make
the daemon hold is bounded per VM and counted, reading one VM's figures costs nothing per
other VM or per buffer, and a reset gives the VM's next driver a zero usage at once."""

from __future__ import annotations

import threading
import time

from hv_kernels import AXPY

from hypervisor import Scalar
from scheduler.window import UsageWindow


class _CountingDict(dict):
    """A VM's buffer table that counts every walk over it."""

    walks = 0

    def values(self):
        type(self).walks += 1
        return super().values()

    def items(self):
        type(self).walks += 1
        return super().items()

    def __iter__(self):
        type(self).walks += 1
        return super().__iter__()


def test_one_vms_stats_read_nothing_of_other_vms_or_of_its_buffers(hv, monkeypatch):
    for vm in range(1, 41):
        hv.register_vm(vm, 100, 1)
    for _ in range(300):
        hv.alloc(1, "float32", [4])
    hv.free(1, hv.alloc(1, "float32", [4]).handle)
    pruned: list[int] = []
    real_prune = UsageWindow.prune

    def counting_prune(self, now, window):
        pruned.append(id(self))
        return real_prune(self, now, window)

    monkeypatch.setattr(UsageWindow, "prune", counting_prune)
    mine = id(hv.scheduler._vms[1].usage)
    mem = hv.memory.vm(1)
    mem.buffers = _CountingDict(mem.buffers)

    s = hv.stats(1)
    assert s.buffers == 300 and s.memory_used == 300 * 16
    assert set(pruned) == {mine}, "a guest's STATS read other VMs' scheduler state"
    assert _CountingDict.walks == 0, "a guest's STATS walked its buffers under the lock"

    pruned.clear()
    table = hv.all_stats()
    assert [t.vm_id for t in table] == list(range(1, 41)) and table[0].buffers == 300
    assert sorted(pruned) == sorted({id(v.usage) for v in hv.scheduler._vms.values()}), \
        "all_stats read some VM's window more than once"
    assert _CountingDict.walks == 0


def test_usage_is_zero_right_after_a_reset_with_a_launch_running(hv):
    hv.register_vm(1, 40, 50)
    hv.register_vm(2, 10, 10)  # a bystander, whose figures must not move
    hv.alloc(2, "float32", [1000])
    started, gate = threading.Event(), threading.Event()

    def hold(job):
        started.set()
        gate.wait(10)

    hv.dispatcher.before_run.append(hold)
    (k,) = hv.compile(1, AXPY)  # MUL x alpha -> t: one temporary of x's size
    n = 1 << 20
    x, y = hv.alloc(1, "float32", [n]).handle, hv.alloc(1, "float32", [n]).handle
    running = hv.launch(1, k.kernel_id, {"alpha": Scalar(2.0), "x": x, "y": y})
    queued = hv.launch(1, k.kernel_id, {"alpha": Scalar(2.0), "x": x, "y": y})
    assert started.wait(10)
    pool_before, other_before = hv.device_info().pool_used, hv.stats(2)
    assert hv.stats(1).memory_used == 3 * 4 * n  # two buffers and the running temporary

    res = hv.reset_vm(1)
    s = hv.stats(1)
    assert (res.buffers_freed, res.launches_cancelled) == (2, 1)
    assert s.memory_used == 0 and hv.vm_usage(1)[1] == 0 and hv.vm_info(1).memory_used == 0
    assert s.memory_device_bytes == 0 and s.memory_host_bytes == 0 and s.buffers == 0
    # Still held by the running launch, and still counted, exactly, but not as usage.
    assert s.extra["held_after_reset_bytes"] == 3 * 4 * n
    assert hv.device_info().pool_used == pool_before
    # The VM's next driver has its whole quota.
    fresh = hv.alloc(1, "float32", [10_000_000])
    assert hv.stats(1).memory_used == fresh.nbytes

    gate.set()
    assert running.wait(10).status in ("PXOS_S_OK", "PXOS_S_CANCELLED")
    assert queued.wait(10).status == "PXOS_S_CANCELLED"
    for _ in range(500):
        if hv.stats(1).extra["held_after_reset_bytes"] == 0:
            break
        time.sleep(0.01)
    s = hv.stats(1)
    assert s.extra["held_after_reset_bytes"] == 0 and s.memory_used == fresh.nbytes
    assert hv.device_info().pool_used == fresh.nbytes + other_before.memory_used
    assert hv.memory.committed == fresh.nbytes + other_before.memory_used
    assert hv.stats(2).memory_used == other_before.memory_used
