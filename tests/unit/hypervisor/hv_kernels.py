"""Primitive programs the hypervisor unit tests share (this folder is on sys.path)."""

from tests.support.programs import AXPY, MATMUL

__all__ = ["AXPY", "MATMUL"]
