"""Fixtures for the hypervisor's unit tests: a started NumPy-backed Hypervisor."""

from __future__ import annotations

import pytest

from hypervisor import Hypervisor


@pytest.fixture
def hv():
    h = Hypervisor(backend="numpy", device_pool_bytes=64 << 20).start()
    yield h
    h.stop()
