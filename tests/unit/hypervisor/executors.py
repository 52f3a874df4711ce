"""The executor backends the conformance suites run on, and a helper that runs one kernel on
one of them (this folder is on sys.path).

A new backend (one that hypervisor.executor.make_executor knows) is one more line in
EXECUTORS, with its marker: every op test of test_executor.py, test_conformance.py and
test_decoder_layer.py then runs on it too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pytest

from hypervisor.executor import DonePending, NumpyExecutor, UnsupportedDtype, make_executor
from hypervisor.executor.numpy_backend import _NumpySteps
from primitive_lang import TensorSpec, compile_source
from primitive_lang.ast import DType

EXECUTORS = [
    pytest.param("numpy", id="numpy"),
    # NumPy with every launch run as bounded steps and every tileable op split as finely as
    # tiling allows (issue 14, executor/tiling.py): the same answers, op for op.
    pytest.param("numpy-tiled", id="numpy-tiled"),
    pytest.param("cupy", id="cupy", marks=pytest.mark.gpu),
    pytest.param("wgpu", id="wgpu", marks=pytest.mark.wgpu),
    # The GPU executors with every launch run as steps (executor/stepping.py): one step per
    # chunk, every tileable op tiled as finely as the device's row blocks allow.
    pytest.param("cupy-stepped", id="cupy-stepped", marks=pytest.mark.gpu),
    pytest.param("wgpu-stepped", id="wgpu-stepped", marks=pytest.mark.wgpu),
]

#: Dtypes each backend cannot hold (a bind of them raises UnsupportedDtype: WGSL has no 64-bit types).
UNSUPPORTED = {"wgpu": {"float64", "int64"}, "wgpu-stepped": {"float64", "int64"}}


def unsupported(backend: str, values: Mapping) -> set[str]:
    """The dtypes among ``values``' tensors that ``backend`` refuses (scalars are host values)."""
    dtypes = {v.dtype if isinstance(v, Out) else v.dtype.name for v in values.values() if not isinstance(v, Scalar)}
    return dtypes & UNSUPPORTED.get(backend, set())


def refuses(backend: str, *dtypes: str) -> bool:
    return bool(set(dtypes) & UNSUPPORTED.get(backend, set()))


def expect_refusal(backend: str, fn, *args, **kwargs) -> None:
    """``fn`` must fail with UnsupportedDtype (PXOS_S_INVALID) and nothing else."""
    with pytest.raises(UnsupportedDtype, match="float64|int64") as info:
        fn(*args, **kwargs)
    assert info.value.status == "PXOS_S_INVALID"


def make(name: str):
    if name == "numpy-tiled":
        return TiledNumpy()
    if name.endswith("-stepped"):
        return stepped(make_executor(name.removesuffix("-stepped")))
    return make_executor(name)


def stepped(ex):
    """``ex`` (a GPU executor) with submit() running each launch through start_steps with a
    vanishing slice: every step a chunk of its own, every tileable op tiled as finely as
    allowed, a wait for the device between two steps (the queue is always full)."""

    def submit(bound, args, wait_for=()):
        steps = ex.start_steps(bound, args, wait_for, 1e-9)
        while not steps.advance(1e-9):
            pass
        return DonePending(steps.timing())

    ex.submit = submit
    return ex


class TiledNumpy(NumpyExecutor):
    """Every launch through ``start_steps`` with a vanishing slice: one step per advance,
    every matmul, reduction and elementwise op tiled (docs/scheduling.md "Preemption")."""

    def submit(self, bound, args, wait_for=()):
        steps = _NumpySteps(self, bound, args, wait_for, 1e-9)
        while not steps.advance(1e-9):
            pass
        return DonePending(steps.timing())


@dataclass(frozen=True)
class Scalar:
    """A scalar param's value (passed by value: ``Executor.scalar``)."""

    value: int | float
    dtype: str


@dataclass(frozen=True)
class Out:
    """An output param the launch allocates, zero-filled unless ``init`` is given."""

    dtype: str
    shape: tuple[int, ...]
    init: np.ndarray | None = None


def source_for(stmts: str, values: Mapping[str, np.ndarray | Scalar | Out], name: str = "k") -> str:
    """A one-kernel source whose params are ``values``' names, each declared ``dtype[]`` (any
    shape) or, for a Scalar, ``dtype``."""
    lines = [f"GPU_KERNEL {name}"]
    for n, v in values.items():
        dtype = v.dtype if isinstance(v, Scalar | Out) else v.dtype.name
        lines.append(f"GPU_PARAM {n} {dtype}" + ("" if isinstance(v, Scalar) else "[]"))
    lines += ["GPU_THREAD_CODE:", *("    " + s.strip() for s in stmts.strip().splitlines()), "GPU_END"]
    return "\n".join(lines) + "\n"


def run(ex, source: str, values: Mapping[str, np.ndarray | Scalar | Out], kernel: str | None = None,
        arrays: dict | None = None) -> dict[str, np.ndarray]:
    """Binds every param to ``values`` (arrays are copied onto the device), runs the kernel
    to completion and returns every tensor param as it is afterwards, on the host. The
    device arrays are left in ``arrays`` when one is given (for a look after a failure)."""
    program = compile_source(source)
    k = program.kernel(kernel) if kernel else program.kernels[0]
    specs, args = {}, {} if arrays is None else arrays
    for n, v in values.items():
        if isinstance(v, Scalar):
            specs[n] = TensorSpec(DType(v.dtype), ())
            continue
        shape, dtype = (v.shape, v.dtype) if isinstance(v, Out) else (v.shape, v.dtype.name)
        specs[n] = spec = TensorSpec(DType(dtype), tuple(shape))
        host = v.init if isinstance(v, Out) else v
        if host is None:
            args[n] = ex.zeros(spec)
        else:
            args[n] = ex.empty(spec)
            ex.write(args[n], 0, [np.ascontiguousarray(host, dtype=dtype).tobytes()])
    for n, v in values.items():
        if isinstance(v, Scalar):
            args[n] = ex.scalar(v.value, specs[n])
    ex.run(k.bind(specs), args)
    return {n: ex.to_host(a) for n, a in args.items() if not isinstance(values[n], Scalar)}


def host_state(ex, arrays: dict, values: Mapping) -> dict[str, np.ndarray]:
    return {n: ex.to_host(a) for n, a in arrays.items() if not isinstance(values[n], Scalar)}
