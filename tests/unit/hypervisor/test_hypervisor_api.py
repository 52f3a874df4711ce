"""The Hypervisor API end to end on the NumPy backend: VMs, buffers, kernels, launches."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hv_kernels import AXPY, MATMUL

from hypervisor import Hypervisor, Scalar
from hypervisor import errors as E


def put(hv, vm, arr, session=0):
    b = hv.alloc(vm, str(arr.dtype), arr.shape, session=session)
    hv.write(vm, b.handle, 0, arr.tobytes(), session=session)
    return b.handle


def get(hv, vm, handle, dtype, shape, session=0):
    return np.frombuffer(hv.read(vm, handle, session=session), dtype=dtype).reshape(shape)


def test_register_validates_and_lists(hv):
    info = hv.register_vm(1, 8000, 50, name="train", cap_percent=80, default_class="BATCH")
    assert (info.vm_id, info.name, info.memory_quota, info.share_pct, info.cap_pct) == (1, "train", 8_000_000_000, 50, 80)
    with pytest.raises(E.AlreadyExists):
        hv.register_vm(1, 1, 1)
    with pytest.raises(E.InvalidArgument, match="share"):
        hv.register_vm(2, 100, 101)
    with pytest.raises(E.InvalidArgument):
        hv.register_vm(2, 100, 51)  # shares would sum to 101
    with pytest.raises(E.InvalidArgument, match="class"):
        hv.register_vm(3, 100, 10, default_class="FAST")
    with pytest.raises(E.InvalidArgument, match="VM id"):
        hv.register_vm(0, 100, 10)
    assert [v.vm_id for v in hv.list_vms()] == [1]


def test_matmul_launch_gives_numpy_result_and_timings(hv):
    hv.register_vm(1, 100, 50)
    rng = np.random.default_rng(0)
    a, b = rng.random((8, 5), dtype=np.float32), rng.random((5, 3), dtype=np.float32)
    ha, hb = put(hv, 1, a), put(hv, 1, b)
    hc = hv.alloc(1, "float32", (8, 3)).handle
    (k,) = hv.compile(1, MATMUL)
    res = hv.launch(1, k.kernel_id, {"a": ha, "b": hb, "c": hc}).wait(10)
    assert res.ok, res.error
    np.testing.assert_allclose(get(hv, 1, hc, np.float32, (8, 3)), a @ b, rtol=1e-5)
    assert res.total_ns >= res.queue_ns >= 0 and res.device_ns >= 0
    s = hv.stats(1)
    assert s.launches_total == 1 and s.launches_failed == 0 and s.inflight == 0


def test_scalars_and_inout_params(hv):
    hv.register_vm(1, 100, 50)
    x, y = np.arange(6, dtype=np.float32), np.ones(6, dtype=np.float32)
    hx, hy = put(hv, 1, x), put(hv, 1, y)
    (k,) = hv.compile(1, AXPY)
    assert hv.launch(1, k.kernel_id, {"alpha": Scalar(2.0), "x": hx, "y": hy}).wait(10).ok
    np.testing.assert_array_equal(get(hv, 1, hy, np.float32, (6,)), 2 * x + 1)


def test_another_vms_handle_is_indistinguishable_from_a_missing_one(hv):
    hv.register_vm(1, 100, 50)
    hv.register_vm(2, 100, 50)
    h = hv.alloc(1, "float32", (4,)).handle
    missing = h + 10_000
    errs = {}
    for label, call in {
        "free": lambda x: hv.free(2, x),
        "write": lambda x: hv.write(2, x, 0, b"\0" * 4),
        "read": lambda x: hv.read(2, x),
        "info": lambda x: hv.buffer_info(2, x),
    }.items():
        with pytest.raises(E.NotFound) as theirs:
            call(h)
        with pytest.raises(E.NotFound) as nothing:
            call(missing)
        assert type(theirs.value) is type(nothing.value)
        assert str(theirs.value).replace(str(h), "H") == str(nothing.value).replace(str(missing), "H")
        errs[label] = str(theirs.value)
    (k,) = hv.compile(2, MATMUL)
    with pytest.raises(E.NotFound):
        hv.launch(2, k.kernel_id, {"a": h, "b": h, "c": h})
    assert hv.stats(1).buffers == 1  # VM 1's buffer untouched


def test_kernels_are_per_vm_and_session(hv):
    hv.register_vm(1, 100, 50)
    hv.register_vm(2, 100, 50)
    (k,) = hv.compile(1, MATMUL, session=3)
    with pytest.raises(E.NotFound):
        hv.kernel_info(2, k.kernel_id, session=3)
    with pytest.raises(E.NotFound):
        hv.kernel_info(1, k.kernel_id, session=4)
    assert hv.kernel_info(1, k.kernel_id, session=3).name == "mm"


def test_compile_errors_are_typed_with_positions(hv):
    hv.register_vm(1, 100, 50)
    with pytest.raises(E.PrimitiveError) as ei:
        hv.compile(1, "GPU_KERNEL k\nGPU_PARAM a float[]\nGPU_THREAD_CODE:\n  FROB a -> a\nGPU_END\n")
    assert ei.value.diagnostics and ei.value.diagnostics[0].line == 4


def test_bind_errors_for_shape_mismatch_and_missing_params(hv):
    hv.register_vm(1, 100, 50)
    (k,) = hv.compile(1, MATMUL)
    a = hv.alloc(1, "float32", (4, 3)).handle
    b = hv.alloc(1, "float32", (2, 5)).handle  # K mismatch
    c = hv.alloc(1, "float32", (4, 5)).handle
    with pytest.raises(E.BindError) as ei:
        hv.launch(1, k.kernel_id, {"a": a, "b": b, "c": c})
    assert ei.value.status == "PXOS_S_BIND" and ei.value.diagnostics
    with pytest.raises(E.BindError):
        hv.launch(1, k.kernel_id, {"a": a, "c": c})
    ints = hv.alloc(1, "int32", (3, 5)).handle  # a dtype every backend holds (wgpu has no float64)
    with pytest.raises(E.BindError):
        hv.launch(1, k.kernel_id, {"a": a, "b": ints, "c": c})
    assert hv.stats(1).inflight == 0


def test_a_dtype_the_device_cannot_hold_is_refused_at_alloc(hv):
    hv.register_vm(1, 100, 50)
    if hv.executor.name != "wgpu":
        assert hv.alloc(1, "float64", (3,)).nbytes == 24 and hv.alloc(1, "int64", (3,)).nbytes == 24
        return
    for dtype in ("float64", "int64"):  # WGSL has no 64-bit types (docs/operations.md)
        with pytest.raises(E.UnsupportedDtype, match=dtype) as ei:
            hv.alloc(1, dtype, (3, 5))
        assert ei.value.status == "PXOS_S_INVALID"
    assert hv.stats(1).memory_used == 0 and hv.memory.committed == 0


def test_an_output_may_not_share_a_buffer_with_another_param(hv):
    hv.register_vm(1, 100, 50)
    (k,) = hv.compile(1, MATMUL)
    sq = hv.alloc(1, "float32", (4, 4)).handle
    with pytest.raises(E.BindError, match="buffer of its own"):
        hv.launch(1, k.kernel_id, {"a": sq, "b": sq, "c": sq})


def test_alloc_over_quota_and_usage_back_to_zero(hv):
    hv.register_vm(1, 1, 50)  # 1 MB
    handles = [hv.alloc(1, "float32", (62_500,)).handle for _ in range(4)]  # 4 x 250 kB
    with pytest.raises(E.QuotaExceeded) as ei:
        hv.alloc(1, "float32", (1,))
    assert ei.value.quota == 1_000_000 and ei.value.usage == 1_000_000 and ei.value.request == 4
    for h in handles:
        hv.free(1, h)
    assert hv.vm_info(1).memory_used == 0


def test_launch_temporaries_over_quota_fail_clearly(hv):
    hv.register_vm(1, 0.001, 50)  # 1000 bytes
    src = """
GPU_KERNEL big_temp
GPU_PARAM x float[100]
GPU_PARAM y float[100]
GPU_THREAD_CODE:
    EXP x -> t1
    EXP t1 -> t2
    ADD t1 t2 -> y
GPU_END
"""
    (k,) = hv.compile(1, src)
    x, y = hv.alloc(1, "float32", (100,)).handle, hv.alloc(1, "float32", (100,)).handle
    with pytest.raises(E.QuotaExceeded, match="temporaries"):
        hv.launch(1, k.kernel_id, {"x": x, "y": y})
    assert hv.vm_info(1).memory_used == 800


def test_writing_a_buffer_a_queued_launch_uses_is_busy(hv):
    hv.register_vm(1, 100, 50)
    gate = threading.Event()
    hv.dispatcher.before_run.append(lambda job: gate.wait(10))
    (k,) = hv.compile(1, AXPY)
    x, y = put(hv, 1, np.ones(4, np.float32)), put(hv, 1, np.ones(4, np.float32))
    c = hv.launch(1, k.kernel_id, {"alpha": Scalar(1.0), "x": x, "y": y})
    with pytest.raises(E.Busy):
        hv.write(1, y, 0, b"\0" * 4)
    with pytest.raises(E.Busy):
        hv.read(1, y)
    hv.read(1, x)  # only read by the launch: reading it is fine
    hv.free(1, y)  # deferred until the launch lets go
    gate.set()
    assert c.wait(10).ok
    assert hv.vm_info(1).memory_used == 16


def test_launches_of_one_vm_run_in_order(hv):
    hv.register_vm(1, 100, 50)
    src = """
GPU_KERNEL inc
GPU_PARAM x float[1]
GPU_THREAD_CODE:
    ADD x 1 -> x
GPU_END
GPU_KERNEL dbl
GPU_PARAM x float[1]
GPU_THREAD_CODE:
    MUL x 2 -> x
GPU_END
"""
    inc, dbl = hv.compile(1, src)
    x = put(hv, 1, np.zeros(1, np.float32))
    expect = 0.0
    cs = []
    for i in range(40):
        k = inc if i % 3 else dbl
        expect = expect + 1 if i % 3 else expect * 2
        cs.append(hv.launch(1, k.kernel_id, {"x": x}))
    assert all(c.wait(10).ok for c in cs)
    assert [c.launch_id for c in cs] == sorted(c.launch_id for c in cs)
    assert get(hv, 1, x, np.float32, (1,))[0] == expect


def test_reset_releases_everything_and_cancels_queued_work(hv):
    hv.register_vm(1, 100, 50)
    gate = threading.Event()
    hv.dispatcher.before_run.append(lambda job: gate.wait(10))
    (k,) = hv.compile(1, AXPY)
    x, y = put(hv, 1, np.ones(4, np.float32)), put(hv, 1, np.ones(4, np.float32))
    cs = [hv.launch(1, k.kernel_id, {"alpha": Scalar(1.0), "x": x, "y": y}) for _ in range(5)]
    res = hv.reset_vm(1)
    assert res.buffers_freed == 2 and res.kernels_freed == 1 and res.launches_cancelled >= 4
    gate.set()
    statuses = [c.wait(10).status for c in cs]
    assert statuses.count("PXOS_S_CANCELLED") == res.launches_cancelled
    hv.dispatcher.before_run.clear()
    for _ in range(100):
        if hv.vm_info(1).memory_used == 0:
            break
        threading.Event().wait(0.01)
    assert hv.vm_info(1).memory_used == 0 and hv.stats(1).inflight == 0
    with pytest.raises(E.NotFound):
        hv.kernel_info(1, k.kernel_id)


def test_close_session_frees_only_that_session(hv):
    hv.register_vm(1, 100, 50)
    hv.alloc(1, "float32", (10,), session=5)
    hv.compile(1, MATMUL, session=5)
    keep = hv.alloc(1, "float32", (10,), session=6)
    r = hv.close_session(1, 5)
    assert (r.buffers_freed, r.bytes_freed, r.kernels_freed) == (1, 40, 1)
    assert hv.vm_info(1).memory_used == 40
    hv.buffer_info(1, keep.handle, session=6)


def test_quota_and_share_change_at_run_time(hv):
    hv.register_vm(1, 100, 50)
    hv.register_vm(2, 100, 40)
    with pytest.raises(E.InvalidArgument):
        hv.set_quota(1, share_pct=61)
    info = hv.set_quota(1, memory_bytes=5_000, share_pct=60, cap_pct=70)
    assert (info.memory_quota, info.share_pct, info.cap_pct) == (5000, 60, 70)
    assert hv.set_quota(1, cap_pct=None).cap_pct is None
    with pytest.raises(E.QuotaExceeded):
        hv.alloc(1, "float32", (2000,))


def test_quota_cut_below_usage_is_refused_naming_the_usage(hv):
    """Issue 11, item 2: a cut below what the VM holds is refused (it used to be accepted and
    the guest's next launch failed); the VM keeps its quota and keeps working."""
    hv.register_vm(1, 100, 50)
    hv.alloc(1, "float32", (1000,))  # 4000 bytes held
    with pytest.raises(E.QuotaBelowUsage, match="holds 4000 bytes") as exc:
        hv.set_quota(1, memory_bytes=3_999, share_pct=10)
    assert exc.value.status == "PXOS_S_INVALID" and exc.value.usage == 4000
    info = hv.vm_info(1)
    assert (info.memory_quota, info.share_pct) == (100_000_000, 50)  # nothing of the request applied
    assert hv.set_quota(1, memory_bytes=4_000).memory_quota == 4000  # down to the usage is fine
    with pytest.raises(E.QuotaExceeded):
        hv.alloc(1, "float32", (1,))


@pytest.mark.parametrize("quota", [0, -1, (1 << 50) + 1, 2**64 - 1])
def test_memory_quota_out_of_range_is_refused(hv, quota):
    from hypervisor.core import MAX_MEMORY_QUOTA_BYTES

    with pytest.raises(E.InvalidArgument, match="MAX_MEMORY_QUOTA_BYTES"):
        hv.register_vm(1, 0, 50, memory_quota_bytes=quota)
    hv.register_vm(2, 100, 40)
    with pytest.raises(E.InvalidArgument, match="MAX_MEMORY_QUOTA_BYTES"):
        hv.set_quota(2, memory_bytes=quota)
    assert hv.register_vm(3, 0, 10, memory_quota_bytes=MAX_MEMORY_QUOTA_BYTES).memory_quota == MAX_MEMORY_QUOTA_BYTES


def test_unregister_cancels_and_releases(hv):
    hv.register_vm(1, 100, 50)
    put(hv, 1, np.ones(4, np.float32))
    hv.unregister_vm(1)
    with pytest.raises(E.NotFound):
        hv.vm_info(1)
    assert hv.memory.pool_used == 0
    hv.register_vm(1, 100, 50)  # the id can be used again


def test_events_are_published(hv):
    seen = []
    unsub = hv.subscribe(seen.append)
    hv.register_vm(1, 100, 50)
    (k,) = hv.compile(1, AXPY)
    x, y = put(hv, 1, np.ones(2, np.float32)), put(hv, 1, np.ones(2, np.float32))
    hv.launch(1, k.kernel_id, {"alpha": Scalar(1.0), "x": x, "y": y}).wait(10)
    unsub()
    kinds = [e.kind for e in seen]
    assert "vm_registered" in kinds and "launch_completed" in kinds


def test_bad_arguments_are_invalid_argument(hv):
    hv.register_vm(1, 100, 50)
    with pytest.raises(E.InvalidArgument, match="dtype"):
        hv.alloc(1, "complex64", (2,))
    with pytest.raises(E.InvalidArgument, match="rank"):
        hv.alloc(1, "float32", (1,) * 9)
    with pytest.raises(E.InvalidArgument):
        hv.alloc(1, "float32", (-1,))
    h = hv.alloc(1, "float32", (2,)).handle
    with pytest.raises(E.InvalidArgument, match="outside"):
        hv.write(1, h, 4, b"\0" * 8)
    with pytest.raises(E.InvalidArgument, match="outside"):
        hv.read(1, h, 0, 9)
    (k,) = hv.compile(1, AXPY)
    with pytest.raises(E.InvalidArgument, match="priority"):
        hv.launch(1, k.kernel_id, {}, priority=101)
    with pytest.raises(E.BindError, match="int32|fit"):
        kk = hv.compile(1, "GPU_KERNEL s\nGPU_PARAM n int\nGPU_PARAM o int[1]\nGPU_THREAD_CODE:\n"
                           "  ADD o n -> o\nGPU_END\n")[0]
        hv.launch(1, kk.kernel_id, {"n": Scalar(2**40), "o": hv.alloc(1, "int32", (1,)).handle})


def test_stop_cancels_queued_launches():
    h = Hypervisor(backend="numpy", device_pool_bytes=1 << 20)
    h.register_vm(1, 1, 50)
    (k,) = h.compile(1, AXPY)
    x, y = h.alloc(1, "float32", (2,)).handle, h.alloc(1, "float32", (2,)).handle
    c = h.launch(1, k.kernel_id, {"alpha": Scalar(1.0), "x": x, "y": y})  # never started
    h.stop()
    assert c.wait(1).status == "PXOS_S_CANCELLED"


@pytest.mark.parametrize("resident", [True, False])
def test_write_from_lets_the_caller_gather_straight_into_the_buffer(resident):
    h = Hypervisor(backend="numpy", device_pool_bytes=64 if not resident else 1 << 20,
                   host_budget_bytes=0 if resident else 1 << 20).start()
    try:
        h.register_vm(1, 10, 50)
        if not resident:
            h.alloc(1, "float32", (16,))  # fills the 64-byte pool: the next buffer lives in host RAM
        b = h.alloc(1, "float32", (8,))
        assert b.residency == ("device" if resident else "host")
        src = np.arange(8, dtype=np.float32).tobytes()
        calls = []

        def fill(view):
            calls.append(len(view))
            view[:] = src[4:20]

        assert h.write_from(1, b.handle, 4, 16, fill) == 16
        assert calls == [16]
        got = np.frombuffer(h.read(1, b.handle), np.float32)
        np.testing.assert_array_equal(got, np.array([0, 1, 2, 3, 4, 0, 0, 0], np.float32))
        with pytest.raises(E.InvalidArgument, match="outside"):
            h.write_from(1, b.handle, 30, 4, fill)
        assert h.vm_usage(1) == (10_000_000, h.vm_info(1).memory_used, 50, None)
    finally:
        h.stop()
