"""What every benchmark shares: timing, percentiles, the machine description, and the
report (a table of figures with ratios against the run's baseline, or one JSON object)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


def machine() -> dict[str, Any]:
    """Where the figures were taken: CPU, cores, Python, NumPy and (if any) the GPU."""
    info: dict[str, Any] = {
        "host": platform.node(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
    }
    try:
        import numpy

        info["numpy"] = numpy.__version__
    except ImportError:
        pass
    try:
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(0)
        info["gpu"] = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        info["cupy"] = cupy.__version__
    except Exception:
        info["gpu"] = None
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (0..100) by linear interpolation; nan for no values."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * p / 100.0
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def time_calls(fn: Callable[[], Any], *, repeat: int, warmup: int = 3) -> list[float]:
    """Seconds per call of fn, each call timed on its own."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


@dataclass
class Report:
    """Figures of one benchmark: each has a value, a unit, and optionally the name of the
    baseline figure it is compared with (ratio = value / baseline value) and a goal."""

    name: str
    figures: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, key: str, value: float, unit: str, *, baseline: str | None = None,
            goal: str | None = None, ok: bool | None = None) -> None:
        fig: dict[str, Any] = {"value": value, "unit": unit}
        if baseline is not None:
            base = self.figures[baseline]["value"]
            fig["baseline"] = baseline
            fig["ratio"] = value / base if base else float("inf")
        if goal is not None:
            fig["goal"] = goal
        if ok is not None:
            fig["ok"] = bool(ok)
        self.figures[key] = fig

    def emit(self, as_json: bool) -> None:
        if as_json:
            json.dump({"benchmark": self.name, "machine": machine(), "figures": self.figures,
                       "notes": self.notes}, sys.stdout, indent=2, default=float)
            print()
            return
        print(f"== {self.name} ==")
        m = machine()
        print(f"machine: {m['cpu']} x{m['cores']}, gpu: {m.get('gpu')}, python {m['python']}")
        width = max((len(k) for k in self.figures), default=10)
        for key, fig in self.figures.items():
            line = f"  {key:<{width}}  {fig['value']:>14.6g} {fig['unit']:<8}"
            if "ratio" in fig:
                line += f"  x{fig['ratio']:.4g} of {fig['baseline']}"
            if "goal" in fig:
                verdict = "" if "ok" not in fig else (" ok" if fig["ok"] else " MISSED")
                line += f"  [goal {fig['goal']}{verdict}]"
            print(line)
        for note in self.notes:
            print(f"  note: {note}")


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    p.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run)")
    return p
