"""A matmul is split into row tiles only where this process's BLAS computes the tiles bit
for bit as the whole product (hypervisor/executor/tile_check.py): some BLAS libraries
round small products apart (OpenBLAS's small-matrix kernels on AVX-512), so tiling must
not change a launch's results, whichever way this machine's BLAS goes."""

from __future__ import annotations

import numpy as np
import pytest

from hypervisor.executor import tile_check
from hypervisor.executor.tiling import CostModel, Tiler
from tests.unit.hypervisor.test_preempt import _kernel, _run

# Output widths that are not multiples of 16 and products near the small-kernel line,
# where a tile and its whole product took different kernels on an AVX-512 OpenBLAS
# (float32 (128, 40) @ (40, 200): rows 0-63 alone differed by ~5e-6).
SHAPES = [(128, 40, 200), (128, 40, 130), (96, 64, 130), (160, 48, 200), (256, 40, 100), (200, 30, 77),
          (128, 40, 192), (300, 200, 96)]


@pytest.fixture(autouse=True)
def _fresh():
    tile_check.forget()
    yield
    tile_check.forget()


@pytest.mark.parametrize("op", ["PARALLEL_MATMUL", "LINEAR"])
@pytest.mark.parametrize("m, k, n", SHAPES)
def test_tiling_never_changes_a_matmuls_result(op, m, k, n):
    w = (k, n) if op == "PARALLEL_MATMUL" else (n, k)
    source = _kernel(f"    {op} a w -> c\n", {"a": (m, k), "w": w, "c": (m, n)})
    whole, _ = _run(source, None)
    tiler = Tiler(1e-9, CostModel())  # split as finely as allowed: 32-row tiles
    tiled, _ = _run(source, tiler)
    assert np.array_equal(whole["c"], tiled["c"])
    assert tiler.tiled_ops + tiler.refused == 1  # split, or run whole because its tiles round apart


def test_the_check_answers_what_this_blas_does():
    rng = np.random.default_rng(7)
    a = rng.standard_normal((128, 40)).astype(np.float32)
    b = rng.standard_normal((40, 200)).astype(np.float32)
    rows = [(0, 64), (64, 128)]
    tiled = np.concatenate([a[r0:r1] @ b for r0, r1 in rows])
    assert tile_check.rows_agree(np, False, a, b, rows) == np.array_equal(tiled, a @ b)
    n = tile_check.checks
    tile_check.rows_agree(np, False, a, b, rows)
    assert tile_check.checks == n  # remembered: checked once per shapes and tiles


def test_what_is_not_checked_is_not_split(monkeypatch):
    a = np.ones((128, 40), np.float32)
    b = np.ones((40, 64), np.float32)
    assert not tile_check.rows_agree(np, False, np.asfortranarray(a), b, [(0, 64), (64, 128)])  # layout
    monkeypatch.setattr(tile_check, "MAX_CHECK_ELEMENTS", a.size)
    assert not tile_check.rows_agree(np, False, a, b, [(0, 64), (64, 128)])  # too large to check
    ints = np.ones((128, 40), np.int32)
    assert tile_check.rows_agree(np, False, ints, np.ones((40, 64), np.int32), [(0, 64), (64, 128)])  # exact


def test_the_answers_kept_are_bounded(monkeypatch):
    monkeypatch.setattr(tile_check, "MAX_CHECKED", 2)
    a = np.ones((96, 8), np.float32)
    for n in (8, 16, 24, 32):
        tile_check.rows_agree(np, False, a, np.ones((8, n), np.float32), [(0, 32), (32, 96)])
    assert len(tile_check._answers) == 2
