"""The advisor's worker against a real HTTP server that misbehaves on purpose, and a real
(NumPy) Hypervisor: every fault is refused with its reason and the heuristic stands."""

from __future__ import annotations

import json
import logging
import time

import pytest

from hypervisor import Hypervisor
from hypervisor.advisor import Advisor, VMBounds
from hypervisor.config import AdvisorSection
from tests.support.llm_endpoint import LLMEndpoint, wait_until

GOOD = json.dumps({"vms": [{"vm_id": 1, "wclass": "BATCH", "share": 40, "rationale": "long matmuls"}]})


@pytest.fixture
def hv():
    h = Hypervisor(backend="numpy", device_pool_bytes=64 << 20).start()
    h.register_vm(1, 16, 30)
    h.register_vm(2, 16, 20)
    yield h
    h.stop()


def _advisor(hv, url, mode="suggest", **kw) -> Advisor:
    opts = dict(mode=mode, endpoint=url, model="fake", timeout_seconds=1.0, interval_seconds=3600,
                dwell_seconds=0, cooldown_seconds=0, breaker_failures=3, breaker_open_seconds=60)
    opts.update(kw)
    return Advisor(hv, AdvisorSection(**opts), {1: VMBounds(20, 50, "nightly training"), 2: VMBounds(20, 20)})


def test_suggest_mode_keeps_advice_until_accepted(hv):
    events = []
    hv.subscribe(events.append)
    with LLMEndpoint("ok", GOOD) as ep:
        adv = _advisor(hv, ep.url)
        assert adv.ask(adv.summaries()) == "ok"
        req = ep.requests[0]
        assert req["model"] == "fake" and req["response_format"]["type"] == "json_object"
        assert req["response_format"]["schema"]["properties"]["vms"]["items"]["properties"]["vm_id"]["enum"] == [1, 2]
        assert "nightly training" in req["messages"][1]["content"]
        row = adv.row(1)
        assert row.status == "suggested" and row.current.source == "llm" and row.current.share == 40
        assert hv.vm_info(1).share_pct == 30  # nothing applied yet
        assert adv.row(2).current.source == "heuristic"  # no LLM advice about VM 2
        adv.accept(1)
    info = hv.vm_info(1)
    assert (info.share_pct, info.default_class) == (40, "BATCH")
    applied = [e for e in events if e.kind == "advice_applied"]
    assert applied and applied[0].detail["rationale"] == "long matmuls" and applied[0].detail["how"] == "accept"
    s = adv.snapshot_stats()
    assert s.requests["ok"] == 1 and s.applied == 1 and s.compared == 1 and s.latency_count == 1


def test_reject_leaves_everything_as_it_was(hv):
    with LLMEndpoint("ok", GOOD) as ep:
        adv = _advisor(hv, ep.url)
        adv.ask(adv.summaries())
    adv.reject(1)
    assert adv.row(1).status == "rejected" and adv.row(1).current.source == "heuristic"
    assert hv.vm_info(1).share_pct == 30 and adv.snapshot_stats().rejected == {"operator": 1}


@pytest.mark.parametrize("behaviour,reason", [
    ("hang", "timeout"), ("trickle", "timeout"), ("garbage", "invalid_json"), ("status", "http_status"),
    ("drop", "connection"), ("half", "connection"),
])
def test_endpoint_faults_are_refused_with_their_reason(hv, behaviour, reason):
    with LLMEndpoint(behaviour, GOOD) as ep:
        adv = _advisor(hv, ep.url, timeout_seconds=1.0)
        t0 = time.monotonic()
        assert adv.ask(adv.summaries()) == reason
        assert time.monotonic() - t0 < 30  # the deadline holds (generous: a loaded machine)
    assert adv.snapshot_stats().requests[reason] == 1
    assert adv.row(1).current.source == "heuristic" and hv.vm_info(1).share_pct == 30


def test_connection_refused(hv):
    with LLMEndpoint() as ep:
        url = ep.url
    adv = _advisor(hv, url)
    assert adv.ask(adv.summaries()) == "connection"


@pytest.mark.parametrize("content,reason", [
    (json.dumps({"vms": [{"vm_id": 1, "wclass": "BATCH", "share": 95, "rationale": "more"}]}), "out_of_bounds"),
    (json.dumps({"vms": [{"vm_id": 2, "wclass": "BATCH", "share": 30, "rationale": "more"}]}), "out_of_bounds"),
    (json.dumps({"vms": [{"vm_id": 9, "wclass": "BATCH", "rationale": "who"}]}), "unknown_vm"),
])
def test_bad_advice_is_refused_and_heuristic_stands(hv, content, reason):
    with LLMEndpoint("ok", content) as ep:
        adv = _advisor(hv, ep.url, mode="apply")
        assert adv.ask(adv.summaries()) == "ok"  # the request worked; its advice did not
    assert adv.snapshot_stats().rejected == {reason: 1}
    assert adv.snapshot_stats().applied == 0
    assert [hv.vm_info(v).share_pct for v in (1, 2)] == [30, 20]


def test_answer_after_the_vm_changed_is_stale(hv):
    with LLMEndpoint("ok", GOOD, delay=1.0) as ep:
        adv = _advisor(hv, ep.url, mode="apply", timeout_seconds=20)
        import threading

        t = threading.Thread(target=lambda: adv.ask(adv.summaries()))
        t.start()
        assert wait_until(lambda: ep.requests)
        hv.set_quota(1, share_pct=25)  # an operator changes the VM meanwhile
        t.join(30)
    assert adv.snapshot_stats().rejected == {"stale": 1}
    assert hv.vm_info(1).share_pct == 25


def test_answer_too_late_is_stale(hv):
    with LLMEndpoint("ok", GOOD, delay=0.5) as ep:
        adv = _advisor(hv, ep.url, mode="apply", timeout_seconds=20, stale_seconds=0.1)
        assert adv.ask(adv.summaries()) == "stale"
    assert hv.vm_info(1).share_pct == 30


def test_breaker_stops_calling_a_failing_endpoint(hv):
    with LLMEndpoint("status") as ep:
        adv = _advisor(hv, ep.url, breaker_failures=2)
        assert [adv.ask(adv.summaries()) for _ in range(4)] == ["http_status", "http_status",
                                                                "breaker_open", "breaker_open"]
        assert len(ep.requests) == 2
    assert adv.snapshot_stats().breaker == "open"


def test_apply_mode_dwell_and_cooldown(hv):
    now = [1000.0]
    with LLMEndpoint("ok", GOOD) as ep:
        opts = dict(mode="apply", endpoint=ep.url, model="fake", timeout_seconds=5, interval_seconds=3600,
                    dwell_seconds=10, cooldown_seconds=100)
        adv = Advisor(hv, AdvisorSection(**opts), {1: VMBounds(20, 50), 2: VMBounds(20, 20)},
                      clock=lambda: now[0])
        adv.ask(adv.summaries())
        assert adv.row(1).status == "dwelling" and hv.vm_info(1).share_pct == 30
        now[0] += 10
        adv.ask(adv.summaries())  # the same advice has stood 10 s: applied
        assert adv.row(1).status == "applied" and hv.vm_info(1).share_pct == 40
        ep.content = json.dumps({"vms": [{"vm_id": 1, "wclass": "THROUGHPUT", "share": 25, "rationale": "less"}]})
        for _ in range(3):
            now[0] += 20
            adv.ask(adv.summaries())
        assert adv.row(1).status == "dwelling" and "cool-down" in adv.row(1).detail
        assert hv.vm_info(1).share_pct == 40  # 60 s after the change: still cooling down
        now[0] += 100
        adv.ask(adv.summaries())
    assert hv.vm_info(1).share_pct == 25 and hv.vm_info(1).default_class == "THROUGHPUT"


def test_pinned_class_is_never_changed(hv):
    hv.set_quota(1, default_class="INTERACTIVE")
    with LLMEndpoint("ok", GOOD) as ep:
        adv = Advisor(hv, AdvisorSection(mode="apply", endpoint=ep.url, dwell_seconds=0, cooldown_seconds=0),
                      {1: VMBounds(20, 50, class_pinned=True)})
        adv.ask(adv.summaries())
    assert (hv.vm_info(1).share_pct, hv.vm_info(1).default_class) == (40, "INTERACTIVE")


def test_api_key_sent_but_never_logged(hv, monkeypatch, caplog):
    monkeypatch.setenv("PXOS_TEST_ADVISOR_KEY", "sk-secret-123")
    caplog.set_level(logging.DEBUG)
    with LLMEndpoint("status") as ep:
        adv = _advisor(hv, ep.url, api_key_env="PXOS_TEST_ADVISOR_KEY")
        adv.ask(adv.summaries())
    assert ep.headers[0]["Authorization"] == "Bearer sk-secret-123"
    assert "sk-secret" not in caplog.text and "sk-secret" not in repr(adv.client)
    assert "sk-secret" not in adv.snapshot_stats().last_error


def _launch_matmuls(hv, vm, n):
    import numpy as np
    from hv_kernels import MATMUL

    def put(arr):
        b = hv.alloc(vm, "float32", arr.shape)
        hv.write(vm, b.handle, 0, arr.tobytes())
        return b.handle

    a = np.ones((8, 5), np.float32)
    ha, hb = put(a), put(a.T.copy())
    hc = hv.alloc(vm, "float32", (8, 8)).handle
    (k,) = hv.compile(vm, MATMUL)
    return [hv.launch(vm, k.kernel_id, {"a": ha, "b": hb, "c": hc}).wait(30) for _ in range(n)]


def test_worker_thread_never_holds_up_launches(hv):
    with LLMEndpoint("hang") as ep:
        adv = _advisor(hv, ep.url, interval_seconds=0.05, timeout_seconds=0.5).start()
        try:
            assert wait_until(lambda: len(ep.requests) >= 1)
            # a request hangs at the endpoint right now; launches complete all the same
            assert all(r.ok for r in _launch_matmuls(hv, 1, 20))
            assert wait_until(lambda: adv.snapshot_stats().requests["timeout"] >= 2)
        finally:
            adv.stop()
    assert adv._thread is not None and not adv._thread.is_alive()


def test_summary_counts_what_ran(hv):
    adv = _advisor(hv, "http://127.0.0.1:9/v1")
    adv.summaries()
    _launch_matmuls(hv, 1, 5)
    s = {v.vm_id: v for v in adv.summaries()}[1]
    assert s.flops_per_launch > 0 and s.bytes_per_launch > 0 and s.launches_per_s > 0
    assert s.op_mix and sum(s.op_mix.values()) >= 5
    assert (s.share_min, s.share_max, s.description) == (20, 50, "nightly training")


def test_off_mode_sends_nothing_and_shows_the_heuristic(hv, monkeypatch):
    from hypervisor import errors as E

    monkeypatch.delenv("PXOS_TEST_ADVISOR_KEY", raising=False)  # never read when off
    adv = Advisor(hv, AdvisorSection(mode="off", api_key_env="PXOS_TEST_ADVISOR_KEY")).start()
    assert adv.client is None and adv._thread is None
    rows = adv.rows()
    assert [r.vm_id for r in rows] == [1, 2] and all(r.current.source == "heuristic" for r in rows)
    with pytest.raises(E.InvalidArgument):
        adv.ask(adv.summaries())
    with pytest.raises(E.InvalidArgument):
        adv.accept(1)
    adv.stop()


def test_missing_api_key_is_a_config_error(hv, monkeypatch):
    from hypervisor.errors import ConfigError

    monkeypatch.delenv("PXOS_TEST_ADVISOR_KEY", raising=False)
    with pytest.raises(ConfigError, match="PXOS_TEST_ADVISOR_KEY"):
        Advisor(hv, AdvisorSection(mode="suggest", api_key_env="PXOS_TEST_ADVISOR_KEY"))


def test_tick_asks_after_a_baseline_then_per_interval_or_on_change(hv):
    now = [0.0]
    with LLMEndpoint("ok", GOOD) as ep:
        adv = Advisor(hv, AdvisorSection(mode="suggest", endpoint=ep.url, interval_seconds=100),
                      {1: VMBounds(20, 50)}, clock=lambda: now[0])
        assert adv.tick() is None and not ep.requests  # first look: the rates' baseline only
        now[0] += 2
        assert adv.tick() == "ok" and len(ep.requests) == 1
        now[0] += 2
        assert adv.tick() is None  # not due, nothing changed
        _launch_matmuls(hv, 1, 30)  # VM 1 busy now: its heuristic class may move
        now[0] += 0.001
        adv.tick()
        assert len(ep.requests) == 1  # a change asks early, but not within a quarter interval
        now[0] += 100
        assert adv.tick() == "ok" and len(ep.requests) == 2
        hv.register_vm(3, 16, 10)  # a new VM: baseline first, then asked about
        now[0] += 30
        assert adv.tick() is None and len(ep.requests) == 2
        now[0] += 1
        assert adv.tick() == "ok" and ep.requests[2]["response_format"]["schema"]["properties"]["vms"][
            "items"]["properties"]["vm_id"]["enum"] == [1, 2, 3]


def test_summary_has_queue_wait(hv):
    adv = _advisor(hv, "http://127.0.0.1:9/v1")
    adv.summaries()
    _launch_matmuls(hv, 1, 5)
    s = {v.vm_id: v for v in adv.summaries()}[1]
    assert 0 <= s.queue_wait_p99_ms <= s.latency_p99_ms


def test_apply_sets_a_cap_within_its_bounds(hv):
    content = json.dumps({"vms": [{"vm_id": 1, "wclass": "BATCH", "cap": 70, "rationale": "keep it in check"}]})
    with LLMEndpoint("ok", content) as ep:
        adv = Advisor(hv, AdvisorSection(mode="apply", endpoint=ep.url, dwell_seconds=0, cooldown_seconds=0),
                      {1: VMBounds(30, 30, cap_min=50, cap_max=80)})
        adv.ask(adv.summaries())
        schema = ep.requests[0]["response_format"]["schema"]["properties"]["vms"]["items"]["properties"]
    assert "cap" in schema and "share" not in schema
    assert (hv.vm_info(1).share_pct, hv.vm_info(1).cap_pct) == (30, 70)


def test_advice_already_in_effect_needs_no_dwell_and_changes_nothing(hv):
    hv.set_quota(1, default_class="BATCH")
    events = []
    hv.subscribe(lambda ev: events.append(ev.kind))
    same = json.dumps({"vms": [{"vm_id": 1, "wclass": "BATCH", "share": 30, "rationale": "as it is"}]})
    with LLMEndpoint("ok", same) as ep:
        adv = _advisor(hv, ep.url, mode="apply", dwell_seconds=3600, cooldown_seconds=3600)
        adv.ask(adv.summaries())
    row = adv.row(1)
    assert (row.status, row.detail) == ("applied", "already in effect")
    assert "quota_changed" not in events and "advice_applied" not in events
    assert adv.snapshot_stats().applied == 0


def test_stop_ends_a_request_in_flight(hv):
    with LLMEndpoint("hang") as ep:
        adv = _advisor(hv, ep.url, interval_seconds=0.05, timeout_seconds=300).start()
        assert wait_until(lambda: len(ep.requests) >= 1)
        adv.stop(timeout=60)  # without the abort the thread would sit in its request for 300 s
        assert not adv._thread.is_alive()
    assert adv.snapshot_stats().requests["connection"] == 1
