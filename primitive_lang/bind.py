"""Binding: a checked kernel + the concrete dtype and shape of every param → ``BoundKernel``
(docs/language.md, "Binding").

Checks each spec against its declaration (dtype, rank, sizes, symbolic dimensions agreeing
across params), then runs every statement once through the op rules of shapes.py with
concrete shapes, which decides whatever compile time had to leave open, and costs the
launch. Pure: no arrays are touched.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING

from . import limits
from .ast import DType, Name, Param, Pos
from .attrs import value_refs
from .cost import kernel_cost
from .errors import BindError, Code, Diagnostic, sort_diagnostics
from .shapes import POISON, Info, TensorSpec, infer, show_shape

if TYPE_CHECKING:
    from .compiled import BoundKernel, CheckedKernel


def bind_kernel(kernel: CheckedKernel, specs: Mapping[str, TensorSpec]) -> BoundKernel:
    from .compiled import BoundKernel

    if not isinstance(specs, Mapping):
        raise TypeError(f"specs must be a mapping of param name to TensorSpec, not {type(specs).__name__}")
    diags: list[Diagnostic] = []

    def report(code: Code, pos: Pos, message: str) -> None:
        diags.append(Diagnostic(code, pos.line, pos.column, message))

    known = {p.name for p in kernel.params}
    for name in specs:
        if name not in known:
            report(Code.BIND_UNKNOWN, kernel.ast.pos, f"kernel {kernel.name} has no param {name!r}")
    symbols: dict[str, tuple[int, str]] = {}
    info: dict[str, Info] = {}
    for p in kernel.params:
        spec = specs.get(p.name)
        if spec is None:
            report(Code.BIND_MISSING, p.pos, f"param {p.name} is not bound")
            continue
        if not isinstance(spec, TensorSpec):
            raise TypeError(f"spec of {p.name} must be a TensorSpec, not {type(spec).__name__}")
        shape = _check_spec(p, spec, symbols, report)
        if shape is not None:
            info[p.name] = Info(p.type.dtype, shape)
    if diags:
        raise BindError(sort_diagnostics(diags))

    sizes = {s: v for s, (v, _) in symbols.items()}
    for step in kernel.steps:
        stmt = step.stmt
        args = [info[a.name] if isinstance(a, Name) else a for a in stmt.args]
        refs = {a.name: info[a.value] for a in value_refs(stmt, step.spec)}
        dest = stmt.dest.name
        old = info.get(dest)
        result = infer(step.spec, stmt, args, old, report, sizes, refs)
        if result.dtype is None:
            info.setdefault(dest, POISON)
        elif old is None:
            if math.prod(result.shape) > limits.MAX_ELEMENTS:
                report(Code.LIMIT, stmt.dest.pos, f"local {dest} {show_shape(result.shape)} has more than "
                       f"{limits.MAX_ELEMENTS} elements")
            info[dest] = result
        elif old.dtype is not None and old.shape != result.shape:
            what = "param" if dest in known else "local"
            report(Code.SHAPE, stmt.dest.pos, f"{stmt.op} produces shape {show_shape(result.shape)}, but "
                   f"{what} {dest} has shape {show_shape(old.shape)}")
    if diags:
        raise BindError(sort_diagnostics(diags))

    # One TensorSpec per distinct (dtype, shape), shared by the values of that type: fewer
    # objects for the garbage collector to visit while the bound kernel is kept.
    specs_of: dict[tuple, TensorSpec] = {}
    shapes = {}
    for name, i in info.items():
        key = (i.dtype, i.shape)
        spec = specs_of.get(key)
        if spec is None:
            spec = specs_of[key] = TensorSpec(i.dtype, i.shape)
        shapes[name] = spec
    cost = kernel_cost(kernel.steps, shapes, kernel.locals.keys())
    return BoundKernel(kernel, MappingProxyType(sizes),
                       MappingProxyType(shapes), cost)


def _check_spec(p: Param, spec: TensorSpec, symbols: dict[str, tuple[int, str]], report) -> tuple | None:
    """The spec's shape as a tuple of ints, or None (reported) when it does not fit ``p``."""
    ok = True
    try:
        dtype = DType(spec.dtype)
    except ValueError:
        report(Code.BIND_DTYPE, p.pos, f"param {p.name}: {spec.dtype!r} is not a dtype")
        dtype, ok = None, False
    if dtype is not None and dtype != p.type.dtype:
        report(Code.BIND_DTYPE, p.pos, f"param {p.name} is {p.type.dtype.value}, bound to {dtype.value}")
        ok = False
    try:
        dims = tuple(spec.shape)
        if any(isinstance(d, bool) for d in dims):
            raise TypeError("a bool is not a dimension")
        shape = tuple(operator.index(d) for d in dims)
    except TypeError:
        report(Code.BIND_SHAPE, p.pos, f"param {p.name}: shape {spec.shape!r} is not a sequence of integers")
        return None
    if len(shape) > limits.MAX_RANK:
        report(Code.LIMIT, p.pos, f"param {p.name} bound with rank {len(shape)} (at most {limits.MAX_RANK})")
        return None
    if any(d < 1 for d in shape):
        report(Code.BIND_SHAPE, p.pos, f"param {p.name} bound to {show_shape(shape)}: every dimension must "
               "be at least 1")
        return None
    if math.prod(shape) > limits.MAX_ELEMENTS:
        report(Code.LIMIT, p.pos, f"param {p.name} bound to {show_shape(shape)}: more than "
               f"{limits.MAX_ELEMENTS} elements")
        return None
    declared = p.type.shape
    if declared is not None:
        if len(declared) != len(shape):
            kind = "a scalar" if declared == () else f"declared {show_shape(declared)}"
            report(Code.BIND_SHAPE, p.pos, f"param {p.name} is {kind}, bound to shape {show_shape(shape)}")
            return None
        for want, got in zip(declared, shape, strict=True):
            if isinstance(want, int):
                if want != got:
                    report(Code.BIND_SHAPE, p.pos, f"param {p.name} is declared {show_shape(declared)}, bound "
                           f"to {show_shape(shape)}")
                    return None
            elif want in symbols and symbols[want][0] != got:
                size, where = symbols[want]
                report(Code.BIND_SYMBOL, p.pos, f"{want} is {size} from param {where} but {got} from "
                       f"param {p.name}")
                ok = False
            else:
                symbols.setdefault(want, (got, p.name))
    return shape if ok else None
