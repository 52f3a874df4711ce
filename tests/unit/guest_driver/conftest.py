"""Fixtures for the guest-side tests: the guest Python library and the built `pxos` tool."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

GUEST_DRIVER = Path(__file__).resolve().parents[3] / "guest_driver"
UAPI = GUEST_DRIVER / "include" / "uapi"


@pytest.fixture(scope="session")
def pxos_guest():
    """guest_driver/python/pxos_guest.py (it is copied into guests, not installed; the
    suite's conftest puts its folder on sys.path). One module object for the whole run:
    a second copy would have its own exception classes, which code holding the first
    (pxos_serve, pxos_llm) would not catch."""
    import pxos_guest

    assert Path(pxos_guest.__file__).resolve() == GUEST_DRIVER / "python" / "pxos_guest.py"
    return pxos_guest


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
