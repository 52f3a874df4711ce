"""The wgpu executor against a baseline executor in the same run: a matmul, a bandwidth-bound
elementwise op and the per-launch overhead.

    python -m bench.bench_wgpu [--json] [--quick] [--baseline auto|numpy|cupy]

Baseline: CuPy on the same GPU where CuPy sees one (issue 18's goals: matmul >= 0.5x CuPy's
rate, elementwise >= 0.8x), NumPy otherwise (on lavapipe, Mesa's CPU Vulkan driver, the
figures are for the record only: both run on the same CPU cores). Figures are rates
(GFLOP/s, GB/s: higher is better, ratio = wgpu / baseline) from the median wall time of
``Executor.run`` (submit and wait), and the launch overhead in microseconds (a one-element
ADD; ratio = wgpu / baseline, lower is better). The wgpu adapter's own device time
(timestamp queries) is reported beside the matmul. On NumPy, BLAS is pinned to one thread,
as pxos-hvd runs it.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np

from bench.common import Report, median, parser, time_calls
from hypervisor.executor import make_executor
from primitive_lang import TensorSpec, compile_source
from primitive_lang.ast import DType

F32 = DType.FLOAT32


def _kernel(stmt: str, params: dict[str, tuple[int, ...]]):
    head = "".join(f"GPU_PARAM {n} float[{', '.join(map(str, s))}]\n" for n, s in params.items())
    return compile_source(f"GPU_KERNEL k\n{head}GPU_THREAD_CODE:\n    {stmt}\nGPU_END\n").kernels[0]


def _arrays(ex, shapes, rng):
    out = {}
    for n, s in shapes.items():
        out[n] = ex.empty(TensorSpec(F32, s))
        ex.write(out[n], 0, [rng.standard_normal(s).astype(np.float32).tobytes()])
    return out


def _timed(ex, stmt, shapes, repeat, rng) -> tuple[float, float]:
    """(median wall seconds of run(), median device seconds the executor reported)."""
    k = _kernel(stmt, shapes)
    bound = k.bind({n: TensorSpec(F32, s) for n, s in shapes.items()})
    args = _arrays(ex, shapes, rng)
    device: list[float] = []
    walls = time_calls(lambda: device.append(ex.run(bound, dict(args)).device_s), repeat=repeat, warmup=2)
    for a in args.values():
        ex.release(a)
    return median(walls), median(device[2:])


def main(argv=None) -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--baseline", default="auto", choices=("auto", "numpy", "cupy"))
    p.add_argument("--n", type=int, default=None, help="matmul size (default 4096, 1024 with --quick)")
    args = p.parse_args(argv)
    base_name = args.baseline
    if base_name == "auto":
        from hypervisor.executor.cupy_backend import cupy_unavailable_reason

        base_name = "cupy" if cupy_unavailable_reason() is None else "numpy"
    wg, base = make_executor("wgpu"), make_executor(base_name)
    a = wg.adapter()
    report = Report(f"wgpu ({a['name']}, {a['backend']}) against {base_name}")
    rng = np.random.default_rng(0)
    n = args.n or (1024 if args.quick else 4096)
    m = (1 << 22) if args.quick else (1 << 24)
    rep_mm = 3 if args.quick or n >= 4096 else 10
    rep = 10 if args.quick else 30
    gpu = base_name == "cupy"

    mm = {"a": (n, n), "b": (n, n), "c": (n, n)}
    flops = 2.0 * n**3
    t_base, _ = _timed(base, "PARALLEL_MATMUL a b -> c", mm, rep_mm, rng)
    report.add(f"matmul_{n}_{base_name}", flops / t_base / 1e9, "GFLOP/s")
    t_wg, d_wg = _timed(wg, "PARALLEL_MATMUL a b -> c", mm, rep_mm, rng)
    r = t_base / t_wg
    report.add(f"matmul_{n}_wgpu", flops / t_wg / 1e9, "GFLOP/s", baseline=f"matmul_{n}_{base_name}",
               **({"goal": ">= 0.5x cupy", "ok": r >= 0.5} if gpu else {}))
    report.add(f"matmul_{n}_wgpu_device", flops / max(d_wg, 1e-12) / 1e9, "GFLOP/s")

    ew = {"x": (m,), "y": (m,), "z": (m,)}
    moved = 12.0 * m  # two reads and a write of float32
    t_base, _ = _timed(base, "ADD x y -> z", ew, rep, rng)
    report.add(f"add_{m}_{base_name}", moved / t_base / 1e9, "GB/s")
    t_wg, _ = _timed(wg, "ADD x y -> z", ew, rep, rng)
    r = t_base / t_wg
    report.add(f"add_{m}_wgpu", moved / t_wg / 1e9, "GB/s", baseline=f"add_{m}_{base_name}",
               **({"goal": ">= 0.8x cupy", "ok": r >= 0.8} if gpu else {}))

    tiny = {"x": (1,), "y": (1,), "z": (1,)}
    t_base, _ = _timed(base, "ADD x y -> z", tiny, rep * 5, rng)
    report.add(f"launch_overhead_{base_name}", t_base * 1e6, "us")
    t_wg, _ = _timed(wg, "ADD x y -> z", tiny, rep * 5, rng)
    report.add("launch_overhead_wgpu", t_wg * 1e6, "us", baseline=f"launch_overhead_{base_name}")
    report.notes.append(f"wgpu adapter: {a['name']} ({a['vendor']}, {a['backend']}, {a['type']}); device time "
                        f"from {a['time_source']}; baseline {base_name} ({base.info().device_name})")
    if not gpu:
        report.notes.append("no CuPy GPU here: the figures against NumPy are for the record, not the goals")
    report.emit(args.json)
    wg.close()
    base.close()


if __name__ == "__main__":
    main()
