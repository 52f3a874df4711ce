"""Executor backends: ``numpy`` (always available), ``cupy`` (an NVIDIA GPU) and ``wgpu``
(any GPU WebGPU reaches: Vulkan, Metal, D3D12; Mesa's lavapipe on a CPU)."""

from __future__ import annotations

from hypervisor.errors import ConfigError, UnsupportedDtype

from .base import DonePending, Executor, ExecutorInfo, Fence, Pending, RunTiming, Steps
from .cupy_backend import cupy_unavailable_reason
from .numpy_backend import NumpyExecutor

BACKENDS = ("auto", "numpy", "cupy", "wgpu")


def make_executor(backend: str = "auto") -> Executor:
    """``auto`` picks CuPy when it imports and sees a GPU, then wgpu when its adapter is a real
    GPU (not a CPU driver such as lavapipe), NumPy otherwise."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown executor backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "numpy":
        return NumpyExecutor()
    if backend == "wgpu":
        from .wgpu_backend import WgpuExecutor, wgpu_unavailable_reason

        why = wgpu_unavailable_reason()
        if why is not None:
            raise ConfigError(f"backend 'wgpu' requested but {why}")
        return WgpuExecutor()
    why = cupy_unavailable_reason()
    if why is None:
        from .cupy_backend import CupyExecutor

        return CupyExecutor()
    if backend == "cupy":
        raise ConfigError(f"backend 'cupy' requested but {why}")
    from .wgpu_backend import WgpuExecutor, wgpu_unavailable_reason

    if wgpu_unavailable_reason(require_gpu=True) is None:
        return WgpuExecutor()
    return NumpyExecutor()


__all__ = ["BACKENDS", "DonePending", "Pending", "Executor", "ExecutorInfo", "Fence", "NumpyExecutor", "RunTiming", "Steps", "UnsupportedDtype", "make_executor"]
