"""The virtio-gpu-pxos device over time: LAUNCH chains held while later requests complete
(out of order), a device reset releasing the VM's state (usage back to zero) and dropping
late completions, QEMU disconnecting mid-request and a new one connecting, and the
transport's status. Real frontend, real sockets, real Hypervisor (NumPy backend)."""

from __future__ import annotations

import socket
import time

import pytest

from hypervisor import Hypervisor
from tests.integration.test_vhost_device import F32, Guest
from tests.support.vhost_frontend import VhostUserFrontend
from virtio_backend.gpu import guest as g
from virtio_backend.gpu.transport import VhostUserTransport
from virtio_backend.wire import PxosCmdType, PxosStatus

T, S = PxosCmdType, PxosStatus


def slow_kernel(repeats: int) -> str:
    # ~0.5 ms per round on a project machine's core: long enough to be seen in flight.
    return f"""GPU_KERNEL slow
GPU_PARAM a float32[256, 256]
GPU_PARAM out float32[256, 256]
GPU_THREAD_CODE:
    REPEAT {repeats}:
        PARALLEL_MATMUL a a -> t
        TANH t -> out
    END_REPEAT
GPU_END
"""


@pytest.fixture
def hv():
    hv = Hypervisor(backend="numpy", device_pool_bytes=64 << 20).start()
    hv.register_vm(1, 0, 50, memory_quota_bytes=4 << 20)
    yield hv
    hv.stop()


@pytest.fixture
def sock(hv, tmp_path):
    t = VhostUserTransport(hv)
    path = str(tmp_path / "vm1.sock")
    t.attach(1, path)
    yield t, path
    t.close()


def start_slow(guest: Guest, repeats: int) -> tuple[int, int]:
    """Compile and launch the slow kernel; returns (its chain's head, the kernel id)."""
    kid = guest.ok(g.compile(slow_kernel(repeats)))["kernels"][0]["kernel_id"]
    a, out = (guest.ok(g.alloc(F32, [256, 256]))["handle"] for _ in range(2))
    head = guest.send(g.launch(kid, [g.bind_buffer("a", a), g.bind_buffer("out", out)]))
    return head, kid


def wait_until(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.01)


def test_a_launch_is_held_while_later_requests_complete(hv, sock):
    transport, path = sock
    with VhostUserFrontend(path) as fe:
        guest = Guest(fe.boot())
        launch_head, _ = start_slow(guest, 8000)  # ~2 s alone: still running on a loaded host
        later = [guest.send(g.get_info()), guest.send(g.alloc(F32, [8])), guest.send(g.stats())]
        first = fe.wait_used(0, 3, timeout=10)
        assert [u.head for u in first] == later  # answered while the launch runs
        assert transport.status()[1]["device"]["launches_inflight"] == 1
        [done] = fe.wait_used(0, 1, timeout=120)
        r = g.parse_response(T.PXOS_CMD_LAUNCH, done.data)
        assert done.head == launch_head and r["status"] == S.PXOS_S_OK and r["device_ns"] > 0


def test_reset_releases_everything_and_the_next_driver_starts_clean(hv, sock):
    transport, path = sock
    with VhostUserFrontend(path) as fe:
        guest = Guest(fe.boot())
        h = guest.ok(g.alloc(F32, [1000]))["handle"]
        kid = guest.ok(g.compile(slow_kernel(1)))["kernels"][0]["kernel_id"]
        assert hv.vm_info(1).memory_used == 4000
        fe.stop()  # rings disabled, GET_VRING_BASE: the driver went away
        # Released by the VM's device worker right after (GET_VRING_BASE is answered
        # without waiting on the hypervisor), and before anything the next driver sends.
        wait_until(lambda: hv.vm_info(1).memory_used == 0)
        fe.start()  # the next driver
        guest.refused(g.free(h), S.PXOS_S_NOT_FOUND)
        guest.refused(g.kernel_info(kid), S.PXOS_S_NOT_FOUND)
        assert guest.ok(g.get_info())["memory_used"] == 0
    assert transport.status()[1]["device"]["resets_total"] >= 1


def test_a_completion_after_reset_is_dropped_never_written(hv, sock):
    transport, path = sock
    with VhostUserFrontend(path) as fe:
        guest = Guest(fe.boot())
        head, _ = start_slow(guest, 1500)
        wait_until(lambda: transport.status()[1]["device"]["launches_inflight"] == 1)
        ring_used_before = fe.ring(0).used_idx()
        fe.stop()
        # the running launch finishes; its completion reaches a device of a newer generation
        wait_until(lambda: transport.status()[1]["device"]["late_completions_dropped"] == 1, timeout=30)
        assert fe.ring(0).used_idx() == ring_used_before  # nothing pushed for the old chain
        wait_until(lambda: hv.vm_info(1).memory_used == 0)
        fe.start()
        assert Guest(fe).ok(g.get_info())["vm_id"] == 1
        assert not any(u.head == head for u in fe.poll_used(0))


def test_disconnect_mid_request_then_a_new_qemu_is_served(hv, sock):
    transport, path = sock
    fe = VhostUserFrontend(path)
    try:
        guest = Guest(fe.boot())
        guest.ok(g.alloc(F32, [100]))
        start_slow(guest, 1000)  # in flight when QEMU dies
        fe.disconnect()
        # A launch already running at the reset finishes first (Hypervisor.reset_vm): its
        # buffers go when it lets go of them, which on a loaded machine is after the
        # connection is seen closed. Released, not leaked: wait for it.
        wait_until(lambda: not transport.status()[1]["connected"])
        wait_until(lambda: hv.vm_info(1).memory_used == 0)
    finally:
        fe.close()
    with VhostUserFrontend(path) as fe2:
        guest = Guest(fe2.boot())
        assert guest.ok(g.get_info())["memory_used"] == 0
        guest.ok(g.alloc(F32, [10]))
        st = transport.status()[1]
        assert st["connected"] and st["connections_total"] == 2
        assert st["queues"][0]["size"] == 64 and st["queues"][1]["size"] == 16
    wait_until(lambda: hv.vm_info(1).memory_used == 0)


def test_detach_removes_the_socket_and_releases_the_vm(hv, sock):
    transport, path = sock
    with VhostUserFrontend(path) as fe:
        Guest(fe.boot()).ok(g.alloc(F32, [10]))
        transport.detach(1)
        assert hv.vm_info(1).memory_used == 0 and 1 not in transport.status()
    with socket.socket(socket.AF_UNIX) as s, pytest.raises(FileNotFoundError):
        s.connect(path)
