"""Bounded steps on an asynchronous device (issue 14; docs/scheduling.md, "Preemption"):
a launch on a GPU stream (CuPy) or queue (wgpu) run as the one interpreter's steps
(interpret.Interpreter.steps: an op, or a tile of an op that tiling.py splits), issued to
the device ahead of time but never much more than a time slice ahead.

Steps are issued in **chunks**: the steps issued one after another between two marks on
the device (CUDA events on the compute stream; a wgpu submission with timestamp queries
around its pass). A chunk is closed, and so on its way to the device, once its estimate
reaches half the ahead bound, before the host waits, after the last step, and when the
launch yields (``pause``). The
device time of a launch is the sum of its own chunks' device time: chunks run one after
another on one stream, so another launch's work (a more urgent one run while this one is
parked) is never inside them, and the device idling between two chunks (the host late)
is not charged either.

``advance`` keeps the device fed and bounded: it issues the next step while the work
queued behind the running chunk is estimated under ``ahead_s``; past that it waits for
the oldest chunk (polling, so that an arriving launch, ``interrupt``, is seen at once).
So a more urgent launch queued when this one yields waits for what is already on the
device: the rest of the running chunk and at most ``ahead_s`` of estimated work behind it
(plus a step whose estimate alone exceeds that: an op that does not tile).

The estimates are each statement's work (flops of a matmul, elements otherwise, and a
fixed cost per step) over the speeds of the executor's ``CostModel``, which each
completed chunk corrects (``CostModel.observe_chunk``): the device tells us how long the
chunk took, not each op. ``tiling.Tiler`` splits an op estimated over the slice as on
NumPy, with the row blocks of the device's kernels (``min_rows``).
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from weakref import WeakKeyDictionary

import numpy as np

from primitive_lang import BoundKernel
from primitive_lang.ast import Name, OpStmt
from primitive_lang.ops import OPS, OpKind

from .base import RunTiming, Steps
from .tiling import MATMULS, REDUCES, CostModel, Tiler

#: The work queued on the device behind the running chunk, at most (estimated seconds), and
#: the largest tile, as fractions of the time slice: half a slice each, so that a launch
#: queued when this one yields waits about one slice (docs/scheduling.md, "Preemption").
AHEAD_SLICES = 0.5
TILE_SLICES = 0.5
#: A launch's first steps are issued when it is submitted (start_steps), up to this much
#: estimated work or wall time, so that the device has them queued while the dispatcher
#: completes the launch before it (pipelining: the device does not idle between launches).
PRIME_SLICES = 0.5
PRIME_WALL_S = 0.0005
# Ops that only make a view (no device work); their step costs the fixed part only.
_VIEWS = frozenset({OpKind.RESHAPE, OpKind.PERMUTE, OpKind.SLICE})

_WORK: WeakKeyDictionary[BoundKernel, dict[int, tuple[str, float]]] = WeakKeyDictionary()


def step_work(bound: BoundKernel, st: OpStmt) -> tuple[str, float]:
    """The kind of work a statement does and how much (CostModel's units: flops of a
    matmul, elements read by a reduction, elements written otherwise; 0 for a view)."""
    table = _WORK.get(bound)
    if table is None:
        table = _WORK[bound] = {}
    hit = table.get(id(st))
    if hit is None:
        hit = table[id(st)] = _work(bound, st)
    return hit


def _work(bound: BoundKernel, st: OpStmt) -> tuple[str, float]:
    shapes = bound.shapes
    dest = shapes[st.dest.name].shape
    if st.op in MATMULS and all(isinstance(a, Name) for a in st.args):
        a, b = shapes[st.args[0].name].shape, shapes[st.args[1].name].shape
        if len(a) >= 2 and len(b) >= 2:
            n = b[-2] if st.op == "LINEAR" else b[-1]
            batch = int(np.prod(np.broadcast_shapes(a[:-2], b[:-2]), dtype=np.int64))
            return "matmul", 2.0 * a[-2] * a[-1] * n * batch
    if st.op in REDUCES or st.op in ("SOFTMAX", "RMSNORM"):
        return "reduce", float(np.prod(shapes[st.args[0].name].shape, dtype=np.int64))
    spec = OPS.get(st.op)
    if spec is not None and spec.kind in _VIEWS:
        return "elementwise", 0.0
    if st.op == "SLICE_WRITE":
        return "elementwise", float(np.prod(shapes[st.args[0].name].shape, dtype=np.int64))
    return "elementwise", float(np.prod(dest, dtype=np.int64))


class Chunk(ABC):
    """Steps issued together and timed on the device as one."""

    est: dict[str, float]  # estimated seconds by CostModel kind
    est_s: float  # their sum

    @abstractmethod
    def done(self) -> bool: ...

    @abstractmethod
    def wait(self) -> float:
        """Block until the device has run it; its device seconds (called once, or again
        after it raised: a chunk is retired only once this returns)."""


class DeviceSteps(Steps):
    """A launch as bounded steps on an asynchronous device (see above). A backend supplies
    ``_issuing`` (the context its ops are issued in), ``_open`` (a mark before a chunk's
    first step), ``_close`` (the mark after its last step: the chunk, now on its way to
    the device) and ``_check`` (errors found on the device, once all chunks are done)."""

    #: How often the host looks at the oldest chunk while it waits for it (seconds).
    POLL_S = 50e-6
    #: A chunk is closed once its estimate reaches this fraction of ``ahead_s``.
    CHUNK_FRACTION = 0.5

    def __init__(self, interp, model: CostModel, slice_s: float, active: Callable[[], bool] | None,
                 min_rows: int, stall: float = 0.0, gap: float | None = None,
                 kinds: frozenset[str] = frozenset({"matmul", "reduce", "elementwise"}),
                 min_cols: int | None = None, tail_rows: int | None = None):
        self.interp = interp
        self.model = model
        self.tiler = Tiler(slice_s * TILE_SLICES, model, active, min_rows=min_rows, timed=False, kinds=kinds,
                           min_cols=min_cols, tail_rows=tail_rows)
        self.gen = interp.steps(self.tiler)
        self.ahead_s = max(slice_s, 1e-5) * AHEAD_SLICES
        self.chunk_s = self.ahead_s * self.CHUNK_FRACTION
        self.queue: deque[Chunk] = deque()  # closed chunks not yet retired, oldest first
        self.open_est: dict[str, float] | None = None  # the chunk being issued, if any
        self.device_s = 0.0  # device time of the retired chunks
        self.stall, self.gap = stall, gap
        self.chunks = 0  # closed so far (tests, figures)
        self.steps_issued = 0
        self.issued = False  # every step issued (or the launch failed)
        self._timing: RunTiming | None = None
        self._queued_s = 0.0  # estimate of the closed chunks in the queue
        self._failed: BaseException | None = None  # raised by prime(), re-raised by advance()
        self._head_since = 0.0  # when the oldest chunk in the queue became the oldest
        self._open_s = 0.0  # the open chunk's estimate (seconds)

    # ---- backend hooks ----------------------------------------------------------------------
    def _issuing(self) -> AbstractContextManager:
        return nullcontext()

    @abstractmethod
    def _open(self) -> None: ...

    @abstractmethod
    def _close(self, est: dict[str, float], last: bool) -> Chunk: ...

    def _check(self) -> None:
        """Raise an error the device found (a deferred index check), after the last chunk."""

    # ---- stepping ---------------------------------------------------------------------------
    def prime(self) -> None:
        """Issue the first steps now (see PRIME_SLICES); errors wait for advance/timing."""
        try:
            self._run(PRIME_WALL_S, None, self.ahead_s * PRIME_SLICES)
        except Exception as exc:  # the launch failed: advance() raises it again
            self._failed = exc
        self._close_open()  # on its way to the device while the launch before it ends

    def pause(self) -> None:
        self._close_open()

    def advance(self, budget_s: float, interrupt: threading.Event | None = None) -> bool:
        """Issue steps for about ``budget_s`` of wall time (at least one, unless the
        device's queue is full), waiting for the device when the queue holds ``ahead_s``;
        returns early when ``interrupt`` is set. True once every step is issued (the last
        ones may still run: ``timing()`` waits for them)."""
        if self._failed is not None:
            failed, self._failed = self._failed, None
            raise failed
        if self.issued:
            return True
        self._run(budget_s, interrupt, None)
        return self.issued

    def _run(self, budget_s: float, interrupt: threading.Event | None, stop_est: float | None) -> None:
        end = time.perf_counter() + budget_s
        with self._issuing():
            try:
                while True:
                    self._retire_done()
                    if self._full():
                        self._close_open()
                        if not self._wait_oldest(interrupt, end):
                            return
                        continue
                    if self.open_est is None:
                        self._open()
                        self.open_est, self._open_s = {}, 0.0
                    try:
                        st = next(self.gen)
                    except StopIteration:
                        self.issued = True
                        return
                    self._account(st)
                    if self._open_s >= self.chunk_s:
                        self._close_open()
                    if stop_est is not None and self._queued_s + self._open_s >= stop_est:
                        return
                    if time.perf_counter() >= end or (interrupt is not None and interrupt.is_set()):
                        return
            except BaseException:
                self.issued = True  # what ran before the failing step is closed and timed below
                raise
            finally:
                # The open chunk stays open across calls (a wgpu chunk is one submission, a
                # few hundred us of host time each): it is closed once it holds chunk_s of
                # work, before a wait, at the end, or when the launch yields (pause).
                if self.issued:
                    self._close_open()

    def _account(self, st: OpStmt) -> None:
        part = self.tiler.part
        self.tiler.part = None
        kind, work = step_work(self.interp.bound, st)
        est = self.open_est
        rate = self.model.rate
        fixed = 1.0 / rate["step"]
        est["step"] = est.get("step", 0.0) + fixed
        self._open_s += fixed
        if work:
            t = work / rate[kind] * (1.0 if part is None else part)
            est[kind] = est.get(kind, 0.0) + t
            self._open_s += t
        self.steps_issued += 1

    def _full(self) -> bool:
        """More than ``ahead_s`` queued behind the oldest chunk (the one running)."""
        queue = self.queue
        return bool(queue) and self._queued_s - queue[0].est_s + self._open_s >= self.ahead_s

    def _close_open(self) -> None:
        if self.open_est is None:
            return
        est, self.open_est = self.open_est, None
        chunk = self._close(est, self.issued)
        chunk.est, chunk.est_s = est, self._open_s
        self._open_s = 0.0
        if not self.queue:
            self._head_since = time.perf_counter()
        self.queue.append(chunk)
        self._queued_s += chunk.est_s
        self.chunks += 1

    def _retire(self) -> None:
        chunk = self.queue[0]
        seconds = chunk.wait()  # (raises if the device failed: the chunk stays, the error is seen again)
        self.queue.popleft()
        self._queued_s -= chunk.est_s
        self._head_since = time.perf_counter()
        self.device_s += seconds
        self.model.observe_chunk(chunk.est, seconds)

    def _retire_done(self) -> None:
        while self.queue and self.queue[0].done():
            self._retire()

    def remaining_s(self) -> float:
        """Estimated device seconds left of what this launch has queued (0 once it is all
        done): what the dispatcher's hold waits for before it picks the next launch."""
        self._retire_done()
        if not self.queue:
            return 0.0
        head = self.queue[0].est_s
        left = max(head - (time.perf_counter() - self._head_since), 0.0)
        return left + self._queued_s - head

    def _wait_oldest(self, interrupt: threading.Event | None, end: float) -> bool:
        """Wait for the oldest chunk; False when the wait was cut short (an arrival, the
        budget spent): the caller looks at the scheduler and calls advance again."""
        chunk = self.queue[0]
        while not chunk.done():
            if interrupt is not None and interrupt.is_set():
                return False
            if time.perf_counter() >= end:
                return False
            if interrupt is not None:
                interrupt.wait(self.POLL_S)
            else:
                time.sleep(self.POLL_S)
        self._retire()
        return True

    def timing(self) -> RunTiming:
        """Wait for every chunk still on the device; the launch's timing (raises, once, an
        error the device found)."""
        if self._timing is None:
            self._close_open()
            while self.queue:
                self._retire()
            self._timing = RunTiming(self.device_s, self.stall, self.gap)
            self._check()
        return self._timing
