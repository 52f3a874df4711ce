"""Parse + validate time of primitive programs: the seed example uncached and cached, a full
64 KiB source, and a bind; each against a baseline run in the same process.

    python -m bench.bench_primitive_lang [--json] [--quick]

Baselines, and why:
- ``json_loads_seed``: ``json.loads`` of the seed program's AST written as JSON (about the same
  size). It is the floor of decoding any structured text in Python, so ``uncached_seed`` as a
  multiple of it says what the grammar, the checks and the diagnostics cost on top.
- ``lark_tree_seed`` / ``lark_tree_64k``: Lark alone (its own contextual lexer, a parse tree,
  no transformer, no validation) on the same text: the parser this package is built on.
- ``uncached_seed`` is the baseline of ``cached_seed`` (what the compile cache saves).
"""

from __future__ import annotations

import json
import random

from lark import Lark

from bench.common import Report, median, parser, time_calls
from primitive_lang import TensorSpec, clear_cache, compile_source, limits
from primitive_lang import parser as grammar_home
from primitive_lang.ast import DType

SEED = """\
# comments start with '#'
GPU_KERNEL train_model
GPU_PARAM weights float[]
GPU_PARAM inputs float[]
GPU_PARAM outputs float[]
GPU_THREAD_CODE:
    PARALLEL_MATMUL weights inputs → outputs
GPU_END
"""

SEED_AS_JSON = json.dumps({"kernels": [{
    "name": "train_model", "class_hint": None, "priority": None,
    "params": [{"name": n, "dtype": "float32", "shape": None, "pos": [3 + i, 1]}
               for i, n in enumerate(("weights", "inputs", "outputs"))],
    "body": [{"op": "PARALLEL_MATMUL", "args": [{"name": "weights", "pos": [7, 21]},
                                                {"name": "inputs", "pos": [7, 29]}],
              "axis": None, "dest": {"name": "outputs", "pos": [7, 38]}, "pos": [7, 5]}],
    "pos": [2, 1]}]})

_STATEMENTS = [
    "    ADD h{i} bias -> h{j}",
    "    GELU h{i} -> h{j}          # activation",
    "    MUL h{i} 0.5 -> h{j}",
    "    SOFTMAX h{i} axis=-1 -> h{j}",
    "    SUB h{i} x -> h{j}",
    "    RELU h{i} -> h{j}",
    "    MAX h{i} 0 -> h{j}",
]


def realistic_64k(seed: int = 7) -> str:
    """A valid source of nearly MAX_SOURCE_BYTES: 16 MLP-like kernels with comments, symbolic
    dims, REPEAT blocks and a mix of ops (what a guest library would generate)."""
    rnd = random.Random(seed)
    budget = limits.MAX_SOURCE_BYTES // limits.MAX_KERNELS
    kernels = []
    for k in range(limits.MAX_KERNELS):
        lines = [f"# layer stack {k}: generated", f"GPU_KERNEL stack_{k}", "GPU_CLASS THROUGHPUT",
                 f"GPU_PRIORITY {k * 5}", "GPU_PARAM x float[B, 256]", "GPU_PARAM w float[256, 256]",
                 "GPU_PARAM bias float[256]", "GPU_PARAM y float[B, 256]", "GPU_THREAD_CODE:",
                 "    PARALLEL_MATMUL x w -> h0"]
        i, size = 0, sum(len(s) + 1 for s in lines) + 60
        while True:
            if rnd.random() < 0.1:
                block = ["    REPEAT 4:", f"        PARALLEL_MATMUL h{i} w -> h{i + 1}",
                         f"        ADD h{i + 1} bias -> h{i + 1}", "    END_REPEAT"]
            else:
                block = [rnd.choice(_STATEMENTS).format(i=i, j=i + 1)]
            grow = sum(len(s) + 1 for s in block)
            if size + grow > budget or i + 2 >= limits.MAX_STATEMENTS:
                break
            lines += block
            size += grow
            i += 1
        lines += [f"    COPY h{i} -> y", "GPU_END"]
        kernels.append("\n".join(lines) + "\n")
    return "".join(kernels)


def dense_64k() -> str:
    """The most statements per byte that still compiles: kernels of MAX_STATEMENTS of the
    shortest statement, as many as fit in MAX_SOURCE_BYTES."""
    parts, size, k = [], 0, 0
    while True:
        head = f"GPU_KERNEL k{k}\nGPU_PARAM y float[2]\nGPU_THREAD_CODE:\n"
        room = (limits.MAX_SOURCE_BYTES - size - len(head) - len("GPU_END\n")) // len("ADD y 1 -> y\n")
        n = min(limits.MAX_STATEMENTS, room)
        if n < 1:
            return "".join(parts)
        part = head + "ADD y 1 -> y\n" * n + "GPU_END\n"
        parts.append(part)
        size += len(part)
        k += 1


def main(argv=None) -> None:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    n = 300 if args.quick else 3000
    big_n = 5 if args.quick else 25
    report = Report("primitive_lang: parse + validate")
    seed_bytes = SEED.encode()
    tree_parser = Lark.open("grammar.lark", rel_to=grammar_home.__file__, parser="lalr")

    def uncached_seed():
        clear_cache()
        compile_source(seed_bytes)

    report.add("json_loads_seed", median(time_calls(lambda: json.loads(SEED_AS_JSON), repeat=n)) * 1e6, "us")
    report.add("lark_tree_seed", median(time_calls(lambda: tree_parser.parse(SEED), repeat=n)) * 1e6, "us",
               baseline="json_loads_seed")
    t_uncached = median(time_calls(uncached_seed, repeat=n)) * 1e6
    report.add("uncached_seed", t_uncached, "us", baseline="json_loads_seed", goal="<= 200 us",
               ok=t_uncached <= 200)
    compile_source(seed_bytes)
    t_cached = median(time_calls(lambda: compile_source(seed_bytes), repeat=n * 3)) * 1e6
    report.add("cached_seed", t_cached, "us", baseline="uncached_seed", goal="<= 5 us", ok=t_cached <= 5)
    t_cached_str = median(time_calls(lambda: compile_source(SEED), repeat=n * 3)) * 1e6
    report.add("cached_seed_str", t_cached_str, "us", baseline="uncached_seed", goal="<= 5 us", ok=t_cached_str <= 5)

    kernel = compile_source(SEED).kernel("train_model")
    specs = {"weights": TensorSpec(DType.FLOAT32, (64, 128)), "inputs": TensorSpec(DType.FLOAT32, (128, 32)),
             "outputs": TensorSpec(DType.FLOAT32, (64, 32))}
    report.add("bind_seed", median(time_calls(lambda: kernel.bind(specs), repeat=n)) * 1e6, "us",
               baseline="uncached_seed")

    for name, text in (("64k", realistic_64k()), ("dense_64k", dense_64k())):
        data = text.encode()
        assert len(data) <= limits.MAX_SOURCE_BYTES
        compile_source(data)  # valid: raises otherwise

        def uncached_big(data=data):
            clear_cache()
            compile_source(data)

        report.add(f"lark_tree_{name}", median(time_calls(lambda t=text: tree_parser.parse(t), repeat=big_n,
                                                          warmup=1)) * 1e3, "ms")
        t_big = median(time_calls(uncached_big, repeat=big_n, warmup=1)) * 1e3
        goal = {"goal": "<= 100 ms", "ok": t_big <= 100} if name == "64k" else {}
        report.add(f"uncached_{name}", t_big, "ms", baseline=f"lark_tree_{name}", **goal)
    dense = dense_64k()
    report.notes.append(f"64k: {len(realistic_64k().encode())} bytes, 16 kernels of mixed statements; "
                        f"dense_64k: {len(dense.encode())} bytes, {dense.count('ADD')} statements 'ADD y 1 -> y'")
    report.notes.append("uncached = compile cache cleared before each call (the full path: hash, "
                        "decode, parse, validate)")
    report.emit(args.json)


if __name__ == "__main__":
    main()
