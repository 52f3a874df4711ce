"""Fixtures for tests that boot real guests: the guest artefacts (fetched with apt-get
download and built on first use, then cached for the run and across runs in
$PXOS_CACHE or ~/.cache/pxos/guest) and a real pxos-hvd with VMs on vhost-user sockets."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAEMON_START_S = 60.0


@pytest.fixture(scope="session")
def guest_artefacts():
    """Kernel, initramfs, module and tool; prepared once per run (fetched if the cache is empty)."""
    from qemu import artefacts
    from qemu.errors import GuestImageError

    try:
        return artefacts.prepare(log=lambda s: print(f"[artefacts] {s}", file=sys.stderr))
    except GuestImageError as e:
        if os.environ.get("PXOS_REQUIRE_QEMU") == "1":
            raise
        pytest.skip(f"guest artefacts unavailable: {e}")


@dataclass
class Hvd:
    """A running pxos-hvd: its VMs' sockets, gRPC socket, metrics URL and log."""

    proc: subprocess.Popen
    workdir: Path
    sockets: dict[int, Path]
    grpc: Path
    log: Path
    metrics_url: str = ""
    names: dict[int, str] = field(default_factory=dict)

    def ctl(self, *args: str) -> dict:
        """`pxosctl --json ...` against this daemon."""
        proc = subprocess.run([sys.executable, "-m", "hypervisor.ctl", "--socket", str(self.grpc), "--json",
                               *args], capture_output=True, text=True, cwd=REPO, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return json.loads(proc.stdout)

    def vms(self) -> dict[int, dict]:
        return {v["vm_id"]: v for v in self.ctl("vm", "list")["vms"]}

    def metrics(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=10) as r:
            return r.read().decode()

    def wait_usage(self, vm_id: int, pred, timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            vm = self.vms()[vm_id]
            if pred(vm["memory_used"]) or time.monotonic() > deadline:
                return vm
            time.sleep(0.2)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_hvd(workdir: Path, vms: dict[int, int]) -> Hvd:
    """pxos-hvd (NumPy backend) with one VM per {vm_id: memory quota bytes}."""
    workdir.mkdir(parents=True, exist_ok=True)
    sockets = {vm_id: workdir / f"vm{vm_id}.sock" for vm_id in vms}
    grpc = workdir / "hvd.sock"
    config = textwrap.dedent(f"""\
        [daemon]
        grpc_socket = "{grpc}"
        metrics_address = "127.0.0.1:0"
        backend = "numpy"
        log_level = "info"
        socket_dir = "{workdir}"

        [memory]
        device_pool = "512Mi"
        """)
    for vm_id, quota in vms.items():
        config += textwrap.dedent(f"""
            [[vm]]
            id = {vm_id}
            name = "guest{vm_id}"
            memory = {quota}
            share = {100 // len(vms)}
            socket = "{sockets[vm_id]}"
            """)
    (workdir / "hvd.toml").write_text(config)
    log = workdir / "hvd.log"
    # `python -m`, from the repository: the daemon of this checkout, whatever is installed.
    proc = subprocess.Popen([sys.executable, "-m", "hypervisor.daemon", "--config", str(workdir / "hvd.toml")],
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, cwd=REPO,
                            start_new_session=True)
    hvd = Hvd(proc, workdir, sockets, grpc, log, names={v: f"guest{v}" for v in vms})
    deadline = time.monotonic() + DAEMON_START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"pxos-hvd exited {proc.returncode}:\n{hvd.log_text()[-3000:]}")
        m = re.search(r"metrics on (http://\S+/metrics)", hvd.log_text())
        if m and grpc.exists() and all(s.exists() for s in sockets.values()) and "pxos-hvd up" in hvd.log_text():
            hvd.metrics_url = m.group(1)
            return hvd
        time.sleep(0.1)
    stop_hvd(hvd)
    raise RuntimeError(f"pxos-hvd not up in {DAEMON_START_S} s:\n{hvd.log_text()[-3000:]}")


def stop_hvd(hvd: Hvd) -> int | None:
    if hvd.proc.poll() is None:
        hvd.proc.send_signal(signal.SIGTERM)
        try:
            hvd.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(hvd.proc.pid, signal.SIGKILL)
            hvd.proc.wait(10)
    return hvd.proc.returncode


@pytest.fixture
def hvd_factory(tmp_path):
    started: list[Hvd] = []

    def make(vms: dict[int, int]) -> Hvd:
        h = start_hvd(tmp_path / f"hvd{len(started)}", vms)
        started.append(h)
        return h

    yield make
    for h in started:
        stop_hvd(h)
