"""bench/soak_report.py's verdict (bench/soak.py): each kind of failure the soak looks for fails the run."""

from __future__ import annotations

import copy

import pytest

from bench import soak_report as soak

CLEAN = {"daemon_exit": 0, "lost": 0, "accounting_drift": 0, "drift_ns": 0, "usage_drift": 0,
         "rest_drift_bytes": 0, "undercharged": 0, "internal": 0, "hostile_accepted": 0,
         "operator": {"hostile_accepted": 0}, "connect_errors": 0, "errors": [], "log_tracebacks": 0, "log_errors": 0,
         "memfd_maps_at_rest": 0, "fds": {"baseline": 34, "end": 34}, "threads": {"baseline": 27, "end": 27},
         "rss_mib": {"baseline": 140.0, "end": 150.0}}


def test_a_clean_run_passes():
    assert soak.verdict(CLEAN, None) == []


@pytest.mark.parametrize("path,value,needle", [
    (("lost",), 1, "completions lost"),
    (("accounting_drift",), 5, "accounting drift"),
    (("internal",), 1, "PXOS_S_INTERNAL"),
    (("daemon_exit",), -9, "exited -9"),
    (("connect_errors",), 2, "connections to a present VM failed"),
    (("memfd_maps_at_rest",), 1, "guest-RAM mappings"),
    (("fds", "end"), 34 + soak.FD_SLACK + 1, "fds grew"),
    (("threads", "end"), 27 + soak.THREAD_SLACK + 1, "threads grew"),
    (("rss_mib", "end"), 140.0 + 64 + 71, "RSS grew"),
    (("operator", "hostile_accepted"), 1, "hostile requests accepted"),
    (("log_errors",), 1, "ERROR lines"),
    (("log_tracebacks",), 1, "tracebacks"),
    (("vms_missing_at_rest",), 1, "VMs missing at rest"),
    (("settings_lost",), ["VM 2: quota/share/cap (1, 10.0, None), set (2, 10.0, None)"], "did not hold"),
])
def test_each_failure_fails_the_run(path, value, needle):
    o = copy.deepcopy(CLEAN)
    target = o
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    assert any(needle in v for v in soak.verdict(o, None))


def test_a_daemon_that_died_fails_the_run():
    assert soak.verdict(CLEAN, "pxos-hvd exited with -11 during the soak") == ["pxos-hvd exited with -11 during the soak"]


def test_rss_slope_is_a_least_squares_fit():
    assert soak._slope([(0, 100.0), (10, 101.0), (20, 102.0)]) == pytest.approx(0.1)
    assert soak._slope([(0, 100.0), (10, 130.0)]) == 0.0  # too few points to call it a trend
