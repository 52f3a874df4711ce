"""What the device can do, measured once per process: the classifier's prior.

The scheduler turns a launch's cost (flops, bytes) into an estimate of device time with
a roofline model; its defaults are a guess that can be thousands of times off (an H100
against a laptop CPU), and a VM's first launches would be estimated with it. So the
hypervisor measures the device at start-up with two small real launches: a matmul (peak
flop rate) and an elementwise add (memory bandwidth), plus an empty-ish launch (fixed
overhead). Measured figures are cached per (backend, device).
"""

from __future__ import annotations

from dataclasses import dataclass

from primitive_lang import TensorSpec, compile_source
from primitive_lang.ast import DType

from .executor import Executor


@dataclass(frozen=True)
class DevicePeaks:
    flops_per_s: float
    bytes_per_s: float
    launch_overhead_s: float


_MATMUL = """
GPU_KERNEL mm
GPU_PARAM a float[N, N]
GPU_PARAM c float[N, N]
GPU_THREAD_CODE:
    PARALLEL_MATMUL a a -> c
GPU_END
GPU_KERNEL add
GPU_PARAM x float[M]
GPU_PARAM y float[M]
GPU_THREAD_CODE:
    ADD x x -> y
GPU_END
"""


def _best(executor: Executor, bound, args, repeat: int) -> float:
    executor.run(bound, args)  # warm-up (CuPy compiles its kernels on first use)
    return min(max(executor.run(bound, args).device_s, 1e-9) for _ in range(repeat))


def measure(executor: Executor) -> DevicePeaks:
    big = executor.asynchronous and not executor.on_cpu  # lavapipe: sized as for NumPy
    n, m = (2048, 1 << 24) if big else (192, 1 << 18)
    prog = compile_source(_MATMUL)
    mm, add = prog.kernel("mm"), prog.kernel("add")
    f32 = DType.FLOAT32
    a, c = executor.zeros(TensorSpec(f32, (n, n))), executor.zeros(TensorSpec(f32, (n, n)))
    x, y = executor.zeros(TensorSpec(f32, (m,))), executor.zeros(TensorSpec(f32, (m,)))
    t_mm = _best(executor, mm.bind({"a": TensorSpec(f32, (n, n)), "c": TensorSpec(f32, (n, n))}),
                 {"a": a, "c": c}, 3)
    t_add = _best(executor, add.bind({"x": TensorSpec(f32, (m,)), "y": TensorSpec(f32, (m,))}),
                  {"x": x, "y": y}, 3)
    tiny = add.bind({"x": TensorSpec(f32, (1,)), "y": TensorSpec(f32, (1,))})
    t_tiny = _best(executor, tiny, {"x": executor.zeros(TensorSpec(f32, (1,))),
                                    "y": executor.zeros(TensorSpec(f32, (1,)))}, 5)
    for arr in (a, c, x, y):
        executor.release(arr)
    return DevicePeaks(flops_per_s=2.0 * n**3 / t_mm, bytes_per_s=12.0 * m / t_add,
                       launch_overhead_s=min(t_tiny, 0.5))


_PEAKS: dict[tuple[str, str], DevicePeaks] = {}


def peaks(executor: Executor) -> DevicePeaks:
    key = (executor.name, executor.info().device_name)
    if key not in _PEAKS:
        _PEAKS[key] = measure(executor)
    return _PEAKS[key]
