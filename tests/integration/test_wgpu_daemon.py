"""pxos-hvd --backend wgpu as a real process (lavapipe in CI): pxosctl runs a program on it,
`pxosctl stats` and /metrics name the adapter and the time source, and a float64 ALLOC is
refused with its typed error while the daemon stays up."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from hypervisor.rpc import pxos_pb2 as pb
from hypervisor.rpc.client import Client

REPO = Path(__file__).resolve().parents[2]

MLP = """
GPU_KERNEL mlp
GPU_PARAM x float[B, I]
GPU_PARAM w float[I, O]
GPU_PARAM y float[B, O]
GPU_THREAD_CODE:
    PARALLEL_MATMUL x w -> h
    SOFTMAX h -> y
GPU_END
"""


@pytest.mark.wgpu
def test_pxos_hvd_backend_wgpu_runs_launches_and_names_its_adapter(tmp_path):
    with socket.socket() as s:  # a free port for /metrics
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tmp_path / "pxos.toml"
    cfg.write_text(f'[daemon]\ngrpc_socket = "{tmp_path}/hvd.sock"\nsocket_dir = "{tmp_path}"\n'
                   f'metrics_address = "127.0.0.1:{port}"\n[memory]\ndevice_pool = "256Mi"\n')
    r, w = os.pipe()
    proc = subprocess.Popen([sys.executable, "-m", "hypervisor.daemon", "--config", str(cfg), "--backend", "wgpu",
                             "--ready-fd", str(w)], cwd=REPO, pass_fds=(w,), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    os.close(w)
    env = {**os.environ, "PXOS_SOCKET": str(tmp_path / "hvd.sock")}

    def pxosctl(*argv):
        p = subprocess.run([sys.executable, "-m", "hypervisor.ctl", *map(str, argv)], capture_output=True,
                           text=True, env=env, timeout=120, cwd=REPO)
        assert "Traceback" not in p.stderr, p.stderr
        return p

    try:
        with os.fdopen(r) as ready:
            assert ready.readline() == "ready\n", proc.communicate(timeout=20)[0]
        assert pxosctl("vm", "add", 1, "--memory", "64Mi", "--share", 50).returncode == 0
        rng = np.random.default_rng(3)
        x, wt = rng.standard_normal((4, 8)).astype(np.float32), rng.standard_normal((8, 5)).astype(np.float32)
        np.save(tmp_path / "x.npy", x)
        np.save(tmp_path / "w.npy", wt)
        (tmp_path / "mlp.pxp").write_text(MLP)
        p = pxosctl("--json", "run", "--vm", 1, tmp_path / "mlp.pxp", "--bind", f"x={tmp_path / 'x.npy'}",
                    "--bind", f"w={tmp_path / 'w.npy'}", "--out", tmp_path / "out")
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["status"] == "PXOS_S_OK"
        h = x @ wt
        e = np.exp(h - h.max(axis=-1, keepdims=True))
        np.testing.assert_allclose(np.load(tmp_path / "out" / "y.npy"), e / e.sum(-1, keepdims=True), rtol=1e-5,
                                   atol=1e-6)
        stats = json.loads(pxosctl("--json", "stats").stdout)["device"]
        assert stats["backend"] == "wgpu" and stats["api"] in ("Vulkan", "Metal", "D3D12")
        assert stats["time_source"] in ("timestamp-query", "host-clock") and stats["vendor"]
        out = pxosctl("stats").stdout
        assert f"device   wgpu ({stats['device_name']})" in out and f"api {stats['api']}" in out
        assert f"device time from {stats['time_source']}" in out
        with Client(socket_path=str(tmp_path / "hvd.sock")) as c:  # a float64 ALLOC: refused, typed
            with pytest.raises(Exception, match="float64") as ei:
                c.call("Alloc", pb.AllocRequest(vm_id=1, dtype="float64", shape=[4]))
            assert "INVALID" in str(ei.value)
            assert [v.vm_id for v in c.call("ListVMs", pb.ListVMsRequest()).vms] == [1]  # still up
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        assert re.search(r'pxos_device_info\{[^}]*backend="wgpu"[^}]*time_source="(timestamp-query|host-clock)"',
                         text), text[:2000]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
