"""Whether a matmul's row tiles compute bit for bit what the whole product computes, on
this process's BLAS (issue 14; tiling.py, docs/scheduling.md "Preemption").

A BLAS library picks its kernel by the problem's size: OpenBLAS, for one, runs "small"
products (a few hundred thousand multiply-adds on AVX-512 machines) through another kernel
whose sums round apart from its blocked one. A tile of a product can fall on the other
side of that line from the product itself, and then its rows differ from the whole
product's in the last bits (e.g. float32 (128, 40) @ (40, 200): rows 0-63 alone differ by
~5e-6). A launch's results would then depend on whether it happened to be tiled, i.e. on
another VM's timing. So before the first time a product of given shapes is split into
given tiles, ``rows_agree`` runs the product whole and tiled on random operands of the same
shapes, dtypes and layout, and remembers the answer; tiling.py splits only what agrees,
and runs the rest whole. The check costs one product whole and once tiled, once per
(shapes, tiles) in the process (at most ``MAX_CHECKED`` remembered); a product over
``MAX_CHECK_ELEMENTS`` is not checked and so never split.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

#: (shapes, tiles) answers remembered, at most (least recently used dropped first).
MAX_CHECKED = 4096
#: Elements of a product's operands and result together, at most, for a check (its random
#: operands and the two results are made for it, beside the launch's own memory).
MAX_CHECK_ELEMENTS = 1 << 26

_answers: OrderedDict[tuple, bool] = OrderedDict()
_lock = threading.Lock()
checks = 0  # products checked so far (tests, figures)


def rows_agree(xp, linear: bool, a, b, rows: list[tuple[int, int]]) -> bool:
    """True when ``a @ b`` (``a @ swapaxes(b)`` for LINEAR) split into the row tiles
    ``rows`` of ``a`` gives exactly the whole product's values on this BLAS. Only for
    operands laid out as a fresh array is (C-contiguous): anything else is not checked
    (False: run whole). Integer products are exact: always True."""
    dtype = xp.result_type(a, b)
    if np.issubdtype(np.dtype(dtype), np.integer) or np.dtype(dtype) == np.bool_:
        return True
    if not (a.flags.c_contiguous and b.flags.c_contiguous):
        return False
    n = b.shape[-2] if linear else b.shape[-1]
    out = int(np.prod(np.broadcast_shapes(a.shape[:-2], b.shape[:-2]), dtype=np.int64)) * a.shape[-2] * n
    if a.size + b.size + out > MAX_CHECK_ELEMENTS:
        return False
    key = (getattr(xp, "__name__", str(xp)), _device(xp), linear, a.shape, a.dtype.str, b.shape, b.dtype.str,
           tuple(rows))
    with _lock:
        hit = _answers.get(key)
        if hit is not None:
            _answers.move_to_end(key)
            return hit
    agree = _check(xp, linear, a, b, rows)
    with _lock:
        _answers[key] = agree
        while len(_answers) > MAX_CHECKED:
            _answers.popitem(last=False)
    return agree


def _device(xp) -> int | None:
    cuda = getattr(xp, "cuda", None)  # CuPy: each GPU's BLAS answers for itself
    return None if cuda is None else int(cuda.Device().id)


def _check(xp, linear: bool, a, b, rows: list[tuple[int, int]]) -> bool:
    global checks
    rng = np.random.default_rng(len(rows))
    pa = xp.asarray(rng.standard_normal(a.shape).astype(a.dtype))
    pb = xp.asarray(rng.standard_normal(b.shape).astype(b.dtype))
    right = xp.swapaxes(pb, -1, -2) if linear else pb
    whole = xp.matmul(pa, right)
    tiled = xp.empty_like(whole)
    for r0, r1 in rows:
        xp.matmul(pa[..., r0:r1, :], right, out=tiled[..., r0:r1, :])
    checks += 1
    return bool(xp.array_equal(whole, tiled))


def forget() -> None:
    """Drop every remembered answer (tests)."""
    with _lock:
        _answers.clear()
