"""Validation: every op accepted with the right dtype and shape, every error code at its place,
directions, inferred locals, and every problem reported rather than only the first."""

from __future__ import annotations

from pathlib import Path

import pytest
from pl_testlib import kernel, problems

from primitive_lang import Direction, PrimitiveError, compile_source, limits
from primitive_lang.ast import DType, ParamType
from primitive_lang.ops import OPS

V2_OPS = {"GATHER", "RESHAPE", "PERMUTE", "SLICE", "SLICE_WRITE", "CONCAT", "CAST", "ARGMAX", "RSQRT", "SILU",
          "RMSNORM", "ROPE", "CAUSAL_MASK", "LINEAR"}

ROOT = Path(__file__).resolve().parents[3]

ALL_OPS = """\
GPU_KERNEL all_ops
GPU_PARAM a float[4, 8]
GPU_PARAM b float[8, 3]
GPU_PARAM v float[8]
GPU_PARAM s float
GPU_PARAM i int64[4, 8]
GPU_PARAM out float[4, 3]
GPU_PARAM acc float[4, 8]
GPU_THREAD_CODE:
  PARALLEL_MATMUL a b -> m
  ADD a v -> e1
  SUB e1 1 -> e1
  MUL 2 e1 -> e1
  DIV e1 s -> e1
  MAX e1 0.5 -> e1
  MIN e1 v -> e1
  RELU e1 -> u
  GELU u -> u
  SIGMOID u -> u
  TANH u -> u
  EXP u -> u
  LOG u -> u
  SQRT u -> u
  ABS u -> u
  NEG u -> u
  ABS i -> ia
  NEG ia -> ia
  RELU ia -> ia
  REDUCE_SUM i axis=0 -> isum
  REDUCE_MAX i axis=1 -> imax
  SOFTMAX a -> sm
  SOFTMAX a axis=0 -> sm0
  REDUCE_SUM a axis=1 -> r1
  REDUCE_MAX a axis=-2 -> r2
  REDUCE_MEAN a axis=-1 -> r3
  TRANSPOSE a -> at
  COPY m -> out
  FILL 0.25 -> m
  FILL s -> m
  ADD acc u -> acc
GPU_END
"""


def test_every_op_is_accepted_with_its_result_dtype_and_shape():
    k = compile_source(ALL_OPS).kernel("all_ops")
    used = {s.stmt.op for s in k.steps}
    assert used == set(OPS) - V2_OPS  # the v2 ops: test_ops_v2.py
    f32 = DType.FLOAT32
    assert dict(k.locals) == {
        "m": ParamType(f32, (4, 3)), "e1": ParamType(f32, (4, 8)), "u": ParamType(f32, (4, 8)),
        "ia": ParamType(DType.INT64, (4, 8)), "isum": ParamType(DType.INT64, (8,)),
        "imax": ParamType(DType.INT64, (4,)), "sm": ParamType(f32, (4, 8)), "sm0": ParamType(f32, (4, 8)),
        "r1": ParamType(f32, (4,)), "r2": ParamType(f32, (8,)), "r3": ParamType(f32, (4,)),
        "at": ParamType(f32, (8, 4))}
    assert dict(k.directions) == {"a": Direction.IN, "b": Direction.IN, "v": Direction.IN, "s": Direction.IN,
                                  "i": Direction.IN, "out": Direction.OUT, "acc": Direction.INOUT}
    assert (k.statement_count, k.executed_statement_count) == (31, 31)


def test_directions_follow_the_first_access_in_execution_order():
    src = kernel("  COPY x -> y\n  ADD y x -> y\n  REPEAT 3:\n    ADD z x -> z\n  END_REPEAT\n  COPY w -> t",
                 "GPU_PARAM x float[2]\nGPU_PARAM y float[2]\nGPU_PARAM z float[2]\nGPU_PARAM w float[2]")
    k = compile_source(src).kernels[0]
    assert dict(k.directions) == {"x": "in", "y": "out", "z": "inout", "w": "in"}
    assert (k.statement_count, k.executed_statement_count) == (4, 6)


def test_symbolic_dims_flow_through_and_unknown_shapes_stay_unknown():
    src = kernel("  PARALLEL_MATMUL x w -> h\n  ADD h b -> h\n  PARALLEL_MATMUL x anyw -> g\n  REDUCE_SUM h axis=0 -> r\n"
                 "  COPY h -> y",
                 "GPU_PARAM x float[B, K]\nGPU_PARAM w float[K, 16]\nGPU_PARAM b float[16]\n"
                 "GPU_PARAM anyw float[]\nGPU_PARAM y float[B, 16]")
    k = compile_source(src).kernels[0]
    assert k.locals["h"] == ParamType(DType.FLOAT32, ("B", 16))
    assert k.locals["g"] == ParamType(DType.FLOAT32, None)
    assert k.locals["r"] == ParamType(DType.FLOAT32, (16,))


def _case(body: str, params: str = "GPU_PARAM x float[4, 8]\nGPU_PARAM y float[4, 8]") -> str:
    return kernel(body, params)


# (code, source, line, column): line 5 is the first statement of _case()
ERRORS = [
    ("unknown-op", _case("  FROB x -> y"), 5, 3),
    ("arity", _case("  ADD x -> y"), 5, 3),
    ("arity", _case("  FILL -> y"), 5, 3),
    ("operand", _case("  RELU 3 -> y"), 5, 8),
    ("operand", _case("  ADD 1 2 -> y"), 5, 3),
    ("axis", _case("  REDUCE_SUM x -> r\n  COPY x -> y"), 5, 3),
    ("axis", _case("  SOFTMAX x axis=2 -> y"), 5, 3),
    ("axis", _case("  ADD x y axis=0 -> y"), 5, 3),
    ("undeclared", _case("  ADD x nope -> y"), 5, 9),
    ("read-before-write", _case("  ADD x later -> y\n  COPY x -> later"), 5, 9),
    ("duplicate-param", _case("  COPY x -> y", "GPU_PARAM x float\nGPU_PARAM y float[2]\nGPU_PARAM x int"), 4, 1),
    ("duplicate-kernel", _case("  COPY x -> y") + _case("  COPY x -> y"), 7, 1),
    ("dtype", _case("  ADD x i -> y", "GPU_PARAM x float[4]\nGPU_PARAM i int[4]\nGPU_PARAM y float[4]"), 6, 3),
    ("dtype", _case("  SQRT i -> y", "GPU_PARAM i int[4]\nGPU_PARAM y float[4]"), 5, 3),
    ("dtype", _case("  DIV i 2 -> y", "GPU_PARAM i int[4]\nGPU_PARAM y int[4]"), 5, 3),
    ("dtype", _case("  ADD i 0.5 -> y", "GPU_PARAM i int[4]\nGPU_PARAM y int[4]"), 5, 9),
    ("dtype", _case("  COPY i -> y", "GPU_PARAM i int[4]\nGPU_PARAM y float[4]"), 5, 13),
    ("dtype", _case("  COPY x -> t\n  COPY i -> t\n  COPY t -> y",
                    "GPU_PARAM x float[4]\nGPU_PARAM i int[4]\nGPU_PARAM y float[4]"), 7, 13),
    ("dtype", _case("  FILL n -> y", "GPU_PARAM n int\nGPU_PARAM y float[4]"), 5, 3),
    ("dtype", _case("  PARALLEL_MATMUL x i -> y", "GPU_PARAM x float[4, 4]\nGPU_PARAM i int[4, 4]\n"
                    "GPU_PARAM y float[4, 4]"), 6, 3),
    ("shape", _case("  ADD x z -> y", "GPU_PARAM x float[4, 8]\nGPU_PARAM z float[3]\nGPU_PARAM y float[4, 8]"), 6, 3),
    ("shape", _case("  PARALLEL_MATMUL x x -> y"), 5, 3),
    ("shape", _case("  PARALLEL_MATMUL x v -> y", "GPU_PARAM x float[4, 8]\nGPU_PARAM v float[8]\n"
                    "GPU_PARAM y float[4]"), 6, 21),
    ("shape", _case("  TRANSPOSE v -> t\n  COPY v -> y", "GPU_PARAM v float[8]\nGPU_PARAM y float[8]"), 5, 13),
    ("shape", _case("  TRANSPOSE x -> y"), 5, 18),
    ("shape", _case("  COPY x -> t\n  REDUCE_SUM x axis=0 -> t\n  COPY x -> y"), 6, 26),
    ("shape", _case("  FILL 1 -> t\n  COPY x -> y"), 5, 13),
    ("shape", _case("  FILL x -> y"), 5, 8),
    ("literal", _case("  MUL x 3e40 -> y"), 5, 9),
    ("literal", _case("  MUL x 1e999 -> y", "GPU_PARAM x float64[2]\nGPU_PARAM y float64[2]"), 5, 9),
    ("literal", _case("  ADD i 2147483648 -> y", "GPU_PARAM i int[4]\nGPU_PARAM y int[4]"), 5, 9),
    ("literal", _case("  FILL 70000 -> y", "GPU_PARAM y float16[4]"), 4, 8),
    ("value", _case("  COPY x -> y", "GPU_PARAM x float[0, 2]\nGPU_PARAM y float[2]"), 2, 1),
    ("value", _case("  REPEAT 0:\n    COPY x -> y\n  END_REPEAT"), 5, 3),
    ("scalar-dest", _case("  COPY x -> s\n  COPY x -> y", "GPU_PARAM x float\nGPU_PARAM s float\n"
                          "GPU_PARAM y float[]"), 6, 13),
    ("no-output", _case("  COPY x -> t"), 1, 1),
    ("limit", _case("  COPY x -> y", "GPU_PARAM x float[1,1,1,1,1,1,1,1,1]\nGPU_PARAM y float[]"), 2, 1),
    ("limit", _case("  COPY x -> y", f"GPU_PARAM x float[{limits.MAX_ELEMENTS}, 2]\nGPU_PARAM y float[]"), 2, 1),
    ("limit", _case("  PARALLEL_MATMUL x z -> t\n  COPY x -> y",
                    "GPU_PARAM x float[65536, 1]\nGPU_PARAM z float[1, 65536]\nGPU_PARAM y float[]"), 6, 26),
    ("limit", _case("  COPY x -> y", f"GPU_PARAM {'p' * (limits.MAX_IDENTIFIER_LEN + 1)} float\n"
                    "GPU_PARAM x float\nGPU_PARAM y float[]"), 2, 1),
    ("limit", _case(f"  COPY x -> {'t' * (limits.MAX_IDENTIFIER_LEN + 1)}\n  COPY x -> y"), 5, 13),
    ("limit", _case(f"  REPEAT {limits.MAX_REPEAT_COUNT + 1}:\n    COPY x -> y\n  END_REPEAT"), 5, 3),
]


@pytest.mark.parametrize("code, source, line, column", ERRORS, ids=[f"{e[0]}-{i}" for i, e in enumerate(ERRORS)])
def test_each_error_code_is_reported_at_its_place(code, source, line, column):
    assert (code, line, column) in problems(source)


def test_every_code_is_documented_and_every_compile_code_is_triggered_above():
    from primitive_lang.errors import Code

    doc = (ROOT / "docs" / "language.md").read_text(encoding="utf-8")
    for code in Code:
        assert f"`{code.value}`" in doc, f"{code.value} is not documented"
    # syntax, encoding and duplicate-header: test_parser.py / test_compiler.py; bind-*: test_bind.py;
    # attribute: test_ops_v2.py
    elsewhere = {"syntax", "encoding", "duplicate-header", "attribute"}
    compile_codes = {c.value for c in Code if not c.value.startswith("bind-")}
    assert compile_codes - elsewhere == {e[0] for e in ERRORS}


def test_all_problems_are_reported_not_only_the_first():
    src = _case("  ADD x nope -> t\n  RELU 3 -> u\n  FROB x -> v\n  SQRT i -> w\n  COPY x -> y",
                "GPU_PARAM x float[4]\nGPU_PARAM i int[4]\nGPU_PARAM y float[4]")
    assert problems(src) == [("undeclared", 6, 9), ("operand", 7, 8), ("unknown-op", 8, 3), ("dtype", 9, 3)]


def test_a_poisoned_value_causes_no_cascade():
    # t is spoilt by the bad ADD; its later uses must not be reported again.
    src = _case("  ADD x nope -> t\n  RELU t -> t\n  COPY t -> y")
    assert problems(src) == [("undeclared", 5, 9)]


def test_symbol_against_size_is_left_for_bind_but_two_sizes_are_checked_now():
    ok = _case("  ADD x z -> y", "GPU_PARAM x float[N, 8]\nGPU_PARAM z float[4, 8]\nGPU_PARAM y float[4, 8]")
    assert problems(ok) == []
    bad = _case("  ADD x z -> y", "GPU_PARAM x float[N, 8]\nGPU_PARAM z float[4, 7]\nGPU_PARAM y float[4, 8]")
    assert problems(bad) == [("shape", 6, 3)]


def test_kernel_count_statement_count_depth_and_executed_limits():
    one = kernel("  COPY x -> y", "GPU_PARAM x float\nGPU_PARAM y float[]")
    src = "".join(one.replace("GPU_KERNEL k", f"GPU_KERNEL k{i}") for i in range(limits.MAX_KERNELS + 1))
    assert ("limit", 1 + 6 * limits.MAX_KERNELS, 1) in problems(src)

    many = kernel("  COPY x -> y\n" * (limits.MAX_STATEMENTS + 1), "GPU_PARAM x float\nGPU_PARAM y float[]")
    assert problems(many) == [("limit", 5 + limits.MAX_STATEMENTS, 3)]

    depth = limits.MAX_REPEAT_DEPTH + 1
    nested = kernel("  REPEAT 1:\n" * depth + "  COPY x -> y\n" + "  END_REPEAT\n" * depth,
                    "GPU_PARAM x float\nGPU_PARAM y float[]")
    assert problems(nested) == [("limit", 5 + limits.MAX_REPEAT_DEPTH, 3)]

    n = limits.MAX_EXECUTED_STATEMENTS // 2 + 1
    executed = kernel(f"  REPEAT {n}:\n    COPY x -> y\n    COPY x -> y\n  END_REPEAT",
                      "GPU_PARAM x float\nGPU_PARAM y float[]")
    assert problems(executed) == [("limit", 1, 1)]

    params = "\n".join(f"GPU_PARAM p{i} float" for i in range(limits.MAX_PARAMS + 1))
    assert ("limit", 2 + limits.MAX_PARAMS, 1) in problems(kernel("  COPY p0 -> y", params + "\nGPU_PARAM y float[]"))


def test_limits_never_exceed_the_wire_abi():
    import re

    text = (ROOT / "guest_driver" / "include" / "uapi" / "pxos_gpu.h").read_text(encoding="utf-8")
    header = dict(re.findall(r"#define (PXOS_MAX_\w+) (\d+)", text))
    assert limits.MAX_RANK <= int(header["PXOS_MAX_RANK"])
    assert limits.MAX_IDENTIFIER_LEN < int(header["PXOS_MAX_NAME"])  # room for the NUL
    assert limits.MAX_PARAMS <= int(header["PXOS_MAX_PARAMS"])
    assert limits.MAX_PARAMS <= int(header["PXOS_MAX_BINDINGS"])
    assert limits.MAX_KERNELS <= int(header["PXOS_MAX_KERNELS"])
    assert limits.MAX_SOURCE_BYTES <= int(header["PXOS_MAX_SOURCE_BYTES"])
    assert limits.MAX_ELEMENTS * 8 <= int(header["PXOS_MAX_BUFFER_BYTES"])
    from primitive_lang.errors import Code

    assert all(len(c.value) < 24 for c in Code)  # struct pxos_diag.code is char[24]


def test_error_str_is_the_first_message_and_a_count():
    with pytest.raises(PrimitiveError) as info:
        compile_source(_case("  ADD x nope -> t\n  RELU 3 -> u\n  COPY x -> y"))
    assert str(info.value) == "nope is not a param and is never written (and 1 more)"
