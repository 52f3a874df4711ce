"""WatchEvents: the hypervisor's events streamed over the real server; bounded queues that
drop the oldest for slow readers and count what they dropped; clean unsubscription."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time

import grpc
import pytest

from hypervisor import Hypervisor
from hypervisor.config import DaemonConfig
from hypervisor.daemon import Daemon
from hypervisor.rpc import limits
from hypervisor.rpc import pxos_pb2 as pb
from hypervisor.rpc.client import Client
from hypervisor.rpc.events import EventQueue
from hypervisor.types import Event
from tests.support.programs import MATMUL


@pytest.fixture
def daemon():
    d = tempfile.mkdtemp(prefix="pxos-", dir="/tmp")
    cfg = DaemonConfig.model_validate({"daemon": {"grpc_socket": os.path.join(d, "hvd.sock"),
                                                  "metrics_address": None, "backend": "numpy"}})
    dm = Daemon(cfg, hypervisor=Hypervisor(backend="numpy", device_pool_bytes=64 << 20),
                transport_name=None).start(metrics=False)
    yield dm
    dm.stop(grace=1.0)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def client(daemon):
    c = Client(socket_path=daemon.config.daemon.grpc_socket, timeout=30)
    yield c
    c.close()


def _wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


class Collector(threading.Thread):
    """Reads a WatchEvents stream into a list on its own thread."""

    def __init__(self, client: Client, **filters):
        super().__init__(daemon=True)
        self.stream = client.stub.WatchEvents(pb.WatchEventsRequest(**filters))
        self.events: list[pb.Event] = []
        self.error: grpc.RpcError | None = None
        self.start()

    def run(self):
        try:
            for ev in self.stream:
                self.events.append(ev)
        except grpc.RpcError as err:
            self.error = err

    def kinds(self):
        return [e.kind for e in self.events]


def _ev(kind="k", vm=1, n=0):
    return Event(kind, vm, time.time(), {"n": n})


def test_queue_drops_the_oldest_and_counts_them():
    q = EventQueue(3)
    for n in range(5):
        q.push(_ev(n=n))
    got = [q.get(0) for _ in range(3)]
    assert [e.detail["n"] for e, _ in got] == [2, 3, 4]
    assert {d for _, d in got} == {2}
    assert q.get(0) is None
    q.close()
    q.push(_ev(n=9))
    assert q.get(0) is None


def test_queue_filters_by_vm_and_kind():
    q = EventQueue(10, vm_ids=[2], kinds=["a"])
    for ev in (_ev("a", 1), _ev("b", 2), _ev("a", None), _ev("a", 2, 7)):
        q.push(ev)
    ev, dropped = q.get(0)
    assert (ev.kind, ev.vm_id, ev.detail["n"], dropped) == ("a", 2, 7, 0)
    assert q.get(0) is None


def test_a_blocked_reader_wakes_when_closed():
    q = EventQueue(4)
    threading.Timer(0.1, q.close).start()
    started = time.monotonic()
    assert q.get(5.0) is None
    assert time.monotonic() - started < 2.0


def test_events_stream_as_they_happen(client, daemon):
    everything = Collector(client)
    only_vm2 = Collector(client, vm_ids=[2])
    launches = Collector(client, kinds=["launch_completed"])
    _wait_for(lambda: len(daemon.grpc.servicer._watchers) == 3)
    client.call("RegisterVM", pb.RegisterVMRequest(vm_id=1, memory_bytes=10**8, share=10))
    client.call("RegisterVM", pb.RegisterVMRequest(vm_id=2, memory_bytes=10**8, share=10))
    (k,) = client.call("Compile", pb.CompileRequest(vm_id=1, source=MATMUL)).kernels
    req = pb.LaunchRequest(vm_id=1, kernel_id=k.kernel_id)
    for name, shape in (("a", [2, 3]), ("b", [3, 4]), ("c", [2, 4])):
        req.bindings[name].handle = client.call("Alloc", pb.AllocRequest(vm_id=1, dtype="float32", shape=shape)).handle
    assert client.call("Launch", req).status == "PXOS_S_OK"
    client.call("SetQuota", pb.SetQuotaRequest(vm_id=2, share=15))
    _wait_for(lambda: "quota_changed" in everything.kinds() and launches.events and only_vm2.events)
    assert everything.kinds()[:2] == ["vm_registered", "vm_registered"]
    assert {"launch_completed", "quota_changed"} <= set(everything.kinds())
    done = json.loads(launches.events[0].detail_json)
    assert done["status"] == "PXOS_S_OK" and done["kernel"] == "mm" and done["device_ns"] > 0
    assert launches.events[0].vm_id == 1 and launches.events[0].dropped == 0
    _wait_for(lambda: "quota_changed" in only_vm2.kinds())
    assert {e.vm_id for e in only_vm2.events} == {2}
    assert set(launches.kinds()) == {"launch_completed"}
    assert json.loads(everything.events[0].detail_json)["share"] == 10


def test_a_slow_reader_loses_the_oldest_events_and_is_told_how_many(client, daemon):
    hv = daemon.hv
    hv.register_vm(1, 100, 10)
    stream = client.stub.WatchEvents(pb.WatchEventsRequest(kinds=["idle_hint"]))
    _wait_for(lambda: len(daemon.grpc.servicer._watchers) == 1)
    emitted = 40 * limits.EVENT_QUEUE_DEPTH  # far more than the queue and gRPC's buffers hold
    for _ in range(emitted):
        hv.idle_hint(1, True)
    hv.idle_hint(1, False)  # the newest event is never the one dropped: it marks the end
    received = 0
    for ev in stream:
        received += 1
        if not json.loads(ev.detail_json)["idle"]:
            last = ev
            break
    stream.cancel()
    assert last.dropped > 0
    assert received + last.dropped == emitted + 1  # every event either arrived or was counted


def test_watchers_unsubscribe_when_the_client_goes_away(client, daemon):
    hv = daemon.hv
    baseline = len(hv._subscribers)
    c = Collector(client)
    _wait_for(lambda: len(hv._subscribers) == baseline + 1)
    c.stream.cancel()
    c.join(5)
    _wait_for(lambda: len(hv._subscribers) == baseline and not daemon.grpc.servicer._watchers)


def test_the_number_of_streams_is_bounded(client, daemon):
    streams = [Collector(client) for _ in range(limits.MAX_EVENT_WATCHERS)]
    _wait_for(lambda: len(daemon.grpc.servicer._watchers) == limits.MAX_EVENT_WATCHERS)
    extra = client.stub.WatchEvents(pb.WatchEventsRequest())
    with pytest.raises(grpc.RpcError) as info:
        next(extra)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # unary calls are still served while every stream slot is taken
    assert client.call("ListVMs", pb.ListVMsRequest()).vms == []
    for s in streams:
        s.stream.cancel()
    _wait_for(lambda: not daemon.grpc.servicer._watchers)


def test_too_many_filters_is_invalid(client):
    stream = client.stub.WatchEvents(pb.WatchEventsRequest(vm_ids=list(range(1, limits.MAX_EVENT_FILTERS + 2))))
    with pytest.raises(grpc.RpcError) as info:
        next(stream)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_stopping_the_server_ends_open_streams_promptly(client, daemon):
    c = Collector(client)
    _wait_for(lambda: len(daemon.grpc.servicer._watchers) == 1)
    started = time.monotonic()
    daemon.grpc.stop(grace=5.0)
    c.join(5)
    assert not c.is_alive()
    assert time.monotonic() - started < 3.0
