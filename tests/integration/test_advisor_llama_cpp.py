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


def _answered(dm) -> bool:
    s = dm.advisor.snapshot_stats()
    return sum(s.requests.values()) >= 1


def test_apply_mode_end_to_end(server, capsys):
    dm = _daemon(server.url, "apply")
    events = []
    dm.hv.subscribe(lambda ev: events.append(ev) if ev.kind.startswith("advice") else None)
    dm.start()
    try:
        _work(dm.hv, 1, 3, 256)
        _work(dm.hv, 2, 20, 8)
        dm.advisor.poke()
        assert wait_until(lambda: _answered(dm), timeout=240), dm.advisor.snapshot_stats()
        st = dm.advisor.snapshot_stats()
        # the schema-constrained answer parsed: no transport or format failure
        assert st.requests["ok"] == 1, st
        assert st.compared >= 1  # the answer named at least one VM (minItems 1) and validated
        advice = _ctl(dm, capsys, "advice")
        assert advice["mode"] == "apply" and advice["requests"]["ok"] == 1
        rows = {r["vm_id"]: r for r in advice["rows"]}
        assert set(rows) == {1, 2}
        llm_rows = [r for r in rows.values() if r["llm_class"]]
        assert llm_rows and all(r["age_seconds"] is not None for r in llm_rows)
        for r in llm_rows:  # every piece of LLM advice was applied or refused with a reason
            assert r["status"] in ("applied", "refused"), r
            if r["status"] == "applied":
                info = dm.hv.vm_info(r["vm_id"])
                assert info.share_pct == (r["share"] if r["share"] is not None else 30)
                assert 10 <= info.share_pct <= 60
                assert info.cap_pct == (r["cap"] if r["cap"] is not None else (80 if r["vm_id"] == 1 else None))
            assert dm.hv.vm_info(2).cap_pct is None  # VM 2 has no cap bounds: never capped
        assert 50 <= dm.hv.vm_info(1).cap_pct <= 90
        applied = [e for e in events if e.kind == "advice_applied"]
        assert len(applied) == st.applied
        for e in applied:
            assert isinstance(e.detail["rationale"], str) and e.detail["how"] == "apply"
        host, port = dm.metrics.address
        text = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10).read().decode()
        assert 'pxos_advisor_requests_total{outcome="ok"} 1.0' in text
        assert "pxos_advisor_request_seconds_count 1.0" in text
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
        dm.advisor.poke()
        assert wait_until(lambda: _answered(dm), timeout=240)
        assert dm.advisor.snapshot_stats().requests["ok"] == 1
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
