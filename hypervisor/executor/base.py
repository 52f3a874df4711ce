"""The executor interface: where a VM's buffers live on the device and how a launch runs.

Two backends implement it (conventions: the same file set for every pluggable unit,
always with a CPU implementation): ``numpy_backend`` (always there, the reference) and
``cupy_backend`` (an NVIDIA GPU through CuPy). The memory manager owns *which* buffers
exist and where; the executor only allocates storage, copies bytes and runs kernels.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from primitive_lang import BoundKernel, TensorSpec


@dataclass(frozen=True)
class ExecutorInfo:
    backend: str  # "numpy" or "cupy"
    device_name: str  # e.g. "NVIDIA H100 80GB HBM3", or the CPU model
    device_memory_total: int  # bytes the device has (NumPy: host RAM)
    device_memory_free: int  # bytes free now


class Executor(ABC):
    """One device. Not thread-safe by itself: the dispatcher runs launches one at a time;
    transfers may run from other threads (they touch only their own buffer)."""

    name: str

    @abstractmethod
    def info(self) -> ExecutorInfo: ...

    @abstractmethod
    def empty(self, spec: TensorSpec) -> Any:
        """Device storage for one tensor, contents undefined."""

    @abstractmethod
    def zeros(self, spec: TensorSpec) -> Any:
        """Device storage for one tensor, zero-filled (what ALLOC hands a guest: never
        another VM's stale bytes)."""

    @abstractmethod
    def write(self, array: Any, offset: int, chunks: Sequence[memoryview | bytes]) -> int:
        """Copy the chunks, back to back, into the array's bytes from ``offset``."""

    @abstractmethod
    def read_into(self, array: Any, offset: int, dsts: Sequence[memoryview]) -> int:
        """Copy the array's bytes from ``offset`` into the destinations, in order; returns
        the number of bytes copied."""

    @abstractmethod
    def to_host(self, array: Any) -> Any:
        """A NumPy copy of a device array (tests, `pxosctl run`)."""

    @abstractmethod
    def scalar(self, value: float | int, spec: TensorSpec) -> Any:
        """A 0-d array holding a scalar param's value."""

    @abstractmethod
    def run(self, bound: BoundKernel, args: Mapping[str, Any]) -> float:
        """Run one bound kernel to completion; ``args`` maps every param to its array
        (outputs are written in place). Returns the measured device seconds."""

    def release(self, array: Any) -> None:  # noqa: B027 - optional hook
        """Storage no longer needed (backends with pools may reuse it)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free what the backend holds."""


def byte_view(xp, array):
    """A flat uint8 view of a contiguous array."""
    return array.reshape(-1).view(xp.uint8)


def check_range(nbytes: int, offset: int, length: int) -> None:
    if offset < 0 or length < 0 or offset + length > nbytes:
        from hypervisor.errors import InvalidArgument

        raise InvalidArgument(
            f"range [{offset}, {offset + length}) lies outside the buffer's {nbytes} bytes"
        )
