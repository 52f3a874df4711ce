"""Shared helpers for the primitive language tests (imported as a plain module: pytest puts
this folder on sys.path): the seed example, and helpers that return the problems of a source
as (code, line, column) triples."""

from __future__ import annotations

from primitive_lang import PrimitiveError, compile_source

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


def problems(source: str | bytes) -> list[tuple[str, int, int]]:
    """The (code, line, column) of every diagnostic; [] when the source compiles."""
    try:
        compile_source(source)
    except PrimitiveError as exc:
        return [(d.code, d.line, d.column) for d in exc.diagnostics]
    return []


def kernel(body: str, params: str = "GPU_PARAM x float[4, 8]\nGPU_PARAM y float[4, 8]", name: str = "k") -> str:
    """A one-kernel source around ``body`` (statements, one per line)."""
    return f"GPU_KERNEL {name}\n{params}\nGPU_THREAD_CODE:\n{body}\nGPU_END\n"
