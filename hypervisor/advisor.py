"""The scheduling advisor's worker: asks an LLM for classes and shares, off the hot path.

A daemon thread wakes every ``WAKE_SECONDS`` (at most ``interval_seconds``), builds a
summary of every VM from what the hypervisor already counts, and asks the endpoint when
the interval has passed or a VM's workload changed (its heuristic class moved). The answer
is validated (scheduler/advisor) and kept per VM beside the heuristic's; in ``apply`` mode
it goes through ``Hypervisor.set_quota`` (the path of ``pxosctl quota set``) once it has
stood ``dwell_seconds`` and the VM's ``cooldown_seconds`` have passed; in ``suggest`` mode
an operator accepts or rejects it. The dispatcher never calls in here and never waits on
it: the only shared state is read under the hypervisor's lock for a few microseconds per VM.
docs/advisor.md is the operator's view.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from scheduler.advisor import (
    Advice,
    AdvisorRejected,
    CircuitBreaker,
    Reason,
    Rejection,
    VMSummary,
    answer_schema,
    build_messages,
    heuristic_advice,
    parse_answer,
)
from scheduler.advisor.summary import MAX_VMS_PER_REQUEST

from . import errors as E
from .advisor_http import EndpointClient, read_api_key

if TYPE_CHECKING:
    from .config import AdvisorSection
    from .core import Hypervisor

log = logging.getLogger("pxos.advisor")

#: The worker looks at the VMs this often (cheap: no request unless due or changed).
WAKE_SECONDS = 2.0
#: Request latency histogram edges (seconds): a hosted API answers in ~1 s, a small local
#: model on a few CPU cores in ~10 s.
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
OUTCOMES = ("ok",) + tuple(r.value for r in Reason if r not in (Reason.UNKNOWN_VM, Reason.OUT_OF_BOUNDS))


def _p99(values: list[int]) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return float(values[min(len(values) - 1, round(0.99 * (len(values) - 1)))])


@dataclass(frozen=True)
class VMBounds:
    """What the operator lets the advisor do to one VM (from its [[vm]] table)."""

    share_min: float
    share_max: float
    description: str = ""
    class_pinned: bool = False  # the operator set default_class: the advisor never changes it
    cap_min: float | None = None  # None: the advisor never changes the cap
    cap_max: float | None = None


@dataclass
class VMAdviceState:
    """One VM's row of ``pxosctl advice``."""

    vm_id: int
    heuristic: Advice
    llm: Advice | None = None
    llm_at: float | None = None  # wall clock of the answer
    status: str = "heuristic"  # heuristic | suggested | dwelling | applied | accepted | rejected | refused
    detail: str = ""  # why it is refused / waiting
    first_seen: float = 0.0  # monotonic: when this same advice was first given (dwell)
    last_applied: float | None = None  # monotonic (cool-down)
    snapshot: tuple = ()  # the VM's share, cap, class when it was asked (staleness)

    @property
    def current(self) -> Advice:
        return self.llm if self.llm is not None and self.status not in ("rejected", "refused") else self.heuristic


@dataclass
class AdvisorStats:
    mode: str
    endpoint: str
    model: str
    breaker: str
    requests: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    latency_buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0
    latency_count: int = 0
    applied: int = 0
    rejected: dict[str, int] = field(default_factory=dict)  # advice refused, by reason (+ "operator")
    compared: int = 0  # LLM advice compared with the heuristic's
    agreed: int = 0
    last_error: str = ""

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.compared if self.compared else None


class Advisor:
    def __init__(self, hv: Hypervisor, section: AdvisorSection, bounds: dict[int, VMBounds] | None = None, *,
                 clock: Callable[[], float] = time.monotonic, client: EndpointClient | None = None) -> None:
        self.hv, self.section = hv, section
        self.mode = section.mode
        self._bounds = dict(bounds or {})
        self._clock = clock
        if client is None and self.mode != "off":  # off: no key is read, nothing is ever sent
            client = EndpointClient(
                section.endpoint, section.model, timeout=section.timeout_seconds, max_tokens=section.max_tokens,
                response_format=section.response_format,
                api_key=read_api_key(section.api_key_file, section.api_key_env))
        self.client = client
        self.breaker = CircuitBreaker(section.breaker_failures, section.breaker_open_seconds,
                                      max(section.breaker_open_seconds, 600.0), clock=clock)
        self._lock = threading.Lock()  # the advisor's own state; never held while calling out
        self._state: dict[int, VMAdviceState] = {}
        self._prev: dict[int, tuple] = {}  # vm -> (t, launches, device s, flops, bytes)
        self._last_ask: float | None = None
        self._asked_classes: dict[int, str] = {}
        self.stats = AdvisorStats(self.mode, section.endpoint, section.model, self.breaker.state)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> Advisor:
        if self.mode != "off" and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="pxos-advisor", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0, *, abort: bool = True) -> None:
        """Stop the worker; ``abort`` ends a request in flight at once (else it runs to its
        answer or its timeout first)."""
        self._stop.set()
        self._wake.set()
        if abort and self.client is not None:
            self.client.abort()
        if self._thread is not None:
            self._thread.join(timeout)

    def poke(self) -> None:
        """Ask at the next wake-up, whatever the interval says (VMs never seen before: at
        the one after, once their rates have a baseline)."""
        self._last_ask = None
        self._wake.set()

    def set_bounds(self, vm_id: int, bounds: VMBounds) -> None:
        with self._lock:
            self._bounds[vm_id] = bounds

    def forget(self, vm_id: int) -> None:
        """The VM is gone: drop its advice, bounds and rates."""
        with self._lock:
            self._bounds.pop(vm_id, None)
            self._state.pop(vm_id, None)
        self._prev.pop(vm_id, None)

    def _run(self) -> None:
        wake = min(WAKE_SECONDS, self.section.interval_seconds)
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # the worker must outlive any bug in one round
                log.exception("advisor round failed")
            self._wake.wait(wake)
            self._wake.clear()

    # ---------------------------------------------------------------- rounds
    def tick(self) -> str | None:
        """One look: ask if due (interval passed or a workload changed); -> the outcome or None.
        A VM seen for the first time only sets the baseline of its rates: it is asked about
        at the next look, with figures over a real interval."""
        fresh = [vm_id for vm_id in self._vm_ids() if vm_id not in self._prev]
        summaries = self.summaries()
        if fresh or not summaries:
            return None
        now = self._clock()
        since = math.inf if self._last_ask is None else now - self._last_ask
        # a workload change asks early, but not more often than a quarter interval (a VM
        # whose figures sit on a threshold must not turn the interval into the wake period)
        changed = since >= self.section.interval_seconds / 4 and any(
            self._asked_classes.get(s.vm_id) != self._heuristic_of(s) for s in summaries)
        if since < self.section.interval_seconds and not changed:
            return None
        return self.ask(summaries)

    def _vm_ids(self) -> list[int]:
        with self.hv._lock:
            return list(self.hv._vms)

    @staticmethod
    def _heuristic_of(s: VMSummary) -> str:
        return heuristic_advice(s).wclass.name

    def ask(self, summaries: list[VMSummary]) -> str:
        """One request about ``summaries``; -> its outcome ("ok" or a Reason's value)."""
        summaries = summaries[:MAX_VMS_PER_REQUEST]
        self._last_ask = self._clock()
        self._asked_classes = {s.vm_id: self._heuristic_of(s) for s in summaries}
        with self._lock:
            for s in summaries:
                st = self._state.get(s.vm_id)
                h = heuristic_advice(s)
                if st is None:
                    self._state[s.vm_id] = st = VMAdviceState(s.vm_id, h)
                st.heuristic = h
                st.snapshot = self._snapshot(s.vm_id)
        if self.client is None:
            raise E.InvalidArgument("the advisor is off: nothing is asked")
        if not self.breaker.allow():
            self._count(Reason.BREAKER_OPEN.value, None)
            return Reason.BREAKER_OPEN.value
        started = self._clock()
        try:
            text = self.client.complete(build_messages(summaries), answer_schema(
                [s.vm_id for s in summaries], allow_share=any(s.share_may_move for s in summaries),
                allow_cap=any(s.cap_may_move for s in summaries)))
            elapsed = self._clock() - started
            if elapsed > self.section.stale_seconds:
                raise AdvisorRejected(Reason.STALE, f"the answer took {elapsed:.1f} s "
                                                    f"(stale_seconds {self.section.stale_seconds:g})")
            accepted, refused = parse_answer(text, summaries)
        except AdvisorRejected as exc:
            self.breaker.failure()
            self._count(exc.reason.value, self._clock() - started, str(exc))
            log.warning("advisor: request refused: %s", exc)
            return exc.reason.value
        self.breaker.success()
        self._count("ok", self._clock() - started)
        for r in refused:
            self._refuse(r)
        for a in accepted:
            self._take(a)
        return "ok"

    def _count(self, outcome: str, latency: float | None, error: str = "") -> None:
        with self._lock:
            st = self.stats
            st.requests[outcome] = st.requests.get(outcome, 0) + 1
            st.breaker = self.breaker.state
            if error:
                st.last_error = error[:200]
            if latency is not None:
                st.latency_sum += latency
                st.latency_count += 1
                i = next((i for i, edge in enumerate(LATENCY_BUCKETS) if latency <= edge), len(LATENCY_BUCKETS))
                st.latency_buckets[i] += 1

    def _refuse(self, r: Rejection) -> None:
        log.info("advisor: advice for VM %s refused: %s: %s", r.vm_id, r.reason.value, r.detail)
        with self._lock:
            self.stats.rejected[r.reason.value] = self.stats.rejected.get(r.reason.value, 0) + 1
            st = self._state.get(r.vm_id) if r.vm_id is not None else None
            if st is not None:
                st.status, st.detail = "refused", f"{r.reason.value}: {r.detail}"

    def _take(self, a: Advice) -> None:
        """Validated advice about a VM that was asked about."""
        now = self._clock()
        with self._lock:
            st = self._state[a.vm_id]
        if st.snapshot != self._snapshot(a.vm_id):
            self._refuse(Rejection(a.vm_id, Reason.STALE, "the VM's share, cap or class changed since it was asked"))
            return
        with self._lock:
            same = st.llm is not None and (st.llm.wclass, st.llm.share, st.llm.cap) == (a.wclass, a.share, a.cap)
            if not same:
                st.first_seen = now
            st.llm, st.llm_at = a, time.time()
            st.status, st.detail = "suggested", ""
            self.stats.compared += 1
            self.stats.agreed += a.wclass == st.heuristic.wclass
        if self.mode == "apply":
            self._maybe_apply(a.vm_id, now)

    # ---------------------------------------------------------------- applying
    def _maybe_apply(self, vm_id: int, now: float) -> None:
        bounds = self._bounds_of(vm_id)
        vm_class = self._vm_class(vm_id)
        with self._lock:
            st = self._state[vm_id]
            a = st.llm
            if a is None:
                return
            if (bounds.class_pinned or a.wclass.name == vm_class) and a.share is None and a.cap is None:
                st.status, st.detail = "applied", "already in effect"  # nothing to change: no dwell, no cool-down
                return
            if now - st.first_seen < self.section.dwell_seconds:
                st.status = "dwelling"
                st.detail = f"applied once it has stood {self.section.dwell_seconds:g} s"
                return
            if st.last_applied is not None and now - st.last_applied < self.section.cooldown_seconds:
                st.status = "dwelling"
                st.detail = f"cool-down: {self.section.cooldown_seconds - (now - st.last_applied):.0f} s left"
                return
        self._apply(vm_id, "apply")

    def _apply(self, vm_id: int, how: str) -> bool:
        bounds = self._bounds_of(vm_id)  # (reads the hypervisor: never under our lock)
        with self._lock:
            st = self._state.get(vm_id)
            advice = st.llm if st is not None else None
        if st is None or advice is None:
            raise E.NotFound(f"no LLM advice for VM {vm_id}")
        wclass = None if bounds.class_pinned or advice.wclass.name == self._vm_class(vm_id) else advice.wclass
        if wclass is None and advice.share is None and advice.cap is None:
            with self._lock:
                st.status, st.detail = ("accepted" if how == "accept" else "applied"), "already in effect"
            return True
        try:
            self.hv.set_quota(vm_id, share_pct=advice.share, cap_pct=advice.cap if advice.cap is not None else False,
                              default_class=wclass if wclass is not None else False)
        except E.PxosError as exc:  # e.g. the shares would sum past 100%: the heuristic stands
            self._refuse(Rejection(vm_id, Reason.OUT_OF_BOUNDS, str(exc)[:200]))
            return False
        with self._lock:
            st.status, st.detail, st.last_applied = ("accepted" if how == "accept" else "applied"), "", self._clock()
            st.snapshot = self._snapshot(vm_id)
            self.stats.applied += 1
        self.hv._emit("advice_applied", vm_id, source=advice.source, how=how,
                      wclass=wclass.name if wclass is not None else None, share=advice.share, cap=advice.cap,
                      rationale=advice.rationale)
        log.info("advisor: VM %d: %s (%s): class %s share %s cap %s: %s", vm_id, how, advice.source,
                 wclass.name if wclass is not None else "-", advice.share, advice.cap, advice.rationale)
        return True

    def accept(self, vm_id: int) -> VMAdviceState:
        """Suggest mode: an operator takes the VM's LLM advice (through set_quota)."""
        if self.mode != "suggest":
            raise E.InvalidArgument(f"advice accept works in suggest mode; the advisor is in {self.mode!r}")
        self._apply(vm_id, "accept")
        return self.row(vm_id)

    def reject(self, vm_id: int) -> VMAdviceState:
        if self.mode != "suggest":
            raise E.InvalidArgument(f"advice reject works in suggest mode; the advisor is in {self.mode!r}")
        with self._lock:
            st = self._state.get(vm_id)
            if st is None or st.llm is None:
                raise E.NotFound(f"no LLM advice for VM {vm_id}")
            st.status, st.detail = "rejected", "an operator rejected it"
            self.stats.rejected["operator"] = self.stats.rejected.get("operator", 0) + 1
        self.hv._emit("advice_rejected", vm_id, source=st.llm.source, rationale=st.llm.rationale)
        return self.row(vm_id)

    # ---------------------------------------------------------------- views
    def row(self, vm_id: int) -> VMAdviceState:
        with self._lock:
            st = self._state.get(vm_id)
            if st is None:
                raise E.NotFound(f"no advice for VM {vm_id} yet")
            return replace(st)

    def rows(self) -> list[VMAdviceState]:
        """Every registered VM's row; a VM never asked about gets the heuristic's advice on
        its figures so far (the rates' baseline is left alone)."""
        fresh = {s.vm_id: s for s in self.summaries(advance=False)}
        with self._lock:
            out = []
            for vm_id in sorted(fresh):
                st = self._state.get(vm_id)
                out.append(replace(st) if st is not None else VMAdviceState(vm_id, heuristic_advice(fresh[vm_id])))
            return out

    def snapshot_stats(self) -> AdvisorStats:
        with self._lock:
            s = self.stats
            s.breaker = self.breaker.state
            return replace(s, requests=dict(s.requests), latency_buckets=list(s.latency_buckets),
                           rejected=dict(s.rejected))

    # ---------------------------------------------------------------- reading the hypervisor
    def _bounds_of(self, vm_id: int) -> VMBounds:
        with self._lock:
            b = self._bounds.get(vm_id)
        if b is None:
            share = self._snapshot(vm_id)[0] if self._snapshot(vm_id) else 0.0
            b = VMBounds(share, share)
        return b

    def _snapshot(self, vm_id: int) -> tuple:
        hv = self.hv
        with hv._lock:
            vm = hv._vms.get(vm_id)
            return () if vm is None else (vm.share, vm.cap, vm.default_class)

    def _vm_class(self, vm_id: int) -> str | None:
        snap = self._snapshot(vm_id)
        return snap[2].name if snap and snap[2] is not None else None

    def summaries(self, advance: bool = True) -> list[VMSummary]:
        """Every VM's summary; rates over the time since the previous call (``advance``
        False: that baseline is not moved)."""
        hv = self.hv
        now = self._clock()
        stats = {s.vm_id: s for s in hv.all_stats()}
        rows = []
        with hv._lock:
            for vm_id, vm in hv._vms.items():
                ops: dict[str, int] = {}
                for kernel, n in vm.kernel_mix.items():
                    for step in kernel.steps:
                        ops[step.spec.name] = ops.get(step.spec.name, 0) + n * step.times
                rows.append((vm_id, vm.name, vm.share, vm.cap, vm.default_class, vm.launches_total,
                             vm.device_seconds, vm.flops_total, vm.bytes_total, ops, dict(vm.by_class),
                             list(vm.queue_waits_ns)))
        out = []
        with self._lock:
            bounds = dict(self._bounds)
        for vm_id, name, share, cap, dclass, launches, dev, flops, nbytes, ops, by_class, waits in sorted(rows):
            s = stats.get(vm_id)
            if s is None:
                continue
            t0, l0, d0, f0, b0 = self._prev.get(vm_id, (None, 0, 0.0, 0, 0))
            if advance:
                self._prev[vm_id] = (now, launches, dev, flops, nbytes)
            dl, dt = launches - l0, (now - t0) if t0 is not None else 0.0
            per = dl if dl > 0 else max(1, launches)
            use = dl > 0
            b = bounds.get(vm_id) or VMBounds(share, share)
            top = max(by_class.items(), key=lambda kv: kv[1])[0] if by_class else (
                dclass.name if dclass is not None else "THROUGHPUT")
            out.append(VMSummary(
                vm_id=vm_id, name=name, current_class=top, share_pct=share, cap_pct=cap,
                share_min=b.share_min, share_max=b.share_max,
                launches_per_s=dl / dt if dt > 0 else 0.0,
                mean_launch_ms=1e3 * ((dev - d0) if use else dev) / per,
                flops_per_launch=((flops - f0) if use else flops) / per,
                bytes_per_launch=((nbytes - b0) if use else nbytes) / per,
                latency_p99_ms=s.latency_p99_ms, queue_wait_p99_ms=_p99(waits) / 1e6,
                device_busy_pct=100.0 * (dev - d0) / dt if dt > 0 else 0.0,
                memory_device_mb=s.memory_device_bytes / 1e6, memory_host_mb=s.memory_host_bytes / 1e6,
                residency_misses=int(s.extra.get("prefetch_misses", 0)), idle=s.idle,
                op_mix=ops, description=b.description, cap_min=b.cap_min, cap_max=b.cap_max))
        return out
