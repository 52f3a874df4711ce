"""The ops of the primitive language over an array namespace ``xp`` (NumPy or CuPy).

Each function computes one op exactly as docs/language.md defines it against NumPy; the
interpreter (interpret.py) resolves operands, attributes and runtime values, checks runtime
indices, and owns aliasing. Every function here returns a new array, except ``reshape``,
``permute`` and ``window`` (views of their operand, which the interpreter tracks) and
``write_window`` (an in-place store the interpreter makes safe first).

Scalars that take part in arithmetic are passed as NumPy scalars of the operand's dtype
(``dtype.type(v)``), never as 0-d device arrays: on CuPy a scalar kernel argument costs
nothing, while a 0-d array is a host-to-device copy that may synchronise the stream.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _gelu(xp, a):
    # tanh approximation (docs/language.md): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    return 0.5 * a * (1.0 + xp.tanh(_SQRT_2_OVER_PI * (a + 0.044715 * (a * a * a))))


def _sigmoid(xp, a):
    return 1.0 / (1.0 + xp.exp(-a))


def _silu(xp, a):
    return a / (a.dtype.type(1) + xp.exp(-a))


def softmax(xp, a, axis):
    shifted = a - xp.max(a, axis=axis, keepdims=True)
    e = xp.exp(shifted)
    return e / xp.sum(e, axis=axis, keepdims=True)


def _relu(xp, a):
    return xp.maximum(a, a.dtype.type(0))


def _transpose(xp, a):
    # A copy always: ascontiguousarray would return the operand itself when a size-1 axis
    # makes the swapped view contiguous, and results must never alias operands.
    return xp.swapaxes(a, -1, -2).copy()


BINARY: dict[str, Callable[[Any, Any, Any], Any]] = {
    "ADD": lambda xp, a, b: xp.add(a, b),
    "SUB": lambda xp, a, b: xp.subtract(a, b),
    "MUL": lambda xp, a, b: xp.multiply(a, b),
    "DIV": lambda xp, a, b: xp.divide(a, b),
    "MAX": lambda xp, a, b: xp.maximum(a, b),
    "MIN": lambda xp, a, b: xp.minimum(a, b),
    "PARALLEL_MATMUL": lambda xp, a, b: xp.matmul(a, b),
    # y = a @ w^T: the transpose is a view, which BLAS / cuBLAS take as a flag (no copy).
    "LINEAR": lambda xp, a, w: xp.matmul(a, xp.swapaxes(w, -1, -2)),
}

UNARY: dict[str, Callable[[Any, Any], Any]] = {
    "RELU": _relu,
    "GELU": _gelu,
    "SIGMOID": _sigmoid,
    "TANH": lambda xp, a: xp.tanh(a),
    "EXP": lambda xp, a: xp.exp(a),
    "LOG": lambda xp, a: xp.log(a),
    "SQRT": lambda xp, a: xp.sqrt(a),
    "RSQRT": lambda xp, a: xp.reciprocal(xp.sqrt(a)),  # = 1 / sqrt(a), one rounding each
    "SILU": _silu,
    "ABS": lambda xp, a: xp.abs(a),
    "NEG": lambda xp, a: xp.negative(a),
    "COPY": lambda xp, a: xp.array(a, copy=True),
    "TRANSPOSE": _transpose,
}

REDUCE: dict[str, Callable[[Any, Any, int], Any]] = {
    "REDUCE_SUM": lambda xp, a, axis: xp.sum(a, axis=axis, dtype=a.dtype),
    "REDUCE_MAX": lambda xp, a, axis: xp.max(a, axis=axis),
    # docs/language.md: numpy.mean(a, axis=k).astype(a.dtype) (float16 accumulates in float32)
    "REDUCE_MEAN": lambda xp, a, axis: xp.mean(a, axis=axis).astype(a.dtype, copy=False),
    # the first maximum (NaN counts as the maximum, as in NumPy), as int32
    "ARGMAX": lambda xp, a, axis: xp.argmax(a, axis=axis).astype(xp.int32),
}


def _axis_index(axis: int, sl: slice) -> tuple:
    return (slice(None),) * axis + (sl,)


def window(a, axis: int, start: int, size: int):
    """a[..., start:start+size, ...] along ``axis``: a view. The caller has checked the range."""
    return a[_axis_index(axis, slice(start, start + size))]


def write_window(dest, src, axis: int, start: int) -> None:
    """dest[..., start:start+n, ...] = src along ``axis``, in place (range checked by the caller)."""
    dest[_axis_index(axis, slice(start, start + src.shape[axis]))] = src


def gather(xp, table, ids):
    """table[ids] for ids already known to lie in [0, len(table))."""
    return xp.take(table, ids, axis=0)


def first_out_of_range(xp, ids, n: int) -> tuple[int, int] | None:
    """(position in the flattened ids, id) of the first id outside [0, n), or None."""
    flat = ids.reshape(-1)
    bad = (flat < 0) | (flat >= n)
    if not bool(bad.any()):
        return None
    at = int(xp.argmax(bad))
    return at, int(flat[at])


def rmsnorm(xp, x, w, eps: float):
    # (x * (1 / sqrt(mean(x*x, axis=-1, keepdims=True) + eps))) * w, all in x's dtype
    ms = xp.mean(x * x, axis=-1, keepdims=True)
    return (x * xp.reciprocal(xp.sqrt(ms + x.dtype.type(eps)))) * w


def rope_theta(d: int, base: float) -> np.ndarray:
    """base ** (-2i/d) for i in 0..d/2-1, in float64 (NumPy on the host, for every backend)."""
    return np.power(np.float64(base), -2.0 * np.arange(d // 2, dtype=np.float64) / d)


def rope(xp, x, pos, axis: int, theta):
    """Adjacent pairs (x[2i], x[2i+1]) of the last axis rotated by (pos + t) * theta[i], where t
    indexes ``axis``. ``pos`` is an int or a 0-d int device array; ``theta`` a float64 device
    array of d/2 entries (rope_theta)."""
    t = x.shape[axis]
    half = x.shape[-1] // 2
    angle = (xp.arange(t, dtype=xp.float64) + pos)[:, None] * theta[None, :]  # float64 [t, d/2]
    shape = [1] * x.ndim
    shape[axis], shape[-1] = t, half
    cos = xp.cos(angle).astype(x.dtype).reshape(shape)
    sin = xp.sin(angle).astype(x.dtype).reshape(shape)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = xp.empty(x.shape, dtype=x.dtype)
    out[..., 0::2] = x0 * cos - x1 * sin
    out[..., 1::2] = x0 * sin + x1 * cos
    return out


def causal_mask(xp, a, pos):
    """a where s <= pos + t (t along axis -2, s along axis -1), -inf elsewhere."""
    t, s = a.shape[-2], a.shape[-1]
    keep = xp.arange(s, dtype=xp.int64)[None, :] <= (xp.arange(t, dtype=xp.int64) + pos)[:, None]
    return xp.where(keep, a, a.dtype.type(-np.inf))
