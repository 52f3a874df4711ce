"""Primitive programs the hypervisor unit tests share (this folder is on sys.path)."""

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
