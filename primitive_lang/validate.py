"""Validation: parsed kernels → ``CheckedKernel`` (docs/language.md, "Validation").

A pass of its own over the AST: names, params, limits, then every statement in source order
(REPEAT bodies once each: shapes cannot change between iterations, since a write must keep
its destination's dtype and shape) through the op rules of shapes.py. Every problem is
reported with its line and column; a value spoilt by a reported problem is "poisoned" so
that it causes no further reports. A kernel with a syntax error is still validated, but
the names on its broken lines count as known.
"""

from __future__ import annotations

import math
from types import MappingProxyType

from . import limits
from .ast import Kernel, Name, Number, OpStmt, Param, ParamType, Pos, Repeat
from .attrs import check_attrs, value_refs
from .blocks import ParsedKernel
from .compiled import CheckedKernel, Direction, Step
from .errors import Code, Diagnostic
from .ops import OPS, AxisUse, OpKind
from .parser import unknown_op_diagnostic
from .shapes import POISON, Info, infer, maybe_same, show_shape

# Ops whose statements take the general path even without attributes written.
_GENERAL = frozenset(n for n, spec in OPS.items()
                     if spec.attrs or spec.kind is OpKind.SLICE_WRITE or spec.axis is AxisUse.REQUIRED)


def validate(parsed: tuple[ParsedKernel, ...], diags: list[Diagnostic]) -> list[CheckedKernel]:
    """Checked kernels for the kernels without problems; every problem goes to ``diags``."""
    out = []
    seen: dict[str, Pos] = {}
    for pk in parsed:
        k = pk.kernel
        if k.name in seen:
            _err(diags, Code.DUPLICATE_KERNEL, k.pos, f"kernel {k.name} is already defined at line "
                 f"{seen[k.name].line}")
        elif k.name:
            seen[k.name] = k.pos
        before = len(diags)
        checked = _KernelCheck(pk, diags).run()
        if len(diags) == before and not pk.broken:
            out.append(checked)
    return out


def _err(diags: list[Diagnostic], code: Code, pos: Pos, message: str) -> None:
    diags.append(Diagnostic(code, pos.line, pos.column, message))


def _check_name(name: str, what: str, pos: Pos, diags: list[Diagnostic]) -> None:
    if len(name) > limits.MAX_IDENTIFIER_LEN:
        _err(diags, Code.LIMIT, pos, f"{what} name {name[:20]}... is {len(name)} characters long "
             f"(at most {limits.MAX_IDENTIFIER_LEN})")


class _KernelCheck:
    def __init__(self, pk: ParsedKernel, diags: list[Diagnostic]):
        self.kernel: Kernel = pk.kernel
        self.poisoned = pk.poisoned
        self.broken = pk.broken
        self.diags = diags
        self.params: dict[str, Param] = {}
        self.first_access: dict[str, str] = {}  # param -> "read" | "write"
        self.locals: dict[str, Info] = {}
        self.steps: list[Step] = []

    def report(self, code: Code, pos: Pos, message: str) -> None:
        _err(self.diags, code, pos, message)

    def run(self) -> CheckedKernel:
        k = self.kernel
        if k.name:
            _check_name(k.name, "kernel", k.pos, self.diags)
        self._check_params()
        self.symbols = frozenset(d for p in k.params for d in (p.type.shape or ()) if isinstance(d, str))
        executed = self._flatten(k.body, 1)
        if len(self.steps) > limits.MAX_STATEMENTS:
            self.report(Code.LIMIT, self.steps[limits.MAX_STATEMENTS].stmt.pos,
                        f"kernel {k.name} has {len(self.steps)} statements (at most {limits.MAX_STATEMENTS})")
        if executed > limits.MAX_EXECUTED_STATEMENTS:
            self.report(Code.LIMIT, k.pos, f"kernel {k.name} executes more than {limits.MAX_EXECUTED_STATEMENTS} "
                        "statements with its REPEATs expanded")
        self.written = {s.stmt.dest.name for s in self.steps}
        for step in self.steps:
            self._statement(step)
        if not self.broken and not self.written & self.params.keys():
            self.report(Code.NO_OUTPUT, k.pos, f"kernel {k.name} writes no param, so it has no output")
        directions = {name: self._direction(name) for name in self.params}
        # One ParamType per distinct type, shared by the locals of that type: a large program
        # has hundreds of locals of a few types, and every object it keeps is one more for
        # each full garbage collection to visit (docs/scheduling.md, "Compiles", item 8).
        types: dict[tuple, ParamType] = {}
        local_types = {}
        for n, i in self.locals.items():
            if i.dtype is not None:
                key = (i.dtype, i.shape if i.shape is not None and None not in i.shape else None)
                t = types.get(key)
                if t is None:
                    t = types[key] = ParamType(*key)
                local_types[n] = t
        return CheckedKernel(
            ast=k, name=k.name, params=k.params, directions=MappingProxyType(directions),
            locals=MappingProxyType(local_types), class_hint=k.class_hint, priority=k.priority,
            statement_count=len(self.steps), executed_statement_count=executed, steps=tuple(self.steps))

    def _direction(self, name: str) -> Direction:
        if name not in self.written:
            return Direction.IN
        return Direction.OUT if self.first_access.get(name) == "write" else Direction.INOUT

    def _check_params(self) -> None:
        for i, p in enumerate(self.kernel.params):
            if i == limits.MAX_PARAMS:
                self.report(Code.LIMIT, p.pos, f"kernel {self.kernel.name} has more than {limits.MAX_PARAMS} params")
            if p.name in self.params:
                self.report(Code.DUPLICATE_PARAM, p.pos, f"param {p.name} is already declared at line "
                            f"{self.params[p.name].pos.line}")
                continue
            self.params[p.name] = p
            _check_name(p.name, "param", p.pos, self.diags)
            shape = p.type.shape or ()
            if len(shape) > limits.MAX_RANK:
                self.report(Code.LIMIT, p.pos, f"param {p.name} has rank {len(shape)} (at most {limits.MAX_RANK})")
            for d in shape:
                if isinstance(d, str):
                    _check_name(d, "dimension", p.pos, self.diags)
                elif d < 1:
                    self.report(Code.VALUE, p.pos, f"param {p.name}: a dimension must be at least 1, got {d}")
            sizes = [d for d in shape if isinstance(d, int)]
            if math.prod(sizes) > limits.MAX_ELEMENTS:
                self.report(Code.LIMIT, p.pos, f"param {p.name} {show_shape(shape)} has more than "
                            f"{limits.MAX_ELEMENTS} elements")

    def _flatten(self, body, times: int) -> int:
        """Steps in source order; returns the statements executed (capped to stay cheap)."""
        executed = 0
        for stmt in body:
            if isinstance(stmt, Repeat):
                count = stmt.count
                if count < 1:
                    self.report(Code.VALUE, stmt.pos, f"REPEAT count must be at least 1, got {count}")
                    count = 1
                elif count > limits.MAX_REPEAT_COUNT:
                    self.report(Code.LIMIT, stmt.pos, f"REPEAT count {count} is over {limits.MAX_REPEAT_COUNT}")
                    count = 1
                executed += count * self._flatten(stmt.body, times * count)
            else:
                self.steps.append(Step(stmt, OPS.get(stmt.op), times))
                executed += 1
            executed = min(executed, limits.MAX_EXECUTED_STATEMENTS + 1)
        return executed

    def _operand(self, node: Name | Number) -> Info | Number:
        if isinstance(node, Number):
            return node
        name = node.name
        p = self.params.get(name)
        if p is not None:
            self.first_access.setdefault(name, "read")
            return Info(p.type.dtype, p.type.shape)
        info = self.locals.get(name)
        if info is not None:
            return info
        if name in self.poisoned:
            return POISON
        if name in self.written:
            self.report(Code.READ_BEFORE_WRITE, node.pos, f"{name} is read before it is first written")
        else:
            self.report(Code.UNDECLARED, node.pos, f"{name} is not a param and is never written")
        self.locals[name] = POISON  # report each name once
        return POISON

    def _statement(self, step: Step) -> None:
        stmt, spec = step.stmt, step.spec
        if spec is None or stmt.attrs or spec.name in _GENERAL:
            self._write(stmt, self._general(stmt, spec))
            return
        # the common case, kept lean: no attributes, nothing but operands read
        args = [self._operand(a) for a in stmt.args]
        if len(stmt.args) != spec.arity:
            result = self._arity(stmt, spec)
        else:
            result = infer(spec, stmt, args, self._fill_dest(stmt), self.report)
        self._write(stmt, result)

    def _general(self, stmt: OpStmt, spec) -> Info:
        # SLICE_WRITE reads its destination (it keeps the rest of it): before the write.
        kept = self._operand(stmt.dest) if spec is not None and spec.kind is OpKind.SLICE_WRITE else None
        args = [self._operand(a) for a in stmt.args]
        refs = {a.name: self._operand(Name(a.value, a.pos)) for a in value_refs(stmt, spec)} if spec else {}
        if spec is None:
            self.diags.append(unknown_op_diagnostic(stmt.op, stmt.pos))
            return POISON
        if len(stmt.args) != spec.arity:
            return self._arity(stmt, spec)
        if not check_attrs(spec, stmt, self.symbols, self.report):
            return POISON
        dest = kept if spec.kind is OpKind.SLICE_WRITE else self._fill_dest(stmt)
        return infer(spec, stmt, args, dest, self.report, None, refs)

    def _arity(self, stmt: OpStmt, spec) -> Info:
        n = spec.arity
        self.report(Code.ARITY, stmt.pos, f"{spec.name} takes {n} operand{'s' if n > 1 else ''}, got {len(stmt.args)}")
        return POISON

    def _fill_dest(self, stmt: OpStmt) -> Info | None:
        p = self.params.get(stmt.dest.name)
        if p is not None:
            return Info(p.type.dtype, p.type.shape)
        return self.locals.get(stmt.dest.name)

    def _write(self, stmt: OpStmt, result: Info) -> None:
        dest = stmt.dest
        p = self.params.get(dest.name)
        if p is not None:
            self.first_access.setdefault(dest.name, "write")
            if p.type.is_scalar:
                self.report(Code.SCALAR_DEST, dest.pos, f"{dest.name} is a scalar param (passed by value) "
                            "and cannot be written")
            elif result.dtype is not None:
                self._check_store(stmt, f"param {dest.name}", Info(p.type.dtype, p.type.shape), result)
            return
        old = self.locals.get(dest.name)
        if old is None:
            _check_name(dest.name, "local", dest.pos, self.diags)
            shape = result.shape
            if shape is not None and all(isinstance(d, int) for d in shape) and math.prod(shape) > limits.MAX_ELEMENTS:
                self.report(Code.LIMIT, dest.pos, f"local {dest.name} {show_shape(shape)} has more than "
                            f"{limits.MAX_ELEMENTS} elements")
            self.locals[dest.name] = result
        elif old.dtype is not None and result.dtype is not None:
            self._check_store(stmt, f"local {dest.name}", old, result)

    def _check_store(self, stmt: OpStmt, what: str, have: Info, result: Info) -> None:
        if have.dtype != result.dtype:
            self.report(Code.DTYPE, stmt.dest.pos, f"{stmt.op} produces {result.dtype.value}, but {what} is "
                        f"{have.dtype.value}")
        elif not maybe_same(have.shape, result.shape):
            self.report(Code.SHAPE, stmt.dest.pos, f"{stmt.op} produces shape {show_shape(result.shape)}, but "
                        f"{what} has shape {show_shape(have.shape)}")
