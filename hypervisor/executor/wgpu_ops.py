"""The op table the interpreter uses on the wgpu executor (interpret.Interpreter's ``ops``).

The same names as array_ops.py, computing the same thing (docs/language.md), but with fused
kernels where array_ops composes several NumPy calls: each unary op is one elementwise
shader (GELU, SILU, SIGMOID included); SOFTMAX over the last axis and RMSNORM with a [D]
weight are one workgroup per row (wgsl.rowwise), otherwise reductions plus elementwise passes. RoPE's cos/sin tables are computed on the
host in float64, exactly as array_ops.rope does, then cast to the tensor's dtype; CAUSAL_MASK
reads its coordinates in the shader. GATHER ids are checked on the host (they are few: the
tokens of one step); a scalar id never leaves the host.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import array_ops
from .wgpu_array import WgpuArray

BINARY = array_ops.BINARY
REDUCE = array_ops.REDUCE
window = array_ops.window
write_window = array_ops.write_window
gather = array_ops.gather

# Each in the compute type {C} of its operand (f32 for float16 and float32, i32 for int32).
_UNARY_EXPR = {
    "RELU": "select({0}, {C}(0), {0} < {C}(0))",  # a NaN is not < 0: it stays
    "GELU": "0.5 * {0} * (1.0 + pxtanh(0.7978845608028654 * ({0} + 0.044715 * ({0} * {0} * {0}))))",
    "SIGMOID": "1.0 / (1.0 + exp(-{0}))",
    "TANH": "pxtanh({0})",
    "EXP": "exp({0})",
    "LOG": "log({0})",
    "SQRT": "sqrt({0})",
    "RSQRT": "1.0 / sqrt({0})",
    "SILU": "{0} / (1.0 + exp(-{0}))",
    "ABS": "abs({0})",
    "NEG": "-{0}",
    "COPY": "{0}",
}


def _unary(expr: str):
    def run(xp, a: WgpuArray) -> WgpuArray:
        return xp.elementwise(expr, a.dtype, (a,), a.shape)
    return run


UNARY = {op: _unary(e) for op, e in _UNARY_EXPR.items()}
UNARY["TRANSPOSE"] = lambda xp, a: xp.swapaxes(a, -1, -2).copy()


def softmax(xp, a: WgpuArray, axis: int) -> WgpuArray:
    if axis % a.ndim == a.ndim - 1:  # the usual case (attention): one pass per row, one dispatch
        return xp.rowwise("softmax", a)
    m = xp.max(a, axis=axis, keepdims=True)
    e = xp.elementwise("exp({0} - {1})", a.dtype, (a, m), a.shape)
    s = xp.sum(e, axis=axis, keepdims=True)
    return xp.elementwise("{0} / {1}", a.dtype, (e, s), a.shape)


def rmsnorm(xp, x: WgpuArray, w: WgpuArray, eps: float) -> WgpuArray:
    if w.shape == (x.shape[-1],) and w.lazy is None and (w.buffer is None or w.is_contiguous()):
        return xp.rowwise("rmsnorm", x, w, eps)  # one pass per row, one dispatch
    sq = xp.elementwise("{0} * {0}", x.dtype, (x,), x.shape)
    ms = xp.mean(sq, axis=-1, keepdims=True)
    shape = xp_shape(x, w)
    return xp.elementwise("({0} * (1.0 / sqrt({1} + {2}))) * {3}", x.dtype, (x, ms, x.dtype.type(eps), w), shape)


def xp_shape(*arrays) -> tuple[int, ...]:
    from .wgpu_array import broadcast_shapes

    return broadcast_shapes(*[a.shape for a in arrays])


@dataclass(frozen=True)
class HostConst:
    """A constant kept on the host (RoPE's float64 frequencies: WGSL has no float64)."""

    value: np.ndarray


def rope_theta(d: int, base: float) -> HostConst:
    return HostConst(array_ops.rope_theta(d, base))


def rope(xp, x: WgpuArray, pos, axis: int, theta: HostConst) -> WgpuArray:
    t, half = x.shape[axis], x.shape[-1] // 2
    angle = (np.arange(t, dtype=np.float64) + int(pos))[:, None] * theta.value[None, :]
    shape = [1] * x.ndim
    shape[axis], shape[-1] = t, half
    cos = xp.asarray(np.cos(angle).astype(x.dtype).reshape(shape))
    sin = xp.asarray(np.sin(angle).astype(x.dtype).reshape(shape))
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = xp.empty(x.shape, x.dtype)
    xp.elementwise("{0} * {1} - {2} * {3}", x.dtype, (x0, cos, x1, sin), x0.shape, out=out[..., 0::2])
    xp.elementwise("{0} * {3} + {2} * {1}", x.dtype, (x0, cos, x1, sin), x0.shape, out=out[..., 1::2])
    return out


def causal_mask(xp, a: WgpuArray, pos) -> WgpuArray:
    """a where s <= pos + t, -inf elsewhere (t, s: the coordinates of the last two axes)."""
    a.device()
    out = xp.empty(a.shape, a.dtype)
    # Unit dims kept apart so the shader sees t and s as its last two coordinates.
    shape = (int(np.prod(a.shape[:-2], dtype=np.int64)), *a.shape[-2:])
    lead = a.reshape(shape) if a.is_contiguous() else a.copy().reshape(shape)
    return xp.masked(lead, int(pos), out.reshape(shape)).reshape(a.shape)


def first_out_of_range(xp, ids: WgpuArray, n: int) -> tuple[int, int] | None:
    flat = ids.get().reshape(-1)
    bad = np.flatnonzero((flat < 0) | (flat >= n))
    return None if bad.size == 0 else (int(bad[0]), int(flat[bad[0]]))
