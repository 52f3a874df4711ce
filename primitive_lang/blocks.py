"""Line items → kernels: the block structure of a source (docs/language.md, "Syntax").

The parser (parser.py) turns each line into one item; ``assemble`` matches the blocks
(``GPU_KERNEL`` … ``GPU_END``, ``REPEAT n:`` … ``END_REPEAT``) in one pass with an explicit
stack, and reports what does not fit ("expected GPU_END before end of input"). A line that
failed to parse arrives as a ``BrokenLine`` that still opens or closes the block its first
word names, so one bad line does not cascade into errors about the lines after it.

Header checks that need a header line's position (a repeated GPU_CLASS, a priority out of
range) are made here too, because the AST keeps no position for header lines.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import limits
from .ast import Kernel, OpStmt, Param, Pos, Repeat, Stmt, WorkloadHint
from .errors import Code, Diagnostic


@dataclass(frozen=True, slots=True)
class KernelOpen:
    name: str
    pos: Pos


@dataclass(frozen=True, slots=True)
class KernelEnd:
    pos: Pos


@dataclass(frozen=True, slots=True)
class ClassLine:
    hint: WorkloadHint
    pos: Pos


@dataclass(frozen=True, slots=True)
class PriorityLine:
    value: int
    pos: Pos


@dataclass(frozen=True, slots=True)
class CodeOpen:
    pos: Pos


@dataclass(frozen=True, slots=True)
class RepeatOpen:
    count: int
    pos: Pos


@dataclass(frozen=True, slots=True)
class RepeatClose:
    pos: Pos


@dataclass(frozen=True, slots=True)
class BrokenLine:
    """A line with a syntax error (already reported). ``kind`` is guessed from its first word:
    kernel_open, kernel_end, code_open, repeat_open, repeat_close, header or stmt; ``names``
    are the words on it, which validation treats as known so as not to report them again."""

    pos: Pos
    kind: str
    names: frozenset[str]


@dataclass(frozen=True, slots=True)
class ParsedKernel:
    kernel: Kernel
    broken: bool  # had a syntax error inside: validation is lenient about names
    poisoned: frozenset[str]


@dataclass
class _Frame:
    head: RepeatOpen | None  # None: the kernel body
    stmts: list[Stmt] = field(default_factory=list)
    flattened: int = 0  # REPEATs opened past MAX_REPEAT_DEPTH, read as plain lines


@dataclass
class _Draft:
    name: str
    pos: Pos
    params: list[Param] = field(default_factory=list)
    class_hint: WorkloadHint | None = None
    priority: int | None = None
    in_code: bool = False
    frames: list[_Frame] = field(default_factory=lambda: [_Frame(None)])
    broken: bool = False
    poisoned: set[str] = field(default_factory=set)
    depth_reported: bool = False
    priority_seen: bool = False

    def finish(self) -> ParsedKernel:
        while len(self.frames) > 1:
            self._close_repeat()
        kernel = Kernel(self.name, tuple(self.params), self.class_hint, self.priority,
                        tuple(self.frames[0].stmts), self.pos)
        return ParsedKernel(kernel, self.broken, frozenset(self.poisoned))

    def _close_repeat(self) -> None:
        frame = self.frames.pop()
        assert frame.head is not None
        self.frames[-1].stmts.append(Repeat(frame.head.count, tuple(frame.stmts), frame.head.pos))


def _err(diags: list[Diagnostic], code: Code, pos: Pos, message: str) -> None:
    diags.append(Diagnostic(code, pos.line, pos.column, message))


def assemble(items: list, end: Pos, diags: list[Diagnostic]) -> list[ParsedKernel]:
    """Kernels from line items in source order; structure problems are added to ``diags``."""
    kernels: list[ParsedKernel] = []
    cur: _Draft | None = None
    stray_reported = False
    opened = 0

    def open_kernel(name: str, pos: Pos, broken: bool) -> _Draft:
        nonlocal opened
        opened += 1
        if opened == limits.MAX_KERNELS + 1:
            _err(diags, Code.LIMIT, pos, f"more than {limits.MAX_KERNELS} kernels in one source")
        return _Draft(name, pos, broken=broken)

    for item in items:
        if type(item) is OpStmt and cur is not None and cur.in_code:  # the common case, first
            cur.frames[-1].stmts.append(item)
            continue
        if cur is None:
            if isinstance(item, KernelOpen):
                cur, stray_reported = open_kernel(item.name, item.pos, False), False
            elif isinstance(item, BrokenLine) and item.kind == "kernel_open":
                cur, stray_reported = open_kernel("", item.pos, True), False
            elif not stray_reported and not isinstance(item, BrokenLine):
                _err(diags, Code.SYNTAX, item.pos,
                     "expected GPU_KERNEL: every line must be inside a GPU_KERNEL ... GPU_END block")
                stray_reported = True
            continue
        if isinstance(item, KernelOpen):
            _err(diags, Code.SYNTAX, item.pos, f"expected GPU_END before GPU_KERNEL (kernel {cur.name} "
                 f"opened at line {cur.pos.line} is not closed)")
            kernels.append(cur.finish())
            cur = open_kernel(item.name, item.pos, False)
        elif isinstance(item, KernelEnd):
            _end_kernel(cur, item, diags)
            kernels.append(cur.finish())
            cur = None
        elif isinstance(item, BrokenLine):
            cur = _broken(cur, item, kernels, open_kernel)
        else:
            _line(cur, item, diags)
    if cur is not None:
        for frame in reversed(cur.frames[1:]):
            _err(diags, Code.SYNTAX, end, f"expected END_REPEAT before end of input (REPEAT at line "
                 f"{frame.head.pos.line} is not closed)")
        _err(diags, Code.SYNTAX, end, f"expected GPU_END before end of input (kernel {cur.name} "
             f"opened at line {cur.pos.line} is not closed)")
        kernels.append(cur.finish())
    if not kernels and not diags:
        _err(diags, Code.SYNTAX, Pos(1, 1), "expected GPU_KERNEL: the source holds no kernel")
    return kernels


def _end_kernel(cur: _Draft, item: KernelEnd, diags: list[Diagnostic]) -> None:
    if not cur.in_code and not cur.broken:
        _err(diags, Code.SYNTAX, item.pos, "expected GPU_THREAD_CODE: before GPU_END")
    for frame in reversed(cur.frames[1:]):
        _err(diags, Code.SYNTAX, item.pos, f"expected END_REPEAT before GPU_END (REPEAT at line "
             f"{frame.head.pos.line} is not closed)")


def _broken(cur: _Draft, item: BrokenLine, kernels: list[ParsedKernel], open_kernel) -> _Draft | None:
    """A bad line inside a kernel: do what its first word says, quietly."""
    cur.broken = True
    cur.poisoned |= item.names
    if item.kind == "kernel_open":
        kernels.append(cur.finish())
        return open_kernel("", item.pos, True)
    if item.kind == "kernel_end":
        kernels.append(cur.finish())
        return None
    if item.kind == "code_open":
        cur.in_code = True
    elif item.kind == "repeat_open":
        _open_repeat(cur, RepeatOpen(1, item.pos), [])
    elif item.kind == "repeat_close":
        _close(cur, item.pos, None)
    return cur


def _open_repeat(cur: _Draft, item: RepeatOpen, diags: list[Diagnostic]) -> None:
    if len(cur.frames) - 1 >= limits.MAX_REPEAT_DEPTH:
        if not cur.depth_reported:
            _err(diags, Code.LIMIT, item.pos, f"REPEAT nested more than {limits.MAX_REPEAT_DEPTH} deep")
            cur.depth_reported = True
        cur.frames[-1].flattened += 1
    else:
        cur.frames.append(_Frame(item))


def _close(cur: _Draft, pos: Pos, diags: list[Diagnostic] | None) -> None:
    if cur.frames[-1].flattened:
        cur.frames[-1].flattened -= 1
    elif len(cur.frames) > 1:
        cur._close_repeat()
    elif diags is not None:
        _err(diags, Code.SYNTAX, pos, "END_REPEAT without a REPEAT to close")


def _line(cur: _Draft, item, diags: list[Diagnostic]) -> None:
    header = isinstance(item, Param | ClassLine | PriorityLine)
    if header and cur.in_code:
        _err(diags, Code.SYNTAX, item.pos, "header lines (GPU_PARAM, GPU_CLASS, GPU_PRIORITY) must come "
             "before GPU_THREAD_CODE:")
    elif not header and not isinstance(item, CodeOpen) and not cur.in_code:
        _err(diags, Code.SYNTAX, item.pos, "expected GPU_THREAD_CODE: before the first statement")
        cur.in_code = True
    if isinstance(item, Param):
        cur.params.append(item)
    elif isinstance(item, ClassLine):
        if cur.class_hint is not None:
            _err(diags, Code.DUPLICATE_HEADER, item.pos, "GPU_CLASS written twice in one kernel")
        cur.class_hint = item.hint
    elif isinstance(item, PriorityLine):
        if cur.priority_seen:
            _err(diags, Code.DUPLICATE_HEADER, item.pos, "GPU_PRIORITY written twice in one kernel")
        cur.priority_seen = True
        if not limits.MIN_PRIORITY <= item.value <= limits.MAX_PRIORITY:
            _err(diags, Code.VALUE, item.pos, f"GPU_PRIORITY must be {limits.MIN_PRIORITY} to "
                 f"{limits.MAX_PRIORITY}, got {item.value}")
        else:
            cur.priority = item.value
    elif isinstance(item, CodeOpen):
        if cur.in_code:
            _err(diags, Code.SYNTAX, item.pos, "GPU_THREAD_CODE: written twice in one kernel")
        cur.in_code = True
    elif isinstance(item, OpStmt):
        cur.frames[-1].stmts.append(item)
    elif isinstance(item, RepeatOpen):
        _open_repeat(cur, item, diags)
    elif isinstance(item, RepeatClose):
        _close(cur, item.pos, diags)
