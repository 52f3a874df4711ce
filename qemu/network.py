"""Guest networking for `pxos-vm --net`: a network namespace of pxOS's own, made with
pyroute2, holding a bridge (the host side's address, the subnet's first) and one tap per
guest (guest n gets the subnet's address n + 1). Nothing is created in the host's own
namespace, so a test or a demo never touches the host's networking.

QEMU opens its tap by name, and a tap is found by name only in the namespace of the
process that opens /dev/net/tun: guests are started inside the namespace (``preexec``),
and so is whoever talks to them (``popen`` for a process, ``entered`` for a thread).

Clean-up: ``close`` removes the namespace, and with it the bridge and the taps (a
namespace's virtual links die with it; nothing is moved back to the host). A crash is
covered twice: a guardian process (``python -m qemu.network guard NAME``, its own session)
reads a pipe whose write end only the creator holds, and removes the namespace when it
reads EOF, however the creator died; and each new network first removes namespaces whose
creator (the pid in the name) is gone.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import LauncherError

NETNS_DIR = Path("/var/run/netns")
#: Namespace names: pxos-<tag>-<creator pid>; the pid tells a stale one (creator gone).
NETNS_PREFIX = "pxos-"
_NETNS_NAME = re.compile(r"^pxos-([A-Za-z0-9]{1,16})-(\d+)$")
DEFAULT_SUBNET = "10.97.0.0/24"
BRIDGE = "pxbr0"
#: Guests on one network: taps are named tap<n>, addresses the subnet's n + 1.
MAX_GUESTS = 64
#: Subnets from /16 (a configuration typo should not claim a /8) to /29 (the bridge and
#: at least one guest, with network and broadcast addresses apart).
MIN_PREFIX, MAX_PREFIX = 16, 29
_CLONE_NEWNET = 0x40000000


class NetworkError(LauncherError):
    """The guests' network could not be made, joined or removed."""


def parse_subnet(text: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.IPv4Network(text, strict=True)
    except ValueError as e:
        raise NetworkError(f"--subnet {text!r}: {e}") from e
    if not MIN_PREFIX <= net.prefixlen <= MAX_PREFIX:
        raise NetworkError(f"--subnet {text!r}: prefix must be /{MIN_PREFIX} to /{MAX_PREFIX}")
    return net


def guest_mac(n: int) -> str:
    """A locally administered MAC of QEMU's prefix, one per guest number."""
    return f"52:54:00:97:{(n >> 8) & 0xff:02x}:{n & 0xff:02x}"


@dataclass(frozen=True)
class GuestLink:
    number: int
    tap: str
    mac: str
    address: str     # the guest's IPv4 address
    prefixlen: int

    @property
    def cidr(self) -> str:
        return f"{self.address}/{self.prefixlen}"


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc().setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def list_namespaces() -> list[str]:
    try:
        return sorted(p.name for p in NETNS_DIR.iterdir())
    except FileNotFoundError:
        return []


def remove_namespace(name: str) -> bool:
    """Remove a named namespace; False if it was not there."""
    from pyroute2 import netns

    if name not in list_namespaces():
        return False
    try:
        netns.remove(name)
    except FileNotFoundError:
        return False
    return True


def sweep_stale() -> list[str]:
    """Remove pxOS namespaces whose creator is gone (a crash the guardian missed)."""
    removed = []
    for name in list_namespaces():
        m = _NETNS_NAME.match(name)
        if m and not _pid_alive(int(m.group(2))) and remove_namespace(name):
            removed.append(name)
    return removed


class GuestNetwork:
    """``with GuestNetwork(tag="demo") as net: link = net.add_guest(1)``."""

    def __init__(self, subnet: str = DEFAULT_SUBNET, tag: str = "vm"):
        if not re.fullmatch(r"[A-Za-z0-9]{1,16}", tag):
            raise NetworkError(f"network tag {tag!r}: 1 to 16 letters or digits")
        self.subnet = parse_subnet(subnet)
        hosts = list(self.subnet.hosts())
        self.host_address = str(hosts[0])
        self._addresses = hosts[1:]
        self.name = f"{NETNS_PREFIX}{tag}-{os.getpid()}"
        self.links: dict[int, GuestLink] = {}
        self._guardian: subprocess.Popen | None = None
        self._lock = threading.Lock()

    # ---- lifecycle ----
    def create(self) -> GuestNetwork:
        from pyroute2 import NetNS, netns

        if os.geteuid() != 0:
            raise NetworkError("guest networking needs root (network namespaces, bridge, taps)")
        sweep_stale()
        if self.name in list_namespaces():
            raise NetworkError(f"network namespace {self.name} exists already (one network per process and tag)")
        try:
            netns.create(self.name)
        except OSError as e:
            raise NetworkError(f"create network namespace {self.name}: {e}") from e
        try:
            self._guardian = subprocess.Popen([sys.executable, "-m", "qemu.network", "guard", self.name],
                                              stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                              start_new_session=True, cwd=Path(__file__).resolve().parent.parent)
            with NetNS(self.name) as ns:
                ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
                ns.link("add", ifname=BRIDGE, kind="bridge")
                br = ns.link_lookup(ifname=BRIDGE)[0]
                ns.addr("add", index=br, address=self.host_address, prefixlen=self.subnet.prefixlen)
                ns.link("set", index=br, state="up")
        except Exception as e:
            self.close()
            raise NetworkError(f"set up the bridge in {self.name}: {e}") from e
        return self

    def add_guest(self, number: int) -> GuestLink:
        """The tap of guest ``number`` (1..), on the bridge, up; its address and MAC."""
        from pyroute2 import NetNS

        if not 1 <= number <= min(MAX_GUESTS, len(self._addresses)):
            raise NetworkError(f"guest {number}: this network has room for guests 1 to "
                               f"{min(MAX_GUESTS, len(self._addresses))} ({self.subnet})")
        with self._lock:
            if number in self.links:
                raise NetworkError(f"guest {number} is on the network already")
            link = GuestLink(number, f"tap{number}", guest_mac(number), str(self._addresses[number - 1]),
                             self.subnet.prefixlen)
            try:
                with NetNS(self.name) as ns:
                    ns.link("add", ifname=link.tap, kind="tuntap", mode="tap")
                    idx = ns.link_lookup(ifname=link.tap)[0]
                    ns.link("set", index=idx, master=ns.link_lookup(ifname=BRIDGE)[0], state="up")
            except Exception as e:
                raise NetworkError(f"add {link.tap} in {self.name}: {e}") from e
            self.links[number] = link
            return link

    def remove_guest(self, number: int) -> None:
        from pyroute2 import NetNS

        with self._lock:
            link = self.links.pop(number, None)
            if link is None:
                return
            try:
                with NetNS(self.name) as ns:
                    for idx in ns.link_lookup(ifname=link.tap):
                        ns.link("del", index=idx)
            except Exception as e:
                raise NetworkError(f"remove {link.tap} from {self.name}: {e}") from e

    def link_names(self) -> list[str]:
        from pyroute2 import NetNS

        with NetNS(self.name) as ns:
            return sorted(link.get_attr("IFLA_IFNAME") for link in ns.get_links())

    def close(self) -> None:
        """Remove the namespace (its bridge and taps go with it); idempotent."""
        remove_namespace(self.name)
        self.links.clear()
        if self._guardian is not None:
            if self._guardian.stdin:
                self._guardian.stdin.close()
            try:
                self._guardian.wait(10)
            except subprocess.TimeoutExpired:
                self._guardian.kill()
            self._guardian = None

    def __enter__(self) -> GuestNetwork:
        return self.create()

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- joining ----
    def preexec(self):
        """A preexec_fn step that moves the child into the namespace (fd opened here)."""
        fd = os.open(NETNS_DIR / self.name, os.O_RDONLY | os.O_CLOEXEC)

        def enter() -> None:
            _setns(fd)
        return fd, enter

    def popen(self, argv: list[str], **kw) -> subprocess.Popen:
        """A process in the namespace (the load generator, a shell, curl)."""
        fd, enter = self.preexec()
        try:
            return subprocess.Popen(argv, preexec_fn=enter, **kw)
        finally:
            os.close(fd)

    @contextmanager
    def entered(self) -> Iterator[None]:
        """The calling thread in the namespace for the block (sockets made in it stay there)."""
        own = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        target = os.open(NETNS_DIR / self.name, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
            try:
                yield
            finally:
                _setns(own)
        finally:
            os.close(target)
            os.close(own)


def _guard(name: str) -> int:
    """Wait for EOF on stdin (the creator closed it or died), then remove the namespace."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C to the terminal is the creator's
    while sys.stdin.buffer.read(4096):
        pass
    remove_namespace(name)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 2 and args[0] == "guard" and _NETNS_NAME.match(args[1]):
        return _guard(args[1])
    if args == ["sweep"]:
        for name in sweep_stale():
            print(f"removed {name}")
        return 0
    print("usage: python -m qemu.network guard NAME | sweep", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
