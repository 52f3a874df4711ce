"""Language v2: attributes (parse, AST, every diagnostic) and the v2 ops (validation, bind,
cost), each problem reported with its code at its place."""

from __future__ import annotations

import pytest
from pl_testlib import kernel, problems
from test_validate import ALL_OPS, V2_OPS

from primitive_lang import BindError, Direction, TensorSpec, compile_source
from primitive_lang.ast import Attr, DType, ParamType, Pos
from primitive_lang.ops import OPS

F32, I32, I64 = DType.FLOAT32, DType.INT32, DType.INT64

ALL_V2 = """\
GPU_KERNEL v2
GPU_PARAM table float[V, 8]
GPU_PARAM ids int[T]
GPU_PARAM pos int
GPU_PARAM cache float[2, S, 4]
GPU_PARAM w float[6, 8]
GPU_PARAM g float[8]
GPU_PARAM out float[T, 6]
GPU_PARAM tok int[T]
GPU_THREAD_CODE:
  GATHER table ids -> x
  RESHAPE x shape=[T, 2, 4] -> x3
  PERMUTE x3 axes=[1, 0, -1] -> xt
  SLICE xt axis=1 start=pos size=1 -> first
  SLICE_WRITE xt axis=1 start=pos -> cache
  SLICE cache axis=1 start=0 size=T -> window
  CONCAT xt window axis=1 -> both
  CAST both dtype=float64 -> wide
  CAST ids dtype=int64 -> ids64
  RSQRT g -> r
  SILU x -> s
  RMSNORM x g eps=1e-5 -> n
  ROPE x3 pos axis=0 base=10000 -> rot
  ROPE x3 3 axis=-3 base=1e4 -> rot3
  LINEAR n w -> out
  LINEAR xt xt -> scores
  CAUSAL_MASK scores pos -> masked
  CAUSAL_MASK scores 0 -> masked0
  ARGMAX out axis=-1 -> tok
GPU_END
"""


def test_every_op_is_covered_by_the_two_all_ops_kernels():
    v1 = {s.stmt.op for s in compile_source(ALL_OPS).kernels[0].steps}
    v2 = {s.stmt.op for s in compile_source(ALL_V2).kernels[0].steps}
    assert v2 == V2_OPS and v1 | v2 == set(OPS)


def test_every_v2_op_is_accepted_with_its_result_dtype_and_shape():
    k = compile_source(ALL_V2).kernel("v2")
    f32 = F32
    assert dict(k.locals) == {
        "x": ParamType(f32, ("T", 8)), "x3": ParamType(f32, ("T", 2, 4)), "xt": ParamType(f32, (2, "T", 4)),
        "first": ParamType(f32, (2, 1, 4)), "window": ParamType(f32, (2, "T", 4)),
        "both": ParamType(f32, None),  # T + T: not a size until bind
        "wide": ParamType(DType.FLOAT64, None), "ids64": ParamType(I64, ("T",)), "r": ParamType(f32, (8,)),
        "s": ParamType(f32, ("T", 8)), "n": ParamType(f32, ("T", 8)), "rot": ParamType(f32, ("T", 2, 4)),
        "rot3": ParamType(f32, ("T", 2, 4)), "scores": ParamType(f32, (2, "T", "T")),
        "masked": ParamType(f32, (2, "T", "T")), "masked0": ParamType(f32, (2, "T", "T"))}
    assert k.directions["cache"] is Direction.INOUT  # SLICE_WRITE keeps the rest of it
    assert k.directions["pos"] is Direction.IN and k.directions["tok"] is Direction.OUT


def test_bind_resolves_symbols_and_sizes_every_local():
    k = compile_source(ALL_V2).kernel("v2")
    specs = {"table": TensorSpec(F32, (50, 8)), "ids": TensorSpec(I32, (3,)), "pos": TensorSpec(I32, ()),
             "cache": TensorSpec(F32, (2, 16, 4)), "w": TensorSpec(F32, (6, 8)), "g": TensorSpec(F32, (8,)),
             "out": TensorSpec(F32, (3, 6)), "tok": TensorSpec(I32, (3,))}
    b = k.bind(specs)
    assert b.symbols == {"V": 50, "T": 3, "S": 16}
    assert b.shapes["both"] == TensorSpec(F32, (2, 6, 4))
    assert b.shapes["wide"] == TensorSpec(DType.FLOAT64, (2, 6, 4))
    assert b.shapes["scores"] == TensorSpec(F32, (2, 3, 3))
    assert b.shapes["tok"] == TensorSpec(I32, (3,))


def test_attributes_in_the_ast():
    src = kernel("  SLICE x axis = 1 start=p size=N -> y\n  RESHAPE x shape=[N, -1, 2] -> r\n  CAST x dtype=int -> c\n"
                 "  ROPE r 0 axis=0 base=1e4 -> y2\n  COPY x -> y",
                 "GPU_PARAM x float[N, 8]\nGPU_PARAM p int\nGPU_PARAM y float[N, N]\nGPU_PARAM y2 float[]")
    from primitive_lang.parser import parse

    body = parse(src).kernels[0].kernel.body
    s = body[0]
    assert s.axis == 1 and s.attrs == (Attr("axis", 1, Pos(7, 11)), Attr("start", "p", Pos(7, 20)),
                                       Attr("size", "N", Pos(7, 28)))
    assert s.attr("start").value == "p" and s.attr("nope") is None
    assert dict(s.attributes) == {a.name: a for a in s.attrs}
    assert body[1].attrs[0].value == ("N", -1, 2) and body[1].axis is None
    assert body[2].attrs[0].value == "int"
    assert body[3].attrs[1].value == 1e4 and isinstance(body[3].attrs[1].value, float)


def test_a_param_may_be_called_like_an_attribute():
    src = kernel("  SLICE axis axis=0 start=shape size=2 -> dtype", "GPU_PARAM axis float[4]\nGPU_PARAM shape int\n"
                 "GPU_PARAM dtype float[2]")
    assert problems(src) == []


def _case(body: str, params: str = "GPU_PARAM x float[4, 8]\nGPU_PARAM y float[4, 8]") -> str:
    return kernel(body, params)


P = "GPU_PARAM x float[4, 8]\nGPU_PARAM p int\nGPU_PARAM f float\nGPU_PARAM y float[]"

# (code, source, line, column): line 5 is the first statement under the two default params
ERRORS = [
    # attributes
    ("attribute", _case("  RESHAPE x shape=[8, 4] shape=[32] -> y"), 5, 26),
    ("attribute", _case("  SOFTMAX x axis=0 axis=1 -> y"), 5, 20),
    ("attribute", _case("  COPY x nope=3 -> y"), 5, 10),
    ("attribute", _case("  SOFTMAX x eps=1e-5 -> y"), 5, 13),
    ("attribute", _case("  RESHAPE x -> y"), 5, 3),
    ("attribute", _case("  SLICE x axis=0 start=1 -> y"), 5, 3),
    ("attribute", _case("  RMSNORM x x -> y"), 5, 3),
    ("attribute", _case("  SOFTMAX x axis=last -> y"), 5, 13),
    ("attribute", _case("  SOFTMAX x axis=1.0 -> y"), 5, 13),
    ("attribute", _case("  CAST x dtype=float8 -> y"), 5, 10),
    ("attribute", _case("  CAST x dtype=[4] -> y"), 5, 10),
    ("attribute", _case("  RESHAPE x shape=4 -> y"), 5, 13),
    ("attribute", _case("  RESHAPE x shape=[M, 8] -> y"), 5, 13),
    ("attribute", _case("  RESHAPE x shape=[0, 32] -> y"), 5, 13),
    ("attribute", _case("  RESHAPE x shape=[-1, -1] -> y"), 5, 13),
    ("attribute", _case("  PERMUTE x axes=[a, 0] -> y"), 5, 13),
    ("attribute", _case("  SLICE x axis=0 start=-1 size=2 -> y"), 5, 18),
    ("attribute", _case("  SLICE x axis=0 start=1.5 size=2 -> y"), 5, 18),
    ("attribute", _case("  SLICE x axis=0 start=0 size=0 -> y"), 5, 26),
    ("attribute", _case("  SLICE x axis=0 start=0 size=[2] -> y"), 5, 26),
    ("attribute", _case("  RMSNORM x x eps=x -> y"), 5, 15),
    ("attribute", _case("  RMSNORM x g eps=-1e-5 -> y", "GPU_PARAM x float[4, 8]\nGPU_PARAM g float[8]\n"
                        "GPU_PARAM y float[]"), 6, 15),
    ("attribute", _case("  ROPE x 0 axis=0 base=0 -> y"), 5, 19),
    ("attribute", _case("  ROPE x 0 axis=0 base=1e999 -> y", "GPU_PARAM x float64[4, 8]\nGPU_PARAM y float64[]"),
     5, 19),
    ("axis", _case("  SLICE x start=0 size=2 -> y"), 5, 3),
    ("axis", _case("  GATHER x x axis=0 -> y"), 5, 3),
    ("axis", _case("  ARGMAX x -> y"), 5, 3),
    ("axis", _case("  ARGMAX x axis=2 -> y"), 5, 3),
    ("axis", _case("  PERMUTE x axes=[0] -> y"), 5, 13),
    ("axis", _case("  PERMUTE x axes=[0, 2] -> y"), 5, 13),
    ("axis", _case("  PERMUTE x axes=[1, -1] -> y"), 5, 13),
    ("axis", _case("  ROPE x 0 axis=1 base=1e4 -> y"), 5, 3),
    ("axis", _case("  ROPE x 0 axis=-1 base=1e4 -> y"), 5, 3),
    ("axis", _case("  CONCAT x x axis=2 -> y"), 5, 3),
    # operands
    ("operand", _case("  GATHER x 1 -> y"), 5, 12),
    ("operand", _case("  LINEAR x 2 -> y"), 5, 12),
    ("operand", _case("  ROPE 1 2 axis=0 base=1e4 -> y"), 5, 8),
    ("dtype", _case("  ROPE x 2.5 axis=0 base=1e4 -> y"), 5, 10),
    ("literal", _case("  CAUSAL_MASK x 9223372036854775808 -> y"), 5, 17),
    ("dtype", _case("  CAUSAL_MASK x f -> y", P), 7, 17),
    ("shape", _case("  CAUSAL_MASK x i -> y", "GPU_PARAM x float[4, 4]\nGPU_PARAM i int[4]\nGPU_PARAM y float[]"), 6, 17),
    ("dtype", _case("  SLICE x axis=0 start=f size=1 -> y", P), 7, 18),
    ("shape", _case("  SLICE x axis=0 start=x size=1 -> y", "GPU_PARAM x int[4, 8]\nGPU_PARAM y int[]"), 5, 18),
    ("undeclared", _case("  SLICE x axis=0 start=q size=1 -> y"), 5, 18),
    ("read-before-write", _case("  SLICE x axis=0 start=i size=1 -> y\n  ARGMAX x axis=0 -> i"), 5, 18),
    ("read-before-write", _case("  SLICE_WRITE x axis=0 start=0 -> t\n  COPY t -> y"), 5, 35),
    # dtypes
    ("dtype", _case("  GATHER x x -> y"), 5, 12),
    ("dtype", _case("  RSQRT i -> y", "GPU_PARAM i int[4]\nGPU_PARAM y float[4]"), 5, 3),
    ("dtype", _case("  SILU i -> y", "GPU_PARAM i int[4]\nGPU_PARAM y float[4]"), 5, 3),
    ("dtype", _case("  RMSNORM x g eps=0 -> y", "GPU_PARAM x float[4, 8]\nGPU_PARAM g float64[8]\n"
                    "GPU_PARAM y float[]"), 6, 3),
    ("dtype", _case("  LINEAR x w -> y", "GPU_PARAM x float[4, 8]\nGPU_PARAM w float16[2, 8]\n"
                    "GPU_PARAM y float[]"), 6, 3),
    ("dtype", _case("  CONCAT x i axis=0 -> y", "GPU_PARAM x float[4]\nGPU_PARAM i int[4]\nGPU_PARAM y float[]"), 6, 3),
    ("dtype", _case("  SLICE_WRITE i axis=0 start=0 -> y", "GPU_PARAM i int[2, 8]\nGPU_PARAM y float[4, 8]"), 5, 3),
    ("dtype", _case("  CAST x dtype=int -> y"), 5, 23),
    ("dtype", _case("  ARGMAX x axis=1 -> y", "GPU_PARAM x float[4, 8]\nGPU_PARAM y int64[4]"), 5, 22),
    ("literal", _case("  RMSNORM x g eps=1e9 -> y", "GPU_PARAM x float16[4, 8]\nGPU_PARAM g float16[8]\n"
                      "GPU_PARAM y float16[]"), 6, 15),
    # shapes
    ("shape", _case("  RESHAPE x shape=[4, 4] -> y"), 5, 13),
    ("shape", _case("  RESHAPE x shape=[5, -1] -> y"), 5, 13),
    ("shape", _case("  SLICE x axis=1 start=6 size=3 -> y"), 5, 3),
    ("shape", _case("  SLICE x axis=1 start=p size=9 -> y", P), 7, 3),
    ("shape", _case("  SLICE x axis=0 start=0 size=2 -> y"), 5, 36),
    ("shape", _case("  SLICE_WRITE z axis=0 start=0 -> y", "GPU_PARAM z float[2, 7]\nGPU_PARAM y float[4, 8]"), 5, 3),
    ("shape", _case("  SLICE_WRITE z axis=0 start=0 -> y", "GPU_PARAM z float[8]\nGPU_PARAM y float[4, 8]"), 5, 3),
    ("shape", _case("  SLICE_WRITE z axis=0 start=3 -> y", "GPU_PARAM z float[2, 8]\nGPU_PARAM y float[4, 8]"), 5, 3),
    ("shape", _case("  SLICE_WRITE x axis=0 start=0 -> y", "GPU_PARAM x float[5, 8]\nGPU_PARAM y float[4, 8]"), 5, 3),
    ("shape", _case("  CONCAT x z axis=0 -> y", "GPU_PARAM x float[4, 8]\nGPU_PARAM z float[4, 7]\n"
                    "GPU_PARAM y float[]"), 6, 3),
    ("shape", _case("  CONCAT x z axis=0 -> y", "GPU_PARAM x float[4, 8]\nGPU_PARAM z float[8]\n"
                    "GPU_PARAM y float[]"), 6, 3),
    ("shape", _case("  CONCAT x x axis=0 -> y"), 5, 24),
    ("shape", _case("  GATHER s i -> y", "GPU_PARAM s float\nGPU_PARAM i int[2]\nGPU_PARAM y float[]"), 6, 10),
    ("shape", _case("  RMSNORM x g eps=1e-5 -> y", "GPU_PARAM x float[4, 8]\nGPU_PARAM g float[4]\n"
                    "GPU_PARAM y float[]"), 6, 3),
    ("shape", _case("  RMSNORM x g eps=1e-5 -> y", "GPU_PARAM x float[4, 8]\nGPU_PARAM g float[1, 8]\n"
                    "GPU_PARAM y float[]"), 6, 13),
    ("shape", _case("  ROPE x 0 axis=0 base=1e4 -> y", "GPU_PARAM x float[4, 7]\nGPU_PARAM y float[]"), 5, 3),
    ("shape", _case("  ROPE v 0 axis=0 base=1e4 -> y", "GPU_PARAM v float[8]\nGPU_PARAM y float[]"), 5, 8),
    ("shape", _case("  CAUSAL_MASK v 0 -> y", "GPU_PARAM v float[8]\nGPU_PARAM y float[]"), 5, 15),
    ("shape", _case("  LINEAR x w -> y", "GPU_PARAM x float[4, 8]\nGPU_PARAM w float[8, 4]\n"
                    "GPU_PARAM y float[]"), 6, 3),
    ("shape", _case("  LINEAR x w -> y", "GPU_PARAM x float[2, 4, 8]\nGPU_PARAM w float[3, 5, 8]\n"
                    "GPU_PARAM y float[]"), 6, 3),
    ("shape", _case("  LINEAR x v -> y", "GPU_PARAM x float[4, 8]\nGPU_PARAM v float[8]\n"
                    "GPU_PARAM y float[]"), 6, 12),
    ("shape", _case("  LINEAR x x -> y"), 5, 17),
    ("limit", _case("  GATHER t i -> y", "GPU_PARAM t float[2, 2, 2, 2, 2]\nGPU_PARAM i int[1, 1, 1, 1, 1]\n"
                    "GPU_PARAM y float[]"), 6, 17),
    ("limit", _case("  RESHAPE x shape=[1, 1, 1, 1, 1, 1, 1, 1, 32] -> y"), 5, 13),
    ("scalar-dest", _case("  SLICE_WRITE x axis=0 start=0 -> s\n  COPY x -> y", "GPU_PARAM x float[1]\n"
                          "GPU_PARAM s float\nGPU_PARAM y float[]"), 6, 35),
]


@pytest.mark.parametrize("code, source, line, column", ERRORS, ids=[f"{e[0]}-{i}" for i, e in enumerate(ERRORS)])
def test_each_v2_error_is_reported_at_its_place(code, source, line, column):
    assert (code, line, column) in problems(source)


def test_attribute_messages_say_what_is_wrong():
    def message(body, params="GPU_PARAM x float[4, 8]\nGPU_PARAM y float[]"):
        from primitive_lang import PrimitiveError

        with pytest.raises(PrimitiveError) as info:
            compile_source(_case(body, params))
        return [d.message for d in info.value.diagnostics]

    assert message("  COPY x nope=3 -> y") == ["COPY has no attribute nope= (it takes: none)"]
    assert message("  SLICE x axis=0 start=0 sise=2 -> y") == [
        "SLICE needs size=: an integer (at least 1) or a dimension symbol of the kernel",
        "SLICE has no attribute sise= (it takes: axis=, start=, size=)"]
    assert message("  SOFTMAX x axis=0 axis=1 -> y") == ["axis= is written twice"]
    assert message("  CAST x dtype=bool -> y") == [
        "dtype= takes a dtype (float16, float32, float64, int32, int64, float, int), got the name bool"]
    assert message("  RESHAPE x shape=[M, 8] -> y") == [
        "shape=: M is not a dimension symbol of this kernel (a symbol must appear in a param's declared dimensions)"]
    assert message("  SLICE x axis=1 start=6 size=3 -> y") == [
        "SLICE [6, 9) along axis 1 lies outside x [4, 8] (8 along that axis)"]
    assert message("  PERMUTE x axes=[0, 0] -> y") == ["PERMUTE axes=[0, 0] is not a permutation of the axes 0 to 1"]


def test_a_spoilt_attribute_causes_no_cascade():
    # the bad SLICE poisons t; its later uses are not reported again
    assert problems(_case("  SLICE x axis=0 start=-2 size=1 -> t\n  RELU t -> t\n  COPY t -> y")) == [
        ("attribute", 5, 18)]


BIND_CASES = [
    # a symbol in a shape= that bind resolves, and the element count checked there
    ("  RESHAPE x shape=[N, 2] -> y", "GPU_PARAM x float[M]\nGPU_PARAM y float[N, 2]",
     {"x": (8,), "y": (4, 2)}, None),
    ("  RESHAPE x shape=[N, 2] -> y", "GPU_PARAM x float[M]\nGPU_PARAM y float[N, 2]",
     {"x": (9,), "y": (4, 2)}, ("shape", 5, 13)),
    ("  RESHAPE x shape=[-1, 2] -> y", "GPU_PARAM x float[M]\nGPU_PARAM y float[]",
     {"x": (7,), "y": (3, 2)}, ("shape", 5, 13)),
    ("  SLICE x axis=0 start=2 size=N -> y", "GPU_PARAM x float[]\nGPU_PARAM y float[N]",
     {"x": (5,), "y": (3,)}, None),
    ("  SLICE x axis=0 start=3 size=N -> y", "GPU_PARAM x float[]\nGPU_PARAM y float[N]",
     {"x": (5,), "y": (3,)}, ("shape", 5, 3)),
    ("  SLICE x axis=2 start=0 size=1 -> y", "GPU_PARAM x float[]\nGPU_PARAM y float[]",
     {"x": (5,), "y": (1,)}, ("axis", 5, 3)),
    ("  SLICE_WRITE x axis=0 start=p -> y", "GPU_PARAM x float[]\nGPU_PARAM p int[]\nGPU_PARAM y float[]",
     {"x": (2,), "p": (1,), "y": (4,)}, ("shape", 6, 24)),
    ("  PERMUTE x axes=[1, 0] -> y", "GPU_PARAM x float[]\nGPU_PARAM y float[]",
     {"x": (2, 3, 4), "y": (3, 2)}, ("axis", 5, 13)),
    ("  CONCAT x x axis=1 -> y", "GPU_PARAM x float[]\nGPU_PARAM y float[]", {"x": (2, 3), "y": (2, 6)}, None),
    ("  CONCAT x x axis=1 -> y", "GPU_PARAM x float[]\nGPU_PARAM y float[]", {"x": (2, 3), "y": (4, 3)},
     ("shape", 5, 24)),
    ("  LINEAR x w -> y", "GPU_PARAM x float[]\nGPU_PARAM w float[]\nGPU_PARAM y float[]",
     {"x": (2, 3), "w": (4, 5), "y": (2, 4)}, ("shape", 6, 3)),
    ("  ROPE x 0 axis=0 base=1e4 -> y", "GPU_PARAM x float[]\nGPU_PARAM y float[]",
     {"x": (2, 5), "y": (2, 5)}, ("shape", 5, 3)),
]


@pytest.mark.parametrize("body, params, shapes, problem", BIND_CASES)
def test_bind_decides_what_compile_time_left_open(body, params, shapes, problem):
    k = compile_source(kernel(body, params)).kernels[0]
    dtypes = {p.name: p.type.dtype for p in k.params}
    specs = {n: TensorSpec(dtypes[n], s) for n, s in shapes.items()}
    if problem is None:
        k.bind(specs)
        return
    with pytest.raises(BindError) as info:
        k.bind(specs)
    assert [(d.code, d.line, d.column) for d in info.value.diagnostics] == [problem]


def _cost(body: str, params: str, shapes: dict):
    k = compile_source(kernel(body, params)).kernels[0]
    dtypes = {p.name: p.type.dtype for p in k.params}
    return k.bind({n: TensorSpec(dtypes[n], s) for n, s in shapes.items()}).cost


def test_cost_of_data_movement_counts_what_moves():
    # GATHER: the ids and the rows picked (3 rows of 8 float32), not the 1000-row table
    c = _cost("  GATHER t i -> y", "GPU_PARAM t float[]\nGPU_PARAM i int[]\nGPU_PARAM y float[]",
              {"t": (1000, 8), "i": (3,), "y": (3, 8)})
    assert (c.flops, c.bytes_read, c.bytes_written) == (0, 3 * 4 + 3 * 8 * 4, 3 * 8 * 4)
    # SLICE reads its window (and the start), SLICE_WRITE writes only its window
    c = _cost("  SLICE x axis=0 start=p size=2 -> y\n  SLICE_WRITE y axis=0 start=0 -> z",
              "GPU_PARAM x float[]\nGPU_PARAM p int64\nGPU_PARAM y float[]\nGPU_PARAM z float[]",
              {"x": (100, 4), "p": (), "y": (2, 4), "z": (50, 4)})
    assert (c.bytes_read, c.bytes_written) == ((32 + 8) + 32, 32 + 32)
    # RESHAPE moves nothing; PERMUTE, CONCAT and CAST read and write everything
    c = _cost("  RESHAPE x shape=[8] -> r\n  PERMUTE x axes=[1, 0] -> y\n  CONCAT x x axis=0 -> z\n"
              "  CAST x dtype=float64 -> w\n  COPY r -> v",
              "GPU_PARAM x float[]\nGPU_PARAM y float[]\nGPU_PARAM z float[]\nGPU_PARAM w float64[]\n"
              "GPU_PARAM v float[]", {"x": (2, 4), "y": (4, 2), "z": (4, 4), "w": (2, 4), "v": (8,)})
    assert c.flops == 8  # CAST: one conversion per element
    assert (c.bytes_read, c.bytes_written) == (32 + 64 + 32 + 32, 32 + 64 + 64 + 32)
    assert c.peak_temp_bytes == 32  # the local r


def test_cost_of_the_fused_ops():
    shapes = {"x": (2, 3, 8), "w": (8,), "m": (5, 8), "y": (2, 3, 8), "z": (2, 3, 5), "a": (2, 3)}
    params = ("GPU_PARAM x float[]\nGPU_PARAM w float[]\nGPU_PARAM m float[]\nGPU_PARAM y float[]\n"
              "GPU_PARAM z float[]\nGPU_PARAM a int[]")
    n = 2 * 3 * 8
    assert _cost("  RMSNORM x w eps=1e-6 -> y", params, shapes).flops == 4 * n + 4 * 6
    assert _cost("  ROPE x 0 axis=1 base=1e4 -> y", params, shapes).flops == 3 * n + 3 * 3 * 4
    assert _cost("  LINEAR x m -> z", params, shapes).flops == 2 * (2 * 3 * 5) * 8
    assert _cost("  CAUSAL_MASK x 4 -> y", params, shapes).flops == n
    assert _cost("  ARGMAX x axis=2 -> a", params, shapes).flops == n
    assert _cost("  RSQRT x -> y\n  SILU x -> y", params, shapes).flops == 2 * n + 4 * n
    c = _cost("  ROPE x p axis=0 base=1e4 -> y", params + "\nGPU_PARAM p int64", {**shapes, "p": ()})
    assert c.bytes_read == n * 4 + 8


def test_the_decoder_layer_example_binds_at_smollm2_sizes():
    from pathlib import Path

    src = (Path(__file__).resolve().parents[3] / "examples" / "primitives" / "decoder_layer.pxp").read_text()
    k = compile_source(src).kernels[0]
    f = {"x": (1, 576), "attn_norm": (576,), "wq": (576, 576), "wk": (192, 576), "wv": (192, 576),
         "wo": (576, 576), "ffn_norm": (576,), "w_gate": (1536, 576), "w_up": (1536, 576), "w_down": (576, 1536),
         "k_cache": (3, 2048, 64), "v_cache": (3, 2048, 64)}
    specs = {n: TensorSpec(F32, s) for n, s in f.items()}
    specs |= {"pos": TensorSpec(I32, ()), "scale": TensorSpec(F32, ())}
    b = k.bind(specs)
    assert b.shapes["qh"].shape == (1, 9, 64) and b.shapes["qt"].shape == (3, 3, 1, 64)
    assert b.shapes["scores"].shape == (3, 3, 1, 2048)
    assert {n for n, d in k.directions.items() if d is not Direction.IN} == {"x", "k_cache", "v_cache"}
    linear = 2 * (576 * 576 * 2 + 192 * 576 * 2 + 1536 * 576 * 3)
    assert b.cost.flops > linear
