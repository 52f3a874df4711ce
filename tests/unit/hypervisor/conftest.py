"""Fixtures for the hypervisor's unit tests: a started NumPy-backed Hypervisor."""

from __future__ import annotations

import pytest

from hypervisor import Hypervisor


@pytest.fixture(params=["numpy", pytest.param("wgpu", marks=pytest.mark.wgpu)])
def hv(request):
    """On NumPy and on wgpu (lavapipe in CI: the asynchronous device path, dispatch and
    pipelining with a real queue)."""
    h = Hypervisor(backend=request.param, device_pool_bytes=64 << 20).start()
    yield h
    h.stop()
