"""Dtype and shape rules of every op (docs/language.md, "Ops"), for known and unknown sizes.

One set of rules serves both checks: at compile time a dimension is a size (``64``), a
symbol (``"N"``) or unknown (``None``), and a rule reports only what is certainly wrong; at
bind time every dimension is a size and the same rules decide everything. ``TensorSpec`` is
the concrete dtype and shape of one bound param or local.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from .ast import DType, Name, Number, OpStmt, Pos
from .errors import Code
from .ops import AxisUse, OpKind, OpSpec

Dim = int | str | None  # a size, a symbol, or unknown until bind
Shape = tuple[Dim, ...] | None  # None: not even the rank is known
Report = Callable[[Code, Pos, str], None]


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """The concrete dtype and shape of a param or local at launch; scalars have shape ()."""

    dtype: DType
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * DType(self.dtype).itemsize


@dataclass(frozen=True, slots=True)
class Info:
    """What is known of a value: ``dtype`` None marks a value spoilt by an error already
    reported, about which nothing more is said."""

    dtype: DType | None
    shape: Shape


POISON = Info(None, None)


@dataclass(frozen=True, slots=True)
class Ctx:
    """What a shape rule knows besides its operands: where problems go, the size of every
    dimension symbol (at bind; None at compile time, when symbols stay symbols), and what is
    known of each attribute whose value names a param or local (``start=pos``)."""

    report: Report
    symbols: Mapping[str, int] | None = None
    refs: Mapping[str, Info] = field(default_factory=dict)

    def dim(self, d: int | str) -> Dim:
        """A dimension as written in an attribute: its size where known."""
        if isinstance(d, str) and self.symbols is not None:
            return self.symbols.get(d, d)
        return d

_INT_RANGE = {DType.INT32: (-(2**31), 2**31 - 1), DType.INT64: (-(2**63), 2**63 - 1)}
_FLOAT_MAX = {DType.FLOAT16: 65504.0, DType.FLOAT32: 3.4028234663852886e38,
              DType.FLOAT64: 1.7976931348623157e308}


def show_shape(shape: Shape) -> str:
    if shape is None:
        return "[?]"  # rank unknown
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _what(node: Name | Number) -> str:
    return node.name if isinstance(node, Name) else repr(node.value)


def literal_fits(num: Number, dtype: DType, report: Report) -> bool:
    """A number literal takes ``dtype``; False (reported) when it cannot."""
    if dtype in _INT_RANGE:
        if not num.is_int:
            report(Code.DTYPE, num.pos, f"{num.value!r} is not an integer, and it would take dtype {dtype.value}")
            return False
        lo, hi = _INT_RANGE[dtype]
        if not lo <= num.value <= hi:
            report(Code.LITERAL, num.pos, f"{num.value} does not fit {dtype.value} ({lo} to {hi})")
            return False
        return True
    try:
        ok = abs(float(num.value)) <= _FLOAT_MAX[dtype]
    except OverflowError:  # an int literal beyond float64
        ok = False
    if not ok:  # also inf from an overflowing float literal
        report(Code.LITERAL, num.pos, f"{num.value!r} does not fit {dtype.value} (largest {_FLOAT_MAX[dtype]:g})")
    return ok


def _bdim(x: Dim, y: Dim) -> Dim:
    """One broadcast dimension; raises ValueError when two sizes cannot broadcast."""
    if x == y or y == 1:
        return x
    if x == 1:
        return y
    if isinstance(x, int) and isinstance(y, int):
        raise ValueError
    if isinstance(x, int):
        return x  # a size other than 1 wins over a symbol or unknown: anything else fails at bind
    if isinstance(y, int):
        return y
    return None


def broadcast(a: Shape, b: Shape) -> Shape:
    """NumPy broadcasting of two shapes; raises ValueError when certainly incompatible."""
    if a == b:
        return a
    if a is None or b is None:
        return None
    n = max(len(a), len(b))
    a = (1,) * (n - len(a)) + a
    b = (1,) * (n - len(b)) + b
    return tuple(_bdim(x, y) for x, y in zip(a, b, strict=True))


def maybe_same(a: Shape, b: Shape) -> bool:
    """False only when two shapes certainly differ."""
    if a == b or a is None or b is None:
        return True
    if len(a) != len(b):
        return False
    return all(not (isinstance(x, int) and isinstance(y, int) and x != y) for x, y in zip(a, b, strict=True))


def normalise_axis(axis: int, shape: Shape, stmt: OpStmt, report: Report) -> int | None:
    """``axis`` in 0..rank-1, or None when the rank is unknown or the axis is out of range."""
    if shape is None:
        return None
    rank = len(shape)
    if not -rank <= axis < rank:
        report(Code.AXIS, stmt.pos, f"axis={axis} is out of range for {stmt.op} of a rank-{rank} operand "
               f"(allowed {-rank} to {rank - 1})")
        raise ValueError
    return axis % rank


def infer(spec: OpSpec, stmt: OpStmt, args: Sequence[Info | Number], dest: Info | None,
          report: Report, symbols: Mapping[str, int] | None = None,
          refs: Mapping[str, Info] | None = None) -> Info:
    """The dtype and shape an op statement produces; problems go to ``report``.

    ``args`` holds an Info per name operand and the Number node per literal; ``dest`` is what
    is known of the destination before the statement (FILL and SLICE_WRITE use it; None:
    undefined); ``symbols`` the size of each dimension symbol (at bind), ``refs`` what is known
    of each attribute that names a value. Arity and attributes have been checked by the caller.
    """
    if spec.axis is AxisUse.NONE and stmt.axis is not None:
        report(Code.AXIS, stmt.pos, f"{spec.name} takes no axis=")
        return POISON
    if spec.axis is AxisUse.REQUIRED and stmt.axis is None:
        report(Code.AXIS, stmt.pos, f"{spec.name} needs axis=k (which axis to reduce)")
        return POISON
    if spec.kind is OpKind.FILL:
        return _fill(stmt, args[0], dest, report)
    if spec.kind is OpKind.BINARY:
        return _binary(spec, stmt, args, report)
    if spec.kind not in _V1_KINDS:
        from .rules_v2 import infer_v2  # here: rules_v2 imports this module

        return infer_v2(spec, stmt, args, dest, Ctx(report, symbols, refs or {}))
    for node in stmt.args:
        if isinstance(node, Number):
            report(Code.OPERAND, node.pos, f"{spec.name} takes a param or a local, not a number")
            return POISON
    if any(a.dtype is None for a in args):
        return POISON
    a = args[0]
    if spec.kind is OpKind.MATMUL and args[1].dtype != a.dtype:
        report(Code.DTYPE, stmt.pos, f"{spec.name} operands have different dtypes: {stmt.args[0].name} is "
               f"{a.dtype.value}, {stmt.args[1].name} is {args[1].dtype.value}")
        return POISON
    if spec.needs_float and not a.dtype.is_float:
        report(Code.DTYPE, stmt.pos, f"{spec.name} needs a float operand; {stmt.args[0].name} is {a.dtype.value}")
        return POISON
    try:
        return Info(a.dtype, _shape_of(spec, stmt, args, report))
    except ValueError:
        return POISON


_V1_KINDS = frozenset({OpKind.MATMUL, OpKind.BINARY, OpKind.UNARY, OpKind.SOFTMAX, OpKind.REDUCE,
                       OpKind.TRANSPOSE, OpKind.COPY, OpKind.FILL})


def need_rank(shape: Shape, least: int, spec: OpSpec, stmt: OpStmt, which: int, report: Report) -> None:
    if shape is not None and len(shape) < least:
        report(Code.SHAPE, stmt.args[which].pos, f"{spec.name} needs operands of rank {least} or more; "
               f"{stmt.args[which].name} has shape {show_shape(shape)}")
        raise ValueError


def _shape_of(spec: OpSpec, stmt: OpStmt, args: Sequence[Info], report: Report) -> Shape:
    shape = args[0].shape
    kind = spec.kind
    if kind is OpKind.UNARY or kind is OpKind.COPY:
        return shape
    if kind is OpKind.TRANSPOSE:
        need_rank(shape, 2, spec, stmt, 0, report)
        return None if shape is None else shape[:-2] + (shape[-1], shape[-2])
    if kind is OpKind.SOFTMAX:
        need_rank(shape, 1, spec, stmt, 0, report)
        normalise_axis(-1 if stmt.axis is None else stmt.axis, shape, stmt, report)
        return shape
    if kind is OpKind.REDUCE:
        need_rank(shape, 1, spec, stmt, 0, report)
        axis = normalise_axis(stmt.axis, shape, stmt, report)
        return None if axis is None else shape[:axis] + shape[axis + 1:]
    assert kind is OpKind.MATMUL
    other = args[1].shape
    need_rank(shape, 2, spec, stmt, 0, report)
    need_rank(other, 2, spec, stmt, 1, report)
    if shape is None or other is None:
        return None
    k1, k2 = shape[-1], other[-2]
    if isinstance(k1, int) and isinstance(k2, int) and k1 != k2:
        report(Code.SHAPE, stmt.pos, f"{spec.name} inner dimensions differ: {stmt.args[0].name} "
               f"{show_shape(shape)} has {k1} columns, {stmt.args[1].name} {show_shape(other)} has {k2} rows")
        raise ValueError
    try:
        batch = broadcast(shape[:-2], other[:-2])
    except ValueError:
        report(Code.SHAPE, stmt.pos, f"{spec.name} batch dimensions do not broadcast: "
               f"{show_shape(shape)} and {show_shape(other)}")
        raise
    return batch + (shape[-2], other[-1])


def _binary(spec: OpSpec, stmt: OpStmt, args: Sequence[Info | Number], report: Report) -> Info:
    infos = [a for a in args if isinstance(a, Info)]
    if not infos:
        report(Code.OPERAND, stmt.pos, f"{spec.name} needs at least one operand that is a param or a local")
        return POISON
    if any(a.dtype is None for a in infos):
        return POISON
    dtype = infos[0].dtype
    if len(infos) == 2 and infos[1].dtype != dtype:
        report(Code.DTYPE, stmt.pos, f"{spec.name} operands have different dtypes: {stmt.args[0].name} is "
               f"{dtype.value}, {stmt.args[1].name} is {infos[1].dtype.value}")
        return POISON
    if spec.needs_float and not dtype.is_float:
        report(Code.DTYPE, stmt.pos, f"{spec.name} needs float operands; {_what(stmt.args[0])} "
               f"and {_what(stmt.args[1])} are {dtype.value}")
        return POISON
    for a in args:
        if isinstance(a, Number) and not literal_fits(a, dtype, report):
            return POISON
    if len(infos) == 1:
        return Info(dtype, infos[0].shape)
    try:
        return Info(dtype, broadcast(infos[0].shape, infos[1].shape))
    except ValueError:
        report(Code.SHAPE, stmt.pos, f"{spec.name} operands do not broadcast: {stmt.args[0].name} "
               f"{show_shape(infos[0].shape)}, {stmt.args[1].name} {show_shape(infos[1].shape)}")
        return POISON


def _fill(stmt: OpStmt, value: Info | Number, dest: Info | None, report: Report) -> Info:
    if dest is None:
        report(Code.SHAPE, stmt.dest.pos, f"FILL needs a destination of known shape: {stmt.dest.name} is "
               "not defined yet (write it first, or fill an output param)")
        return POISON
    if dest.dtype is None:
        return POISON
    if isinstance(value, Number):
        return dest if literal_fits(value, dest.dtype, report) else POISON
    if value.dtype is None:
        return POISON
    if value.shape is not None and value.shape != ():
        report(Code.SHAPE, stmt.args[0].pos, f"FILL takes a number or a scalar; {stmt.args[0].name} has shape "
               f"{show_shape(value.shape)}")
        return POISON
    if value.dtype != dest.dtype:
        report(Code.DTYPE, stmt.pos, f"FILL value {stmt.args[0].name} is {value.dtype.value}, "
               f"destination {stmt.dest.name} is {dest.dtype.value}")
        return POISON
    return dest
