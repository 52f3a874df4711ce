"""Bounded steps (issue 14, docs/scheduling.md "Preemption"): a launch runs as a sequence
of steps, one op each, so that the dispatcher can hand the device to a more urgent launch
between two steps. An op whose estimated time exceeds the time slice is split into tiles,
each a step of its own:

- PARALLEL_MATMUL and LINEAR by rows of the left operand (``a[..., r0:r1, :] @ b``), in
  tiles of at least ``MIN_TILE_ROWS`` rows (BLAS takes another code path for a handful of
  rows, whose rounding may differ); on a device whose kernel computes every output element
  alike whatever its neighbours (wgpu's shader: ``min_cols``), also by blocks of columns
  (``a[..., r0:r1, :] @ b[..., :, c0:c1]``) once the rows alone cannot bound a step: a
  small product there can be one of only a few row blocks, each far longer than a slice;
- REDUCE_SUM / REDUCE_MAX / REDUCE_MEAN / ARGMAX by chunks of an axis that is *not*
  reduced, so each output element is reduced over the same values in the same order;
- the elementwise ops and SOFTMAX (along another axis than the first) by rows of the
  result, an operand without those rows broadcast whole.

Every tile computes exactly what the whole op computes for its part of the output: the
results are bit-identical to the untiled op (tests/unit/hypervisor/test_preempt.py checks
it). For a matmul on a BLAS that is checked, not assumed: a BLAS may round a tile of a few
rows apart from the whole product (another kernel for small products), so a product is
split only into tiles that ``tile_check.rows_agree`` found to agree, and runs whole
otherwise. The estimate comes from ``CostModel``, which learns the executor's speed for each
kind from the ops it runs (CPU time of the running thread).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator
from typing import Any

import numpy as np

from primitive_lang.ast import Name, Number

from . import array_ops, tile_check

#: Smallest tile of a matmul, in rows of the left operand.
MIN_TILE_ROWS = 32
#: A matmul's row tiles start on multiples of this many rows (_aligned: BLAS register blocks).
ROW_ALIGN = 8
#: Smallest chunk of a reduction, along the axis it is split on.
MIN_CHUNK = 16
#: Most tiles one op is split into (bounds the per-tile overhead of a huge op).
MAX_TILES = 4096
MATMULS = frozenset({"PARALLEL_MATMUL", "LINEAR"})
REDUCES = frozenset({"REDUCE_SUM", "REDUCE_MAX", "REDUCE_MEAN", "ARGMAX"})
# Elementwise ops (and SOFTMAX along an axis other than the first): split by rows of the
# result, each operand sliced where it has those rows and broadcast whole where it has not.
ELEMENTWISE = (frozenset(array_ops.UNARY) - {"TRANSPOSE"}) | (frozenset(array_ops.BINARY) - MATMULS) | {"SOFTMAX"}
TILEABLE = MATMULS | REDUCES | ELEMENTWISE
# Weight of a new observation in the speed estimates (exponential moving average).
_ALPHA = 0.25


class CostModel:
    """The executor's measured speed per kind of tileable op: matmul flop/s, reduction
    elements/s. Starts from deliberately low guesses (an op is tiled too finely at first,
    never too coarsely) and moves toward what the ops measure."""

    def __init__(self, matmul_flops_per_s: float = 5e9, reduce_elems_per_s: float = 5e8,
                 steps_per_s: float = 1e6):
        # "step": the fixed cost of one step on the device (a kernel launch, a dispatch),
        # learned on the asynchronous devices only (executor/stepping.py).
        self.rate = {"matmul": matmul_flops_per_s, "reduce": reduce_elems_per_s,
                     "elementwise": reduce_elems_per_s, "step": steps_per_s}

    def seconds(self, kind: str, work: float) -> float:
        return work / self.rate[kind]

    def observe_chunk(self, estimated: dict[str, float], seconds: float) -> None:
        """A chunk of steps whose estimate per kind was ``estimated`` (seconds) took
        ``seconds`` on the device (events, timestamps): each kind's speed moves by the
        error, in proportion to its part of the estimate (executor/stepping.py)."""
        total = sum(estimated.values())
        if total <= 0 or seconds <= 0:
            return
        ratio = min(max(seconds / total, 0.05), 20.0)
        for kind, est in estimated.items():
            if est > 0:
                self.rate[kind] /= ratio ** (2 * _ALPHA * est / total)

    def observe(self, kind: str, work: float, seconds: float) -> None:
        if seconds <= 1e-5 or work <= 0:  # too short to measure: timer resolution
            return
        self.rate[kind] += _ALPHA * (work / seconds - self.rate[kind])


def _bounds(n: int, parts: int) -> list[tuple[int, int]]:
    step, extra = divmod(n, parts)
    out, start = [], 0
    for i in range(parts):
        end = start + step + (1 if i < extra else 0)
        out.append((start, end))
        start = end
    return out


def _row_tiles(m: int, parts: int, min_rows: int, tail: int | None = None) -> list[tuple[int, int]]:
    """Row tiles of a matmul: ``parts`` (at most the blocks below) about equal tiles; where
    ``min_rows`` is above the CPU's 32 (a GPU's BLAS, the WGSL shader: their kernels work
    in row blocks of that size) every tile starts on a multiple of it and has at least
    that many rows, the last one taking the rest; with ``tail``, a rest of at least that
    many rows is a block of its own (a kernel that computes a partial block alike)."""
    if min_rows <= MIN_TILE_ROWS:
        return _aligned(m, parts, ROW_ALIGN, MIN_TILE_ROWS)
    edges = _block_edges(m, min_rows, tail)
    return [(edges[b0], edges[b1]) for b0, b1 in _bounds(len(edges) - 1, min(parts, len(edges) - 1))]


def _aligned(m: int, parts: int, align: int, least: int) -> list[tuple[int, int]]:
    """``parts`` about equal row tiles whose inner edges lie on multiples of ``align`` (the
    nearest to the equal split, so a tile is at most ``align`` rows over it): BLAS's kernels
    work in register blocks of a few rows, and a tile of an odd row count ends in a partial
    block on every call (issue 14, docs/benchmarks.md "The time-slice sweep": a 800-row
    matmul in 6 tiles of 133-134 rows cost +12-19 % over the whole op, in tiles of 128-136
    +5-12 %). Each tile keeps at least ``least`` rows (a short rest joins the tile before
    it, so there may be one tile fewer)."""
    if parts <= 1 or m < 2 * least:
        return [(0, m)]
    edges = [0]
    for i in range(1, parts):
        edge = align * round(m * i / parts / align)
        if edge - edges[-1] >= least and m - edge >= least:
            edges.append(edge)
    edges.append(m)
    return list(zip(edges[:-1], edges[1:], strict=True))


def _block_edges(m: int, size: int, tail: int | None) -> list[int]:
    full, rest = divmod(m, size)
    if full == 0:
        return [0, m]
    edges = [i * size for i in range(full)] + [m]
    if tail is not None and rest >= tail:
        edges.insert(full, full * size)
    return edges


class Tiler:
    """Splits an interpreter's tileable ops into steps of at most ``slice_s`` (estimated)."""

    def __init__(self, slice_s: float, model: CostModel, active: Callable[[], bool] | None = None, *,
                 min_rows: int = MIN_TILE_ROWS, timed: bool = True,
                 kinds: frozenset[str] = frozenset({"matmul", "reduce", "elementwise"}),
                 min_cols: int | None = None, tail_rows: int | None = None):
        self.slice_s = slice_s
        self.model = model
        self.active = active  # asked before each tileable op: tile it now? (None: always)
        self.min_rows = min_rows  # smallest matmul tile (rows of the left operand)
        # Columns of a matmul tile, at least (blocks of this many, the last one takes the
        # rest); None: matmuls are split by rows only (BLAS: a column split may round apart).
        self.min_cols = min_cols
        # With min_cols: a partial last block of at least this many rows is a tile of its
        # own (None: the last full block takes it); columns' partial last block always is.
        self.tail_rows = tail_rows
        # timed: the op runs while the thread waits (NumPy), so the thread's CPU time is the
        # op's time; an asynchronous device learns from its chunks' device time instead.
        self.timed = timed
        self.kinds = kinds  # the kinds of op it may split (an executor may rule some out)
        self.tiled_ops = 0  # ops split into more than one tile (tests, figures)
        self.refused = 0  # matmuls run whole: their tiles round apart on this BLAS (tile_check.py)
        self.tiles = 0
        self.part: float | None = None  # the fraction of its op the last tile computed

    def _observe(self, kind: str, work: float, t0: float) -> None:
        if self.timed:
            self.model.observe(kind, work, time.thread_time() - t0)

    def parts(self, kind: str, work: float, limit: int) -> int:
        if kind not in self.kinds or (self.active is not None and not self.active()):
            return 1
        est = self.model.seconds(kind, work)
        return max(1, min(math.ceil(est / self.slice_s) if self.slice_s > 0 else 1, limit, MAX_TILES))

    def eval(self, interp, st) -> Generator[None, None, tuple[Any, object]]:
        """The op's value (and the storage it shares, as Interpreter._eval returns), with a
        yield of ``st`` between tiles (``part``: the fraction of the op the tile just run
        computed). Over array_ops (NumPy, CuPy); with an executor's own op table (wgpu) only
        the matmuls tile, where its array module says so (``tiles_matmul``)."""
        self.part = None
        matmul = st.op in MATMULS and all(isinstance(a, Name) for a in st.args)
        if interp.ops is not array_ops:
            if matmul and getattr(interp.xp, "tiles_matmul", False):
                return (yield from self._matmul(interp, st))
            return interp._eval(st)
        if matmul:
            return (yield from self._matmul(interp, st))
        if st.op in REDUCES and st.axis is not None:
            return (yield from self._reduce(interp, st))
        if st.op in ELEMENTWISE:
            return (yield from self._rows(interp, st))
        return interp._eval(st)

    def _rows(self, interp, st):
        xp = interp.xp
        shape = interp.bound.shapes[st.dest.name].shape
        names = [a for a in st.args if isinstance(a, Name)]
        if not shape or not names or (st.op == "SOFTMAX" and (-1 if st.axis is None else st.axis) % len(shape) == 0):
            return interp._eval(st)
        work = float(math.prod(shape))
        parts = self.parts("elementwise", work, shape[0] // MIN_CHUNK)
        if parts == 1:
            t0 = time.thread_time()
            value = interp._eval(st)
            self._observe("elementwise", work, t0)
            return value
        self.tiled_ops += 1
        like = interp.env[names[0].name]

        def rows(arg, r0: int, r1: int):
            if isinstance(arg, Number):
                return like.dtype.type(arg.value)  # as Interpreter._operand: the tensor's dtype
            x = interp.env[arg.name]
            return x[r0:r1] if x.ndim == len(shape) and x.shape[0] == shape[0] else x  # else broadcast whole

        out = None
        for i, (r0, r1) in enumerate(_bounds(shape[0], parts)):
            if i:
                yield st
            t0 = time.thread_time()
            if st.op == "SOFTMAX":
                value = interp.ops.softmax(xp, rows(st.args[0], r0, r1), -1 if st.axis is None else st.axis)
            elif st.op in interp.ops.UNARY:
                value = interp.ops.UNARY[st.op](xp, rows(st.args[0], r0, r1))
            else:
                value = interp.ops.BINARY[st.op](xp, rows(st.args[0], r0, r1), rows(st.args[1], r0, r1))
            if out is None:
                out = xp.empty(shape, dtype=value.dtype)
            out[r0:r1] = value
            self._observe("elementwise", work * (r1 - r0) / shape[0], t0)
            self.tiles += 1
            self.part = (r1 - r0) / shape[0]
        return out, None

    def _matmul(self, interp, st):
        xp = interp.xp
        a, b = interp.env[st.args[0].name], interp.env[st.args[1].name]
        if a.ndim < 2 or b.ndim < 2:
            return interp._eval(st)
        m, k = a.shape[-2], a.shape[-1]
        n = b.shape[-2] if st.op == "LINEAR" else b.shape[-1]
        batch = math.prod(np.broadcast_shapes(a.shape[:-2], b.shape[:-2]))
        flops = 2.0 * m * k * n * batch
        tail = self.tail_rows if self.min_cols else None
        if self.min_cols and m >= self.min_rows:
            row_blocks = len(_block_edges(m, self.min_rows, tail)) - 1
            col_blocks = len(_block_edges(n, self.min_cols, 1)) - 1
        else:
            row_blocks, col_blocks = m // self.min_rows, 1
        parts = self.parts("matmul", flops, row_blocks * col_blocks)
        if parts > 1:
            n_rows = max(1, min(parts, row_blocks))
            rows = _row_tiles(m, n_rows, self.min_rows, tail)
            # (NumPy, CuPy: a BLAS; wgpu's own shader computes every element alike, tested)
            if interp.ops is array_ops and not tile_check.rows_agree(xp, st.op == "LINEAR", a, b, rows):
                parts = 1  # this BLAS rounds these tiles apart from the whole product: run it whole
                self.refused += 1
        if parts == 1:
            t0 = time.thread_time()
            value = interp._eval(st)
            self._observe("matmul", flops, t0)
            return value
        self.tiled_ops += 1
        # array_ops' PARALLEL_MATMUL and LINEAR, tile by tile: xp.matmul(a, b) and
        # xp.matmul(a, swapaxes(w)). Each tile is written straight into its part of the result (no tile-sized temporary
        # beside it: the launch's temporaries stay what the cost model accounted for). Rows first; columns only
        # where the rows alone leave steps over the slice (and the device allows it: min_cols).
        right = xp.swapaxes(b, -1, -2) if st.op == "LINEAR" else b
        out = xp.empty(np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (m, n), dtype=xp.result_type(a, b))
        n_cols = min(col_blocks, math.ceil(parts / n_rows)) if parts > n_rows else 1
        cols = _row_tiles(n, n_cols, self.min_cols, 1) if n_cols > 1 else [(0, n)]
        i = 0
        for r0, r1 in rows:
            for c0, c1 in cols:
                if i:
                    yield st
                i += 1
                t0 = time.thread_time()
                if n_cols == 1:
                    xp.matmul(a[..., r0:r1, :], right, out=out[..., r0:r1, :])
                else:
                    xp.matmul(a[..., r0:r1, :], right[..., :, c0:c1], out=out[..., r0:r1, c0:c1])
                part = (r1 - r0) * (c1 - c0) / (m * n)
                self._observe("matmul", flops * part, t0)
                self.tiles += 1
                self.part = part
        return out, None

    def _reduce(self, interp, st):
        xp, fn = interp.xp, interp.ops.REDUCE[st.op]
        a = interp.env[st.args[0].name]
        if a.ndim < 2:
            return interp._eval(st)
        axis = st.axis % a.ndim
        split = next(d for d in range(a.ndim) if d != axis)  # the outermost axis kept
        parts = self.parts("reduce", float(a.size), a.shape[split] // MIN_CHUNK)
        if parts == 1:
            t0 = time.thread_time()
            value = interp._eval(st)
            self._observe("reduce", float(a.size), t0)
            return value
        self.tiled_ops += 1
        pieces = []
        lead = (slice(None),) * split
        for i, (c0, c1) in enumerate(_bounds(a.shape[split], parts)):
            if i:
                yield st
            t0 = time.thread_time()
            chunk = a[lead + (slice(c0, c1),)]
            pieces.append(fn(xp, chunk, axis))
            self._observe("reduce", float(chunk.size), t0)
            self.tiles += 1
            self.part = (c1 - c0) / a.shape[split]
        return xp.concatenate(pieces, axis=split if split < axis else split - 1), None
