"""Preemption at op boundaries on the asynchronous executors (issue 14; executor/stepping.py,
docs/scheduling.md "Preemption"): wgpu (lavapipe in CI) and CuPy (`gpu`, on a GPU host).
A launch runs as chunks of steps issued at most a slice ahead of the device; it yields
to a more urgent launch of another VM, resumes, is charged the device time of its own
chunks once, keeps its VM's order and computes bit-identical results. No timed
assertions: the order of events is forced with the dispatcher's test hook and a slice so
short that every step is a chunk of its own."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from test_preempt import CASES, LONG, TINY, WAIT_S, _bind, _inputs, _install, _kernel, gate_first_launch

from hypervisor import Hypervisor, preemption
from hypervisor.executor import make_executor
from hypervisor.executor import stepping as stepping_mod

BACKENDS = [pytest.param("wgpu", marks=pytest.mark.wgpu), pytest.param("cupy", marks=pytest.mark.gpu)]

# Matmuls, a softmax, a reduction along a kept axis and an elementwise op, repeated.
MIXED = """GPU_KERNEL mixed
GPU_PARAM h float[256, 256]
GPU_PARAM w float[256, 256]
GPU_PARAM c float[256, 256]
GPU_THREAD_CODE:
    REPEAT 4:
        PARALLEL_MATMUL h w -> h
        SOFTMAX h -> h
    END_REPEAT
    REDUCE_MAX h axis=1 -> m
    RESHAPE m shape=[256, 1] -> m2
    SUB h m2 -> h
    MUL h h -> c
GPU_END
"""


def _load(ex, data):
    out = {}
    for name, x in data.items():
        from primitive_lang import TensorSpec
        from primitive_lang.ast import DType

        out[name] = ex.empty(TensorSpec(DType("float32"), x.shape))
        ex.write(out[name], 0, [x.tobytes()])
    return out


def _executor(backend: str):
    if backend == "wgpu-hostclock":  # an adapter without timestamp queries: chunks timed on the host clock
        from hypervisor.executor.wgpu_backend import WgpuExecutor

        return WgpuExecutor(timestamps=False)
    return make_executor(backend)


@pytest.mark.parametrize("backend", [*BACKENDS, pytest.param("wgpu-hostclock", marks=pytest.mark.wgpu)])
@pytest.mark.parametrize("source", [LONG, MIXED], ids=["matmuls", "mixed"])
def test_stepped_launch_is_bit_identical_and_charged_its_chunks(backend, source, monkeypatch):
    ex = _executor(backend)
    try:
        bound, specs = _bind(source)
        data = _inputs(specs, 1)
        whole = _load(ex, data)
        ex.run(bound, whole)
        chunk_s, queue_max = [], [0]
        close = stepping_mod.DeviceSteps._close_open

        def spy_close(self):
            close(self)
            queue_max[0] = max(queue_max[0], len(self.queue))

        retire = stepping_mod.DeviceSteps._retire

        def spy_retire(self):
            before = self.device_s
            retire(self)
            chunk_s.append(self.device_s - before)

        monkeypatch.setattr(stepping_mod.DeviceSteps, "_close_open", spy_close)
        monkeypatch.setattr(stepping_mod.DeviceSteps, "_retire", spy_retire)
        args = _load(ex, data)
        steps = ex.start_steps(bound, args, (), 1e-9)  # every tileable op tiled as finely as allowed
        assert steps.steps_issued >= 1  # its first steps are on the device already
        advances = 0
        while not steps.advance(1e-9):
            advances += 1
        timing = steps.timing()
        assert steps.tiler.tiled_ops >= 4 and steps.tiler.tiles > steps.tiler.tiled_ops
        assert advances >= 1 and steps.chunks >= steps.steps_issued // 2
        # Never more than the running chunk and one behind it (the slice is below any step).
        assert queue_max[0] <= 2
        # Charged exactly the device time of its own chunks, each measured on the device.
        assert len(chunk_s) == steps.chunks and timing.device_s == pytest.approx(sum(chunk_s), abs=1e-12)
        assert timing.device_s > 0
        for name in data:
            assert np.array_equal(ex.to_host(args[name]), ex.to_host(whole[name])), name
    finally:
        ex.close()


@pytest.mark.parametrize("backend", [*BACKENDS, pytest.param("cupy-priority", marks=pytest.mark.gpu)])
def test_urgent_launch_preempts_a_stepped_launch_on_the_device(backend, monkeypatch):
    monkeypatch.setattr(preemption, "URGENT_RECENT_S", 3600.0)  # "lately": not a timed condition here
    priority = backend == "cupy-priority"  # the urgent launch on CuPy's priority stream
    backend = backend.removesuffix("-priority")
    hv = Hypervisor(backend=backend, gpu_stepping="on").start()
    if priority:
        hv.executor.priority_stream = True
    hv.dispatcher.time_slice_s = 1e-9  # every step a slice: a yield point after each
    try:
        hv.register_vm(1, 64, 50, default_class="BATCH")
        hv.register_vm(2, 64, 50, default_class="INTERACTIVE")
        k1, h1, data1 = _install(hv, 1, LONG, 1)
        k2, h2, data2 = _install(hv, 2, TINY, 2)
        order, charges = [], []
        jobs, started, queued = gate_first_launch(hv, key=lambda j: (j.vm_id, j.launch_id))
        charge = hv.scheduler.charge

        def spy(vm_id, seconds, *, started, ended):
            charges.append((vm_id, seconds))
            charge(vm_id, seconds, started=started, ended=ended)

        hv.scheduler.charge = spy
        first = hv.launch(1, k1, h1)
        second = hv.launch(1, k1, h1)  # same VM: must run after the first, whatever happens
        for c in (first, second):
            c.add_done_callback(lambda c: order.append((1, c.launch_id)))
        assert started.wait(WAIT_S)
        urgent = hv.launch(2, k2, h2)
        urgent.add_done_callback(lambda c: order.append((2, c.launch_id)))
        queued.set()
        results = [c.wait(WAIT_S) for c in (first, second, urgent)]
        assert all(r.ok for r in results), results
        out = np.frombuffer(hv.read(1, h1["c"]), dtype=np.float32).reshape(256, 256)
        out2 = np.frombuffer(hv.read(2, h2["c"]), dtype=np.float32)
    finally:
        hv.stop()
    job1, job2 = jobs[(1, first.launch_id)], jobs[(1, second.launch_id)]
    assert job1.steps is not None and job1.yields >= 1 and hv.dispatcher.preemptions >= 1
    assert job2.steps.tiler.tiled_ops == 12  # tiled once a more urgent VM has run
    assert (getattr(hv.executor, "_urgent", None) is not None) == priority
    assert order.index((2, urgent.launch_id)) < order.index((1, first.launch_id))  # it went first
    assert order.index((1, first.launch_id)) < order.index((1, second.launch_id))  # VM order kept
    # Charged once each, the device time of its own chunks (the urgent launch's not in it).
    assert len(charges) == 3
    assert [s for v, s in charges if v == 1][0] == job1.steps.device_s > 0
    assert results[0].device_ns == int(job1.steps.device_s * 1e9)
    # Bit-identical to the same two launches run whole, straight on an executor.
    ex = make_executor(backend)
    try:
        bound, _ = _bind(LONG)
        direct = _load(ex, data1)
        ex.run(bound, direct)
        ex.run(bound, direct)
        assert np.array_equal(out, ex.to_host(direct["c"]))
    finally:
        ex.close()
    assert np.array_equal(out2, data2["a"] + data2["b"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_failing_stepped_launch_reports_its_error(backend):
    src = """GPU_KERNEL g
GPU_PARAM t float[8, 4]
GPU_PARAM ids int32[2]
GPU_PARAM o float[2, 4]
GPU_THREAD_CODE:
    COPY t -> u
    GATHER u ids -> o
GPU_END
"""
    hv = Hypervisor(backend=backend, gpu_stepping="on").start()
    hv.dispatcher.time_slice_s = 1e-9
    try:
        hv.register_vm(1, 64, 50)
        (k,) = hv.compile(1, src)
        h = {n: hv.alloc(1, dt, shape).handle for n, dt, shape in
             (("t", "float32", (8, 4)), ("ids", "int32", (2,)), ("o", "float32", (2, 4)))}
        hv.write(1, h["ids"], 0, np.array([1, 99], np.int32).tobytes())
        seen = []
        hv.dispatcher.before_run.append(seen.append)
        res = hv.launch(1, k.kernel_id, h).wait(WAIT_S)
        assert not res.ok and res.status == "PXOS_S_RANGE", res
        hv.write(1, h["ids"], 0, np.array([1, 2], np.int32).tobytes())
        assert hv.launch(1, k.kernel_id, h).wait(WAIT_S).ok  # the VM goes on
    finally:
        hv.stop()
    assert seen[0].steps is not None


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
def test_tiled_ops_on_the_device_are_bit_identical_to_whole_ops(backend, case):
    body, params = CASES[case]
    source = _kernel(body, params)
    bound, specs = _bind(source)
    if any(spec.dtype.value in ("int64", "float64") for spec in specs.values()) and backend == "wgpu":
        pytest.skip("64-bit tensors: wgpu refuses them (UnsupportedDtype), tested elsewhere")
    ex = make_executor(backend)
    try:
        data = _inputs(specs, 5)
        whole = _load(ex, data)
        ex.run(bound, whole)
        args = _load(ex, data)
        steps = ex.start_steps(bound, args, (), 1e-9)  # tiles as fine as the device's row blocks allow
        while not steps.advance(1e-9):
            pass
        steps.timing()
        for name in data:
            assert np.array_equal(ex.to_host(args[name]), ex.to_host(whole[name])), name
    finally:
        ex.close()


# Matmul sizes of the benchmarks (bench_preempt's BATCH and INTERACTIVE kernels on an H100/
# H200, a decoder's projections): cuBLAS picks its kernel by shape, so whether a row tile
# computes exactly its rows of the whole product is checked here at each tile size, and
# every size that differs is named.
GPU_SHAPES = [(256, 256, 256), (1000, 1024, 4096), (2048, 2048, 2048), (4736, 4736, 4736), (4096, 576, 1536),
              (8192, 1024, 1024)]


@pytest.mark.gpu
def test_cupy_row_tiles_of_a_matmul_are_bit_identical():
    import cupy as cp

    from hypervisor.executor import cupy_backend

    rng = np.random.default_rng(0)
    bad = []
    for m, k, n in GPU_SHAPES:
        a = cp.asarray(rng.standard_normal((m, k), dtype=np.float32))
        b = cp.asarray((rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32))
        whole = cp.matmul(a, b)
        for rows in (cupy_backend.TILE_ROWS, 256, 512, 1024):
            if rows >= m:
                continue
            out = cp.empty_like(whole)
            for r0 in range(0, m, rows):
                cp.matmul(a[r0:r0 + rows], b, out=out[r0:r0 + rows])
            if not bool(cp.array_equal(out, whole)):
                bad.append(f"{m}x{k}x{n} in tiles of {rows} rows")
    assert not bad, "row tiles differ from the whole product: " + ", ".join(bad)


def test_gpu_stepping_is_configured():
    import tomllib

    from hypervisor.config import DEFAULT_CONFIG_TOML, parse_config
    from hypervisor.errors import ConfigError, InvalidArgument
    from hypervisor.executor.cupy_backend import CupyExecutor

    assert parse_config(tomllib.loads(DEFAULT_CONFIG_TOML)).scheduler.gpu_stepping == "auto"
    assert parse_config({"scheduler": {"gpu_stepping": "on"}}).scheduler.gpu_stepping == "on"
    with pytest.raises(ConfigError):
        parse_config({"scheduler": {"gpu_stepping": "sometimes"}})
    with pytest.raises(InvalidArgument):
        Hypervisor(backend="numpy", gpu_stepping="sometimes")
    # CuPy's stepping has not run on a GPU yet: off unless asked for.
    assert CupyExecutor.stepping_default is False


@pytest.mark.wgpu
@pytest.mark.parametrize("setting", ["auto", "off"])
def test_wgpu_steps_launches_unless_gpu_stepping_is_off(setting):
    hv = Hypervisor(backend="wgpu", gpu_stepping=setting).start()
    try:
        hv.register_vm(1, 64, 50, default_class="BATCH")
        k1, h1, _ = _install(hv, 1, LONG, 1)
        seen = []
        hv.dispatcher.before_run.append(seen.append)
        assert hv.launch(1, k1, h1).wait(WAIT_S).ok
    finally:
        hv.stop()
    assert (seen[0].steps is not None) == (setting == "auto")


@pytest.mark.wgpu
def test_a_device_failure_in_a_stepped_launch_fails_it_and_the_dispatcher_goes_on(monkeypatch):
    from hypervisor.executor import wgpu_backend

    hv = Hypervisor(backend="wgpu").start()
    try:
        hv.register_vm(1, 64, 50, default_class="BATCH")
        k1, h1, _ = _install(hv, 1, LONG, 1)
        wait = wgpu_backend._SegmentChunk.wait

        def lost(self):
            raise RuntimeError("device lost (injected)")

        monkeypatch.setattr(wgpu_backend._SegmentChunk, "wait", lost)
        res = hv.launch(1, k1, h1).wait(WAIT_S)
        assert not res.ok and "device lost" in str(res.error), res
        monkeypatch.setattr(wgpu_backend._SegmentChunk, "wait", wait)
        assert hv.dispatcher.alive()
        assert hv.launch(1, k1, h1).wait(WAIT_S).ok
    finally:
        hv.stop()


@pytest.mark.wgpu
def test_a_launch_that_needs_the_parked_launchs_memory_finishes_it_first_on_the_device():
    # As test_preempt's NumPy case, with the parked launch's chunks on the device: VM 2's
    # urgent launch cannot be made resident beside the parked launch; the dispatcher
    # finishes the parked one (its chunks issued and waited for, no more yields), then VM 2's.
    from test_preempt import SQUARE_ADD

    kib = 256 * 1024
    hv = Hypervisor(backend="wgpu", device_pool_bytes=5 * kib, host_budget_bytes=64 * kib).start()
    hv.dispatcher.time_slice_s = 1e-9
    try:
        hv.register_vm(1, 64, 50, default_class="BATCH")
        hv.register_vm(2, 64, 50, default_class="INTERACTIVE")
        k1, h1, data1 = _install(hv, 1, LONG, 1)
        k2, h2, data2 = _install(hv, 2, SQUARE_ADD, 2)
        order = []
        jobs, started, queued = gate_first_launch(hv, key=lambda j: j.vm_id)
        first = hv.launch(1, k1, h1)
        first.add_done_callback(lambda c: order.append(1))
        assert started.wait(WAIT_S)
        urgent = hv.launch(2, k2, h2)
        urgent.add_done_callback(lambda c: order.append(2))
        queued.set()
        r1, r2 = first.wait(WAIT_S), urgent.wait(WAIT_S)
        assert r1.ok and r2.ok, (r1, r2)
        out1 = np.frombuffer(hv.read(1, h1["c"]), dtype=np.float32).reshape(256, 256)
        out2 = np.frombuffer(hv.read(2, h2["c"]), dtype=np.float32).reshape(256, 256)
    finally:
        hv.stop()
    assert jobs[1].steps is not None and jobs[1].yields >= 1 and jobs[1].no_yield
    assert order == [1, 2]
    assert r1.device_ns == int(jobs[1].steps.device_s * 1e9) > 0
    ex = make_executor("wgpu")
    try:
        bound, _ = _bind(LONG)
        direct = _load(ex, data1)
        ex.run(bound, direct)
        assert np.array_equal(out1, ex.to_host(direct["c"]))
    finally:
        ex.close()
    assert np.array_equal(out2, data2["a"] + data2["b"])


@pytest.mark.wgpu
def test_the_serial_fast_path_runs_a_stepped_launch_on_the_callers_thread():
    hv = Hypervisor(backend="wgpu").start()
    hv.dispatcher.time_slice_s = 1e-9
    try:
        hv.register_vm(1, 64, 50)
        k1, h1, data1 = _install(hv, 1, LONG, 1)
        seen = []
        hv.dispatcher.before_run.append(lambda job: seen.append((job, threading.get_ident())))
        res = hv.launch_wait(1, k1, h1, timeout=WAIT_S)
        assert res.ok, res
        out = np.frombuffer(hv.read(1, h1["c"]), dtype=np.float32).reshape(256, 256)
    finally:
        hv.stop()
    job, thread = seen[0]
    assert thread == threading.get_ident() and job.steps is not None and job.steps.chunks >= 12
    assert res.device_ns == int(job.steps.device_s * 1e9) > 0
    ex = make_executor("wgpu")
    try:
        bound, _ = _bind(LONG)
        direct = _load(ex, data1)
        ex.run(bound, direct)
        assert np.array_equal(out, ex.to_host(direct["c"]))
    finally:
        ex.close()


@pytest.mark.wgpu
@pytest.mark.parametrize("body, params, blocks", [
    # rows 64 + 64 + 22 (a partial block of >= 9 rows: the same shader), columns 3 x 64 + 8
    ("    PARALLEL_MATMUL a w -> c\n", {"a": (150, 70), "w": (70, 200), "c": (150, 200)}, 3 * 4),
    ("    LINEAR a w -> c\n", {"a": (100, 48), "w": (160, 48), "c": (100, 160)}, 2 * 3),
    # rows 64 + 66 (a rest of 2 rows would go to the matvec shader: it stays in the last block), columns 64 + 64 + 1
    ("    PARALLEL_MATMUL a w -> c\n", {"a": (2, 130, 40), "w": (2, 40, 129), "c": (2, 130, 129)}, 2 * 3),
    # one row block (72 rows: a rest of 8 stays in it), a batch over a 2-D weight: columns 64 + 64 + 2
    ("    LINEAR a w -> c\n", {"a": (3, 72, 16), "w": (130, 16), "c": (3, 72, 130)}, 1 * 3),
    # rows 64 + 64 + 72 (a rest of 8), 7 columns: narrower than a block, not split
    ("    PARALLEL_MATMUL a w -> c\n", {"a": (200, 24), "w": (24, 7), "c": (200, 7)}, 3 * 1),
])
def test_wgpu_matmul_tiles_by_columns_once_rows_run_out_bit_identical(body, params, blocks):
    # A product of few 64-row blocks (a 5 ms one on lavapipe is ~150 rows: 2-3 ms a block)
    # is tiled by 64-column blocks as well (the shader's output tile): each element is the
    # same sum over K whatever the block, so the tiles are bit-identical to the whole op.
    bound, specs = _bind(_kernel(body, params))
    ex = make_executor("wgpu")
    ex.xp.TILE_COLS = 64  # the shader's block (lavapipe's default is a multiple: test below)
    try:
        data = _inputs(specs, 7)
        whole = _load(ex, data)
        ex.run(bound, whole)
        args = _load(ex, data)
        steps = ex.start_steps(bound, args, (), 1e-9)
        while not steps.advance(1e-9):
            pass
        steps.timing()
        assert steps.tiler.tiled_ops == 1 and steps.tiler.tiles == blocks
        for name in data:
            assert np.array_equal(ex.to_host(args[name]), ex.to_host(whole[name])), name
    finally:
        ex.close()


@pytest.mark.wgpu
def test_wgpu_column_tiles_are_as_wide_as_the_cpu_driver_runs_workgroups_at_once(monkeypatch):
    # A tile one workgroup wide would leave lavapipe's other threads idle (its steps then
    # cost the BATCH VM ~2x, docs/benchmarks.md): columns go in blocks of 64 x its threads.
    monkeypatch.setenv("LP_NUM_THREADS", "3")
    ex = make_executor("wgpu")
    try:
        if str(ex.rt.shared.adapter_info.get("adapter_type", "")).lower() == "cpu":  # lavapipe in CI
            assert ex.xp.TILE_COLS == 3 * 64
        else:
            assert ex.xp.TILE_COLS is None  # a GPU: rows only
    finally:
        ex.close()
