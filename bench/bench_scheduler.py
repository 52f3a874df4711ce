"""Scheduler benchmark: the cost of one decision as registered VMs grow (ratio against one
VM, same process), and the fairness the rule reaches in the issue's scenarios, simulated
in virtual time (the scheduler is pure; bench_fairness in the hypervisor measures the real
device). ``python -m bench.bench_scheduler [--json] [--quick]``"""

from __future__ import annotations

import itertools
import time

from bench.common import Report, parser, percentile
from scheduler import FairScheduler, LaunchCost, Ticket, WorkloadClass
from scheduler.simulate import ManualClock, Workload, simulate

NO_COST = LaunchCost(0, 0, 0, 0)
MS, US = 1e-3, 1e-6


def decision_loop(registered: int, busy: int):
    """A scheduler with ``registered`` VMs of which ``busy`` stay backlogged; returns one
    decision: pick, charge the measured time, submit the VM's next launch."""
    clock = ManualClock()
    sched = FairScheduler(clock=clock)
    for vm in range(registered):
        sched.add_vm(vm, 100.0 / registered)
    ids = itertools.count(1)
    classes = list(WorkloadClass)
    for vm in range(busy):
        for _ in range(2):
            sched.submit(Ticket(vm, next(ids), classes[vm % 4], 50, NO_COST, 1e-4 * (1 + vm % 7), 0.0))

    def decide() -> None:
        t = sched.pick()
        clock.advance(t.est_seconds)
        sched.charge(t.vm_id, t.est_seconds * 1.05, started=clock.now - t.est_seconds, ended=clock.now)
        sched.submit(Ticket(t.vm_id, next(ids), t.wclass, 50, NO_COST, t.est_seconds, clock.now))

    return sched, decide


def per_call(fns: dict[str, object], n: int, repeat: int) -> dict[str, float]:
    """Seconds per call of each function: the best of ``repeat`` runs of ``n`` calls, the
    functions taking turns in every round so that a busy moment of the machine does not
    land on one of them only."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeat):
        for key, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            best[key] = min(best[key], (time.perf_counter() - t0) / n)
    return best


SCENARIOS = {
    "3vm_50_30_20_equal_1ms": [Workload(1, 50, (1 * MS,)), Workload(2, 30, (1 * MS,)), Workload(3, 20, (1 * MS,))],
    "3vm_50_30_20_100ms_beside_100us": [Workload(1, 50, (100 * MS,)), Workload(2, 30, (100 * US,)),
                                        Workload(3, 20, (1 * MS,))],
    "2vm_70_30_100us_beside_100ms": [Workload(1, 70, (100 * US,)), Workload(2, 30, (100 * MS,))],
    "4vm_40_30_20_10_mixed": [Workload(1, 40, (100 * MS,)), Workload(2, 30, (100 * US,)),
                              Workload(3, 20, (10 * MS, 1 * MS)), Workload(4, 10, (100 * US, 100 * MS, 5 * MS))],
}


def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    n, repeat = (500, 3) if args.quick else (5000, 7)
    report = Report("scheduler")

    decisions = {f"decision_{r}vm_busy": decision_loop(r, r)[1] for r in (1, 10, 100, 1000)}
    decisions["decision_1000vm_4busy"] = decision_loop(1000, 4)[1]
    for key, seconds in per_call(decisions, n, repeat).items():
        report.add(key, seconds * 1e6, "us", baseline=None if key == "decision_1vm_busy" else "decision_1vm_busy",
                   goal="idle VMs do not slow a decision" if key.endswith("4busy") else None)
    lookaheads = {f"lookahead8_{b}vm_busy": (lambda s=decision_loop(b, b)[0]: s.lookahead(8)) for b in (10, 1000)}
    for key, seconds in per_call(lookaheads, n // 5, repeat).items():
        report.add(key, seconds * 1e6, "us", baseline="decision_1vm_busy")

    duration = 2.0 if args.quick else 10.0

    def judge(err: float) -> bool | None:
        return None if args.quick else err <= 1.0  # a 2 s smoke run cannot judge a 10 s goal

    for name, workloads in SCENARIOS.items():
        r = simulate(workloads, duration=duration)
        total = sum(w.share_pct for w in workloads)
        err = max(abs(r.share_pct(w.vm_id) - 100.0 * w.share_pct / total) for w in workloads)
        report.add(f"fairness_err_{name}", err, "pp", goal="<= 1 pp over 10 s", ok=judge(err))
        r = simulate(workloads, duration=duration, jitter=0.5, seed=1)
        err = max(abs(r.share_pct(w.vm_id) - 100.0 * w.share_pct / total) for w in workloads)
        report.add(f"fairness_err_{name}_jitter50", err, "pp", goal="<= 1 pp over 10 s", ok=judge(err))

    inter = Workload(2, 50, (1 * MS,), wclass=WorkloadClass.INTERACTIVE, saturated=False, period=0.05)
    alone = simulate([inter], duration=duration)
    shared = simulate([Workload(1, 50, (20 * MS,), wclass=WorkloadClass.BATCH), inter], duration=duration)
    p99_alone = percentile(alone.latencies[2], 99) * 1e3
    report.add("interactive_p99_alone", p99_alone, "ms")
    report.add("interactive_p99_beside_batch_20ms", percentile(shared.latencies[2], 99) * 1e3, "ms",
               baseline="interactive_p99_alone", goal="waits at most one running batch launch")

    # What a class changes: a VM's bursts of 8 x 1 ms beside a VM saturating with 1 ms
    # THROUGHPUT launches, at equal shares, hinted INTERACTIVE vs left THROUGHPUT.
    def burst_p99(wclass: WorkloadClass) -> float:
        bursty = Workload(2, 50, (1 * MS,), wclass=wclass, saturated=False, period=0.05, burst=8)
        r = simulate([Workload(1, 50, (1 * MS,)), bursty], duration=duration)
        return percentile(r.latencies[2], 99) * 1e3

    report.add("burst_p99_as_throughput", burst_p99(WorkloadClass.THROUGHPUT), "ms")
    report.add("burst_p99_as_interactive", burst_p99(WorkloadClass.INTERACTIVE), "ms",
               baseline="burst_p99_as_throughput", goal="a class shortens latency within the share")

    capped = simulate([Workload(1, 30, (1 * MS,), cap_pct=40), Workload(2, 20, (1 * MS,), cap_pct=20)],
                      duration=duration)
    report.add("cap40_wall_pct", capped.wall_pct(1), "%", goal="40 % of wall time",
               ok=abs(capped.wall_pct(1) - 40) <= 1)
    report.notes.append("jitter50: each launch runs 0.5..1.5 x its estimate (seeded)")
    if args.quick:
        report.notes.append("--quick: 2 s of virtual time, fairness goals not judged")
    report.notes.append("decision = pick + charge + submit of the next launch; fairness in virtual "
                        "time (simulated device), shares in percent of busy device time")
    report.emit(args.json)


if __name__ == "__main__":
    main()
