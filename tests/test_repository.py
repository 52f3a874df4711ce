"""Guards on the repository itself: the layout design.md fixes, and test files that pytest
can collect together (test folders are not packages, so two test files with one name
would stop the whole suite from being collected)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_top_level_layout():
    for name in ("hypervisor", "virtio_backend", "guest_driver", "primitive_lang", "qemu", "scheduler",
                 "tests", "docs", "bench", ".ci"):
        assert (ROOT / name).is_dir(), name
    assert (ROOT / ".ci" / "run").read_text().count("make test") == 1
    head = (ROOT / "README.md").read_text().splitlines()[:12]
    assert any("make demo" in line for line in head) and any("make test" in line for line in head)


def test_no_two_test_files_share_a_name():
    names = Counter(p.name for p in (ROOT / "tests").rglob("test_*.py"))
    assert [n for n, k in names.items() if k > 1] == []


def test_arrows_point_one_way():
    """virtio_backend -> hypervisor -> scheduler, primitive_lang; never back."""
    forbidden = {
        "primitive_lang": ("hypervisor", "virtio_backend", "scheduler", "qemu"),
        "scheduler": ("hypervisor", "virtio_backend", "primitive_lang", "qemu"),
        "hypervisor": ("virtio_backend", "qemu"),
    }
    bad = []
    for pkg, banned in forbidden.items():
        for path in (ROOT / pkg).rglob("*.py"):
            for line in path.read_text().splitlines():
                s = line.strip()
                if s.startswith(("import ", "from ")):
                    mod = s.split()[1].split(".")[0]
                    if mod in banned:
                        bad.append(f"{path.relative_to(ROOT)}: {s}")
    assert bad == []
