"""The advisor's pure half: prompt and schema, answer validation, heuristic, breaker."""

from __future__ import annotations

import json

import pytest

from scheduler.advisor import (
    MAX_DESCRIPTION_CHARS,
    MAX_VMS_PER_REQUEST,
    AdvisorRejected,
    CircuitBreaker,
    Reason,
    VMSummary,
    answer_schema,
    build_messages,
    heuristic_class,
    parse_answer,
)
from scheduler.workload import WorkloadClass as WC


def _vm(vm_id=1, **kw) -> VMSummary:
    base = dict(vm_id=vm_id, name=f"vm{vm_id}", current_class="THROUGHPUT", share_pct=30.0, cap_pct=None,
                share_min=20.0, share_max=50.0)
    base.update(kw)
    return VMSummary(**base)


def _answer(*items) -> str:
    return json.dumps({"vms": list(items)})


def test_good_answer_becomes_advice():
    ok, bad = parse_answer(_answer({"vm_id": 1, "wclass": "batch", "share": 40, "rationale": "  long\n matmuls "}),
                           [_vm()])
    assert bad == []
    assert len(ok) == 1
    a = ok[0]
    assert (a.vm_id, a.wclass, a.share, a.rationale, a.source) == (1, WC.BATCH, 40.0, "long matmuls", "llm")


def test_share_equal_to_current_is_no_change():
    ok, _ = parse_answer(_answer({"vm_id": 1, "wclass": "BATCH", "share": 30, "rationale": ""}), [_vm()])
    assert ok[0].share is None


@pytest.mark.parametrize("text", ["", "not json", "[1, 2]", '{"vms": 3}', '{"vms": [{"vm_id": "x"}]}',
                                  '{"other": []}', "[" * 100000])
def test_unusable_answers_are_invalid_json(text):
    with pytest.raises(AdvisorRejected) as info:
        parse_answer(text, [_vm()])
    assert info.value.reason is Reason.INVALID_JSON


@pytest.mark.parametrize("item,reason", [
    ({"vm_id": 7, "wclass": "BATCH", "rationale": ""}, Reason.UNKNOWN_VM),
    ({"vm_id": 1, "wclass": "BATCH", "share": 90, "rationale": ""}, Reason.OUT_OF_BOUNDS),
    ({"vm_id": 1, "wclass": "BATCH", "share": 10, "rationale": ""}, Reason.OUT_OF_BOUNDS),
    ({"vm_id": 1, "wclass": "BATCH", "share": float("nan"), "rationale": ""}, Reason.OUT_OF_BOUNDS),
    ({"vm_id": 1, "wclass": "REALTIME", "rationale": ""}, Reason.OUT_OF_BOUNDS),
    ({"vm_id": 1, "wclass": "URGENT", "rationale": ""}, Reason.INVALID_JSON),
])
def test_bad_items_are_refused_with_their_reason(item, reason):
    ok, bad = parse_answer(_answer(item, {"vm_id": 2, "wclass": "INTERACTIVE", "rationale": "fine"}),
                           [_vm(1), _vm(2)])
    assert [a.vm_id for a in ok] == [2]  # the good item about another VM still counts
    assert [(r.vm_id, r.reason) for r in bad] == [(item["vm_id"], reason)]


def test_first_answer_about_a_vm_counts_and_rationale_is_capped():
    ok, _ = parse_answer(_answer({"vm_id": 1, "wclass": "BATCH", "rationale": "x" * 700},
                                 {"vm_id": 1, "wclass": "INTERACTIVE", "rationale": "second"}), [_vm()])
    assert len(ok) == 1 and ok[0].wclass is WC.BATCH and len(ok[0].rationale) == 200


def test_oversized_answer_refused_before_parsing():
    with pytest.raises(AdvisorRejected) as info:
        parse_answer(" " * (64 * 1024 + 1), [_vm()])
    assert info.value.reason is Reason.INVALID_JSON


def test_prompt_is_bounded_and_schema_names_only_asked_vms():
    many = [_vm(i, description="d" * 5000, op_mix={f"op{j}": j for j in range(20)}) for i in range(1, 40)]
    msgs = build_messages(many)
    user = msgs[1]["content"].splitlines()[1:]
    assert len(user) == MAX_VMS_PER_REQUEST
    row = json.loads(user[0])
    assert len(row["description"]) == MAX_DESCRIPTION_CHARS
    assert len(row["op_mix"]) == 6 and "op19" in row["op_mix"]
    schema = answer_schema([3, 1])
    item = schema["properties"]["vms"]["items"]
    assert item["properties"]["vm_id"]["enum"] == [1, 3]
    assert "REALTIME" not in item["properties"]["wclass"]["enum"]


def test_heuristic_class_follows_the_classifier_thresholds():
    assert heuristic_class(_vm(mean_launch_ms=0.5, device_busy_pct=5)) is WC.INTERACTIVE
    assert heuristic_class(_vm(mean_launch_ms=0.5, device_busy_pct=80)) is WC.THROUGHPUT
    assert heuristic_class(_vm(mean_launch_ms=120, device_busy_pct=90)) is WC.BATCH
    assert heuristic_class(_vm(mean_launch_ms=20, flops_per_launch=1e9, bytes_per_launch=1e6)) is WC.BATCH
    assert heuristic_class(_vm(mean_launch_ms=20, flops_per_launch=1e6, bytes_per_launch=1e6)) is WC.THROUGHPUT


def test_breaker_opens_after_failures_then_half_opens_and_backs_off():
    now = [0.0]
    b = CircuitBreaker(failures=2, open_seconds=10, max_open_seconds=25, clock=lambda: now[0])
    b.failure()
    assert b.state == "closed"
    b.failure()
    assert b.state == "open" and not b.allow()
    now[0] = 10.0
    assert b.state == "half_open" and b.allow()
    b.failure()  # the trial failed: open for twice as long
    now[0] = 29.0
    assert not b.allow()
    now[0] = 30.0
    assert b.allow()
    b.failure()
    now[0] = 54.0
    assert not b.allow()  # capped at 25 s
    now[0] = 55.0
    b.success()
    assert b.state == "closed" and b.opened_total == 3


def test_without_share_bounds_the_model_is_not_offered_a_share():
    fixed = _vm(1, share_min=30.0, share_max=30.0)
    msgs = build_messages([fixed])
    assert "share (percent)" not in msgs[0]["content"]
    assert "share_min" not in msgs[1]["content"]
    item = answer_schema([1], allow_share=False)["properties"]["vms"]["items"]
    assert "share" not in item["properties"]
    assert "share (percent)" in build_messages([_vm(1)])[0]["content"]


def test_cap_only_within_its_bounds_and_not_below_the_share():
    capped = _vm(1, cap_pct=70.0, cap_min=60.0, cap_max=90.0)
    ok, bad = parse_answer(_answer({"vm_id": 1, "wclass": "BATCH", "cap": 80, "rationale": ""}), [capped])
    assert bad == [] and ok[0].cap == 80
    for item in ({"vm_id": 1, "wclass": "BATCH", "cap": 95, "rationale": ""},
                 {"vm_id": 1, "wclass": "BATCH", "share": 45, "cap": 40, "rationale": ""}):
        ok, bad = parse_answer(_answer(item), [_vm(1, cap_min=30.0, cap_max=90.0)])
        assert ok == [] and bad[0].reason is Reason.OUT_OF_BOUNDS
    ok, bad = parse_answer(_answer({"vm_id": 1, "wclass": "BATCH", "cap": 80, "rationale": ""}), [_vm(1)])
    assert ok == [] and bad[0].reason is Reason.OUT_OF_BOUNDS  # no cap bounds: the cap may not move
    schema = answer_schema([1], allow_cap=True)["properties"]["vms"]["items"]["properties"]
    assert "cap" in schema and "cap" not in answer_schema([1])["properties"]["vms"]["items"]["properties"]
    assert "cap (percent)" in build_messages([capped])[0]["content"]
    assert "cap (percent)" not in build_messages([_vm(1)])[0]["content"]
