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
