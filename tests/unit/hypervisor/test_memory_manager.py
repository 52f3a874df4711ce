"""Memory accounting: exact per VM and per pool, in every state."""

from __future__ import annotations

import pytest

from hypervisor.errors import AlreadyExists, NotFound, OutOfDeviceMemory, QuotaExceeded
from hypervisor.executor import NumpyExecutor
from hypervisor.memory import MAX_BUFFER_BYTES, MemoryManager
from primitive_lang import TensorSpec
from primitive_lang.ast import DType


def spec(n: int) -> TensorSpec:
    return TensorSpec(DType.FLOAT32, (n,))


@pytest.fixture
def mm():
    m = MemoryManager(NumpyExecutor(), pool_bytes=4096)
    m.add_vm(1, quota=2048)
    m.add_vm(2, quota=4096)
    return m


def test_usage_is_sum_of_live_buffers_and_returns_to_zero(mm):
    a = mm.alloc(1, 0, spec(100))
    b = mm.alloc(1, 0, spec(28))
    assert mm.vm(1).used == 512 and mm.pool_used == 512
    mm.free(1, 0, a.handle)
    assert mm.vm(1).used == 112
    mm.free(1, 0, b.handle)
    assert mm.vm(1).used == 0 and mm.pool_used == 0 and mm.vm(1).device_bytes == 0


def test_quota_error_names_quota_usage_and_request(mm):
    mm.alloc(1, 0, spec(500))
    with pytest.raises(QuotaExceeded) as ei:
        mm.alloc(1, 0, spec(100))
    e = ei.value
    assert (e.quota, e.usage, e.request) == (2048, 2000, 400)
    assert "400 bytes" in str(e) and "2000 of 2048" in str(e)
    assert mm.vm(1).used == 2000  # nothing changed


def test_allocation_up_to_the_quota_exactly_succeeds(mm):
    mm.alloc(1, 0, spec(512))  # exactly 2048 bytes: no false out-of-memory
    assert mm.vm(1).used == 2048


def test_pool_full_is_a_device_memory_error_not_a_quota_error(mm):
    mm.alloc(2, 0, spec(1000))
    mm.alloc(1, 0, spec(20))
    with pytest.raises(OutOfDeviceMemory, match="device pool is full"):
        mm.alloc(1, 0, spec(100))
    assert mm.pool_used == 4080


def test_free_of_a_pinned_buffer_is_deferred_until_unpinned(mm):
    b = mm.alloc(1, 0, spec(10))
    mm.pin(b, writes=True)
    mm.free(1, 0, b.handle)
    with pytest.raises(NotFound):
        mm.lookup(1, 0, b.handle)
    assert mm.vm(1).used == 40  # still held by the launch
    mm.unpin(b, writes=True)
    assert mm.vm(1).used == 0 and mm.pool_used == 0


def test_handles_are_per_vm_and_per_session(mm):
    b = mm.alloc(1, 7, spec(1))
    with pytest.raises(NotFound) as other_vm:
        mm.lookup(2, 7, b.handle)
    with pytest.raises(NotFound) as other_session:
        mm.lookup(1, 8, b.handle)
    with pytest.raises(NotFound) as missing:
        mm.lookup(1, 7, 999_999)
    assert str(other_vm.value).replace(str(b.handle), "H") == str(missing.value).replace("999999", "H")
    assert str(other_session.value).replace(str(b.handle), "H") == str(missing.value).replace("999999", "H")


def test_temporaries_count_against_quota_and_pool(mm):
    mm.alloc(1, 0, spec(256))
    mm.reserve_temps(1, 1024, launch_id=1)
    assert mm.vm(1).used == 2048 and mm.pool_used == 2048
    with pytest.raises(QuotaExceeded, match="temporaries"):
        mm.check_temps(1, 4)
    mm.release_temps(1)
    assert mm.vm(1).used == 1024 and mm.pool_used == 1024


def test_removed_vm_keeps_counting_until_its_running_launch_lets_go(mm):
    b = mm.alloc(1, 0, spec(10))
    mm.pin(b, writes=False)
    mm.reserve_temps(1, 8, launch_id=7)
    mm.remove_vm(1)
    assert mm.pool_used == 48
    with pytest.raises(AlreadyExists):
        mm.add_vm(1, quota=10)
    mm.release_temps(7)
    mm.unpin(b, writes=False)
    assert mm.pool_used == 0
    mm.add_vm(1, quota=10)  # the id is free again


def test_session_release_frees_only_that_session(mm):
    mm.alloc(1, 1, spec(10))
    mm.alloc(1, 1, spec(10))
    keep = mm.alloc(1, 2, spec(10))
    assert mm.release_session(1, 1) == (2, 80)
    assert mm.vm(1).used == 40
    assert mm.lookup(1, 2, keep.handle) is keep


def test_buffer_size_limit_is_checked_before_allocating():
    m = MemoryManager(NumpyExecutor(), pool_bytes=1 << 40)
    m.add_vm(1, quota=1 << 40)
    from hypervisor.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="limit"):
        m.alloc(1, 0, TensorSpec(DType.FLOAT64, (MAX_BUFFER_BYTES // 8 + 1,)))
    assert m.vm(1).used == 0


def test_set_quota_below_usage_refuses_new_allocations_but_takes_nothing(mm):
    mm.alloc(1, 0, spec(256))
    mm.set_quota(1, 512)
    assert mm.vm(1).used == 1024
    with pytest.raises(QuotaExceeded):
        mm.alloc(1, 0, spec(1))
