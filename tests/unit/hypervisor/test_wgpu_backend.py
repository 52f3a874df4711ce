"""What is particular to the wgpu executor (its op results are checked by the shared suites:
executors.EXECUTORS): adapter choice, timing sources, the pipeline cache, transfers at odd
offsets, float16, the typed refusal of 64-bit dtypes, buffers larger than a binding."""

from __future__ import annotations

import time

import numpy as np
import pytest
from executors import Out, Scalar, run, source_for

from hypervisor.errors import OutOfDeviceMemory, UnsupportedDtype
from hypervisor.executor import NumpyExecutor, make_executor
from primitive_lang import TensorSpec, compile_source
from primitive_lang.ast import DType

pytestmark = pytest.mark.wgpu


@pytest.fixture
def ex():
    from hypervisor.executor.wgpu_backend import WgpuExecutor

    e = WgpuExecutor()
    yield e
    e.close()


def test_auto_takes_a_wgpu_adapter_only_when_it_is_a_gpu():
    from hypervisor.executor.cupy_backend import cupy_unavailable_reason
    from hypervisor.executor.wgpu_backend import request_adapter, wgpu_unavailable_reason

    if cupy_unavailable_reason() is None:
        pytest.skip("CuPy sees a GPU here: auto takes CuPy first")
    kind = str(request_adapter().info.get("adapter_type", "")).lower()
    ex = make_executor("auto")
    try:
        if kind == "cpu":  # lavapipe: a CPU driver is no reason to leave NumPy
            assert isinstance(ex, NumpyExecutor)
            assert "not a GPU" in wgpu_unavailable_reason(require_gpu=True)
        else:
            assert ex.name == "wgpu"
    finally:
        ex.close()


def test_info_names_the_adapter(ex):
    a, info = ex.adapter(), ex.info()
    assert info.backend == "wgpu" and info.device_name == a["name"] and info.api == a["backend"]
    assert a["backend"] in ("Vulkan", "Metal", "D3D12") and info.time_source == ex.time_source


@pytest.mark.parametrize("timestamps", [True, False])
def test_device_time_from_timestamps_or_the_host_clock(timestamps):
    from hypervisor.executor.wgpu_backend import WgpuExecutor

    ex = WgpuExecutor(timestamps=timestamps)
    try:
        if timestamps and not ex.timestamps:
            pytest.skip("this adapter has no timestamp queries")
        assert ex.time_source == ("timestamp-query" if timestamps else "host-clock")
        a = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
        values = {"a": a, "c": Out("float32", (64, 64))}
        k = compile_source(source_for("PARALLEL_MATMUL a a -> c", values)).kernels[0]
        specs = {"a": TensorSpec(DType.FLOAT32, (64, 64)), "c": TensorSpec(DType.FLOAT32, (64, 64))}
        args = {n: ex.empty(s) for n, s in specs.items()}
        ex.write(args["a"], 0, [a.tobytes()])
        t_submit = time.perf_counter()
        pending = ex.submit(k.bind(specs), args)  # asynchronous: returns before the device is done
        timing = pending.wait()
        assert pending.done() and 0 < timing.device_s < 60
        # either source: never more than the wall time from submit to the end of wait (timestamp
        # ticks converted with the queue's period)
        assert timing.device_s <= time.perf_counter() - t_submit
        np.testing.assert_allclose(ex.to_host(args["c"]), a @ a, rtol=1e-4, atol=1e-4)
    finally:
        ex.close()


def test_pipelines_are_compiled_once_per_shape_class(ex):
    x = np.arange(12, dtype=np.float32)
    run(ex, source_for("EXP x -> c", {"x": x, "c": Out("float32", (12,))}), {"x": x, "c": Out("float32", (12,))})
    before = ex.rt.compiles
    for n in (5, 300, 7000):  # other sizes, the same class (contiguous, one dim after collapsing)
        y = np.linspace(-1, 1, n, dtype=np.float32)
        got = run(ex, source_for("EXP x -> c", {"x": y, "c": Out("float32", (n,))}), {"x": y, "c": Out("float32", (n,))})
        np.testing.assert_allclose(got["c"], np.exp(y), rtol=1e-6)
    assert ex.rt.compiles == before


def test_writes_and_reads_at_odd_offsets_change_exactly_their_bytes(ex):
    arr = ex.zeros(TensorSpec(DType.INT32, (64,)))
    want = np.zeros(256, np.uint8)
    rng = np.random.default_rng(1)
    for off, n in [(1, 3), (5, 9), (250, 6), (0, 256), (7, 1), (13, 100)]:
        data = rng.integers(0, 256, n, dtype=np.uint8)
        assert ex.write(arr, off, [memoryview(data[: n // 2]), data[n // 2:].tobytes()]) == n
        want[off: off + n] = data
        out = bytearray(n + 3)
        assert ex.read_into(arr, off, [memoryview(out)[: n // 2], memoryview(out)[n // 2: n]]) == n
        assert bytes(out[:n]) == want[off: off + n].tobytes()
    np.testing.assert_array_equal(ex.to_host(arr).view(np.uint8), want)
    ex.fill(arr, 3, 10, lambda view: view.__setitem__(slice(None), bytes(range(10))))
    want[3:13] = np.arange(10)
    np.testing.assert_array_equal(ex.to_host(arr).view(np.uint8), want)


def test_float16_where_the_adapter_has_it(ex):
    if not ex.rt.has_f16:
        with pytest.raises(UnsupportedDtype, match="float16"):
            ex.zeros(TensorSpec(DType.FLOAT16, (4,)))
        return
    x = np.linspace(-3, 3, 37, dtype=np.float16)
    values = {"x": x, "c": Out("float16", (37,)), "d": Out("float16", (37,))}
    got = run(ex, source_for("GELU x -> c\nMUL x x -> d", values), values)
    assert got["c"].dtype == np.float16
    np.testing.assert_allclose(got["d"].astype(np.float64), (x.astype(np.float64) ** 2), rtol=2e-3, atol=2e-3)


def test_64_bit_tensors_are_refused_but_64_bit_scalars_are_host_values(ex):
    for dt in (DType.FLOAT64, DType.INT64):
        with pytest.raises(UnsupportedDtype, match=dt.value) as ei:
            ex.empty(TensorSpec(dt, (3,)))
        assert ei.value.status == "PXOS_S_INVALID"
    a = np.arange(10, dtype=np.float32)
    values = {"a": a, "p": Scalar(6, "int64"), "c": Out("float32", (3,))}
    got = run(ex, source_for("SLICE a axis=0 start=p size=3 -> c", values), values)
    np.testing.assert_array_equal(got["c"], a[6:9])
    values = {"a": a, "c": Out("float64", (10,))}  # a launch that needs a float64 tensor
    with pytest.raises(UnsupportedDtype):
        run(ex, source_for("CAST a dtype=float64 -> c", values), values)


def test_a_buffer_larger_than_one_binding_is_out_of_device_memory(ex):
    too_big = ex.rt.max_binding // 4 + 1
    with pytest.raises(OutOfDeviceMemory, match="max-storage-buffer-binding-size"):
        ex.empty(TensorSpec(DType.FLOAT32, (too_big,)))


def test_residency_copies_round_trip_in_order(ex):
    spec = TensorSpec(DType.FLOAT32, (1000,))
    dev = ex.device_empty(spec)
    host = ex.host_empty(4000)
    src = np.random.default_rng(2).standard_normal(1000).astype(np.float32)
    host[:] = src.view(np.uint8)
    f1 = ex.h2d_async(host, dev)
    back = ex.host_empty(4000)
    f2 = ex.d2h_async(dev, back)  # queued after the h2d copy: sees its result
    assert f2.wait() >= 0 and f1.done() and f2.done()
    np.testing.assert_array_equal(back.view(np.float32), src)


def test_an_elementwise_chain_is_one_dispatch_written_into_its_destination(ex):
    x = np.linspace(-2, 2, 50, dtype=np.float32)
    values = {"x": x, "c": Out("float32", (50,))}
    before = ex.rt.dispatches
    got = run(ex, source_for("MUL x 2.0 -> a\nADD a 1.0 -> b\nGELU b -> g\nSUB g x -> c", values), values)
    assert ex.rt.dispatches - before == 1
    b = x * np.float32(2) + np.float32(1)
    g = 0.5 * b * (1 + np.tanh(np.sqrt(2 / np.pi) * (b + 0.044715 * b**3)))
    np.testing.assert_allclose(got["c"], g - x, rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("stmts, expect", [
    # t is not computed when x is overwritten: it must still be the old x
    ("COPY x -> t\nADD x 1.0 -> x\nMUL t 3.0 -> c", lambda x: (x + 1, 3 * x)),
    # an in-place transpose reads x where it writes it, at other positions
    ("TRANSPOSE x -> x\nCOPY x -> c", lambda x: (x.T, x.T)),
    # a lazy value read after the param it reads was written twice
    ("NEG x -> n\nFILL 0.0 -> x\nADD x 2.0 -> x\nSUB n x -> c", lambda x: (np.full_like(x, 2), -x - 2)),
])
def test_lazy_values_are_computed_before_what_they_read_is_overwritten(ex, stmts, expect):
    x = np.arange(16, dtype=np.float32).reshape(4, 4) - 5
    values = {"x": x, "c": Out("float32", (4, 4))}
    got = run(ex, source_for(stmts, values), values)
    want_x, want_c = expect(x)
    np.testing.assert_allclose(got["x"], want_x, rtol=1e-6)
    np.testing.assert_allclose(got["c"], want_c, rtol=1e-6)


def test_a_batched_matmul_of_more_matrices_than_one_grid_holds(ex):
    a = np.random.default_rng(4).standard_normal((70000, 1, 2)).astype(np.float32)
    b = np.random.default_rng(5).standard_normal((2, 1)).astype(np.float32)
    values = {"a": a, "b": b, "c": Out("float32", (70000, 1, 1))}
    got = run(ex, source_for("PARALLEL_MATMUL a b -> c", values), values)
    np.testing.assert_allclose(got["c"], a @ b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_row_softmax_and_rmsnorm_follow_numpy_on_special_values(ex, dtype):
    from hypervisor.executor import array_ops

    if dtype == "float16" and not ex.rt.has_f16:
        pytest.skip("no shader-f16 on this adapter (refused: test_float16_where_the_adapter_has_it)")
    inf = np.inf
    a = np.array([[1, 2, 3, 4, 5], [-inf, -inf, -inf, -inf, -inf], [0, np.nan, 1, 2, 3],
                  [60, 50, -inf, 0, 61], [1e4, -1e4, 0, 0, 0]], dtype)
    x = np.linspace(-2, 2, 15, dtype=dtype).reshape(3, 5)
    w = np.linspace(0.5, 1.5, 5, dtype=dtype)
    values = {"a": a, "x": x, "w": w, "s": Out(dtype, (5, 5)), "r": Out(dtype, (3, 5))}
    got = run(ex, source_for("SOFTMAX a -> s\nRMSNORM x w eps=1e-5 -> r", values), values)
    with np.errstate(all="ignore"):
        want_s = array_ops.softmax(np, a, -1)
        want_r = array_ops.rmsnorm(np, x, w, 1e-5)
    tol = 2e-6 if dtype == "float32" else 2e-3
    np.testing.assert_allclose(got["s"], want_s, rtol=tol, atol=tol, equal_nan=True)
    np.testing.assert_allclose(got["r"], want_r, rtol=tol * 5, atol=tol * 5)


@pytest.mark.parametrize("m", [1, 3, 8, 9])
def test_matmuls_of_few_rows_take_the_row_kernel_and_agree(ex, m):
    rng = np.random.default_rng(m)
    x, w = rng.standard_normal((2, m, 300)).astype(np.float32), rng.standard_normal((1000, 300)).astype(np.float32)
    ints = rng.integers(-9, 9, (m, 40)).astype(np.int32), rng.integers(-9, 9, (40, 7)).astype(np.int32)
    values = {"x": x, "w": w, "i": ints[0], "j": ints[1], "c": Out("float32", (2, m, 1000)), "d": Out("int32", (m, 7))}
    got = run(ex, source_for("LINEAR x w -> c\nPARALLEL_MATMUL i j -> d", values), values)
    np.testing.assert_allclose(got["c"], x @ w.T, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(got["d"], ints[0] @ ints[1])


def test_the_pipeline_cache_is_bounded(ex, monkeypatch):
    import hypervisor.executor.wgpu_runtime as wa

    monkeypatch.setattr(wa, "MAX_PIPELINES", len(ex.rt.pipelines) + 2)
    x = np.linspace(0.5, 2, 8, dtype=np.float32)
    for k in range(5):  # five distinct chains: five shaders, the oldest evicted
        values = {"x": x, "c": Out("float32", (8,))}
        got = run(ex, source_for("EXP x -> a\n" + "ADD a x -> a\n" * (k + 1) + "COPY a -> c", values), values)
        np.testing.assert_allclose(got["c"], np.exp(x) + (k + 1) * x, rtol=1e-6)
    assert len(ex.rt.pipelines) == wa.MAX_PIPELINES


def test_the_hypervisor_pipelines_launches_on_the_host_clock_too():
    from hypervisor import Hypervisor
    from hypervisor.executor.wgpu_backend import WgpuExecutor
    from tests.support.programs import MATMUL

    hv = Hypervisor(backend=WgpuExecutor(timestamps=False), device_pool_bytes=16 << 20).start()
    try:
        hv.register_vm(1, 100, 50)
        (k,) = hv.compile(1, MATMUL)
        a, b, c = (hv.alloc(1, "float32", (16, 16)).handle for _ in range(3))
        x = np.arange(256, dtype=np.float32).reshape(16, 16)
        hv.write(1, a, 0, x.tobytes())
        hv.write(1, b, 0, np.eye(16, dtype=np.float32).tobytes())
        done = [hv.launch(1, k.kernel_id, {"a": a, "b": b, "c": c}) for _ in range(8)]
        results = [d.wait(60) for d in done]
        assert all(r.ok for r in results) and all(0 < r.device_ns <= r.total_ns for r in results)
        np.testing.assert_array_equal(np.frombuffer(hv.read(1, c), np.float32).reshape(16, 16), x)
        assert hv.stats(1).device_seconds_total > 0
    finally:
        hv.stop()


def test_casts_between_the_dtypes_it_holds(ex):
    """The conformance case casts through float64/int64 too (refused here): these are the rest."""
    if not ex.rt.has_f16:
        pytest.skip("no shader-f16 on this adapter")
    x = np.array([-2.75, -0.5, 0.0, 0.5, 3.999, 1e3, -7.5], np.float32)
    i = np.array([-3, 0, 7, 2**20 + 1, -(2**24) - 1], np.int32)
    h = x.astype(np.float16)
    values = {"x": x, "i": i, "h": h, "xi": Out("int32", (7,)), "xh": Out("float16", (7,)), "if_": Out("float32", (5,)),
              "ih": Out("float16", (5,)), "hi": Out("int32", (7,)), "hf": Out("float32", (7,))}
    src = ("CAST x dtype=int -> xi\nCAST x dtype=float16 -> xh\nCAST i dtype=float -> if_\n"
           "CAST i dtype=float16 -> ih\nCAST h dtype=int -> hi\nCAST h dtype=float -> hf")
    got = run(ex, source_for(src, values), values)
    np.testing.assert_array_equal(got["xi"], np.trunc(x).astype(np.int32))
    np.testing.assert_array_equal(got["xh"], x.astype(np.float16))
    np.testing.assert_array_equal(got["if_"], i.astype(np.float32))
    np.testing.assert_array_equal(got["ih"][:3], i[:3].astype(np.float16))  # the rest overflow float16
    np.testing.assert_array_equal(got["hi"], np.trunc(h.astype(np.float32)).astype(np.int32))
    np.testing.assert_array_equal(got["hf"], h.astype(np.float32))


def test_a_float16_scalar_param_is_rounded_as_numpy_holds_it(ex):
    if not ex.rt.has_f16:
        pytest.skip("no shader-f16 on this adapter")
    x = np.ones(4, np.float16)
    values = {"x": x, "s": Scalar(0.1, "float16"), "c": Out("float32", (4,))}
    got = run(ex, source_for("MUL x s -> h\nCAST h dtype=float -> c", values), values)
    np.testing.assert_array_equal(got["c"], np.full(4, np.float16(0.1), np.float32))


def test_a_long_launch_goes_in_several_submissions(ex, monkeypatch):
    import hypervisor.executor.wgpu_runtime as wr

    monkeypatch.setattr(wr, "SEGMENT_DISPATCHES", 3)
    x = np.ones((4, 4), np.float32)
    values = {"x": x, "c": Out("float32", (4, 4))}
    src = "COPY x -> a\nREPEAT 10:\n    PARALLEL_MATMUL a x -> a\n    MUL a 0.25 -> a\nEND_REPEAT\nCOPY a -> c"
    k = compile_source(source_for(src, values)).kernels[0]
    specs = {"x": TensorSpec(DType.FLOAT32, (4, 4)), "c": TensorSpec(DType.FLOAT32, (4, 4))}
    args = {n: ex.empty(s) for n, s in specs.items()}
    ex.write(args["x"], 0, [x.tobytes()])
    pending = ex.submit(k.bind(specs), args)
    assert len(pending.segments) > 3 and pending.wait().device_s > 0
    np.testing.assert_allclose(ex.to_host(args["c"]), x, rtol=1e-6)  # (4 * 0.25)^10 = 1


def test_the_public_bind_group_call_gives_the_same_results(ex, monkeypatch):
    from hypervisor.executor.wgpu_runtime import Runtime

    x = np.linspace(-1, 1, 300, dtype=np.float32).reshape(10, 30)
    values = {"x": x, "c": Out("float32", (10, 30)), "s": Out("float32", (10,))}
    src = "SOFTMAX x -> c\nREDUCE_SUM x axis=1 -> s"
    fast = run(ex, source_for(src, values), values)
    monkeypatch.setattr(Runtime, "_fast_bind", False)
    public = run(ex, source_for(src, values), values)
    for n in ("c", "s"):
        np.testing.assert_array_equal(fast[n], public[n])


def test_completions_are_learned_without_wgpu_pys_poll_thread(ex):
    """Launches, reads and residency copies map their readbacks with wgpu-native's calls and
    poll without blocking: wgpu-py's poll thread (whose blocking poll holds the lock every
    queue.submit needs until the device is idle) is never woken, and the submissions'
    fixed resources (readback, query set, meta arena) are reused, not made per launch."""
    assert ex.rt.native is not None, "wgpu-py's internals differ from the pinned version"
    poller = ex.rt.device._poller
    tokens = poller._token_count
    x = np.arange(64, dtype=np.float32)
    values = {"x": x, "c": Out("float32", (64,))}
    for _ in range(5):
        got = run(ex, source_for("MUL x 2 -> c", values), values)
        np.testing.assert_array_equal(got["c"], x * 2)
    host = np.zeros(64, np.float32)
    ex.h2d_async(x, ex.empty(TensorSpec(DType.FLOAT32, (64,)))).wait()
    dev = ex.empty(TensorSpec(DType.FLOAT32, (64,)))
    ex.write(dev, 0, [x.tobytes()])
    ex.d2h_async(dev, host).wait()
    np.testing.assert_array_equal(host, x)
    assert poller._token_count == tokens
    assert 1 <= len(ex.rt.slots) <= 2  # serial launches: one slot, back in the pool after each


def test_the_public_mapping_gives_the_same_results_and_times(ex):
    """Where wgpu-py's internals differ (rt.native None), the public map_async is used:
    same values, device time still measured."""
    x = np.linspace(-1, 1, 300, dtype=np.float32).reshape(10, 30)
    values = {"x": x, "c": Out("float32", (10, 30))}
    src = "SOFTMAX x -> c"
    fast = run(ex, source_for(src, values), values)
    ex.rt.native = None
    public = run(ex, source_for(src, values), values)
    np.testing.assert_array_equal(fast["c"], public["c"])
    k = compile_source(source_for(src, values)).kernels[0]
    specs = {"x": TensorSpec(DType.FLOAT32, (10, 30)), "c": TensorSpec(DType.FLOAT32, (10, 30))}
    assert ex.run(k.bind(specs), {n: ex.empty(s) for n, s in specs.items()}).device_s > 0


def test_a_submission_waited_twice_reports_the_same_time(ex):
    specs = {"x": TensorSpec(DType.FLOAT32, (8,)), "c": TensorSpec(DType.FLOAT32, (8,))}
    k = compile_source(source_for("EXP x -> c", {"x": np.ones(8, np.float32), "c": Out("float32", (8,))})).kernels[0]
    pending = ex.submit(k.bind(specs), {n: ex.empty(s) for n, s in specs.items()})
    seg = pending.segments[0]
    first = seg.wait()
    assert seg.done() and seg.wait() == first > 0


def test_a_dispatch_the_device_refuses_is_a_typed_error_at_submission(ex):
    """Pass commands go through wgpu-native's raw calls: their validation errors still
    surface, as wgpu's GPUValidationError when the segment is finished."""
    import wgpu

    rt = ex.rt
    buf = rt.storage(16)
    with pytest.raises(wgpu.GPUValidationError):
        rt.dispatch(("ew-bad",), lambda: "@group(0) @binding(0) var<storage, read_write> m: array<u32>;\n"
                    "@group(0) @binding(1) var<storage, read_write> o: array<u32>;\n"
                    "@compute @workgroup_size(1) fn main() { o[0] = m[0]; }\n",
                    [buf], [1], (70000, 1, 1))  # more workgroups than a dimension holds
        rt.flush()
    rt.submitted = []
    x = np.arange(4, dtype=np.float32)  # the runtime still works afterwards
    values = {"x": x, "c": Out("float32", (4,))}
    np.testing.assert_array_equal(run(ex, source_for("ADD x x -> c", values), values)["c"], x + x)


def test_a_statement_reading_its_destination_is_computed_in_place(ex):
    """ADD c y -> c: one dispatch straight into c (no temporary and copy), bit-identical to
    NumPy; a value a caller keeps (copy_into) is never spent, and a spent one raises."""
    from hypervisor.executor.wgpu_numpy import SPENT

    x, y = np.linspace(-2, 2, 64, dtype=np.float32), np.full(64, 0.3, np.float32)
    values = {"x": x, "y": y, "c": Out("float32", (64,))}
    src = "COPY x -> c\nADD c y -> c\nMUL c c -> c\nADD c c -> c"
    want = run(NumpyExecutor(), source_for(src, values), values)["c"]
    d0 = ex.rt.dispatches
    np.testing.assert_array_equal(run(ex, source_for(src, values), values)["c"], want)
    assert ex.rt.dispatches - d0 == 4, ex.rt.dispatches - d0  # one a statement (it was 7)
    xp = ex.xp
    z = xp.asarray(x)
    held = xp.add(z, xp.asarray(y))  # a lazy value this test keeps
    xp.copy_into(z, held)
    np.testing.assert_array_equal(held.get(), x + y)
    np.testing.assert_array_equal(z.get(), x + y)
    spent = xp.add(z, z)
    xp.copyto(z, spent)  # (the test keeps it, but holds fewer references than the interpreter)
    assert spent.host is SPENT
    with pytest.raises(TypeError):
        spent.get()


@pytest.mark.parametrize("m", [150, 5])  # the 64x64-tile shader, and the row kernel (m <= 8)
def test_a_matmul_tile_is_written_in_place_into_its_block_bit_identical(ex, m):
    # executor/tiling.py computes a tile straight into its block of the result: one dispatch,
    # the shader told the block's offset and strides, no temporary and copy.
    xp, rng = ex.xp, np.random.default_rng(m)
    a = xp.asarray(rng.standard_normal((3, m, 70)).astype(np.float32))
    b = xp.asarray(rng.standard_normal((3, 70, 200)).astype(np.float32))
    whole = ex.to_host(xp.matmul(a, b))
    out = xp.empty((3, m, 200), np.float32)
    rows = [(0, 64), (64, m)] if m > 64 else [(0, m)]
    for r0, r1 in rows:
        for c0, c1 in ((0, 64), (64, 128), (128, 200)):
            before = ex.rt.dispatches
            xp.matmul(a[..., r0:r1, :], b[..., :, c0:c1], out=out[..., r0:r1, c0:c1])
            assert ex.rt.dispatches - before == 1
    assert np.array_equal(ex.to_host(out), whole)


def test_a_matmul_into_a_block_it_cannot_write_goes_through_a_copy(ex):
    xp, rng = ex.xp, np.random.default_rng(1)
    a = xp.asarray(rng.standard_normal((40, 30)).astype(np.float32))
    b = xp.asarray(rng.standard_normal((30, 20)).astype(np.float32))
    want = ex.to_host(xp.matmul(a, b))
    out = xp.empty((20, 40), np.float32)
    before = ex.rt.dispatches
    xp.matmul(a, b, out=xp.transpose(out, (1, 0)))  # columns of unit stride: not a block the shader writes
    assert ex.rt.dispatches - before == 2
    assert np.array_equal(ex.to_host(out).T, want)
