"""The lean launch path (issue 14): launch plans cached per kernel and bindings, the
lighter Completion, and short launches run whole. Each keeps what the full path did: the
same typed errors for bad bindings, no buffer kept alive, exact results and counts."""

from __future__ import annotations

import gc
import threading

import numpy as np
import pytest

from hypervisor import Hypervisor, launch_plan
from hypervisor import errors as E
from hypervisor.dispatch import UNSTEPPED_MAX_S
from hypervisor.memory import Buffer
from hypervisor.records import BIND_CACHE_SIZE
from hypervisor.types import Completion, LaunchResult, Scalar

WAIT_S = 60
ADD = """GPU_KERNEL add
GPU_PARAM a float[64]
GPU_PARAM b float[64]
GPU_PARAM c float[64]
GPU_THREAD_CODE:
    ADD a b -> c
GPU_END
"""
SCALE = """GPU_KERNEL scale
GPU_PARAM a float[64]
GPU_PARAM s float
GPU_PARAM c float[64]
GPU_THREAD_CODE:
    MUL a s -> c
GPU_END
"""


@pytest.fixture
def hv():
    h = Hypervisor(backend="numpy").start()
    h.register_vm(1, 16, 50)
    yield h
    h.stop()


def _buf(hv, value, n=64):
    h = hv.alloc(1, "float32", (n,)).handle
    hv.write(1, h, 0, np.full(n, value, np.float32).tobytes())
    return h


def _out(hv, h):
    return np.frombuffer(hv.read(1, h), np.float32)


def test_a_plan_is_reused_and_gives_the_same_results(hv):
    (k,) = hv.compile(1, ADD)
    h = {"a": _buf(hv, 1), "b": _buf(hv, 2), "c": _buf(hv, 0)}
    for i in range(3):
        assert hv.launch(1, k.kernel_id, h).wait(WAIT_S).ok
        hv.write(1, h["a"], 0, np.full(64, i + 2, np.float32).tobytes())
    assert len(hv._vms[1].plans) == 1
    assert np.array_equal(_out(hv, h["c"]), np.full(64, 5, np.float32))  # a = 3 on the third launch
    assert hv.stats(1).launches_total == 3


def test_a_freed_buffer_fails_a_cached_plan_with_not_found(hv):
    (k,) = hv.compile(1, ADD)
    h = {"a": _buf(hv, 1), "b": _buf(hv, 2), "c": _buf(hv, 0)}
    assert hv.launch(1, k.kernel_id, h).wait(WAIT_S).ok
    hv.free(1, h["b"])
    with pytest.raises(E.NotFound):
        hv.launch(1, k.kernel_id, h)
    assert hv.stats(1).inflight == 0


def test_a_plan_keeps_no_buffer_alive(hv):
    (k,) = hv.compile(1, ADD)
    h = {"a": _buf(hv, 1), "b": _buf(hv, 2), "c": _buf(hv, 0)}
    assert hv.launch(1, k.kernel_id, h).wait(WAIT_S).ok
    (plan,) = hv._vms[1].plans.values()
    held = gc.get_referents(plan) + [x for part in plan.buffers for x in part]
    assert not any(isinstance(x, Buffer | np.ndarray) for x in held)  # handles and specs only
    assert sorted(h for _, h, _, _ in plan.buffers) == sorted(h.values())


def test_a_bool_is_no_handle_even_where_a_plan_for_that_number_exists(hv):
    (k,) = hv.compile(1, ADD)
    h = {"a": _buf(hv, 1), "b": _buf(hv, 2), "c": _buf(hv, 0)}
    assert h["a"] == 1  # a fresh host's first handle: True == 1 as a dict key
    assert hv.launch(1, k.kernel_id, h).wait(WAIT_S).ok
    with pytest.raises(E.InvalidArgument, match="buffer handle or a Scalar"):
        hv.launch(1, k.kernel_id, dict(h, a=True))


def test_an_output_bound_twice_is_refused_with_or_without_a_plan(hv):
    (k,) = hv.compile(1, ADD)
    a, c = _buf(hv, 1), _buf(hv, 0)
    for _ in range(2):
        with pytest.raises(E.BindError, match="an output must have a buffer of its own"):
            hv.launch(1, k.kernel_id, {"a": a, "b": c, "c": c})
    assert hv.launch(1, k.kernel_id, {"a": a, "b": a, "c": c}).wait(WAIT_S).ok  # inputs may share
    assert hv.launch(1, k.kernel_id, {"a": a, "b": a, "c": c}).wait(WAIT_S).ok
    assert np.array_equal(_out(hv, c), np.full(64, 2, np.float32))


def test_scalars_are_part_of_the_plan_key(hv):
    (k,) = hv.compile(1, SCALE)
    a, c = _buf(hv, 3), _buf(hv, 0)
    for s in (2.0, 5.0, 2.0):
        assert hv.launch(1, k.kernel_id, {"a": a, "s": Scalar(s), "c": c}).wait(WAIT_S).ok
        assert np.array_equal(_out(hv, c), np.full(64, 3 * s, np.float32))
    with pytest.raises(E.BindError, match="must be a number"):
        hv.launch(1, k.kernel_id, {"a": a, "s": Scalar(True), "c": c})


def test_a_buffer_of_another_shape_under_the_same_name_rebinds(hv):
    (k,) = hv.compile(1, ADD)
    h = {"a": _buf(hv, 1), "b": _buf(hv, 2), "c": _buf(hv, 0)}
    assert hv.launch(1, k.kernel_id, h).wait(WAIT_S).ok
    with pytest.raises(E.BindError):
        hv.launch(1, k.kernel_id, dict(h, a=_buf(hv, 1, n=32)))


def test_plans_are_bounded_and_hold_no_bound_kernel(hv, monkeypatch):
    monkeypatch.setattr(launch_plan, "PLANS_PER_VM", 4)
    src = ADD.replace("float[64]", "float[]")  # any length: one bound kernel per length
    (k,) = hv.compile(1, src)
    rec = hv._vms[1].kernels[k.kernel_id]
    for n in range(1, BIND_CACHE_SIZE + 4):
        h = {"a": _buf(hv, 1, n), "b": _buf(hv, 2, n), "c": _buf(hv, 0, n)}
        assert hv.launch(1, k.kernel_id, h).wait(WAIT_S).ok
        assert len(hv._vms[1].plans) <= 4 and len(rec.bound) <= BIND_CACHE_SIZE
    gc.collect()
    live = [p.bound_ref() for p in hv._vms[1].plans.values()]
    assert all(b is None or any(b is c for c in rec.bound.values()) for b in live)


def test_a_plan_whose_bound_kernel_went_is_made_again(hv):
    src = ADD.replace("float[64]", "float[]")
    (k,) = hv.compile(1, src)
    first = {"a": _buf(hv, 1, 1), "b": _buf(hv, 2, 1), "c": _buf(hv, 0, 1)}
    assert hv.launch(1, k.kernel_id, first).wait(WAIT_S).ok
    (key,) = hv._vms[1].plans
    for n in range(2, BIND_CACHE_SIZE + 3):  # the bind cache lets the first bound kernel go
        h = {"a": _buf(hv, 1, n), "b": _buf(hv, 2, n), "c": _buf(hv, 0, n)}
        assert hv.launch(1, k.kernel_id, h).wait(WAIT_S).ok
    gc.collect()
    assert hv._vms[1].plans[key].bound_ref() is None
    hv.write(1, first["a"], 0, np.full(1, 5, np.float32).tobytes())
    assert hv.launch(1, k.kernel_id, first).wait(WAIT_S).ok
    assert hv._vms[1].plans[key].bound_ref() is not None
    assert np.array_equal(_out(hv, first["c"]), np.full(1, 7, np.float32))


def test_a_reset_drops_the_plans(hv):
    (k,) = hv.compile(1, ADD)
    h = {"a": _buf(hv, 1), "b": _buf(hv, 2), "c": _buf(hv, 0)}
    assert hv.launch(1, k.kernel_id, h).wait(WAIT_S).ok
    hv.reset_vm(1)
    assert hv._vms[1].plans == {}
    with pytest.raises(E.NotFound):
        hv.launch(1, k.kernel_id, h)


def test_completion_waiters_callbacks_and_timeouts():
    c = Completion(7, 1, 0)
    assert not c.done()
    with pytest.raises(TimeoutError):
        c.wait(0.01)
    with pytest.raises(TimeoutError):
        c.wait(-1)  # a negative timeout does not wait
    seen, got = [], []
    c.add_done_callback(seen.append)
    waiters = [threading.Thread(target=lambda: got.append(c.wait(WAIT_S))) for _ in range(3)]
    for t in waiters:
        t.start()
    res = LaunchResult(7, 1, "PXOS_S_OK", None, 1, 2, 3, "BATCH", "k")
    assert c._finish(res) == [seen.append]
    for t in waiters:
        t.join(WAIT_S)
    assert got == [res] * 3 and c.done() and c.wait(0) is res
    c.add_done_callback(seen.append)  # after the result: called at once
    assert seen == [c]
    assert c._finish(res) == []  # a second finish releases nothing twice


def test_short_launches_run_whole_and_long_ones_in_steps(hv):
    (k,) = hv.compile(1, ADD)
    (k2,) = hv.compile(1, ADD.replace("GPU_KERNEL add", "GPU_KERNEL add2").replace(
        "    ADD a b -> c\n", "    ADD a b -> t\n    ADD t b -> c\n"))
    h = {"a": _buf(hv, 1), "b": _buf(hv, 2), "c": _buf(hv, 0)}
    seen = []
    hv.dispatcher.before_run.append(seen.append)
    assert hv.launch(1, k.kernel_id, h).wait(WAIT_S).ok
    job = seen[-1]
    assert job.est_seconds <= UNSTEPPED_MAX_S and job.steps is None and job.pending is not None
    hv.dispatcher.time_slice_s = 1e-9  # a slice shorter than any launch
    assert hv.launch(1, k2.kernel_id, h).wait(WAIT_S).ok
    assert seen[-1].steps is not None  # two ops: a step boundary between them
    # One op, not tiled now (no more urgent VM about): no boundary inside it, so it runs whole.
    assert hv.launch(1, k.kernel_id, h).wait(WAIT_S).ok
    assert seen[-1].steps is None
    assert np.array_equal(_out(hv, h["c"]), np.full(64, 3, np.float32))


def test_a_one_op_launch_steps_while_a_more_urgent_vm_is_about(hv, monkeypatch):
    from hypervisor import preemption

    monkeypatch.setattr(preemption, "URGENT_RECENT_S", 3600.0)  # "lately": not a timed condition here
    hv.register_vm(2, 16, 50, default_class="INTERACTIVE")
    hv.set_quota(1, default_class="BATCH")
    (k,) = hv.compile(1, ADD)
    (k2,) = hv.compile(2, ADD)
    h = {"a": _buf(hv, 1), "b": _buf(hv, 2), "c": _buf(hv, 0)}
    h2 = {n: hv.alloc(2, "float32", (64,)).handle for n in "abc"}
    hv.dispatcher.time_slice_s = 1e-9
    seen = []
    hv.dispatcher.before_run.append(seen.append)
    assert hv.launch(2, k2.kernel_id, h2).wait(WAIT_S).ok  # an INTERACTIVE VM ran
    assert hv.launch(1, k.kernel_id, h).wait(WAIT_S).ok
    assert seen[-1].vm_id == 1 and seen[-1].steps is not None  # its op may be tiled: stepped


COMPILED = """GPU_KERNEL mix
GPU_PARAM x float[8, 16]
GPU_PARAM w float[16, 16]
GPU_PARAM acc float[8, 16]
GPU_PARAM rows float[8]
GPU_PARAM p float[8, 16]
GPU_PARAM s float
GPU_THREAD_CODE:
    REPEAT 3:
        LINEAR x w -> h
        MUL h 0.5 -> h
        SUB 1.0 h -> g
        ADD acc g -> acc
        REPEAT 2:
            TANH acc -> acc
        END_REPEAT
    END_REPEAT
    MUL acc s -> acc
    SOFTMAX acc -> p
    REDUCE_SUM p axis=1 -> rows
GPU_END
"""


def _specs_and_data(source):
    import primitive_lang

    ck = primitive_lang.compile_source(source).kernels[0]
    specs = ck.declared_specs()
    rng = np.random.default_rng(1)
    data = {n: rng.standard_normal(sp.shape).astype(sp.dtype.value) for n, sp in specs.items()}
    return ck.bind(specs), data


INTO = """GPU_KERNEL into
GPU_PARAM x float[96, 80]
GPU_PARAM w float[80, 72]
GPU_PARAM y float[96, 72]
GPU_PARAM d float[96, 80]
GPU_PARAM e float[96, 80]
GPU_PARAM f float[96, 80]
GPU_PARAM s float
GPU_THREAD_CODE:
    PARALLEL_MATMUL x w -> y
    SUB 1.0 x -> d
    MUL x s -> e
    TANH d -> f
GPU_END
"""


@pytest.mark.parametrize("source", [COMPILED, INTO], ids=["locals", "into-params"])
def test_a_compiled_program_is_bit_identical_to_the_interpreter(source):
    from hypervisor.executor.base import HostScalar
    from hypervisor.executor.interpret import Interpreter, _compiled_into, _plan, run_bound

    bound, data = _specs_and_data(source)
    assert _plan(bound).program is not None
    if source is INTO:  # each statement computed straight into its param
        params = {p.name for p in bound.kernel.params}
        assert all(_compiled_into(st, params, bound.shapes) is not None for st in bound.kernel.ast.body)
    envs = []
    for run in (lambda env: Interpreter(np, bound, env).run(), lambda env: run_bound(np, bound, env)):
        env = {n: x.copy() for n, x in data.items()}
        env["s"] = HostScalar(0.75, np.asarray(0.75, np.float32))
        run(env)
        envs.append(env)
    for name in data:
        if name != "s":
            assert envs[0][name].tobytes() == envs[1][name].tobytes(), name


def test_kernels_with_views_or_runtime_indices_are_not_compiled():
    from hypervisor.executor.interpret import _plan

    for body in ("    RESHAPE a shape=[4, 4] -> t\n    COPY t -> b\n", "    SLICE a axis=0 start=2 size=4 -> b\n"):
        src = f"GPU_KERNEL k\nGPU_PARAM a float[16]\nGPU_PARAM b float[]\nGPU_THREAD_CODE:\n{body}GPU_END\n"
        import primitive_lang

        ck = primitive_lang.compile_source(src).kernels[0]
        from primitive_lang import TensorSpec
        from primitive_lang.ast import DType

        out = (4, 4) if "RESHAPE" in body else (4,)
        bound = ck.bind({"a": TensorSpec(DType.FLOAT32, (16,)), "b": TensorSpec(DType.FLOAT32, out)})
        assert _plan(bound).program is None
