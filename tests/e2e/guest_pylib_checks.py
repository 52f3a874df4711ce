"""Runs inside a guest, not on the host: the guest Python library (guest_driver/python)
against the real /dev/pxos0. test_guest_python.py boots the guest with the host's root
shared read-only over virtio-9p and runs this with the host's Python in a chroot.
Prints one line per check and "pylib: P/N passed"; exit status 0 only if all passed.

    python guest_pylib_checks.py GUEST_DRIVER_PYTHON_DIR
"""

from __future__ import annotations

import errno
import sys
import traceback

import numpy as np

sys.path.insert(0, sys.argv[1])
import pxos_guest as px

SOURCE = """
GPU_KERNEL mm
GPU_PARAM a float[M, K]
GPU_PARAM b float[K, N]
GPU_PARAM c float[M, N]
GPU_THREAD_CODE:
    PARALLEL_MATMUL a b -> c
GPU_END

GPU_KERNEL step
GPU_PARAM w float[N]
GPU_PARAM g float[N]
GPU_PARAM lr float
GPU_PARAM out float[N]
GPU_THREAD_CODE:
    MUL g lr -> d
    SUB w d -> out
GPU_END
"""
BAD = "GPU_KERNEL k\nGPU_PARAM a float[2]\nGPU_THREAD_CODE:\n    NOPE a -> a\nGPU_END\n"

rng = np.random.default_rng(7)
dev = px.Device()
kernels: dict[str, px.Kernel] = {}


def check_info():
    info = dev.info()
    assert info["abi_major"] == 1 and info["ioctl_version"] == px.IOCTL_VERSION, info
    assert info["session_id"] > 0 and info["memory_quota"] > 0
    return f"vm {info['vm_id']} session {info['session_id']} {info['backend']} transport {dev.transport}"


def check_round_trip():
    out = []
    for arr in (rng.standard_normal((1000, 300)).astype(np.float32), np.arange(-5000, 5000, dtype=np.int64),
                rng.standard_normal((7, 3, 5)).astype(np.float16)):
        buf = dev.upload(arr)
        back = buf.read()
        buf.free()
        assert back.dtype == arr.dtype and back.shape == arr.shape and np.array_equal(back, arr)
        out.append(f"{arr.dtype}{list(arr.shape)}")
    return ", ".join(out)


def check_compile_and_params():
    kernels.update(dev.compile(SOURCE))
    assert set(kernels) == {"mm", "step"}, kernels
    params = {p.name: p for p in kernels["mm"].params()}
    assert params["a"].direction == "in" and params["c"].direction == "out", params
    assert params["a"].shape == (None, None)  # symbolic M, K
    return f"{len(kernels)} kernels, mm params {sorted(params)}"


def check_matmul():
    a = rng.standard_normal((16, 24)).astype(np.float32)
    b = rng.standard_normal((24, 8)).astype(np.float32)
    ba, bb, bc = dev.upload(a), dev.upload(b), dev.alloc(np.float32, (16, 8))
    res = dev.launch(kernels["mm"], a=ba, b=bb, c=bc)
    got = bc.read()
    for buf in (ba, bb, bc):
        buf.free()
    np.testing.assert_allclose(got, a @ b, rtol=1e-4, atol=1e-5)
    return f"launch {res.launch_id}: device {res.device_ns} ns, total {res.total_ns} ns"


def check_scalar_binding():
    w, g = rng.standard_normal(32).astype(np.float32), rng.standard_normal(32).astype(np.float32)
    bw, bg, bo = dev.upload(w), dev.upload(g), dev.alloc(np.float32, (32,))
    dev.launch(kernels["step"], w=bw, g=bg, lr=0.25, out=bo)
    got = bo.read()
    for buf in (bw, bg, bo):
        buf.free()
    np.testing.assert_allclose(got, w - g * np.float32(0.25), rtol=1e-6, atol=1e-6)
    return "w - g * lr with lr = 0.25 bound as a scalar"


def check_submit_poll_reap():
    a = rng.standard_normal((4, 4)).astype(np.float32)
    ba = dev.upload(a)
    outs = [dev.alloc(np.float32, (4, 4)) for _ in range(10)]
    tokens = {dev.submit(kernels["mm"], a=ba, b=ba, c=o): o for o in outs}
    done = 0
    while done < len(tokens):
        assert dev.poll(60), "poll: nothing completed in 60 s"
        while (r := dev.reap(wait=False)) is not None:
            np.testing.assert_allclose(tokens[r.token].read(), a @ a, rtol=1e-4, atol=1e-5)
            done += 1
    for buf in (ba, *outs):
        buf.free()
    return f"{done} submits reaped after poll()"


def check_compile_error():
    try:
        dev.compile(BAD)
    except px.CompileError as e:
        d = e.diagnostics[0]
        assert e.errno == errno.EBADMSG and e.status == "COMPILE" and d.line == 4, (e, d)
        return f"line {d.line}:{d.column} {d.code}: {d.message}"
    raise AssertionError("a bad program compiled")


def check_quota():
    try:
        dev.alloc(np.float32, (1 << 18, 1024))  # 1 GiB: under the 2 GiB buffer limit, over the quota
    except px.PxosDeviceError as e:
        assert e.errno == errno.EDQUOT and e.status == "QUOTA", e
        return str(e)
    raise AssertionError("1 GiB allocated")


def check_not_found():
    buf = dev.alloc(np.float32, (4,))
    handle = buf.handle
    buf.free()
    buf.handle = handle
    try:
        buf.read()
    except px.PxosDeviceError as e:
        assert e.errno == errno.ENOENT and e.status == "NOT_FOUND", e
        return str(e)
    raise AssertionError("a freed buffer was read")


def check_stats_idle():
    dev.idle_hint(True)
    dev.idle_hint(False)
    s = dev.stats()
    assert s["launches_total"] >= 11 and s["requests_total"] > 0, s
    return f"{s['launches_total']} launches, {s['requests_total']} requests"


CHECKS = [check_info, check_round_trip, check_compile_and_params, check_matmul, check_scalar_binding,
          check_submit_poll_reap, check_compile_error, check_quota, check_not_found, check_stats_idle]


def main() -> int:
    passed = 0
    for fn in CHECKS:
        try:
            detail = fn()
            passed += 1
            print(f"pylib {fn.__name__}: ok: {detail}", flush=True)
        except Exception as e:
            print(f"pylib {fn.__name__}: FAIL: {type(e).__name__}: {e}", flush=True)
            traceback.print_exc()
    print(f"pylib: {passed}/{len(CHECKS)} passed", flush=True)
    dev.close()
    return 0 if passed == len(CHECKS) else 1


if __name__ == "__main__":
    sys.exit(main())
