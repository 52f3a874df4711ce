"""The guest's completions server (guest_driver/python/pxos_serve.py) over real HTTP, its
generations through the Hypervisor in-process (HostDevice, a tiny model): answers equal to
pxos_llm's own, streamed and whole; hostile requests refused with the server still up; a
client that goes away stops its generation. Inside real guests over pxOS-made links:
tests/e2e/test_guest_serve.py."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import pxos_llm
import pxos_serve
import pytest

from hypervisor import Hypervisor
from tests.support.host_device import HostDevice
from tests.support.tiny_gguf import write_tiny_llama

PROMPT = "the cat sat on the mat"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tiny = str(write_tiny_llama(tmp_path_factory.mktemp("m") / "tiny.gguf", n_layer=2))
    hv = Hypervisor(backend="numpy", device_pool_bytes=64 << 20).start()
    hv.load_model("tiny", tiny)
    hv.register_vm(1, 0, 50, memory_quota_bytes=16 << 20)
    hv.register_vm(2, 0, 50, memory_quota_bytes=16 << 20)
    server_runner = pxos_llm.LlamaRunner(HostDevice(hv, 1), "tiny", ctx=128)
    ref_runner = pxos_llm.LlamaRunner(HostDevice(hv, 2), "tiny", ctx=128)
    engine = pxos_serve.Engine(server_runner, "tiny")
    server = pxos_serve.make_server(engine, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], engine, ref_runner
    server.shutdown()
    server.server_close()
    hv.stop()


def _post(port: int, body, *, raw: bytes | None = None, headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    data = raw if raw is not None else json.dumps(body).encode()
    conn.request("POST", "/v1/completions", body=data,
                 headers={"Content-Type": "application/json", **(headers or {})})
    r = conn.getresponse()
    out = r.status, r.read()
    conn.close()
    return out


def _events(data: bytes) -> list:
    out = []
    for block in data.decode().split("\n\n"):
        if block.startswith("data: "):
            payload = block[len("data: "):]
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def test_completion_equals_pxos_llm(served):
    port, _, ref = served
    want = ref.generate(PROMPT, 10, stop_at_eog=False)
    status, body = _post(port, {"model": "tiny", "prompt": PROMPT, "max_tokens": 10, "ignore_eos": True,
                                "temperature": 0.7})
    assert status == 200, body
    obj = json.loads(body)
    assert obj["object"] == "text_completion" and obj["model"] == "tiny"
    [choice] = obj["choices"]
    assert choice["text"] == want.text and choice["finish_reason"] == "length"
    assert obj["usage"] == {"prompt_tokens": len(want.prompt_tokens), "completion_tokens": 10,
                            "total_tokens": len(want.prompt_tokens) + 10}


def test_stream_concatenates_to_the_same_text(served):
    port, _, ref = served
    want = ref.generate(PROMPT, 12, stop_at_eog=False)
    status, body = _post(port, {"prompt": [PROMPT], "max_tokens": 12, "stream": True, "ignore_eos": True})
    assert status == 200
    events = _events(body)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert "".join(c["choices"][0]["text"] for c in chunks) == want.text
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"]["completion_tokens"] == 12


def test_health_and_models(served):
    port, engine, _ = served
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/health")
    r = conn.getresponse()
    health = json.loads(r.read())
    assert r.status == 200 and health["status"] == "ok" and health["model"] == "tiny" and health["ctx"] == 128
    conn.request("GET", "/v1/models")
    r = conn.getresponse()
    assert json.loads(r.read())["data"][0]["id"] == "tiny"
    conn.close()


@pytest.mark.parametrize("body, status", [
    (b"not json", 400),
    (b"[1, 2]", 400),
    (b'{"max_tokens": 4}', 400),
    (b'{"prompt": ""}', 400),
    (b'{"prompt": ["a", "b"]}', 400),
    (b'{"prompt": "a", "max_tokens": 0}', 400),
    (b'{"prompt": "a", "max_tokens": true}', 400),
    (b'{"prompt": "a", "max_tokens": 100000}', 400),
    (b'{"prompt": "a", "stream": "yes"}', 400),
    (b'{"prompt": "a", "n": 3}', 400),
    (json.dumps({"prompt": "x " * 200, "max_tokens": 8}).encode(), 400),  # past the 128-position cache
])
def test_bad_requests_are_refused_and_the_server_stays_up(served, body, status):
    port, _, _ = served
    got, data = _post(port, None, raw=body)
    assert got == status
    assert json.loads(data)["error"]["type"] == "invalid_request_error"
    assert _post(port, {"prompt": "a", "max_tokens": 1})[0] == 200


def test_oversized_body_and_unknown_route(served):
    port, _, _ = served
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.putrequest("POST", "/v1/completions")
    conn.putheader("Content-Length", str(pxos_serve.MAX_BODY_BYTES + 1))
    conn.endheaders()
    assert conn.getresponse().status == 413
    conn.close()
    assert _post(port, None, raw=b"{}")[0] == 400
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/v1/chat")
    assert conn.getresponse().status == 404
    conn.close()


def test_a_client_that_goes_away_stops_its_generation(served):
    port, engine, _ = served
    results = []
    real = engine.complete
    closed = threading.Event()

    def recording(req, on_text=None, should_stop=None):
        def held():  # the generation waits for the client to be gone: no race with a fast finish
            closed.wait(60)
            return should_stop()

        res = real(req, on_text=on_text, should_stop=held)
        results.append(res)
        return res

    engine.complete = recording
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        body = json.dumps({"prompt": PROMPT, "max_tokens": 100, "stream": True, "ignore_eos": True}).encode()
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        assert s.recv(64).startswith(b"HTTP/1.1 200")  # generating
        s.close()
        closed.set()
        deadline = time.monotonic() + 60
        while not results and time.monotonic() < deadline:
            time.sleep(0.05)
        [res] = results
        assert res.stopped == "cancelled" and len(res.tokens) < 100
    finally:
        engine.complete = real
    assert _post(port, {"prompt": "a", "max_tokens": 2})[0] == 200


def test_should_stop_ends_a_generation(served):
    _, _, ref = served
    calls = []
    res = ref.generate(PROMPT, 20, stop_at_eog=False, should_stop=lambda: len(calls.append(1) or calls) >= 3)
    assert res.stopped == "cancelled" and len(res.tokens) == 3


def test_the_load_generator_against_the_server(served):
    from bench.serve_load import Target, run_load

    port, _, _ = served
    closed = Target("closed", "127.0.0.1", port, concurrency=2, max_tokens=4, prompt=PROMPT)
    opened = Target("open", "127.0.0.1", port, rate=5.0, max_tokens=2, prompt=PROMPT)
    result = run_load([closed, opened], duration=2.0, warmup=0.5)
    for name in ("closed", "open"):
        vm = result["vms"][name]
        assert vm["errors"] == 0, vm["error_examples"]
        assert vm["requests"] > 0 and vm["tokens_per_s"] > 0
        assert 0 < vm["ttft_p50_s"] <= vm["ttft_p99_s"] <= vm["e2e_p99_s"]
    assert abs(sum(v["fraction_of_tokens"] for v in result["vms"].values()) - 1) < 1e-3
    bad = Target("bad", "127.0.0.1", port, concurrency=1, max_tokens=100000)  # the server refuses it
    assert run_load([bad], duration=0.5)["vms"]["bad"]["errors"] > 0


def test_the_server_stops_within_a_second_once_its_vm_is_removed(monkeypatch):
    """Issue 11, item 3: a removed VM (VMGone) ends pxos_serve instead of a 503 for ever."""
    import errno

    import pxos_guest as px

    class Device:
        calls = 0

        def stats(self):
            Device.calls += 1
            if Device.calls >= 2:
                res = px.Result(status=px.STATUS_NAMES.index("VM_GONE"), message=b"VM 2 was removed")
                raise px.device_error("stats", errno.ENODEV, res)
            return {}

    class Server:
        stopped = threading.Event()

        def shutdown(self):
            self.stopped.set()

    monkeypatch.setattr(pxos_serve, "WATCH_PERIOD_S", 0.05)
    gone: list[str] = []
    server = Server()
    t0 = time.monotonic()
    threading.Thread(target=pxos_serve._watch_device, args=(Device(), server, gone), daemon=True).start()
    assert server.stopped.wait(5)
    assert time.monotonic() - t0 < 3.0  # two watch periods of 0.05 s, with room for a loaded machine
    assert "PXOS_S_VM_GONE: VM 2 was removed" in gone[0]
