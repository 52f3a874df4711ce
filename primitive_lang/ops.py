"""The op table: every op of the language, its operands, attributes, kind and cost weight.

docs/language.md ("Ops") gives each op's exact meaning; validation (validate.py, attrs.py and
the shape rules of shapes.py, tensor_rules.py and model_rules.py), the cost model (cost.py)
and the hypervisor's executors all read this one table, so an op cannot exist in one place
and not in another.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class OpKind(StrEnum):
    MATMUL = "matmul"  # (..., n, k) @ (..., k, m)
    BINARY = "binary"  # elementwise, NumPy broadcasting
    UNARY = "unary"  # elementwise, same shape
    SOFTMAX = "softmax"  # along one axis, same shape
    REDUCE = "reduce"  # along one axis, which is removed
    TRANSPOSE = "transpose"  # swaps the last two axes
    COPY = "copy"
    FILL = "fill"  # a number or a scalar into every element of an existing destination
    # v2: data movement
    GATHER = "gather"  # rows of a table by index
    RESHAPE = "reshape"
    PERMUTE = "permute"
    SLICE = "slice"  # a window along one axis, at a start known at run time
    SLICE_WRITE = "slice_write"  # writes a window of an existing destination, in place
    CONCAT = "concat"
    CAST = "cast"
    ARGMAX = "argmax"  # index of the first maximum along one axis, int32
    # v2: fused layers of decoder-only transformers
    RMSNORM = "rmsnorm"
    ROPE = "rope"
    CAUSAL_MASK = "causal_mask"
    LINEAR = "linear"  # a @ w^T


class AxisUse(StrEnum):
    NONE = "none"  # axis= is an error
    OPTIONAL = "optional"  # default -1 (the last axis)
    REQUIRED = "required"


class AttrKind(StrEnum):
    """What an attribute's value may be; the value is the phrase a diagnostic uses."""

    NUMBER = "a number"  # an int or float literal
    DTYPE = "a dtype (float16, float32, float64, int32, int64, float, int)"
    INDEX = "an integer literal (at least 0) or the name of an int scalar (param or 0-d local)"
    SIZE = "an integer (at least 1) or a dimension symbol of the kernel"
    DIMS = "a list of sizes [d, ...], each an integer (at least 1) or a dimension symbol; one may be -1"
    AXES = "a list of axes [k, ...]"


@dataclass(frozen=True, slots=True)
class AttrSpec:
    kind: AttrKind
    required: bool = True


@dataclass(frozen=True, slots=True)
class OpSpec:
    name: str
    kind: OpKind
    arity: int
    needs_float: bool  # rejects int operands
    axis: AxisUse
    #: Flops per output element (matmul: per multiply-add pair, see cost.py); counts every
    #: arithmetic operation of the reference formula, a transcendental function as one.
    flops_per_element: int
    #: Attributes other than ``axis`` (which ``axis`` governs), by name.
    attrs: Mapping[str, AttrSpec] = field(default_factory=dict, hash=False)
    #: Operand positions where an integer literal may stand (ROPE's and CAUSAL_MASK's pos).
    int_literal_operands: frozenset[int] = frozenset()

    def __reduce__(self):
        # A spec of the table travels by name, so a program compiled in another process
        # refers to this process's table entries (the same objects as a local compile's).
        if OPS.get(self.name) is self:
            return (_op_spec, (self.name,))
        return (OpSpec, (self.name, self.kind, self.arity, self.needs_float, self.axis, self.flops_per_element,
                         dict(self.attrs), self.int_literal_operands))


def _op_spec(name: str) -> OpSpec:
    return OPS[name]


def _table(*specs: OpSpec) -> dict[str, OpSpec]:
    return {s.name: s for s in specs}


_B, _U = OpKind.BINARY, OpKind.UNARY
_NO, _OPT, _REQ = AxisUse.NONE, AxisUse.OPTIONAL, AxisUse.REQUIRED
_POS_OPERAND = frozenset({1})

OPS: dict[str, OpSpec] = _table(
    OpSpec("PARALLEL_MATMUL", OpKind.MATMUL, 2, False, _NO, 2),
    OpSpec("ADD", _B, 2, False, _NO, 1),
    OpSpec("SUB", _B, 2, False, _NO, 1),
    OpSpec("MUL", _B, 2, False, _NO, 1),
    OpSpec("DIV", _B, 2, True, _NO, 1),
    OpSpec("MAX", _B, 2, False, _NO, 1),
    OpSpec("MIN", _B, 2, False, _NO, 1),
    OpSpec("RELU", _U, 1, False, _NO, 1),  # max(x, 0)
    # 0.5*x*(1 + tanh(sqrt(2/pi)*(x + 0.044715*x**3))): x**3 is 2 muls, then 1 mul, 1 add,
    # 1 mul, tanh, 1 add, 2 muls.
    OpSpec("GELU", _U, 1, True, _NO, 9),
    OpSpec("SIGMOID", _U, 1, True, _NO, 4),  # 1/(1 + exp(-x)): neg, exp, add, div
    OpSpec("TANH", _U, 1, True, _NO, 1),
    OpSpec("EXP", _U, 1, True, _NO, 1),
    OpSpec("LOG", _U, 1, True, _NO, 1),
    OpSpec("SQRT", _U, 1, True, _NO, 1),
    OpSpec("ABS", _U, 1, False, _NO, 1),
    OpSpec("NEG", _U, 1, False, _NO, 1),
    # max along the axis, subtract, exp, sum along the axis, divide: 5 per element.
    OpSpec("SOFTMAX", OpKind.SOFTMAX, 1, True, _OPT, 5),
    # Reductions are costed per *input* element (cost.py); MEAN adds one division per output.
    OpSpec("REDUCE_SUM", OpKind.REDUCE, 1, False, _REQ, 1),
    OpSpec("REDUCE_MAX", OpKind.REDUCE, 1, False, _REQ, 1),
    OpSpec("REDUCE_MEAN", OpKind.REDUCE, 1, True, _REQ, 1),
    OpSpec("TRANSPOSE", OpKind.TRANSPOSE, 1, False, _NO, 0),
    OpSpec("COPY", OpKind.COPY, 1, False, _NO, 0),
    OpSpec("FILL", OpKind.FILL, 1, False, _NO, 0),
    # ---- v2 ----
    # Data movement moves bytes and computes nothing (cost.py counts the bytes it moves).
    OpSpec("GATHER", OpKind.GATHER, 2, False, _NO, 0),
    OpSpec("RESHAPE", OpKind.RESHAPE, 1, False, _NO, 0, {"shape": AttrSpec(AttrKind.DIMS)}),
    OpSpec("PERMUTE", OpKind.PERMUTE, 1, False, _NO, 0, {"axes": AttrSpec(AttrKind.AXES)}),
    OpSpec("SLICE", OpKind.SLICE, 1, False, _REQ, 0,
           {"start": AttrSpec(AttrKind.INDEX), "size": AttrSpec(AttrKind.SIZE)}),
    OpSpec("SLICE_WRITE", OpKind.SLICE_WRITE, 1, False, _REQ, 0, {"start": AttrSpec(AttrKind.INDEX)}),
    OpSpec("CONCAT", OpKind.CONCAT, 2, False, _REQ, 0),
    OpSpec("CAST", OpKind.CAST, 1, False, _NO, 1, {"dtype": AttrSpec(AttrKind.DTYPE)}),  # 1 conversion
    OpSpec("ARGMAX", OpKind.ARGMAX, 1, False, _REQ, 1),  # per input element, as REDUCE_MAX
    OpSpec("RSQRT", _U, 1, True, _NO, 2),  # sqrt, divide
    OpSpec("SILU", _U, 1, True, _NO, 4),  # x/(1 + exp(-x)): neg, exp, add, div
    # x*x, sum, x*r, *w per element (4) and mean, +eps, sqrt, 1/ per row (4, cost.py).
    OpSpec("RMSNORM", OpKind.RMSNORM, 2, True, _NO, 4, {"eps": AttrSpec(AttrKind.NUMBER)}),
    # 2 muls and an add or sub per element (3), and per (position, pair): the angle, cos, sin.
    OpSpec("ROPE", OpKind.ROPE, 2, True, _REQ, 3, {"base": AttrSpec(AttrKind.NUMBER)},
           int_literal_operands=_POS_OPERAND),
    OpSpec("CAUSAL_MASK", OpKind.CAUSAL_MASK, 2, True, _NO, 1, int_literal_operands=_POS_OPERAND),
    OpSpec("LINEAR", OpKind.LINEAR, 2, False, _NO, 2),  # 2*K per output element, as matmul
)

#: Words that start a line and are not ops (for "did you mean" hints).
KEYWORDS = ("GPU_KERNEL", "GPU_PARAM", "GPU_CLASS", "GPU_PRIORITY", "GPU_THREAD_CODE",
            "GPU_END", "REPEAT", "END_REPEAT")

#: The dtype words an attribute of kind DTYPE takes, with their canonical names.
DTYPE_WORDS = {"float": "float32", "int": "int32", "float16": "float16", "float32": "float32",
               "float64": "float64", "int32": "int32", "int64": "int64"}
