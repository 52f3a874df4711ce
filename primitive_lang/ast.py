"""The primitive language's abstract syntax tree: frozen dataclasses, no behaviour.

The parser (``parser.py``) builds these from source text and checks nothing; validation
(``validate.py``) and the cost model (``cost.py``) are separate passes over them; the
hypervisor's executors walk ``Kernel.body`` to run a launch. Every node carries the
1-based line and column where it starts, so every later pass can report a position.

This module is the contract between the language and its consumers: change it only
together with them. ``docs/language.md`` gives each node's meaning.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from operator import attrgetter
from types import MappingProxyType

#: Called, when set, after every REBUILD_CHUNK statements rebuilt from a pickle (a program
#: compiled in another process): a host that unpickles programs beside latency-sensitive
#: threads can let them run there (it must not raise).
rebuild_hook = None
REBUILD_CHUNK = 16
_rebuilt = [0]


def _op_stmt(*values):
    stmt = OpStmt(*values)
    _rebuilt[0] += 1
    if _rebuilt[0] % REBUILD_CHUNK == 0 and rebuild_hook is not None:
        rebuild_hook()
    return stmt


def by_fields(cls):
    """Pickle instances of a frozen slotted dataclass as ``cls(*fields)``: a compile may run
    in another process (the hypervisor's compile workers), and the dataclass default
    (``__setstate__`` looking the fields up per object) makes unpickling a large program
    cost about half of compiling it; this makes it a quarter."""
    get = attrgetter(*cls.__slots__)
    if len(cls.__slots__) == 1:
        cls.__reduce__ = lambda self: (cls, (get(self),))
    else:
        cls.__reduce__ = lambda self: (cls, get(self))
    return cls


class DType(str, Enum):  # noqa: UP042 (str() and format() of members are part of the contract)
    """Element types. ``float`` is an alias of ``float32`` and ``int`` of ``int32`` in the
    source; the AST holds only the canonical names (which are also NumPy's)."""

    FLOAT16 = "float16"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    INT32 = "int32"
    INT64 = "int64"

    @property
    def itemsize(self) -> int:
        return {"float16": 2, "float32": 4, "float64": 8, "int32": 4, "int64": 8}[self.value]

    @property
    def is_float(self) -> bool:
        return self.value.startswith("float")


class WorkloadHint(str, Enum):  # noqa: UP042 (as DType)
    """The ``GPU_CLASS`` header: a hint to the scheduler, never a command."""

    REALTIME = "REALTIME"
    INTERACTIVE = "INTERACTIVE"
    THROUGHPUT = "THROUGHPUT"
    BATCH = "BATCH"


_COLUMN_BITS = 32
_COLUMN_MASK = (1 << _COLUMN_BITS) - 1


class Pos(int):
    """A 1-based line and column: an ``int`` underneath, ``line << 32 | column`` (equal,
    hashed and ordered as ``(line, column)``; immutable).

    The nodes a program has one of per operand or statement (``Name``, ``Number``, ``Attr``,
    ``OpStmt``) keep that plain int in their ``at`` field and make a ``Pos`` of it only when
    ``pos`` is read: an instance of any Python class is an object the garbage collector
    tracks, and a host keeping many large programs alive pays for every tracked object in
    every full collection (docs/scheduling.md, "Compiles", item 8)."""

    __slots__ = ()

    def __new__(cls, line: int, column: int):
        if not (0 <= column <= _COLUMN_MASK and line >= 0):
            raise ValueError(f"position out of range: line {line}, column {column}")
        return int.__new__(cls, (line << _COLUMN_BITS) | column)

    @property
    def line(self) -> int:
        return self >> _COLUMN_BITS

    @property
    def column(self) -> int:
        return self & _COLUMN_MASK

    def __repr__(self) -> str:
        return f"Pos(line={self >> _COLUMN_BITS}, column={self & _COLUMN_MASK})"

    def __reduce__(self):
        return (_pos, (int(self),))

    def __copy__(self):
        return self

    def __deepcopy__(self, _memo):
        return self


def _pos(packed: int) -> Pos:
    return int.__new__(Pos, packed)


def packed(line: int, column: int) -> int:
    """What ``int(Pos(line, column))`` is, without making the ``Pos`` (the parser's path)."""
    return (line << _COLUMN_BITS) | column


def positioned(cls):
    """``pos`` of a node that stores its position packed in ``at`` (see ``Pos``)."""
    cls.pos = property(lambda self: int.__new__(Pos, self.at), doc="where the node starts")
    return cls


# A dimension as written: a concrete size (``64``) or a symbol (``N``) that stands for the
# same size wherever it appears in one kernel.
Dim = int | str


@by_fields
@dataclass(frozen=True, slots=True)
class ParamType:
    """``float`` (scalar: ``shape == ()``), ``float[]`` (any shape, bound at launch:
    ``shape is None``) or ``float[64, N]`` (``shape == (64, "N")``)."""

    dtype: DType
    shape: tuple[Dim, ...] | None

    @property
    def is_scalar(self) -> bool:
        return self.shape == ()


@by_fields
@dataclass(frozen=True, slots=True)
class Param:
    name: str
    type: ParamType
    pos: Pos


@positioned
@by_fields
@dataclass(frozen=True, slots=True)
class Name:
    """A reference to a param or a local; ``pos`` where it is written."""

    name: str
    at: int  # its Pos, packed: pass a Pos or packed(line, column)


@positioned
@by_fields
@dataclass(frozen=True, slots=True)
class Number:
    """A number literal; ``is_int`` is True for literals written without ``.``/exponent."""

    value: float | int
    is_int: bool
    at: int  # its Pos, packed (as Name's)


Operand = Name | Number

# An attribute's value as written: an int or a float (a number literal; int when written
# without '.' or exponent), a str (a word: a param or local, a dimension symbol or a dtype
# word, which of them depends on the attribute), or a tuple (a bracketed list of integers
# and words, ``[a, b, ...]``).
AttrValue = int | float | str | tuple[int | str, ...]


@positioned
@by_fields
@dataclass(frozen=True, slots=True)
class Attr:
    """``name=value``, written after an op's operands and before the arrow; ``pos`` is where
    the name starts."""

    name: str
    value: AttrValue
    at: int  # its Pos, packed (as Name's)


@positioned
@dataclass(frozen=True, slots=True)
class OpStmt:
    """``OP arg... [name=value ...] → dest``.

    ``op`` is the upper-case op name exactly as written (validation rejects unknown ones).
    ``attrs`` holds the attributes as written, in order (a repeated one included: validation
    reports it); ``attributes`` maps each name to its first occurrence. ``axis`` is the value
    of ``axis=`` when it is an integer (v1 consumers read it), None otherwise.
    """

    op: str
    args: tuple[Operand, ...]
    axis: int | None
    dest: Name
    at: int  # its Pos, packed (as Name's): ``pos`` is where the op name starts
    attrs: tuple[Attr, ...] = ()

    def attr(self, name: str) -> Attr | None:
        """The first attribute called ``name``, or None."""
        for a in self.attrs:
            if a.name == name:
                return a
        return None

    @property
    def attributes(self) -> Mapping[str, Attr]:
        return MappingProxyType({a.name: a for a in reversed(self.attrs)})

    def __reduce__(self):
        return (_op_stmt, (self.op, self.args, self.axis, self.dest, self.at, self.attrs))


@by_fields
@dataclass(frozen=True, slots=True)
class Repeat:
    """``REPEAT n:`` ... ``END_REPEAT``: ``body`` runs ``count`` times, in order."""

    count: int
    body: tuple[Stmt, ...]
    pos: Pos


Stmt = OpStmt | Repeat


@by_fields
@dataclass(frozen=True, slots=True)
class Kernel:
    name: str
    params: tuple[Param, ...]
    class_hint: WorkloadHint | None
    priority: int | None
    body: tuple[Stmt, ...]
    pos: Pos


@by_fields
@dataclass(frozen=True, slots=True)
class Program:
    """One source: one or more kernels, in source order."""

    kernels: tuple[Kernel, ...]
