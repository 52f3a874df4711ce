"""Issue 16 end to end: a pxos-hvd with three NumPy devices, driven by pxosctl over gRPC
(in-process through main(argv)): placement shown by `vm list`, `stats` and /metrics, a VM
moved with `vm move` while its data stays bit for bit, a move the target cannot take."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import urllib.request

import numpy as np
import pytest

from hypervisor.config import DaemonConfig
from hypervisor.ctl import EXIT_FAILED, EXIT_OK, main
from hypervisor.rpc.client import Client


@pytest.fixture
def daemon():
    from hypervisor.daemon import Daemon

    d = tempfile.mkdtemp(prefix="pxos-", dir="/tmp")
    cfg = DaemonConfig.model_validate({
        "daemon": {"grpc_socket": os.path.join(d, "hvd.sock"), "metrics_address": "127.0.0.1:0",
                   "backend": "numpy", "socket_dir": d, "devices": 3, "state_file": os.path.join(d, "state.json")},
        "memory": {"device_pool": "32Mi"},
        "vm": [{"id": 1, "memory": "8M", "share": 60, "device": 2},
               {"id": 2, "memory": "8M", "share": 60}],
    })
    dm = Daemon(cfg).start()
    yield dm
    dm.stop(grace=1.0)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def ctl(daemon, capsys):
    def run(*argv):
        code = main(["--socket", daemon.config.daemon.grpc_socket, *map(str, argv)])
        out, err = capsys.readouterr()
        assert "Traceback" not in err
        return code, out, err

    return run


def test_vm_list_stats_metrics_and_move(daemon, ctl):
    code, out, _ = ctl("vm", "add", 3, "--memory", "4M", "--share", 30)
    assert code == EXIT_OK
    code, out, err = ctl("--json", "vm", "list")
    where = {v["vm_id"]: v["device"] for v in json.loads(out)["vms"]}
    assert where == {1: 2, 2: 0, 3: 1}  # pinned; then the emptiest devices, lowest id first
    code, out, _ = ctl("vm", "list")
    assert "DEVICE" in out.splitlines()[0]
    # Work and data on VM 2 (device 0), then move it to device 1.
    data = np.arange(250_000, dtype=np.float32)
    with Client(socket_path=daemon.config.daemon.grpc_socket) as c:
        from hypervisor.rpc import pxos_pb2 as pb

        b = c.call("Alloc", pb.AllocRequest(vm_id=2, dtype="float32", shape=[data.size]))
        c.write_all(2, b.handle, data.tobytes())
    code, out, err = ctl("--json", "vm", "move", 2, "--device", 1)
    assert code == EXIT_OK, err
    r = json.loads(out)
    assert r["info"]["device"] == 1 and r["from_device"] == 0 and r["bytes"] == data.nbytes and r["buffers"] == 1
    assert r["pause_seconds"] > 0
    with Client(socket_path=daemon.config.daemon.grpc_socket) as c:
        assert c.read_all(2, b.handle) == data.tobytes()
    code, out, _ = ctl("vm", "move", 2, "--device", 0)
    assert code == EXIT_OK and "moved from device 1 to device 0" in out and "paused" in out
    # A move the target cannot take (60% beside 60%): refused, the VM stays.
    code, _, err = ctl("vm", "move", 1, "--device", 0)
    assert code == EXIT_FAILED and "share" in err
    stats = json.loads(ctl("--json", "stats")[1])
    assert {v["vm_id"]: v["device"] for v in stats["vms"]} == {1: 2, 2: 0, 3: 1}
    devs = {d["id"]: d for d in stats["devices"]}
    assert sorted(devs) == [0, 1, 2] and devs[0]["pool_used"] == data.nbytes and devs[1]["pool_used"] == 0
    assert devs[0]["vms"] == 1 and devs[1]["share_used"] == 30 and devs[2]["pool_bytes"] == 32 << 20
    code, out, _ = ctl("stats")
    assert "device 0" in out and "device 2" in out and "DEV" in out
    code, out, _ = ctl("top", "--once")
    assert code == EXIT_OK and "device 1  busy" in out
    host, port = daemon.metrics.address
    text = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10).read().decode()
    assert 'pxos_vm_device{vm="2"} 0.0' in text and 'pxos_vm_device{vm="1"} 2.0' in text
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line and not line.startswith("#")}
    assert samples['pxos_devices_pool_used_bytes{device="0"}'] == data.nbytes
    assert samples['pxos_devices_share_ratio{device="1"}'] == pytest.approx(0.3)
    assert samples['pxos_devices_vms{device="2"}'] == 1
    assert samples['pxos_vm_move_pause_seconds_count{by="operator"}'] == 2  # the two moves that happened
    assert samples["pxos_vm_move_bytes_total"] == 2 * data.nbytes
    # The move is kept as the VM's pin in the state file: a restart puts it back there.
    state = json.loads(open(daemon.config.daemon.state_file).read())
    assert "2" in json.dumps(state) and '"device": 0' in json.dumps(state)


def test_reload_with_a_new_pin_moves_the_vm(daemon):
    cfg = daemon.config.model_copy(update={"vm": [daemon.config.vm[0].model_copy(update={"device": 1}),
                                                  daemon.config.vm[1]]})
    lines = daemon.reload(cfg)
    assert any("VM 1" in line and "moved to device 1" in line for line in lines), lines
    assert daemon.hv.vm_info(1).device == 1
    both = cfg.model_copy(update={"vm": [cfg.vm[0], cfg.vm[1].model_copy(update={"device": 1})]})
    lines = daemon.reload(both)  # 60% beside 60% on device 1: refused, VM 2 stays
    assert any("VM 2: not changed" in line for line in lines), lines
    assert daemon.hv.vm_info(2).device == 0


def test_models_of_the_config_on_a_daemon_with_devices(tmp_path):
    from hypervisor.daemon import Daemon
    from tests.support.tiny_gguf import write_tiny_llama

    path = str(write_tiny_llama(tmp_path / "tiny.gguf"))
    cfg = DaemonConfig.model_validate({
        "daemon": {"grpc_socket": str(tmp_path / "g.sock"), "metrics_address": None, "backend": "numpy",
                   "socket_dir": str(tmp_path), "devices": 2},
        "memory": {"device_pool": "16Mi"},
        "model": [{"name": "tiny", "path": path}],
        "vm": [{"id": 1, "memory": "1M", "share": 50, "device": 1}],
    })
    dm = Daemon(cfg).start(grpc=False, metrics=False)
    try:
        assert [m.name for m in dm.hv.list_models()] == ["tiny"] and dm.hv.model_devices("tiny") == []
        opened = dm.hv.open_model(1, "tiny", session=3)
        assert dm.hv.model_devices("tiny") == [1] and opened.meta_bytes > 0
    finally:
        dm.stop()
