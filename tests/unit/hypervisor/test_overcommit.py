"""RAM-backed overcommit on the NumPy backend with tiny pools (docs/memory.md): results
equal to the same work without overcommit, exact accounting in every state, errors only
where the promises say."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from hypervisor import Hypervisor, Scalar
from hypervisor import errors as E
from hypervisor.executor import NumpyExecutor, Pending, make_executor

KB = 1024

LAYER = """
GPU_KERNEL layer
GPU_PARAM w float[N, N]
GPU_PARAM x float[B, N]
GPU_PARAM y float[B, N]
GPU_THREAD_CODE:
    PARALLEL_MATMUL x w -> h
    TANH h -> y
GPU_END
"""

SCALE = """
GPU_KERNEL scale
GPU_PARAM a float
GPU_PARAM x float[]
GPU_PARAM y float[]
GPU_THREAD_CODE:
    MUL x a -> y
GPU_END
"""


def check_accounting(hv: Hypervisor) -> None:
    """Recount everything from the buffers themselves and compare with the books."""
    m = hv.memory
    pool = host = committed = 0
    held_temps = {id(t.account): 0 for t in m._launch_temps.values()}
    for t in m._launch_temps.values():
        held_temps[id(t.account)] += t.nbytes if t.held else 0
    for vm_id, acct in list(m._vms.items()) + list(m._retired.items()):
        dev = hst = live = held = held_dev = 0
        for b in acct.buffers.values():
            if b.device is None:
                assert b.host is not None, f"buffer {b.handle} has no copy at all"
            if b.host is not None:
                host += b.nbytes
            if b.reset_held:  # released by a reset, still in use: held apart from usage
                held += b.nbytes
                held_dev += b.nbytes if b.device is not None else 0
                continue
            live += b.nbytes
            if b.device is not None:
                dev += b.nbytes
            else:
                hst += b.nbytes
        temps_held = held_temps.get(id(acct), 0)
        assert acct.live_bytes == live, vm_id
        assert acct.held_bytes == held + temps_held, vm_id
        assert acct.device_bytes == dev + acct.temp_bytes, vm_id
        assert acct.host_bytes == hst, vm_id
        pool += dev + acct.temp_bytes + held_dev + temps_held
        committed += live + held
    assert m.pool_used == pool
    assert m.host_used == host
    assert m.committed == committed
    assert m.pool_used <= m.pool_bytes
    assert m.host_used <= m.host_budget or m.host_budget == 0


def wait_idle(hv: Hypervisor, timeout: float = 10.0) -> None:
    ev = threading.Event()
    for _ in range(int(timeout / 0.005)):
        with hv._lock:
            if hv.dispatcher.running is None and all(v.inflight == 0 for v in hv._vms.values()):
                hv.memory.reap()
                return
        ev.wait(0.005)
    raise AssertionError("hypervisor did not go idle")


def run_layers(hv: Hypervisor, n_layers: int, n: int, batch: int, passes: int, rng_seed: int = 0):
    """L layers applied in turn (y = tanh(x W)), pass after pass; returns the final output."""
    rng = np.random.default_rng(rng_seed)
    hv.register_vm(1, 100, 50)
    (k,) = hv.compile(1, LAYER)
    ws = []
    for _ in range(n_layers):
        w = (rng.standard_normal((n, n)) / np.sqrt(n)).astype(np.float32)
        h = hv.alloc(1, "float32", (n, n)).handle
        hv.write(1, h, 0, w.tobytes())
        ws.append(h)
    acts = [hv.alloc(1, "float32", (batch, n)).handle for _ in range(2)]
    hv.write(1, acts[0], 0, rng.standard_normal((batch, n)).astype(np.float32).tobytes())
    cs = []
    step = 0
    for _ in range(passes):
        for w in ws:
            cs.append(hv.launch(1, k.kernel_id, {"w": w, "x": acts[step % 2], "y": acts[(step + 1) % 2]}))
            step += 1
    for c in cs:
        r = c.wait(30)
        assert r.ok, r.error
    wait_idle(hv)
    check_accounting(hv)
    return np.frombuffer(hv.read(1, acts[step % 2]), np.float32).copy(), hv


@pytest.mark.parametrize("backend", ["numpy", pytest.param("cupy", marks=pytest.mark.gpu),
                                     pytest.param("wgpu", marks=pytest.mark.wgpu)])
@pytest.mark.parametrize("pool_kb,host_kb", [(40, 200), (24, 300), (64, 64)])
def test_layer_streaming_matches_the_run_without_overcommit(pool_kb, host_kb, backend):
    # 8 layers of 32x32 float32 = 4 KiB each (32 KiB in all) + two 1 KiB activations.
    ref_hv = Hypervisor(backend=backend, device_pool_bytes=1 << 20).start()
    try:
        expect, _ = run_layers(ref_hv, 8, 32, 8, passes=3)
    finally:
        ref_hv.stop()
    hv = Hypervisor(backend=backend, device_pool_bytes=pool_kb * KB, host_budget_bytes=host_kb * KB).start()
    try:
        got, hv = run_layers(hv, 8, 32, 8, passes=3)
        extra = hv.stats(1).extra
        if pool_kb * KB < 34 * KB:  # the weights cannot all stay on the device
            assert extra["evictions"] > 0 and extra["h2d_bytes"] > 0
        assert extra["prefetch_hits"] + extra["prefetch_misses"] == 24
    finally:
        hv.stop()
    np.testing.assert_array_equal(got, expect)


class DeferredNumpy(NumpyExecutor):
    """A NumPy device that, like a GPU stream, returns from submit() before the work is
    done (the work runs, in submission order, when its result is waited for), so the
    dispatcher pipelines launches exactly as it does on CuPy."""

    asynchronous = True

    def submit(self, bound, args, wait_for=()):
        parent = super()

        class Later(Pending):
            def wait(self):
                return parent.submit(bound, args, wait_for).wait()

        return Later()


@pytest.mark.parametrize("device", ["deferred", pytest.param("wgpu", marks=pytest.mark.wgpu)])
@pytest.mark.parametrize("pool_kb", [64, 12, 9])
def test_pipelined_launches_when_the_pool_cannot_hold_two_working_sets(pool_kb, device):
    # Each launch needs a 4 KiB layer + two 1 KiB activations; at 9-12 KiB the next
    # launch's layer does not fit beside the running one's, so the dispatcher must
    # finish the launch in flight before it can prepare the next (no deadlock).
    # The reference runs on the same arithmetic (wgpu's matmul sums in its own order).
    ref = Hypervisor(backend="numpy" if device == "deferred" else device, device_pool_bytes=1 << 20).start()
    try:
        expect, _ = run_layers(ref, 8, 32, 8, passes=2)
    finally:
        ref.stop()
    ex = DeferredNumpy() if device == "deferred" else make_executor(device)  # wgpu: a real asynchronous queue
    hv = Hypervisor(backend=ex, device_pool_bytes=pool_kb * KB, host_budget_bytes=256 * KB).start()
    try:
        got, hv = run_layers(hv, 8, 32, 8, passes=2)
    finally:
        hv.stop()
    np.testing.assert_array_equal(got, expect)


def test_prefetch_brings_the_next_layers_in_ahead_of_need():
    hv = Hypervisor(backend="numpy", device_pool_bytes=24 * KB, host_budget_bytes=256 * KB,
                    lookahead_depth=2).start()
    try:
        gate = threading.Event()
        first = []

        def hold_first(job):
            if not first:
                first.append(job.launch_id)
                gate.wait(10)

        hv.dispatcher.before_run.append(hold_first)
        rng = np.random.default_rng(1)
        hv.register_vm(1, 100, 50)
        (k,) = hv.compile(1, LAYER)
        x, y = hv.alloc(1, "float32", (4, 32)).handle, hv.alloc(1, "float32", (4, 32)).handle
        ws = []
        for _ in range(10):  # 40 KiB of weights: the last ones are placed in host RAM
            h = hv.alloc(1, "float32", (32, 32)).handle
            hv.write(1, h, 0, rng.standard_normal((32, 32)).astype(np.float32).tobytes())
            ws.append(h)
        ws.reverse()  # run the host-resident ones first
        with hv._lock:
            assert [hv.memory.lookup(1, 0, w).residency for w in ws[:3]] == ["host"] * 3
        cs = [hv.launch(1, k.kernel_id, {"w": ws[i], "x": x if i % 2 == 0 else y, "y": y if i % 2 == 0 else x})
              for i in range(6)]
        for _ in range(200):  # the first launch is held; the next ones' weights should be on their way
            with hv._lock:
                if first:
                    break
            threading.Event().wait(0.005)
        with hv._lock:
            hv.memory.reap()
            ahead = [hv.memory.lookup(1, 0, w) for w in ws[1:3]]
            assert all(b.device is not None for b in ahead), [b.residency for b in ahead]
            assert all(b.prefetched for b in ahead)
        gate.set()
        assert all(c.wait(10).ok for c in cs)
        assert hv.stats(1).extra["prefetch_hits"] >= 2
    finally:
        hv.stop()


def test_host_budget_exhaustion_fails_at_alloc_and_changes_nothing():
    # Capacity 24 KiB, less the swap reserve (twice the largest buffer, 8 KiB): 16 KiB.
    hv = Hypervisor(backend="numpy", device_pool_bytes=8 * KB, host_budget_bytes=16 * KB).start()
    try:
        hv.register_vm(1, 1, 50)
        hs = [hv.alloc(1, "float32", (1024,)).handle for _ in range(4)]
        with hv._lock:
            check_accounting(hv)
            before = (hv.memory.pool_used, hv.memory.host_used, hv.memory.committed)
        with pytest.raises(E.OutOfDeviceMemory, match="device pool and host budget together is full") as ei:
            hv.alloc(1, "float32", (1,))
        assert "8192 are kept free to move buffers" in str(ei.value)
        with hv._lock:
            assert (hv.memory.pool_used, hv.memory.host_used, hv.memory.committed) == before
        for h in hs:
            hv.free(1, h)
        assert hv.vm_info(1).memory_used == 0 and hv.memory.host_used == 0 and hv.memory.pool_used == 0
    finally:
        hv.stop()


def test_a_launch_that_cannot_fit_the_pool_alone_fails_at_launch():
    hv = Hypervisor(backend="numpy", device_pool_bytes=8 * KB, host_budget_bytes=64 * KB).start()
    try:
        hv.register_vm(1, 1, 50)
        (k,) = hv.compile(1, SCALE)
        x, y = hv.alloc(1, "float32", (1024,)).handle, hv.alloc(1, "float32", (1024,)).handle  # 4 KiB each
        assert hv.launch(1, k.kernel_id, {"a": Scalar(2.0), "x": x, "y": y}).wait(10).ok
        big_x, big_y = hv.alloc(1, "float32", (1536,)).handle, hv.alloc(1, "float32", (1536,)).handle
        with pytest.raises(E.OutOfDeviceMemory, match="needs 12288 bytes on the device at once"):
            hv.launch(1, k.kernel_id, {"a": Scalar(2.0), "x": big_x, "y": big_y})
        assert hv.stats(1).inflight == 0
    finally:
        hv.stop()


def test_two_launches_that_both_fit_do_not_thrash():
    hv = Hypervisor(backend="numpy", device_pool_bytes=20 * KB, host_budget_bytes=64 * KB).start()
    try:
        hv.register_vm(1, 1, 50)
        (k,) = hv.compile(1, SCALE)
        a = [hv.alloc(1, "float32", (512,)).handle for _ in range(2)]  # 2 KiB each
        b = [hv.alloc(1, "float32", (512,)).handle for _ in range(2)]
        cold = [hv.alloc(1, "float32", (1024,)).handle for _ in range(6)]  # 24 KiB of other data
        del cold
        cs = []
        for _ in range(20):
            cs.append(hv.launch(1, k.kernel_id, {"a": Scalar(1.0), "x": a[0], "y": a[1]}))
            cs.append(hv.launch(1, k.kernel_id, {"a": Scalar(1.0), "x": b[0], "y": b[1]}))
        assert all(c.wait(10).ok for c in cs)
        wait_idle(hv)
        ex = hv.stats(1).extra
        # Only the first use of each of the 4 buffers may have needed a copy in.
        assert ex["h2d_bytes"] <= 4 * 2 * KB
        assert ex["prefetch_misses"] <= 2
    finally:
        hv.stop()


def test_idle_vm_is_written_back_and_leaves_first():
    hv = Hypervisor(backend="numpy", device_pool_bytes=16 * KB, host_budget_bytes=64 * KB).start()
    try:
        hv.register_vm(1, 1, 40)
        hv.register_vm(2, 1, 40)
        (k1,) = hv.compile(1, SCALE)
        (k2,) = hv.compile(2, SCALE)
        v1 = [hv.alloc(1, "float32", (512,)).handle for _ in range(2)]
        v2 = [hv.alloc(2, "float32", (512,)).handle for _ in range(2)]
        hv.write(1, v1[0], 0, np.arange(512, dtype=np.float32).tobytes())
        assert hv.launch(1, k1.kernel_id, {"a": Scalar(3.0), "x": v1[0], "y": v1[1]}).wait(10).ok
        hv.idle_hint(1, True)
        # VM 2 works; each of its launches writes back some of VM 1's dirty buffers.
        assert hv.launch(2, k2.kernel_id, {"a": Scalar(1.0), "x": v2[0], "y": v2[1]}).wait(10).ok
        wait_idle(hv)
        with hv._lock:
            b = hv.memory.lookup(1, 0, v1[1])
            assert b.host is not None and not b.dirty  # written back ahead of need
            assert hv.stats(1).idle
        # Room is needed: VM 1's (idle, clean) buffers go first, with no copy.
        d2h_before = hv.stats(1).extra["d2h_bytes"]
        big = [hv.alloc(2, "float32", (1024,)).handle for _ in range(3)]  # 12 KiB
        (k3,) = hv.compile(2, """
GPU_KERNEL three
GPU_PARAM a float[1024]
GPU_PARAM b float[1024]
GPU_PARAM c float[1024]
GPU_THREAD_CODE:
    ADD a b -> c
GPU_END
""")
        assert hv.launch(2, k3.kernel_id, {"a": big[0], "b": big[1], "c": big[2]}).wait(10).ok
        wait_idle(hv)
        with hv._lock:
            assert all(hv.memory.lookup(1, 0, h).device is None for h in v1)
            assert hv.stats(1).extra["d2h_bytes"] == d2h_before
            check_accounting(hv)
        out = np.frombuffer(hv.read(1, v1[1]), np.float32)
        np.testing.assert_array_equal(out, 3 * np.arange(512, dtype=np.float32))
    finally:
        hv.stop()


class OvercommitMachine(RuleBasedStateMachine):
    """Random alloc / write / launch / read / free / idle hints on a tiny pool; the data
    must match a shadow model and the books must balance after every step."""

    @initialize()
    def setup(self):
        self.hv = Hypervisor(backend="numpy", device_pool_bytes=6 * KB, host_budget_bytes=16 * KB).start()
        for vm in (1, 2):
            self.hv.register_vm(vm, 0.012, 40)  # 12 kB quota each: the sum exceeds the pool
        self.kernels = {vm: self.hv.compile(vm, SCALE)[0].kernel_id for vm in (1, 2)}
        self.shadow: dict[tuple[int, int], np.ndarray] = {}
        self.rng = np.random.default_rng(0)

    def teardown(self):
        self.hv.stop()

    @rule(vm=st.sampled_from([1, 2]), n=st.sampled_from([64, 256, 512, 1024]))
    def alloc(self, vm, n):
        try:
            h = self.hv.alloc(vm, "float32", (n,)).handle
        except (E.QuotaExceeded, E.OutOfDeviceMemory):
            return
        self.shadow[(vm, h)] = np.zeros(n, np.float32)

    @precondition(lambda self: self.shadow)
    @rule(data=st.data())
    def write(self, data):
        vm, h = data.draw(st.sampled_from(sorted(self.shadow)))
        arr = self.rng.standard_normal(self.shadow[(vm, h)].size).astype(np.float32)
        self.hv.write(vm, h, 0, arr.tobytes())
        self.shadow[(vm, h)] = arr

    @precondition(lambda self: len(self.shadow) >= 2)
    @rule(data=st.data(), scale=st.sampled_from([0.5, 2.0, -1.0]))
    def launch(self, data, scale):
        vm = data.draw(st.sampled_from([1, 2]))
        mine = sorted(h for v, h in self.shadow if v == vm)
        pairs = [(x, y) for x in mine for y in mine if x != y and self.shadow[(vm, x)].size == self.shadow[(vm, y)].size]
        if not pairs:
            return
        x, y = data.draw(st.sampled_from(pairs))
        try:
            c = self.hv.launch(vm, self.kernels[vm], {"a": Scalar(scale), "x": x, "y": y})
        except E.OutOfDeviceMemory:
            return
        r = c.wait(10)
        assert r.ok, r.error
        self.shadow[(vm, y)] = self.shadow[(vm, x)] * np.float32(scale)

    @precondition(lambda self: self.shadow)
    @rule(data=st.data())
    def read(self, data):
        vm, h = data.draw(st.sampled_from(sorted(self.shadow)))
        got = np.frombuffer(self.hv.read(vm, h), np.float32)
        np.testing.assert_array_equal(got, self.shadow[(vm, h)])

    @precondition(lambda self: self.shadow)
    @rule(data=st.data())
    def free(self, data):
        vm, h = data.draw(st.sampled_from(sorted(self.shadow)))
        self.hv.free(vm, h)
        del self.shadow[(vm, h)]

    @rule(vm=st.sampled_from([1, 2]), idle=st.booleans())
    def idle_hint(self, vm, idle):
        self.hv.idle_hint(vm, idle)

    @invariant()
    def books_balance(self):
        if not hasattr(self, "hv"):
            return
        wait_idle(self.hv)
        with self.hv._lock:
            check_accounting(self.hv)
            for vm in (1, 2):
                live = sum(a.size * 4 for (v, _), a in self.shadow.items() if v == vm)
                assert self.hv.memory.vm(vm).used == live


OvercommitMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=30, deadline=None,
                                               suppress_health_check=[HealthCheck.too_slow])
test_overcommit_state_machine = OvercommitMachine.TestCase


def test_pipelining_never_fails_a_launch_whose_temporaries_fit_the_quota_alone():
    # Each launch's temporaries are 400 bytes; the quota leaves room for one set, not two.
    hv = Hypervisor(backend=DeferredNumpy(), device_pool_bytes=1 << 20).start()
    try:
        hv.register_vm(1, 0.0012, 50)  # 1200 bytes
        (k,) = hv.compile(1, """
GPU_KERNEL t
GPU_PARAM x float[100]
GPU_PARAM y float[100]
GPU_THREAD_CODE:
    EXP x -> t
    ADD t x -> y
GPU_END
""")
        x, y = hv.alloc(1, "float32", (100,)).handle, hv.alloc(1, "float32", (100,)).handle
        cs = [hv.launch(1, k.kernel_id, {"x": x, "y": y}) for _ in range(10)]
        assert [c.wait(10).status for c in cs] == ["PXOS_S_OK"] * 10
    finally:
        hv.stop()


def gated(base: type) -> type:
    """`base` with a gate: the `block_at`-th launch to run stops inside the device (after
    `entered` is set) until `gate` opens, so a test can act while a launch is known to run."""

    class Gated(base):
        def __init__(self):
            super().__init__()
            self.gate, self.entered = threading.Event(), threading.Event()
            self.block_at, self.runs = -1, 0

        def _maybe_block(self):
            self.runs += 1
            if self.runs == self.block_at:
                self.entered.set()
                assert self.gate.wait(60), "the test never opened the gate"

        def submit(self, bound, args, wait_for=()):
            if not self.asynchronous:
                self._maybe_block()
                return super().submit(bound, args, wait_for)
            later = super().submit(bound, args, wait_for)
            outer = self

            class Blocking(Pending):
                def wait(self):
                    outer._maybe_block()
                    return later.wait()

            return Blocking()

    return Gated


@pytest.mark.parametrize("backend", ["numpy", "deferred"])
def test_resets_in_the_middle_of_streaming_keep_the_books_exact(backend):
    # Resets land while a launch runs (held by a gate inside the device, so this holds on a
    # loaded host too), others are pipelined, and buffers are on their way in and out:
    # usage is zero at each reset, and every byte is accounted for throughout.
    rng = np.random.default_rng(5)
    ex = gated(DeferredNumpy if backend == "deferred" else NumpyExecutor)()
    hv = Hypervisor(backend=ex, device_pool_bytes=24 * KB, host_budget_bytes=256 * KB).start()
    try:
        hv.register_vm(1, 100, 50)
        for _ in range(6):
            (k,) = hv.compile(1, LAYER)
            ws = []
            for _ in range(6):
                h = hv.alloc(1, "float32", (32, 32)).handle
                hv.write(1, h, 0, rng.standard_normal((32, 32)).astype(np.float32).tobytes())
                ws.append(h)
            acts = [hv.alloc(1, "float32", (8, 32)).handle for _ in range(2)]
            ex.gate.clear()
            ex.entered.clear()
            ex.block_at = ex.runs + 1 + int(rng.integers(0, 4))  # somewhere early in the stream
            cs = [hv.launch(1, k.kernel_id, {"w": w, "x": acts[i % 2], "y": acts[(i + 1) % 2]})
                  for i, w in enumerate(ws * 3)]
            assert ex.entered.wait(30), "the stream never reached the gated launch"
            hv.reset_vm(1)
            s = hv.stats(1)
            assert s.extra["held_after_reset_bytes"] > 0  # the running launch's buffers
            assert s.memory_used == 0 and s.memory_device_bytes == 0 and s.memory_host_bytes == 0
            with hv._lock:
                check_accounting(hv)
            ex.gate.set()
            for c in cs:
                assert c.wait(30).status in ("PXOS_S_OK", "PXOS_S_CANCELLED")
            wait_idle(hv)
            check_accounting(hv)
            assert hv.stats(1).extra["held_after_reset_bytes"] == 0
            assert hv.memory.pool_used == 0 and hv.memory.host_used == 0 and hv.memory.committed == 0
    finally:
        ex.gate.set()
        hv.stop()
