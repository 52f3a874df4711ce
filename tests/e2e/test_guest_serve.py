"""Two real guests on a pxOS-made network (a namespace of pxOS's own, a bridge, a tap each,
virtio-net in the guests) serve OpenAI-compatible completions with the shared SmolLM2
through /dev/pxos0. The answers equal what each guest generated on its console first (the
non-networked path, `pxos-vm generate`'s); one guest killed, the other keeps serving; and
nothing is left in the host's links or namespaces."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from hypervisor.models import smollm2_path
from qemu.generate import GENERATE_QUOTA, guest_command, parse_results
from qemu.network import list_namespaces
from qemu.serve import ServeSession

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

PROMPTS = {1: "The capital of France is", 2: "<|im_start|>user\nName three colours.<|im_end|>\n<|im_start|>assistant\n"}
N = 8


def _host_links() -> set[str]:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        return {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}


def _stream_text(session: ServeSession, vm: int, body: dict) -> tuple[str, dict]:
    sg = session.guests[vm]
    with session.network.entered():
        conn = http.client.HTTPConnection(sg.link.address, sg.port, timeout=300)
        conn.connect()
    conn.request("POST", "/v1/completions", body=json.dumps({**body, "stream": True}).encode(),
                 headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    assert r.status == 200
    chunks = [json.loads(b[6:]) for b in r.read().decode().split("\n\n") if b.startswith("data: {")]
    conn.close()
    return "".join(c["choices"][0]["text"] for c in chunks), chunks[-1]


def test_two_networked_guests_serve_completions(guest_artefacts, hvd_factory, tmp_path):
    links_before = _host_links()
    hvd = hvd_factory({1: GENERATE_QUOTA, 2: GENERATE_QUOTA}, models={"smollm2": smollm2_path()}, pool="1Gi")
    # each guest first generates on its console, as `pxos-vm generate` does, then serves
    before = {v: guest_command([PROMPTS[v]], N, ignore_eos=True) for v in (1, 2)}
    session = ServeSession(hvd.sockets, tag="test", accel="auto", log_dir=tmp_path, before=before)
    with session:
        name = session.network.name
        assert name in list_namespaces()
        assert session.network.link_names() == ["lo", "pxbr0", "tap1", "tap2"]
        session.wait_ready()
        console = {v: parse_results(session.guests[v].guest.console.text()) for v in (1, 2)}
        assert all(len(console[v]) == 1 for v in (1, 2)), console

        whole = session.complete(1, {"prompt": PROMPTS[1], "max_tokens": N, "ignore_eos": True})
        assert whole["choices"][0]["text"] == console[1][0]["text"]
        assert whole["usage"]["completion_tokens"] == N == len(console[1][0]["tokens"])
        assert whole["usage"]["prompt_tokens"] == len(console[1][0]["prompt_tokens"])
        text, last = _stream_text(session, 2, {"prompt": PROMPTS[2], "max_tokens": N, "ignore_eos": True})
        assert text == console[2][0]["text"]
        assert last["usage"]["completion_tokens"] == N and last["choices"][0]["finish_reason"] == "length"

        session.kill(1)
        assert session.network.link_names() == ["lo", "pxbr0", "tap2"]
        again = session.complete(2, {"prompt": PROMPTS[1], "max_tokens": N, "ignore_eos": True})
        assert again["choices"][0]["text"] == console[1][0]["text"]  # same model, same greedy answer
        assert session.get(2, "/health")["served"] == 2
        stats = hvd.ctl("stats")
        assert all(vm["launches_failed"] == 0 for vm in stats["vms"])
    assert name not in list_namespaces()
    assert not [n for n in list_namespaces() if n.endswith(f"-{os.getpid()}")]  # nothing of ours left
    assert _host_links() == links_before


def _pids_in(netns: str) -> set[int]:
    inode = os.stat(f"/var/run/netns/{netns}").st_ino
    pids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}/ns/net").st_ino == inode:
                    pids.add(int(entry))
            except OSError:
                continue
    return pids


def test_a_killed_pxos_vm_serve_leaves_nothing_behind(guest_artefacts):
    links_before = _host_links()
    proc = subprocess.Popen([sys.executable, "-m", "qemu", "serve", "--vms", "1", "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()[-3000:]
        info = json.loads(line)
        netns = info["netns"]
        inside = _pids_in(netns)
        assert inside  # QEMU runs in the namespace
    finally:
        proc.send_signal(signal.SIGKILL)  # a crash: no clean-up of its own runs
        proc.wait(30)
        proc.stdout.close()
        proc.stderr.close()
    deadline = time.monotonic() + 60
    while (netns in list_namespaces() or any(os.path.exists(f"/proc/{p}") for p in inside)) \
            and time.monotonic() < deadline:
        time.sleep(0.2)
    assert netns not in list_namespaces()
    assert not [p for p in inside if os.path.exists(f"/proc/{p}")]  # QEMU went with its creator
    assert _host_links() == links_before
