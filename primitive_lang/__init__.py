"""pxOS primitive language: grammar, AST, validation, cost model (docs/language.md).

Guests send GPU work as *primitive programs*; ``compile_source`` turns a source into a
``CompiledProgram`` of ``CheckedKernel``s (or raises ``PrimitiveError`` with every problem),
and ``CheckedKernel.bind`` gives a launch's concrete shapes and ``Cost``. The command line is
``python -m primitive_lang check``. This package knows nothing of virtio, VMs or GPUs.
"""

from __future__ import annotations

from . import limits
from .compiled import BoundKernel, CheckedKernel, CompiledProgram, Direction
from .compiler import cache_info, clear_cache, compile_source, compile_uncached
from .cost import Cost
from .errors import BindError, Code, Diagnostic, PrimitiveError
from .shapes import TensorSpec

__all__ = [
    "BindError",
    "BoundKernel",
    "CheckedKernel",
    "Code",
    "CompiledProgram",
    "Cost",
    "Diagnostic",
    "Direction",
    "PrimitiveError",
    "TensorSpec",
    "cache_info",
    "clear_cache",
    "compile_source",
    "compile_uncached",
    "limits",
]
