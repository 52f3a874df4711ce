"""Device arrays of the wgpu executor: ``WgpuArray`` and the shape helpers.

A ``WgpuArray`` is a strided view (buffer, element offset, shape, strides) of a wgpu storage
buffer, so RESHAPE, PERMUTE, SLICE and a transposed LINEAR weight cost no copy, as on NumPy
and CuPy; or a lazy elementwise value not computed yet; or a host scalar. Its operators and
methods go to the runtime's NumPy-like namespace (wgpu_numpy.WgpuNumpy), which records the
dispatches (wgpu_runtime.Runtime).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from hypervisor.errors import UnsupportedDtype

from . import wgsl

if TYPE_CHECKING:
    from .wgpu_runtime import Runtime

SUPPORTED = ("float32", "float16", "int32")


_NAMES: dict[np.dtype, str] = {}  # dtype -> its name (NumPy's dtype.name is a Python property: ~1.6 us)
_CHECKED: dict[tuple, np.dtype] = {}  # (dtype-like, has_f16) -> dtype, for the accepted ones
_MEMO = 64  # entries at most in either memo (a handful of dtypes and their spellings reach them)


def dtname(dt: np.dtype) -> str:
    """``dt.name``, memoized (called several times per dispatch)."""
    n = _NAMES.get(dt)
    if n is None:
        n = dt.name
        if len(_NAMES) < _MEMO:
            _NAMES[dt] = n
    return n


def check_dtype(dtype, has_f16: bool) -> np.dtype:
    try:
        return _CHECKED[dtype, has_f16]
    except (KeyError, TypeError):
        pass
    dt = np.dtype(dtype)
    if dt.name not in SUPPORTED or (dt.name == "float16" and not has_f16):
        have = ", ".join(d for d in SUPPORTED if d != "float16" or has_f16)
        raise UnsupportedDtype(f"the wgpu executor holds {have} only, not {dt.name} "
                               "(WGSL has no 64-bit types; docs/operations.md)")
    if len(_CHECKED) < _MEMO:
        _CHECKED[dtype, has_f16] = dt
    return dt


def contiguous_strides(shape) -> tuple[int, ...]:
    strides, acc = [], 1
    for n in reversed(shape):
        strides.append(acc)
        acc *= n
    return tuple(reversed(strides))


class WgpuArray:
    """A strided view of a device buffer (elements, not bytes). ``host`` is set on a 0-d
    scalar that has no buffer yet (a scalar param): kernels take it as a constant."""

    __slots__ = ("__weakref__", "buffer", "bufs", "dtype", "host", "lazy", "offset", "rt", "shape", "strides")

    def __init__(self, rt: Runtime, buffer, dtype, shape, strides=None, offset=0, host=None):
        self.rt, self.buffer, self.dtype = rt, buffer, np.dtype(dtype)
        self.shape = tuple(int(n) for n in shape)
        self.strides = contiguous_strides(self.shape) if strides is None else tuple(strides)
        self.offset, self.host = offset, host
        self.lazy = None  # (expr, operands): an elementwise result not computed yet (wgpu_numpy)
        self.bufs: frozenset[int] = frozenset()  # ids of the buffers a lazy value reads

    # ---- NumPy's array attributes --------------------------------------------------------
    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def is_contiguous(self) -> bool:
        return all(n == 1 or s == c for n, s, c in zip(self.shape, self.strides,
                                                        contiguous_strides(self.shape), strict=True))

    def device(self) -> WgpuArray:
        """This array with a buffer (a lazy value is computed, a host scalar uploaded now)."""
        if self.lazy is not None:
            expr, operands = self.lazy
            xp = self.rt.xp
            out = xp.empty(self.shape, self.dtype)
            xp.run_elementwise(expr, self.dtype, operands, self.shape, out)
            self.buffer, self.strides, self.offset = out.buffer, out.strides, 0
            self.lazy, self.bufs = None, frozenset()
            self.rt.pending.discard(self)
        elif self.buffer is None:
            check_dtype(self.dtype, self.rt.has_f16)
            self.buffer = self.rt.upload(np.asarray(self.host, self.dtype).reshape(1))
            self.strides, self.offset = (), 0
        return self

    # ---- views -----------------------------------------------------------------------------
    def view(self, shape, strides, offset) -> WgpuArray:
        return WgpuArray(self.rt, self.buffer, self.dtype, shape, strides, offset)

    def reshape(self, *shape) -> WgpuArray:
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], tuple | list) else shape
        shape = list(shape)
        if -1 in shape:
            known = math.prod(n for n in shape if n != -1)
            shape[shape.index(-1)] = self.size // max(known, 1)
        base = self if self.is_contiguous() else self.copy()
        base.device()
        return WgpuArray(self.rt, base.buffer, self.dtype, shape, None, base.offset)

    def __getitem__(self, key) -> WgpuArray:
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            at = next(i for i, k in enumerate(key) if k is Ellipsis)
            fill = self.ndim - (len(key) - 1)
            key = key[:at] + (slice(None),) * fill + key[at + 1:]
        self.device()
        shape, strides, offset = [], [], self.offset
        for d, n in enumerate(self.shape):
            k = key[d] if d < len(key) else slice(None)
            if isinstance(k, slice):
                start, stop, step = k.indices(n)
                if step < 1:
                    raise NotImplementedError("negative steps")
                shape.append(max(0, (stop - start + step - 1) // step))
                strides.append(self.strides[d] * step)
                offset += start * self.strides[d]
            else:
                i = int(k)
                offset += (i + n if i < 0 else i) * self.strides[d]
        return self.view(shape, strides, offset)

    def __setitem__(self, key, value) -> None:
        self.rt.xp.copy_into(self[key], value)

    # ---- values ----------------------------------------------------------------------------
    def copy(self) -> WgpuArray:
        return self.rt.xp.elementwise("{0}", self.dtype, (self,), self.shape)

    def astype(self, dtype, copy=True) -> WgpuArray:
        dt = np.dtype(dtype)
        if dt == self.dtype and not copy:
            return self
        check_dtype(dt, self.rt.has_f16)
        return self.rt.xp.elementwise("{0}", dt, (self,), self.shape)

    def get(self) -> np.ndarray:
        """The values on the host (waits for every dispatch recorded so far)."""
        if self.buffer is None and self.lazy is None:
            return np.asarray(self.host, self.dtype)
        self.device()
        src = self if self.is_contiguous() else self.copy()
        raw = self.rt.download(src.buffer, src.offset * self.dtype.itemsize, src.nbytes)
        return np.frombuffer(raw, self.dtype, count=self.size).reshape(self.shape).copy()

    def __int__(self) -> int:
        return int(self.get())

    def __index__(self) -> int:
        return int(self.get())

    def __float__(self) -> float:
        return float(self.get())

    def __bool__(self) -> bool:
        return bool(self.get())

    def __len__(self) -> int:
        return self.shape[0]

    # ---- operators (the compositions in array_ops.py) ---------------------------------------
    def __add__(self, o):
        return self.rt.xp.add(self, o)

    def __radd__(self, o):
        return self.rt.xp.add(o, self)

    def __sub__(self, o):
        return self.rt.xp.subtract(self, o)

    def __rsub__(self, o):
        return self.rt.xp.subtract(o, self)

    def __mul__(self, o):
        return self.rt.xp.multiply(self, o)

    def __rmul__(self, o):
        return self.rt.xp.multiply(o, self)

    def __truediv__(self, o):
        return self.rt.xp.divide(self, o)

    def __rtruediv__(self, o):
        return self.rt.xp.divide(o, self)

    def __neg__(self):
        return self.rt.xp.negative(self)

    def __repr__(self) -> str:
        return f"WgpuArray({self.dtype.name}{list(self.shape)})"


def _groups(n: int, per: int = wgsl.WG) -> tuple[int, int, int]:
    g = max(1, -(-n // per))
    x = min(g, 65535)
    return (x, -(-g // x), 1)


def _collapse(shape, *strides_list):
    """Merge adjacent dims that every operand walks contiguously; drop size-1 dims."""
    dims = [(n, [s[d] for s in strides_list]) for d, n in enumerate(shape) if n != 1]
    if not dims:
        return (1,), [(0,) for _ in strides_list]
    out = [dims[0]]
    for n, ss in dims[1:]:
        pn, pss = out[-1]
        if all(ps == s * n for ps, s in zip(pss, ss, strict=True)):
            out[-1] = (pn * n, ss)
        else:
            out.append((n, ss))
    return tuple(n for n, _ in out), [tuple(ss[j] for _, ss in out) for j in range(len(strides_list))]


def broadcast_shapes(*shapes):
    nd = max(len(s) for s in shapes)
    out = []
    for d in range(nd):
        dims = {s[len(s) - nd + d] for s in shapes if len(s) - nd + d >= 0} - {1}
        if len(dims) > 1:
            raise ValueError(f"shapes {shapes} do not broadcast")
        out.append(dims.pop() if dims else 1)
    return tuple(out)


def bcast_strides(a: WgpuArray, shape) -> tuple[int, ...]:
    pad = len(shape) - a.ndim
    return tuple(0 if d < pad or a.shape[d - pad] == 1 else a.strides[d - pad] for d in range(len(shape)))


def scalar_bits(value, dtype: np.dtype) -> int:
    if dtype.kind == "f":
        return int(np.asarray(value, np.float32).view(np.uint32))
    return int(np.asarray(value, np.int64).astype(np.int32).view(np.uint32))
