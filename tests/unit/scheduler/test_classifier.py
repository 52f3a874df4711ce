"""The classifier's rules (docs/scheduling.md, "Classifier")."""

from __future__ import annotations

import math

import pytest

from scheduler import MAX_EST_SECONDS, Classifier, InvalidCharge, InvalidCost, InvalidTicket, LaunchCost
from scheduler import WorkloadClass as WC
from scheduler.classifier import (
    BATCH_MIN_SECONDS,
    COMPUTE_BOUND_INTENSITY,
    INTERACTIVE_MAX_SECONDS,
    RATIO_SAMPLE_CLAMP,
)
from scheduler.simulate import ManualClock

FLOPS = BW = 1e9  # a device of 1 Gflop/s and 1 GB/s, no launch overhead: easy arithmetic


@pytest.fixture
def clock():
    return ManualClock()


@pytest.fixture
def clf(clock):
    return Classifier(peak_flops=FLOPS, peak_bytes_per_s=BW, launch_overhead_s=0.0, clock=clock)


def cost_for(seconds, intensity=1.0):
    """A cost the roofline puts at ``seconds`` with the given flops per byte."""
    if intensity >= 1.0:
        flops = int(seconds * FLOPS)
        moved = int(flops / intensity)
    else:
        moved = int(seconds * BW)
        flops = int(moved * intensity)
    return LaunchCost(flops, moved // 2, moved - moved // 2, 0)


def test_roofline_estimate(clf):
    assert clf.model_seconds(LaunchCost(2_000_000, 500_000, 500_000, 0)) == pytest.approx(2e-3)
    assert clf.model_seconds(LaunchCost(1_000, 3_000_000, 0, 0)) == pytest.approx(3e-3)
    assert clf.estimate(1, LaunchCost(10**30, 0, 0, 0)) == MAX_EST_SECONDS


def test_hint_wins_then_default_then_inference(clf):
    small = cost_for(1e-4)
    assert clf.classify(1, hint=WC.BATCH, priority=None, cost=small, default=WC.REALTIME)[0] is WC.BATCH
    assert clf.classify(1, hint=None, priority=None, cost=small, default=WC.REALTIME)[0] is WC.REALTIME
    cls, est = clf.classify(1, hint=None, priority=None, cost=small, default=None)
    assert cls is WC.INTERACTIVE and est == pytest.approx(1e-4)


def test_inference_by_size_and_intensity(clf):
    def infer(cost):
        return clf.classify(1, hint=None, priority=None, cost=cost, default=None)[0]

    assert infer(cost_for(INTERACTIVE_MAX_SECONDS)) is WC.INTERACTIVE
    assert infer(cost_for(INTERACTIVE_MAX_SECONDS * 2)) is WC.THROUGHPUT
    assert infer(cost_for(20e-3, intensity=0.25)) is WC.THROUGHPUT  # memory-bound streaming
    assert infer(cost_for(20e-3, intensity=COMPUTE_BOUND_INTENSITY * 2)) is WC.BATCH  # matmul-like
    assert infer(cost_for(BATCH_MIN_SECONDS, intensity=0.25)) is WC.BATCH  # long, whatever kind


def test_priority_moves_only_an_inferred_class_one_step(clf):
    mid = cost_for(5e-3)

    def infer(priority, hint=None):
        return clf.classify(1, hint=hint, priority=priority, cost=mid, default=None)[0]

    assert infer(50) is WC.THROUGHPUT
    assert infer(90) is WC.INTERACTIVE
    assert infer(10) is WC.BATCH
    assert clf.classify(1, hint=None, priority=100, cost=cost_for(1e-4), default=None)[0] is WC.INTERACTIVE
    assert infer(100, hint=WC.BATCH) is WC.BATCH  # never over a hint


def test_a_busy_vms_small_launches_are_throughput(clf, clock):
    small = cost_for(1e-4)
    for _ in range(200):  # 200 x 3 ms of device time within 0.6 s: the VM keeps the device busy
        clf.observe(7, small, 3e-3)
        clock.advance(3e-3)
    assert clf.duty(7) > 0.25
    cls, est = clf.classify(7, hint=None, priority=None, cost=small, default=None)
    assert cls is WC.THROUGHPUT and est == pytest.approx(3e-3, rel=0.01)  # learned: 30x the roofline
    clock.advance(10.0)  # a quiet VM again
    assert clf.duty(7) < 1e-3
    assert clf.classify(7, hint=None, priority=None, cost=cost_for(1e-5), default=None)[0] is WC.INTERACTIVE


def test_history_is_per_vm_with_a_global_prior_and_forget(clf):
    c = cost_for(1e-3)
    for _ in range(50):
        clf.observe(1, c, 4e-3)
    assert clf.estimate(1, c) == pytest.approx(4e-3, rel=0.01)
    assert 1e-3 < clf.estimate(2, c) <= 4e-3 + 1e-9  # a new VM starts from what all VMs showed
    clf.observe(2, c, 1e-3)
    assert clf.estimate(2, c) < clf.estimate(1, c)
    clf.forget(1)
    assert clf.estimate(1, c) == pytest.approx(clf.estimate(3, c))
    assert clf.duty(1) == 0.0


def test_one_outlier_moves_the_estimate_by_a_bounded_factor(clf):
    c = cost_for(1e-3)
    clf.observe(1, c, 1e-3)
    clf.observe(1, c, 1e6 * 1e-3)
    assert clf.estimate(1, c) <= 1e-3 * RATIO_SAMPLE_CLAMP ** 0.2 * 1.0001


def test_bad_input_is_refused(clf):
    c = cost_for(1e-3)
    for kw in (dict(hint="BATCH"), dict(default=2), dict(priority=101), dict(priority=True), dict(cost=None)):
        args = dict(hint=None, priority=None, cost=c, default=None) | kw
        with pytest.raises((InvalidTicket, InvalidCost)):
            clf.classify(1, **args)
    for bad in (-1.0, math.nan, math.inf, True):
        with pytest.raises(InvalidCharge):
            clf.observe(1, c, bad)
    with pytest.raises(InvalidCost):
        Classifier(peak_flops=0)
    assert clf.estimate(1, c) == pytest.approx(1e-3)  # nothing learned from refused input
