"""A memory quota cut below usage (issue 11, item 2): refused with the usage named, or, when
the operator asks to evict, applied with the VM's buffers moved to host RAM under the
overcommit rules. The guest keeps its data and its launches keep working; it allocates
nothing new until it fits; accounting stays exact."""

from __future__ import annotations

import numpy as np
import pytest

from hypervisor import Hypervisor
from hypervisor import errors as E
from tests.unit.hypervisor.test_overcommit import LAYER, check_accounting, wait_idle

KB = 1024
N, B = 32, 4  # w: 4 KiB, x and y: 512 bytes each


@pytest.fixture
def hv():
    hv = Hypervisor(backend="numpy", device_pool_bytes=64 * KB, host_budget_bytes=64 * KB).start()
    hv.register_vm(1, 0, 50, memory_quota_bytes=32 * KB)
    hv.register_vm(2, 0, 50, memory_quota_bytes=32 * KB)
    yield hv
    hv.stop()


def _layer(hv: Hypervisor, vm: int, seed: int):
    rng = np.random.default_rng(seed)
    (k,) = hv.compile(vm, LAYER)
    w, x, y = (hv.alloc(vm, "float32", s).handle for s in ((N, N), (B, N), (B, N)))
    hv.write(vm, w, 0, (rng.standard_normal((N, N)) / np.sqrt(N)).astype(np.float32).tobytes())
    hv.write(vm, x, 0, rng.standard_normal((B, N)).astype(np.float32).tobytes())
    return k, w, x, y


def _run(hv, vm, k, w, x, y) -> bytes:
    r = hv.launch(vm, k.kernel_id, {"w": w, "x": x, "y": y}).wait(30)
    assert r.ok, r.error
    return hv.read(vm, y)


def test_a_cut_below_usage_is_refused_naming_the_usage(hv):
    k, w, x, y = _layer(hv, 1, 0)
    used = hv.vm_info(1).memory_used
    with pytest.raises(E.QuotaBelowUsage, match=f"VM 1 holds {used} bytes now.*quota set --evict"):
        hv.set_quota(1, memory_bytes=1 * KB)
    assert hv.vm_info(1).memory_quota == 32 * KB  # nothing applied


def test_evict_moves_the_buffers_to_host_ram_and_launches_keep_working(hv):
    k, w, x, y = _layer(hv, 1, 0)
    before = _run(hv, 1, k, w, x, y)
    wait_idle(hv)
    used = hv.vm_info(1).memory_used
    info = hv.set_quota(1, memory_bytes=1 * KB, evict=True)
    assert (info.memory_quota, info.memory_used) == (1 * KB, used)  # nothing lost
    wait_idle(hv)
    st = hv.stats(1)
    assert st.memory_device_bytes == 0 and st.memory_host_bytes == used
    with hv._lock:
        check_accounting(hv)
    # Nothing new until it fits ...
    with pytest.raises(E.QuotaExceeded):
        hv.alloc(1, "float32", (1,))
    # ... but its launches run, on its own data, with the same result.
    assert _run(hv, 1, k, w, x, y) == before
    with hv._lock:
        check_accounting(hv)
    # The other VM is untouched.
    k2, *bufs2 = _layer(hv, 2, 1)
    _run(hv, 2, k2, *bufs2)
    # Once it holds less than the new quota, the ordinary rules apply again.
    hv.free(1, w)
    hv.set_quota(1, memory_bytes=2 * KB, evict=True)  # y and x (1 KiB) fit: a plain cut now
    hv.alloc(1, "float32", (64,))
    wait_idle(hv)
    with hv._lock:
        check_accounting(hv)


def test_evict_needs_overcommit_and_room_and_changes_nothing_without():
    hv = Hypervisor(backend="numpy", device_pool_bytes=64 * KB).start()
    try:
        hv.register_vm(1, 0, 50, memory_quota_bytes=32 * KB)
        _layer(hv, 1, 0)
        with pytest.raises(E.InvalidArgument, match="needs overcommit"):
            hv.set_quota(1, memory_bytes=1 * KB, evict=True)
        assert hv.vm_info(1).memory_quota == 32 * KB
    finally:
        hv.stop()
    small = Hypervisor(backend="numpy", device_pool_bytes=64 * KB, host_budget_bytes=2 * KB).start()
    try:
        small.register_vm(1, 0, 50, memory_quota_bytes=32 * KB)
        _layer(small, 1, 0)
        with pytest.raises(E.OutOfDeviceMemory, match="needs 5120 bytes of host budget"):
            small.set_quota(1, memory_bytes=1 * KB, evict=True)
        assert small.vm_info(1).memory_quota == 32 * KB and small.stats(1).memory_host_bytes == 0
    finally:
        small.stop()
