"""Binding: concrete shapes checked against declarations and through every statement."""

from __future__ import annotations

import pytest
from pl_testlib import SEED, kernel

from primitive_lang import BindError, PrimitiveError, TensorSpec, compile_source, limits
from primitive_lang.ast import DType

F32, I32 = DType.FLOAT32, DType.INT32


def spec(*shape: int, dtype: DType = F32) -> TensorSpec:
    return TensorSpec(dtype, tuple(shape))


def bind_problems(source: str, specs: dict) -> list[tuple[str, int, int]]:
    k = compile_source(source).kernels[0]
    with pytest.raises(BindError) as info:
        k.bind(specs)
    assert isinstance(info.value, PrimitiveError)
    return [(d.code, d.line, d.column) for d in info.value.diagnostics]


def test_seed_binds_to_concrete_shapes():
    k = compile_source(SEED).kernel("train_model")
    b = k.bind({"weights": spec(64, 128), "inputs": spec(128, 32), "outputs": spec(64, 32)})
    assert b.kernel is k
    assert dict(b.shapes) == {"weights": spec(64, 128), "inputs": spec(128, 32), "outputs": spec(64, 32)}
    assert dict(b.symbols) == {}
    with pytest.raises(TypeError):
        b.shapes["weights"] = spec(1)  # read-only view


SYMBOLIC = kernel("  PARALLEL_MATMUL x w -> h\n  ADD h bias -> h\n  MUL h alpha -> h\n  COPY h -> y",
                  "GPU_PARAM x float[B, K]\nGPU_PARAM w float[K, 16]\nGPU_PARAM bias float[16]\n"
                  "GPU_PARAM alpha float\nGPU_PARAM y float[B, 16]")


def test_symbols_are_solved_and_locals_get_concrete_shapes():
    k = compile_source(SYMBOLIC).kernels[0]
    b = k.bind({"x": spec(32, 784), "w": spec(784, 16), "bias": spec(16), "alpha": spec(), "y": spec(32, 16)})
    assert dict(b.symbols) == {"B": 32, "K": 784}
    assert b.shapes["h"] == spec(32, 16)
    assert b.shapes["alpha"] == TensorSpec(F32, ()) and b.shapes["alpha"].nbytes == 4


def test_every_param_problem_is_listed_at_once():
    specs = {"x": spec(32, 784), "w": spec(783, 16), "bias": spec(16, dtype=I32), "alpha": spec(1),
             "nope": spec(1)}  # y missing
    assert bind_problems(SYMBOLIC, specs) == [
        ("bind-unknown", 1, 1),   # nope
        ("bind-symbol", 3, 1),    # K: 784 from x, 783 from w
        ("bind-dtype", 4, 1),     # bias is float32
        ("bind-shape", 5, 1),     # alpha is a scalar
        ("bind-missing", 6, 1),   # y
    ]


@pytest.mark.parametrize("bad, code", [
    (spec(4, 0), "bind-shape"),          # dimensions are at least 1
    (spec(4), "bind-shape"),             # rank differs from the declaration
    (spec(5, 8), "bind-shape"),          # a declared size differs
    (spec(*([1] * (limits.MAX_RANK + 1))), "limit"),
    (spec(limits.MAX_ELEMENTS, 2), "limit"),
    (TensorSpec("float33", (4, 8)), "bind-dtype"),
    (TensorSpec(F32, (4, 8.5)), "bind-shape"),
    (TensorSpec(F32, (4, True)), "bind-shape"),
])
def test_a_bad_spec_is_a_typed_problem_at_the_param(bad, code):
    src = kernel("  COPY x -> y", "GPU_PARAM x float[4, 8]\nGPU_PARAM y float[]")
    assert bind_problems(src, {"x": bad, "y": spec(4, 8)}) == [(code, 2, 1)]


@pytest.mark.parametrize("body, specs, where", [
    ("  PARALLEL_MATMUL a b -> c", {"a": spec(4, 8), "b": spec(7, 2), "c": spec(4, 2)}, (6, 3)),
    ("  ADD a b -> c", {"a": spec(4, 8), "b": spec(3, 8), "c": spec(4, 8)}, (6, 3)),
    ("  ADD a b -> c", {"a": spec(4, 8), "b": spec(8), "c": spec(8, 4)}, (6, 14)),  # store: no implicit broadcast
    ("  TRANSPOSE a -> c", {"a": spec(8), "b": spec(8), "c": spec(8)}, (6, 13)),
    ("  REDUCE_SUM a axis=2 -> c", {"a": spec(4, 8), "b": spec(1), "c": spec(4)}, (6, 3)),
    ("  PARALLEL_MATMUL a b -> t\n  COPY a -> c",
     {"a": spec(65536, 1), "b": spec(1, 65536), "c": spec(65536, 1)}, (6, 26)),
])
def test_shape_errors_that_only_concrete_shapes_reveal(body, specs, where):
    src = kernel(body, "GPU_PARAM a float[]\nGPU_PARAM b float[]\nGPU_PARAM c float[]")
    problems = bind_problems(src, specs)
    assert len(problems) == 1 and problems[0][1:] == where


def test_binding_is_pure_and_repeatable():
    k = compile_source(SYMBOLIC).kernels[0]
    specs = {"x": spec(2, 3), "w": spec(3, 16), "bias": spec(16), "alpha": spec(), "y": spec(2, 16)}
    first, second = k.bind(specs), k.bind(dict(specs))
    assert first.cost == second.cost and dict(first.shapes) == dict(second.shapes)
    assert specs == {"x": spec(2, 3), "w": spec(3, 16), "bias": spec(16), "alpha": spec(), "y": spec(2, 16)}


def test_a_spec_that_is_not_a_tensorspec_is_a_programming_error():
    k = compile_source(SEED).kernels[0]
    with pytest.raises(TypeError):
        k.bind({"weights": (64, 128), "inputs": spec(128, 2), "outputs": spec(64, 2)})
    with pytest.raises(TypeError):
        k.bind([("weights", spec(1, 1))])
