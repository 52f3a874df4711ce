"""Tenant isolation on the host side of the Hypervisor (issue 17): what one VM can make
the daemon hold is bounded per VM and counted, reading one VM's figures costs nothing per
other VM or per buffer, and a reset gives the VM's next driver a zero usage at once."""

from __future__ import annotations

import gc
import threading
import time
import tracemalloc

import pytest
from hv_kernels import AXPY

import primitive_lang
from hypervisor import Scalar
from hypervisor import errors as E
from hypervisor.memory import MAX_BUFFERS_PER_VM
from hypervisor.records import BIND_CACHE_SIZE, KERNEL_HOST_BUDGET_BYTES, kernel_host_bytes
from primitive_lang import TensorSpec
from primitive_lang.ast import DType
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


def _dense_source(tag: int, kernels: int = 3, statements: int = 1000, name: str = "t") -> str:
    """As many op statements as a 64 KiB source holds: the most host memory per byte."""
    out = []
    for k in range(kernels):
        body = "".join(f"    RELU a -> {name}{j}\n" for j in range(statements - 1))
        out.append(f"GPU_KERNEL k{tag}_{k}\nGPU_PARAM a float[N]\nGPU_PARAM c float[N]\nGPU_THREAD_CODE:\n"
                   f"{body}    COPY a -> c\nGPU_END\n")
    return "".join(out)


def test_compiled_kernels_are_bounded_by_a_per_vm_host_budget(hv):
    hv.register_vm(1, 64, 10)
    hv.register_vm(2, 64, 10)
    kept = []
    with pytest.raises(E.HostLimitExceeded, match="budget") as refused:
        for tag in range(200):  # far fewer than MAX_KERNELS_PER_VM kernels
            kept += hv.compile(1, _dense_source(tag))
    assert refused.value.status == "PXOS_S_QUOTA"
    charged = hv.stats(1).extra["kernel_host_bytes"]
    assert charged <= KERNEL_HOST_BUDGET_BYTES < charged + 3 * 1_100_000 * 2
    assert hv.stats(1).kernels == len(kept) < 100
    # Refused whole: nothing of the refused compile was kept.
    assert sum(kernel_host_bytes(k.checked) for k in kept) == charged
    # Another VM compiles as before; freeing kernels gives the budget back.
    assert hv.compile(2, AXPY)
    for k in kept[:3]:
        hv.free_kernel(1, k.kernel_id)
    assert hv.compile(1, _dense_source(999))
    hv.reset_vm(1)
    assert hv.stats(1).extra["kernel_host_bytes"] == 0 and hv.stats(1).kernels == 0


@pytest.mark.parametrize("kernels,statements,name", [(1, 1, "t"), (3, 1000, "t"), (1, 700, "x" * 55)])
def test_the_kernel_estimate_bounds_what_the_host_really_holds(hv, kernels, statements, name):
    hv.register_vm(1, 64, 10)
    primitive_lang.clear_cache()  # the cache would keep the objects alive either way
    rounds = 3 if statements < 100 else 1
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        infos = []
        for tag in range(rounds):
            infos += hv.compile(1, _dense_source(tag, kernels, statements, name))
        for info in infos:  # fill every bind cache
            rec = hv._vms[1].kernels[info.kernel_id]
            for n in range(1, BIND_CACHE_SIZE + 1):
                rec.bind({"a": TensorSpec(DType.FLOAT32, (n,)), "c": TensorSpec(DType.FLOAT32, (n,))})
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    charged = hv.stats(1).extra["kernel_host_bytes"]
    assert held <= charged, f"{held} bytes held for {charged} charged"
    assert charged < 4 * held, f"{charged} bytes charged for {held} held"  # an estimate, not a wild one


def test_buffers_per_vm_are_capped(hv):
    hv.register_vm(1, 64, 10)
    for _ in range(MAX_BUFFERS_PER_VM):
        hv.alloc(1, "float32", [0])
    with pytest.raises(E.InvalidArgument, match="limit"):
        hv.alloc(1, "float32", [0])
    assert hv.stats(1).buffers == MAX_BUFFERS_PER_VM


def test_a_launch_picked_but_not_started_at_a_reset_is_cancelled(hv):
    # The launch is picked while its buffer is mid-transfer (it waits for the guest's
    # WRITE to end); the reset comes meanwhile. It belongs to the old device: it must not
    # start afterwards, nor put its temporaries on the VM's next driver's usage.
    hv.register_vm(1, 10, 50)
    (k,) = hv.compile(1, AXPY)
    x, y = hv.alloc(1, "float32", [1000]).handle, hv.alloc(1, "float32", [1000]).handle
    filling, finish = threading.Event(), threading.Event()

    def slow_fill(view):
        filling.set()
        finish.wait(10)

    writer = threading.Thread(target=hv.write_from, args=(1, x, 0, 4000, slow_fill))
    writer.start()
    assert filling.wait(10)
    launch = hv.launch(1, k.kernel_id, {"alpha": Scalar(1.0), "x": x, "y": y})
    for _ in range(500):  # until the dispatcher has picked it (it waits for the transfer)
        if hv.scheduler.queue_depth(1) == 0:
            break
        time.sleep(0.002)
    assert hv.scheduler.queue_depth(1) == 0 and not launch.done()
    hv.reset_vm(1)
    assert hv.stats(1).memory_used == 0
    finish.set()
    writer.join(10)
    assert launch.wait(10).status == "PXOS_S_CANCELLED"
    s = hv.stats(1)
    assert s.memory_used == 0 and s.extra["held_after_reset_bytes"] == 0
    assert hv.memory.pool_used == 0 and hv.memory.committed == 0
