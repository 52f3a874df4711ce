"""Fixtures for the guest-side tests: the guest Python library and the built `pxos` tool."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

GUEST_DRIVER = Path(__file__).resolve().parents[3] / "guest_driver"
UAPI = GUEST_DRIVER / "include" / "uapi"


@pytest.fixture(scope="session")
def pxos_guest():
    """guest_driver/python/pxos_guest.py, imported from its file (it is copied into guests,
    not installed)."""
    path = GUEST_DRIVER / "python" / "pxos_guest.py"
    spec = importlib.util.spec_from_file_location("pxos_guest", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["pxos_guest"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def gcc() -> str:
    cc = shutil.which("gcc")
    if cc is None:
        pytest.skip("gcc not installed")
    return cc


@pytest.fixture(scope="session")
def pxos_tool(gcc, tmp_path_factory) -> Path:
    """The static guest tool, built from guest_driver/tools with its Makefile."""
    out = tmp_path_factory.mktemp("tool")
    proc = subprocess.run(["make", "-C", str(GUEST_DRIVER / "tools"), f"OUT={out}"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "warning" not in proc.stderr, proc.stderr
    return out / "pxos"
