"""What a compile produces: ``CompiledProgram``, ``CheckedKernel`` and ``BoundKernel``.

All three are immutable, so the compile cache can hand the same objects to every caller.
Only validation (validate.py) creates a ``CheckedKernel``; only ``CheckedKernel.bind``
(bind.py) creates a ``BoundKernel``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from enum import StrEnum
from types import MappingProxyType

from .ast import Kernel, OpStmt, Param, ParamType, WorkloadHint, by_fields
from .cost import Cost
from .ops import OpSpec
from .shapes import TensorSpec


class Direction(StrEnum):
    IN = "in"  # only read
    OUT = "out"  # written, and not read before its first write
    INOUT = "inout"  # read before its first write, and written


@by_fields
@dataclass(frozen=True, slots=True)
class Step:
    """One op statement of the kernel in execution order, with how many times it runs
    (the product of the counts of the REPEATs around it)."""

    stmt: OpStmt
    spec: OpSpec
    times: int


@dataclass(frozen=True, eq=False)
class CheckedKernel:
    ast: Kernel
    name: str
    params: tuple[Param, ...]
    directions: Mapping[str, Direction]
    locals: Mapping[str, ParamType]  # shape None where not known until bind
    class_hint: WorkloadHint | None
    priority: int | None
    statement_count: int
    executed_statement_count: int
    steps: tuple[Step, ...]  # every op statement once, in source order (REPEAT bodies inline)

    def bind(self, specs: Mapping[str, TensorSpec]) -> BoundKernel:
        """Concrete shapes and cost for one launch; raises BindError listing every problem."""
        from .bind import bind_kernel

        return bind_kernel(self, specs)

    def declared_specs(self) -> dict[str, TensorSpec] | None:
        """Specs from the declarations alone, when every param's shape is written in sizes."""
        specs = {}
        for p in self.params:
            shape = p.type.shape
            if shape is None or not all(isinstance(d, int) for d in shape):
                return None
            specs[p.name] = TensorSpec(p.type.dtype, shape)
        return specs

    @property
    def outputs(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params if self.directions[p.name] is not Direction.IN)

    def __reduce__(self):
        # Picklable (a compile may run in another process): the read-only mappings travel
        # as plain dicts and are wrapped again on arrival.
        state = {f.name: getattr(self, f.name) for f in fields(self)}
        state["directions"], state["locals"] = dict(self.directions), dict(self.locals)
        return (_checked_kernel, (state,))


def _checked_kernel(state: dict) -> CheckedKernel:
    state["directions"] = MappingProxyType(state["directions"])
    state["locals"] = MappingProxyType(state["locals"])
    return CheckedKernel(**state)


@dataclass(frozen=True, eq=False)
class BoundKernel:
    kernel: CheckedKernel
    symbols: Mapping[str, int]
    shapes: Mapping[str, TensorSpec]  # every param and every local
    cost: Cost


@dataclass(frozen=True, eq=False)
class CompiledProgram:
    source_hash: str  # hex sha256 of the UTF-8 source
    kernels: tuple[CheckedKernel, ...]

    def kernel(self, name: str) -> CheckedKernel:
        for k in self.kernels:
            if k.name == name:
                return k
        raise KeyError(name)
