"""The cost model: flops, bytes and temporary memory of one launch (docs/language.md, "Cost").

A pure function of the kernel's statements and the concrete shapes of a bind. The scheduler
classifies workloads from these figures, so they follow fixed, documented rules rather than
any one backend's real behaviour:

- flops: per statement, ``flops_per_element`` of the op (ops.py) times the elements of the
  result; PARALLEL_MATMUL 2*k per result element (a multiply and an add per inner index);
  SOFTMAX 5 per element; REDUCE_SUM/MAX one per *input* element, REDUCE_MEAN one per input
  element plus one division per result element. Every statement counts as many times as it
  runs (REPEAT expanded).
- bytes_read: the bytes of every param or local operand a statement names (a literal
  reads nothing; a scalar param reads its itemsize); bytes_written: the bytes of its
  destination. Each statement is counted on its own, as if nothing stayed in a cache.
- peak_temp_bytes: the bytes of all locals together (an upper bound: an executor may keep
  every local alive until the launch ends).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .ast import Name
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
    spec = step.spec
    out = shapes[step.stmt.dest.name]
    if spec.kind is OpKind.MATMUL:
        a = shapes[step.stmt.args[0].name]
        return 2 * out.size * a.shape[-1]
    if spec.kind is OpKind.REDUCE:
        src = shapes[step.stmt.args[0].name]
        return src.size + (out.size if spec.name == "REDUCE_MEAN" else 0)
    return spec.flops_per_element * out.size


def kernel_cost(steps: Iterable[Step], shapes: Mapping[str, TensorSpec], local_names: Iterable[str]) -> Cost:
    flops = read = written = 0
    for step in steps:
        stmt = step.stmt
        flops += step.times * statement_flops(step, shapes)
        read += step.times * sum(shapes[a.name].nbytes for a in stmt.args if isinstance(a, Name))
        written += step.times * shapes[stmt.dest.name].nbytes
    peak = sum(shapes[n].nbytes for n in local_names)
    return Cost(flops, read, written, peak)
