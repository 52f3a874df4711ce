"""Advisor benchmark (issue 10): the dispatcher is unaffected by the LLM advisor, and how
good the advice is, each against a baseline taken in the same run.
``python -m bench.bench_advisor [--json] [--quick] [--only dispatch,quality]
[--endpoint URL --model NAME | --gguf FILE]``

dispatch: tiny-launch cost (serial launches of an ADD of float[16]) and an INTERACTIVE VM's
p99 latency beside a saturating BATCH VM, with the advisor off (the baseline), asking a
healthy endpoint as fast as it answers, and asking an endpoint that never answers (every
request runs into its timeout). Rounds interleave the three, so drift on a shared machine
hits all alike. The healthy endpoint is llama.cpp's server on this machine unless
--endpoint names another: it competes for the same cores, which is part of what is measured.

quality: the labelled workloads of bench/advisor_workloads.py, each run for real in its own
VM; the heuristic (the classifier's rules on the VM's summary) and the LLM classify each
from the same summary; accuracy of both, and how often they agree.
"""

from __future__ import annotations

# First: importing hypervisor pins BLAS to one thread, which works only before NumPy loads.
import hypervisor  # noqa: F401

# isort: split
import random
import statistics
import time

from bench.advisor_workloads import WORKLOADS, run_workload
from bench.common import Report, parser, percentile
from bench.hv_load import TINY_SOURCE, GuestThread, install, sized_kernel
from hypervisor import Hypervisor
from hypervisor.advisor import Advisor, VMBounds
from hypervisor.config import AdvisorSection
from scheduler.advisor import AdvisorRejected, answer_schema, build_messages, heuristic_class, parse_answer

MS, US = 1e-3, 1e-6
MODES = ("off", "server_busy", "healthy", "hang")


class _BusyServer:
    """The endpoint kept as busy as the advisor keeps it, by a client that is not the
    advisor: separates what the model's own CPU use costs the dispatcher (on a machine
    where it shares the cores) from what the advisor in the daemon costs."""

    def __init__(self, hv, url: str, model: str) -> None:
        import threading

        from hypervisor.advisor_http import EndpointClient

        self.client = EndpointClient(url, model, timeout=60, max_tokens=160)
        self.summaries = Advisor(hv, AdvisorSection(), {}).summaries()
        self.stop_flag = threading.Event()
        self.requests = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        ids = [s.vm_id for s in self.summaries]
        while not self.stop_flag.is_set():
            try:
                self.client.complete(build_messages(self.summaries), answer_schema(ids, allow_share=False))
            except AdvisorRejected:
                pass
            self.requests += 1

    def stop(self, timeout: float, abort: bool = False) -> None:
        self.stop_flag.set()
        self._thread.join(timeout)

    def snapshot_stats(self):
        from types import SimpleNamespace

        return SimpleNamespace(requests={"all": self.requests})


def _advisor(hv, mode: str, urls: dict[str, str], model: str):
    if mode == "off":
        return None
    if mode == "server_busy":
        return _BusyServer(hv, urls["healthy"], model)
    sec = AdvisorSection(mode="suggest", endpoint=urls[mode], model=model, interval_seconds=0.05,
                         timeout_seconds=1.0 if mode == "hang" else 60.0, max_tokens=160,
                         breaker_failures=1000, breaker_open_seconds=1.0)
    return Advisor(hv, sec, {v.vm_id: VMBounds(v.share_pct, v.share_pct) for v in hv.list_vms()}).start()


def dispatch(report: Report, urls: dict[str, str], model: str, quick: bool) -> None:
    rounds, n_tiny, iso_s = (2, 150, 1.0) if quick else (5, 400, 3.0)
    rnd = random.Random(7)
    tiny: dict[str, list[float]] = {m: [] for m in MODES}
    lat: dict[str, list[float]] = {m: [] for m in MODES}
    asked: dict[str, int] = dict.fromkeys(MODES, 0)
    with Hypervisor(backend="numpy") as hv:
        batch = sized_kernel(hv.executor, 5 * MS)
        small = sized_kernel(hv.executor, 100 * US)
        hv.register_vm(1, 4000, 20, default_class="INTERACTIVE")  # tiny launches
        hv.register_vm(2, 4000, 40, default_class="BATCH")
        hv.register_vm(3, 4000, 40, default_class="INTERACTIVE")
        tk, tb = install(hv, 1, TINY_SOURCE)
        sk, sb = install(hv, 3, small.source)
        for _ in range(50):
            hv.launch(1, tk, tb).wait()
        for _ in range(rounds):
            for mode in MODES:
                adv = _advisor(hv, mode, urls, model)
                try:
                    time.sleep(0.2)  # the advisor's first request is out
                    t0 = time.perf_counter()
                    for _ in range(n_tiny):
                        hv.launch(1, tk, tb).wait()
                    tiny[mode].append((time.perf_counter() - t0) / n_tiny)
                    vm2 = GuestThread(hv, 2, batch)
                    vm2.prime()
                    vm2.start()
                    try:
                        end = time.perf_counter() + iso_s
                        while time.perf_counter() < end:
                            t = time.perf_counter()
                            res = hv.launch(3, sk, sb).wait()
                            lat[mode].append(time.perf_counter() - t)
                            if not res.ok:
                                raise RuntimeError(f"launch failed: {res.status}")
                            time.sleep(rnd.uniform(2 * MS, 8 * MS))
                    finally:
                        vm2.finish()
                finally:
                    if adv is not None:
                        adv.stop(timeout=60, abort=False)  # the endpoint finishes its answer first
                        asked[mode] += sum(adv.snapshot_stats().requests.values())
    report.add("tiny_launch_off_us", statistics.median(tiny["off"]) / US, "us")
    report.add("interactive_p99_off_ms", percentile(lat["off"], 99) / MS, "ms")
    for mode in ("server_busy", "healthy", "hang"):
        report.add(f"tiny_launch_{mode}_us", statistics.median(tiny[mode]) / US, "us", baseline="tiny_launch_off_us")
        report.add(f"interactive_p99_{mode}_ms", percentile(lat[mode], 99) / MS, "ms",
                   baseline="interactive_p99_off_ms")
        report.add(f"advisor_requests_{mode}", asked[mode], "count")
    # the advisor's own cost: healthy against the same endpoint kept as busy without it
    report.add("tiny_launch_healthy_vs_server_busy", statistics.median(tiny["healthy"]) /
               statistics.median(tiny["server_busy"]), "x")
    report.add("interactive_p99_healthy_vs_server_busy", percentile(lat["healthy"], 99) /
               percentile(lat["server_busy"], 99), "x")
    report.notes.append(
        f"dispatch: {rounds} interleaved rounds; tiny = median per-launch wall time of {n_tiny} serial launches; "
        f"INTERACTIVE = {small.describe()} one at a time with 2-8 ms think time beside a saturating BATCH VM "
        f"({batch.describe()}), p99 of launch-to-wait over {iso_s:g} s a round; the advisor asks every 0.05 s "
        "(as fast as the endpoint answers), 'hang' with a 1 s timeout; 'server_busy' = advisor off, the "
        "endpoint kept busy by another client (what the model's CPU use alone costs here); healthy endpoint "
        f"{urls['healthy']} (model {model})")


def quality(report: Report, url: str, model: str, quick: bool) -> None:
    seconds = 0.5 if quick else 1.5
    rows = []
    with Hypervisor(backend="numpy") as hv:
        sec = AdvisorSection(mode="suggest", endpoint=url, model=model, timeout_seconds=120, max_tokens=160)
        bounds = {}
        for i, w in enumerate(WORKLOADS, start=1):
            hv.register_vm(i, 4000, 5, name=w.name)
            bounds[i] = VMBounds(5, 5, w.description)
        adv = Advisor(hv, sec, bounds)
        for i, w in enumerate(WORKLOADS, start=1):
            adv.summaries()  # the rates' baseline
            run_workload(hv, i, w, seconds)
            s = next(x for x in adv.summaries() if x.vm_id == i)
            h = heuristic_class(s).name
            t0 = time.perf_counter()
            try:
                ok, _ = parse_answer(adv.client.complete(build_messages([s]), answer_schema([i], allow_share=False)), [s])
                llm = ok[0].wclass.name if ok else "refused"
                why = ok[0].rationale if ok else ""
            except AdvisorRejected as exc:
                llm, why = exc.reason.value, exc.detail
            rows.append((w, h, llm, time.perf_counter() - t0, s, why))
    n = len(rows)
    h_ok = sum(h == w.label for w, h, *_ in rows)
    l_ok = sum(llm == w.label for w, _, llm, *_ in rows)
    agree = sum(h == llm for _, h, llm, *_ in rows)
    report.add("quality_workloads", n, "count")
    report.add("quality_heuristic_accuracy_pct", 100 * h_ok / n, "%")
    report.add("quality_llm_accuracy_pct", 100 * l_ok / n, "%", baseline="quality_heuristic_accuracy_pct")
    report.add("quality_agreement_pct", 100 * agree / n, "%")
    report.add("quality_llm_request_median_s", statistics.median(r[3] for r in rows), "s")
    with_desc = [r for r in rows if r[0].description]
    report.add("quality_llm_accuracy_with_description_pct",
               100 * sum(r[2] == r[0].label for r in with_desc) / max(1, len(with_desc)), "%")
    for w, h, llm, _, s, why in rows:
        report.notes.append(f"quality: {w.name}: label {w.label}, heuristic {h}, llm {llm} "
                            f"(mean launch {s.mean_launch_ms:.3g} ms, busy {s.device_busy_pct:.3g}%)"
                            + (f": {why[:80]!r}" if why else ""))
    report.notes.append(f"quality: {n} workloads run {seconds:g} s each on NumPy; model {model} at {url}")


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--only", default="dispatch,quality")
    p.add_argument("--endpoint", help="an OpenAI-compatible base URL (default: start llama.cpp's server here)")
    p.add_argument("--model", default="smollm2", help="the model name the endpoint knows")
    p.add_argument("--gguf", help="a GGUF file for the local server (default: SmolLM2-135M-Instruct)")
    p.add_argument("--threads", type=int, default=1, help="threads of the local server (default 1)")
    args = p.parse_args(argv)
    import logging

    logging.getLogger("pxos.advisor").setLevel(logging.ERROR)  # refused requests are the point here
    from tests.support.llama_server import LlamaServer
    from tests.support.llm_endpoint import LLMEndpoint

    report = Report("advisor")
    server = None
    try:
        url = args.endpoint
        if url is None:
            server = LlamaServer(args.gguf, threads=args.threads).start()
            url = server.url
        sections = args.only.split(",")
        if "dispatch" in sections:
            with LLMEndpoint("hang") as hang:
                dispatch(report, {"healthy": url, "hang": hang.url}, args.model, args.quick)
        if "quality" in sections:
            quality(report, url, args.model, args.quick)
    finally:
        if server is not None:
            server.stop()
    report.emit(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
