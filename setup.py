"""Builds the cffi virtqueue core (virtio_backend/core/pxq_core.c) during
``pip install -e .``; all other metadata lives in pyproject.toml."""

from setuptools import setup

setup(cffi_modules=["virtio_backend/core/build_pxq.py:ffibuilder"])
