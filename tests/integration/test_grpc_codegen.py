"""The committed pxos_pb2*.py files are exactly what protoc makes of pxos.proto today."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from hypervisor.rpc import regen


def _tools_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("grpcio-tools")
    except Exception:
        return None


def _committed_version() -> str:
    text = (regen.PACKAGE_DIR / "pxos_pb2_grpc.py").read_text()
    return re.search(r"GRPC_GENERATED_VERSION = '([^']+)'", text).group(1)


@pytest.fixture
def same_tools():
    installed = _tools_version()
    if installed is None:
        pytest.skip("grpcio-tools not installed (the dev extra)")
    if installed != _committed_version():
        pytest.skip(f"grpcio-tools {installed} differs from {_committed_version()}, which made the committed "
                    "files; regenerate with python -m hypervisor.rpc.regen")


def test_regenerating_gives_the_committed_files(same_tools):
    assert regen.differences() == []


def test_regen_check_command(same_tools):
    proc = subprocess.run([sys.executable, "-m", "hypervisor.rpc.regen", "--check"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_generated_modules_import_through_the_package():
    from hypervisor.rpc import pxos_pb2, pxos_pb2_grpc

    assert pxos_pb2.DESCRIPTOR.package == "pxos.v1"
    assert pxos_pb2_grpc.hypervisor_dot_rpc_dot_pxos__pb2 is pxos_pb2
    service = pxos_pb2.DESCRIPTOR.services_by_name["Hypervisor"]
    assert {"RegisterVM", "UnregisterVM", "ListVMs", "GetVM", "SetQuota", "Stats", "Compile", "Alloc", "Free",
            "Write", "Read", "Launch", "IdleHint", "WatchEvents"} <= set(service.methods_by_name)
