"""Every op of the language on every executor backend, against a NumPy reference written
out here independently of the interpreter. CuPy cases are marked `gpu`."""

from __future__ import annotations

import math

import numpy as np
import pytest
from executors import EXECUTORS, expect_refusal, make, refuses

from primitive_lang import TensorSpec, compile_source
from primitive_lang.ast import DType

RNG = np.random.default_rng(1234)


_backend = make
BACKENDS = EXECUTORS


def gelu(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


# (statement, input shapes, output shape, reference(inputs) -> output, input kind)
POS = "pos"  # strictly positive inputs (LOG, SQRT)
CASES = {
    "matmul": ("PARALLEL_MATMUL a b -> c", [(7, 5), (5, 3)], (7, 3), lambda a, b: a @ b, None),
    "matmul_batched": ("PARALLEL_MATMUL a b -> c", [(2, 4, 5), (5, 3)], (2, 4, 3), lambda a, b: np.matmul(a, b), None),
    "add_bcast": ("ADD a b -> c", [(4, 3), (3,)], (4, 3), lambda a, b: a + b, None),
    "sub": ("SUB a b -> c", [(4, 3), (4, 3)], (4, 3), lambda a, b: a - b, None),
    "mul_lit": ("MUL a 2.5 -> c", [(6,)], (6,), lambda a: a * np.float32(2.5), None),
    "div": ("DIV a b -> c", [(5,), (5,)], (5,), lambda a, b: a / b, POS),
    "max": ("MAX a b -> c", [(3, 3), (3, 1)], (3, 3), np.maximum, None),
    "min": ("MIN a b -> c", [(3, 3), (3, 3)], (3, 3), np.minimum, None),
    "relu": ("RELU a -> c", [(10,)], (10,), lambda a: np.maximum(a, 0), None),
    "gelu": ("GELU a -> c", [(10,)], (10,), gelu, None),
    "sigmoid": ("SIGMOID a -> c", [(10,)], (10,), lambda a: 1 / (1 + np.exp(-a)), None),
    "tanh": ("TANH a -> c", [(10,)], (10,), np.tanh, None),
    "exp": ("EXP a -> c", [(10,)], (10,), np.exp, None),
    "log": ("LOG a -> c", [(10,)], (10,), np.log, POS),
    "sqrt": ("SQRT a -> c", [(10,)], (10,), np.sqrt, POS),
    "abs": ("ABS a -> c", [(10,)], (10,), np.abs, None),
    "neg": ("NEG a -> c", [(10,)], (10,), np.negative, None),
    "softmax": ("SOFTMAX a -> c", [(3, 8)], (3, 8), softmax, None),
    "softmax_axis0": ("SOFTMAX a axis=0 -> c", [(3, 8)], (3, 8), lambda a: softmax(a, 0), None),
    "reduce_sum": ("REDUCE_SUM a axis=1 -> c", [(4, 6)], (4,), lambda a: a.sum(axis=1), None),
    "reduce_max": ("REDUCE_MAX a axis=0 -> c", [(4, 6)], (6,), lambda a: a.max(axis=0), None),
    "reduce_mean": ("REDUCE_MEAN a axis=-1 -> c", [(4, 6)], (4,), lambda a: a.mean(axis=-1), None),
    "transpose": ("TRANSPOSE a -> c", [(2, 3, 4)], (2, 4, 3), lambda a: np.swapaxes(a, -1, -2), None),
    "copy": ("COPY a -> c", [(5,)], (5,), lambda a: a.copy(), None),
    "fill": ("FILL 0.5 -> c", [], (2, 3), lambda: np.full((2, 3), 0.5), None),
}

DTYPES = {"float32": (1e-5, 1e-6), "float64": (1e-12, 1e-12), "float16": (5e-3, 5e-3)}


def kernel_source(stmt: str, in_shapes, out_shape, dtype: str) -> str:
    names = "ab"[: len(in_shapes)]
    lines = ["GPU_KERNEL op"]
    for n, s in zip(names, in_shapes, strict=True):
        lines.append(f"GPU_PARAM {n} {dtype}[{', '.join(map(str, s))}]")
    lines.append(f"GPU_PARAM c {dtype}[{', '.join(map(str, out_shape))}]")
    lines += ["GPU_THREAD_CODE:", "    " + stmt, "GPU_END"]
    return "\n".join(lines) + "\n"


def run_case(backend, case: str, dtype: str):
    stmt, in_shapes, out_shape, ref, kind = CASES[case]
    ex = _backend(backend)
    k = compile_source(kernel_source(stmt, in_shapes, out_shape, dtype)).kernels[0]
    inputs = []
    for s in in_shapes:
        x = RNG.standard_normal(s)
        if kind == POS:
            x = np.abs(x) + 0.5
        inputs.append(x.astype(dtype))
    specs = {n: TensorSpec(DType(dtype), s) for n, s in zip("ab", in_shapes, strict=False)}
    specs["c"] = TensorSpec(DType(dtype), out_shape)
    bound = k.bind(specs)
    arrays = {}
    for n, x in zip("ab", inputs, strict=False):
        arr = ex.empty(specs[n])
        ex.write(arr, 0, [x.tobytes()])
        arrays[n] = arr
    arrays["c"] = ex.zeros(specs["c"])
    seconds = ex.run(bound, arrays).device_s
    out = ex.to_host(arrays["c"])
    expect = ref(*[x.astype(np.float64) for x in inputs]) if dtype == "float16" else ref(*inputs)
    return out, np.asarray(expect), seconds


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("case", list(CASES))
def test_op_matches_numpy_reference(backend, case, dtype):
    if refuses(backend, dtype):  # wgpu: WGSL has no 64-bit types
        return expect_refusal(backend, run_case, backend, case, dtype)
    out, expect, seconds = run_case(backend, case, dtype)
    rtol, atol = DTYPES[dtype]
    assert out.dtype == np.dtype(dtype)
    assert out.shape == expect.shape
    np.testing.assert_allclose(out.astype(np.float64), expect.astype(np.float64), rtol=rtol * 10, atol=atol * 10)
    assert seconds >= 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_fill_from_a_scalar_param(backend):
    ex = _backend(backend)
    dt = "float64"
    if refuses(backend, "float64"):  # wgpu: refused, then the same with float32
        expect_refusal(backend, ex.zeros, TensorSpec(DType.FLOAT64, (2, 3)))
        dt = "float32"
    k = compile_source(f"GPU_KERNEL f\nGPU_PARAM v {dt}\nGPU_PARAM c {dt}[2, 3]\nGPU_THREAD_CODE:\n"
                       "    FILL v -> c\nGPU_END\n").kernels[0]
    specs = {"v": TensorSpec(DType(dt), ()), "c": TensorSpec(DType(dt), (2, 3))}
    arrays = {"v": ex.scalar(2.5, specs["v"]), "c": ex.zeros(specs["c"])}
    ex.run(k.bind(specs), arrays)
    np.testing.assert_array_equal(ex.to_host(arrays["c"]), np.full((2, 3), 2.5))


@pytest.mark.parametrize("backend", BACKENDS)
def test_integer_ops(backend):
    ex = _backend(backend)
    src = """
GPU_KERNEL ints
GPU_PARAM a int[4]
GPU_PARAM b int64[2, 2]
GPU_PARAM c int[4]
GPU_PARAM d int64[2]
GPU_THREAD_CODE:
    MUL a 3 -> t
    ADD t a -> t
    MAX t 5 -> c
    REDUCE_SUM b axis=0 -> d
GPU_END
"""
    k = compile_source(src).kernels[0]
    specs = {"a": TensorSpec(DType.INT32, (4,)), "b": TensorSpec(DType.INT64, (2, 2)),
             "c": TensorSpec(DType.INT32, (4,)), "d": TensorSpec(DType.INT64, (2,))}
    a, b = np.array([1, 2, -3, 4], np.int32), np.array([[1, 2], [3, 2**40]], np.int64)
    if refuses(backend, "int64"):  # wgpu: WGSL has no int64
        return expect_refusal(backend, ex.zeros, specs["b"])
    arrays = {n: ex.zeros(s) for n, s in specs.items()}
    ex.write(arrays["a"], 0, [a.tobytes()])
    ex.write(arrays["b"], 0, [b.tobytes()])
    ex.run(k.bind(specs), arrays)
    np.testing.assert_array_equal(ex.to_host(arrays["c"]), np.maximum(a * 4, 5))
    np.testing.assert_array_equal(ex.to_host(arrays["d"]), b.sum(axis=0))


@pytest.mark.parametrize("backend", BACKENDS)
def test_repeat_loop_and_in_place_update(backend):
    """A training-like loop: w -= lr * x^T (x w - y), 20 times, against the same loop in NumPy."""
    ex = _backend(backend)
    dt, rtol = "float64", 1e-10
    if refuses(backend, "float64"):  # wgpu: refused, then the same loop in float32
        expect_refusal(backend, ex.zeros, TensorSpec(DType.FLOAT64, (16, 4)))
        dt, rtol = "float32", 1e-4
    src = """
GPU_KERNEL sgd
GPU_PARAM x float64[16, 4]
GPU_PARAM y float64[16, 1]
GPU_PARAM w float64[4, 1]
GPU_THREAD_CODE:
    REPEAT 20:
        PARALLEL_MATMUL x w -> p
        SUB p y -> e
        TRANSPOSE x -> xt
        PARALLEL_MATMUL xt e -> g
        MUL g 0.01 -> g
        SUB w g -> w
    END_REPEAT
GPU_END
"""
    k = compile_source(src.replace("float64", dt)).kernels[0]
    x, y = RNG.standard_normal((16, 4)).astype(dt), RNG.standard_normal((16, 1)).astype(dt)
    specs = {"x": TensorSpec(DType(dt), (16, 4)), "y": TensorSpec(DType(dt), (16, 1)),
             "w": TensorSpec(DType(dt), (4, 1))}
    arrays = {n: ex.zeros(s) for n, s in specs.items()}
    ex.write(arrays["x"], 0, [x.tobytes()])
    ex.write(arrays["y"], 0, [y.tobytes()])
    ex.run(k.bind(specs), arrays)
    w = np.zeros((4, 1))
    for _ in range(20):
        w = w - 0.01 * (x.T @ (x @ w - y))
    np.testing.assert_allclose(ex.to_host(arrays["w"]), w, rtol=rtol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_transfers_scatter_gather_at_offsets(backend):
    ex = _backend(backend)
    spec = TensorSpec(DType.FLOAT32, (64,))
    arr = ex.zeros(spec)
    data = np.arange(64, dtype=np.float32).tobytes()
    chunks = [memoryview(data)[0:7], memoryview(data)[7:100], memoryview(data)[100:256]]
    assert ex.write(arr, 0, chunks) == 256
    out1, out2 = bytearray(10), bytearray(30)
    assert ex.read_into(arr, 8, [memoryview(out1), memoryview(out2)]) == 40
    assert bytes(out1 + out2) == data[8:48]
    with pytest.raises(Exception, match="outside"):
        ex.write(arr, 250, [b"\0" * 8])

    def gather(view):
        view[:8] = b"\xff" * 8
        view[8:] = b"\x01" * 8

    assert ex.fill(arr, 240, 16, gather) == 16
    out = bytearray(16)
    ex.read_into(arr, 240, [memoryview(out)])
    assert bytes(out) == b"\xff" * 8 + b"\x01" * 8


@pytest.mark.parametrize("backend", BACKENDS)
def test_scalar_keeps_the_host_value_beside_the_device_array(backend):
    """A runtime index given by a scalar param is read from the host value (no device read)."""
    from hypervisor.executor.base import HostScalar

    ex = _backend(backend)
    s = ex.scalar(7, TensorSpec(DType.INT64, ()))
    assert isinstance(s, HostScalar) and s.value == 7
    host = ex.to_host(s.array)
    assert host.shape == () and host.dtype == np.int64 and host == 7
