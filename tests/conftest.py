"""Suite-wide pytest set-up: markers that need hardware skip with their reason.

``PXOS_REQUIRE_QEMU=1`` and ``PXOS_REQUIRE_WGPU=1`` (CI: QEMU, and wgpu on Mesa's lavapipe)
and ``PXOS_REQUIRE_GPU=1`` (bench/gpu_run.sh, any run on a GPU machine) turn those skips into
failures: where the hardware is meant to be there, a
test that did not run must not pass unnoticed."""

from __future__ import annotations

import functools
import os
import shutil
import sys
from pathlib import Path

import pytest

# The guest's Python modules (pxos_guest, pxos_llm, pxos_tokenizer) are files a guest gets,
# not a package: tests import them by name from their folder.
_GUEST_PY = str(Path(__file__).resolve().parents[1] / "guest_driver" / "python")
if _GUEST_PY not in sys.path:
    sys.path.append(_GUEST_PY)


@functools.cache
def gpu_unavailable_reason() -> str | None:
    """Why the `gpu` tests cannot run here, or None when CuPy sees a GPU."""
    try:
        import cupy
    except Exception as exc:  # ImportError, or a CUDA library that fails to load
        return f"CuPy not importable: {type(exc).__name__}: {exc}"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return f"no CUDA device: {type(exc).__name__}: {exc}"
    return None if n > 0 else "no CUDA device"


@functools.cache
def qemu_unavailable_reason() -> str | None:
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 not installed (scripts/setup.sh installs it)"
    return None


@functools.cache
def wgpu_unavailable_reason() -> str | None:
    """Why the `wgpu` tests cannot run here (no wgpu package, no Vulkan/Metal adapter)."""
    try:
        from hypervisor.executor.wgpu_backend import wgpu_unavailable_reason as why
    except Exception as exc:
        return f"the wgpu executor does not import: {type(exc).__name__}: {exc}"
    return why()


def gpu_required() -> bool:
    return os.environ.get("PXOS_REQUIRE_GPU") == "1"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("gpu") is not None and (why := gpu_unavailable_reason()):
            item.add_marker(pytest.mark.skip(reason=f"gpu: {why}"))
        if item.get_closest_marker("wgpu") is not None and (why := wgpu_unavailable_reason()):
            # CI sets PXOS_REQUIRE_WGPU=1 (scripts/setup.sh installs lavapipe): a failure there.
            if os.environ.get("PXOS_REQUIRE_WGPU") == "1":
                raise pytest.UsageError(f"PXOS_REQUIRE_WGPU=1 but {why}")
            item.add_marker(pytest.mark.skip(reason=f"wgpu: {why}"))
        if item.get_closest_marker("qemu") is not None and (why := qemu_unavailable_reason()):
            # CI sets PXOS_REQUIRE_QEMU=1: there a missing QEMU is a failure, never a skip.
            if os.environ.get("PXOS_REQUIRE_QEMU") == "1":
                raise pytest.UsageError(f"PXOS_REQUIRE_QEMU=1 but {why}")
            else:
                item.add_marker(pytest.mark.skip(reason=f"qemu: {why}"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Under PXOS_REQUIRE_GPU=1 a `gpu` test that skipped (the marker added above, or a
    pytest.skip/importorskip inside it) is reported as failed, with the reason."""
    report = yield
    if report.skipped and gpu_required() and item.get_closest_marker("gpu") is not None:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"PXOS_REQUIRE_GPU=1, but this gpu test was skipped: {reason}"
    return report
