"""Issue 16 under a guest's device: a VM served over vhost-user (real sockets, the raw
front-end a QEMU would be) moves to another device while its launches are queued; the
guest notices only a pause: every request is answered, its handles still work, and its
results are bit for bit those of a VM that never moved (same requests, other device)."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading

import numpy as np
import pytest

from hypervisor.config import DaemonConfig, VMConfig
from hypervisor.daemon import Daemon
from tests.integration.test_vhost_device import F32, Guest
from tests.integration.test_vhost_device_lifecycle import start_slow, wait_until
from tests.support.programs import AXPY
from tests.support.vhost_frontend import VhostUserFrontend
from virtio_backend.gpu import guest as g
from virtio_backend.wire import PxosCmdType, PxosStatus

N, STEPS = 4096, 10


@pytest.fixture
def daemon():
    d = tempfile.mkdtemp(prefix="pxos-", dir="/tmp")
    cfg = DaemonConfig.model_validate({"daemon": {"grpc_socket": os.path.join(d, "hvd.sock"), "metrics_address": None,
                                                  "backend": "numpy", "socket_dir": os.path.join(d, "vms"),
                                                  "devices": 2},
                                       "memory": {"device_pool": "32Mi"}})
    dm = Daemon(cfg).start(metrics=False)
    yield dm
    dm.stop(grace=1.0)
    shutil.rmtree(d, ignore_errors=True)


def _prepare(guest: Guest, x: np.ndarray, y: np.ndarray) -> tuple[int, int, int]:
    hx, hy = guest.alloc(N), guest.alloc(N)
    guest.ok(g.write(hx, 0, x.tobytes()))
    guest.ok(g.write(hy, 0, y.tobytes()))
    kid = guest.ok(g.compile(AXPY))["kernels"][0]["kernel_id"]
    return hx, hy, kid


def _step(kid: int, hx: int, hy: int, i: int) -> bytes:
    return g.launch(kid, [g.bind_f64("alpha", 1.0 + i / 7, F32), g.bind_buffer("x", hx), g.bind_buffer("y", hy)])


def test_a_guest_keeps_running_across_a_move(daemon):
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal(N).astype(np.float32), rng.standard_normal(N).astype(np.float32)
    moving = daemon.add_vm(VMConfig(id=2, memory=8 << 20, share=50, socket="vm2.sock", device=0)).socket
    still = daemon.add_vm(VMConfig(id=3, memory=8 << 20, share=50, socket="vm3.sock", device=1)).socket
    with VhostUserFrontend(still) as fe3:
        ref = Guest(fe3.boot())
        hx, hy, kid = _prepare(ref, x, y)
        for i in range(STEPS):
            ref.ok(_step(kid, hx, hy, i))
        expected = ref.ok(g.read(hy, 0, 4 * N), read_length=4 * N)["payload"]
    with VhostUserFrontend(moving) as fe:
        guest = Guest(fe.boot())
        hx, hy, kid = _prepare(guest, x, y)
        slow_head, _ = start_slow(guest, 6000)  # runs for a while: the steps queue behind it
        heads = [guest.send(_step(kid, hx, hy, i)) for i in range(STEPS)]
        wait_until(lambda: daemon.transport_status()[2]["device"]["launches_inflight"] == STEPS + 1, timeout=30)
        report = {}
        mover = threading.Thread(target=lambda: report.update(daemon.move_vm(2, 1)))
        mover.start()
        used = fe.wait_used(0, STEPS + 1, timeout=120)
        mover.join(60)
        assert {u.head for u in used} == {slow_head, *heads}
        for u in used:
            assert g.parse_response(PxosCmdType.PXOS_CMD_LAUNCH, u.data)["status"] == PxosStatus.PXOS_S_OK
        assert report["from_device"] == 0 and report["to_device"] == 1 and report["launches_waited"] == STEPS
        assert daemon.hv.vm_info(2).device == 1
        got = guest.ok(g.read(hy, 0, 4 * N), read_length=4 * N)["payload"]
        assert got == expected  # bit for bit
        st = guest.ok(g.stats())
        assert st["launches_total"] == STEPS + 1 and st["nbuffers"] == 4
        guest.ok(g.free(hx))  # its handles still work on the new device
        assert daemon.hv.device_list()[0][1].pool_used == 0
