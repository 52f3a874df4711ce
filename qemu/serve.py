"""`pxos-vm serve`: guests that answer OpenAI-compatible completions over a pxOS-made network.

Each VM's guest boots with a virtio-net link (qemu/network.py: a namespace of pxOS's own,
a bridge, a tap per guest), mounts the host's root read-only and runs
guest_driver/python/pxos_serve.py with the host's Python: the shared model through
/dev/pxos0, HTTP on the guest's address. Whoever sends requests runs in the namespace
(``ip netns exec NAME ...``, or ``GuestNetwork.popen`` / ``entered``).

    pxos-vm serve [--vms 2 | --hvd-socket PATH --vm 1 --vm 2] [--class 1=INTERACTIVE]
                  [--subnet 10.97.0.0/24] [--duration S] [--json]
"""

from __future__ import annotations

import http.client
import json
import shlex
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from . import artefacts as art
from .cmdline import choose_accel
from .errors import LauncherError, LaunchError
from .generate import DEFAULT_MODEL, GENERATE_MEM_MIB, GENERATE_QUOTA, GUEST_PY, default_model_path
from .guest import Guest
from .hvd import start_hvd
from .network import DEFAULT_SUBNET, GuestLink, GuestNetwork

SERVE_PORT = 8000
#: KV cache positions of a serving guest: prompt and completion of one request.
SERVE_CTX = 512
#: Boot, the host's Python over virtio-9p, the model opened and its tokenizer built, under TCG.
READY_TIMEOUT_S = 600.0
#: What the host reads of one answer of a guest (a guest is not trusted to bound it).
MAX_RESPONSE_BYTES = 16 << 20
MARK_SERVING = "PXOS-SERVING"  # pxos_serve.MARK_SERVING: printed once it listens
CLASSES = ("NONE", "REALTIME", "INTERACTIVE", "THROUGHPUT", "BATCH")


def serve_command(*, model: str = DEFAULT_MODEL, port: int = SERVE_PORT, ctx: int = SERVE_CTX,
                  wclass: str = "NONE", before: str | None = None) -> str:
    """The guest's command: pxos_serve with the host's Python in a chroot of the host's
    root (``before``: a command run first in the same chroot, e.g. a console generation)."""
    env = ["/usr/bin/env", "PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1", f"PYTHONPATH={GUEST_PY}"]
    serve = ["chroot", "/host", *env, sys.executable, "-m", "pxos_serve", "--model", model, "--port", str(port),
             "--ctx", str(ctx), "--class", wclass]
    return (f"{before}; " if before else "") + shlex.join(serve)


@dataclass
class ServingGuest:
    vm: int
    guest: Guest
    link: GuestLink
    port: int = SERVE_PORT

    @property
    def url(self) -> str:
        return f"http://{self.link.address}:{self.port}"


class ServeSession:
    """A network and one serving guest per VM socket; ``with`` removes all of it."""

    def __init__(self, sockets: dict[int, Path], *, classes: dict[int, str] | None = None,
                 subnet: str = DEFAULT_SUBNET, tag: str = "serve", accel: str = "auto",
                 model: str = DEFAULT_MODEL, ctx: int = SERVE_CTX, log_dir: Path | None = None,
                 before: dict[int, str] | None = None, echo: bool = False):
        self.sockets, self.classes = sockets, dict(classes or {})
        self.accel, self.model, self.ctx, self.log_dir = choose_accel(accel), model, ctx, log_dir
        self.before, self.echo = before or {}, echo
        self.network = GuestNetwork(subnet, tag)
        self.guests: dict[int, ServingGuest] = {}

    def start(self) -> ServeSession:
        self._artefacts = art.prepare(log=lambda s: print(f"pxos-vm: {s}", file=sys.stderr))
        self.network.create()
        try:
            for n, vm in enumerate(sorted(self.sockets), start=1):
                self._boot(vm, n)
        except BaseException:
            self.close()
            raise
        return self

    def _boot(self, vm: int, number: int) -> ServingGuest:
        link = self.network.add_guest(number)
        cmd = serve_command(model=self.model, ctx=self.ctx, wclass=self.classes.get(vm, "NONE"),
                            before=self.before.get(vm))
        g = Guest(self._artefacts, self.sockets[vm], cmd, mem_mib=GENERATE_MEM_MIB, accel=self.accel,
                  name=f"serve{vm}", host_share=Path("/"), network=self.network, link=link, echo=self.echo,
                  log_path=self.log_dir / f"serve{vm}.log" if self.log_dir else None)
        self.guests[vm] = sg = ServingGuest(vm, g, link)
        g.start()
        return sg

    def restart(self, vm: int, wclass: str, timeout: float = READY_TIMEOUT_S) -> None:
        """Boot VM ``vm``'s guest again, its server asking for ``wclass``; same address."""
        number = self.guests[vm].link.number
        self.kill(vm)
        self.classes[vm] = wclass
        sg = self._boot(vm, number)
        sg.guest.wait_for(rf"^{MARK_SERVING} ", timeout)

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Every guest's server listens and answers /health from inside the namespace."""
        deadline = time.monotonic() + timeout
        for sg in self.guests.values():
            sg.guest.wait_for(rf"^{MARK_SERVING} ", max(1.0, deadline - time.monotonic()))
        for sg in self.guests.values():
            health = self.get(sg.vm, "/health")
            if health.get("status") != "ok":
                raise LaunchError(f"guest {sg.vm}: /health answered {health}")

    def request(self, vm: int, method: str, path: str, body: dict | None = None,
                timeout: float = 300.0) -> tuple[int, bytes]:
        """One HTTP request to VM ``vm``'s server, from inside the namespace."""
        sg = self.guests[vm]
        with self.network.entered():
            conn = http.client.HTTPConnection(sg.link.address, sg.port, timeout=timeout)
            conn.connect()
        try:
            conn.request(method, path, body=json.dumps(body).encode() if body is not None else None,
                         headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            data = r.read(MAX_RESPONSE_BYTES + 1)
            if len(data) > MAX_RESPONSE_BYTES:
                raise LaunchError(f"guest {vm}: {method} {path} answered more than {MAX_RESPONSE_BYTES} bytes")
            return r.status, data
        finally:
            conn.close()

    def get(self, vm: int, path: str) -> dict:
        status, data = self.request(vm, "GET", path, timeout=60)
        if status != 200:
            raise LaunchError(f"guest {vm}: GET {path} answered {status}: {data[:200]!r}")
        return json.loads(data)

    def complete(self, vm: int, body: dict, timeout: float = 300.0) -> dict:
        status, data = self.request(vm, "POST", "/v1/completions", body, timeout)
        if status != 200:
            raise LaunchError(f"guest {vm}: /v1/completions answered {status}: {data[:300]!r}")
        return json.loads(data)

    def kill(self, vm: int) -> None:
        """Kill one guest (QEMU, SIGKILL) and take its tap off the bridge."""
        sg = self.guests.pop(vm)
        sg.guest.close()
        self.network.remove_guest(sg.link.number)

    def close(self) -> None:
        for sg in self.guests.values():
            sg.guest.close()
        self.guests.clear()
        self.network.close()

    def __enter__(self) -> ServeSession:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def parse_classes(specs: list[str]) -> dict[int, str]:
    out = {}
    for spec in specs:
        vm, sep, cls = spec.partition("=")
        if not sep or not vm.isdigit() or cls.upper() not in CLASSES:
            raise LauncherError(f"--class {spec!r}: want VM=CLASS with CLASS one of {', '.join(CLASSES)}")
        out[int(vm)] = cls.upper()
    return out


def run_serve(*, vms: int, hvd_socket: Path | None, vm_ids: list[int], classes: dict[int, str], subnet: str,
              accel: str, duration: float, as_json: bool, shares: list[float] | None = None) -> int:
    from .generate import _socket_of

    with ExitStack() as stack:
        if hvd_socket is not None:
            if not vm_ids:
                raise LauncherError("--hvd-socket needs --vm (repeatable: the VMs to serve from)")
            sockets = {v: _socket_of(hvd_socket, v) for v in vm_ids}
            grpc = hvd_socket
        else:
            if not 1 <= vms <= 8:
                raise LauncherError("--vms must be 1 to 8")
            ids = list(range(1, vms + 1))
            if shares is not None and len(shares) != vms:
                raise LauncherError(f"--shares: {len(shares)} values for {vms} VMs")
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pxos-serve-")))
            hvd = stack.enter_context(start_hvd(tmp, {v: GENERATE_QUOTA for v in ids},
                                                shares=dict(zip(ids, shares, strict=True)) if shares else None,
                                                models={DEFAULT_MODEL: default_model_path()}, pool="1Gi"))
            sockets, grpc = hvd.sockets, hvd.grpc
        session = stack.enter_context(ServeSession(sockets, classes=classes, subnet=subnet, accel=accel))
        if not as_json:
            print(f"pxos-vm: {len(sockets)} guests booting on network namespace {session.network.name}",
                  file=sys.stderr)
        session.wait_ready()
        info = {"netns": session.network.name, "grpc_socket": str(grpc),
                "vms": [{"vm": sg.vm, "url": sg.url, "class": classes.get(sg.vm, "NONE")}
                        for sg in session.guests.values()]}
        if as_json:
            print(json.dumps(info), flush=True)
        else:
            for v in info["vms"]:
                print(f"VM {v['vm']}: {v['url']}/v1/completions ({v['class']})")
            first = info["vms"][0]["url"]
            print(f"\ntry:  ip netns exec {info['netns']} curl -s {first}/v1/completions "
                  "-H 'Content-Type: application/json' -d '{\"prompt\": \"The capital of France is\", "
                  "\"max_tokens\": 16}'")
            print(f"load: ip netns exec {info['netns']} {sys.executable} -m bench.serve_load "
                  + " ".join(f"vm{v['vm']}={v['url']}" for v in info["vms"]) + " --duration 30")
            print(f"watch: pxosctl --socket {grpc} top\n(Ctrl-C stops the guests and removes the network)",
                  flush=True)
        try:
            deadline = time.monotonic() + duration if duration > 0 else float("inf")
            while time.monotonic() < deadline and all(sg.guest.proc.poll() is None
                                                      for sg in session.guests.values()):
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
    return 0
