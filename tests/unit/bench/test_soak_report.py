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


@pytest.mark.parametrize("gc_freeze", [None, False, True])
def test_the_soak_config_sets_compile_gc_freeze_only_when_asked(tmp_path, gc_freeze):
    from bench.soak import config_text
    from hypervisor.config import load_config

    path = tmp_path / "pxos-hvd.toml"
    path.write_text(config_text(str(tmp_path), gc_freeze))
    cfg = load_config(path)
    default = type(cfg.scheduler)().compile_gc_freeze
    assert cfg.scheduler.compile_gc_freeze == (default if gc_freeze is None else gc_freeze)
    assert len(cfg.vm) == 8


def test_the_gc_figures_are_read_from_the_daemons_metrics(tmp_path, monkeypatch):
    import io

    from bench import soak as soak_mod

    log = tmp_path / "pxos-hvd.log"
    log.write_text("... INFO pxos.daemon: metrics on http://127.0.0.1:4242/metrics\n")
    text = ('pxos_gc_collections_total{generation="0"} 10.0\npxos_gc_collections_total{generation="1"} 3.0\n'
            'pxos_gc_collections_total{generation="2"} 1.0\npxos_gc_frozen_objects 1234.0\n'
            'pxos_compile_gc_epochs_total 2.0\npxos_compiles_total{where="pool"} 7.0\n'
            'pxos_compiles_total{where="inline"} 9.0\n')
    seen = []

    class Answer(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def urlopen(url, timeout):
        seen.append(url)
        return Answer(text.encode())

    monkeypatch.setattr(soak_mod.urllib.request, "urlopen", urlopen)
    assert soak_mod.gc_figures(log) == {"gc_collections": [10, 3, 1], "gc_frozen_objects": 1234, "gc_epochs": 2,
                                        "pool_compiles": 7}
    assert seen == ["http://127.0.0.1:4242/metrics"]
