"""FastLexer against the reference: Lark's own contextual lexer over grammar.lark's terminals.

Both drive the same LALR parser and line builder; on any source they must build the same
kernels and find syntax errors on the same lines (columns may differ by where each lexer
splits a malformed number, e.g. ``3.5`` in a dimension list)."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pl_testlib import SEED

from primitive_lang.parser import make_lark, parse

ROOT = Path(__file__).resolve().parents[3]
REFERENCE = make_lark("contextual")

WORDS = ["GPU_KERNEL", "GPU_PARAM", "GPU_CLASS", "GPU_PRIORITY", "GPU_THREAD_CODE", "GPU_END", "REPEAT",
         "END_REPEAT", "ADD", "PARALLEL_MATMUL", "SOFTMAX", "REDUCE_SUM", "FILL", "x", "y", "h", "axis", "float",
         "float16", "int64", "int", "BATCH", "REALTIME", "N", "B", "floaty", "axisx", "shape", "start", "dtype",
         "SLICE", "RESHAPE", "CAST"]
PIECES = WORDS + ["0", "3", "-1", "2.5", ".5", "1e3", "+4", "1.", "3.5", "9" * 45, "→", "->", "[", "]", ",", ":",
                  "=", "# c", "é", ";", "\r", "\t", "-", "."]


def agree(source: str) -> None:
    fast, ref = parse(source), parse(source, lark=REFERENCE)
    assert fast.kernels == ref.kernels
    assert sorted({d.line for d in fast.diagnostics}) == sorted({d.line for d in ref.diagnostics})
    assert {d.code for d in fast.diagnostics} == {d.code for d in ref.diagnostics}


def test_examples_and_seed_lex_the_same():
    for path in sorted((ROOT / "examples" / "primitives").glob("*.pxp")):
        agree(path.read_text(encoding="utf-8"))
    agree(SEED)
    agree(SEED.replace("\n", "\r\n"))


lines = st.lists(st.lists(st.sampled_from(PIECES), max_size=8).map(" ".join), max_size=12).map("\n".join)
glued = st.lists(st.sampled_from(PIECES), max_size=30).map("".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(lines, glued))
def test_random_token_soup_lexes_the_same(source):
    agree(source)


STATEMENTS = ["ADD x y -> h", "SOFTMAX h axis=-1 → y", "REPEAT 2:", "END_REPEAT", "FILL 0.5 -> y", "COPY axis -> y",
              "REDUCE_SUM x axis = 0 -> h", "MUL h -2.5e-3 -> h", "GPU_PARAM z int64[N, 4]", "GPU_CLASS BATCH",
              "GPU_PRIORITY 9", "GPU_END", "GPU_KERNEL k2", "GPU_THREAD_CODE:",
              "RESHAPE x shape=[N, -1, 4] -> h", "SLICE x axis=1 start=pos size=N -> y", "CAST x dtype=float16 -> y",
              "ROPE x 3 axis=0 base=1e4 -> y", "PERMUTE x axes=[] -> y", "SLICE_WRITE x start = axis axis=0 -> y",
              "CAST x dtype=int x=1 -> y", "RESHAPE x shape=[2.5] -> y", "SLICE x start= -> y", "COPY x a=b=c -> y"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(STATEMENTS), max_size=15), st.sampled_from(["", "  ", "\t"]),
       st.sampled_from(["", "  # note"]))
def test_structured_programs_lex_the_same(body, indent, comment):
    source = "GPU_KERNEL k\nGPU_PARAM x float[]\nGPU_PARAM y float[]\nGPU_THREAD_CODE:\n"
    source += "".join(f"{indent}{line}{comment}\n" for line in body) + "GPU_END\n"
    agree(source)
