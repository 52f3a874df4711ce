"""Compiles in worker processes (issue 14, hypervisor/compile_pool.py, compiling.py): the
same results and typed errors as a compile on the calling thread, a time limit that kills
the worker, a crashed worker replaced, the cache and the per-VM budget, and no process
left behind. Each pool here starts one or two workers (~0.1 s of CPU each)."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import uuid

import numpy as np
import pytest

import primitive_lang
from hypervisor import Hypervisor
from hypervisor import errors as E
from hypervisor.compile_pool import CompilePool
from hypervisor.compiling import INLINE_BYTES, Charge, CompileBudget, Compiler

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def big_source(statements: int = 30, kernels: int = 16) -> str:
    """A new source each call (the compile cache never has it): ~20 KiB by default."""
    tag = uuid.uuid4().hex[:8]
    body = "".join(f"    ADD a b -> t{i}\n    MUL t{i} a -> t{i}\n" for i in range(statements))
    return "".join(f"GPU_KERNEL k{tag}_{k}\nGPU_PARAM a float[64]\nGPU_PARAM b float[64]\nGPU_PARAM c float[64]\n"
                   f"GPU_THREAD_CODE:\n{body}    REPEAT 2:\n        RELU t0 -> t0\n    END_REPEAT\n"
                   f"    SOFTMAX t0 axis=0 -> c\nGPU_END\n" for k in range(kernels))


def bad_source() -> str:
    """Over INLINE_BYTES, with problems of several kinds."""
    return big_source(4, 2) + "GPU_KERNEL bad\nGPU_PARAM a float[4]\nGPU_THREAD_CODE:\n    FROB a -> a\n" \
        "    ADD a q -> a\n    SOFTMAX a axis=3 -> a\nGPU_END\nGPU_KERNEL bad\n"


def key_of(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_gone(pids, timeout=10.0) -> list[int]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        left = [p for p in pids if alive(p)]
        if not left:
            return []
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


@pytest.fixture(scope="module")
def pool():
    p = CompilePool(1).start()
    yield p
    pids = p.pids()
    p.close()
    assert wait_gone(pids) == []


def same_program(a, b) -> None:
    assert a.source_hash == b.source_hash and len(a.kernels) == len(b.kernels)
    for x, y in zip(a.kernels, b.kernels, strict=True):
        assert x.ast == y.ast and x.steps == y.steps and x.params == y.params
        assert dict(x.directions) == dict(y.directions) and dict(x.locals) == dict(y.locals)
        assert (x.name, x.class_hint, x.priority, x.statement_count, x.executed_statement_count) == \
               (y.name, y.class_hint, y.priority, y.statement_count, y.executed_statement_count)
        assert all(s.spec is t.spec for s, t in zip(x.steps, y.steps, strict=True))  # the op table's own


def test_a_program_survives_pickling_unchanged():
    data = big_source(3, 2).encode()
    prog = primitive_lang.compile_uncached(data, key_of(data))
    same_program(pickle.loads(pickle.dumps(prog, protocol=pickle.HIGHEST_PROTOCOL)), prog)


def test_the_pool_compiles_what_the_thread_compiles(pool):
    data = big_source().encode()
    charge = Charge()
    got = pool.run(data, key_of(data), charge)
    same_program(got, primitive_lang.compile_uncached(data, key_of(data)))
    assert charge.extra_s > 0  # the worker's CPU time, for the VM's budget
    data = bad_source().encode()
    assert pool.run(data, key_of(data)) == primitive_lang.compile_uncached(data, key_of(data))  # diagnostics


@pytest.mark.parametrize("workers", [0, 1])
def test_a_bad_source_gets_the_same_typed_error_either_way(workers):
    src = bad_source()
    primitive_lang.clear_cache()  # each run compiles (workers=1: in the worker)
    with Hypervisor(backend="numpy", compiler=Compiler(workers=workers)) as hv:
        hv.register_vm(1, 16, 50)
        with pytest.raises(E.PrimitiveError) as err:
            hv.compile(1, src)
        assert hv.compiler.stats()["pool" if workers else "inline"] == 1
    assert type(err.value) is E.PrimitiveError and err.value.status == "PXOS_S_COMPILE"
    primitive_lang.clear_cache()
    with pytest.raises(primitive_lang.PrimitiveError) as ref:
        primitive_lang.compile_source(src)
    assert str(err.value) == str(ref.value) and err.value.diagnostics == ref.value.diagnostics
    assert {d.code for d in err.value.diagnostics} >= {"unknown-op", "undeclared", "duplicate-kernel"}


def test_a_compile_past_its_time_limit_kills_the_worker_and_a_fresh_one_serves():
    p = CompilePool(1, timeout_s=0.001).start()  # no 20 KiB compile fits in 4 ms of wall time
    try:
        data = big_source().encode()
        first = p.pids()
        charge = Charge()
        t0 = time.monotonic()
        with pytest.raises(E.CompileTimeout) as err:
            p.run(data, key_of(data), charge)
        assert time.monotonic() - t0 < 20  # the startup has its own limit; the compile 4 ms
        assert err.value.status == "PXOS_S_COMPILE"
        assert [d.code for d in err.value.diagnostics] == ["limit"] and err.value.diagnostics[0].line == 0
        assert wait_gone(first) == []
        assert p.pids() != first and len(p.pids()) == 1 and p.stats()["timeouts"] == 1
        tiny = b"GPU_KERNEL t\nGPU_PARAM a float[4]\nGPU_THREAD_CODE:\n    RELU a -> a\nGPU_END\n"
        p.timeout_s = 30.0
        assert p.run(tiny, key_of(tiny)).kernels[0].name == "t"
    finally:
        p.close()


def test_a_stalled_worker_is_killed_at_the_wall_clock_limit():
    p = CompilePool(1, timeout_s=0.05).start()
    try:
        tiny = b"GPU_KERNEL t\nGPU_PARAM a float[4]\nGPU_THREAD_CODE:\n    RELU a -> a\nGPU_END\n"
        p.run(tiny, key_of(tiny))  # ready
        (pid,) = p.pids()
        os.kill(pid, signal.SIGSTOP)  # uses no CPU: the wall-clock backstop (WALL_FACTOR) ends it
        other = tiny.replace(b"GPU_KERNEL t", b"GPU_KERNEL u")
        with pytest.raises(E.CompileTimeout):
            p.run(other, key_of(other))
        assert wait_gone([pid]) == [] and p.stats()["timeouts"] == 1
        # A request larger than the pipe holds: the send itself is bounded too.
        p.run(tiny, key_of(tiny))  # the fresh worker is ready
        (pid,) = p.pids()
        os.kill(pid, signal.SIGSTOP)
        large = other + b"\n" * 70000
        with pytest.raises(E.CompileTimeout):
            p.run(large, key_of(large))
        assert wait_gone([pid]) == [] and p.stats()["timeouts"] == 2
    finally:
        p.close()


def test_a_worker_that_dies_mid_compile_is_a_typed_error_and_is_replaced():
    p = CompilePool(1, timeout_s=60).start()
    try:
        tiny = b"GPU_KERNEL t\nGPU_PARAM a float[4]\nGPU_THREAD_CODE:\n    RELU a -> a\nGPU_END\n"
        p.run(tiny, key_of(tiny))
        (pid,) = p.pids()
        os.kill(pid, signal.SIGSTOP)  # hold it mid-compile, then kill it
        out = []
        data = big_source().encode()
        t = threading.Thread(target=lambda: out.append(_catch(p.run, data, key_of(data))))
        t.start()
        end = time.monotonic() + 10
        while p.stats()["busy"] < 1 and time.monotonic() < end:
            time.sleep(0.01)
        os.kill(pid, signal.SIGKILL)
        t.join(20)
        assert isinstance(out[0], E.CompileFailed) and out[0].status == "PXOS_S_INTERNAL"
        assert wait_gone([pid]) == [] and p.stats()["crashes"] == 1
        assert p.run(data, key_of(data)).kernels  # the fresh worker compiles it
        # A worker killed while idle is replaced at the next compile, which succeeds.
        (pid,) = p.pids()
        os.kill(pid, signal.SIGKILL)
        end = time.monotonic() + 10  # until it can be reaped (every thread of it ended), not reaping it
        while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None and time.monotonic() < end:
            time.sleep(0.01)
        assert p.run(tiny, key_of(tiny)).kernels
    finally:
        p.close()


def _catch(fn, *args):
    try:
        return fn(*args)
    except Exception as exc:
        return exc


def test_cache_hits_never_reach_the_pool_and_the_budget_counts_worker_time():
    cpu = [0.0]
    budget = CompileBudget(10.0, 1.0, cpu=lambda: cpu[0])  # thread CPU frozen: only the worker's counts
    c = Compiler(workers=1, budget=budget)
    try:
        src = big_source()
        prog = c.compile(7, src)
        assert c.stats()["pool"] == 1 and budget.used(7) > 0
        used = budget.used(7)
        assert c.compile(7, src) is prog  # a cache hit: no worker, no charge
        assert c.stats()["pool"] == 1 and budget.used(7) == used
        tiny = f"GPU_KERNEL t{uuid.uuid4().hex[:6]}\nGPU_PARAM a float[4]\nGPU_THREAD_CODE:\n    RELU a -> a\nGPU_END\n"
        c.compile(7, tiny)  # under inline_bytes: on this thread
        assert c.stats()["inline"] == 1 and c.stats()["pool"] == 1
    finally:
        c.close()


def test_a_hypervisor_runs_a_pool_compiled_kernel_and_stop_ends_its_workers():
    src = f"GPU_KERNEL pooled{uuid.uuid4().hex[:6]}\nGPU_PARAM a float[64]\nGPU_PARAM c float[64]\nGPU_THREAD_CODE:\n" + \
        "".join(f"    MUL a a -> t{i}\n" for i in range(40)) + "    ADD t0 t39 -> c\nGPU_END\n"
    assert len(src) > INLINE_BYTES
    hv = Hypervisor(backend="numpy").start()  # its own compiler: workers start when first needed
    try:
        hv.register_vm(1, 16, 50)
        (k,) = hv.compile(1, src)
        assert hv.compiler.stats()["pool"] == 1
        a, c = (hv.alloc(1, "float32", (64,)).handle for _ in range(2))
        x = np.arange(64, dtype=np.float32)
        hv.write(1, a, 0, x.tobytes())
        assert hv.launch(1, k.kernel_id, {"a": a, "c": c}).wait().ok
        np.testing.assert_array_equal(np.frombuffer(hv.read(1, c), np.float32), x * x + x * x)
        pids = hv.compiler.pool.pids()
        assert pids
    finally:
        hv.stop()
    assert wait_gone(pids) == []
    with pytest.raises(E.Cancelled):
        hv.compiler.compile(1, big_source())


def test_options_are_checked():
    with pytest.raises(E.InvalidArgument, match="MAX_WORKERS"):
        Compiler(workers=65)
    with pytest.raises(E.InvalidArgument, match="inline_bytes"):
        Compiler(inline_bytes=-1)
    with pytest.raises(E.InvalidArgument, match="budget"):
        Compiler(budget_s=0)
    with pytest.raises(E.InvalidArgument, match="timeout"):
        CompilePool(1, timeout_s=0)


def test_workers_exit_when_their_parent_is_killed(tmp_path):
    """No orphan: a parent that dies without closing its pool (SIGKILL) leaves no worker."""
    code = ("import sys, time\nfrom hypervisor.compile_pool import CompilePool\n"
            "p = CompilePool(2).start()\nprint(*p.pids(), flush=True)\ntime.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(x) for x in proc.stdout.readline().split()]
        assert len(pids) == 2 and all(alive(p) for p in pids)
    finally:
        proc.kill()
        proc.wait()
    assert wait_gone(pids) == []


def test_metrics_count_compiles_by_where_and_the_workers():
    from test_metrics import parse, value

    from hypervisor.metrics import MetricsExporter

    hv = Hypervisor(backend="numpy", device_pool_bytes=64 << 20, compiler=Compiler(workers=1)).start()
    try:
        m = MetricsExporter(hv)
        hv.register_vm(1, 16, 50)
        hv.compile(1, big_source(4, 2))
        hv.compile(1, f"GPU_KERNEL t{uuid.uuid4().hex[:6]}\nGPU_PARAM a float[4]\nGPU_THREAD_CODE:\n"
                      "    RELU a -> a\nGPU_END\n")
        s, _ = parse(m.render())
        assert value(s, "pxos_compiles_total", where="pool") == 1
        assert value(s, "pxos_compiles_total", where="inline") == 1
        assert value(s, "pxos_compile_workers") == 1 and value(s, "pxos_compile_workers_busy") == 0
        assert value(s, "pxos_compile_failures_total", reason="timeout") == 0
        assert value(s, "pxos_compile_worker_cpu_seconds_total") > 0
        m.stop()
    finally:
        hv.stop()


def test_rebuilding_an_answer_gives_way_to_a_busy_device(pool):
    """The rebuild (pickle.loads) asks the device probe every REBUILD_CHUNK statements, and
    an idle hypervisor's dispatcher reads as not busy."""
    from primitive_lang import ast

    data = big_source(20, 4).encode()  # 4 kernels of 43 statements
    asked = []
    pool.run(data, key_of(data), busy=lambda: asked.append(1) or False)
    assert len(asked) >= 4 * 43 // ast.REBUILD_CHUNK
    with Hypervisor(backend="numpy", compiler=Compiler(workers=0)) as hv:
        end = time.monotonic() + 10
        while hv.compiler._busy() and time.monotonic() < end:  # the dispatcher settles into its wait
            time.sleep(0.01)
        assert not hv.compiler._busy()


def test_the_devices_of_a_set_share_one_compiler():
    from hypervisor.devices import DeviceSet

    ds = DeviceSet("numpy", 2, device_pool_bytes=16 << 20).start()
    try:
        assert all(hv.compiler is ds.compiler for hv in ds.devices.values())
        ds.register_vm(1, 8, 10)
        ds.register_vm(2, 8, 10)
        ds.compile(1, big_source(4, 2))
        ds.compile(2, big_source(4, 2))
        assert ds.compiler.stats()["pool"] == 2 and ds.compiler.stats()["workers"] == 1
        pids = ds.compiler.pool.pids()
    finally:
        ds.stop()
    assert wait_gone(pids) == []


def test_a_worker_that_cannot_start_fails_the_compile_and_is_not_restarted_in_a_loop(monkeypatch):
    import hypervisor.compile_pool as cp

    monkeypatch.setattr(cp, "_BOOT", "raise SystemExit(3)")  # e.g. a broken installation
    p = CompilePool(1)
    try:
        data = big_source(2, 1).encode()
        for _ in range(2):
            with pytest.raises(E.CompileFailed, match="status 3"):
                p.run(data, key_of(data))
        st = p.stats()
        assert st["started"] == 2 and st["workers"] == 0 and st["crashes"] == 2  # one per compile, no more
    finally:
        p.close()


def test_vms_compiling_at_once_queue_for_one_worker_and_all_succeed():
    c = Compiler(workers=1)
    try:
        srcs = {vm: big_source(6, 4) for vm in (1, 2, 3)}
        out: dict[int, object] = {}
        threads = [threading.Thread(target=lambda vm=vm: out.__setitem__(vm, _catch(c.compile, vm, srcs[vm])))
                   for vm in srcs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert all(len(out[vm].kernels) == 4 for vm in srcs), out
        st = c.stats()
        assert st["pool"] == 3 and st["workers"] == 1 and st["waiting"] == 0 and st["busy"] == 0
        assert all(c.budget.used(vm) > 0 for vm in srcs)  # each VM charged its own compile
    finally:
        c.close()


@pytest.mark.slow
def test_churn_four_vms_compiling_while_workers_are_killed_at_random():
    """4 s of four VMs compiling good, bad and small sources while a worker is SIGKILLed
    every 0.2-1 s: every compile ends in a program, its diagnostics or CompileFailed; the
    pool serves afterwards; no process or descriptor is left."""
    import random

    c = Compiler(workers=2, budget_s=1.0)
    fds = len(os.listdir("/proc/self/fd"))
    seen: dict[str, int] = {}
    stop = time.monotonic() + 4.0

    def vm(v):
        rnd = random.Random(v)
        while time.monotonic() < stop:
            r = rnd.random()
            src = big_source(rnd.randint(1, 40), rnd.randint(1, 8)) if r < 0.6 else bad_source() if r < 0.8 \
                else f"GPU_KERNEL t{rnd.randint(0, 50)}\nGPU_PARAM a float[4]\nGPU_THREAD_CODE:\n    RELU a -> a\nGPU_END\n"
            try:
                c.compile(v, src)
                k = "ok"
            except primitive_lang.PrimitiveError:
                k = "diagnostics"
            except E.CompileFailed:
                k = "failed"
            except Exception as exc:
                k = f"unexpected {exc!r}"
            seen[k] = seen.get(k, 0) + 1

    def killer():
        rnd = random.Random(9)
        while time.monotonic() < stop:
            time.sleep(rnd.uniform(0.2, 1.0))
            if time.monotonic() >= stop:
                break
            for pid in c.pool.pids()[:1]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    threads = [threading.Thread(target=vm, args=(v,)) for v in (1, 2, 3, 4)] + [threading.Thread(target=killer)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert set(seen) <= {"ok", "diagnostics", "failed"}, seen
        assert seen.get("ok") and seen.get("diagnostics")
        src = big_source()
        try:  # a worker killed in the churn's last moments may still be dying: one retry, as a guest would
            prog = c.compile(1, src)
        except E.CompileFailed:
            prog = c.compile(1, src)
        assert prog.kernels  # serves after the churn
    finally:
        pids = c.pool.pids()
        c.close()
    assert wait_gone(pids) == [] and c.pool.pids() == []
    assert len(os.listdir("/proc/self/fd")) <= fds  # none left open (earlier tests may close some meanwhile)


def test_gc_epochs_freeze_after_each_program_and_collect_once_per_epoch():
    from hypervisor.compiling import GcEpochs

    now, calls = [0.0], []
    g = GcEpochs(60.0, clock=lambda: now[0], freeze=lambda: calls.append("freeze"),
                 unfreeze=lambda: calls.append("unfreeze"), collect=lambda: calls.append("collect"),
                 background=False)
    g.settle()
    now[0] = 59.0
    g.settle()
    assert calls == ["freeze", "freeze"] and g.epochs == 0
    now[0] = 61.0  # an epoch passed: the frozen heap is collected once, then frozen again
    g.settle()
    assert calls[2:] == ["unfreeze", "collect", "freeze"] and g.epochs == 1
    now[0] = 100.0
    g.settle()
    assert calls[5:] == ["freeze"]
    now[0] = 121.0  # no compile since: the epoch ends all the same (the thread's tick), unfrozen after
    assert g.tick() and calls[6:] == ["unfreeze", "collect"] and not g.frozen
    now[0] = 500.0
    assert not g.tick() and calls[8:] == []  # nothing frozen: nothing to do


def test_the_compiler_settles_the_collector_only_when_asked_and_only_for_programs_built_here(monkeypatch):
    settled = []
    c = Compiler(workers=0, gc_freeze=True)
    monkeypatch.setattr(c.gc, "settle", lambda: settled.append(1))
    c.compile(1, big_source(4, 2))  # over inline_bytes: a program built in this process
    c.compile(1, f"GPU_KERNEL t{uuid.uuid4().hex[:6]}\nGPU_PARAM a float[4]\nGPU_THREAD_CODE:\n"
                 "    RELU a -> a\nGPU_END\n")  # small: not worth it
    assert settled == [1]
    assert Compiler(workers=0).gc is None  # off by default
