"""Runs a bound primitive kernel over an array namespace (NumPy or CuPy).

Both executor backends share this one interpreter, so an op means the same on either: only
the array module ``xp`` differs. Semantics follow docs/language.md, where NumPy is the
reference; the ops themselves are in array_ops.py.

Values. Every op result *behaves* as a fresh array: a later in-place store never changes a
value read earlier. RESHAPE, PERMUTE and SLICE return views for speed, so the interpreter
tracks which storage each name's array lives in (``_root``): before an in-place store (a
write to an out/inout param, a SLICE_WRITE) it copies whatever still shares that storage
and is read again later (``_Plan.live_after``); a SLICE_WRITE into a local that views a
param copies the local first, so nothing is ever written through a view into an ``in``
param (model weights are read-only buffers other VMs share).

Ops. ``ops`` is array_ops (NumPy, CuPy) or a table with the same names that an executor
supplies to run some ops its own way (the wgpu executor's fused kernels, wgpu_ops.py); what
each op computes stays the one definition in docs/language.md.

Runtime indices. A SLICE/SLICE_WRITE start and a GATHER id out of range raise
``IndexOutOfRange`` naming the statement's line and the value; nothing is read or written
outside a buffer and nothing wraps. A start given by a scalar param is checked before the
first statement runs (its host value is known: executors pass scalars as ``HostScalar``),
so that launch writes nothing. Other checks run at their statement, which then writes
nothing; with ``defer_checks`` (CuPy) a GATHER's ids are clamped on the device and checked
when the launch completes (``check_deferred``), so as not to synchronise the stream.
"""

from __future__ import annotations

import itertools
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any
from weakref import WeakKeyDictionary

import numpy as np

from hypervisor.errors import IndexOutOfRange
from primitive_lang import BoundKernel
from primitive_lang.ast import Name, Number, OpStmt, Repeat
from primitive_lang.attrs import reads
from primitive_lang.ops import OPS, OpKind

from . import array_ops as ops
from .base import HostScalar
from .tiling import TILEABLE

SUPPORTED_OPS = frozenset(ops.BINARY) | frozenset(ops.UNARY) | frozenset(ops.REDUCE) | {
    "SOFTMAX", "FILL", "GATHER", "RESHAPE", "PERMUTE", "SLICE", "SLICE_WRITE", "CONCAT", "CAST",
    "RMSNORM", "ROPE", "CAUSAL_MASK"}


@dataclass(frozen=True)
class _Plan:
    """What the interpreter precomputes once per bound kernel."""

    index: dict[int, int]  # id(OpStmt) -> its position in source order
    last_read: dict[str, int]  # name -> the last position that reads it (see live_after)
    prechecks: tuple[tuple[OpStmt, str], ...]  # a start or GATHER id that is a scalar param
    program: tuple | None = None  # the kernel as closures (compile_program), where it can be

    def live_after(self, name: str, index: int) -> bool:
        """True when ``name`` may be read after the statement at ``index`` has run."""
        return self.last_read.get(name, -1) > index


_PLANS: WeakKeyDictionary[BoundKernel, _Plan] = WeakKeyDictionary()


def _plan(bound: BoundKernel) -> _Plan:
    plan = _PLANS.get(bound)
    if plan is None:
        plan = _PLANS[bound] = _build_plan(bound)
    return plan


def _build_plan(bound: BoundKernel) -> _Plan:
    """Positions in source order; a read inside a REPEAT counts as a read just after the end
    of its outermost REPEAT (the loop comes back to it), so liveness stays conservative."""
    kernel = bound.kernel
    scalars = {p.name for p in kernel.params if p.type.is_scalar}
    index: dict[int, int] = {}
    last_read: dict[str, int] = {}
    prechecks = []

    def walk(stmts, in_loop: set[str] | None) -> None:
        for st in stmts:
            if isinstance(st, Repeat):
                names: set[str] = set() if in_loop is None else in_loop
                walk(st.body, names)
                if in_loop is None:  # the outermost REPEAT ends here
                    for n in names:
                        last_read[n] = len(index)  # = (its last statement's position) + 1
                continue
            i = index[id(st)] = len(index)
            for n in reads(st, OPS[st.op]):
                if in_loop is None:
                    last_read[n.name] = i
                else:
                    in_loop.add(n.name)
            start = st.attr("start")
            if start is not None and isinstance(start.value, str) and start.value in scalars:
                prechecks.append((st, start.value))
            elif st.op == "GATHER" and st.args[1].name in scalars:
                prechecks.append((st, st.args[1].name))

    walk(kernel.ast.body, None)
    return _Plan(index, last_read, tuple(prechecks), compile_program(bound))


# ---- compiled programs (issue 14, the lean launch path) ------------------------------------
# A kernel made only of ops whose results are new arrays (the elementwise ops, the
# reductions, SOFTMAX: no views, no runtime indices, nothing to check while it runs) needs
# none of the interpreter's aliasing bookkeeping: every value is fresh, so a store is a copy
# into a param or a new binding of a local. Such a kernel is compiled once per bound kernel
# into closures that compute exactly what Interpreter._eval and _store would (the same
# array_ops functions in the same order, the same dtype rule), without the per-statement
# dispatch; run_bound() runs them. Any other kernel takes the interpreter.

_COMPILED_OPS = frozenset(ops.BINARY) | frozenset(ops.UNARY) | frozenset(ops.REDUCE) | {"SOFTMAX"}


def compile_program(bound: BoundKernel) -> tuple | None:
    """The kernel as a tuple of closures f(xp, env), or None where it has an op outside
    _COMPILED_OPS (or anything else the closures do not cover)."""
    params = {p.name for p in bound.kernel.params}

    def block(stmts) -> tuple | None:
        out = []
        for st in stmts:
            if isinstance(st, Repeat):
                body = block(st.body)
                if body is None:
                    return None
                out.append(_repeat(st.count, body))
                continue
            if st.op not in _COMPILED_OPS:
                return None
            f = _compiled_stmt(st, params, bound.shapes)
            if f is None:
                return None
            out.append(f)
        return tuple(out)

    return block(bound.kernel.ast.body)


def _repeat(count: int, body: tuple):
    def run(xp, env):
        for _ in range(count):
            for f in body:
                f(xp, env)
    return run


def _compiled_value(st: OpStmt):
    """f(xp, env) -> the statement's value, as Interpreter._eval computes it; None if not covered."""
    op, args = st.op, st.args
    if op in ops.BINARY:
        fn = ops.BINARY[op]
        a, b = args
        if isinstance(a, Name) and isinstance(b, Name):
            na, nb = a.name, b.name
            return lambda xp, env: fn(xp, env[na], env[nb])
        if isinstance(a, Name) and isinstance(b, Number):  # a literal takes the tensor's dtype
            na, vb = a.name, b.value

            def left(xp, env):
                x = env[na]
                return fn(xp, x, x.dtype.type(vb))
            return left
        if isinstance(a, Number) and isinstance(b, Name):
            va, nb = a.value, b.name

            def right(xp, env):
                x = env[nb]
                return fn(xp, x.dtype.type(va), x)
            return right
        return None
    if not args or not isinstance(args[0], Name):
        return None
    n = args[0].name
    if op in ops.UNARY:
        fn = ops.UNARY[op]
        return lambda xp, env: fn(xp, env[n])
    if op in ops.REDUCE:
        fn, axis = ops.REDUCE[op], st.axis
        return lambda xp, env: fn(xp, env[n], axis)
    if op == "SOFTMAX":
        axis = -1 if st.axis is None else st.axis
        return lambda xp, env: ops.softmax(xp, env[n], axis)
    return None


# Ops that are one NumPy ufunc (or matmul) of their operands. Into an out/inout param that is
# not one of its operands, with every operand of the param's dtype, such an op is computed
# straight into the param (``out=``): the same loop over the same operands writes the same
# values, without a temporary the size of the result and a copy of it (test_lean_launch
# checks it bit-identical).
_INTO = {"ADD": "add", "SUB": "subtract", "MUL": "multiply", "DIV": "divide", "MAX": "maximum",
         "MIN": "minimum", "PARALLEL_MATMUL": "matmul", "TANH": "tanh", "EXP": "exp", "LOG": "log",
         "SQRT": "sqrt", "ABS": "abs", "NEG": "negative"}


def _compiled_into(st: OpStmt, params: set[str], shapes):
    """f(xp, env) computing the statement into its param destination, or None."""
    fname, dest = _INTO.get(st.op), st.dest.name
    if fname is None or dest not in params:
        return None
    names = [a.name for a in st.args if isinstance(a, Name)]
    dtype = shapes[dest].dtype
    if not names or dest in names or any(shapes[n].dtype != dtype for n in names):
        return None
    if fname == "matmul" and (len(names) != 2 or any(len(shapes[n].shape) < 2 for n in names)):
        return None
    if len(st.args) == 1:
        (n,) = names
        return lambda xp, env: getattr(xp, fname)(env[n], out=env[dest])
    a, b = st.args
    if isinstance(a, Name) and isinstance(b, Name):
        na, nb = a.name, b.name
        return lambda xp, env: getattr(xp, fname)(env[na], env[nb], out=env[dest])
    if isinstance(a, Name):
        na, vb = a.name, b.value

        def left(xp, env):
            x = env[na]
            getattr(xp, fname)(x, x.dtype.type(vb), out=env[dest])
        return left
    va, nb = a.value, b.name

    def right(xp, env):
        x = env[nb]
        getattr(xp, fname)(x.dtype.type(va), x, out=env[dest])
    return right


def _compiled_stmt(st: OpStmt, params: set[str], shapes):
    into = _compiled_into(st, params, shapes)
    if into is not None:
        return into
    value = _compiled_value(st)
    if value is None:
        return None
    dest = st.dest.name
    try:
        dtype = np.dtype(shapes[dest].dtype.value)  # compares as the name does, without parsing it
    except TypeError:
        dtype = shapes[dest].dtype.value
    if dest in params:  # an out/inout param: written in place (nothing views it here)
        def store_param(xp, env):
            v = value(xp, env)
            if v.dtype != dtype:
                v = v.astype(dtype)
            xp.copyto(env[dest], v)
        return store_param

    def store_local(xp, env):
        v = value(xp, env)
        if v.dtype != dtype:
            v = v.astype(dtype)
        env[dest] = v
    return store_local


def run_bound(xp, bound: BoundKernel, env: MutableMapping[str, Any], *, consts: dict | None = None) -> None:
    """``Interpreter(xp, bound, env, consts=consts).run()``: through the kernel's compiled
    closures where it has them (same results, same errors: such kernels raise none of their
    own), else through the interpreter."""
    program = _plan(bound).program
    if program is None:
        Interpreter(xp, bound, env, consts=consts).run()
        return
    for name, v in env.items():
        if type(v) is HostScalar:
            env[name] = v.array
    for f in program:
        f(xp, env)


class Interpreter:
    """Evaluates the statements of one bound kernel.

    ``env`` maps every param name to its array, or to a ``HostScalar`` for a scalar param;
    output and inout params are the launch's buffers themselves and are written in place, so
    the results land where the guest will read them. ``consts`` is a cache the executor keeps
    across launches (RoPE frequencies). Locals are created as the statements define them.
    """

    def __init__(self, xp, bound: BoundKernel, env: MutableMapping[str, Any], *,
                 consts: dict | None = None, defer_checks: bool = False, ops_table=None):
        self.xp = xp
        self.ops = ops if ops_table is None else ops_table
        self.bound = bound
        self.plan = _plan(bound)
        self.params = {p.name for p in bound.kernel.params}
        self.host: dict[str, int | float] = {}  # host values of scalar params
        self.env = env
        for name, v in list(env.items()):
            if isinstance(v, HostScalar):
                self.host[name] = v.value
                env[name] = v.array
        self.consts = consts if consts is not None else {}
        self.defer_checks = defer_checks
        self.deferred: list[tuple[OpStmt, Any]] = []
        self._root: dict[str, object] = {n: n for n in self.params}  # the storage a name's array lives in
        self._viewed: set[object] = set()  # storage that more than one name may share
        self._fresh = itertools.count()

    def run(self) -> None:
        for _ in self.steps():
            pass

    def steps(self, tiler=None):
        """Run the kernel as a generator that yields after each statement (an op boundary)
        and, with a ``tiler`` (tiling.Tiler), between the tiles of an op it splits: the
        caller may stop between two steps and resume later; the state (locals, views) stays
        here. The prechecks run before the first step. Each yield gives the statement just
        run (whole, or the tile ``tiler.part`` says: executor/stepping.py estimates it)."""
        for st, name in self.plan.prechecks:
            if st.op == "GATHER":
                self._id(st, self._index(name))
            else:
                self._start(st, self._index(name), self._window_shape(st))
        yield from self._block(self.bound.kernel.ast.body, tiler)

    # ---- statements --------------------------------------------------------------------

    def _block(self, stmts, tiler):
        for st in stmts:
            if isinstance(st, Repeat):
                for _ in range(st.count):
                    yield from self._block(st.body, tiler)
                continue
            if st.op == "SLICE_WRITE":
                self._slice_write(st)
            elif tiler is not None and st.op in TILEABLE:
                value, root = yield from tiler.eval(self, st)
                self._store(st, value, root)
            else:
                value, root = self._eval(st)
                self._store(st, value, root)
            yield st

    def _eval(self, st: OpStmt) -> tuple[Any, object]:
        """The statement's value, and the storage it may share (None: a new array)."""
        xp, op = self.xp, st.op
        if op in self.ops.BINARY:
            tensor = next(self.env[n.name] for n in st.args if isinstance(n, Name))
            return self.ops.BINARY[op](xp, self._operand(st.args[0], tensor), self._operand(st.args[1], tensor)), None
        if op == "FILL":
            spec = self.bound.shapes[st.dest.name]
            out = xp.empty(spec.shape, dtype=spec.dtype.value)
            src = st.args[0]
            if isinstance(src, Number):
                out[...] = src.value
            else:
                host = self.host.get(src.name)
                out[...] = host if host is not None else self.env[src.name]
            return out, None
        a = self.env[st.args[0].name]
        if op in self.ops.UNARY:
            return self.ops.UNARY[op](xp, a), None
        if op in self.ops.REDUCE:
            return self.ops.REDUCE[op](xp, a, st.axis), None
        if op == "SOFTMAX":
            return self.ops.softmax(xp, a, -1 if st.axis is None else st.axis), None
        kind = OPS[op].kind
        if kind is OpKind.RESHAPE:
            return xp.reshape(a, self.bound.shapes[st.dest.name].shape), self._root_of(st.args[0].name)
        if kind is OpKind.PERMUTE:
            return xp.transpose(a, [k % a.ndim for k in st.attr("axes").value]), self._root_of(st.args[0].name)
        if kind is OpKind.SLICE:
            shape = self._window_shape(st)
            axis, size = st.axis % a.ndim, shape[1]
            start = self._start(st, self._index(st.attr("start").value), shape)
            return self.ops.window(a, axis, start, size), self._root_of(st.args[0].name)
        if kind is OpKind.CAST:
            return a.astype(self.bound.shapes[st.dest.name].dtype.value), None
        if kind is OpKind.CONCAT:
            return xp.concatenate((a, self.env[st.args[1].name]), axis=st.axis), None
        if kind is OpKind.GATHER:
            host = self.host.get(st.args[1].name)
            if host is not None:  # one id known on the host: a row, a view
                self._id(st, int(host))  # (a scalar param's was checked before the run too)
                return a[int(host)], self._root_of(st.args[0].name)
            return self._gather(st, a, self.env[st.args[1].name]), None
        if kind is OpKind.RMSNORM:
            return self.ops.rmsnorm(xp, a, self.env[st.args[1].name], float(st.attr("eps").value)), None
        if kind is OpKind.ROPE:
            base = float(st.attr("base").value)
            key = ("rope_theta", a.shape[-1], base)
            theta = self.consts.get(key)
            if theta is None:
                theta = self.consts[key] = xp.asarray(self.ops.rope_theta(a.shape[-1], base))
            return self.ops.rope(xp, a, self._position(st.args[1]), st.axis % a.ndim, theta), None
        if kind is OpKind.CAUSAL_MASK:
            return self.ops.causal_mask(xp, a, self._position(st.args[1])), None
        raise AssertionError(f"validated kernel has an op the executor lacks: {op}")

    def _operand(self, op: Name | Number, like):
        if isinstance(op, Name):
            return self.env[op.name]
        # A literal takes the dtype of the tensor it meets (docs/language.md): a NumPy scalar
        # of that dtype, which CuPy passes to its kernel as an argument (no device copy).
        return like.dtype.type(op.value)

    def _store(self, st: OpStmt, value, root: object) -> None:
        name = st.dest.name
        spec = self.bound.shapes[name]
        if value.dtype != spec.dtype.value:  # e.g. a float64 intermediate of a 0-d literal
            value, root = value.astype(spec.dtype.value), None
        if name in self.params:
            if root == name:  # a view of the destination itself: copy before overwriting it
                value = value.copy()
            self._detach(name, st, keep=name)
            self.xp.copyto(self.env[name], value)
            return
        self.env[name] = value
        if root is None:
            self._root[name] = next(self._fresh)
        else:
            self._root[name] = root
            self._viewed.add(root)

    def _slice_write(self, st: OpStmt) -> None:
        src_name, name = st.args[0].name, st.dest.name
        src, dest = self.env[src_name], self.env[name]
        axis = st.axis % dest.ndim
        start = self._start(st, self._index(st.attr("start").value), (dest.shape[axis], src.shape[axis]))
        if self._root_of(src_name) == self._root_of(name):
            src = src.copy()  # the source views the destination: never an overlapping copy
        if name in self.params:
            self._detach(name, st, keep=name)
        else:
            root = self._root_of(name)
            if root in self.params or self._shared(root, st, keep=name):
                dest = self.env[name] = dest.copy()  # never write through a view of a param
                self._root[name] = next(self._fresh)
        self.ops.write_window(dest, src, axis, start)

    # ---- aliasing ----------------------------------------------------------------------

    def _root_of(self, name: str) -> object:
        return self._root.get(name, name)

    def _sharing(self, root: object, st: OpStmt, keep: str):
        index = self.plan.index[id(st)]
        return [n for n, r in self._root.items()
                if r == root and n != keep and n not in self.params and self.plan.live_after(n, index)]

    def _shared(self, root: object, st: OpStmt, keep: str) -> bool:
        return root in self._viewed and bool(self._sharing(root, st, keep))

    def _detach(self, root: object, st: OpStmt, keep: str) -> None:
        """Before storage ``root`` is written in place: copy the live locals that view it."""
        if root not in self._viewed:
            return
        for n in self._sharing(root, st, keep):
            self.env[n] = self.env[n].copy()
            self._root[n] = next(self._fresh)

    # ---- runtime values and checks -------------------------------------------------------

    def _index(self, value: int | str) -> int:
        """A start: a literal, a scalar param's host value, or a 0-d local (read from the
        device: on CuPy this one case synchronises)."""
        if isinstance(value, int):
            return value
        host = self.host.get(value)
        return int(host) if host is not None else int(self.env[value])

    def _position(self, node: Name | Number):
        """ROPE's and CAUSAL_MASK's pos: a host int where known, else the 0-d device array."""
        if isinstance(node, Number):
            return node.value
        host = self.host.get(node.name)
        return int(host) if host is not None else self.env[node.name]

    def _window_shape(self, st: OpStmt) -> tuple[int, int]:
        """(size of the axis, length of the window) of a SLICE or SLICE_WRITE."""
        shapes = self.bound.shapes
        if st.op == "SLICE":
            shape = shapes[st.args[0].name].shape
            return shape[st.axis % len(shape)], shapes[st.dest.name].shape[st.axis % len(shape)]
        shape = shapes[st.dest.name].shape
        k = st.axis % len(shape)
        return shape[k], shapes[st.args[0].name].shape[k]

    def _start(self, st: OpStmt, start: int, window: tuple[int, int]) -> int:
        dim, length = window
        if not 0 <= start <= dim - length:
            err = IndexOutOfRange(
                f"line {st.pos.line}: {st.op} start={start} is out of range: a window of {length} along axis "
                f"{st.axis} of a dimension of {dim} must start in [0, {dim - length}]")
            err.line, err.value = st.pos.line, start
            raise err
        return start

    def _id(self, st: OpStmt, value: int) -> None:
        n = self.bound.shapes[st.args[0].name].shape[0]
        if not 0 <= value < n:
            raise _gather_error(st, value, 0, n)

    def _gather(self, st: OpStmt, table, ids):
        xp, n = self.xp, table.shape[0]
        if self.defer_checks:  # clamp on the device; the launch fails when it completes
            flat = ids.reshape(-1)
            bad = (flat < 0) | (flat >= n)
            first = xp.argmax(bad)  # the first bad id (0 when none)
            self.deferred.append((st, xp.stack([bad.any().astype(xp.int64), xp.take(flat, first).astype(xp.int64),
                                                first.astype(xp.int64)])))
            return self.ops.gather(xp, table, xp.clip(ids, 0, n - 1))
        bad = self.ops.first_out_of_range(xp, ids, n)
        if bad is not None:
            raise _gather_error(st, bad[1], bad[0], n)
        return self.ops.gather(xp, table, ids)

    def deferred_checks(self):
        """The deferred checks as one [n, 3] int64 device array (flag, id, where), or None."""
        if not self.deferred:
            return None
        return self.xp.stack([v for _, v in self.deferred])

    def check_deferred(self, results: np.ndarray) -> None:
        """Raise for the first failed deferred check, given deferred_checks() on the host."""
        for (st, _), (flag, value, at) in zip(self.deferred, results.tolist(), strict=True):
            if flag:
                raise _gather_error(st, value, at, self.bound.shapes[st.args[0].name].shape[0])


def _gather_error(st: OpStmt, value: int, at: int, n: int) -> IndexOutOfRange:
    err = IndexOutOfRange(f"line {st.pos.line}: GATHER id {value} (element {at} of {st.args[1].name}, "
                          f"flattened) is out of range: ids must lie in [0, {n})")
    err.line, err.value = st.pos.line, value
    return err
