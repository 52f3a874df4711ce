"""Primitive programs that many tests share (docs/language.md explains them)."""

from __future__ import annotations

MATMUL = """
GPU_KERNEL mm
GPU_PARAM a float[M, K]
GPU_PARAM b float[K, N]
GPU_PARAM c float[M, N]
GPU_THREAD_CODE:
    PARALLEL_MATMUL a b -> c
GPU_END
"""

AXPY = """
GPU_KERNEL axpy
GPU_PARAM alpha float
GPU_PARAM x float[]
GPU_PARAM y float[]
GPU_THREAD_CODE:
    MUL x alpha -> t
    ADD t y -> y
GPU_END
"""


def heavy(repeat: int) -> str:
    """`repeat` square matmuls in a row: slow enough (on NumPy) that launches queue up."""
    return f"""
GPU_KERNEL heavy
GPU_PARAM a float[N, N]
GPU_PARAM c float[N, N]
GPU_THREAD_CODE:
    REPEAT {repeat}:
        PARALLEL_MATMUL a a -> t
    END_REPEAT
    COPY t -> c
GPU_END
"""
