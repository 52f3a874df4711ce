"""pxosctl against the real daemon (NumPy backend) on a temporary unix socket: in-process
through main(argv), and as a real subprocess; /metrics scraped after its launches."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request

import numpy as np
import pytest

from hypervisor import Hypervisor
from hypervisor.config import DaemonConfig
from hypervisor.ctl import EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE, main

MLP = """
GPU_KERNEL mlp
GPU_PARAM x float[B, I]
GPU_PARAM w float[I, O]
GPU_PARAM bias float[O]
GPU_PARAM y float[B, O]
GPU_THREAD_CODE:
    PARALLEL_MATMUL x w -> h
    ADD h bias -> z
    RELU z -> y
GPU_END
"""

TWO = MLP + """
GPU_KERNEL scale
GPU_PARAM alpha float
GPU_PARAM v float[]
GPU_PARAM out float[]
GPU_THREAD_CODE:
    MUL v alpha -> out
GPU_END
"""


@pytest.fixture
def daemon():
    from hypervisor.daemon import Daemon

    d = tempfile.mkdtemp(prefix="pxos-", dir="/tmp")
    cfg = DaemonConfig.model_validate({"daemon": {"grpc_socket": os.path.join(d, "hvd.sock"),
                                                  "metrics_address": "127.0.0.1:0", "backend": "numpy",
                                                  "socket_dir": d}})
    dm = Daemon(cfg, hypervisor=Hypervisor(backend="numpy", device_pool_bytes=128 << 20)).start()
    dm.sockdir = d
    yield dm
    dm.stop(grace=1.0)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def ctl(daemon, capsys):
    """ctl(*argv) -> (exit code, stdout, stderr), as `pxosctl --socket SOCK argv...`."""

    def run(*argv):
        code = main(["--socket", daemon.config.daemon.grpc_socket, *map(str, argv)])
        out, err = capsys.readouterr()
        assert "Traceback" not in err
        return code, out, err

    return run


def ok_json(ctl, *argv):
    code, out, err = ctl("--json", *argv)
    assert code == EXIT_OK, err
    return json.loads(out)


def test_vm_add_list_show_remove(ctl, daemon):
    code, out, _ = ctl("vm", "add", 1, "--memory", "8G", "--share", 30, "--cap", 50, "--name", "train",
                       "--class", "batch")
    assert code == EXIT_OK and "VM 1 (train) registered" in out
    info = ok_json(ctl, "vm", "add", 2, "--memory", "512Mi", "--share", 20)
    assert info["memory_quota"] == 512 << 20 and info["cap"] is None
    vms = ok_json(ctl, "vm", "list")["vms"]
    assert [(v["vm_id"], v["name"], v["memory_quota"], v["cap"]) for v in vms] == \
        [(1, "train", 8_000_000_000, 50.0), (2, "vm2", 512 << 20, None)]
    code, out, _ = ctl("vm", "list")
    assert re.search(r"^1\s+train\s+0B\s+7\.5GiB\s+30%\s+50%\s+BATCH", out, re.MULTILINE), out
    shown = ok_json(ctl, "vm", "show", 1)
    assert shown["info"]["default_class"] == "BATCH" and shown["stats"]["launches_total"] == 0
    code, out, _ = ctl("vm", "show", 1)
    assert "30% target" in out and "cap 50%" in out
    assert ctl("vm", "remove", 1)[0] == EXIT_OK
    code, _, err = ctl("vm", "show", 1)
    assert code == EXIT_FAILED and err.strip() == "pxosctl: error: NOT_FOUND: no VM 1"


def test_vm_add_with_a_socket(ctl, daemon):
    path = os.path.join(daemon.sockdir, "vm3.sock")
    info = ok_json(ctl, "vm", "add", 3, "--memory", "1G", "--share", 10, "--socket", path)
    assert info["socket"] == path and os.path.exists(path)
    shown = ok_json(ctl, "vm", "show", 3)
    assert shown["stats"]["transport"]["present"] and not shown["stats"]["transport"]["connected"]


def test_vm_add_socket_in_socket_dir_by_default(ctl, daemon):
    """Issue 11, item 6: `--socket` alone puts vm<ID>.sock in socket_dir, a bare name goes
    there too; without --socket the VM has no socket (gRPC only)."""
    info = ok_json(ctl, "vm", "add", 7, "--memory", "1G", "--share", 10, "--socket")
    assert info["socket"] == os.path.join(daemon.sockdir, "vm7.sock") and os.path.exists(info["socket"])
    info = ok_json(ctl, "vm", "add", 8, "--memory", "1G", "--share", 10, "--socket", "guest8.sock")
    assert info["socket"] == os.path.join(daemon.sockdir, "guest8.sock") and os.path.exists(info["socket"])
    assert not ok_json(ctl, "vm", "add", 9, "--memory", "1G", "--share", 10).get("socket")
    code, _, err = ctl("vm", "add", 10, "--memory", "1G", "--share", 10, "--socket", "/tmp/elsewhere.sock")
    assert code != EXIT_OK and "socket_dir" in err


def test_class_column_says_auto_not_dash(ctl):
    """Issue 11, item 8: CLASS read `-` for a VM whose launches are classified one by one."""
    ctl("vm", "add", 1, "--memory", "1G", "--share", 10)
    ctl("vm", "add", 2, "--memory", "1G", "--share", 10, "--class", "BATCH")
    code, out, _ = ctl("vm", "list")
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert code == EXIT_OK and "auto" in rows["1"] and "BATCH" in rows["2"]


def test_errors_under_json_are_json(ctl, tmp_path):
    """Issue 11, item 8: errors stayed plain text under --json."""
    code, out, err = ctl("--json", "vm", "remove", 77)
    assert code == EXIT_FAILED and err.startswith("pxosctl: error: NOT_FOUND")
    e = json.loads(out)["error"]
    assert e["code"] == "NOT_FOUND" and e["status"] and "77" in e["message"] and e["unreachable"] is False
    code, out, _ = ctl("--json", "--socket", tmp_path / "gone.sock", "stats")
    assert code == EXIT_UNREACHABLE and json.loads(out)["error"]["unreachable"] is True


def test_quota_set_at_run_time(ctl):
    ctl("vm", "add", 1, "--memory", "1G", "--share", 30, "--cap", 80)
    ctl("vm", "add", 2, "--memory", "1G", "--share", 30)
    info = ok_json(ctl, "quota", "set", 1, "--memory", "2G", "--share", 50)
    assert (info["memory_quota"], info["share"], info["cap"]) == (2_000_000_000, 50, 80)
    code, _, err = ctl("quota", "set", 1, "--cap", 20)  # a cap below the share could never be met
    assert code == EXIT_FAILED and "INVALID_ARGUMENT" in err
    assert ok_json(ctl, "quota", "set", 1, "--no-cap")["cap"] is None
    code, _, err = ctl("quota", "set", 2, "--share", 60)  # 50 + 60 > 100
    assert code == EXIT_FAILED and "INVALID_ARGUMENT" in err and err.count("\n") == 1
    assert ok_json(ctl, "vm", "show", 2)["info"]["share"] == 30
    code, _, err = ctl("quota", "set", 2, "--memory", "lots")
    assert code == EXIT_USAGE


def test_quota_cut_below_usage_and_evict(ctl, daemon):
    ctl("vm", "add", 3, "--memory", "1M", "--share", 10)
    daemon.hv.alloc(3, "float32", (1000,))  # the VM holds 4000 bytes
    code, _, err = ctl("quota", "set", 3, "--memory", "1000")
    assert code == EXIT_FAILED and "VM 3 holds 4000 bytes now" in err and "quota set --evict" in err
    code, _, err = ctl("quota", "set", 3, "--memory", "1000", "--evict")  # this daemon has no host budget
    assert code == EXIT_FAILED and "needs overcommit ([memory] host_budget)" in err
    code, _, err = ctl("quota", "set", 3, "--share", "5", "--evict")
    assert code == EXIT_USAGE and "--evict goes with --memory" in err
    assert ok_json(ctl, "vm", "show", 3)["info"]["memory_quota"] == 1_000_000


def _write_inputs(tmp_path, b=4, i=5, o=3):
    rng = np.random.default_rng(7)
    x, w, bias = (rng.standard_normal(s).astype(np.float32) for s in ((b, i), (i, o), (o,)))
    for name, a in (("x", x), ("w", w), ("bias", bias)):
        np.save(tmp_path / f"{name}.npy", a)
    return x, w, bias


def test_run_uploads_launches_and_reads_back(ctl, daemon, tmp_path):
    ctl("vm", "add", 1, "--memory", "100M", "--share", 50)
    src = tmp_path / "mlp.pxp"
    src.write_text(MLP)
    x, w, bias = _write_inputs(tmp_path)
    report = ok_json(ctl, "run", "--vm", 1, src, "--bind", f"x={tmp_path / 'x.npy'}",
                     "--bind", f"w={tmp_path / 'w.npy'}", "--bind", f"bias={tmp_path / 'bias.npy'}",
                     "--out", tmp_path / "out", "--class", "interactive")
    assert report["status"] == "PXOS_S_OK" and report["class"] == "INTERACTIVE"
    assert report["outputs"]["y"]["shape"] == [4, 3]  # sized from the declared dims
    got = np.load(tmp_path / "out" / "y.npy")
    np.testing.assert_allclose(got, np.maximum(x @ w + bias, 0), rtol=1e-5)
    stats = ok_json(ctl, "vm", "show", 1)["stats"]
    assert stats["buffers"] == 0 and stats["kernels"] == 0 and stats["memory_used"] == 0  # all freed
    assert stats["launches_total"] == 1
    code, out, _ = ctl("run", "--vm", 1, src, "--bind", "x=random:2x5", "--bind", "w=random:5x6",
                       "--bind", "bias=zeros:6")
    assert code == EXIT_OK and "y: float32[2x6]" in out and "mlp ran as" in out


def test_run_errors(ctl, tmp_path):
    ctl("vm", "add", 1, "--memory", "1M", "--share", 50)
    src = tmp_path / "two.pxp"
    src.write_text(TWO)
    code, _, err = ctl("run", "--vm", 1, src, "--bind", "v=random:4")
    assert code == EXIT_USAGE and "choose one with --kernel" in err
    code, _, err = ctl("run", "--vm", 1, src, "--kernel", "scale", "--bind", "v=random:4", "--bind", "alpha=scalar:2")
    assert code == EXIT_USAGE and "out has no declared shape" in err
    code, out, err = ctl("run", "--vm", 1, src, "--kernel", "scale", "--bind", "v=random:4",
                         "--bind", "alpha=scalar:2", "--bind", "out=zeros:4")
    assert code == EXIT_OK, err
    code, _, err = ctl("run", "--vm", 1, src, "--kernel", "mlp", "--bind", "x=random:2x5", "--bind", "w=random:4x6",
                       "--bind", "bias=zeros:6")
    assert code == EXIT_FAILED and "INVALID_ARGUMENT" in err and "error[bind" in err  # K mismatch
    code, _, err = ctl("run", "--vm", 1, src, "--kernel", "mlp", "--bind", "x=random:500x500",
                       "--bind", "w=random:500x500", "--bind", "bias=zeros:500")
    assert code == EXIT_FAILED and "RESOURCE_EXHAUSTED" in err and "quota" in err
    bad = tmp_path / "bad.pxp"
    bad.write_text("GPU_KERNEL k\nGPU_PARAM a float[]\nGPU_THREAD_CODE:\n    SPIN a -> a\nGPU_END\n")
    code, _, err = ctl("run", "--vm", 1, bad)
    lines = err.splitlines()
    assert code == EXIT_FAILED and lines[0].startswith("pxosctl: error: INVALID_ARGUMENT")
    assert "4:5: error[unknown-op]" in lines[1]
    assert ctl("run", "--vm", 9, src)[0] == EXIT_FAILED
    assert ctl("run", "--vm", 1, tmp_path / "missing.pxp")[0] == EXIT_USAGE
    assert ok_json(ctl, "vm", "show", 1)["stats"]["memory_used"] == 0  # nothing left behind


def test_stats_top_and_metrics_after_launches(ctl, daemon, tmp_path):
    ctl("vm", "add", 1, "--memory", "100M", "--share", 50)
    ctl("vm", "add", 2, "--memory", "100M", "--share", 30)
    src = tmp_path / "mlp.pxp"
    src.write_text(MLP)
    for vm in (1, 1, 2):
        code, _, err = ctl("run", "--vm", vm, src, "--bind", "x=random:8x8", "--bind", "w=random:8x8",
                           "--bind", "bias=zeros:8")
        assert code == EXIT_OK, err
    stats = ok_json(ctl, "stats")
    assert [v["launches_total"] for v in stats["vms"]] == [2, 1]
    assert stats["scheduler"]["launches"] == 3
    code, out, _ = ctl("stats")
    assert "device   numpy" in out and "LAUNCHES" in out
    frame = ok_json(ctl, "top", "--once")
    assert [v["vm_id"] for v in frame["vms"]] == [1, 2]
    v1 = frame["vms"][0]
    assert v1["share"] == 50 and v1["latency_p99_ms"] > 0
    extra = stats["vms"][0]["extra"]  # overcommit's figures: top shows them, or "-" without them
    if "prefetch_hits" in extra:
        hits, misses = extra["prefetch_hits"], extra.get("prefetch_misses", 0)
        assert v1["hit_rate"] == (hits / (hits + misses) if hits + misses else None)
        assert v1["stall_seconds"] == extra["stall_seconds"]
    else:
        assert v1["hit_rate"] is None and v1["stall_seconds"] is None
    assert frame["device"]["pool_bytes"] == 128 << 20
    code, out, _ = ctl("top", "--once")
    assert code == EXIT_OK and "\x1b" not in out and "ACHIEVED" in out
    host, port = daemon.metrics.address
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    launches = re.findall(r'pxos_vm_launches_total\{class="(\w+)",status="(\w+)",vm="1"\} (\S+)', text)
    assert [(s, float(n)) for _, s, n in launches] == [("ok", 2.0)]
    assert re.search(r'pxos_launch_latency_seconds_count\{vm="1"\} 2\.0', text)
    assert re.search(r'pxos_vm_memory_quota_bytes\{vm="2"\} 1(\.0)?e\+08', text)


def test_events_prints_what_happens(ctl, daemon, capsys):
    import threading

    def later():
        daemon.hv.register_vm(4, 10, 5)
        daemon.hv.idle_hint(4, True)

    def watching():  # the stream is open before the events happen
        import time

        while not daemon.grpc.servicer._watchers:
            time.sleep(0.01)
        later()

    t = threading.Thread(target=watching)
    t.start()
    code, out, _ = ctl("--json", "events", "--vm", 4, "--count", 2)
    t.join()
    events = [json.loads(line) for line in out.splitlines()]
    assert code == EXIT_OK and [e["kind"] for e in events] == ["vm_registered", "idle_hint"]
    assert events[1]["detail"] == {"idle": True} and events[1]["vm_id"] == 4


def test_a_real_pxosctl_process(daemon, tmp_path):
    env = {**os.environ, "PXOS_SOCKET": daemon.config.daemon.grpc_socket}

    def pxosctl(*argv):
        return subprocess.run([sys.executable, "-m", "hypervisor.ctl", *map(str, argv)], capture_output=True,
                              text=True, env=env, timeout=120)

    p = pxosctl("vm", "add", 5, "--memory", "64Mi", "--share", 10)
    assert p.returncode == 0, p.stderr
    p = pxosctl("--json", "vm", "list")
    assert p.returncode == 0 and [v["vm_id"] for v in json.loads(p.stdout)["vms"]] == [5]
    p = pxosctl("top", "--once", "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["vms"][0]["memory_quota"] == 64 << 20
    p = pxosctl("vm", "remove", 77)
    assert p.returncode == 1 and p.stderr.startswith("pxosctl: error: NOT_FOUND") and "Traceback" not in p.stderr
    p = pxosctl("vm", "add", 6, "--memory", "x", "--share", 1)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    p = pxosctl("--socket", tmp_path / "gone.sock", "stats")
    assert p.returncode == EXIT_UNREACHABLE and "cannot reach" in p.stderr and "Traceback" not in p.stderr
