"""Runtime indices through the Hypervisor API: a KV-cache append at a position passed by value
(a Scalar), and a position out of range failing the launch with PXOS_S_RANGE while the
daemon, the VM and its buffers carry on."""

from __future__ import annotations

import numpy as np

from hypervisor import Scalar
from hypervisor import errors as E

APPEND = """\
GPU_KERNEL append
GPU_PARAM cache float[4, 8]
GPU_PARAM row float[1, 8]
GPU_PARAM pos int
GPU_PARAM ids int[2]
GPU_PARAM picked float[2, 8]
GPU_THREAD_CODE:
    SLICE_WRITE row axis=0 start=pos -> cache
    GATHER cache ids -> picked
GPU_END
"""


def _put(hv, arr):
    b = hv.alloc(1, str(arr.dtype), arr.shape)
    hv.write(1, b.handle, 0, arr.tobytes())
    return b.handle


def test_an_append_at_a_scalar_position_and_a_range_error(hv):
    hv.register_vm(1, 100, 50)
    (k,) = hv.compile(1, APPEND)
    cache = np.zeros((4, 8), np.float32)
    hc = _put(hv, cache)
    hr = _put(hv, np.full((1, 8), 7, np.float32))
    hi = _put(hv, np.array([2, 0], np.int32))
    hp = hv.alloc(1, "float32", (2, 8)).handle
    binds = {"cache": hc, "row": hr, "ids": hi, "picked": hp}

    res = hv.launch(1, k.kernel_id, {**binds, "pos": Scalar(2)}).wait(10)
    assert res.ok, res.error
    got = np.frombuffer(hv.read(1, hc), np.float32).reshape(4, 8)
    assert (got[2] == 7).all() and not got[[0, 1, 3]].any()
    np.testing.assert_array_equal(np.frombuffer(hv.read(1, hp), np.float32).reshape(2, 8), got[[2, 0]])

    res = hv.launch(1, k.kernel_id, {**binds, "pos": Scalar(4)}).wait(10)
    assert res.status == "PXOS_S_RANGE" and isinstance(res.error, E.IndexOutOfRange)
    assert "line 8: SLICE_WRITE start=4 is out of range" in str(res.error)
    np.testing.assert_array_equal(np.frombuffer(hv.read(1, hc), np.float32).reshape(4, 8), got)  # untouched

    hv.write(1, hi, 0, np.array([1, 4], np.int32).tobytes())  # an id past the cache's 4 rows
    res = hv.launch(1, k.kernel_id, {**binds, "pos": Scalar(3)}).wait(10)
    assert res.status == "PXOS_S_RANGE" and "GATHER id 4" in str(res.error)
    assert hv.stats(1).launches_failed == 2

    hv.write(1, hi, 0, np.array([3, 3], np.int32).tobytes())
    assert hv.launch(1, k.kernel_id, {**binds, "pos": Scalar(0)}).wait(10).ok  # the VM carries on
