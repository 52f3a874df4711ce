"""MetricsExporter against a real NumPy-backed Hypervisor: names, values, labels, HTTP."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from hypervisor import Hypervisor
from hypervisor.errors import ConfigError
from hypervisor.metrics import EXTRA_METRICS, MetricsExporter
from tests.support.programs import MATMUL, heavy

# Slow enough (tens of ms on NumPy) that launches queue behind each other.
HEAVY = heavy(8)

_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse(text: bytes) -> tuple[dict, dict]:
    """(samples {(name, frozenset(labels)): value}, types {family: type})."""
    samples, types = {}, {}
    for line in text.decode().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
        elif line and not line.startswith("#"):
            m = _LINE.match(line)
            assert m, f"unparseable exposition line {line!r}"
            samples[(m.group(1), frozenset(_LABEL.findall(m.group(2) or "")))] = float(m.group(3))
    return samples, types


def value(samples: dict, name: str, **labels) -> float:
    return samples[(name, frozenset((k.rstrip("_"), v) for k, v in labels.items()))]


@pytest.fixture
def hv():
    h = Hypervisor(backend="numpy", device_pool_bytes=64 << 20).start()
    yield h
    h.stop()


@pytest.fixture
def exporter(hv):
    m = MetricsExporter(hv)
    yield m
    m.stop()


def _matmul(hv, vm, n=8):
    (k,) = hv.compile(vm, MATMUL)
    a, b, c = (hv.alloc(vm, "float32", (n, n)) for _ in range(3))
    x = np.arange(n * n, dtype=np.float32).reshape(n, n)
    hv.write(vm, a.handle, 0, x.tobytes())
    hv.write(vm, b.handle, 0, np.eye(n, dtype=np.float32).tobytes())
    return k, {"a": a.handle, "b": b.handle, "c": c.handle}


def test_every_documented_metric_is_exported_while_idle(exporter):
    samples, types = parse(exporter.render())
    # prometheus_client adds a <name>_created timestamp to the families it owns: not ours to list
    types = {n: t for n, t in types.items() if not n.endswith("_created")}
    doc = (Path(__file__).parents[3] / "docs" / "metrics.md").read_text()
    documented = set(re.findall(r"^\| `(pxos_[a-z0-9_]+)`", doc, re.MULTILINE))
    assert documented, "docs/metrics.md lists no metrics"
    assert documented <= set(types), f"documented but not exported: {sorted(documented - set(types))}"
    assert set(types) <= documented, f"exported but not documented: {sorted(set(types) - documented)}"
    assert value(samples, "pxos_device_pool_bytes") == 64 << 20
    assert value(samples, "pxos_vm_switch_seconds_count") == 0
    assert value(samples, "pxos_scheduler_launches_total") == 0


def test_names_follow_the_convention(exporter):
    _, types = parse(exporter.render())
    for name, kind in types.items():
        assert name.startswith("pxos_"), name
        assert name.endswith("_total") == (kind == "counter"), f"{name} is a {kind}"


def test_vm_gauges_are_the_hypervisors_numbers(hv, exporter):
    hv.register_vm(1, 100, 50, cap_percent=80)
    hv.register_vm(2, 10, 20)
    hv.alloc(1, "float32", (256,))
    s, _ = parse(exporter.render())
    assert value(s, "pxos_vm_memory_bytes", vm="1") == 1024
    assert value(s, "pxos_vm_memory_quota_bytes", vm="1") == 100_000_000
    assert value(s, "pxos_vm_memory_quota_bytes", vm="2") == 10_000_000
    assert value(s, "pxos_vm_compute_share_ratio", vm="1") == 0.5
    assert value(s, "pxos_vm_compute_cap_ratio", vm="1") == 0.8
    assert ("pxos_vm_compute_cap_ratio", frozenset({("vm", "2")})) not in s
    assert value(s, "pxos_vm_buffers", vm="1") == 1
    assert value(s, "pxos_device_pool_used_bytes") == hv.device_info().pool_used


def test_share_error_is_achieved_minus_entitlement(hv, exporter):
    """Issue 11: the per-VM share error (achieved minus target over the window)."""
    from hypervisor.metrics import share_entitlements

    hv.register_vm(1, 100, 60)
    hv.register_vm(2, 100, 20)
    hv.register_vm(3, 100, 10)  # no work: entitled to nothing, error 0
    for vm in (1, 2):
        k, binds = _matmul(hv, vm)
        for _ in range(3):
            assert hv.launch(vm, k.kernel_id, binds).wait(10).ok
    stats = {st.vm_id: st for st in hv.all_stats()}
    assert share_entitlements(stats.values()) == {1: 0.75, 2: 0.25}
    s, _ = parse(exporter.render())
    for vm, entitled in ((1, 0.75), (2, 0.25)):
        assert value(s, "pxos_vm_share_error_ratio", vm=str(vm)) == pytest.approx(
            stats[vm].achieved_share - entitled, abs=0.05)
    assert value(s, "pxos_vm_share_error_ratio", vm="3") == 0.0
    errors = [value(s, "pxos_vm_share_error_ratio", vm=v) for v in ("1", "2", "3")]
    assert sum(errors) == pytest.approx(0.0, abs=0.05)  # achieved shares sum to 1, entitlements too


def test_quota_change_shows_at_the_next_scrape(hv, exporter):
    hv.register_vm(1, 100, 50)
    hv.set_quota(1, memory_bytes=5_000_000, share_pct=25)
    s, _ = parse(exporter.render())
    assert value(s, "pxos_vm_memory_quota_bytes", vm="1") == 5_000_000
    assert value(s, "pxos_vm_compute_share_ratio", vm="1") == 0.25


def test_launches_counted_by_class_and_status_and_timed(hv, exporter):
    hv.register_vm(1, 100, 50)
    k, binds = _matmul(hv, 1)
    for _ in range(5):
        assert hv.launch(1, k.kernel_id, binds, class_hint="INTERACTIVE").wait(10).ok
    s, _ = parse(exporter.render())
    assert value(s, "pxos_vm_launches_total", vm="1", class_="INTERACTIVE", status="ok") == 5
    assert value(s, "pxos_launch_latency_seconds_count", vm="1") == 5
    stats = hv.stats(1)
    assert value(s, "pxos_vm_device_seconds_total", vm="1") == pytest.approx(stats.device_seconds_total)
    assert value(s, "pxos_vm_device_seconds_total", vm="1") > 0
    assert value(s, "pxos_scheduler_launches_total") == 5


def test_cancelled_launches_have_their_own_status(hv, exporter):
    hv.register_vm(1, 200, 50)
    (k,) = hv.compile(1, HEAVY)
    a, c = hv.alloc(1, "float32", (192, 192)), hv.alloc(1, "float32", (192, 192))
    done = [hv.launch(1, k.kernel_id, {"a": a.handle, "c": c.handle}) for _ in range(12)]
    hv.reset_vm(1)
    results = [d.wait(30) for d in done]
    cancelled = sum(r.status == "PXOS_S_CANCELLED" for r in results)
    assert cancelled >= 1  # twelve launches of tens of ms cannot all finish before the reset
    s, _ = parse(exporter.render())
    counted = {dict(lab)["status"]: v for (name, lab), v in s.items() if name == "pxos_vm_launches_total"}
    assert counted.get("cancelled") == cancelled
    assert sum(counted.values()) == 12
    assert value(s, "pxos_vm_launches_failed_total", vm="1") == hv.stats(1).launches_failed


def test_vm_switches_feed_the_histogram(hv, exporter):
    hv.register_vm(1, 200, 50)
    hv.register_vm(2, 200, 50)
    jobs = []
    for vm in (1, 2):
        (k,) = hv.compile(vm, HEAVY)
        a, c = hv.alloc(vm, "float32", (128, 128)), hv.alloc(vm, "float32", (128, 128))
        jobs.append((vm, k, {"a": a.handle, "c": c.handle}))
    pending = [hv.launch(vm, k.kernel_id, b) for _ in range(6) for vm, k, b in jobs]
    for p in pending:
        assert p.wait(60).ok
    s, _ = parse(exporter.render())
    assert hv.dispatcher.switches > 0
    assert value(s, "pxos_vm_switch_seconds_count") == hv.dispatcher.switches
    assert value(s, "pxos_scheduler_vm_switches_total") == hv.dispatcher.switches
    switches_in = value(s, "pxos_vm_switches_in_total", vm="1") + value(s, "pxos_vm_switches_in_total", vm="2")
    assert switches_in == hv.dispatcher.switches


def test_extra_keys_get_their_names_and_unknown_ones_are_kept(hv, exporter, monkeypatch):
    # VMStats.extra is filled by the overcommit memory manager; stand in for its numbers.
    monkeypatch.setattr(hv.memory, "vm_extra", lambda vm_id: {
        "prefetch_hits": 7, "prefetch_misses": 3, "stall_seconds": 0.25, "h2d_bytes": 4096,
        "something_new": 1.5, "label": "not a number"})
    hv.register_vm(4, 100, 10)
    s, types = parse(exporter.render())
    assert value(s, "pxos_vm_prefetch_hits_total", vm="4") == 7
    assert value(s, "pxos_vm_prefetch_misses_total", vm="4") == 3
    assert value(s, "pxos_vm_stall_seconds_total", vm="4") == 0.25
    assert value(s, "pxos_vm_h2d_bytes_total", vm="4") == 4096
    assert value(s, "pxos_vm_extra", vm="4", key="something_new") == 1.5
    assert not any(dict(lab).get("key") == "label" for (_, lab) in s)
    assert all(name in types for name, _, _ in EXTRA_METRICS.values())


def test_unregistered_vm_leaves_no_series(hv, exporter):
    hv.register_vm(1, 100, 50)
    k, binds = _matmul(hv, 1)
    assert hv.launch(1, k.kernel_id, binds).wait(10).ok
    hv.unregister_vm(1)
    s, _ = parse(exporter.render())
    assert not [key for key in s if ("vm", "1") in key[1]]


def test_a_failing_read_does_not_break_the_scrape(hv, exporter, monkeypatch):
    def broken():
        raise RuntimeError("boom")

    monkeypatch.setattr(hv, "all_stats", broken)
    s, _ = parse(exporter.render())
    assert value(s, "pxos_exporter_errors_total") == 1
    assert value(s, "pxos_vm_switch_seconds_count") == 0


def test_transport_status_per_vm(hv):
    # what VhostUserTransport.status() reports for an attached VM (the far end of QEMU's socket)
    status = {3: {"socket": "/run/pxos/vm3.sock", "connected": True, "requests_served": 41, "errors": 2,
                  "device": {"drm_contexts": 2, "fence_waits_total": 5, "launches_submitted_inline_total": 9,
                             "launches_run_inline_total": 7, "launches_lock_busy_total": 1}}}
    m = MetricsExporter(hv, transport_status=lambda: status)
    s, _ = parse(m.render())
    assert value(s, "pxos_transport_connected", vm="3") == 1
    assert value(s, "pxos_transport_requests_total", vm="3") == 41
    assert value(s, "pxos_transport_errors_total", vm="3") == 2
    assert value(s, "pxos_transport_drm_contexts", vm="3") == 2  # DRM transport (issue 12)
    assert value(s, "pxos_transport_fence_waits_total", vm="3") == 5
    # the LAUNCH fast path (issue 14): what the VM's loop thread did with the LAUNCHes it took
    assert value(s, "pxos_transport_fast_path_launches_total", vm="3", outcome="ran_on_loop") == 7
    assert value(s, "pxos_transport_fast_path_launches_total", vm="3", outcome="queued_from_loop") == 2
    assert value(s, "pxos_transport_fast_path_launches_total", vm="3", outcome="lock_busy") == 1
    m.stop()


def test_serves_over_http_on_a_free_port_and_stops(hv):
    m = MetricsExporter(hv)
    host, port = m.serve("127.0.0.1:0")
    assert port > 0
    hv.register_vm(9, 100, 10)
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as resp:
        assert resp.status == 200
        s, _ = parse(resp.read())
    assert value(s, "pxos_vm_memory_quota_bytes", vm="9") == 100_000_000
    m.stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=2)


def test_a_taken_port_is_a_config_error(hv):
    a, b = MetricsExporter(hv), MetricsExporter(hv)
    _, port = a.serve("127.0.0.1:0")
    with pytest.raises(ConfigError, match="cannot listen"):
        b.serve(f"127.0.0.1:{port}")
    a.stop()
    b.stop()


def test_two_exporters_with_their_own_registries(hv):
    a, b = MetricsExporter(hv), MetricsExporter(hv)
    assert a.registry is not b.registry
    a.stop()
    b.stop()


@pytest.mark.parametrize("address", ["9464", "localhost", "127.0.0.1:http", ":9464", "127.0.0.1:70000"])
def test_bad_address_is_a_config_error(hv, address):
    m = MetricsExporter(hv)
    with pytest.raises(ConfigError, match="HOST:PORT"):
        m.serve(address)
    m.stop()


@pytest.mark.parametrize("backend", ["numpy", pytest.param("wgpu", marks=pytest.mark.wgpu)])
def test_device_info_names_the_adapter_and_the_time_source(backend):
    h = Hypervisor(backend=backend, device_pool_bytes=16 << 20)
    m = MetricsExporter(h)
    try:
        s, _ = parse(m.render())
        d = h.device_info()
        labels = {"backend": backend, "device": d.device_name, "vendor": d.vendor, "api": d.api,
                  "time_source": d.time_source}
        assert value(s, "pxos_device_info", **labels) == 1
        if backend == "numpy":
            assert (d.api, d.time_source) == ("host", "thread-cpu-time")
        else:  # lavapipe in CI: a Vulkan adapter with timestamp queries; a GPU's driver elsewhere
            assert d.api in ("Vulkan", "Metal", "D3D12") and d.device_name and d.vendor
            assert d.time_source in ("timestamp-query", "host-clock")
    finally:
        m.stop()
        h.stop()
