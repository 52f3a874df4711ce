"""pxos-hvd as a real process: config file, sockets, readiness, SIGTERM, bad config."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hypervisor.rpc import pxos_pb2 as pb
from hypervisor.rpc.client import Client

REPO = Path(__file__).resolve().parents[2]


def start(config: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    r, w = os.pipe()
    proc = subprocess.Popen([sys.executable, "-m", "hypervisor.daemon", "--config", str(config),
                             "--ready-fd", str(w), *extra],
                            cwd=REPO, pass_fds=(w,), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    os.close(w)
    with os.fdopen(r) as ready:
        line = ready.readline()
    return proc, line


def compile_workers(pid: int) -> list[int]:
    """The daemon's compile worker processes (hypervisor/compile_pool.py): its children."""
    out = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid \
                    and b"hypervisor.compile_worker" in (d / "cmdline").read_bytes():
                out.append(int(d.name))
        except (OSError, ValueError, IndexError):
            continue
    return sorted(out)


def gone(pids: list[int], timeout: float = 10.0) -> bool:
    """Every process exited (a zombie counts: its parent or init reaps it)."""
    def running(pid):
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False
    deadline = time.monotonic() + timeout
    while any(running(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_sigterm_stops_cleanly_and_removes_its_sockets(tmp_path):
    cfg = tmp_path / "pxos.toml"
    cfg.write_text(f"""
[daemon]
grpc_socket = "{tmp_path}/hvd.sock"
socket_dir = "{tmp_path}"
metrics_address = "127.0.0.1:0"
backend = "numpy"
[scheduler]
compile_workers = 2
compile_gc_freeze = true
[[vm]]
id = 7
name = "seven"
memory = "64Mi"
share = 40
socket = "{tmp_path}/vm7.sock"
""")
    proc, line = start(cfg)
    try:
        assert line == "ready\n", proc.communicate(timeout=10)[0]
        for sock in ("hvd.sock", "vm7.sock"):
            mode = (tmp_path / sock).stat().st_mode
            assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600, sock
        workers = compile_workers(proc.pid)
        assert len(workers) == 2  # started with the daemon
        src = "".join(f"GPU_KERNEL k{k}\nGPU_PARAM a float[8]\nGPU_THREAD_CODE:\n" + "    RELU a -> a\n" * 40
                      + "GPU_END\n" for k in range(4))  # over compile_inline_bytes: a worker compiles it
        with Client(socket_path=str(tmp_path / "hvd.sock")) as c:
            assert [v.vm_id for v in c.call("ListVMs", pb.ListVMsRequest()).vms] == [7]
            assert len(c.call("Compile", pb.CompileRequest(vm_id=7, source=src)).kernels) == 4
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert time.monotonic() - t0 < 15
    assert "pxos-hvd stopped" in out
    assert not (tmp_path / "hvd.sock").exists() and not (tmp_path / "vm7.sock").exists()
    assert gone(workers)  # no orphan compile worker


@pytest.mark.parametrize("body,needle", [
    ('[[vm]]\nid = 1\nmemory = "8G"\nshare = 70\n[[vm]]\nid = 2\nmemory = "8G"\nshare = 40\n', "sum to 110"),
    ("[daemon]\nbackend = 'tpu'\n", "daemon.backend"),
    ("[daemon]\ngrpc_tcp = '127.0.0.1:0'\n", "only with mutual TLS"),
    ("[daemon]\nsocket_dir = '/run/pxos-test'\n[[vm]]\nid = 1\nmemory = 1\nshare = 1\nsocket = '/tmp/v.sock'\n",
     "outside socket_dir"),
    ("[advisor]\nmode = 'apply'\napi_key_env = 'PXOS_TEST_UNSET_ADVISOR_KEY'\n", "PXOS_TEST_UNSET_ADVISOR_KEY is not set"),
    ("[advisor]\nmode = 'sometimes'\n", "advisor.mode"),
])
def test_invalid_config_refuses_to_start_with_a_clear_message(tmp_path, body, needle):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(body)
    proc = subprocess.run([sys.executable, "-m", "hypervisor.daemon", "--config", str(cfg)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert needle in proc.stderr and "Traceback" not in proc.stderr


def test_print_default_config_round_trips(tmp_path):
    out = subprocess.run([sys.executable, "-m", "hypervisor.daemon", "--print-default-config"], cwd=REPO,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    (tmp_path / "d.toml").write_text(out)
    chk = subprocess.run([sys.executable, "-m", "hypervisor.daemon", "--check-config", "--config",
                          str(tmp_path / "d.toml")], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert chk.returncode == 0 and "ok (0 VMs, 0 models)" in chk.stdout


def test_vm_sockets_can_be_shared_with_qemus_group(tmp_path):
    import grp

    group = grp.getgrgid(os.getgid()).gr_name
    cfg = tmp_path / "pxos.toml"
    cfg.write_text(f"""
[daemon]
grpc_socket = "{tmp_path}/hvd.sock"
socket_dir = "{tmp_path}"
metrics_address = ""
backend = "numpy"
vm_socket_group = "{group}"
[[vm]]
id = 3
memory = "16Mi"
share = 10
socket = "{tmp_path}/vm3.sock"
""")
    proc, line = start(cfg)
    try:
        assert line == "ready\n", proc.communicate(timeout=10)[0]
        st = (tmp_path / "vm3.sock").stat()
        assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == os.getgid()
        assert stat.S_IMODE((tmp_path / "hvd.sock").stat().st_mode) == 0o600  # the control socket stays private
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)


def test_check_config_checks_the_advisor_key(tmp_path):
    cfg = tmp_path / "a.toml"
    cfg.write_text("[advisor]\nmode = 'suggest'\napi_key_file = '/nonexistent/pxos-advisor.key'\n")
    chk = subprocess.run([sys.executable, "-m", "hypervisor.daemon", "--check-config", "--config", str(cfg)],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert chk.returncode == 2 and "api_key_file" in chk.stderr and "Traceback" not in chk.stderr


def test_check_config_refuses_a_socket_in_a_missing_directory(tmp_path):
    """Issue 11, item 6: such a config passed --check-config, then the daemon refused it."""
    cfg = tmp_path / "s.toml"
    cfg.write_text(f"[daemon]\nsocket_dir = '{tmp_path}'\n[[vm]]\nid = 3\nmemory = '1G'\nshare = 5\n"
                   f"socket = '{tmp_path}/missing/vm3.sock'\n")
    chk = subprocess.run([sys.executable, "-m", "hypervisor.daemon", "--check-config", "--config", str(cfg)],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert chk.returncode == 2, chk.stdout
    assert f"vm[id=3].socket: directory {tmp_path}/missing does not exist" in chk.stderr
    (tmp_path / "missing").mkdir()
    ok = subprocess.run([sys.executable, "-m", "hypervisor.daemon", "--check-config", "--config", str(cfg)],
                        cwd=REPO, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr


def _vms(sock: Path) -> dict[int, pb.VMInfo]:
    with Client(socket_path=str(sock)) as c:
        return {v.vm_id: v for v in c.call("ListVMs", pb.ListVMsRequest()).vms}


def _wait_for(pred, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_sighup_reloads_the_config_and_never_kills(tmp_path):
    """Issue 11, item 1: SIGHUP used to kill the daemon silently. It re-reads the file: VMs
    added, changed and removed as the file says; an invalid file is logged and the running
    config kept; a VM added at run time is left alone."""
    head = f"""
[daemon]
grpc_socket = "{tmp_path}/hvd.sock"
socket_dir = "{tmp_path}"
metrics_address = ""
backend = "numpy"
"""
    vm = """
[[vm]]
id = {id}
memory = "{mem}"
share = {share}
"""
    cfg = tmp_path / "pxos.toml"
    cfg.write_text(head + vm.format(id=1, mem="64Mi", share=40) + vm.format(id=2, mem="64Mi", share=20))
    proc, line = start(cfg)
    sock = tmp_path / "hvd.sock"
    try:
        assert line == "ready\n", proc.communicate(timeout=10)[0]
        with Client(socket_path=str(sock)) as c:  # a VM of the operator's, not of the file
            c.call("RegisterVM", pb.RegisterVMRequest(vm_id=9, memory_bytes=1 << 20, share=5))
        cfg.write_text(head + vm.format(id=1, mem="32Mi", share=50) + vm.format(id=3, mem="16Mi", share=10))
        proc.send_signal(signal.SIGHUP)
        try:
            vms = _wait_for(lambda: (v := _vms(sock)) and 3 in v and 2 not in v and v)
        except AssertionError:
            proc.kill()
            raise AssertionError(proc.communicate(timeout=10)[0]) from None
        assert sorted(vms) == [1, 3, 9]
        assert (vms[1].memory_quota, vms[1].share) == (32 << 20, 50)
        cfg.write_text(head + "[[vm]]\nid = 0\n")  # invalid: kept running, config unchanged
        proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        assert proc.poll() is None and sorted(_vms(sock)) == [1, 3, 9]
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "SIGHUP: reloaded" in out and "VM 2: removed" in out and "VM 3: added" in out
    assert "is not valid, the running config is kept" in out


def _config(tmp_path: Path, extra: str = "") -> Path:
    cfg = tmp_path / "pxos.toml"
    cfg.write_text(f"""
[daemon]
grpc_socket = "{tmp_path}/hvd.sock"
socket_dir = "{tmp_path}"
metrics_address = ""
backend = "numpy"
{extra}
[[vm]]
id = 1
memory = "64Mi"
share = 40
socket = "vm1.sock"
""")
    return cfg


def test_a_killed_daemon_restarts_with_the_run_time_changes(tmp_path):
    """Issue 11, item 5: quota set and vm add survive SIGKILL and a restart (state_file)."""
    cfg = _config(tmp_path, f'state_file = "{tmp_path}/state/state.json"')
    sock = tmp_path / "hvd.sock"
    proc, line = start(cfg)
    try:
        assert line == "ready\n", proc.communicate(timeout=10)[0]
        with Client(socket_path=str(sock)) as c:
            c.call("SetQuota", pb.SetQuotaRequest(vm_id=1, memory_bytes=32 << 20, share=25))
            c.call("RegisterVM", pb.RegisterVMRequest(vm_id=5, memory_bytes=1 << 20, share=5, socket="vm5.sock"))
        workers = compile_workers(proc.pid)
        assert workers
        proc.kill()
        proc.communicate(timeout=10)
        assert gone(workers)  # a killed daemon's compile workers see their pipe end and exit
        proc, line = start(cfg)
        assert line == "ready\n", proc.communicate(timeout=10)[0]
        vms = _vms(sock)
        assert sorted(vms) == [1, 5] and (vms[1].memory_quota, vms[1].share) == (32 << 20, 25)
        assert (tmp_path / "vm5.sock").exists()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "state file: VM 1: kept as changed at run time" in out and "state file: VM 5: kept (added)" in out


def test_sigint_stops_cleanly_and_a_closed_terminal_never_kills(tmp_path):
    """Issue 11, item 1: SIGINT is a clean stop like SIGTERM; a daemon whose terminal went
    away (its output pipe closed, then SIGHUP, then writes that hit EPIPE) keeps serving."""
    cfg = _config(tmp_path)
    sock = tmp_path / "hvd.sock"
    proc, line = start(cfg, "--log-level", "debug")
    try:
        assert line == "ready\n"
        workers = compile_workers(proc.pid)
        assert workers
        proc.stdout.close()  # the terminal is gone: every later log line hits a broken pipe
        proc.send_signal(signal.SIGHUP)
        for _ in range(20):  # work that logs
            with Client(socket_path=str(sock)) as c:
                c.call("SetQuota", pb.SetQuotaRequest(vm_id=1, share=30))
        time.sleep(0.5)
        assert proc.poll() is None and sorted(_vms(sock)) == [1]
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert not sock.exists() and not (tmp_path / "vm1.sock").exists()
    assert gone(workers)  # workers ignore the terminal's SIGINT; the daemon ends them


def test_log_level_debug_shows_what_the_daemon_does(tmp_path):
    """Issue 11, item 7: --log-level debug used to add nothing."""
    cfg = _config(tmp_path)
    sock = tmp_path / "hvd.sock"
    proc, line = start(cfg, "--log-level", "debug")
    try:
        assert line == "ready\n"
        from tests.support.vhost_frontend import VhostUserFrontend
        from virtio_backend.gpu import guest as g

        with VhostUserFrontend(str(tmp_path / "vm1.sock")) as fe:
            fe.boot()
            fe.submit(0, out=[g.get_info()], in_=[g.response_size(0x7000)])
            fe.kick(0, force=True)
            fe.wait_used(0)
        assert sorted(_vms(sock)) == [1]
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "DEBUG" in out and "<- SET_MEM_TABLE" in out and "GET_INFO -> PXOS_S_OK" in out, out[-3000:]
    assert "device reset: 0 buffers" not in out
