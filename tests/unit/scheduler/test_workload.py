"""Workload classes, launch costs and tickets validate themselves."""

from __future__ import annotations

import math

import pytest

from scheduler import MAX_EST_SECONDS, InvalidCost, InvalidTicket, LaunchCost, Ticket, WorkloadClass

COST = LaunchCost(10, 4, 4, 0)


def test_class_order_and_names():
    assert WorkloadClass.REALTIME < WorkloadClass.INTERACTIVE < WorkloadClass.THROUGHPUT < WorkloadClass.BATCH
    assert WorkloadClass.from_name("interactive") is WorkloadClass.INTERACTIVE
    assert WorkloadClass.from_name(" BATCH ") is WorkloadClass.BATCH
    with pytest.raises(InvalidTicket, match="unknown workload class 'urgent'"):
        WorkloadClass.from_name("urgent")
    with pytest.raises(InvalidTicket):
        WorkloadClass.from_name(3)


def test_cost_intensity_and_validation():
    assert LaunchCost(80, 6, 4, 0).intensity == 8.0
    assert LaunchCost(5, 0, 0, 0).intensity == 5.0  # nothing moved: flops per one byte
    for bad in (-1, 1.5, True, None):
        with pytest.raises(InvalidCost):
            LaunchCost(bad, 0, 0, 0)
    with pytest.raises(InvalidCost, match="temp_bytes"):
        LaunchCost(0, 0, 0, -3)


def ticket(**kw):
    fields = dict(vm_id=1, launch_id=1, wclass=WorkloadClass.BATCH, priority=50, cost=COST,
                  est_seconds=0.01, enqueued_at=0.0)
    fields.update(kw)
    return Ticket(**fields)


def test_ticket_accepts_good_fields():
    t = ticket(payload=object())
    assert t.est_seconds == 0.01 and t.wclass is WorkloadClass.BATCH


@pytest.mark.parametrize("field,value", [
    ("vm_id", "1"), ("launch_id", 1.0), ("wclass", 3), ("priority", 101), ("priority", -1),
    ("priority", True), ("cost", (1, 2, 3, 4)), ("est_seconds", -0.1), ("est_seconds", math.nan),
    ("est_seconds", math.inf), ("est_seconds", MAX_EST_SECONDS * 2), ("enqueued_at", math.nan),
])
def test_ticket_rejects_bad_fields(field, value):
    with pytest.raises(InvalidTicket, match=field):
        ticket(**{field: value})
