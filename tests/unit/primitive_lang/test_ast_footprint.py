"""What a compiled program keeps: positions packed into ints, shared types, and how many
objects the garbage collector tracks for it (docs/scheduling.md, "Compiles", item 8)."""

from __future__ import annotations

import copy
import gc
import pickle

import pytest
from pl_testlib import SEED

from primitive_lang import clear_cache, compile_source
from primitive_lang.ast import Attr, Name, Number, OpStmt, Pos, packed
from primitive_lang.shapes import TensorSpec


def test_pos_reads_back_its_line_and_column_and_compares_as_the_pair():
    p = Pos(7, 21)
    assert (p.line, p.column) == (7, 21) and repr(p) == "Pos(line=7, column=21)"
    assert p == Pos(7, 21) and hash(p) == hash(Pos(7, 21)) and p != Pos(7, 22) and p != Pos(8, 21)
    assert Pos(7, 99) < Pos(8, 1) < Pos(8, 2)
    assert Pos(1, 2**32 - 1).column == 2**32 - 1 and Pos(10**6, 1).line == 10**6
    for copied in (pickle.loads(pickle.dumps(p)), copy.deepcopy(p)):
        assert type(copied) is Pos and copied == p and copied.line == 7


@pytest.mark.parametrize("line, column", [(-1, 1), (1, -1), (1, 2**32)])
def test_pos_rejects_what_it_cannot_pack(line, column):
    with pytest.raises(ValueError):
        Pos(line, column)


def test_a_node_made_with_a_pos_or_the_packed_int_is_one_node():
    for made in (Name("a", Pos(3, 4)), Number(2, True, Pos(3, 4)), Attr("axis", 1, Pos(3, 4))):
        fast = type(made)(*[packed(3, 4) if f == "at" else getattr(made, f) for f in made.__slots__])
        assert made == fast and hash(made) == hash(fast)
        assert type(fast.pos) is Pos and fast.pos == Pos(3, 4) and (fast.pos.line, fast.pos.column) == (3, 4)
    stmt = OpStmt("ADD", (Name("a", Pos(2, 9)), Number(1, True, Pos(2, 11))), None, Name("t", Pos(2, 16)), Pos(2, 5))
    assert stmt.pos == Pos(2, 5) and stmt.args[1].pos.column == 11 and stmt.dest.pos.column == 16


def test_parsed_positions_are_plain_ints_and_survive_pickling():
    clear_cache()
    k = compile_source(SEED).kernels[0]
    stmt = k.steps[0].stmt
    nodes = [stmt, stmt.dest, *stmt.args, *stmt.attrs]
    assert all(type(n.at) is int and not gc.is_tracked(n.at) for n in nodes)
    back = pickle.loads(pickle.dumps(k))
    assert back.ast == k.ast and back.steps[0].stmt.pos == stmt.pos
    assert [type(n.pos) for n in back.steps[0].stmt.args] == [Pos] * len(stmt.args)


def test_locals_of_one_type_share_it_and_so_do_bound_specs():
    src = ("GPU_KERNEL k\nGPU_PARAM a float[64]\nGPU_PARAM b float[64]\nGPU_THREAD_CODE:\n"
           + "".join(f"    ADD a a -> t{i}\n" for i in range(5)) + "    COPY t0 -> b\nGPU_END\n")
    k = compile_source(src).kernel("k")
    assert len({id(k.locals[f"t{i}"]) for i in range(5)}) == 1
    bound = k.bind({"a": TensorSpec("float32", (64,)), "b": TensorSpec("float32", (64,))})
    assert len({id(bound.shapes[f"t{i}"]) for i in range(5)}) == 1 and bound.shapes["t3"].shape == (64,)


def _tracked() -> int:
    gc.collect()
    return len(gc.get_objects())


def test_a_compiled_statement_keeps_few_tracked_objects():
    # OpStmt, Step, the args tuple and one Name per operand and destination: no Pos, no
    # ParamType per local (33 000 objects for a 63 KiB program before, 19 000 now).
    clear_cache()
    n = 400
    src = ("GPU_KERNEL big\nGPU_PARAM a float[64]\nGPU_PARAM b float[64]\nGPU_THREAD_CODE:\n"
           + "".join(f"    ADD a b -> t{i}\n" for i in range(n)) + "    COPY t0 -> b\nGPU_END\n")
    before = _tracked()
    program = compile_source(src)
    per_statement = (_tracked() - before) / n
    assert program.kernels[0].statement_count == n + 1
    assert per_statement < 6.5, per_statement
