"""Launch time of the language v2 ops on one executor: LINEAR, RMSNORM and a whole decoder layer.

    python -m bench.bench_ops_v2 [--json] [--quick] [--backend numpy|cupy|wgpu]

Baselines, and why:
- ``linear_*``: LINEAR ``x w`` (y = x @ W^T, the transpose a view) against the v1 way of writing
  it (``TRANSPOSE w`` then ``PARALLEL_MATMUL``: the transpose materialised) and against
  ``PARALLEL_MATMUL`` of a weight already stored transposed (the floor: no transpose at all).
- ``rmsnorm_*``: RMSNORM against the same formula written as 7 statements (MUL, REDUCE_MEAN,
  RESHAPE, ADD, RSQRT, MUL, MUL), what v1 (plus RESHAPE) would need.
- ``decoder_layer_*``: examples/primitives/decoder_layer.pxp at SmolLM2-135M sizes (d=576, 9
  query and 3 KV heads of 64, FFN 1536, a 2048-position cache), one launch for T new tokens;
  the baseline is the layer's weight matmuls alone (its 7 LINEARs as one kernel), so the ratio
  says what everything else in the layer (attention over the cache, norms, RoPE) costs.
On NumPy, BLAS is pinned to one thread, as pxos-hvd runs it.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

from pathlib import Path  # (after the BLAS thread settings: NumPy reads them when it loads)

import numpy as np

from bench.common import Report, median, parser, time_calls
from hypervisor.executor import make_executor
from primitive_lang import TensorSpec, compile_source
from primitive_lang.ast import DType

F32 = DType.FLOAT32
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "primitives" / "decoder_layer.pxp"
D, KV, F, S = 576, 192, 1536, 2048
WEIGHTS = {"attn_norm": (D,), "wq": (D, D), "wk": (KV, D), "wv": (KV, D), "wo": (D, D), "ffn_norm": (D,),
           "w_gate": (F, D), "w_up": (F, D), "w_down": (D, F)}


def _kernel(body: str, params: dict[str, tuple[int, ...]]):
    head = "".join(f"GPU_PARAM {n} float[{', '.join(map(str, s))}]\n" for n, s in params.items())
    return compile_source(f"GPU_KERNEL k\n{head}GPU_THREAD_CODE:\n{body}\nGPU_END\n").kernels[0]


class _Launcher:
    def __init__(self, ex, rng):
        self.ex, self.rng = ex, rng

    def arrays(self, shapes: dict[str, tuple[int, ...]]) -> dict:
        out = {}
        for n, s in shapes.items():
            out[n] = self.ex.empty(TensorSpec(F32, s))
            self.ex.write(out[n], 0, [(self.rng.standard_normal(s) * 0.05).astype(np.float32).tobytes()])
        return out

    def seconds(self, kernel, specs, args, repeat: int) -> float:
        bound = kernel.bind(specs)
        return median(time_calls(lambda: self.ex.run(bound, dict(args)), repeat=repeat))


def main(argv=None) -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--backend", default="numpy", choices=("numpy", "cupy", "wgpu"))
    args = p.parse_args(argv)
    repeat = 10 if args.quick else 50
    ex = make_executor(args.backend)
    run = _Launcher(ex, np.random.default_rng(0))
    report = Report(f"language v2 ops on {args.backend}")

    for m in (1, 64):
        shapes = {"x": (m, D), "w": (F, D), "wt": (D, F), "y": (m, F)}
        arrays = run.arrays(shapes)
        specs = {n: TensorSpec(F32, s) for n, s in shapes.items()}
        floor = run.seconds(_kernel("PARALLEL_MATMUL x wt -> y", shapes), specs, arrays, repeat)
        report.add(f"matmul_pretransposed_M{m}", floor * 1e6, "us")
        v1 = run.seconds(_kernel("TRANSPOSE w -> t\nPARALLEL_MATMUL x t -> y", shapes), specs, arrays, repeat)
        report.add(f"transpose_then_matmul_M{m}", v1 * 1e6, "us", baseline=f"matmul_pretransposed_M{m}")
        lin = run.seconds(_kernel("LINEAR x w -> y", shapes), specs, arrays, repeat)
        report.add(f"linear_M{m}", lin * 1e6, "us", baseline=f"matmul_pretransposed_M{m}")

    for t in (1, 64):
        shapes = {"x": (t, D), "g": (D,), "y": (t, D)}
        arrays = run.arrays(shapes)
        specs = {n: TensorSpec(F32, s) for n, s in shapes.items()}
        comp = run.seconds(_kernel(f"MUL x x -> sq\nREDUCE_MEAN sq axis=-1 -> ms\nRESHAPE ms shape=[{t}, 1] -> m2\n"
                                   "ADD m2 1e-5 -> m2\nRSQRT m2 -> r\nMUL x r -> n\nMUL n g -> y", shapes),
                           specs, arrays, repeat)
        report.add(f"rmsnorm_as_7_statements_T{t}", comp * 1e6, "us")
        fused = run.seconds(_kernel("RMSNORM x g eps=1e-5 -> y", shapes), specs, arrays, repeat)
        report.add(f"rmsnorm_T{t}", fused * 1e6, "us", baseline=f"rmsnorm_as_7_statements_T{t}")

    layer = compile_source(EXAMPLE.read_text(encoding="utf-8")).kernels[0]
    weights = run.arrays({**WEIGHTS, "k_cache": (3, S, 64), "v_cache": (3, S, 64)})
    for t in (1, 16) if args.quick else (1, 16, 128):
        x = run.arrays({"x": (t, D)})
        specs = {n: TensorSpec(F32, s) for n, s in {**WEIGHTS, "x": (t, D), "k_cache": (3, S, 64),
                                                     "v_cache": (3, S, 64)}.items()}
        linears = _kernel("LINEAR x wq -> q\nLINEAR x wk -> k\nLINEAR x wv -> v\nLINEAR x wo -> o\n"
                          "LINEAR x w_gate -> g\nLINEAR x w_up -> u\nLINEAR u w_down -> x",
                          {n: s for n, s in {**WEIGHTS, "x": (t, D)}.items() if n.startswith("w") or n == "x"})
        lin_specs = {p.name: specs[p.name] for p in linears.params}
        base = run.seconds(linears, lin_specs, {n: weights.get(n, x.get(n)) for n in lin_specs}, repeat)
        report.add(f"layer_linears_T{t}", base * 1e3, "ms")
        specs |= {"pos": TensorSpec(DType.INT32, ()), "scale": TensorSpec(F32, ())}
        bound = layer.bind(specs)
        launch_args = {**weights, **x, "pos": ex.scalar(100, specs["pos"]), "scale": ex.scalar(0.125, specs["scale"])}
        sec = median(time_calls(lambda b=bound, a=launch_args: ex.run(b, dict(a)), repeat=repeat))
        report.add(f"decoder_layer_T{t}", sec * 1e3, "ms", baseline=f"layer_linears_T{t}")
        report.add(f"decoder_layer_T{t}_rate", bound.cost.flops / sec / 1e9, "GFLOP/s")
    report.notes.append("decoder_layer: one launch of examples/primitives/decoder_layer.pxp, T tokens at "
                        "pos 100, attention over the whole 2048-position cache (masked)")
    report.emit(args.json)
    ex.close()


if __name__ == "__main__":
    main()
