"""pxos-hvd as a child process, for the e2e tests, the guest benchmark and demos: a TOML
config with one VM per vhost-user socket, started with `python -m hypervisor.daemon` (the
daemon of this checkout), ready once every socket listens; `pxosctl --json` and /metrics
to look at it; SIGTERM to stop it. Nothing of the daemon is imported here."""

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

from .errors import LaunchError
from .guest import die_with_parent

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 60.0


@dataclass
class HvdProcess:
    proc: subprocess.Popen
    workdir: Path
    sockets: dict[int, Path]
    grpc: Path
    log: Path
    metrics_url: str = ""
    names: dict[int, str] = field(default_factory=dict)

    def ctl(self, *args: str) -> dict:
        """`pxosctl --json ARGS` against this daemon, parsed."""
        proc = subprocess.run([sys.executable, "-m", "hypervisor.ctl", "--socket", str(self.grpc), "--json", *args],
                              capture_output=True, text=True, cwd=REPO, timeout=60)
        if proc.returncode != 0:
            raise LaunchError(f"pxosctl {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
        return json.loads(proc.stdout)

    def vms(self) -> dict[int, dict]:
        return {v["vm_id"]: v for v in self.ctl("vm", "list")["vms"]}

    def metrics(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=10) as r:
            return r.read().decode()

    def wait_usage(self, vm_id: int, pred, timeout: float = 20.0) -> dict:
        """The VM's `vm list` entry once pred(memory_used) holds (or at the timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            vm = self.vms()[vm_id]
            if pred(vm["memory_used"]) or time.monotonic() > deadline:
                return vm
            time.sleep(0.2)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, grace: float = 20.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode

    def __enter__(self) -> HvdProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def config_toml(workdir: Path, vms: dict[int, int], backend: str = "numpy",
                shares: dict[int, float] | None = None, models: dict[str, str] | None = None,
                pool: str = "512Mi", host_budget: str | int = 0, devices: int | None = None) -> str:
    text = textwrap.dedent(f"""\
        [daemon]
        grpc_socket = "{workdir / 'hvd.sock'}"
        metrics_address = "127.0.0.1:0"
        backend = "{backend}"
        log_level = "info"
        socket_dir = "{workdir}"
        {f"devices = {devices}" if devices else ""}

        [memory]
        device_pool = "{pool}"
        host_budget = "{host_budget}"
        """)
    for name, path in (models or {}).items():
        text += f'\n[[model]]\nname = "{name}"\npath = "{path}"\n'
    for vm_id, quota in vms.items():
        text += textwrap.dedent(f"""
            [[vm]]
            id = {vm_id}
            name = "guest{vm_id}"
            memory = {quota}
            share = {(shares or {}).get(vm_id, 100 // max(len(vms), 1))}
            socket = "{workdir / f'vm{vm_id}.sock'}"
            """)
    return text


def start_hvd(workdir: Path, vms: dict[int, int], backend: str = "numpy",
              shares: dict[int, float] | None = None, models: dict[str, str] | None = None,
              pool: str = "512Mi", host_budget: str | int = 0, devices: int | None = None) -> HvdProcess:
    """pxos-hvd with one VM per {vm_id: memory quota in bytes} (equal compute shares unless
    given) and the shared models {name: GGUF path}, up and listening; ``devices``: that many
    devices ([daemon] devices), else one."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "hvd.toml").write_text(config_toml(workdir, vms, backend, shares, models, pool, host_budget,
                                                  devices))
    log = workdir / "hvd.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "hypervisor.daemon", "--config", str(workdir / "hvd.toml")],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO,
                                start_new_session=True, preexec_fn=lambda: die_with_parent(signal.SIGTERM))
    hvd = HvdProcess(proc, workdir, {v: workdir / f"vm{v}.sock" for v in vms}, workdir / "hvd.sock", log,
                     names={v: f"guest{v}" for v in vms})
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        text = hvd.log_text()
        if proc.poll() is not None:
            raise LaunchError(f"pxos-hvd exited {proc.returncode}:\n{text[-3000:]}")
        m = re.search(r"metrics on (http://\S+/metrics)", text)
        if m and "pxos-hvd up" in text and hvd.grpc.exists() and all(s.exists() for s in hvd.sockets.values()):
            hvd.metrics_url = m.group(1)
            return hvd
        time.sleep(0.1)
    hvd.stop()
    raise LaunchError(f"pxos-hvd not up in {START_TIMEOUT_S:.0f} s:\n{hvd.log_text()[-3000:]}")
