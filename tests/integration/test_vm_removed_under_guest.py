"""A VM removed while its guest runs (issue 11, item 3): the connected front-end is not cut
off (QEMU would leave the guest's requests unanswered for ever). What the guest had in
flight and everything it sends afterwards ends with PXOS_S_VM_GONE; the socket goes at
once; the VM id can be added again meanwhile, and the old connection ending never touches
the new VM. Real daemon object, real sockets, real frontend, NumPy backend."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile

import pytest

from hypervisor import Hypervisor
from hypervisor.config import DaemonConfig, VMConfig
from hypervisor.daemon import Daemon
from tests.integration.test_vhost_device import F32, Guest
from tests.integration.test_vhost_device_lifecycle import start_slow, wait_until
from tests.support.vhost_frontend import VhostUserFrontend
from virtio_backend.gpu import guest as g
from virtio_backend.wire import PxosCmdType, PxosStatus

T, S = PxosCmdType, PxosStatus


@pytest.fixture
def daemon():
    d = tempfile.mkdtemp(prefix="pxos-", dir="/tmp")  # short: unix socket paths fit in 108 bytes
    cfg = DaemonConfig.model_validate({"daemon": {"grpc_socket": os.path.join(d, "hvd.sock"),
                                                  "metrics_address": None, "backend": "numpy",
                                                  "socket_dir": os.path.join(d, "vms")}})
    dm = Daemon(cfg, hypervisor=Hypervisor(backend="numpy", device_pool_bytes=64 << 20)).start(metrics=False)
    yield dm
    dm.stop(grace=1.0)
    shutil.rmtree(d, ignore_errors=True)


def _vm(vm_id: int = 2) -> VMConfig:
    return VMConfig(id=vm_id, memory=8 << 20, share=50, socket=f"vm{vm_id}.sock")


def _gone(resp: dict) -> None:
    assert resp["status"] == S.PXOS_S_VM_GONE, resp
    assert "VM 2 was removed from pxos-hvd by the operator" in resp["message"]


def test_in_flight_and_later_requests_end_with_vm_gone(daemon):
    path = daemon.add_vm(_vm()).socket
    with VhostUserFrontend(path) as fe:
        guest = Guest(fe.boot())
        buf = guest.ok(g.alloc(F32, [64]))["handle"]
        running, kid = start_slow(guest, 4000)  # about 2 s alone: still running at the removal
        a, out = (guest.ok(g.alloc(F32, [256, 256]))["handle"] for _ in range(2))
        queued = guest.send(g.launch(kid, [g.bind_buffer("a", a), g.bind_buffer("out", out)]))
        wait_until(lambda: daemon.transport_status()[2]["device"]["launches_inflight"] == 2)

        daemon.remove_vm(2)
        assert not os.path.exists(path)  # no new connection can reach the removed VM
        with socket.socket(socket.AF_UNIX) as s, pytest.raises(FileNotFoundError):
            s.connect(path)

        # Both launches in flight are answered with VM_GONE (not left hanging, not
        # CANCELLED): the queued one at once, the running one when it has run (the time
        # allowed is for a loaded CI machine).
        done = {u.head: u for u in fe.wait_used(0, 2, timeout=120)}
        assert set(done) == {running, queued}
        for head in (queued, running):
            _gone(g.parse_response(T.PXOS_CMD_LAUNCH, done[head].data))
        # Every later request, of every kind, at once.
        for req in (g.get_info(), g.alloc(F32, [4]), g.write(buf, 0, b"\0" * 16), g.stats()):
            _gone(guest.call(req))


def test_the_vm_id_can_be_added_again_while_the_old_guest_is_connected(daemon):
    path = daemon.add_vm(_vm()).socket
    with VhostUserFrontend(path) as old:
        old_guest = Guest(old.boot())
        old_guest.ok(g.alloc(F32, [64]))
        daemon.remove_vm(2)
        again = daemon.add_vm(_vm())  # the same id and socket path: served by a new listener
        assert again.socket == path
        with VhostUserFrontend(path) as new:
            guest = Guest(new.boot())
            guest.ok(g.alloc(F32, [1024]))
            used = daemon.hv.vm_info(2).memory_used
            assert used == 4096
            # The old guest still gets VM_GONE; nothing it does reaches the new VM.
            _gone(old_guest.call(g.alloc(F32, [8])))
            old.disconnect()  # the old QEMU goes: its device reset must not release the new VM
            wait_until(lambda: not any(s.serving for s in daemon.transport._retired))
            assert daemon.hv.vm_info(2).memory_used == used
            guest.ok(g.alloc(F32, [8]))


def test_removing_a_vm_without_a_guest_detaches_it(daemon):
    path = daemon.add_vm(_vm()).socket
    daemon.remove_vm(2)
    assert not os.path.exists(path) and daemon.transport._retired == []
    daemon.add_vm(_vm())
    with VhostUserFrontend(path) as fe:
        Guest(fe.boot()).ok(g.alloc(F32, [8]))
