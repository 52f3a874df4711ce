"""Executor backends: ``numpy`` (always available) and ``cupy`` (an NVIDIA GPU)."""

from __future__ import annotations

from hypervisor.errors import ConfigError

from .base import DonePending, Executor, ExecutorInfo, Fence, Pending, RunTiming
from .cupy_backend import cupy_unavailable_reason
from .numpy_backend import NumpyExecutor

BACKENDS = ("auto", "numpy", "cupy")


def make_executor(backend: str = "auto") -> Executor:
    """``auto`` picks CuPy when it imports and sees a GPU, NumPy otherwise."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown executor backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "numpy":
        return NumpyExecutor()
    why = cupy_unavailable_reason()
    if why is None:
        from .cupy_backend import CupyExecutor

        return CupyExecutor()
    if backend == "cupy":
        raise ConfigError(f"backend 'cupy' requested but {why}")
    return NumpyExecutor()


__all__ = ["BACKENDS", "DonePending", "Pending", "Executor", "ExecutorInfo", "Fence", "NumpyExecutor", "RunTiming", "make_executor"]
