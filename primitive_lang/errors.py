"""Diagnostics and the language's errors (docs/language.md, "Errors").

A diagnostic is one problem with a stable kebab-case ``code``, a 1-based ``line`` and
``column`` (0 and 0 when the problem has no place in the source, e.g. a bind of a name that
no param has) and a message a person understands. ``PrimitiveError`` carries every
diagnostic of one compile or one bind; nothing else escapes ``compile_source`` or ``bind``.

This package stands below the hypervisor and does not import it; the hypervisor maps these
to its own ``PxosError`` hierarchy (``PXOS_S_COMPILE`` / ``PXOS_S_BIND``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum


class Code(StrEnum):
    """Every diagnostic code (each fits the 24-byte ``code`` field of ``struct pxos_diag``)."""

    ENCODING = "encoding"  # the source is not UTF-8
    SYNTAX = "syntax"  # a line or the block structure does not follow the grammar
    UNKNOWN_OP = "unknown-op"
    ARITY = "arity"  # wrong number of operands
    OPERAND = "operand"  # a number where a param or local is needed (or the reverse)
    AXIS = "axis"  # axis= missing, not allowed, or out of range
    ATTRIBUTE = "attribute"  # an attribute unknown, missing, repeated, or of the wrong kind
    UNDECLARED = "undeclared"  # a name that is neither a param nor ever written
    READ_BEFORE_WRITE = "read-before-write"  # a local read before its first write
    DUPLICATE_PARAM = "duplicate-param"
    DUPLICATE_KERNEL = "duplicate-kernel"
    DUPLICATE_HEADER = "duplicate-header"  # GPU_CLASS or GPU_PRIORITY written twice
    DTYPE = "dtype"
    SHAPE = "shape"
    LITERAL = "literal"  # a number that its dtype cannot hold
    VALUE = "value"  # a priority, REPEAT count or dimension outside its range
    SCALAR_DEST = "scalar-dest"  # a write to a scalar (by-value) param
    NO_OUTPUT = "no-output"  # a kernel that writes no param
    LIMIT = "limit"  # one of primitive_lang.limits exceeded
    BIND_MISSING = "bind-missing"
    BIND_UNKNOWN = "bind-unknown"
    BIND_DTYPE = "bind-dtype"
    BIND_SHAPE = "bind-shape"  # rank, a declared dimension, or a dimension < 1
    BIND_SYMBOL = "bind-symbol"  # one symbolic dimension bound to two sizes


@dataclass(frozen=True, slots=True)
class Diagnostic:
    code: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"{self.line}:{self.column}: error[{self.code}]: {self.message}"


def sort_diagnostics(diags: Iterable[Diagnostic]) -> tuple[Diagnostic, ...]:
    """Source order, duplicates dropped (a problem found twice is reported once)."""
    return tuple(sorted(set(diags), key=lambda d: (d.line, d.column, d.code, d.message)))


class PrimitiveError(Exception):
    """A source failed to compile, or a kernel failed to bind; ``diagnostics`` lists every
    problem found, in source order."""

    def __init__(self, diagnostics: Iterable[Diagnostic]):
        self.diagnostics: tuple[Diagnostic, ...] = tuple(diagnostics)
        if not self.diagnostics:
            raise ValueError("PrimitiveError needs at least one diagnostic")
        more = len(self.diagnostics) - 1
        super().__init__(self.diagnostics[0].message + (f" (and {more} more)" if more else ""))

    def __reduce__(self):  # picklable across processes despite the custom __init__
        return (type(self), (self.diagnostics,))


class BindError(PrimitiveError):
    """``CheckedKernel.bind`` rejected the specs: the kernel is fine, the launch is not."""
