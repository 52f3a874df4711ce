"""qemu/network.py: the guests' network in a namespace of pxOS's own (pyroute2), real links
and namespaces (the suite runs as root in CI), removed on close and after a crash of its
creator; nothing made in the host's own namespace."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from qemu.cmdline import VmSpec, qemu_argv
from qemu.network import GuestNetwork, NetworkError, guest_mac, list_namespaces, parse_subnet, sweep_stale

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root (CI runs as root)")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def _host_links() -> set[str]:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        return {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}


def _gone(name: str, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while name in list_namespaces():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.mark.parametrize("text", ["10.97.0.0/8", "10.97.0.0/30", "10.97.0.1/24", "fe80::/64", "nonsense"])
def test_subnets_out_of_bounds_are_refused(text):
    with pytest.raises(NetworkError):
        parse_subnet(text)


def test_macs_and_the_qemu_netdev():
    assert guest_mac(1) == "52:54:00:97:00:01" and guest_mac(300) == "52:54:00:97:01:2c"
    argv = qemu_argv(VmSpec(kernel="k", initrd="i", socket=None, tap="tap1", mac=guest_mac(1)))
    assert "tap,id=net0,ifname=tap1,script=no,downscript=no" in argv
    assert "virtio-net-pci,netdev=net0,romfile=,mac=52:54:00:97:00:01" in argv
    assert "-netdev" not in qemu_argv(VmSpec(kernel="k", initrd="i", socket=None))


def test_bad_tag_and_guest_numbers():
    with pytest.raises(NetworkError):
        GuestNetwork(tag="no spaces")
    net = GuestNetwork("10.97.0.0/29", tag="t")  # .1 the bridge, .2 to .6 guests 1 to 5
    with pytest.raises(NetworkError):
        net.add_guest(6)
    with pytest.raises(NetworkError):
        net.add_guest(0)


@needs_root
def test_bridge_and_taps_live_in_the_namespace_and_go_with_it():
    before = _host_links()
    with GuestNetwork("10.98.0.0/24", tag="unit") as net:
        a, b = net.add_guest(1), net.add_guest(2)
        assert (a.address, b.address, net.host_address) == ("10.98.0.2", "10.98.0.3", "10.98.0.1")
        assert net.link_names() == ["lo", "pxbr0", "tap1", "tap2"]
        assert _host_links() == before  # nothing in the host's namespace
        with pytest.raises(NetworkError):
            net.add_guest(1)
        code = "from pyroute2 import IPRoute; print([a.get_attr('IFA_ADDRESS') for a in IPRoute().get_addr()])"
        out = net.popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True).communicate(timeout=60)[0]
        assert "10.98.0.1" in out
        with net.entered():  # this thread sees the namespace's links, then its own again
            assert "pxbr0" in open("/proc/thread-self/net/dev").read()
        assert "pxbr0" not in open("/proc/thread-self/net/dev").read()
        net.remove_guest(2)
        assert net.link_names() == ["lo", "pxbr0", "tap1"]
        name = net.name
    assert name not in list_namespaces()
    assert _host_links() == before


@needs_root
def test_a_crashed_creator_leaves_nothing_behind():
    before = _host_links()
    code = ("import time; from qemu.network import GuestNetwork\n"
            "n = GuestNetwork(tag='crash').create(); n.add_guest(1); n.add_guest(2)\n"
            "print(n.name, flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        name = proc.stdout.readline().strip()
        assert name in list_namespaces()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        proc.stdout.close()
    assert _gone(name), f"{name} still there after its creator was killed"
    assert _host_links() == before


@needs_root
def test_a_stale_namespace_is_swept():
    from pyroute2 import netns

    dead = subprocess.Popen(["true"])
    dead.wait()
    name = f"pxos-stale-{dead.pid}"  # a creator pid that no longer runs
    netns.create(name)
    try:
        assert name in sweep_stale()
        assert name not in list_namespaces()
    finally:
        if name in list_namespaces():
            netns.remove(name)
