"""The scheduling advisor end to end against a real local LLM: llama.cpp's OpenAI-compatible
server (llama-cpp-python[server], installed by scripts/setup.sh) serving SmolLM2-135M-Instruct
on 127.0.0.1, a real daemon with its gRPC socket and /metrics, pxosctl in process.

The model's judgement is weak (135M parameters); what is checked is the path: a
schema-constrained answer comes back, is validated, shows up in `pxosctl advice`, is
applied through set_quota (apply mode, or `advice accept` in suggest mode) with an event
carrying its rationale, and is counted in the metrics. Not optional: a missing server fails.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import urllib.request

import numpy as np
import pytest

from hypervisor import Hypervisor
from hypervisor.config import DaemonConfig
from hypervisor.ctl import EXIT_OK, main
from tests.support.llama_server import LlamaServer
from tests.support.llm_endpoint import wait_until

pytestmark = pytest.mark.slow

MATMUL = """
GPU_KERNEL mm
GPU_PARAM a float[M, K]
GPU_PARAM b float[K, N]
GPU_PARAM c float[M, N]
GPU_THREAD_CODE:
    PARALLEL_MATMUL a b -> c
GPU_END
"""


@pytest.fixture(scope="module")
def server():
    with LlamaServer() as s:
        yield s


def _daemon(url: str, mode: str):
    from hypervisor.daemon import Daemon

    d = tempfile.mkdtemp(prefix="pxos-", dir="/tmp")
    cfg = DaemonConfig.model_validate({
        "daemon": {"grpc_socket": os.path.join(d, "hvd.sock"), "metrics_address": "127.0.0.1:0",
                   "backend": "numpy", "socket_dir": d},
        # one request at a time on 2 cores: short prompts, bounded answers
        "advisor": {"mode": mode, "endpoint": url, "model": "smollm2", "interval_seconds": 3600,
                    "timeout_seconds": 120, "max_tokens": 256, "dwell_seconds": 0, "cooldown_seconds": 0},
        "vm": [{"id": 1, "name": "train", "memory": "64M", "share": 30, "share_min": 10, "share_max": 60,
                "cap": 80, "cap_min": 50, "cap_max": 90,
                "description": "nightly training job, large matmuls, nobody waits on it"},
               {"id": 2, "name": "chat", "memory": "64M", "share": 30, "share_min": 10, "share_max": 60,
                "description": "chat assistant, users wait for each answer"}],
    })
    dm = Daemon(cfg, hypervisor=Hypervisor(backend="numpy", device_pool_bytes=256 << 20))
    dm.sockdir = d
    return dm


def _work(hv, vm: int, n: int, size: int) -> None:
    def put(arr):
        b = hv.alloc(vm, "float32", arr.shape)
        hv.write(vm, b.handle, 0, arr.tobytes())
        return b.handle

    a = np.ones((size, size), np.float32)
    ha, hb = put(a), put(a)
    hc = hv.alloc(vm, "float32", (size, size)).handle
    (k,) = hv.compile(vm, MATMUL)
    for _ in range(n):
        assert hv.launch(vm, k.kernel_id, {"a": ha, "b": hb, "c": hc}).wait(60).ok


def _ctl(dm, capsys, *argv):
    code = main(["--socket", dm.config.daemon.grpc_socket, "--json", *map(str, argv)])
    out, err = capsys.readouterr()
    assert code == EXIT_OK, err
    return json.loads(out)


def _quiesce(dm) -> None:
    """Stop the worker (a request in flight finishes first) so the figures hold still: it may
    have asked once on its own (its second look after start) besides the poke's request."""
    dm.advisor.stop(timeout=240, abort=False)
    assert not dm.advisor._thread.is_alive()


def _ask_until_ok(dm, attempts: int = 3) -> None:
    """Poke the worker until one answer validates. A 135M model's grammar-constrained answer
    is nearly always valid JSON, but not always (it may run out of max_tokens inside a
    string): such a round is refused as invalid_json, which is the advisor working, and
    the test asks again rather than fail on the model's judgement."""
    for _ in range(attempts):
        before = sum(dm.advisor.snapshot_stats().requests.values())
        dm.advisor.poke()
        assert wait_until(lambda b=before: sum(dm.advisor.snapshot_stats().requests.values()) > b, timeout=240), \
            dm.advisor.snapshot_stats()
        if dm.advisor.snapshot_stats().requests["ok"]:
            break
    _quiesce(dm)
    st = dm.advisor.snapshot_stats()
    assert st.requests["ok"] >= 1, st
    # nothing but ok and the model's own format slips: no timeout, connection or HTTP failure
    assert st.requests["ok"] + st.requests["invalid_json"] == sum(st.requests.values()), st


def test_apply_mode_end_to_end(server, capsys):
    dm = _daemon(server.url, "apply")
    events = []
    dm.hv.subscribe(lambda ev: events.append(ev) if ev.kind.startswith("advice") else None)
    dm.start()
    try:
        _work(dm.hv, 1, 3, 256)
        _work(dm.hv, 2, 20, 8)
        _ask_until_ok(dm)
        st = dm.advisor.snapshot_stats()
        assert st.compared >= 1  # an answer named at least one VM (minItems 1) and validated
        advice = _ctl(dm, capsys, "advice")
        assert advice["mode"] == "apply" and advice["requests"]["ok"] == st.requests["ok"]
        rows = {r["vm_id"]: r for r in advice["rows"]}
        assert set(rows) == {1, 2}
        llm_rows = [r for r in rows.values() if r["llm_class"]]
        assert llm_rows and all(r["age_seconds"] is not None for r in llm_rows)
        for r in llm_rows:  # every piece of LLM advice was applied or refused with a reason
            assert r["status"] in ("applied", "refused"), r
            if r["status"] == "applied":  # in effect now (a share or cap it names, the class)
                info = dm.hv.vm_info(r["vm_id"])
                assert r["share"] is None or info.share_pct == r["share"]
                assert r["cap"] is None or info.cap_pct == r["cap"]
                assert info.default_class == r["llm_class"]
        # whatever the model said, every VM stays within the operator's bounds
        assert all(10 <= dm.hv.vm_info(v).share_pct <= 60 for v in (1, 2))
        assert 50 <= dm.hv.vm_info(1).cap_pct <= 90
        assert dm.hv.vm_info(2).cap_pct is None  # VM 2 has no cap bounds: never capped
        applied = [e for e in events if e.kind == "advice_applied"]
        assert len(applied) == st.applied
        for e in applied:  # each applied change is an event with its rationale
            assert isinstance(e.detail["rationale"], str) and e.detail["how"] == "apply"
            assert e.detail["source"] == "llm"
        host, port = dm.metrics.address
        text = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10).read().decode()
        n = float(st.requests["ok"])
        assert f'pxos_advisor_requests_total{{outcome="ok"}} {n}' in text
        assert f"pxos_advisor_request_seconds_count {n}" in text
        assert f"pxos_advisor_advice_applied_total {float(st.applied)}" in text
        assert "pxos_advisor_agreement_ratio" in text
    finally:
        dm.stop(grace=1.0)
        shutil.rmtree(dm.sockdir, ignore_errors=True)


def test_suggest_mode_accept_and_reject(server, capsys):
    dm = _daemon(server.url, "suggest")
    dm.start()
    try:
        _work(dm.hv, 1, 3, 256)
        _ask_until_ok(dm)
        rows = _ctl(dm, capsys, "advice")["rows"]
        suggested = [r for r in rows if r["status"] == "suggested"]
        assert [dm.hv.vm_info(v).share_pct for v in (1, 2)] == [30, 30]  # nothing applied by itself
        if not suggested:  # every piece of advice refused (e.g. a share out of bounds): nothing to decide
            assert all(r["status"] in ("refused", "heuristic") for r in rows)
            return
        first = suggested[0]
        row = _ctl(dm, capsys, "advice", "accept", first["vm_id"])
        assert row["status"] == "accepted" and row["source"] == "llm"
        info = dm.hv.vm_info(first["vm_id"])
        assert info.default_class == first["llm_class"]
        if len(suggested) > 1:
            row = _ctl(dm, capsys, "advice", "reject", suggested[1]["vm_id"])
            assert row["status"] == "rejected" and row["source"] == "heuristic"
    finally:
        dm.stop(grace=1.0)
        shutil.rmtree(dm.sockdir, ignore_errors=True)
