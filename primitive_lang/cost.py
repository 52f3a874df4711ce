"""The cost model: flops, bytes and temporary memory of one launch (docs/language.md, "Cost").

A pure function of the kernel's statements and the concrete shapes of a bind. The scheduler
classifies workloads from these figures, so they follow fixed, documented rules rather than
any one backend's real behaviour:

- flops: per statement, ``flops_per_element`` of the op (ops.py) times the elements of the
  result; PARALLEL_MATMUL and LINEAR 2*k per result element (a multiply and an add per inner
  index); SOFTMAX 5 per element; REDUCE_SUM/MAX and ARGMAX one per *input* element,
  REDUCE_MEAN one per input element plus one division per result element; RMSNORM 4 per
  element plus 4 per row; ROPE 3 per element plus 3 per (position, pair). Every statement
  counts as many times as it runs (REPEAT expanded).
- bytes_read: the bytes of every param or local a statement reads (its name operands and the
  names its attributes give; a literal reads nothing; a scalar reads its itemsize);
  bytes_written: the bytes of its destination. Data movement counts what it moves: GATHER
  reads the ids and the rows it picks (not the table), SLICE reads its window, SLICE_WRITE
  reads its source and writes only the window, RESHAPE moves nothing. Each statement is
  counted on its own, as if nothing stayed in a cache.
- peak_temp_bytes: the bytes of all locals together (an upper bound: an executor may keep
  every local alive until the launch ends).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .ast import Name
from .attrs import value_refs
from .ops import OpKind
from .shapes import TensorSpec

if TYPE_CHECKING:
    from .compiled import Step


@dataclass(frozen=True, slots=True)
class Cost:
    flops: int
    bytes_read: int
    bytes_written: int
    peak_temp_bytes: int

    @property
    def bytes_total(self) -> int:
        return self.bytes_read + self.bytes_written

    @property
    def arithmetic_intensity(self) -> float:
        """Flops per byte moved; 0.0 when no bytes move."""
        moved = self.bytes_read + self.bytes_written
        return self.flops / moved if moved else 0.0


def statement_flops(step: Step, shapes: Mapping[str, TensorSpec]) -> int:
    """Flops of one execution of one statement."""
    spec, stmt = step.spec, step.stmt
    out = shapes[stmt.dest.name]
    kind = spec.kind
    if kind is OpKind.MATMUL or kind is OpKind.LINEAR:
        a = shapes[stmt.args[0].name]
        return 2 * out.size * a.shape[-1]
    if kind is OpKind.REDUCE or kind is OpKind.ARGMAX:
        src = shapes[stmt.args[0].name]
        return src.size + (out.size if spec.name == "REDUCE_MEAN" else 0)
    if kind is OpKind.RMSNORM:
        return 4 * out.size + 4 * (out.size // out.shape[-1])
    if kind is OpKind.ROPE:
        return 3 * out.size + 3 * out.shape[stmt.axis] * (out.shape[-1] // 2)
    return spec.flops_per_element * out.size


def statement_bytes(step: Step, shapes: Mapping[str, TensorSpec]) -> tuple[int, int]:
    """Bytes read and written by one execution of one statement."""
    spec, stmt = step.spec, step.stmt
    kind = spec.kind
    out = shapes[stmt.dest.name].nbytes
    refs = sum(shapes[a.value].nbytes for a in value_refs(stmt, spec))
    if kind is OpKind.RESHAPE:
        return 0, 0
    if kind is OpKind.GATHER:
        return shapes[stmt.args[1].name].nbytes + out, out
    if kind is OpKind.SLICE:
        return out + refs, out
    if kind is OpKind.SLICE_WRITE:
        src = shapes[stmt.args[0].name].nbytes
        return src + refs, src
    return sum(shapes[a.name].nbytes for a in stmt.args if isinstance(a, Name)) + refs, out


def kernel_cost(steps: Iterable[Step], shapes: Mapping[str, TensorSpec], local_names: Iterable[str]) -> Cost:
    flops = read = written = 0
    for step in steps:
        r, w = statement_bytes(step, shapes)
        flops += step.times * statement_flops(step, shapes)
        read += step.times * r
        written += step.times * w
    peak = sum(shapes[n].nbytes for n in local_names)
    return Cost(flops, read, written, peak)
