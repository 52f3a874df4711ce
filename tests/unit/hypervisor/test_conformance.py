"""The v2 ops on every executor (executors.EXECUTORS) against NumPy reference expressions
written here, independently of the interpreter: several shapes and dtypes, runtime indices
out of range, and aliasing (views, in-place stores, SLICE_WRITE into params and locals)."""

from __future__ import annotations

import numpy as np
import pytest
from executors import EXECUTORS, Out, Scalar, expect_refusal, make, run, source_for, unsupported

from hypervisor.errors import IndexOutOfRange, LaunchFailed

RNG = np.random.default_rng(2024)
FLOATS = ("float16", "float32", "float64")
INTS = ("int32", "int64")
TOL = {"float16": 2e-3, "float32": 2e-6, "float64": 1e-13}


def data(shape, dtype, positive=False):
    if np.dtype(dtype).kind == "i":
        return RNG.integers(-50, 50, size=shape).astype(dtype)
    x = RNG.standard_normal(shape)
    return (np.abs(x) + 0.5 if positive else x).astype(dtype)


# ---- reference expressions, each written out on its own ------------------------------------

def rope_ref(x, pos, axis, base):
    d = x.shape[-1]
    out = np.empty_like(x)
    xm, om = np.moveaxis(x, axis, 0), np.moveaxis(out, axis, 0)
    for t in range(xm.shape[0]):
        for i in range(d // 2):
            angle = np.float64(pos + t) * np.float64(base) ** (-2.0 * i / d)
            c, s = np.cos(angle).astype(x.dtype), np.sin(angle).astype(x.dtype)
            a, b = xm[t, ..., 2 * i], xm[t, ..., 2 * i + 1]
            om[t, ..., 2 * i] = a * c - b * s
            om[t, ..., 2 * i + 1] = a * s + b * c
    return out


def causal_ref(a, pos):
    out = a.copy()
    t_len, s_len = a.shape[-2:]
    for t in range(t_len):
        for s in range(s_len):
            if s > pos + t:
                out[..., t, s] = -np.inf
    return out


def rmsnorm_ref(x, w, eps):
    x64 = x.astype(np.float64)
    return x64 / np.sqrt((x64 * x64).mean(axis=-1, keepdims=True) + eps) * w.astype(np.float64)


# ---- cases: (statements, values, expected outputs, dtypes) ---------------------------------

CASES = {}


def case(*dtypes):
    def register(fn):
        CASES[fn.__name__] = (fn, dtypes)
        return fn
    return register


@case(*FLOATS, *INTS)
def gather_rows(dt):
    table, ids = data((7, 3), dt), np.array([[6, 0], [2, 2], [5, 1]], np.int32)
    return "GATHER table ids -> c", {"table": table, "ids": ids, "c": Out(dt, (3, 2, 3))}, {"c": table[ids]}


@case("float32", "int64")
def gather_scalar_rows_int64_ids(dt):
    table, ids = data((5,), dt), np.array([4, 0, 4, 3], np.int64)
    return "GATHER table ids -> c", {"table": table, "ids": ids, "c": Out(dt, (4,))}, {"c": table[ids]}


@case("float32", "int32")
def reshape_and_permute(dt):
    a = data((2, 3, 4), dt)
    src = "RESHAPE a shape=[6, -1] -> r\nPERMUTE r axes=[1, 0] -> c\nPERMUTE a axes=[2, -3, 1] -> d"
    return src, {"a": a, "c": Out(dt, (4, 6)), "d": Out(dt, (4, 2, 3))}, {
        "c": a.reshape(6, 4).T, "d": np.transpose(a, (2, 0, 1))}


@case("float16", "float64", "int32")
def slice_literal_and_param_start(dt):
    a = data((3, 10, 2), dt)
    src = "SLICE a axis=1 start=7 size=3 -> c\nSLICE a axis=-2 start=p size=4 -> d"
    return src, {"a": a, "p": Scalar(5, "int32"), "c": Out(dt, (3, 3, 2)), "d": Out(dt, (3, 4, 2))}, {
        "c": a[:, 7:10], "d": a[:, 5:9]}


@case("float32", "int64")
def slice_write_into_inout_param(dt):
    cache, new = data((2, 8, 3), dt), data((2, 3, 3), dt)
    expect = cache.copy()
    expect[:, 4:7] = new
    return "SLICE_WRITE new axis=1 start=p -> cache", {"cache": cache, "new": new, "p": Scalar(4, "int64")}, {
        "cache": expect, "new": new}


@case("float32")
def slice_write_at_the_last_position_and_at_zero(dt):
    cache, a, b = data((6, 2), dt), data((1, 2), dt), data((2, 2), dt)
    expect = cache.copy()
    expect[5:6] = a
    expect[0:2] = b
    src = "SLICE_WRITE a axis=0 start=p -> cache\nSLICE_WRITE b axis=0 start=0 -> cache"
    return src, {"cache": cache, "a": a, "b": b, "p": Scalar(5, "int32")}, {"cache": expect}


@case(*FLOATS, "int32")
def concat(dt):
    a, b = data((2, 3), dt), data((2, 5), dt)
    return "CONCAT a b axis=1 -> c\nCONCAT a a axis=0 -> d", {"a": a, "b": b, "c": Out(dt, (2, 8)),
                                                             "d": Out(dt, (4, 3))}, {
        "c": np.concatenate((a, b), axis=1), "d": np.concatenate((a, a), axis=0)}


@case("float32")
def cast_between_all_dtypes(dt):
    x = np.array([-2.75, -0.5, 0.0, 0.5, 1.999, 3.25, 1000.5], np.float32)
    i = np.array([-3, 0, 7, 2**20 + 1], np.int64)
    src = ("CAST x dtype=int -> xi\nCAST x dtype=int64 -> xl\nCAST x dtype=float16 -> xh\n"
           "CAST x dtype=float64 -> xd\nCAST i dtype=float -> if_\nCAST i dtype=int32 -> ii\nCAST x dtype=float -> xs")
    outs = {"xi": Out("int32", (7,)), "xl": Out("int64", (7,)), "xh": Out("float16", (7,)),
            "xd": Out("float64", (7,)), "if_": Out("float32", (4,)), "ii": Out("int32", (4,)),
            "xs": Out("float32", (7,))}
    return src, {"x": x, "i": i, **outs}, {
        "xi": np.trunc(x).astype(np.int32), "xl": np.trunc(x).astype(np.int64), "xh": x.astype(np.float16),
        "xd": x.astype(np.float64), "if_": i.astype(np.float32), "ii": i.astype(np.int32), "xs": x}


@case(*FLOATS, *INTS)
def argmax_first_maximum(dt):
    a = np.array([[1, 5, 5, 2], [7, 7, 7, 7], [-3, -1, -2, -1]], dt)
    return "ARGMAX a axis=-1 -> c\nARGMAX a axis=0 -> d", {"a": a, "c": Out("int32", (3,)),
                                                           "d": Out("int32", (4,))}, {
        "c": np.argmax(a, axis=-1).astype(np.int32), "d": np.argmax(a, axis=0).astype(np.int32)}


@case(*FLOATS)
def argmax_nan_wins(dt):
    a = np.array([[1.0, np.nan, 9.0, np.nan], [np.inf, 2.0, -np.inf, 1.0]], dt)
    return "ARGMAX a axis=1 -> c", {"a": a, "c": Out("int32", (2,))}, {"c": np.array([1, 0], np.int32)}


@case(*FLOATS)
def rsqrt_and_silu(dt):
    a, b = data((4, 6), dt, positive=True), data((4, 6), dt)
    return "RSQRT a -> c\nSILU b -> d", {"a": a, "b": b, "c": Out(dt, (4, 6)), "d": Out(dt, (4, 6))}, {
        "c": 1 / np.sqrt(a.astype(np.float64)), "d": b / (1 + np.exp(-b.astype(np.float64)))}


@case(*FLOATS)
def rmsnorm(dt):
    x, w = data((2, 3, 16), dt), data((16,), dt)
    return "RMSNORM x w eps=1e-5 -> c", {"x": x, "w": w, "c": Out(dt, (2, 3, 16))}, {"c": rmsnorm_ref(x, w, 1e-5)}


@case(*FLOATS)
def rope_positions_along_axis_0_and_1(dt):
    x, y = data((3, 2, 8), dt), data((2, 4, 6), dt)
    src = "ROPE x p axis=0 base=10000 -> c\nROPE y 5 axis=1 base=100000.0 -> d"
    return src, {"x": x, "y": y, "p": Scalar(7, "int32"), "c": Out(dt, (3, 2, 8)), "d": Out(dt, (2, 4, 6))}, {
        "c": rope_ref(x, 7, 0, 10000.0), "d": rope_ref(y, 5, 1, 100000.0)}


@case(*FLOATS)
def causal_mask(dt):
    a = data((2, 3, 6), dt)
    src = "CAUSAL_MASK a p -> c\nCAUSAL_MASK a 0 -> d"
    return src, {"a": a, "p": Scalar(2, "int64"), "c": Out(dt, (2, 3, 6)), "d": Out(dt, (2, 3, 6))}, {
        "c": causal_ref(a, 2), "d": causal_ref(a, 0)}


@case(*FLOATS, *INTS)
def linear_plain_and_batched(dt):
    a, w, q, k = data((5, 4), dt), data((3, 4), dt), data((2, 3, 2, 4), dt), data((2, 1, 6, 4), dt)
    if np.dtype(dt).kind == "i":
        a, w, q, k = (v % 7 for v in (a, w, q, k))
    src = "LINEAR a w -> c\nLINEAR q k -> d"
    return src, {"a": a, "w": w, "q": q, "k": k, "c": Out(dt, (5, 3)), "d": Out(dt, (2, 3, 2, 6))}, {
        "c": a @ w.T, "d": np.matmul(q, np.swapaxes(k, -1, -2))}


@pytest.mark.parametrize("backend", EXECUTORS)
@pytest.mark.parametrize("name, dt", [(n, d) for n, (_, dts) in CASES.items() for d in dts])
def test_op_matches_its_numpy_reference(backend, name, dt):
    stmts, values, expected = CASES[name][0](dt)
    if unsupported(backend, values):  # wgpu: WGSL has no 64-bit types
        return expect_refusal(backend, run, make(backend), source_for(stmts, values), values)
    got = run(make(backend), source_for(stmts, values), values)
    for out, want in expected.items():
        have = got[out]
        assert have.shape == want.shape, out
        declared = values[out]
        assert have.dtype == (np.dtype(declared.dtype) if isinstance(declared, Out) else declared.dtype), out
        if have.dtype.kind == "f" and np.dtype(dt).kind == "f":
            tol = TOL[have.dtype.name]
            np.testing.assert_allclose(have.astype(np.float64), np.asarray(want, np.float64), rtol=tol * 10,
                                       atol=tol * 10, err_msg=out)
        else:
            np.testing.assert_array_equal(have, want, err_msg=out)


@pytest.mark.parametrize("backend", EXECUTORS)
def test_cast_of_nan_and_out_of_range_floats_is_not_an_error(backend):
    x = np.array([np.nan, np.inf, -np.inf, 3e9, -3e9, 1.5], np.float32)
    got = run(make(backend), source_for("CAST x dtype=int -> c", {"x": x, "c": Out("int32", (6,))}),
              {"x": x, "c": Out("int32", (6,))})
    assert got["c"].dtype == np.int32 and got["c"][5] == 1  # the others: implementation-defined


# ---- runtime indices out of range ------------------------------------------------------------

def _failing(backend, stmts, values, match):
    ex, arrays = make(backend), {}
    with pytest.raises(IndexOutOfRange, match=match) as info:
        run(ex, source_for(stmts, values), values, arrays=arrays)
    assert isinstance(info.value, LaunchFailed) and info.value.status == "PXOS_S_RANGE"
    return info.value, {n: ex.to_host(a) for n, a in arrays.items()}


@pytest.mark.parametrize("backend", EXECUTORS)
@pytest.mark.parametrize("bad", [5, -1, 2**31 - 1])
def test_gather_id_out_of_range_names_the_line_and_the_value(backend, bad):
    table, ids = data((5, 2), "float32"), np.array([0, 4, bad, 1], np.int32)
    values = {"table": table, "ids": ids, "c": Out("float32", (4, 2))}
    err, _ = _failing(backend, "COPY table -> t\nGATHER t ids -> c", values, rf"line 7: GATHER id {bad} \(element 2")
    assert (err.line, err.value) == (7, bad)


@pytest.mark.parametrize("backend", EXECUTORS)
@pytest.mark.parametrize("tok", [0, 4, 5, -1])
def test_gather_of_a_scalar_id_the_decode_step_embedding(backend, tok):
    table = data((5, 3), "float32")
    values = {"table": table, "tok": Scalar(tok, "int64"), "x": Out("float32", (1, 3), np.full((1, 3), 9, np.float32)),
              "first": Out("float32", (5, 3), np.full((5, 3), 9, np.float32))}
    stmts = "COPY table -> first\nGATHER table tok -> row\nRESHAPE row shape=[1, 3] -> x"
    if 0 <= tok < 5:
        got = run(make(backend), source_for(stmts, values), values)
        np.testing.assert_array_equal(got["x"], table[tok][None])
        return
    err, after = _failing(backend, stmts, values, rf"line 8: GATHER id {tok} ")
    assert err.value == tok and (after["first"] == 9).all()  # caught before the launch ran


@pytest.mark.parametrize("backend", EXECUTORS)
@pytest.mark.parametrize("start", [-1, 7, 2**31 - 1])
def test_a_slice_start_param_out_of_range_fails_before_anything_is_written(backend, start):
    a = data((3, 8), "float32")
    values = {"a": a, "p": Scalar(start, "int32"), "first": Out("float32", (3, 8), np.full((3, 8), 9, np.float32)),
              "c": Out("float32", (3, 2), np.full((3, 2), 9, np.float32))}
    err, after = _failing(backend, "COPY a -> first\nSLICE a axis=1 start=p size=2 -> c", values,
                          rf"line 8: SLICE start={start} is out of range")
    assert err.value == start
    assert (after["first"] == 9).all() and (after["c"] == 9).all()  # caught before the launch ran


@pytest.mark.parametrize("backend", EXECUTORS)
def test_a_slice_write_start_param_out_of_range_leaves_the_cache_alone(backend):
    cache, new = data((2, 8, 3), "float32"), data((2, 2, 3), "float32")
    values = {"cache": cache, "new": new, "p": Scalar(7, "int64")}
    _, after = _failing(backend, "SLICE_WRITE new axis=1 start=p -> cache", values, "start=7 is out of range")
    np.testing.assert_array_equal(after["cache"], cache)


@pytest.mark.parametrize("backend", EXECUTORS)
def test_a_start_from_a_local_is_checked_at_its_statement(backend):
    v, a = np.array([0, 3, 9, 1], np.float32), data((6,), "float32")
    values = {"v": v, "a": a, "c": Out("float32", (2,)), "d": Out("float32", (3,))}
    good = run(make(backend), source_for("ARGMAX v axis=0 -> i\nSLICE a axis=0 start=i size=2 -> c\n"
                                         "SLICE a axis=0 start=3 size=3 -> d", values), values)
    np.testing.assert_array_equal(good["c"], a[2:4])
    values = {**values, "c": Out("float32", (4,)), "d": Out("float32", (5,))}
    err, after = _failing(backend, "ARGMAX v axis=0 -> i\nCOPY a -> t\nSLICE t axis=0 start=i size=5 -> d\n"
                          "COPY v -> c", values, "line 9: SLICE start=2 is out of range")
    assert not after["d"].any() and not after["c"].any()  # neither the failing statement nor later ones


def test_a_bare_0d_array_still_works_as_a_scalar_start():
    """HostScalar is what executors hand out; a plain 0-d array is read from the device."""
    from primitive_lang import TensorSpec, compile_source
    from primitive_lang.ast import DType

    ex = make("numpy")
    k = compile_source(source_for("SLICE a axis=0 start=p size=2 -> c", {
        "a": np.zeros(4, np.float32), "p": Scalar(0, "int32"), "c": Out("float32", (2,))})).kernels[0]
    specs = {"a": TensorSpec(DType.FLOAT32, (4,)), "p": TensorSpec(DType.INT32, ()),
             "c": TensorSpec(DType.FLOAT32, (2,))}
    args = {"a": np.arange(4, dtype=np.float32), "p": np.asarray(2, np.int32), "c": np.zeros(2, np.float32)}
    ex.run(k.bind(specs), args)
    np.testing.assert_array_equal(args["c"], [2, 3])
    args["p"] = np.asarray(3, np.int32)
    with pytest.raises(IndexOutOfRange):
        ex.run(k.bind(specs), args)


# ---- aliasing: views never leak into values read earlier, nor writes into inputs ------------

ALIASING = {
    # a local viewing an `in` param, then written in place: the param must not change
    "slice_write_into_a_view_of_an_input": (
        "RESHAPE w shape=[2, 3] -> l\nSLICE_WRITE s axis=0 start=p -> l\nCOPY l -> out",
        lambda w, s: {"out": np.concatenate((w.reshape(2, 3)[:1], s)), "w": w}),
    # a view of an inout param read after the param is overwritten: the old value
    "view_of_a_param_read_after_the_param_is_written": (
        "RESHAPE w2 shape=[3, 2] -> v\nFILL 0.5 -> w2\nCOPY v -> out2",
        lambda w, s: {"out2": np.arange(6, dtype=np.float32).reshape(3, 2), "w2": np.full(6, 0.5, np.float32)}),
    # the destination's own view stored into it (overlapping copy)
    "permute_a_param_into_itself": (
        "RESHAPE sq shape=[3, 3] -> m\nPERMUTE m axes=[1, 0] -> m2\nRESHAPE m2 shape=[9] -> sq",
        lambda w, s: {"sq": np.arange(9, dtype=np.float32).reshape(3, 3).T.reshape(9)}),
    # a window of the destination written into it, shifted (overlapping source)
    "slice_write_of_a_window_of_the_destination": (
        "SLICE sq axis=0 start=0 size=4 -> win\nSLICE_WRITE win axis=0 start=p -> sq",
        lambda w, s: {"sq": np.array([0, 0, 1, 2, 3, 5, 6, 7, 8], np.float32)}),
    # a loop reads a view taken before it, while the loop overwrites the viewed param
    "view_read_again_in_a_later_iteration": (
        "RESHAPE w2 shape=[6] -> v\nREPEAT 3:\n  ADD v 1 -> t\n  COPY t -> w2\nEND_REPEAT",
        lambda w, s: {"w2": np.arange(6, dtype=np.float32) + 1}),
    # SLICE_WRITE into a local that another live local views
    "slice_write_into_a_local_another_local_views": (
        "COPY w -> l\nRESHAPE l shape=[3, 2] -> v\nRESHAPE s shape=[3] -> s3\nSLICE_WRITE s3 axis=0 start=0 -> l\n"
        "COPY v -> out2\nRESHAPE l shape=[2, 3] -> out",
        lambda w, s: {"out2": w.reshape(3, 2), "out": np.concatenate((s.reshape(3), w[3:])).reshape(2, 3)}),
}


@pytest.mark.parametrize("backend", EXECUTORS)
@pytest.mark.parametrize("name", list(ALIASING))
def test_aliasing(backend, name):
    stmts, expect = ALIASING[name]
    w, s = data((6,), "float32"), data((1, 3), "float32")
    values = {"w": w, "s": s, "p": Scalar(1, "int32"), "w2": np.arange(6, dtype=np.float32),
              "sq": np.arange(9, dtype=np.float32), "out": Out("float32", (2, 3)), "out2": Out("float32", (3, 2))}
    used = {n: v for n, v in values.items() if n in stmts.replace("\n", " ").split() or f"={n}" in stmts}
    got = run(make(backend), source_for(stmts, used), used)
    for n, want in expect(w, s).items():
        np.testing.assert_array_equal(got[n], want, err_msg=n)
    np.testing.assert_array_equal(got.get("w", w), w)  # an `in` param never changes


def test_views_of_inputs_are_not_copied_when_nothing_writes():
    """RESHAPE/SLICE/PERMUTE results are views: a chain of them costs no copy (inspected on
    the NumPy interpreter's locals, which share memory with the input)."""
    from hypervisor.executor.interpret import Interpreter
    from primitive_lang import TensorSpec, compile_source
    from primitive_lang.ast import DType

    src = source_for("RESHAPE a shape=[4, 3] -> r\nSLICE r axis=0 start=1 size=2 -> s\nPERMUTE s axes=[1, 0] -> t\n"
                     "COPY t -> c", {"a": np.zeros(12, np.float32), "c": Out("float32", (3, 2))})
    k = compile_source(src).kernels[0]
    bound = k.bind({"a": TensorSpec(DType.FLOAT32, (12,)), "c": TensorSpec(DType.FLOAT32, (3, 2))})
    a, c = np.arange(12, dtype=np.float32), np.zeros((3, 2), np.float32)
    env = {"a": a, "c": c}
    Interpreter(np, bound, env).run()
    assert np.shares_memory(env["t"], a)
    np.testing.assert_array_equal(c, a.reshape(4, 3)[1:3].T)


@pytest.mark.parametrize("ids, bad", [([0, 4, 2], None), ([1, 5, -1], (5, 1)), ([-3, 0, 9], (-3, 0))])
def test_deferred_gather_checks_as_cupy_runs_them(ids, bad):
    """CuPy clamps GATHER ids on the device and checks them when the launch completes (no
    stream sync); the same interpreter code, run here over NumPy arrays."""
    from hypervisor.executor.interpret import Interpreter
    from primitive_lang import TensorSpec, compile_source
    from primitive_lang.ast import DType

    table = np.arange(10, dtype=np.float32).reshape(5, 2)
    src = source_for("GATHER t i -> c", {"t": table, "i": np.zeros(3, np.int32), "c": Out("float32", (3, 2))})
    bound = compile_source(src).kernels[0].bind({"t": TensorSpec(DType.FLOAT32, (5, 2)),
                                                 "i": TensorSpec(DType.INT32, (3,)),
                                                 "c": TensorSpec(DType.FLOAT32, (3, 2))})
    env = {"t": table, "i": np.array(ids, np.int32), "c": np.zeros((3, 2), np.float32)}
    interp = Interpreter(np, bound, env, defer_checks=True)
    interp.run()  # never reads outside the table: ids are clamped
    np.testing.assert_array_equal(env["c"], table[np.clip(ids, 0, 4)])
    results = np.asarray(interp.deferred_checks())
    if bad is None:
        interp.check_deferred(results)
        return
    with pytest.raises(IndexOutOfRange, match=rf"line 6: GATHER id {bad[0]} \(element {bad[1]} of i"):
        interp.check_deferred(results)


@pytest.mark.parametrize("backend", EXECUTORS)
def test_a_scalar_bound_to_a_0d_tensor_param_is_checked_too(backend):
    """A value passed by value to an `int[]` param (bound with shape ()) is no declared scalar,
    so no pre-check sees it: the statement checks it."""
    from primitive_lang import TensorSpec, compile_source
    from primitive_lang.ast import DType

    ex = make(backend)
    src = "GPU_KERNEL k\nGPU_PARAM t float[4, 2]\nGPU_PARAM i int[]\nGPU_PARAM c float[2]\nGPU_THREAD_CODE:\n" \
          "    GATHER t i -> c\nGPU_END\n"
    specs = {"t": TensorSpec(DType.FLOAT32, (4, 2)), "i": TensorSpec(DType.INT32, ()), "c": TensorSpec(DType.FLOAT32, (2,))}
    bound = compile_source(src).kernels[0].bind(specs)
    table = np.arange(8, dtype=np.float32).reshape(4, 2)
    for i in (3, -1, 4):
        args = {"t": ex.empty(specs["t"]), "i": ex.scalar(i, specs["i"]), "c": ex.zeros(specs["c"])}
        ex.write(args["t"], 0, [table.tobytes()])
        if i == 3:
            ex.run(bound, args)
            np.testing.assert_array_equal(ex.to_host(args["c"]), table[3])
        else:
            with pytest.raises(IndexOutOfRange, match=f"GATHER id {i} "):
                ex.run(bound, args)
