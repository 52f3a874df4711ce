"""Prometheus metrics of pxos-hvd: the only module that imports prometheus_client.

Two sources, no double bookkeeping (docs/metrics.md lists every metric):

- a custom collector reads what the hypervisor already counts (``hv.all_stats()``,
  ``hv.device_info()``, the dispatcher's totals, ``VMStats.extra``) at scrape time, so
  gauges and counters are exactly the hypervisor's numbers at that moment;
- histograms, and launch counts by class and status (which the hypervisor does not break
  down), are fed from the hypervisor's events (``launch_completed``, ``vm_switch``).

Every series exists from the start, even while no VM is registered or nothing has run.
Names follow ``pxos_<subsystem>_<name>_<unit>``, counters end in ``_total``, the label
``vm`` is the VM id as a string.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import generate_latest, make_wsgi_app
from prometheus_client.registry import Collector

from .errors import ConfigError
from .types import Event

log = logging.getLogger("pxos.metrics")

# Launch latency (enqueue to completion): from tens of microseconds (tiny kernels on an
# idle device) to tens of seconds (a BATCH launch queued behind others).
LATENCY_BUCKETS = (50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3,
                   250e-3, 500e-3, 1.0, 2.5, 5.0, 10.0, 30.0)
# VM switch gaps: microseconds when the next launch is ready, milliseconds when memory
# has to move first (overcommit).
SWITCH_BUCKETS = (1e-6, 2.5e-6, 5e-6, 10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3,
                  5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3)

# A VM's move between devices: a millisecond for a few MB, seconds for many GB.
MOVE_BUCKETS = (1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# VMStats.extra keys (filled by the memory manager once overcommit lands) with their own
# metric: key -> (name, "counter" | "gauge", help). Any other key is exported as
# pxos_vm_extra{vm,key} so nothing the hypervisor reports is lost.
EXTRA_METRICS: dict[str, tuple[str, str, str]] = {
    "h2d_bytes": ("pxos_vm_h2d_bytes_total", "counter", "Bytes copied host to device for the VM's buffers"),
    "d2h_bytes": ("pxos_vm_d2h_bytes_total", "counter", "Bytes copied device to host (write-back of dirty buffers)"),
    "prefetch_hits": ("pxos_vm_prefetch_hits_total", "counter",
                      "Launches that found every buffer resident or already on its way (prefetched)"),
    "prefetch_misses": ("pxos_vm_prefetch_misses_total", "counter",
                        "Launches that had to fetch a buffer on demand"),
    "stall_seconds": ("pxos_vm_stall_seconds_total", "counter",
                      "Seconds the device waited for this VM's buffers to arrive"),
    "evictions": ("pxos_vm_evictions_total", "counter", "Buffers evicted from the device to host RAM"),
    "lookahead_depth": ("pxos_vm_lookahead_depth", "gauge", "Current adaptive prefetch look-ahead depth"),
    "prefetch_inflight_bytes": ("pxos_vm_prefetch_inflight_bytes", "gauge",
                                "Bytes of host-to-device copies in flight"),
    "kernel_host_bytes": ("pxos_vm_kernel_host_bytes", "gauge",
                          "Host memory charged for the VM's compiled kernels (per-VM budget)"),
    "held_after_reset_bytes": ("pxos_vm_held_after_reset_bytes", "gauge",
                               "Bytes a reset released that a running launch still holds (not usage)"),
}


def _status_label(status: str) -> str:
    """``PXOS_S_OK`` -> ``ok``, ``PXOS_S_NO_DEVICE_MEMORY`` -> ``no_device_memory``."""
    return status.removeprefix("PXOS_S_").lower() or "unknown"


class _HypervisorCollector(Collector):
    """Reads the hypervisor's own counters at scrape time."""

    def __init__(self, hv, transport_status: Callable[[], dict[int, dict]] | None):
        self.hv = hv
        self.transport_status = transport_status
        self.errors = 0

    def collect(self):
        def gauge(name, doc, labels=("vm",)):
            return GaugeMetricFamily(name, doc, labels=list(labels))

        def counter(name, doc, labels=("vm",)):  # name without _total; the family adds it
            return CounterMetricFamily(name, doc, labels=list(labels))

        fam = {
            "device_seconds": counter("pxos_vm_device_seconds", "Device time charged to the VM, seconds"),
            "launches_failed": counter("pxos_vm_launches_failed", "Launches of the VM that did not succeed"),
            "switches_in": counter("pxos_vm_switches_in", "VM switches to this VM (the device came from another)"),
            "mem": gauge("pxos_vm_memory_bytes", "Bytes the VM uses: live buffers plus running temporaries"),
            "quota": gauge("pxos_vm_memory_quota_bytes", "The VM's memory quota (its virtual GPU memory)"),
            "mem_dev": gauge("pxos_vm_memory_device_bytes", "Bytes of the VM resident on the device"),
            "mem_host": gauge("pxos_vm_memory_host_bytes", "Bytes of the VM living in host RAM only"),
            "share": gauge("pxos_vm_compute_share_ratio", "The VM's compute share (target), 0..1"),
            "cap": gauge("pxos_vm_compute_cap_ratio", "The VM's hard cap, 0..1 (absent: no cap)"),
            "achieved": gauge("pxos_vm_achieved_share_ratio",
                              "The VM's part of busy device time over the scheduler window, 0..1"),
            "share_error": gauge("pxos_vm_share_error_ratio",
                                 "Achieved share minus the share the VM is entitled to among the VMs "
                                 "that had work in the window, -1..1"),
            "queue": gauge("pxos_vm_queue_depth", "Launches queued for the VM, not yet started"),
            "inflight": gauge("pxos_vm_inflight_launches", "Launches of the VM queued or running"),
            "buffers": gauge("pxos_vm_buffers", "Live buffers of the VM"),
            "kernels": gauge("pxos_vm_kernels", "Compiled kernels the VM holds"),
            "idle": gauge("pxos_vm_idle", "1 while the VM has said it is idle"),
            "extra": gauge("pxos_vm_extra", "Other figures the hypervisor reports per VM", ("vm", "key")),
            "on_device": gauge("pxos_vm_device", "The id of the device the VM is placed on ([daemon] devices)"),
        }
        extra_fams = {
            key: (counter(name.removesuffix("_total"), doc) if kind == "counter" else gauge(name, doc))
            for key, (name, kind, doc) in EXTRA_METRICS.items()
        }
        transport = {
            "connected": gauge("pxos_transport_connected", "1 while the VM's QEMU is connected"),
            "requests": counter("pxos_transport_requests", "Requests the VM's device has handled"),
            "errors": counter("pxos_transport_errors", "Requests of the VM's device that failed"),
            "drm_contexts": gauge("pxos_transport_drm_contexts",
                                  "Contexts open on the VM's device (DRM transport: one per render-node session)"),
            "fence_waits": counter("pxos_transport_fence_waits",
                                   "Fenced answers the VM's device held until an earlier fence completed"),
            "fast_path": counter("pxos_transport_fast_path_launches",
                                 "LAUNCHes the VM's loop thread took itself (issue 14): ran there, queued from "
                                 "there, or sent to the worker because the hypervisor's lock was busy",
                                 ("vm", "outcome")),
        }
        device = {
            "pool": GaugeMetricFamily("pxos_device_pool_bytes", "Device memory pxOS may use"),
            "pool_used": GaugeMetricFamily("pxos_device_pool_used_bytes", "Device memory in use (all VMs)"),
            "host_budget": GaugeMetricFamily("pxos_device_host_budget_bytes", "Host RAM budget for overcommit"),
            "host_used": GaugeMetricFamily("pxos_device_host_used_bytes", "Host RAM holding evicted buffers"),
            "info": GaugeMetricFamily("pxos_device_info", "The executor backend and device (always 1)",
                                      labels=["backend", "device", "vendor", "api", "time_source"]),
        }
        per_dev = {
            "pool": gauge("pxos_devices_pool_bytes", "Device memory pxOS may use, per device", ("device",)),
            "pool_used": gauge("pxos_devices_pool_used_bytes", "Device memory in use, per device", ("device",)),
            "util": gauge("pxos_devices_utilisation_ratio", "Busy fraction of the device over the scheduler "
                          "window, 0..1", ("device",)),
            "share": gauge("pxos_devices_share_ratio", "Shares of the VMs placed on the device, summed, 0..1",
                           ("device",)),
            "vms": gauge("pxos_devices_vms", "VMs placed on the device", ("device",)),
            "queue": gauge("pxos_devices_queue_depth", "Launches queued on the device", ("device",)),
            "busy": counter("pxos_devices_busy_seconds", "Device time of the launches it ran, seconds", ("device",)),
            "launches": counter("pxos_devices_launches", "Launches the device ran", ("device",)),
        }
        device.update({f"per_{k}": v for k, v in per_dev.items()})
        sched = {
            "busy": CounterMetricFamily("pxos_scheduler_busy_seconds", "Device time of all launches, seconds"),
            "launches": CounterMetricFamily("pxos_scheduler_launches", "Launches run by the dispatcher"),
            "switches": CounterMetricFamily("pxos_scheduler_vm_switches", "Times the device went from one VM to another"),
            "preemptions": CounterMetricFamily("pxos_scheduler_preemptions",
                                               "Times a running launch yielded to a more urgent VM's at an op boundary"),
            "lookahead": GaugeMetricFamily("pxos_scheduler_lookahead_depth",
                                           "Launches the scheduler plans ahead (prefetch reads them; adapted)"),
        }
        models = {
            "bytes": gauge("pxos_model_bytes", "Bytes of a shared model, held once for every VM (charged to the "
                           "pool, not to a VM's quota)", ("model",)),
            "device": gauge("pxos_model_device_bytes", "Bytes of a shared model resident on the device",
                            ("model",)),
            "users": gauge("pxos_model_users", "VMs that have a shared model open", ("model",)),
            "opens": gauge("pxos_model_open_sessions", "Guest sessions that have a shared model open",
                           ("model",)),
            "devices": gauge("pxos_model_devices", "Devices holding a copy of the shared model (one each)",
                             ("model",)),
        }
        errors = CounterMetricFamily("pxos_exporter_errors", "Scrapes that could not read the hypervisor")
        try:
            self._fill(fam, extra_fams, transport, device, sched)
            for m in self.hv.list_models():
                models["bytes"].add_metric([m.name], m.nbytes)
                models["device"].add_metric([m.name], m.device_bytes)
                models["users"].add_metric([m.name], len(m.users))
                models["opens"].add_metric([m.name], m.opens)
                models["devices"].add_metric([m.name], len(self.hv.model_devices(m.name)))
        except Exception:  # a failing read must not take the whole /metrics down
            self.errors += 1
            log.exception("reading the hypervisor for /metrics failed")
        errors.add_metric([], self.errors)
        yield from fam.values()
        yield from extra_fams.values()
        yield from transport.values()
        yield from device.values()
        yield from sched.values()
        yield from models.values()
        yield errors

    def _fill(self, fam, extra_fams, transport, device, sched) -> None:
        hv = self.hv
        all_stats = hv.all_stats()
        entitled = share_entitlements(all_stats)
        for s in all_stats:
            vm = [str(s.vm_id)]
            fam["device_seconds"].add_metric(vm, s.device_seconds_total)
            fam["launches_failed"].add_metric(vm, s.launches_failed)
            fam["switches_in"].add_metric(vm, s.vm_switches_in)
            fam["mem"].add_metric(vm, s.memory_used)
            fam["quota"].add_metric(vm, s.memory_quota)
            fam["mem_dev"].add_metric(vm, s.memory_device_bytes)
            fam["mem_host"].add_metric(vm, s.memory_host_bytes)
            fam["share"].add_metric(vm, s.share_pct / 100.0)
            if s.cap_pct is not None:
                fam["cap"].add_metric(vm, s.cap_pct / 100.0)
            fam["achieved"].add_metric(vm, s.achieved_share)
            fam["share_error"].add_metric(vm, s.achieved_share - entitled.get(s.vm_id, 0.0))
            fam["queue"].add_metric(vm, s.queue_depth)
            fam["inflight"].add_metric(vm, s.inflight)
            fam["buffers"].add_metric(vm, s.buffers)
            fam["kernels"].add_metric(vm, s.kernels)
            fam["idle"].add_metric(vm, 1.0 if s.idle else 0.0)
            fam["on_device"].add_metric(vm, s.device)
            for key, value in s.extra.items():
                if isinstance(value, bool) or not isinstance(value, int | float):
                    continue
                if key in extra_fams:
                    extra_fams[key].add_metric(vm, value)
                else:
                    fam["extra"].add_metric(vm + [str(key)], value)
        if self.transport_status is not None:
            for vm_id, st in sorted((self.transport_status() or {}).items()):
                vm = [str(vm_id)]
                transport["connected"].add_metric(vm, 1.0 if st.get("connected") else 0.0)
                transport["requests"].add_metric(vm, st.get("requests_served", st.get("requests", 0)) or 0)
                transport["errors"].add_metric(vm, st.get("errors", 0) or 0)
                dev = st.get("device") or {}
                transport["drm_contexts"].add_metric(vm, dev.get("drm_contexts", 0) or 0)
                transport["fence_waits"].add_metric(vm, dev.get("fence_waits_total", 0) or 0)
                ran = dev.get("launches_run_inline_total", 0) or 0
                for outcome, n in (("ran_on_loop", ran),
                                   ("queued_from_loop", (dev.get("launches_submitted_inline_total", 0) or 0) - ran),
                                   ("lock_busy", dev.get("launches_lock_busy_total", 0) or 0)):
                    transport["fast_path"].add_metric(vm + [outcome], n)
        d = hv.device_info()
        device["pool"].add_metric([], d.pool_bytes)
        device["pool_used"].add_metric([], d.pool_used)
        device["host_budget"].add_metric([], d.host_budget)
        device["host_used"].add_metric([], d.host_used)
        device["info"].add_metric([d.backend, d.device_name, d.vendor, d.api, d.time_source], 1.0)
        for u in hv.device_stats():
            dev = [str(u.device)]
            device["per_pool"].add_metric(dev, u.info.pool_bytes)
            device["per_pool_used"].add_metric(dev, u.info.pool_used)
            device["per_util"].add_metric(dev, u.utilisation)
            device["per_share"].add_metric(dev, u.share_used / 100.0)
            device["per_vms"].add_metric(dev, u.vms)
            device["per_queue"].add_metric(dev, u.queue_depth)
            device["per_busy"].add_metric(dev, u.busy_seconds)
            device["per_launches"].add_metric(dev, u.launches)
        disp = hv.dispatcher
        sched["busy"].add_metric([], disp.busy_seconds)
        sched["launches"].add_metric([], disp.launches)
        sched["switches"].add_metric([], disp.switches)
        sched["preemptions"].add_metric([], disp.preemptions)
        sched["lookahead"].add_metric([], hv.lookahead_depth)


class _CompileCollector(Collector):
    """Compiles (hypervisor/compiling.py, compile_pool.py): where they ran, the workers."""

    def __init__(self, hv) -> None:
        self.hv = hv

    def collect(self):
        compiler = getattr(self.hv, "compiler", None)
        st = compiler.stats() if compiler is not None else {}
        n = lambda key: st.get(key, 0)  # noqa: E731
        done = CounterMetricFamily("pxos_compiles", "Compiles of sources the cache did not hold, by where they "
                                   "ran (inline: the VM's thread; pool: a worker process)", labels=["where"])
        done.add_metric(["inline"], n("inline"))
        done.add_metric(["pool"], n("pool"))
        yield done
        yield CounterMetricFamily("pxos_compile_cache_hits", "Compiles answered from the compile cache "
                                  "(process-wide)", value=n("cache_hits"))
        failed = CounterMetricFamily("pxos_compile_failures", "Pool compiles that failed: timeout (worker "
                                     "killed), crash (worker died), error (the compiler raised)", labels=["reason"])
        for reason, key in (("timeout", "timeouts"), ("crash", "crashes"), ("error", "errors")):
            failed.add_metric([reason], n(key))
        yield failed
        yield GaugeMetricFamily("pxos_compile_workers", "Compile worker processes running", value=n("workers"))
        yield GaugeMetricFamily("pxos_compile_workers_busy", "Compile workers compiling now", value=n("busy"))
        yield GaugeMetricFamily("pxos_compile_queue_depth", "Compiles waiting for a free worker", value=n("waiting"))
        yield CounterMetricFamily("pxos_compile_workers_started", "Compile workers started (at start-up, on "
                                  "demand, and in place of a killed or dead one)", value=n("started"))
        yield CounterMetricFamily("pxos_compile_worker_cpu_seconds", "CPU time compile workers spent on "
                                  "compiles", value=n("worker_cpu_seconds"))
        yield CounterMetricFamily("pxos_compile_queue_wait_seconds", "Time compiles waited for a free worker",
                                  value=n("queue_wait_seconds"))
        yield CounterMetricFamily("pxos_compile_budget_wait_seconds", "Time compiles waited for their VM's "
                                  "compile budget", value=n("budget_wait_seconds"))
        # The daemon's garbage collector ([scheduler] compile_gc_freeze keeps programs out of
        # its full collections): collections by generation, objects frozen now, epochs ended.
        import gc

        coll = CounterMetricFamily("pxos_gc_collections", "Python garbage collections of the daemon, by "
                                   "generation (2: full collections, each a pause of the whole daemon)",
                                   labels=["generation"])
        for g, st in enumerate(gc.get_stats()):
            coll.add_metric([str(g)], st["collections"])
        yield coll
        yield GaugeMetricFamily("pxos_gc_frozen_objects", "Objects in the collector's permanent generation "
                                "(compile_gc_freeze: skipped by full collections until the epoch ends)",
                                value=gc.get_freeze_count())
        epochs = compiler.gc.epochs if compiler is not None and getattr(compiler, "gc", None) is not None else 0
        yield CounterMetricFamily("pxos_compile_gc_epochs", "compile_gc_freeze epochs ended: the heap "
                                  "unfrozen and collected once", value=epochs)


class _AdvisorCollector(Collector):
    """The scheduling advisor's counters (hypervisor/advisor.py ``snapshot_stats``)."""

    def __init__(self, advisor=None) -> None:
        self.advisor = advisor  # None: a hypervisor without one (the series exist, all zero, mode off)

    def collect(self):
        from .advisor import LATENCY_BUCKETS as ADVISOR_BUCKETS
        from .advisor import OUTCOMES, AdvisorStats

        st = self.advisor.snapshot_stats() if self.advisor is not None else AdvisorStats("off", "", "", "closed")
        req = CounterMetricFamily("pxos_advisor_requests", "Requests to the advisor's endpoint, by outcome "
                                  "(ok, timeout, connection, http_status, invalid_json, stale, breaker_open)",
                                  labels=["outcome"])
        for outcome in sorted(set(OUTCOMES) | set(st.requests)):
            req.add_metric([outcome], st.requests.get(outcome, 0))
        yield req
        buckets, acc = [], 0
        for edge, n in zip((*ADVISOR_BUCKETS, float("inf")), st.latency_buckets, strict=True):
            acc += n
            buckets.append(("+Inf" if edge == float("inf") else repr(edge), acc))
        lat = HistogramMetricFamily("pxos_advisor_request_seconds",
                                    "Time from sending a request to having its answer (or giving up)")
        lat.add_metric([], buckets, st.latency_sum)
        yield lat
        yield CounterMetricFamily("pxos_advisor_advice_applied", "LLM advice applied (apply mode, or accepted)",
                                  value=st.applied)
        rej = CounterMetricFamily("pxos_advisor_advice_rejected", "LLM advice refused, by reason "
                                  "(unknown_vm, out_of_bounds, stale, operator, ...)", labels=["reason"])
        for reason in sorted({"unknown_vm", "out_of_bounds", "stale", "invalid_json", "operator"} | set(st.rejected)):
            rej.add_metric([reason], st.rejected.get(reason, 0))
        yield rej
        yield CounterMetricFamily("pxos_advisor_compared", "LLM advice compared with the heuristic's class",
                                  value=st.compared)
        yield GaugeMetricFamily("pxos_advisor_agreement_ratio", "Fraction of LLM advice whose class matched "
                                "the heuristic's (NaN before the first)",
                                value=st.agreement if st.agreement is not None else float("nan"))
        yield GaugeMetricFamily("pxos_advisor_breaker_open", "1 while the circuit breaker stops requests",
                                value=1.0 if st.breaker == "open" else 0.0)
        mode = GaugeMetricFamily("pxos_advisor_mode", "1 for the advisor's mode", labels=["mode"])
        for m in ("off", "suggest", "apply"):
            mode.add_metric([m], 1.0 if st.mode == m else 0.0)
        yield mode


class _HandoffCollector(Collector):
    """libvirt handoffs (hypervisor/domains.py ``stats``); all zero where the daemon takes
    none ([libvirt] handoff_socket unset), so the series always exist."""

    def __init__(self, handoff_stats: Callable[[], dict | None] | None = None) -> None:
        self.handoff_stats = handoff_stats

    def collect(self):
        st = self.handoff_stats() if self.handoff_stats is not None else None
        st = st or {"accepted": 0, "refused": 0, "domains": 0}
        total = CounterMetricFamily("pxos_libvirt_handoffs", "Connections pxos-vhost-gpu handed over, by result "
                                    "(accepted, refused)", labels=["result"])
        total.add_metric(["accepted"], st["accepted"])
        total.add_metric(["refused"], st["refused"])
        yield total
        yield GaugeMetricFamily("pxos_libvirt_domains", "libvirt domains served now (one VM each)",
                                value=st["domains"])


def share_entitlements(stats) -> dict[int, float]:
    """What each VM is entitled to (0..1) over the scheduler window: its share among the
    VMs that had work in it (used the device or have launches queued). A VM with no work is
    entitled to nothing: the scheduler is work-conserving and gives its part to the others."""
    active = [s for s in stats if s.achieved_share > 0 or s.queue_depth > 0]
    total: dict[int, float] = {}  # shares are of a device: entitlements too, per device
    for s in active:
        total[s.device] = total.get(s.device, 0.0) + s.share_pct
    return {s.vm_id: (s.share_pct / total[s.device] if total[s.device] > 0 else 0.0) for s in active}


class MetricsExporter:
    """``MetricsExporter(hv)``: registers pxOS metrics in ``registry`` (a fresh one when
    None) and follows the hypervisor's events; ``serve("127.0.0.1:9464")`` exposes them
    over HTTP (port 0 picks a free port), ``stop()`` ends both."""

    def __init__(self, hv, registry: CollectorRegistry | None = None, *,
                 transport_status: Callable[[], dict[int, dict]] | None = None, advisor=None,
                 handoff_stats: Callable[[], dict | None] | None = None):
        self.hv = hv
        self.registry = registry if registry is not None else CollectorRegistry()
        self.collector = _HypervisorCollector(hv, transport_status)
        self.registry.register(self.collector)
        self.registry.register(_AdvisorCollector(advisor))
        self.registry.register(_CompileCollector(hv))
        self.registry.register(_HandoffCollector(handoff_stats))
        self.launches = Counter("pxos_vm_launches", "Completed launches of the VM, by class and status",
                                ["vm", "class", "status"], registry=self.registry)
        self.latency = Histogram("pxos_launch_latency_seconds",
                                 "Launch latency, enqueue to completion, of successful launches",
                                 ["vm"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.vm_switch = Histogram("pxos_vm_switch_seconds",
                                   "Device idle gap when it goes from one VM's launch to another's",
                                   buckets=SWITCH_BUCKETS, registry=self.registry)
        self.move_pause = Histogram("pxos_vm_move_pause_seconds",
                                    "Pause of a VM moved to another device: its launches held until queued there",
                                    ["by"], buckets=MOVE_BUCKETS, registry=self.registry)
        self.move_bytes = Counter("pxos_vm_move_bytes", "Bytes of VMs' buffers moved between devices",
                                  registry=self.registry)
        self._lock = threading.Lock()  # guards the label bookkeeping below
        self._launch_labels: set[tuple[str, str, str]] = set()
        self._httpd = None
        self._thread: threading.Thread | None = None
        self.address: tuple[str, int] | None = None  # (host, port) once serving
        self._unsubscribe = hv.subscribe(self._on_event)

    def _on_event(self, ev: Event) -> None:
        if ev.kind == "launch_completed" and ev.vm_id is not None:
            vm = str(ev.vm_id)
            status = str(ev.detail.get("status", ""))
            labels = (vm, str(ev.detail.get("wclass", "")), _status_label(status))
            with self._lock:
                self._launch_labels.add(labels)
                self.launches.labels(*labels).inc()
                if status == "PXOS_S_OK":
                    self.latency.labels(vm).observe(ev.detail.get("total_ns", 0) / 1e9)
        elif ev.kind == "vm_switch":
            self.vm_switch.observe(float(ev.detail.get("gap_seconds", 0.0)))
        elif ev.kind == "vm_moved":
            self.move_pause.labels(str(ev.detail.get("by", "operator"))).observe(
                float(ev.detail.get("pause_seconds", 0.0)))
            self.move_bytes.inc(int(ev.detail.get("bytes", 0)))
        elif ev.kind == "vm_unregistered" and ev.vm_id is not None:
            self._forget_vm(str(ev.vm_id))

    def _forget_vm(self, vm: str) -> None:
        """Drop a removed VM's series so the label set does not grow with VM churn."""
        with self._lock:
            for labels in [lab for lab in self._launch_labels if lab[0] == vm]:
                self._launch_labels.discard(labels)
                self.launches.remove(*labels)
            try:
                self.latency.remove(vm)
            except KeyError:
                pass

    def render(self) -> bytes:
        """The text exposition format, exactly what GET /metrics returns."""
        return generate_latest(self.registry)

    def serve(self, address: str = "127.0.0.1:9464",
              ready: Callable[[], tuple[bool, str]] | None = None) -> tuple[str, int]:
        """Serve /metrics on ``host:port`` (``[::1]:9464`` for IPv6) from a thread of its
        own; returns the bound host and port. Also /healthz (200 while the process
        answers) and /readyz (200 when ``ready()`` says so, 503 with its reason
        otherwise); any other path is 404."""
        host, port = _split_address(address)
        server_cls = type("_MetricsServer", (_MetricsServer,),
                          {"address_family": socket.AF_INET6 if ":" in host else socket.AF_INET})
        try:
            self._httpd = make_server(host, port, _routes(make_wsgi_app(self.registry), ready), server_cls,
                                      handler_class=_QuietHandler)
        except OSError as exc:
            raise ConfigError(f"metrics: cannot listen on {address}: {exc.strerror or exc}") from exc
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="pxos-metrics", daemon=True)
        self._thread.start()
        self.address = (host, int(self._httpd.server_address[1]))
        return self.address

    def stop(self) -> None:
        self._unsubscribe()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            if self._thread is not None:
                self._thread.join(5.0)
            self._httpd = self._thread = self.address = None


def _routes(metrics_app, ready: Callable[[], tuple[bool, str]] | None):
    """The exporter's WSGI app: /metrics, /healthz, /readyz; 404 for the rest."""

    def text(start_response, status: str, body: str):
        data = (body + "\n").encode()
        start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                                ("Content-Length", str(len(data)))])
        return [data]

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return metrics_app(environ, start_response)
        if path == "/healthz":
            return text(start_response, "200 OK", "ok")
        if path == "/readyz":
            try:
                ok, why = ready() if ready is not None else (True, "ready")
            except Exception as exc:  # a broken check reads as not ready, never a 500 trace
                ok, why = False, f"readiness check failed: {exc}"
            return text(start_response, "200 OK" if ok else "503 Service Unavailable", why)
        return text(start_response, "404 Not Found", "not found: pxos-hvd serves /metrics, /healthz, /readyz")

    return app


class _MetricsServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a stuck scraper never holds up shutdown


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # one line per scrape is noise in the daemon's log
        pass


def _split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535 or not host:
        raise ConfigError(f"metrics address must be HOST:PORT (e.g. 127.0.0.1:9464), got {address!r}")
    return host.strip("[]"), int(port)
