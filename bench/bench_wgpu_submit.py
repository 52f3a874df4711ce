"""The wgpu executor's per-submission host cost, before and after in one run.

    python -m bench.bench_wgpu_submit [--json] [--quick] [--rounds R]

"before" learns a submission's completion as the executor did until December 2026, through
wgpu-py's public ``map_async`` (an extra empty submission, then wgpu-py's poll thread blocking
in ``wgpuDevicePoll`` until the device is idle); "after" maps with wgpu-native's C calls and
polls without blocking (wgpu_runtime._Native). Everything else is the same code. The modes
alternate round by round in one process (medians over rounds); ratios are after / before.

Figures: a one-element ADD launch (submit + wait, the launch overhead; lower is better) and
of it the ``submit`` call alone (recording and submitting; it returns before the device is done),
the same with 8 launches in flight (wall per launch), a launch of 16 dependent tiny
statements (16 dispatches in one submission), an ADD of 2^22 float32 (GB/s) and a 512²
matmul (GFLOP/s, wall), all through ``Executor.run`` / ``submit``.
"""

from __future__ import annotations

import time
from collections import deque

import numpy as np

from bench.common import Report, median, parser
from hypervisor.executor import make_executor
from primitive_lang import TensorSpec, compile_source
from primitive_lang.ast import DType

F32 = DType.FLOAT32
DEPTH = 8


def _bound(stmts: str, params: dict[str, tuple[int, ...]]):
    head = "".join(f"GPU_PARAM {n} float[{', '.join(map(str, s))}]\n" for n, s in params.items())
    k = compile_source(f"GPU_KERNEL k\n{head}GPU_THREAD_CODE:\n{stmts}GPU_END\n").kernels[0]
    return k.bind({n: TensorSpec(F32, s) for n, s in params.items()})


def _args(ex, params, rng):
    out = {}
    for n, s in params.items():
        out[n] = ex.empty(TensorSpec(F32, s))
        ex.write(out[n], 0, [rng.standard_normal(s).astype(np.float32).tobytes()])
    return out


def _serial(ex, bound, args, n: int, host: list | None = None) -> float:
    """Median wall seconds of submit + wait; ``host`` gets the median of the submit call
    alone (the host's cost of recording and submitting: it returns before the device is done)."""
    ts, hs = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        p = ex.submit(bound, dict(args))
        t1 = time.perf_counter()
        p.wait()
        ts.append(time.perf_counter() - t0)
        hs.append(t1 - t0)
    if host is not None:
        host.append(median(hs))
    return median(ts)


def _pipelined(ex, bound, args, n: int) -> float:
    q: deque = deque()
    t0 = time.perf_counter()
    for _ in range(n):
        if len(q) == DEPTH:
            q.popleft().wait()
        q.append(ex.submit(bound, dict(args)))
    for p in q:
        p.wait()
    return (time.perf_counter() - t0) / n


def _set_mode(ex, mode: str, native) -> None:
    ex.rt.native = native if mode == "after" else None


def main(argv=None) -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=None, help="rounds per mode (default 5, 3 with --quick)")
    args = p.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 5)
    n_tiny = 150 if args.quick else 400
    ex = make_executor("wgpu")
    native = ex.rt.native
    if native is None:
        raise SystemExit("wgpu-py's internals differ from the pinned version: there is no 'after' to measure")
    rng = np.random.default_rng(0)
    one = {"x": (1,), "y": (1,), "z": (1,)}
    tiny, tiny_args = _bound("    ADD x y -> z\n", one), _args(ex, one, rng)
    chain = _bound("".join("    ADD z y -> z\n" for _ in range(16)), one)
    m = 1 << 22
    big = {"x": (m,), "y": (m,), "z": (m,)}
    add, add_args = _bound("    ADD x y -> z\n", big), _args(ex, big, rng)
    nm = 512
    mm = {"a": (nm, nm), "b": (nm, nm), "c": (nm, nm)}
    matmul, mm_args = _bound("    PARALLEL_MATMUL a b -> c\n", mm), _args(ex, mm, rng)
    got: dict[str, dict[str, list[float]]] = {"before": {}, "after": {}}
    for mode in ("before", "after"):  # warm both paths (pipelines, slots)
        _set_mode(ex, mode, native)
        for b, a in ((tiny, tiny_args), (chain, tiny_args), (add, add_args), (matmul, mm_args)):
            ex.run(b, dict(a))
    for r in range(rounds):
        for mode in (("before", "after") if r % 2 == 0 else ("after", "before")):
            _set_mode(ex, mode, native)
            f = got[mode]
            f.setdefault("tiny", []).append(_serial(ex, tiny, tiny_args, n_tiny, f.setdefault("tiny_submit", [])))
            f.setdefault("tiny_pipelined", []).append(_pipelined(ex, tiny, tiny_args, n_tiny))
            f.setdefault("chain16", []).append(_serial(ex, chain, tiny_args, n_tiny // 4))
            f.setdefault("add", []).append(_serial(ex, add, add_args, 5))
            f.setdefault("matmul", []).append(_serial(ex, matmul, mm_args, 3))
    a = ex.adapter()
    report = Report(f"wgpu submission host cost, before/after ({a['name']}, {a['backend']})")
    for mode in ("before", "after"):
        f = {k: median(v) for k, v in got[mode].items()}
        for key, value, unit in (("launch_overhead_us", f["tiny"] * 1e6, "us"),
                                 ("submit_call_us", f["tiny_submit"] * 1e6, "us"),
                                 ("pipelined_us_per_launch", f["tiny_pipelined"] * 1e6, "us"),
                                 ("chain16_us", f["chain16"] * 1e6, "us"),
                                 (f"add_{m}_GBps", 12.0 * m / f["add"] / 1e9, "GB/s"),
                                 (f"matmul_{nm}_GFLOPs", 2.0 * nm**3 / f["matmul"] / 1e9, "GFLOP/s")):
            report.add(f"{key}_{mode}", value, unit, **({} if mode == "before" else {"baseline": f"{key}_before"}))
    report.notes.append(f"adapter {a['name']} ({a['type']}), device time from {a['time_source']}; "
                        f"{rounds} rounds per mode, interleaved; medians")
    report.emit(args.json)
    ex.close()


if __name__ == "__main__":
    main()
