"""One running guest: QEMU started from a VmSpec, its console read on a thread into a
Console (and a log file), waits on /init's markers, and a clean stop (or a kill)."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from . import initramfs
from .artefacts import GuestArtefacts
from .cmdline import VmSpec, qemu_argv
from .console import Console
from .errors import LaunchError
from .network import GuestLink, GuestNetwork

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """preexec_fn for children: `sig` when the thread that started them dies, however it
    dies (a killed test run must not leave guests or daemons behind)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)


@dataclass(frozen=True)
class GuestResult:
    exit_status: int | None       # the guest command's, from the console; None if it never ended
    qemu_returncode: int | None
    console: str
    boot_s: float | None          # QEMU start → /init ready to run the command
    run_s: float | None           # ready → command finished
    total_s: float


class Guest:
    """A QEMU process running one pxOS guest; use as a context manager. QEMU is killed when
    the thread that started it ends (PR_SET_PDEATHSIG): start guests from a thread that
    outlives them."""

    def __init__(self, artefacts: GuestArtefacts, socket: Path | None, command: str | None, *,
                 mem_mib: int = 256, accel: str = "tcg", files: dict[str, bytes] | None = None,
                 name: str = "pxos-guest", log_path: Path | None = None, echo: bool = False,
                 workdir: Path | None = None, host_share: Path | None = None,
                 network: GuestNetwork | None = None, link: GuestLink | None = None, driver: str = "module"):
        if (network is None) != (link is None):
            raise LaunchError("a networked guest needs both its network and its link")
        self._tmp = tempfile.TemporaryDirectory(prefix="pxos-vm-", dir=workdir)
        initrd = initramfs.write_run_initrd(artefacts.initramfs, Path(self._tmp.name) / "initrd.gz",
                                            command, files, hostfs=host_share is not None,
                                            net=link.cidr if link else None, driver=driver)
        self.network, self.link = network, link
        self.spec = VmSpec(kernel=artefacts.vmlinux, initrd=initrd, socket=socket, mem_mib=mem_mib,
                           accel=accel, name=name, host_share=host_share, tap=link.tap if link else None,
                           mac=link.mac if link else None, driver=driver)
        self.argv = qemu_argv(self.spec)
        self.console = Console()
        self.log_path = log_path
        self.echo = echo
        self.proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self.t_start = 0.0

    def start(self) -> Guest:
        netns_fd, enter_netns = self.network.preexec() if self.network else (-1, None)

        def preexec() -> None:
            die_with_parent()
            if enter_netns is not None:
                enter_netns()  # QEMU opens its tap by name, in the namespace holding it
        try:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=preexec)
        except (OSError, subprocess.SubprocessError) as e:
            raise LaunchError(f"start QEMU ({self.argv[0]}): {e}") from e
        finally:
            if netns_fd >= 0:
                os.close(netns_fd)
        self.t_start = time.monotonic()
        self._reader = threading.Thread(target=self._read, name=f"console-{self.spec.name}", daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        log = open(self.log_path, "ab") if self.log_path else None
        try:
            while chunk := os.read(self.proc.stdout.fileno(), 65536):
                self.console.feed(chunk)
                if log:
                    log.write(chunk)
                    log.flush()
                if self.echo:
                    os.write(1, chunk)
        finally:
            if log:
                log.close()
            self.console.close()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def wait_for(self, pattern: str, timeout: float) -> str:
        found = self.console.wait_for(pattern, timeout)
        if found is None:
            raise LaunchError(f"guest {self.spec.name}: no console line matching {pattern!r} within "
                              f"{timeout:.0f} s; last lines:\n" + "\n".join(self.console.lines[-15:]))
        return self.console.lines[found[0]]

    def wait(self, timeout: float) -> GuestResult:
        """Wait for QEMU to exit (the guest powers off after its command)."""
        assert self.proc is not None
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        if self._reader:
            self._reader.join(5)
        return self.result()

    def result(self) -> GuestResult:
        c = self.console
        ready = c.find(rf"^{initramfs.MARK_READY}")
        ended = c.find(rf"^{initramfs.MARK_EXIT} ")
        t_ready = c.stamps[ready[0]] if ready else None
        t_end = c.stamps[ended[0]] if ended else None
        return GuestResult(
            exit_status=c.exit_status(),
            qemu_returncode=self.proc.returncode if self.proc else None,
            console=c.text(),
            boot_s=(t_ready - self.t_start) if t_ready else None,
            run_s=(t_end - t_ready) if t_ready and t_end else None,
            total_s=time.monotonic() - self.t_start,
        )

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass

    def close(self) -> None:
        self.kill()
        if self._reader:
            self._reader.join(5)
        if self.proc and self.proc.stdout:
            self.proc.stdout.close()
        self._tmp.cleanup()

    def __enter__(self) -> Guest:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
