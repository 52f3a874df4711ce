"""The parse step: lines → AST, syntax errors as sentences at the right place, recovery."""

from __future__ import annotations

import pytest
from pl_testlib import SEED, kernel, problems

from primitive_lang import PrimitiveError, compile_source, limits
from primitive_lang.ast import DType, Name, Number, OpStmt, ParamType, Pos, Repeat, WorkloadHint
from primitive_lang.parser import parse


def messages(source: str) -> list[str]:
    with pytest.raises(PrimitiveError) as info:
        compile_source(source)
    return [d.message for d in info.value.diagnostics]


@pytest.mark.parametrize("arrow", ["→", "->"])
def test_seed_example_is_accepted_as_written(arrow):
    program = compile_source(SEED.replace("→", arrow))
    k = program.kernel("train_model")
    assert [p.name for p in k.params] == ["weights", "inputs", "outputs"]
    assert all(p.type == ParamType(DType.FLOAT32, None) for p in k.params)
    (stmt,) = k.ast.body
    assert stmt == OpStmt("PARALLEL_MATMUL", (Name("weights", Pos(7, 21)), Name("inputs", Pos(7, 29))), None,
                          Name("outputs", Pos(7, 37 + len(arrow))), Pos(7, 5))
    assert k.ast.pos == Pos(2, 1)


def test_every_line_kind_becomes_the_ast_it_describes():
    src = """\
GPU_KERNEL attention   # trailing comment
GPU_CLASS REALTIME
GPU_PRIORITY 7
GPU_PARAM q float16[B, 64]
GPU_PARAM scale float64
GPU_PARAM n int
GPU_PARAM out float16[ B , 64 ]
	GPU_THREAD_CODE :
  REPEAT 2:
    REPEAT 3:
      SOFTMAX q axis = -1 -> t
    END_REPEAT
    MUL t -2.5e-1 → t
  END_REPEAT
  ADD t 3 -> out
GPU_END"""  # no final newline
    (pk,) = parse(src).kernels
    k = pk.kernel
    assert (k.name, k.class_hint, k.priority) == ("attention", WorkloadHint.REALTIME, 7)
    assert [(p.name, p.type) for p in k.params] == [
        ("q", ParamType(DType.FLOAT16, ("B", 64))), ("scale", ParamType(DType.FLOAT64, ())),
        ("n", ParamType(DType.INT32, ())), ("out", ParamType(DType.FLOAT16, ("B", 64)))]
    outer, last = k.body
    assert isinstance(outer, Repeat) and outer.count == 2 and outer.pos == Pos(9, 3)
    inner, mul = outer.body
    assert inner.count == 3 and inner.body[0].axis == -1 and inner.body[0].op == "SOFTMAX"
    assert mul.args[1] == Number(-0.25, False, Pos(13, 11))
    assert last.args[1] == Number(3, True, Pos(15, 9))


def test_crlf_line_ends_and_a_byte_order_mark_are_accepted():
    src = SEED.replace("\n", "\r\n").encode("utf-8")
    assert compile_source(b"\xef\xbb\xbf" + src).kernel("train_model").ast.body[0].pos == Pos(7, 5)


def test_names_that_look_like_keywords_stay_names_where_a_name_stands():
    src = kernel("ADD axis REPEAT → float", "GPU_PARAM axis float[2]\nGPU_PARAM REPEAT float[2]\nGPU_PARAM float float[2]")
    k = compile_source(src).kernels[0]
    assert [p.name for p in k.params] == ["axis", "REPEAT", "float"]
    assert k.ast.body[0].dest.name == "float"


@pytest.mark.parametrize("line, column, expected", [
    ("GPU_PARAM x", 12, "expected a type (float, float16, float32, float64, int, int32, int64), got the end of the line"),
    ("GPU_PARAM x flaot[]", 13, "expected a type (float, float16, float32, float64, int, int32, int64), got 'flaot'"),
    ("GPU_PARAM x float[3,", 21, "expected a name or a whole number, got the end of the line"),
    ("GPU_CLASS FAST", 11, "expected REALTIME, INTERACTIVE, THROUGHPUT or BATCH, got 'FAST'"),
    ("GPU_PRIORITY high", 14, "expected an integer, got 'high'"),
])
def test_header_syntax_errors_say_what_was_expected_where(line, column, expected):
    src = f"GPU_KERNEL k\n{line}\nGPU_PARAM y float[2]\nGPU_THREAD_CODE:\n  FILL 1 -> y\nGPU_END\n"
    with pytest.raises(PrimitiveError) as info:
        compile_source(src)
    (d,) = info.value.diagnostics
    assert (d.code, d.line, d.column, d.message) == ("syntax", 2, column, expected)


@pytest.mark.parametrize("stmt, column, expected", [
    ("ADD x y y", 12, "expected a name, a number, an attribute (name=value) or '→', got the end of the line"),
    ("ADD x y → y;", 14, "expected the end of the line, got the character ';'"),
    ("ADD x y →", 12, "expected a name, got the end of the line"),
    ("SOFTMAX x axis=-1 y -> y", 21, "expected an attribute (name=value) or '→', got 'y'"),
    ("RESHAPE x shape=[4, 2.5] -> y", 23, "expected a name or an integer, got '2.5'"),
    ("RESHAPE x shape=[4 8] -> y", 22, "expected ']' or ',', got '8'"),
    ("CAST x dtype= -> y", 17, "expected a name, a number or '[', got '->'"),
    ("REPEAT 3", 11, "expected ':', got the end of the line"),
    ("→ y", 3, "expected a keyword (GPU_KERNEL, GPU_PARAM, GPU_CLASS, GPU_PRIORITY, GPU_THREAD_CODE, GPU_END, "
              "REPEAT, END_REPEAT) or an op name, got '→'"),
])
def test_statement_syntax_errors_say_what_was_expected_where(stmt, column, expected):
    with pytest.raises(PrimitiveError) as info:
        compile_source(kernel(f"  {stmt}\n  COPY x -> y"))
    d = info.value.diagnostics[0]
    assert (d.code, d.line, d.column, d.message) == ("syntax", 5, column, expected)


def test_a_bad_word_at_the_start_of_a_line_is_an_unknown_op_with_a_hint():
    src = kernel("  ADDD x y -> y\n  gpu_end x -> y\n  FROB x -> y;")
    assert problems(src) == [("unknown-op", 5, 3), ("unknown-op", 6, 3), ("unknown-op", 7, 3)]
    assert messages(src) == ["unknown op ADDD (did you mean ADD?)", "unknown op gpu_end (did you mean GPU_END?)",
                             "unknown op FROB"]


@pytest.mark.parametrize("src, expected", [
    ("GPU_KERNEL k\nGPU_PARAM y float[2]\nGPU_THREAD_CODE:\n  FILL 1 -> y\n",
     [("syntax", 5, 1, "expected GPU_END before end of input (kernel k opened at line 1 is not closed)")]),
    (kernel("  REPEAT 2:\n  FILL 1 -> y"),
     [("syntax", 7, 1, "expected END_REPEAT before GPU_END (REPEAT at line 5 is not closed)")]),
    (kernel("  FILL 1 -> y\n  END_REPEAT"), [("syntax", 6, 3, "END_REPEAT without a REPEAT to close")]),
    ("FILL 1 -> y\n" + kernel("  COPY x -> y"),
     [("syntax", 1, 1, "expected GPU_KERNEL: every line must be inside a GPU_KERNEL ... GPU_END block")]),
    ("GPU_KERNEL k\nGPU_PARAM y float[2]\nFILL 1 -> y\nGPU_END\n",
     [("syntax", 3, 1, "expected GPU_THREAD_CODE: before the first statement")]),
    (kernel("  FILL 1 -> y\nGPU_PARAM z float"),
     [("syntax", 6, 1, "header lines (GPU_PARAM, GPU_CLASS, GPU_PRIORITY) must come before GPU_THREAD_CODE:")]),
    ("GPU_KERNEL a\nGPU_PARAM y float[2]\nGPU_THREAD_CODE:\n  FILL 1 -> y\n" + kernel("  COPY x -> y", name="b"),
     [("syntax", 5, 1, "expected GPU_END before GPU_KERNEL (kernel a opened at line 1 is not closed)")]),
    ("GPU_KERNEL a\nGPU_PARAM y float[2]\nGPU_END\n", [("no-output", 1, 1, "kernel a writes no param, so it has no output"),
                                                      ("syntax", 3, 1, "expected GPU_THREAD_CODE: before GPU_END")]),
    ("", [("syntax", 1, 1, "expected GPU_KERNEL: the source holds no kernel")]),
    ("# only a comment\n\n", [("syntax", 1, 1, "expected GPU_KERNEL: the source holds no kernel")]),
])
def test_block_structure_errors(src, expected):
    with pytest.raises(PrimitiveError) as info:
        compile_source(src)
    got = [(d.code, d.line, d.column, d.message) for d in info.value.diagnostics]
    assert got == expected


def test_repeated_headers_and_a_priority_out_of_range():
    src = kernel("  COPY x -> y", "GPU_CLASS BATCH\nGPU_CLASS REALTIME\nGPU_PRIORITY 101\nGPU_PRIORITY 5\n"
                 "GPU_PARAM x float[2]\nGPU_PARAM y float[2]")
    assert problems(src) == [("duplicate-header", 3, 1), ("value", 4, 1), ("duplicate-header", 5, 1)]


def test_every_bad_line_is_reported_and_the_other_kernels_are_still_validated():
    src = ("GPU_KERNEL a\nGPU_PARAM x\nGPU_PARAM y float[2]\nGPU_THREAD_CODE:\n"
           "  ADD x y y\n"        # 5: syntax
           "  COPY y -> t\n"
           "  RELU t -> y\n"
           "  MUL y 2 → y ;\n"    # 8: syntax
           "GPU_END\n"
           "GPU_KERNEL b\nGPU_PARAM p int[3]\nGPU_PARAM q float[3]\nGPU_THREAD_CODE:\n"
           "  EXP p -> q\n"       # 14: dtype (EXP needs floats)
           "  COPY nowhere -> q\n"  # 15: undeclared
           "GPU_END\n")
    assert problems(src) == [("syntax", 2, 12), ("syntax", 5, 12), ("syntax", 8, 15), ("dtype", 14, 3),
                             ("undeclared", 15, 8)]


def test_names_on_a_broken_line_cause_no_further_reports():
    # `h` is defined on the broken line 5; its reads must not be "read before write".
    src = kernel("  PARALLEL_MATMUL x y -> h extra\n  RELU h -> y\n  ADD h h -> y")
    assert problems(src) == [("syntax", 5, 28)]


def test_an_over_long_number_is_a_limit_error_and_the_next_line_still_parses():
    digits = "9" * (limits.MAX_NUMBER_LEN + 1)
    src = kernel(f"  MUL x {digits} -> y\n  FOO x -> y")
    assert problems(src) == [("limit", 5, 9), ("unknown-op", 6, 3)]


def test_garbage_characters_are_quoted_not_dumped():
    with pytest.raises(PrimitiveError) as info:
        compile_source("GPU_KERNEL k\x00\n\x1b[31m\nGPU_PARAM é float\n")
    text = " ".join(d.message for d in info.value.diagnostics)
    assert "'\\x00'" in text and "'\\x1b'" in text and "'é'" in text
    for internal in ("Token(", "$END", "_NL", "Traceback", "LSQB", "UnexpectedToken"):
        assert internal not in text


def test_syntax_errors_stop_after_the_diagnostic_limit():
    src = "GPU_KERNEL k\n" + "ADD a b c\n" * (limits.MAX_DIAGNOSTICS + 50)
    with pytest.raises(PrimitiveError) as info:
        compile_source(src)
    diags = info.value.diagnostics
    assert len(diags) == limits.MAX_DIAGNOSTICS + 1
    assert diags[-1].code == "limit" and "not" in diags[-1].message
