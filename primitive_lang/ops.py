"""The op table: every op of the language, its operand count, kind and cost weight.

docs/language.md ("Ops") gives each op's exact meaning; validation (validate.py, shapes.py),
the cost model (cost.py) and the hypervisor's executors all read this one table, so an op
cannot exist in one place and not in another.
"""

from __future__ import annotations

from dataclasses import dataclass
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


class AxisUse(StrEnum):
    NONE = "none"  # axis= is an error
    OPTIONAL = "optional"  # default -1 (the last axis)
    REQUIRED = "required"


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


def _table(*specs: OpSpec) -> dict[str, OpSpec]:
    return {s.name: s for s in specs}


_B, _U = OpKind.BINARY, OpKind.UNARY
_NO, _OPT, _REQ = AxisUse.NONE, AxisUse.OPTIONAL, AxisUse.REQUIRED

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
)

#: Words that start a line and are not ops (for "did you mean" hints).
KEYWORDS = ("GPU_KERNEL", "GPU_PARAM", "GPU_CLASS", "GPU_PRIORITY", "GPU_THREAD_CODE",
            "GPU_END", "REPEAT", "END_REPEAT")
