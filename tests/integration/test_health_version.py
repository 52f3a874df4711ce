"""Operator basics (issue 11, item 7): --version on both tools, /healthz and /readyz beside
/metrics (any other path is 404, not the metrics), and `pxosctl status`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request

import pytest

import hypervisor
from hypervisor import Hypervisor
from hypervisor.config import DaemonConfig
from hypervisor.ctl import EXIT_OK, EXIT_UNREACHABLE, main


@pytest.fixture
def daemon():
    from hypervisor.daemon import Daemon

    d = tempfile.mkdtemp(prefix="pxos-", dir="/tmp")
    cfg = DaemonConfig.model_validate({"daemon": {"grpc_socket": os.path.join(d, "hvd.sock"),
                                                  "metrics_address": "127.0.0.1:0", "backend": "numpy",
                                                  "socket_dir": d}})
    dm = Daemon(cfg, hypervisor=Hypervisor(backend="numpy", device_pool_bytes=64 << 20)).start()
    yield dm
    dm.stop(grace=1.0)
    shutil.rmtree(d, ignore_errors=True)


def _get(daemon, path: str) -> tuple[int, str]:
    host, port = daemon.metrics.address
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.mark.parametrize("module,prog", [("hypervisor.daemon", "pxos-hvd"), ("hypervisor.ctl", "pxosctl")])
def test_version_on_both_tools(module, prog):
    p = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == f"{prog} {hypervisor.__version__}"
    assert hypervisor.__version__ not in ("", "0+unknown")  # the installed package's version


def test_healthz_readyz_and_metrics_only_at_metrics(daemon):
    assert _get(daemon, "/healthz") == (200, "ok\n")
    assert _get(daemon, "/readyz") == (200, "ready\n")
    code, body = _get(daemon, "/metrics")
    assert code == 200 and "pxos_device" in body
    for path in ("/", "/metrics/x", "/health", "/anything"):
        code, body = _get(daemon, path)
        assert code == 404 and "pxos_" not in body, path


def test_readyz_fails_with_a_reason_when_the_dispatcher_is_gone(daemon):
    daemon.hv.dispatcher.stop(5.0)  # what a dead dispatch thread looks like from outside
    code, body = _get(daemon, "/readyz")
    assert code == 503 and "dispatcher" in body
    assert _get(daemon, "/healthz")[0] == 200  # the process itself still answers


def test_pxosctl_status(daemon, capsys, tmp_path):
    sock = daemon.config.daemon.grpc_socket
    assert main(["--socket", sock, "status"]) == EXIT_OK
    out = capsys.readouterr().out
    assert out.startswith("pxos-hvd up: backend numpy") and "0 VMs" in out
    assert main(["--socket", sock, "vm", "add", "3", "--memory", "16M", "--share", "10"]) == EXIT_OK
    capsys.readouterr()
    assert main(["--socket", sock, "--json", "status"]) == EXIT_OK
    st = json.loads(capsys.readouterr().out)
    assert st["ok"] is True and st["vms"] == 1 and st["backend"] == "numpy" and st["pool_bytes"] == 64 << 20
    assert main(["--socket", str(tmp_path / "gone.sock"), "status"]) == EXIT_UNREACHABLE
    assert "cannot reach" in capsys.readouterr().err
