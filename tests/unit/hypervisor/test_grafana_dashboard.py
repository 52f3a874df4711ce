"""docs/grafana-pxos.json queries only metrics docs/metrics.md documents (issue 11: a
Grafana dashboard over the documented metrics)."""

from __future__ import annotations

import json
import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[3] / "docs"
_SUFFIXES = ("_bucket", "_count", "_sum")


def _queried() -> set[str]:
    dash = json.loads((DOCS / "grafana-pxos.json").read_text())
    names = set()
    for panel in dash["panels"]:
        assert panel["targets"], panel["title"]
        for t in panel["targets"]:
            found = re.findall(r"\bpxos_[a-z_]+", t["expr"])
            assert found, t["expr"]
            for n in found:
                names.add(next((n[: -len(s)] for s in _SUFFIXES if n.endswith(s)), n))
    return names


def test_every_queried_metric_is_documented_and_exported():
    documented = set(re.findall(r"^\| `(pxos_[a-z_]+)`", (DOCS / "metrics.md").read_text(), re.M))
    queried = _queried()
    assert queried and queried <= documented, queried - documented
    # documented implies exported: test_metrics.py::test_every_documented_metric_is_exported_while_idle
