"""Attribute checks: ``name=value`` after an op's operands (docs/language.md, "Attributes").

Each op's attributes are listed in the op table (ops.py) with the kind of value each takes;
``axis`` is governed by the op's ``AxisUse`` as in v1 (its problems keep the ``axis`` code).
Every other problem (an unknown, missing or repeated attribute, a value of the wrong kind or
out of its range) is an ``attribute`` diagnostic at the attribute. Whether a value fits the
operands (a slice that fits its axis, a permutation of the operand's axes) is decided by the
shape rules, which see the operands.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from . import limits
from .ast import Attr, AttrValue, Name, OpStmt, Pos
from .errors import Code
from .ops import DTYPE_WORDS, AttrKind, AxisUse, OpKind, OpSpec

Report = Callable[[Code, Pos, str], None]


def show_value(value: AttrValue) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(str(v) for v in value) + "]"
    if isinstance(value, str):
        return f"the name {value}"
    return repr(value)


def check_attrs(spec: OpSpec, stmt: OpStmt, symbols: Collection[str], report: Report) -> bool:
    """True when every attribute of ``stmt`` is known to ``spec``, written once and of its
    kind, and every required one is there; each problem otherwise goes to ``report``."""
    attrs = stmt.attrs
    if not spec.attrs:  # the common cases, v1's: no attribute, or one integer axis=
        if not attrs:
            if spec.axis is not AxisUse.REQUIRED:
                return True
        elif len(attrs) == 1 and attrs[0].name == "axis" and type(attrs[0].value) is int \
                and spec.axis is not AxisUse.NONE:
            return True
    ok = True
    seen: set[str] = set()
    for a in stmt.attrs:
        if a.name in seen:
            report(Code.ATTRIBUTE, a.pos, f"{a.name}= is written twice")
            ok = False
            continue
        seen.add(a.name)
        if a.name == "axis":
            if spec.axis is AxisUse.NONE:
                report(Code.AXIS, stmt.pos, f"{spec.name} takes no axis=")
                ok = False
            elif type(a.value) is not int:
                report(Code.ATTRIBUTE, a.pos, f"axis= takes an integer, got {show_value(a.value)}")
                ok = False
            continue
        want = spec.attrs.get(a.name)
        if want is None:
            takes = [*(["axis"] if spec.axis is not AxisUse.NONE else []), *spec.attrs]
            listed = ", ".join(f"{n}=" for n in takes) if takes else "none"
            report(Code.ATTRIBUTE, a.pos, f"{spec.name} has no attribute {a.name}= (it takes: {listed})")
            ok = False
        elif not _value_ok(want.kind, a, symbols, report):
            ok = False
    if spec.axis is AxisUse.REQUIRED and "axis" not in seen:
        why = " (which axis to reduce)" if spec.kind is OpKind.REDUCE else ""
        report(Code.AXIS, stmt.pos, f"{spec.name} needs axis=k{why}")
        ok = False
    for name, want in spec.attrs.items():
        if want.required and name not in seen:
            report(Code.ATTRIBUTE, stmt.pos, f"{spec.name} needs {name}=: {want.kind.value}")
            ok = False
    return ok


def _value_ok(kind: AttrKind, a: Attr, symbols: Collection[str], report: Report) -> bool:
    v = a.value

    def bad(why: str = "") -> bool:
        report(Code.ATTRIBUTE, a.pos, why or f"{a.name}= takes {kind.value}, got {show_value(v)}")
        return False

    if kind is AttrKind.NUMBER:
        return isinstance(v, int | float) or bad()
    if kind is AttrKind.DTYPE:
        return (isinstance(v, str) and v in DTYPE_WORDS) or bad()
    if kind is AttrKind.INDEX:
        if isinstance(v, str):
            return True
        if type(v) is not int:
            return bad()
        return v >= 0 or bad(f"{a.name}= must be at least 0, got {v}")
    if kind is AttrKind.SIZE:
        return _dim_ok(v, a, symbols, report) if isinstance(v, str) or type(v) is int else bad()
    if not isinstance(v, tuple):
        return bad()
    if len(v) > limits.MAX_RANK:
        report(Code.LIMIT, a.pos, f"{a.name}= lists {len(v)} entries (a tensor has at most {limits.MAX_RANK} "
               "dimensions)")
        return False
    if kind is AttrKind.AXES:
        return all(isinstance(d, int) for d in v) or bad(f"{a.name}= takes integers, got {show_value(v)}")
    assert kind is AttrKind.DIMS
    if v.count(-1) > 1:
        return bad(f"{a.name}= may leave one size to infer (-1), not {v.count(-1)}")
    return all([d == -1 or _dim_ok(d, a, symbols, report) for d in v])  # report every bad entry


def _dim_ok(d: int | str, a: Attr, symbols: Collection[str], report: Report) -> bool:
    if isinstance(d, str):
        if d in symbols:
            return True
        report(Code.ATTRIBUTE, a.pos, f"{a.name}=: {d} is not a dimension symbol of this kernel (a symbol "
               "must appear in a param's declared dimensions)")
        return False
    if d < 1:
        report(Code.ATTRIBUTE, a.pos, f"{a.name}=: a size must be at least 1, got {d}")
        return False
    return True


def value_refs(stmt: OpStmt, spec: OpSpec) -> tuple[Attr, ...]:
    """The attributes whose value names a param or local that the statement reads
    (``start=pos``), as opposed to a literal, a dtype word or a dimension symbol."""
    if not stmt.attrs:
        return ()
    return tuple(a for a in stmt.attrs
                 if isinstance(a.value, str) and (want := spec.attrs.get(a.name)) is not None
                 and want.kind is AttrKind.INDEX)


def reads(stmt: OpStmt, spec: OpSpec) -> tuple[Name, ...]:
    """Every param or local a statement reads: its name operands, the names its attributes
    give (``start=pos``) and, for SLICE_WRITE, its destination (whose rest it keeps)."""
    names = [a for a in stmt.args if isinstance(a, Name)]
    names += [Name(a.value, a.pos) for a in value_refs(stmt, spec)]
    if spec.kind is OpKind.SLICE_WRITE:
        names.append(stmt.dest)
    return tuple(names)
