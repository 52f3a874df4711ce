"""pxosctl advice against the real daemon, its advisor in suggest mode asking a real HTTP
server on 127.0.0.1 that answers what the test sets (tests/support/llm_endpoint.py): the
table, --json, accept and reject, and the errors an operator can run into."""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import pytest

from hypervisor import Hypervisor
from hypervisor.config import DaemonConfig
from hypervisor.ctl import EXIT_FAILED, EXIT_OK, EXIT_USAGE, main
from tests.support.llm_endpoint import LLMEndpoint

ANSWER = json.dumps({"vms": [
    {"vm_id": 1, "wclass": "BATCH", "share": 40, "rationale": "long matmuls \x1b[31mred"},
    {"vm_id": 2, "wclass": "INTERACTIVE", "rationale": "someone waits"}]})


@pytest.fixture
def setup(capsys):
    with LLMEndpoint("ok", ANSWER) as ep:
        d = tempfile.mkdtemp(prefix="pxos-", dir="/tmp")
        cfg = DaemonConfig.model_validate({
            "daemon": {"grpc_socket": os.path.join(d, "hvd.sock"), "metrics_address": None,
                       "backend": "numpy", "socket_dir": d},
            "advisor": {"mode": "suggest", "endpoint": ep.url, "model": "fake", "interval_seconds": 3600},
            "vm": [{"id": 1, "memory": "16M", "share": 30, "share_min": 20, "share_max": 50},
                   {"id": 2, "memory": "16M", "share": 30}]})
        from hypervisor.daemon import Daemon

        dm = Daemon(cfg, hypervisor=Hypervisor(backend="numpy", device_pool_bytes=64 << 20)).start()
        dm.advisor.stop()  # the test asks when it wants to (the worker's own rounds: the integration test)

        def ctl(*argv):
            code = main(["--socket", cfg.daemon.grpc_socket, *map(str, argv)])
            out, err = capsys.readouterr()
            assert "Traceback" not in err
            return code, out, err

        yield dm, ctl, ep
        dm.stop(grace=1.0)
        shutil.rmtree(d, ignore_errors=True)


def test_advice_before_any_answer_shows_the_heuristic(setup):
    dm, ctl, ep = setup
    code, out, _ = ctl("--json", "advice")
    assert code == EXIT_OK
    doc = json.loads(out)
    assert doc["mode"] == "suggest" and doc["agreement"] is None
    assert [(r["vm_id"], r["source"], r["status"]) for r in doc["rows"]] == [(1, "heuristic", "heuristic"),
                                                                            (2, "heuristic", "heuristic")]
    code, _, err = ctl("advice", "accept", 1)
    assert code == EXIT_FAILED and "no LLM advice" in err


def test_advice_table_accept_and_reject(setup):
    dm, ctl, ep = setup
    assert dm.advisor.ask(dm.advisor.summaries()) == "ok"
    code, out, _ = ctl("advice")
    assert code == EXIT_OK
    assert "advisor: suggest (fake at" in out and "requests: ok 1" in out
    assert "\x1b" not in out  # a model's control characters never reach the terminal
    lines = {ln.split()[0]: ln for ln in out.splitlines() if ln.strip()[:1].isdigit()}
    assert "llm" in lines["1"] and "BATCH" in lines["1"] and "40%" in lines["1"] and "suggested" in lines["1"]
    code, out, _ = ctl("advice", "accept", 1)
    assert code == EXIT_OK and out.startswith("VM 1: accepted: BATCH, share 40% (llm)")
    assert (dm.hv.vm_info(1).share_pct, dm.hv.vm_info(1).default_class) == (40, "BATCH")
    code, out, _ = ctl("--json", "advice", "reject", 2)
    assert code == EXIT_OK and json.loads(out)["status"] == "rejected"
    assert dm.hv.vm_info(2).default_class is None
    doc = json.loads(ctl("--json", "advice")[1])
    assert doc["applied"] == 1 and doc["rejected"] == {"operator": 1}


def test_advice_usage_errors(setup):
    _, ctl, _ = setup
    assert ctl("advice", "accept")[0] == EXIT_USAGE
    assert ctl("advice", "accept", "zero")[0] == EXIT_USAGE
    code, _, err = ctl("advice", "reject", 9)
    assert code == EXIT_FAILED and "VM 9" in err


def test_refused_advice_shows_why(setup):
    dm, ctl, ep = setup
    ep.content = json.dumps({"vms": [{"vm_id": 1, "wclass": "BATCH", "share": 90, "rationale": "all of it"}]})
    assert dm.advisor.ask(dm.advisor.summaries()) == "ok"
    code, out, _ = ctl("advice")
    assert code == EXIT_OK and "refused out_of_bounds 1" in out
    row = next(ln for ln in out.splitlines() if ln.startswith("1 "))
    assert "refused" in row and "out_of_bounds: share 90" in row and "heuristic" in row
    assert dm.hv.vm_info(1).share_pct == 30
