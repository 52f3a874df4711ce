"""``WgpuNumpy``: the NumPy subset the interpreter uses, as wgpu compute dispatches.

Results are new contiguous arrays (views where NumPy returns views: reshape of a contiguous
array, transpose, swapaxes, basic indexing). Python and NumPy scalars are "weak" (NEP 50):
they take the dtype of the array they meet, and travel to the shader in its meta slot.
"""

from __future__ import annotations

import math
import sys

import numpy as np

from . import wgsl
from .wgpu_array import (
    WgpuArray,
    _collapse,
    _groups,
    bcast_strides,
    broadcast_shapes,
    check_dtype,
    contiguous_strides,
    dtname,
    scalar_bits,
)


class _Spent:
    """The value of a lazy array computed in place into its destination (copyto): any use
    of it raises (NumPy cannot make a number of it) instead of reading the new contents."""

    def __repr__(self) -> str:
        return "<spent: stored in place>"


SPENT = _Spent()

MATVEC_ROWS = 8  # matmuls with at most this many rows use wgsl.matvec (the 64-row tiles would idle)


class WgpuNumpy:
    float16, float32, float64 = np.float16, np.float32, np.float64
    int32, int64 = np.int32, np.int64

    def __init__(self, rt):
        self.rt = rt

    # ---- creation ------------------------------------------------------------------------
    def empty(self, shape, dtype=np.float32) -> WgpuArray:
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        dt = check_dtype(dtype, self.rt.has_f16)
        buf = self.rt.storage(math.prod(shape) * dt.itemsize)
        return WgpuArray(self.rt, buf, dt, shape)

    zeros = empty  # WebGPU zero-fills every new buffer

    def asarray(self, a, dtype=None) -> WgpuArray:
        if isinstance(a, WgpuArray):
            return a if dtype is None else a.astype(dtype, copy=False)
        if not isinstance(a, np.ndarray | np.generic | int | float | list | tuple):
            return a  # a constant an op keeps on the host (wgpu_ops.HostConst)
        host = np.ascontiguousarray(a, dtype=dtype)
        check_dtype(host.dtype, self.rt.has_f16)
        return WgpuArray(self.rt, self.rt.upload(host), host.dtype, host.shape)

    def array(self, a, copy=True) -> WgpuArray:
        return a.copy() if copy else a

    def host_scalar(self, value, dtype) -> WgpuArray:
        return WgpuArray(self.rt, None, dtype, (), (), 0, host=value)

    # ---- views ---------------------------------------------------------------------------
    def reshape(self, a: WgpuArray, shape) -> WgpuArray:
        return a.reshape(tuple(shape))

    def transpose(self, a: WgpuArray, axes) -> WgpuArray:
        a.device()
        return a.view([a.shape[k] for k in axes], [a.strides[k] for k in axes], a.offset)

    def swapaxes(self, a: WgpuArray, i: int, j: int) -> WgpuArray:
        axes = list(range(a.ndim))
        axes[i], axes[j] = axes[j], axes[i]
        return self.transpose(a, axes)

    # ---- elementwise ---------------------------------------------------------------------
    def elementwise(self, expr: str, dtype, operands, shape, out: WgpuArray | None = None,
                    collapse: bool = True) -> WgpuArray:
        """out = expr(operands) broadcast to ``shape``. ``expr`` names the operands {0}, {1},
        ... and the compute type {C}. Without ``out`` the result is lazy: nothing runs until
        it is needed (an op that reads a buffer, a read on the host) or stored (copyto writes
        it straight into its destination), and a lazy operand of another elementwise op is
        fused into that op's shader. With ``collapse=False`` the dims stay as given, so
        ``expr`` may use the coordinates c0, c1, ... of the output element."""
        dt = np.dtype(dtype)
        if out is None and collapse:
            lazy = WgpuArray(self.rt, None, dt, shape)
            lazy.lazy = (expr, tuple(operands))
            bufs = set()
            for op in operands:
                if isinstance(op, WgpuArray):
                    if op.buffer is not None:
                        bufs.add(id(op.buffer))
                    elif op.lazy is not None:
                        bufs |= op.bufs
            lazy.bufs = frozenset(bufs)
            self.rt.pending.add(lazy)
            return lazy
        if out is None:
            out = self.empty(shape, dt)
        else:
            self._before_write(out)
        return self.run_elementwise(expr, dt, operands, tuple(shape), out, collapse)

    def _before_write(self, out: WgpuArray, skip: WgpuArray | None = None) -> None:
        """Lazy values that read ``out``'s buffer are computed before it is written (but
        ``skip``: the value being written, see copyto)."""
        key = id(out.buffer)
        for lazy in [z for z in self.rt.pending if key in z.bufs and z is not skip]:
            lazy.device()

    MAX_LETS = 24  # fused ops in one shader at most
    MAX_LEAF_BUFFERS = 6  # input buffers of one shader at most (8 storage bindings: with out and meta)

    def run_elementwise(self, expr: str, dt: np.dtype, operands, shape, out: WgpuArray, collapse: bool = True):
        n = math.prod(out.shape)
        if n == 0:
            return out
        desc, buffers, strides, offsets, scalars = [], [], [bcast_strides(out, shape)], [out.offset], []
        binding = {id(out.buffer): 0}
        leaves: dict[int, str] = {}
        lets: list[str] = []
        fused: dict[int, str] = {}

        def leaf(op) -> str:
            if isinstance(op, WgpuArray) and op.lazy is not None:
                if id(op) in fused:
                    return fused[id(op)]
                if len(lets) < self.MAX_LETS and len(buffers) + len(op.bufs) <= self.MAX_LEAF_BUFFERS:
                    sub_expr, sub_ops = op.lazy
                    texts = [leaf(o) for o in sub_ops]
                    c, st = wgsl.COMPUTE[dtname(op.dtype)], wgsl.STORAGE[dtname(op.dtype)]
                    name = fused[id(op)] = f"t{len(lets)}"
                    lets.append(f"let {name} = {c}({st}({sub_expr.format(*texts, C=c)}));")
                    return name
                op.device()  # too much to fuse: computed on its own first
            if isinstance(op, WgpuArray) and op.buffer is not None:
                if op.buffer is out.buffer and (op.offset, bcast_strides(op, shape)) != (out.offset, strides[0]):
                    op = op.copy().device()  # never a read of elements this dispatch overwrites
                if id(op) in leaves:
                    return leaves[id(op)]
                b = binding.get(id(op.buffer))
                if b is None:
                    b = binding[id(op.buffer)] = len(buffers) + 1
                    buffers.append(op.buffer)
                desc.append(("buf", b, dtname(op.dtype)))
                strides.append(bcast_strides(op, shape))
                offsets.append(op.offset)
                name = leaves[id(op)] = f"x{len(desc) - 1}"
                return name
            value = op.host if isinstance(op, WgpuArray) else op
            sdt = op.dtype if isinstance(op, WgpuArray | np.generic) and dtname(op.dtype) in wgsl.COMPUTE else dt
            if dtname(sdt) not in wgsl.COMPUTE:  # a 64-bit host scalar meets a 32-bit array
                sdt = dt
            desc.append(("scalar", dtname(sdt)))
            scalars.append(scalar_bits(value, sdt))
            return f"x{len(desc) - 1}"

        texts = [leaf(op) for op in operands]
        result = expr.format(*texts, C=wgsl.COMPUTE[dtname(dt)])
        cshape, cstrides = _collapse(tuple(shape), *strides) if collapse else (tuple(shape), strides)
        nd = len(cshape)
        meta = [n, *cshape]
        for off, st in zip(offsets, cstrides, strict=True):
            meta += [off, *st]
        meta += scalars
        key = ("ew", tuple(lets), result, dtname(dt), tuple(desc), nd)
        self.rt.dispatch(key, lambda: wgsl.elementwise(tuple(lets), result, dtname(dt), tuple(desc), nd),
                         [out.buffer, *buffers], meta, _groups(n))
        return out

    def _ew(self, expr: str, *operands, dtype=None) -> WgpuArray:
        arrays = [o for o in operands if isinstance(o, WgpuArray)]
        dt = np.dtype(dtype) if dtype is not None else next(
            (a.dtype for a in arrays if a.host is None), arrays[0].dtype)
        shape = broadcast_shapes(*[a.shape for a in arrays])
        return self.elementwise(expr, dt, operands, shape)

    def add(self, a, b):
        return self._ew("{0} + {1}", a, b)

    def subtract(self, a, b):
        return self._ew("{0} - {1}", a, b)

    def multiply(self, a, b):
        return self._ew("{0} * {1}", a, b)

    def divide(self, a, b):
        return self._ew("{0} / {1}", a, b)

    def _float(self, *ops) -> bool:
        return next(o for o in ops if isinstance(o, WgpuArray)).dtype.kind == "f"

    def maximum(self, a, b):
        return self._ew("pxmax({0}, {1})" if self._float(a, b) else "max({0}, {1})", a, b)

    def minimum(self, a, b):
        return self._ew("pxmin({0}, {1})" if self._float(a, b) else "min({0}, {1})", a, b)

    def negative(self, a):
        return self._ew("-{0}", a)

    def abs(self, a):
        return self._ew("abs({0})", a)

    def exp(self, a):
        return self._ew("exp({0})", a)

    def log(self, a):
        return self._ew("log({0})", a)

    def sqrt(self, a):
        return self._ew("sqrt({0})", a)

    def tanh(self, a):
        return self._ew("pxtanh({0})", a)

    def reciprocal(self, a):
        return self._ew("1.0 / {0}", a)

    #: References to the value copyto is given when nobody else holds it: the interpreter's
    #: _block and _store, copyto's parameter and getrefcount's argument (measured, and
    #: checked by a test: a value also kept elsewhere counts more).
    ALONE_REFS = 4

    def copyto(self, dst: WgpuArray, src) -> None:
        """dst[...] = src (a lazy src is computed straight into dst).

        A lazy src that reads dst's own buffer (``ADD z y -> z``) would be computed into a
        temporary first, then copied. When nothing else holds src (a statement's result on
        its way to its destination), it is computed in place instead: each invocation reads
        the elements it writes, at the same offsets and strides (run_elementwise copies any
        other alias of dst first), so the values are the same, with one dispatch and no
        temporary. src is then spent: it is neither lazy nor on the device, so a use of it
        would fail loudly rather than read dst's new contents."""
        dst.device()
        if (isinstance(src, WgpuArray) and src.lazy is not None and id(dst.buffer) in src.bufs
                and sys.getrefcount(src) <= self.ALONE_REFS):
            self._before_write(dst, skip=src)
            self.run_elementwise("{0}", dst.dtype, (src,), tuple(dst.shape), dst)
            if src.lazy is not None:  # fused into dst's shader: spent (computed alone: a temporary)
                src.lazy, src.bufs, src.host = None, frozenset(), SPENT
                self.rt.pending.discard(src)
            return
        self.elementwise("{0}", dst.dtype, (src,), dst.shape, out=dst)

    def copy_into(self, dst: WgpuArray, src) -> None:
        """dst[...] = src, src left as it was (for callers that may keep src: __setitem__)."""
        dst.device()
        self.elementwise("{0}", dst.dtype, (src,), dst.shape, out=dst)

    def concatenate(self, arrays, axis=0) -> WgpuArray:
        a0 = arrays[0]
        axis %= a0.ndim
        shape = list(a0.shape)
        shape[axis] = sum(a.shape[axis] for a in arrays)
        out, at = self.empty(shape, a0.dtype), 0
        for a in arrays:
            idx = (slice(None),) * axis + (slice(at, at + a.shape[axis]),)
            self.copyto(out[idx], a)
            at += a.shape[axis]
        return out

    def masked(self, a: WgpuArray, pos: int, out: WgpuArray) -> WgpuArray:
        """CAUSAL_MASK over a [n, T, S] array: a where s <= pos + t, else -inf."""
        return self.elementwise("select(pxneginf(), {0}, i32(c2) <= {1} + i32(c1))", a.dtype,
                                (a, np.int32(pos)), a.shape, out=out, collapse=False)

    # ---- matmul --------------------------------------------------------------------------
    #: Matmuls may be tiled by rows (executor/tiling.py, in blocks of TILE_ROWS: the
    #: shader's 64-row output tile; each output element sums over K in the same order
    #: whatever the rows around it, so a tile computes exactly its rows of the product),
    #: and then by columns in blocks of TILE_COLS (its 64-column output tile, for the same
    #: reason; the runtime makes it a multiple for the driver's threads, or None on a GPU):
    #: on lavapipe one 64-row block of a 5 ms product is 2-3 ms, over the slice.
    #: A partial last block is a tile of its own where it still takes this shader: rows
    #: from TILE_TAIL_ROWS (fewer go to wgsl.matvec, which sums in another order), any columns.
    tiles_matmul = True
    TILE_ROWS = 64
    TILE_COLS = 64
    TILE_TAIL_ROWS = MATVEC_ROWS + 1

    def result_type(self, a: WgpuArray, b: WgpuArray):
        return np.result_type(a.dtype, b.dtype)

    def matmul(self, a: WgpuArray, b: WgpuArray, out: WgpuArray | None = None) -> WgpuArray:
        (m, k), (k2, n) = a.shape[-2:], b.shape[-2:]
        assert k == k2, (a.shape, b.shape)
        batch = broadcast_shapes(a.shape[:-2], b.shape[:-2])
        if out is not None:  # a tile of a larger result (tiling.py): written in place where the shader can
            o_sb = self._block_of(out, a, b, batch, m, n)
            if o_sb is None:
                self.copyto(out, self.matmul(a, b))
                return out
            self._before_write(out)
        a.device(), b.device()
        if out is None:
            out = self.empty((*batch, m, n), a.dtype)
            o_sb = m * n
        nb = math.prod(batch)
        if nb == 0 or m * n == 0:
            return out
        sa = bcast_strides(a.view(a.shape[:-2], a.strides[:-2], 0), batch)
        sb = bcast_strides(b.view(b.shape[:-2], b.strides[:-2], 0), batch)
        so = contiguous_strides(batch)
        cbatch, (csa, csb, _) = _collapse(batch, sa, sb, so) if batch else ((1,), [(0,), (0,), (1,)])
        same = a.buffer is b.buffer
        meta = [m, n, k, a.offset, b.offset, a.strides[-2], a.strides[-1], b.strides[-2], b.strides[-1],
                *cbatch, *csa, *csb]
        nbd = len(cbatch)
        bufs = [out.buffer, a.buffer] + ([] if same else [b.buffer])
        if m <= MATVEC_ROWS and -(-n // 8) <= 65535:  # a decode step: row-by-row dot products
            kind, gen, grid = "matvec", wgsl.matvec, (-(-n // 8), m)
        else:
            kind, gen, grid = "matmul", wgsl.matmul, (-(-n // 64), -(-m // 64))
        key = (kind, dtname(a.dtype), nbd, same)
        for first in range(0, nb, 65535):  # a grid holds at most 65535 workgroups in z
            self.rt.dispatch(key, lambda: gen(dtname(a.dtype), dtname(a.dtype), nbd, same), bufs,
                             [*meta, first, out.offset, o_sb, out.strides[-2]], (*grid, min(65535, nb - first)))
        return out

    @staticmethod
    def _block_of(out: WgpuArray, a: WgpuArray, b: WgpuArray, batch: tuple, m: int, n: int) -> int | None:
        """The batch stride with which the shader writes a@b straight into ``out`` (a block of
        a larger result: rows of unit column stride, batches evenly spaced); None when it
        cannot (another dtype, a buffer it reads, another layout): then through a copy."""
        if (out.dtype != a.dtype or tuple(out.shape) != (*batch, m, n) or out.strides[-1] != 1
                or out.buffer is a.buffer or out.buffer is b.buffer or out.lazy is not None):
            return None
        dims = [(s, st) for s, st in zip(batch, out.strides[:-2], strict=True) if s > 1]
        if not dims:
            return 0
        o_sb = dims[-1][1]
        inner = 1
        for size, stride in reversed(dims):
            if stride != inner * o_sb:
                return None
            inner *= size
        return o_sb

    # ---- reductions ----------------------------------------------------------------------
    def _reduce(self, kind: str, a: WgpuArray, axis, keepdims: bool, out_dtype) -> WgpuArray:
        a.device()
        if axis is None:
            a, axis = a.reshape(-1), 0
        axis %= a.ndim
        oshape = a.shape[:axis] + a.shape[axis + 1:]
        out = self.empty(oshape, out_dtype)
        nout, length = math.prod(oshape), a.shape[axis]
        if nout:
            istr = a.strides[:axis] + a.strides[axis + 1:]
            cshape, (_, cin) = _collapse(oshape, contiguous_strides(oshape), istr) if oshape else ((1,), [(1,), (0,)])
            nd = len(cshape)
            meta = [nout, length, a.strides[axis], a.offset, *cshape, *cin]
            key = ("reduce", kind, dtname(a.dtype), dtname(out.dtype), nd)
            self.rt.dispatch(key, lambda: wgsl.reduce(kind, dtname(a.dtype), dtname(out.dtype), nd),
                             [out.buffer, a.buffer], meta, _groups(nout, 1))
        if keepdims:
            out = out.reshape(a.shape[:axis] + (1,) + a.shape[axis + 1:])
        return out

    def sum(self, a, axis=None, dtype=None, keepdims=False):
        return self._reduce("sum", a, axis, keepdims, dtype or a.dtype)

    def max(self, a, axis=None, keepdims=False):
        return self._reduce("max", a, axis, keepdims, a.dtype)

    def mean(self, a, axis=None, keepdims=False):
        return self._reduce("mean", a, axis, keepdims, a.dtype)

    def argmax(self, a, axis=None):
        return self._reduce("argmax", a, axis, False, np.int32)

    def rowwise(self, kind: str, a: WgpuArray, w: WgpuArray | None = None, eps: float = 0.0) -> WgpuArray:
        """Fused SOFTMAX (last axis) or RMSNORM over the rows of a contiguous array (wgsl.rowwise)."""
        a.device()
        if not a.is_contiguous():
            a = a.copy().device()
        length = a.shape[-1]
        rows = a.size // max(length, 1)
        out = self.empty(a.shape, a.dtype)
        if rows and length:
            bufs = [out.buffer, a.buffer]
            meta = [rows, length, a.offset, 0, scalar_bits(eps, np.dtype(np.float32))]
            if w is not None:
                w.device()
                bufs.append(w.buffer)
                meta[3] = w.offset
            self.rt.dispatch(("row", kind, dtname(a.dtype)), lambda: wgsl.rowwise(kind, dtname(a.dtype)), bufs, meta,
                             _groups(rows, 1))
        return out

    # ---- indexing ------------------------------------------------------------------------
    def take(self, table: WgpuArray, ids: WgpuArray, axis=0) -> WgpuArray:
        assert axis == 0
        table.device()
        if not table.is_contiguous():
            table = table.copy()
        ids = ids.device()
        if not ids.is_contiguous() or ids.offset:
            ids = ids.copy()
        ids = ids if ids.dtype == np.int32 else ids.astype(np.int32)
        row = math.prod(table.shape[1:])
        out = self.empty(ids.shape + table.shape[1:], table.dtype)
        n = out.size
        if n:
            self.rt.dispatch(("gather", dtname(table.dtype)), lambda: wgsl.gather(dtname(table.dtype)),
                             [out.buffer, table.buffer, ids.buffer], [n, row, table.shape[0], table.offset],
                             _groups(n))
        return out
