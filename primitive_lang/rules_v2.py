"""Dtype and shape rules of the v2 ops (docs/language.md, "Ops"): data movement (GATHER,
RESHAPE, PERMUTE, SLICE, SLICE_WRITE, CONCAT, CAST, ARGMAX) and the fused layers of
decoder-only transformers (RMSNORM, ROPE, CAUSAL_MASK, LINEAR).

Like the v1 rules in shapes.py, one rule serves compile time (a dimension may be a symbol or
unknown, and only what is certainly wrong is reported) and bind time (every dimension is a
size). Attributes have been checked for kind by attrs.py; a rule judges them against the
operands. ``shapes.infer`` calls ``infer_v2`` for these ops.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence

from . import limits
from .ast import DType, Number, OpStmt
from .errors import Code
from .ops import DTYPE_WORDS, OpKind, OpSpec
from .shapes import (
    POISON,
    Ctx,
    Dim,
    Info,
    Shape,
    broadcast,
    literal_fits,
    need_rank,
    normalise_axis,
    show_shape,
)

_INTS = (DType.INT32, DType.INT64)


def infer_v2(spec: OpSpec, stmt: OpStmt, args: Sequence[Info | Number], dest: Info | None, ctx: Ctx) -> Info:
    for i, node in enumerate(stmt.args):
        if isinstance(node, Number) and i not in spec.int_literal_operands:
            ctx.report(Code.OPERAND, node.pos, f"{spec.name} takes a param or a local, not a number")
            return POISON
    if any(isinstance(a, Info) and a.dtype is None for a in args) or any(r.dtype is None for r in ctx.refs.values()):
        return POISON
    a = args[0]
    if spec.needs_float and not a.dtype.is_float:
        ctx.report(Code.DTYPE, stmt.pos, f"{spec.name} needs a float operand; {stmt.args[0].name} is {a.dtype.value}")
        return POISON
    try:
        return _RULES[spec.kind](spec, stmt, args, dest, ctx)
    except ValueError:
        return POISON


def _name(stmt: OpStmt, i: int) -> str:
    return stmt.args[i].name


def _fail(ctx: Ctx, code: Code, pos, message: str):
    ctx.report(code, pos, message)
    raise ValueError


def _differ(x: Dim, y: Dim) -> bool:
    return isinstance(x, int) and isinstance(y, int) and x != y


def _merge(x: Dim, y: Dim) -> Dim:
    """Two dimensions that must be equal: the better known of them."""
    return x if isinstance(x, int) or y is None else y


def _same_dtype(spec: OpSpec, stmt: OpStmt, a: Info, b: Info, ctx: Ctx) -> None:
    if a.dtype != b.dtype:
        _fail(ctx, Code.DTYPE, stmt.pos, f"{spec.name} operands have different dtypes: {_name(stmt, 0)} is "
              f"{a.dtype.value}, {_name(stmt, 1)} is {b.dtype.value}")


def _int_scalar(info: Info, what: str, name: str, pos, ctx: Ctx) -> None:
    """A runtime index (a start, a position): an int32/int64 scalar."""
    if info.dtype not in _INTS:
        _fail(ctx, Code.DTYPE, pos, f"{what} must be an int32 or int64 scalar; {name} is {info.dtype.value}")
    if info.shape is not None and info.shape != ():
        _fail(ctx, Code.SHAPE, pos, f"{what} must be a scalar (0-d); {name} has shape {show_shape(info.shape)}")


def _start(stmt: OpStmt, ctx: Ctx) -> int | None:
    """SLICE's and SLICE_WRITE's start: the literal, or None when only the run knows it."""
    attr = stmt.attr("start")
    if isinstance(attr.value, int):
        return attr.value
    _int_scalar(ctx.refs["start"], f"{stmt.op} start=", attr.value, attr.pos, ctx)
    return None


def _window(stmt: OpStmt, k: int, shape: Shape, start: int | None, size: Dim, of: str, ctx: Ctx) -> None:
    dim = shape[k]
    if not isinstance(dim, int) or not isinstance(size, int):
        return
    if size > dim:
        _fail(ctx, Code.SHAPE, stmt.pos, f"{stmt.op} of {size} along axis {k} does not fit {of} "
              f"{show_shape(shape)} ({dim} along that axis)")
    if start is not None and start + size > dim:
        _fail(ctx, Code.SHAPE, stmt.pos, f"{stmt.op} [{start}, {start + size}) along axis {k} lies outside {of} "
              f"{show_shape(shape)} ({dim} along that axis)")


def _count_differs(a: tuple, b: tuple) -> bool:
    """True when two shapes certainly hold different numbers of elements."""
    if None in a or None in b:
        return False
    if Counter(d for d in a if isinstance(d, str)) != Counter(d for d in b if isinstance(d, str)):
        return False  # symbols that do not cancel: bind decides
    return math.prod(d for d in a if isinstance(d, int)) != math.prod(d for d in b if isinstance(d, int))


# ---- data movement -------------------------------------------------------------------------

def _gather(spec, stmt, args, dest, ctx) -> Info:
    table, ids = args
    if ids.dtype not in _INTS:
        _fail(ctx, Code.DTYPE, stmt.args[1].pos, f"GATHER ids must be int32 or int64; {_name(stmt, 1)} is "
              f"{ids.dtype.value}")
    need_rank(table.shape, 1, spec, stmt, 0, ctx.report)
    if table.shape is None or ids.shape is None:
        return Info(table.dtype, None)
    shape = ids.shape + table.shape[1:]
    if len(shape) > limits.MAX_RANK:
        _fail(ctx, Code.LIMIT, stmt.dest.pos, f"GATHER result {show_shape(shape)} has rank {len(shape)} "
              f"(at most {limits.MAX_RANK})")
    return Info(table.dtype, shape)


def _reshape(spec, stmt, args, dest, ctx) -> Info:
    a = args[0]
    attr = stmt.attr("shape")
    dims = tuple(ctx.dim(d) for d in attr.value)
    if -1 in dims:  # NumPy's rule: the one size that keeps the element count
        rest = [d for d in dims if d != -1]
        inferred = None
        if a.shape is not None and all(isinstance(d, int) for d in (*a.shape, *rest)):
            count, other = math.prod(a.shape), math.prod(rest)
            if count % other:
                _fail(ctx, Code.SHAPE, attr.pos, f"RESHAPE cannot keep the {count} elements of {_name(stmt, 0)} "
                      f"{show_shape(a.shape)} with shape={show_shape(dims)}")
            inferred = count // other
        return Info(a.dtype, tuple(inferred if d == -1 else d for d in dims))
    if a.shape is not None and _count_differs(a.shape, dims):
        _fail(ctx, Code.SHAPE, attr.pos, f"RESHAPE keeps the number of elements: {_name(stmt, 0)} "
              f"{show_shape(a.shape)} and shape={show_shape(dims)} differ")
    return Info(a.dtype, dims)


def _permute(spec, stmt, args, dest, ctx) -> Info:
    a = args[0]
    attr = stmt.attr("axes")
    axes = attr.value
    rank = len(a.shape) if a.shape is not None else len(axes)
    if len(axes) != rank:
        _fail(ctx, Code.AXIS, attr.pos, f"PERMUTE axes= lists {len(axes)} axes for {_name(stmt, 0)} "
              f"{show_shape(a.shape)}, of rank {rank}")
    for k in axes:
        if not -rank <= k < rank:
            _fail(ctx, Code.AXIS, attr.pos, f"PERMUTE axes=: axis {k} is out of range for a rank-{rank} operand "
                  f"(allowed {-rank} to {rank - 1})")
    norm = tuple(k % rank for k in axes)
    if sorted(norm) != list(range(rank)):
        _fail(ctx, Code.AXIS, attr.pos, f"PERMUTE axes={list(axes)} is not a permutation of the axes 0 to {rank - 1}")
    return Info(a.dtype, None if a.shape is None else tuple(a.shape[k] for k in norm))


def _slice(spec, stmt, args, dest, ctx) -> Info:
    a = args[0]
    need_rank(a.shape, 1, spec, stmt, 0, ctx.report)
    start = _start(stmt, ctx)
    k = normalise_axis(stmt.axis, a.shape, stmt, ctx.report)
    size = ctx.dim(stmt.attr("size").value)
    if k is None:
        return Info(a.dtype, None)
    _window(stmt, k, a.shape, start, size, _name(stmt, 0), ctx)
    return Info(a.dtype, a.shape[:k] + (size,) + a.shape[k + 1:])


def _slice_write(spec, stmt, args, dest, ctx) -> Info:
    src = args[0]
    if dest is None or dest.dtype is None:
        return POISON  # an undefined destination is reported by the caller
    need_rank(src.shape, 1, spec, stmt, 0, ctx.report)
    start = _start(stmt, ctx)
    to = stmt.dest.name
    if src.dtype != dest.dtype:
        _fail(ctx, Code.DTYPE, stmt.pos, f"SLICE_WRITE source {_name(stmt, 0)} is {src.dtype.value}, destination "
              f"{to} is {dest.dtype.value}")
    if src.shape is not None and dest.shape is not None and len(src.shape) != len(dest.shape):
        _fail(ctx, Code.SHAPE, stmt.pos, f"SLICE_WRITE source {_name(stmt, 0)} {show_shape(src.shape)} and "
              f"destination {to} {show_shape(dest.shape)} differ in rank")
    k = normalise_axis(stmt.axis, dest.shape if dest.shape is not None else src.shape, stmt, ctx.report)
    if k is not None and src.shape is not None and dest.shape is not None:
        if any(_differ(x, y) for i, (x, y) in enumerate(zip(src.shape, dest.shape, strict=True)) if i != k):
            _fail(ctx, Code.SHAPE, stmt.pos, f"SLICE_WRITE source {_name(stmt, 0)} {show_shape(src.shape)} and "
                  f"destination {to} {show_shape(dest.shape)} differ outside axis {k}")
        _window(stmt, k, dest.shape, start, src.shape[k], f"destination {to}", ctx)
    return dest


def _concat(spec, stmt, args, dest, ctx) -> Info:
    a, b = args
    _same_dtype(spec, stmt, a, b, ctx)
    need_rank(a.shape, 1, spec, stmt, 0, ctx.report)
    need_rank(b.shape, 1, spec, stmt, 1, ctx.report)
    if a.shape is not None and b.shape is not None and len(a.shape) != len(b.shape):
        _fail(ctx, Code.SHAPE, stmt.pos, f"CONCAT operands differ in rank: {_name(stmt, 0)} {show_shape(a.shape)}, "
              f"{_name(stmt, 1)} {show_shape(b.shape)}")
    k = normalise_axis(stmt.axis, a.shape if a.shape is not None else b.shape, stmt, ctx.report)
    if a.shape is None or b.shape is None:
        return Info(a.dtype, None)
    if any(_differ(x, y) for i, (x, y) in enumerate(zip(a.shape, b.shape, strict=True)) if i != k):
        _fail(ctx, Code.SHAPE, stmt.pos, f"CONCAT operands differ outside axis {k}: {_name(stmt, 0)} "
              f"{show_shape(a.shape)}, {_name(stmt, 1)} {show_shape(b.shape)}")
    x, y = a.shape[k], b.shape[k]
    joined = x + y if isinstance(x, int) and isinstance(y, int) else None
    shape = tuple(joined if i == k else _merge(p, q) for i, (p, q) in enumerate(zip(a.shape, b.shape, strict=True)))
    return Info(a.dtype, shape)


def _cast(spec, stmt, args, dest, ctx) -> Info:
    return Info(DType(DTYPE_WORDS[stmt.attr("dtype").value]), args[0].shape)


def _argmax(spec, stmt, args, dest, ctx) -> Info:
    a = args[0]
    need_rank(a.shape, 1, spec, stmt, 0, ctx.report)
    k = normalise_axis(stmt.axis, a.shape, stmt, ctx.report)
    return Info(DType.INT32, None if k is None else a.shape[:k] + a.shape[k + 1:])


# ---- fused layers --------------------------------------------------------------------------

def _positive_number(stmt: OpStmt, name: str, ctx: Ctx, allow_zero: bool) -> float:
    attr = stmt.attr(name)
    v = float(attr.value)
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        _fail(ctx, Code.ATTRIBUTE, attr.pos, f"{name}= must be a finite number {'at least' if allow_zero else 'above'} "
              f"0, got {attr.value!r}")
    return v


def _position(stmt: OpStmt, pos: Info | Number, ctx: Ctx) -> None:
    """ROPE's and CAUSAL_MASK's position: an int literal or an int scalar."""
    what = f"{stmt.op} position"
    if isinstance(pos, Number):
        if not pos.is_int:
            _fail(ctx, Code.DTYPE, pos.pos, f"{what} must be an integer, got {pos.value!r}")
        if not literal_fits(pos, DType.INT64, ctx.report):
            raise ValueError
        return
    _int_scalar(pos, what, _name(stmt, 1), stmt.args[1].pos, ctx)


def _rmsnorm(spec, stmt, args, dest, ctx) -> Info:
    x, w = args
    _same_dtype(spec, stmt, x, w, ctx)
    need_rank(x.shape, 1, spec, stmt, 0, ctx.report)
    if w.shape is not None and len(w.shape) != 1:
        _fail(ctx, Code.SHAPE, stmt.args[1].pos, f"RMSNORM weight {_name(stmt, 1)} must have rank 1 ([D]); it has "
              f"shape {show_shape(w.shape)}")
    if x.shape is not None and w.shape is not None and _differ(x.shape[-1], w.shape[0]):
        _fail(ctx, Code.SHAPE, stmt.pos, f"RMSNORM weight {_name(stmt, 1)} {show_shape(w.shape)} does not match the "
              f"last axis of {_name(stmt, 0)} {show_shape(x.shape)}")
    eps = stmt.attr("eps")
    _positive_number(stmt, "eps", ctx, allow_zero=True)
    if not literal_fits(Number(eps.value, isinstance(eps.value, int), eps.pos), x.dtype, ctx.report):
        raise ValueError
    return x


def _rope(spec, stmt, args, dest, ctx) -> Info:
    x, pos = args
    need_rank(x.shape, 2, spec, stmt, 0, ctx.report)
    _position(stmt, pos, ctx)
    _positive_number(stmt, "base", ctx, allow_zero=False)
    k = normalise_axis(stmt.axis, x.shape, stmt, ctx.report)
    if k is not None and k == len(x.shape) - 1:
        _fail(ctx, Code.AXIS, stmt.pos, f"ROPE axis= names the positions' axis and must not be the last axis "
              f"(which holds the rotated pairs); {_name(stmt, 0)} has shape {show_shape(x.shape)}")
    if x.shape is not None and isinstance(x.shape[-1], int) and x.shape[-1] % 2:
        _fail(ctx, Code.SHAPE, stmt.pos, f"ROPE needs an even last dimension (pairs); {_name(stmt, 0)} has shape "
              f"{show_shape(x.shape)}")
    return x


def _causal_mask(spec, stmt, args, dest, ctx) -> Info:
    a, pos = args
    need_rank(a.shape, 2, spec, stmt, 0, ctx.report)
    _position(stmt, pos, ctx)
    return a


def _linear(spec, stmt, args, dest, ctx) -> Info:
    a, w = args
    _same_dtype(spec, stmt, a, w, ctx)
    need_rank(a.shape, 2, spec, stmt, 0, ctx.report)
    need_rank(w.shape, 2, spec, stmt, 1, ctx.report)
    if a.shape is None or w.shape is None:
        return Info(a.dtype, None)
    if _differ(a.shape[-1], w.shape[-1]):
        _fail(ctx, Code.SHAPE, stmt.pos, f"LINEAR inner dimensions differ: {_name(stmt, 0)} {show_shape(a.shape)} "
              f"has {a.shape[-1]} columns, {_name(stmt, 1)} {show_shape(w.shape)} has {w.shape[-1]}")
    try:
        batch = broadcast(a.shape[:-2], w.shape[:-2])
    except ValueError:
        _fail(ctx, Code.SHAPE, stmt.pos, f"LINEAR batch dimensions do not broadcast: {show_shape(a.shape)} and "
              f"{show_shape(w.shape)}")
    return Info(a.dtype, batch + (a.shape[-2], w.shape[-2]))


Rule = Callable[[OpSpec, OpStmt, Sequence, Info | None, Ctx], Info]
_RULES: dict[OpKind, Rule] = {
    OpKind.GATHER: _gather, OpKind.RESHAPE: _reshape, OpKind.PERMUTE: _permute, OpKind.SLICE: _slice,
    OpKind.SLICE_WRITE: _slice_write, OpKind.CONCAT: _concat, OpKind.CAST: _cast, OpKind.ARGMAX: _argmax,
    OpKind.RMSNORM: _rmsnorm, OpKind.ROPE: _rope, OpKind.CAUSAL_MASK: _causal_mask, OpKind.LINEAR: _linear,
}

