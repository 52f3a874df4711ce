"""The real daemon (NumPy backend) served on a temporary unix socket, driven through the
generated pxos.v1 stubs: VMs, quotas, buffers, launches, isolation, and bad input that
gets a clear error while the daemon keeps serving everyone else."""

from __future__ import annotations

import os
import re
import shutil
import socket
import stat
import tempfile
import time

import numpy as np
import pytest

from hypervisor import Hypervisor
from hypervisor.config import DaemonConfig
from hypervisor.daemon import Daemon
from hypervisor.errors import ConfigError
from hypervisor.rpc import limits
from hypervisor.rpc import pxos_pb2 as pb
from hypervisor.rpc.client import Client
from hypervisor.rpc.server import GrpcServer
from hypervisor.rpc.status import STATUS_TO_CODE, RpcFailure
from tests.support.programs import MATMUL, heavy

HEAVY = heavy(16)

BROKEN = """GPU_KERNEL broken
GPU_PARAM a float[]
GPU_THREAD_CODE:
    FROBNICATE a -> a
GPU_END
"""


@pytest.fixture
def sockdir():
    # Short paths: a unix socket path must fit in 108 bytes, and pytest's tmp_path need not.
    d = tempfile.mkdtemp(prefix="pxos-", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def daemon(sockdir):
    cfg = DaemonConfig.model_validate({"daemon": {"grpc_socket": os.path.join(sockdir, "hvd.sock"),
                                                  "metrics_address": None, "backend": "numpy",
                                                  "socket_dir": sockdir}})
    d = Daemon(cfg, hypervisor=Hypervisor(backend="numpy", device_pool_bytes=256 << 20)).start(metrics=False)
    yield d
    d.stop(grace=1.0)


@pytest.fixture
def client(daemon):
    c = Client(socket_path=daemon.config.daemon.grpc_socket, timeout=60)
    yield c
    c.close()


def register(c: Client, vm: int, memory: int = 100_000_000, share: float = 10, **kw) -> pb.VMInfo:
    return c.call("RegisterVM", pb.RegisterVMRequest(vm_id=vm, memory_bytes=memory, share=share, **kw))


def alloc(c: Client, vm: int, shape, dtype="float32") -> int:
    return c.call("Alloc", pb.AllocRequest(vm_id=vm, dtype=dtype, shape=list(shape))).handle


def fails(code: str, fn, *args, **kw) -> RpcFailure:
    with pytest.raises(RpcFailure) as info:
        fn(*args, **kw)
    assert info.value.code == code, f"{info.value.code}: {info.value.message}"
    assert info.value.message
    return info.value


def matmul_setup(c: Client, vm: int, m=4, k=3, n=2):
    (kernel,) = c.call("Compile", pb.CompileRequest(vm_id=vm, source=MATMUL)).kernels
    a, b, out = alloc(c, vm, (m, k)), alloc(c, vm, (k, n)), alloc(c, vm, (m, n))
    x = np.arange(m * k, dtype=np.float32).reshape(m, k)
    y = np.arange(k * n, dtype=np.float32).reshape(k, n) - 2
    c.write_all(vm, a, x.tobytes())
    c.write_all(vm, b, y.tobytes())
    return kernel, {"a": a, "b": b, "c": out}, x @ y


def launch(c: Client, vm: int, kernel_id: int, handles: dict, **kw) -> pb.LaunchResponse:
    req = pb.LaunchRequest(vm_id=vm, kernel_id=kernel_id, **kw)
    for name, h in handles.items():
        if isinstance(h, pb.ScalarValue):
            req.bindings[name].scalar.CopyFrom(h)
        else:
            req.bindings[name].handle = h
    return c.call("Launch", req)


# ---------------------------------------------------------------- the socket

def test_socket_is_private_and_nothing_else_is_left_in_its_directory(daemon, sockdir):
    path = daemon.config.daemon.grpc_socket
    mode = os.stat(path).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600
    assert os.listdir(sockdir) == ["hvd.sock"]


def test_stop_removes_the_socket(sockdir):
    d = Daemon(DaemonConfig(), hypervisor=Hypervisor(backend="numpy", device_pool_bytes=16 << 20),
               transport_name=None).start(grpc=False, metrics=False)
    srv = GrpcServer(d)
    path = os.path.join(sockdir, "x.sock")
    srv.start(unix_path=path)
    assert os.path.exists(path)
    srv.stop(grace=0.5)
    d.stop()
    assert not os.path.exists(path)


def test_a_stale_socket_is_replaced_and_a_live_one_refused(daemon, sockdir):
    stale = os.path.join(sockdir, "stale.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(stale)
    s.close()  # the file stays, nobody listens: what a crashed daemon leaves behind
    srv = GrpcServer(daemon)
    srv.start(unix_path=stale)
    with Client(socket_path=stale) as c:
        assert c.call("ListVMs", pb.ListVMsRequest()).vms == []
    with pytest.raises(ConfigError, match="already serving"):
        GrpcServer(daemon).start(unix_path=daemon.config.daemon.grpc_socket)
    srv.stop(grace=0.5)
    regular = os.path.join(sockdir, "file")
    open(regular, "w").close()
    with pytest.raises(ConfigError, match="not a socket"):
        GrpcServer(daemon).start(unix_path=regular)


def test_every_pxos_status_has_a_grpc_code():
    header = open(os.path.join(os.path.dirname(__file__), "../../guest_driver/include/uapi/pxos_gpu.h")).read()
    statuses = set(re.findall(r"\b(PXOS_S_[A-Z_]+)\s*=", header)) - {"PXOS_S_OK"}
    assert statuses and statuses <= set(STATUS_TO_CODE), sorted(statuses - set(STATUS_TO_CODE))


# ---------------------------------------------------------------- VMs and quotas

def test_vm_register_list_show_unregister(client):
    info = register(client, 1, memory=8_000_000_000, share=30, cap=50, name="train", default_class="batch")
    assert (info.vm_id, info.name, info.memory_quota, info.share, info.cap, info.default_class) == \
        (1, "train", 8_000_000_000, 30, 50, "BATCH")
    register(client, 2, share=20)
    assert [v.vm_id for v in client.call("ListVMs", pb.ListVMsRequest()).vms] == [1, 2]
    got = client.call("GetVM", pb.VMRef(vm_id=2))
    assert got.info.name == "vm2" and not got.info.HasField("cap")
    assert got.stats.memory_quota == 100_000_000 and got.stats.launches_total == 0
    client.call("UnregisterVM", pb.VMRef(vm_id=1))
    assert [v.vm_id for v in client.call("ListVMs", pb.ListVMsRequest()).vms] == [2]
    fails("NOT_FOUND", client.call, "GetVM", pb.VMRef(vm_id=1))
    fails("NOT_FOUND", client.call, "UnregisterVM", pb.VMRef(vm_id=1))


def test_bad_registrations_change_nothing(client):
    register(client, 1, share=60)
    e = fails("INVALID_ARGUMENT", register, client, 2, share=50)  # 60 + 50 > 100
    assert "100" in e.message
    fails("ALREADY_EXISTS", register, client, 1, share=1)
    fails("INVALID_ARGUMENT", register, client, 3, share=101)
    fails("INVALID_ARGUMENT", register, client, 3, memory=0)
    fails("INVALID_ARGUMENT", register, client, 3, default_class="URGENT")
    fails("INVALID_ARGUMENT", register, client, 0)
    fails("INVALID_ARGUMENT", register, client, 3, name="x" * 200)
    assert [v.vm_id for v in client.call("ListVMs", pb.ListVMsRequest()).vms] == [1]


def test_register_with_a_socket_listens_for_qemu(client, sockdir):
    path = os.path.join(sockdir, "vm7.sock")
    info = register(client, 7, socket=path)
    assert info.socket == path
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    t = client.call("GetVM", pb.VMRef(vm_id=7)).stats.transport
    assert t.present and not t.connected
    client.call("UnregisterVM", pb.VMRef(vm_id=7))
    # the path is free again: the same VM can come back on it
    register(client, 7, socket=path)


def test_quotas_change_at_run_time(client):
    register(client, 1, share=30)
    register(client, 2, share=30)
    info = client.call("SetQuota", pb.SetQuotaRequest(vm_id=1, memory_bytes=4096, share=50, cap=70))
    assert (info.memory_quota, info.share, info.cap) == (4096, 50, 70)
    fails("RESOURCE_EXHAUSTED", alloc, client, 1, (2048,))  # 8 KiB over a 4 KiB quota
    info = client.call("SetQuota", pb.SetQuotaRequest(vm_id=1, remove_cap=True))
    assert not info.HasField("cap") and info.share == 50 and info.memory_quota == 4096
    e = fails("INVALID_ARGUMENT", client.call, "SetQuota", pb.SetQuotaRequest(vm_id=2, share=60))  # 50 + 60
    assert client.call("GetVM", pb.VMRef(vm_id=2)).info.share == 30, e
    fails("INVALID_ARGUMENT", client.call, "SetQuota", pb.SetQuotaRequest(vm_id=2))
    fails("INVALID_ARGUMENT", client.call, "SetQuota", pb.SetQuotaRequest(vm_id=2, cap=0))
    fails("NOT_FOUND", client.call, "SetQuota", pb.SetQuotaRequest(vm_id=9, share=1))
    client.call("SetQuota", pb.SetQuotaRequest(vm_id=1, memory_bytes=1 << 20))
    alloc(client, 1, (2048,))


# ---------------------------------------------------------------- buffers, kernels, launches

def test_matmul_launch_over_grpc(client):
    register(client, 1)
    kernel, handles, expect = matmul_setup(client, 1)
    assert [p.direction for p in kernel.params] == ["in", "in", "out"]
    assert list(kernel.params[0].dims) == ["M", "K"]
    res = launch(client, 1, kernel.kernel_id, handles, class_hint="INTERACTIVE")
    assert res.status == "PXOS_S_OK", res.error
    assert res.kernel == "mm" and res.wclass == "INTERACTIVE"
    assert res.device_ns > 0 and res.total_ns >= res.device_ns
    got = np.frombuffer(client.read_all(1, handles["c"]), np.float32).reshape(expect.shape)
    np.testing.assert_allclose(got, expect)
    stats = client.call("GetVM", pb.VMRef(vm_id=1)).stats
    assert stats.launches_total == 1 and stats.buffers == 3 and stats.kernels == 1


def test_transfers_larger_than_one_message(client):
    register(client, 1, memory=200_000_000)
    n = limits.MAX_TRANSFER_BYTES // 4 + 1000  # just over one message
    h = alloc(client, 1, (n,))
    data = np.random.default_rng(1).standard_normal(n).astype(np.float32)
    client.write_all(1, h, data.tobytes())
    np.testing.assert_array_equal(np.frombuffer(client.read_all(1, h), np.float32), data)
    e = fails("INVALID_ARGUMENT", client.call, "Write",
              pb.WriteRequest(vm_id=1, handle=h, data=bytes(limits.MAX_TRANSFER_BYTES + 1)))
    assert str(limits.MAX_TRANSFER_BYTES) in e.message
    fails("INVALID_ARGUMENT", client.call, "Read", pb.ReadRequest(vm_id=1, handle=h, length=limits.MAX_TRANSFER_BYTES + 1))
    fails("INVALID_ARGUMENT", client.call, "Write", pb.WriteRequest(vm_id=1, handle=h, offset=4 * n - 2, data=b"abcd"))
    fails("INVALID_ARGUMENT", client.call, "Read", pb.ReadRequest(vm_id=1, handle=h, offset=4 * n + 1))


def test_compile_errors_carry_every_diagnostic_with_its_place(client):
    register(client, 1)
    e = fails("INVALID_ARGUMENT", client.call, "Compile", pb.CompileRequest(vm_id=1, source=BROKEN))
    assert e.status == "PXOS_S_COMPILE"
    assert [(d.code, d.line, d.column) for d in e.diagnostics][:1] == [("unknown-op", 4, 5)]
    e = fails("INVALID_ARGUMENT", client.call, "Compile", pb.CompileRequest(vm_id=1, source="GPU_KERNEL x\n"))
    assert any(d.code == "syntax" and d.line >= 1 for d in e.diagnostics)
    e = fails("INVALID_ARGUMENT", client.call, "Compile",
              pb.CompileRequest(vm_id=1, source="#" * (limits.MAX_SOURCE_BYTES + 1)))
    assert "limit" in e.message


def test_bad_launches_are_refused_with_the_reason(client):
    register(client, 1)
    kernel, handles, _ = matmul_setup(client, 1)
    wrong = alloc(client, 1, (5, 5))
    e = fails("INVALID_ARGUMENT", launch, client, 1, kernel.kernel_id, {**handles, "b": wrong})
    assert e.status == "PXOS_S_BIND" and e.diagnostics
    assert any(d.code.startswith("bind") for d in e.diagnostics)
    e = fails("INVALID_ARGUMENT", launch, client, 1, kernel.kernel_id, {"a": handles["a"], "b": handles["b"]})
    assert e.status == "PXOS_S_BIND"  # c is missing
    fails("NOT_FOUND", launch, client, 1, kernel.kernel_id, {**handles, "c": 987654})
    fails("NOT_FOUND", launch, client, 1, 987654, handles)
    fails("INVALID_ARGUMENT", launch, client, 1, kernel.kernel_id, {**handles, "c": pb.ScalarValue()})
    fails("INVALID_ARGUMENT", launch, client, 1, kernel.kernel_id, handles, class_hint="SOON")
    fails("INVALID_ARGUMENT", launch, client, 1, kernel.kernel_id, handles, priority=101)
    fails("INVALID_ARGUMENT", alloc, client, 1, (4,), dtype="complex64")
    assert client.call("GetVM", pb.VMRef(vm_id=1)).stats.launches_total == 0


def test_allocations_over_quota_or_device_pool(client):
    register(client, 1, memory=1_000_000)
    e = fails("RESOURCE_EXHAUSTED", alloc, client, 1, (1_000_000,))
    assert e.status == "PXOS_S_QUOTA" and "quota" in e.message and "1000000" in e.message
    register(client, 2, memory=10_000_000_000)
    e = fails("RESOURCE_EXHAUSTED", alloc, client, 2, (100_000_000,))  # 400 MB > 256 MiB pool
    assert e.status == "PXOS_S_NO_DEVICE_MEMORY"
    assert client.call("GetVM", pb.VMRef(vm_id=2)).info.memory_used == 0


def test_another_vms_handles_are_not_found_exactly_like_missing_ones(client):
    register(client, 1)
    register(client, 2)
    kernel, handles, _ = matmul_setup(client, 1)
    h = handles["a"]
    missing = 10**9 + 7
    for method, make in [
        ("Read", lambda vm, x: pb.ReadRequest(vm_id=vm, handle=x)),
        ("Write", lambda vm, x: pb.WriteRequest(vm_id=vm, handle=x, data=b"\0" * 4)),
        ("Free", lambda vm, x: pb.BufferRef(vm_id=vm, handle=x)),
        ("FreeKernel", lambda vm, x: pb.KernelRef(vm_id=vm, kernel_id=x)),
    ]:
        theirs = kernel.kernel_id if method == "FreeKernel" else h
        other = fails("NOT_FOUND", client.call, method, make(2, theirs))
        absent = fails("NOT_FOUND", client.call, method, make(2, missing))
        assert other.message.replace(str(theirs), "#") == absent.message.replace(str(missing), "#")
        assert other.status == absent.status == "PXOS_S_NOT_FOUND"
    (k2,) = client.call("Compile", pb.CompileRequest(vm_id=2, source=MATMUL)).kernels
    fails("NOT_FOUND", launch, client, 2, k2.kernel_id, handles)
    # VM 1 still owns and reads its buffer, untouched
    assert len(client.read_all(1, h)) == 4 * 3 * 4


def test_bad_input_never_stops_the_daemon_serving_others(client):
    register(client, 1)
    register(client, 2)
    kernel, handles, expect = matmul_setup(client, 2)
    bad = [
        lambda: client.call("Compile", pb.CompileRequest(vm_id=1, source=BROKEN)),
        lambda: client.call("Compile", pb.CompileRequest(vm_id=1, source="\x00\xff garbage")),
        lambda: alloc(client, 1, (10**12,)),
        lambda: alloc(client, 1, (-1 % 2**64,)),
        lambda: client.call("Read", pb.ReadRequest(vm_id=1, handle=12345)),
        lambda: client.call("Free", pb.BufferRef(vm_id=1, handle=12345)),
        lambda: client.call("SetQuota", pb.SetQuotaRequest(vm_id=1, share=99)),
        lambda: client.call("IdleHint", pb.IdleHintRequest(vm_id=77, idle=True)),
        lambda: launch(client, 1, 5555, {}),
    ]
    for fn in bad:
        with pytest.raises(RpcFailure) as info:
            fn()
        assert info.value.code in {"INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED"}, info.value
        res = launch(client, 2, kernel.kernel_id, handles)
        assert res.status == "PXOS_S_OK"
    np.testing.assert_allclose(
        np.frombuffer(client.read_all(2, handles["c"]), np.float32).reshape(expect.shape), expect)


def test_launch_timeout_gives_up_waiting_but_the_launch_completes(client):
    register(client, 1)
    (k,) = client.call("Compile", pb.CompileRequest(vm_id=1, source=HEAVY)).kernels
    # 16 matmuls of 768x768 (14 GFLOP): far longer than the 1 ms timeout on any host, so
    # the call cannot finish in time however the threads are scheduled.
    a, c = alloc(client, 1, (768, 768)), alloc(client, 1, (768, 768))
    e = fails("DEADLINE_EXCEEDED", launch, client, 1, k.kernel_id, {"a": a, "c": c}, timeout_seconds=0.001)
    assert "runs to completion" in e.message
    deadline = time.monotonic() + 30
    while client.call("GetVM", pb.VMRef(vm_id=1)).stats.launches_total < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_stats_and_idle_hint(client, daemon):
    register(client, 1, share=50)
    register(client, 2, share=20)
    kernel, handles, _ = matmul_setup(client, 1)
    launch(client, 1, kernel.kernel_id, handles)
    client.call("IdleHint", pb.IdleHintRequest(vm_id=2, idle=True))
    s = client.call("Stats", pb.StatsRequest())
    assert [v.vm_id for v in s.vms] == [1, 2]
    assert s.vms[0].launches_total == 1 and s.vms[0].device_seconds_total > 0
    assert s.vms[1].idle and not s.vms[0].idle
    assert s.device.backend == "numpy" and s.device.pool_bytes == 256 << 20
    assert s.scheduler.launches == 1 and s.scheduler.busy_seconds > 0
    assert s.scheduler.lookahead_depth == daemon.hv.lookahead_depth  # adaptive (prefetch)
    assert abs(s.time - time.time()) < 60
