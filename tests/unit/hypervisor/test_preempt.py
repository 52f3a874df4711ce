"""Preemption at op boundaries and tiling (issue 14, docs/scheduling.md "Preemption"):
a launch run as bounded steps yields between them to a more urgent launch of another VM,
resumes where it was, is charged exactly the time its own steps ran, keeps its VM's order,
and computes bit-identical results; ops longer than a slice are tiled, also bit-identically.
No timed assertions: the order of events is forced with the dispatcher's test hook and a
slice so short that every step is a slice of its own."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import primitive_lang
from hypervisor import Hypervisor, preemption
from hypervisor.executor import NumpyExecutor
from hypervisor.executor.interpret import Interpreter
from hypervisor.executor.tiling import MIN_TILE_ROWS, ROW_ALIGN, CostModel, Tiler, _aligned
from scheduler import FairScheduler, LaunchCost, Ticket, WorkloadClass

WAIT_S = 60  # generous: a loaded CI host must never time out a test that works


def _kernel(body: str, params: dict[str, tuple[int, ...]]) -> str:
    decl = "".join(f"GPU_PARAM {n} float[{', '.join(map(str, s))}]\n" for n, s in params.items())
    return f"GPU_KERNEL k\n{decl}GPU_THREAD_CODE:\n{body}GPU_END\n"


def _bind(source: str):
    ck = primitive_lang.compile_source(source).kernels[0]
    specs = ck.declared_specs()
    return ck.bind(specs), specs


def _inputs(specs, seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {n: (rng.standard_normal(s.shape) / np.sqrt(s.shape[-1])).astype(np.float32) for n, s in specs.items()}


def _run(source: str, tiler: Tiler | None):
    bound, specs = _bind(source)
    env = _inputs(specs)
    interp = Interpreter(np, bound, env)
    steps = sum(1 for _ in interp.steps(tiler))
    return env, steps


CASES = {
    "matmul": ("    PARALLEL_MATMUL a w -> c\n", {"a": (300, 200), "w": (200, 96), "c": (300, 96)}),
    "matmul_batched": ("    PARALLEL_MATMUL a w -> c\n", {"a": (3, 160, 64), "w": (3, 64, 80), "c": (3, 160, 80)}),
    "linear": ("    LINEAR a w -> c\n", {"a": (257, 128), "w": (64, 128), "c": (257, 64)}),
    "sum_last": ("    REDUCE_SUM a axis=-1 -> c\n", {"a": (400, 333), "c": (400,)}),
    "sum_first": ("    REDUCE_SUM a axis=0 -> c\n", {"a": (333, 400), "c": (400,)}),
    "max_mid": ("    REDUCE_MAX a axis=1 -> c\n", {"a": (40, 70, 50), "c": (40, 50)}),
    "mean_last": ("    REDUCE_MEAN a axis=-1 -> c\n", {"a": (64, 1000), "c": (64,)}),
    "tanh": ("    TANH a -> c\n", {"a": (400, 300), "c": (400, 300)}),
    "gelu_3d": ("    GELU a -> c\n", {"a": (50, 20, 30), "c": (50, 20, 30)}),
    "add_broadcast": ("    ADD a b -> c\n", {"a": (300, 64), "b": (64,), "c": (300, 64)}),
    "mul_literal": ("    MUL a 2.5 -> c\n", {"a": (300, 64), "c": (300, 64)}),
    "sub_rows": ("    SUB a b -> c\n", {"a": (300, 64), "b": (300, 64), "c": (300, 64)}),
    "softmax": ("    SOFTMAX a -> c\n", {"a": (200, 77), "c": (200, 77)}),
    "chain": ("    PARALLEL_MATMUL a w -> h\n    TANH h -> h\n    PARALLEL_MATMUL h w -> c\n",
              {"a": (256, 128), "w": (128, 128), "c": (256, 128)}),
}


@pytest.mark.parametrize("case", [c for c in CASES if CASES[c][1]])
def test_tiled_ops_are_bit_identical_to_whole_ops(case):
    body, params = CASES[case]
    source = _kernel(body, params)
    whole, n_whole = _run(source, None)
    tiler = Tiler(1e-9, CostModel())  # every tileable op is split as finely as allowed
    tiled, n_tiled = _run(source, tiler)
    assert tiler.tiled_ops >= 1 and tiler.tiles > tiler.tiled_ops
    assert n_tiled > n_whole  # the tiles were steps of their own
    for name in whole:
        assert np.array_equal(whole[name], tiled[name]), name


def test_argmax_tiled_along_a_kept_axis():
    source = ("GPU_KERNEL k\nGPU_PARAM a float[500, 64]\nGPU_PARAM c int[64]\nGPU_THREAD_CODE:\n"
              "    ARGMAX a axis=0 -> c\nGPU_END\n")
    ck = primitive_lang.compile_source(source).kernels[0]
    specs = ck.declared_specs()
    bound = ck.bind(specs)
    a = np.random.default_rng(1).standard_normal((500, 64)).astype(np.float32)
    outs = []
    for tiler in (None, Tiler(1e-9, CostModel())):
        env = {"a": a, "c": np.zeros(64, dtype=specs["c"].dtype.value)}
        for _ in Interpreter(np, bound, env).steps(tiler):
            pass
        outs.append(env["c"])
    assert np.array_equal(outs[0], outs[1])


def test_tiles_respect_the_minimum_and_the_slice():
    model = CostModel()
    tiler = Tiler(1e-9, model)
    assert tiler.parts("matmul", 1e12, 300 // MIN_TILE_ROWS) == 300 // MIN_TILE_ROWS
    assert Tiler(10.0, model).parts("matmul", 1e6, 100) == 1  # under the slice: one step
    model.observe("matmul", 1e9, 0.1)  # learns toward 1e10 flop/s
    assert 5e9 < model.rate["matmul"] < 1e10


@pytest.mark.parametrize("m, parts", [(800, 6), (800, 7), (803, 7), (70, 2), (100, 3), (1000, 31), (65, 2), (40, 2)])
def test_row_tiles_lie_on_aligned_edges(m, parts):
    tiles = _aligned(m, parts, ROW_ALIGN, MIN_TILE_ROWS)
    assert tiles[0][0] == 0 and tiles[-1][1] == m
    assert all(a1 == b0 for (_, a1), (b0, _) in zip(tiles[:-1], tiles[1:], strict=True))  # contiguous, in order
    assert 1 <= len(tiles) <= parts
    if m >= 2 * MIN_TILE_ROWS:
        assert all(r1 - r0 >= MIN_TILE_ROWS for r0, r1 in tiles)
        assert all(r0 % ROW_ALIGN == 0 for r0, _ in tiles)
        assert max(r1 - r0 for r0, r1 in tiles) <= m / parts + ROW_ALIGN + MIN_TILE_ROWS * (len(tiles) < parts)
    if m >= parts * (MIN_TILE_ROWS + ROW_ALIGN):
        assert len(tiles) == parts


def test_a_matmul_in_a_few_aligned_tiles_is_bit_identical():
    source = _kernel("    PARALLEL_MATMUL a w -> c\n", {"a": (803, 64), "w": (64, 48), "c": (803, 48)})
    whole, _ = _run(source, None)
    tiler = Tiler(1.0, CostModel(matmul_flops_per_s=2.0 * 803 * 64 * 48 / 6.5))  # estimated 6.5 slices
    tiled, _ = _run(source, tiler)
    assert tiler.tiles == 7
    assert np.array_equal(whole["c"], tiled["c"])


def test_steps_resume_where_they_stopped():
    ex = NumpyExecutor()
    source = _kernel("    REPEAT 20:\n        PARALLEL_MATMUL h w -> h\n    END_REPEAT\n    COPY h -> c\n",
                     {"h": (128, 128), "w": (128, 128), "c": (128, 128)})
    bound, specs = _bind(source)
    data = _inputs(specs, seed=3)
    direct = {n: x.copy() for n, x in data.items()}
    ex.run(bound, direct)
    args = {n: x.copy() for n, x in data.items()}
    steps = ex.start_steps(bound, args, (), slice_s=1e-9)
    advances = 1
    while not steps.advance(1e-9):
        advances += 1
    assert advances >= 21  # one step per advance: 20 products (tiled further) and a copy
    assert steps.timing().device_s > 0
    assert np.array_equal(args["c"], direct["c"])


# ---------------------------------------------------------------------------- scheduler
def _ticket(vm, lid, wclass, est=0.001):
    return Ticket(vm_id=vm, launch_id=lid, wclass=wclass, priority=50, cost=LaunchCost(1, 1, 1, 0),
                  est_seconds=est, enqueued_at=0.0, payload=(vm, lid))


def test_scheduler_preempts_for_a_more_urgent_head_within_its_share():
    s = FairScheduler(clock=lambda: 0.0)
    s.add_vm(1, 50)
    s.add_vm(2, 50)
    s.submit(_ticket(1, 1, WorkloadClass.BATCH))
    assert s.pick().vm_id == 1
    assert not s.preempts(1, WorkloadClass.BATCH, 0.0)  # nobody waits
    s.submit(_ticket(2, 1, WorkloadClass.BATCH))
    assert not s.preempts(1, WorkloadClass.BATCH, 0.0)  # same class: waits for the op's end
    s.submit(_ticket(2, 2, WorkloadClass.INTERACTIVE))  # behind VM 2's BATCH head: not its head
    assert not s.preempts(1, WorkloadClass.BATCH, 0.0)


def test_scheduler_preemption_follows_the_class_lag():
    s = FairScheduler(clock=lambda: 0.0)
    s.add_vm(1, 50)
    s.add_vm(2, 50)
    s.submit(_ticket(1, 1, WorkloadClass.BATCH))
    s.pick()
    s.submit(_ticket(2, 1, WorkloadClass.INTERACTIVE))
    assert s.preempts(1, WorkloadClass.BATCH, 0.0)
    assert not s.preempts(1, WorkloadClass.REALTIME, 0.0)  # not more urgent than the running one
    # VM 2 far ahead of its share (its virtual time 1 s beyond VM 1's): no preemption.
    s.charge(1, 0.0, started=0.0, ended=0.0)
    s._vms[2].vruntime += 1.0
    s._engine.place(s._vms[2], 0.0)
    s.submit(_ticket(1, 2, WorkloadClass.BATCH))
    assert s.pick().vm_id == 1  # VM 2 is over its share: VM 1 goes first despite its class
    assert not s.preempts(1, WorkloadClass.BATCH, 0.0)


def test_share_vm_preempts_a_share_zero_launch():
    s = FairScheduler(clock=lambda: 0.0)
    s.add_vm(1, 0)
    s.add_vm(2, 10)
    s.submit(_ticket(1, 1, WorkloadClass.REALTIME))
    s.pick()
    s.submit(_ticket(2, 1, WorkloadClass.BATCH))
    assert s.preempts(1, WorkloadClass.REALTIME, 0.0)


def test_a_parked_vm_is_not_picked_until_it_resumes():
    s = FairScheduler(clock=lambda: 0.0)
    s.add_vm(1, 50)
    s.add_vm(2, 50)
    for lid in (1, 2):
        s.submit(_ticket(1, lid, WorkloadClass.INTERACTIVE))
    assert s.pick().launch_id == 1
    s.park(1)
    s.submit(_ticket(2, 1, WorkloadClass.BATCH))
    assert s.pick().vm_id == 2  # VM 1's second launch waits behind its parked first one
    assert s.pick() is None
    s.unpark(1)
    t = s.pick()
    assert (t.vm_id, t.launch_id) == (1, 2)


# ---------------------------------------------------------------------------- dispatcher
LONG = _kernel("    REPEAT 12:\n        PARALLEL_MATMUL h w -> h\n    END_REPEAT\n    COPY h -> c\n",
               {"h": (256, 256), "w": (256, 256), "c": (256, 256)})
TINY = _kernel("    ADD a b -> c\n", {"a": (16,), "b": (16,), "c": (16,)})


def _install(hv, vm, source, seed):
    (k,) = hv.compile(vm, source)
    _, specs = _bind(source)
    data = _inputs(specs, seed)
    handles = {}
    for name, x in data.items():
        handles[name] = hv.alloc(vm, "float32", x.shape).handle
        hv.write(vm, handles[name], 0, x.tobytes())
    return k.kernel_id, handles, data


def gate_first_launch(hv, key):
    """Hold VM 1's first launch as it starts until ``queued`` is set (the test queues VM 2's
    urgent launch meanwhile); every job the dispatcher runs is recorded in ``jobs`` under
    ``key(job)``. Returns (jobs, started, queued)."""
    jobs, started, queued = {}, threading.Event(), threading.Event()

    def hook(job):
        jobs[key(job)] = job
        if job.vm_id == 1 and not started.is_set():
            started.set()
            assert queued.wait(WAIT_S)  # VM 2's launch is queued before VM 1's runs

    hv.dispatcher.before_run.append(hook)
    return jobs, started, queued


def test_urgent_launch_preempts_a_batch_launch_that_resumes_exactly(monkeypatch):
    monkeypatch.setattr(preemption, "URGENT_RECENT_S", 3600.0)  # "lately": not a timed condition here
    hv = Hypervisor(backend="numpy").start()
    hv.dispatcher.time_slice_s = 1e-9  # every step is a slice: a yield point after each
    try:
        hv.register_vm(1, 64, 50, default_class="BATCH")
        hv.register_vm(2, 64, 50, default_class="INTERACTIVE")
        k1, h1, data1 = _install(hv, 1, LONG, 1)
        k2, h2, _ = _install(hv, 2, TINY, 2)
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
    finally:
        hv.stop()
    job1, job2 = jobs[(1, first.launch_id)], jobs[(1, second.launch_id)]
    assert job1.yields >= 1 and hv.dispatcher.preemptions >= 1
    # Ops are tiled once a more urgent VM has run: the first launch's ops after it yielded
    # (the decision is taken op by op), the second launch's all.
    assert 1 <= job1.steps.tiler.tiled_ops < 13 and job2.steps.tiler.tiled_ops == 13  # 12 products, a COPY
    assert order.index((2, urgent.launch_id)) < order.index((1, first.launch_id))  # it went first
    assert order.index((1, first.launch_id)) < order.index((1, second.launch_id))  # VM order kept
    # Charged exactly the time its own steps ran (not the urgent launch's), once per launch.
    assert [s for v, s in charges if v == 1][0] == job1.steps.device_s
    assert results[0].device_ns == int(job1.steps.device_s * 1e9)
    assert len(charges) == 3
    # Bit-identical to the same two launches run straight on an executor.
    ex = NumpyExecutor()
    bound, _ = _bind(LONG)
    direct = {n: x.copy() for n, x in data1.items()}
    ex.run(bound, direct)
    ex.run(bound, direct)
    assert np.array_equal(out, direct["c"])


def test_a_launch_is_not_tiled_without_a_more_urgent_vm_about():
    hv = Hypervisor(backend="numpy").start()
    hv.dispatcher.time_slice_s = 1e-9
    try:
        hv.register_vm(1, 64, 50, default_class="BATCH")
        hv.register_vm(2, 64, 50, default_class="BATCH")  # another VM, not more urgent
        k1, h1, _ = _install(hv, 1, LONG, 1)
        k2, h2, _ = _install(hv, 2, LONG, 2)
        seen = []
        hv.dispatcher.before_run.append(seen.append)
        for c in [hv.launch(1, k1, h1), hv.launch(2, k2, h2), hv.launch(1, k1, h1)]:
            assert c.wait(WAIT_S).ok
    finally:
        hv.stop()
    assert len(seen) == 3 and all(j.steps.tiler.tiled_ops == 0 for j in seen)


def test_preemption_off_runs_whole_launches():
    hv = Hypervisor(backend="numpy").start()
    hv.dispatcher.time_slice_s = 0
    try:
        hv.register_vm(1, 64, 50, default_class="BATCH")
        k1, h1, _ = _install(hv, 1, LONG, 1)
        seen = []
        hv.dispatcher.before_run.append(seen.append)
        assert hv.launch(1, k1, h1).wait(WAIT_S).ok
    finally:
        hv.stop()
    assert seen[0].steps is None and seen[0].pending is not None


def test_time_slice_is_configured():
    import tomllib

    from hypervisor.config import DEFAULT_CONFIG_TOML, parse_config
    from hypervisor.errors import ConfigError, InvalidArgument

    assert parse_config(tomllib.loads(DEFAULT_CONFIG_TOML)).scheduler.time_slice_ms == 1.0
    assert parse_config({"scheduler": {"time_slice_ms": 0}}).scheduler.time_slice_ms == 0
    with pytest.raises(ConfigError):
        parse_config({"scheduler": {"time_slice_ms": -1}})
    hv = Hypervisor(backend="numpy", time_slice_s=0.002)
    assert hv.dispatcher.time_slice_s == 0.002
    hv.stop()
    with pytest.raises(InvalidArgument):
        Hypervisor(backend="numpy", time_slice_s=5)


SQUARE_ADD = _kernel("    ADD a b -> c\n", {"a": (256, 256), "b": (256, 256), "c": (256, 256)})


def test_a_launch_that_needs_the_parked_launchs_memory_finishes_it_first(monkeypatch):
    # The pool holds VM 1's working set and its temporaries, not VM 2's beside it: VM 2's
    # urgent launch, picked while VM 1's launch is parked, cannot be made resident until the
    # parked launch ends. The dispatcher finishes the parked one (no more yields), then VM 2's.
    kib = 256 * 1024
    hv = Hypervisor(backend="numpy", device_pool_bytes=5 * kib, host_budget_bytes=64 * kib).start()
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
    assert jobs[1].yields >= 1 and jobs[1].no_yield  # it yielded, then was finished first
    assert order == [1, 2]
    ex = NumpyExecutor()
    bound, _ = _bind(LONG)
    direct = {n: x.copy() for n, x in data1.items()}
    ex.run(bound, direct)
    assert np.array_equal(out1, direct["c"])
    assert np.array_equal(out2, data2["a"] + data2["b"])


def test_park_and_preempts_ignore_a_vm_that_left():
    s = FairScheduler(clock=lambda: 0.0)
    s.add_vm(1, 50)
    s.remove_vm(1)
    assert not s.preempts(1, WorkloadClass.BATCH, 0.0)
    assert s.park(1) is False
    s.unpark(1)  # nothing to do, no error


def test_an_arrival_interrupts_a_slice_at_the_next_step():
    # A 60 s slice: without the interrupt the BATCH launch would run its 13 steps in one
    # slice and never look. VM 2's launch arriving makes it look at the next step boundary.
    hv = Hypervisor(backend="numpy").start()
    hv.dispatcher.time_slice_s = 60.0
    try:
        hv.register_vm(1, 64, 50, default_class="BATCH")
        hv.register_vm(2, 64, 50, default_class="INTERACTIVE")
        k1, h1, _ = _install(hv, 1, LONG, 1)
        k2, h2, _ = _install(hv, 2, TINY, 2)
        order = []
        jobs, started, queued = gate_first_launch(hv, key=lambda j: j.vm_id)
        first = hv.launch(1, k1, h1)
        first.add_done_callback(lambda c: order.append(1))
        assert started.wait(WAIT_S)
        urgent = hv.launch(2, k2, h2)
        urgent.add_done_callback(lambda c: order.append(2))
        queued.set()
        assert first.wait(WAIT_S).ok and urgent.wait(WAIT_S).ok
    finally:
        hv.stop()
    assert jobs[1].yields >= 1 and order == [2, 1]
