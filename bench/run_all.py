"""Runs every benchmark in turn (`make bench`), each printing its own figures and ratios.

`python -m bench.run_all [--quick] [--json] [--only NAME,...]`. The figures that matter
for GPU work come from a GPU machine (`--backend cupy` is passed where a benchmark takes
it and CuPy sees a GPU); docs/benchmarks.md records them with the machine they ran on.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

BENCHMARKS = {
    "primitive_lang": ["bench.bench_primitive_lang"],
    "scheduler": ["bench.bench_scheduler"],
    "hypervisor": ["bench.bench_hypervisor"],
    "devices": ["bench.bench_devices"],  # many devices: moves, N VMs on N devices (issue 16)
    "preempt": ["bench.bench_preempt"],  # issue 14: latency isolation, preemption off and on
    "overcommit": ["bench.bench_overcommit"],
    "wgpu": ["bench.bench_wgpu"],  # the wgpu executor against CuPy (a GPU) or NumPy (lavapipe)
    "vhost": ["bench.bench_vhost"],
    "isolation": ["bench.bench_isolation"],
    "guest_roundtrip": ["bench.bench_guest_roundtrip"],
    "guest_transports": ["bench.bench_guest_transports"],  # pxos_gpu.ko vs the stock DRM driver
    "tokenizer": ["bench.bench_tokenizer"],
    "llm": ["bench.bench_llm"],
    "advisor": ["bench.bench_advisor"],  # starts llama.cpp's server with SmolLM2 on 127.0.0.1
    "serve": ["bench.bench_serve"],  # root: the guests' network namespace
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", action="store_true")
    p.add_argument("--only", help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    args = p.parse_args(argv)
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        p.error(f"unknown benchmark(s): {', '.join(unknown)}")
    failed = []
    for name in names:
        cmd = [sys.executable, "-m", *BENCHMARKS[name]]
        cmd += ["--quick"] if args.quick else []
        cmd += ["--json"] if args.json else []
        print(f"### {name}: {' '.join(cmd[1:])}", flush=True)
        if subprocess.call(cmd) != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
