"""Runs a bound primitive kernel over an array namespace (NumPy or CuPy).

Both executor backends share this one interpreter, so an op means the same on either:
only the array module ``xp`` differs. Semantics follow docs/language.md, where NumPy is
the reference. Every op result is a fresh array (never a view of an operand), so an
in-place store into an output param can never change a value read earlier.
"""

from __future__ import annotations

import math
from collections.abc import Callable, MutableMapping
from typing import Any

from primitive_lang import BoundKernel
from primitive_lang.ast import Name, Number, OpStmt, Repeat

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _gelu(xp, a):
    # tanh approximation (docs/language.md): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    return 0.5 * a * (1.0 + xp.tanh(_SQRT_2_OVER_PI * (a + 0.044715 * (a * a * a))))


def _sigmoid(xp, a):
    return 1.0 / (1.0 + xp.exp(-a))


def _softmax(xp, a, axis):
    shifted = a - xp.max(a, axis=axis, keepdims=True)
    e = xp.exp(shifted)
    return e / xp.sum(e, axis=axis, keepdims=True)


def _relu(xp, a):
    return xp.maximum(a, a.dtype.type(0))


def _transpose(xp, a):
    return xp.ascontiguousarray(xp.swapaxes(a, -1, -2))


_BINARY: dict[str, Callable[[Any, Any, Any], Any]] = {
    "ADD": lambda xp, a, b: xp.add(a, b),
    "SUB": lambda xp, a, b: xp.subtract(a, b),
    "MUL": lambda xp, a, b: xp.multiply(a, b),
    "DIV": lambda xp, a, b: xp.divide(a, b),
    "MAX": lambda xp, a, b: xp.maximum(a, b),
    "MIN": lambda xp, a, b: xp.minimum(a, b),
    "PARALLEL_MATMUL": lambda xp, a, b: xp.matmul(a, b),
}

_UNARY: dict[str, Callable[[Any, Any], Any]] = {
    "RELU": _relu,
    "GELU": _gelu,
    "SIGMOID": _sigmoid,
    "TANH": lambda xp, a: xp.tanh(a),
    "EXP": lambda xp, a: xp.exp(a),
    "LOG": lambda xp, a: xp.log(a),
    "SQRT": lambda xp, a: xp.sqrt(a),
    "ABS": lambda xp, a: xp.abs(a),
    "NEG": lambda xp, a: xp.negative(a),
    "COPY": lambda xp, a: xp.array(a, copy=True),
    "TRANSPOSE": _transpose,
}

_REDUCE: dict[str, Callable[[Any, Any, int], Any]] = {
    "REDUCE_SUM": lambda xp, a, axis: xp.sum(a, axis=axis, dtype=a.dtype),
    "REDUCE_MAX": lambda xp, a, axis: xp.max(a, axis=axis),
    # docs/language.md: numpy.mean(a, axis=k).astype(a.dtype) (float16 accumulates in float32)
    "REDUCE_MEAN": lambda xp, a, axis: xp.mean(a, axis=axis).astype(a.dtype, copy=False),
}

SUPPORTED_OPS = frozenset(_BINARY) | frozenset(_UNARY) | frozenset(_REDUCE) | {"SOFTMAX", "FILL"}


class Interpreter:
    """Evaluates the statements of one bound kernel.

    ``env`` maps every param name to its array (0-d for scalars); output and inout params
    are the launch's buffers themselves and are written in place, so the results land
    where the guest will read them. Locals are created as the statements define them.
    """

    def __init__(self, xp, bound: BoundKernel, env: MutableMapping[str, Any]):
        self.xp = xp
        self.bound = bound
        self.env = env
        self.params = {p.name for p in bound.kernel.params}

    def run(self) -> None:
        self._block(self.bound.kernel.ast.body)

    def _block(self, stmts) -> None:
        for st in stmts:
            if isinstance(st, Repeat):
                for _ in range(st.count):
                    self._block(st.body)
            else:
                self._store(st.dest, self._eval(st))

    def _operand(self, op: Name | Number, like=None):
        if isinstance(op, Name):
            return self.env[op.name]
        # A literal takes the dtype of the tensor it meets (docs/language.md).
        dtype = like.dtype if like is not None else None
        return self.xp.asarray(op.value, dtype=dtype)

    def _eval(self, st: OpStmt):
        xp, op = self.xp, st.op
        if op == "FILL":
            spec = self.bound.shapes[st.dest.name]
            out = xp.empty(spec.shape, dtype=spec.dtype.value)
            src = st.args[0]
            out[...] = src.value if isinstance(src, Number) else self.env[src.name]
            return out
        if op in _BINARY:
            a_node, b_node = st.args
            tensor = next((self.env[n.name] for n in st.args if isinstance(n, Name)), None)
            a, b = self._operand(a_node, tensor), self._operand(b_node, tensor)
            return _BINARY[op](xp, a, b)
        a = self._operand(st.args[0])
        if op in _UNARY:
            return _UNARY[op](xp, a)
        if op in _REDUCE:
            return _REDUCE[op](xp, a, st.axis)
        if op == "SOFTMAX":
            return _softmax(xp, a, -1 if st.axis is None else st.axis)
        raise AssertionError(f"validated kernel has an op the executor lacks: {op}")

    def _store(self, dest: Name, value) -> None:
        spec = self.bound.shapes[dest.name]
        if value.dtype != spec.dtype.value:  # e.g. a float64 intermediate of a 0-d literal
            value = value.astype(spec.dtype.value)
        if dest.name in self.params:
            self.xp.copyto(self.env[dest.name], value)
        else:
            self.env[dest.name] = value
