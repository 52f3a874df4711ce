"""tests/conftest.py: PXOS_REQUIRE_GPU=1 turns the skip of a `gpu` test into a failure
(bench/gpu_run.sh sets it, so a GPU run where CuPy did not load cannot look green)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import gpu_unavailable_reason

ROOT = Path(__file__).resolve().parents[1]
GPU_CASE = "tests/unit/hypervisor/test_transfer_isolation.py::test_concurrent_transfers_of_several_vms_never_mix"


def _pytest(env_value: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PXOS_REQUIRE_GPU"}
    if env_value is not None:
        env["PXOS_REQUIRE_GPU"] = env_value
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cupy",
                           GPU_CASE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(gpu_unavailable_reason() is None, reason="a GPU is here: the gpu tests run instead of skipping")
def test_a_gpu_skip_fails_when_a_gpu_is_required():
    plain = _pytest(None)
    assert plain.returncode == 0 and "1 skipped" in plain.stdout, plain.stdout
    required = _pytest("1")
    assert required.returncode == 1, required.stdout
    assert "PXOS_REQUIRE_GPU=1, but this gpu test was skipped" in required.stdout
    assert "skipped" not in required.stdout.splitlines()[-1]


WGPU_CASE = "tests/unit/hypervisor/test_wgpu_backend.py::test_info_names_the_adapter"


def test_a_missing_vulkan_driver_skips_wgpu_tests_or_fails_when_required():
    """CI sets PXOS_REQUIRE_WGPU=1: there a machine without lavapipe must not look green. The
    Vulkan loader is pointed at no driver (wgpu's OpenGL adapter is never taken)."""
    env = {k: v for k, v in os.environ.items() if k != "PXOS_REQUIRE_WGPU"}
    env["VK_ICD_FILENAMES"] = "/nonexistent/pxos-no-driver.json"
    run = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", WGPU_CASE]
    plain = subprocess.run(run, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert plain.returncode == 0 and "1 skipped" in plain.stdout, plain.stdout + plain.stderr
    required = subprocess.run(run, cwd=ROOT, env={**env, "PXOS_REQUIRE_WGPU": "1"}, capture_output=True, text=True,
                              timeout=120)
    assert required.returncode != 0
    assert "PXOS_REQUIRE_WGPU=1 but wgpu has no adapter" in required.stdout + required.stderr
