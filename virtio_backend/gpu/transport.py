"""The daemon's ``vhost-user`` device transport: one virtio-gpu-pxos socket per VM.

``pxos-hvd`` finds this class through the entry point group ``pxos.device_backends``
(name ``vhost-user``, value ``virtio_backend.gpu.transport:VhostUserTransport``), so the
hypervisor never imports virtio_backend. It is built with the Hypervisor::

    transport = VhostUserTransport(hv)
    transport.attach(vm_id, "/run/pxos/vm1.sock")   # listen; serve one QEMU at a time
    transport.adopt(vm_id, sock, on_end)             # serve a connection handed over (libvirt)
    transport.status()                               # {vm_id: {...}}
    transport.detach(vm_id)                          # connection ended, device reset
    transport.retire(vm_id, why)                     # the VM is being removed: see below
    transport.close()                                # every VM detached

Each attached VM gets a ``VhostUserServer`` (its own loop thread) whose connections each
build a ``GpuDevice`` for that VM, and a ``DeviceWorker`` (its own thread, started on first
use) for the commands that may wait on the GPU. The VM's ``DeviceStats`` and worker
outlive connections, so the counters of a VM survive a QEMU reconnect.

A VM removed while its guest runs is *retired*, not detached: its socket goes at once, but
the connected QEMU keeps being served by a device that answers every PXOS request with
``PXOS_S_VM_GONE`` (device.py), so guest programs stop with a clear error rather than wait
on requests QEMU never completes. The retired server ends when QEMU disconnects (the guest
shuts down, or its VM is stopped); re-adding the VM serves a new socket meanwhile.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass

from hypervisor import Hypervisor
from hypervisor.errors import AlreadyExists, NotFound
from virtio_backend.gpu.device import GpuDevice, Retirement
from virtio_backend.gpu.inline_launch import INLINE_LAUNCH_MAX_S
from virtio_backend.gpu.metrics import DeviceStats
from virtio_backend.gpu.worker import DeviceWorker
from virtio_backend.vhost_user import VhostUserServer
from virtio_backend.vhost_user.peer import VhostUserPeer

log = logging.getLogger("pxos.virtio.gpu")

STATUS_TIMEOUT_S = 2.0  # how long status() waits for a VM's loop thread to answer
#: Overrides the LAUNCH fast path's estimate bound (inline_launch.INLINE_LAUNCH_MAX_S), in
#: microseconds; 0 turns the path off (benchmarks measure the hand-off path with it).
INLINE_LAUNCH_ENV = "PXOS_INLINE_LAUNCH_US"


@dataclass
class _Attached:
    vm_id: int
    server: VhostUserServer | VhostUserPeer
    stats: DeviceStats
    worker: DeviceWorker
    retirement: Retirement


class VhostUserTransport:
    """Serves a virtio-gpu-pxos device for each attached VM (see the module docstring)."""

    def __init__(self, hv: Hypervisor, *, inline_launch_max_s: float | None = None):
        self.hv = hv
        self.inline_launch_max_s = _inline_bound() if inline_launch_max_s is None else inline_launch_max_s
        self._lock = threading.Lock()
        self._vms: dict[int, _Attached] = {}
        self._retired: list[VhostUserServer] = []  # still serving a removed VM's front-end

    def attach(self, vm_id: int, socket_path: str, *, mode: int = 0o600, gid: int | None = None) -> None:
        """Listen on ``socket_path`` for VM ``vm_id`` (which must be registered); the socket
        file has ``mode`` and group ``gid`` (None: ours) before anyone can connect."""
        self.hv.vm_info(vm_id)  # NotFound for an unknown VM, before any socket exists
        with self._lock:
            if vm_id in self._vms:
                raise AlreadyExists(f"VM {vm_id} is already attached to {self._vms[vm_id].server.socket_path}")
            stats, worker, retirement, factory = self._device_parts(vm_id)
            server = VhostUserServer(socket_path, factory, name=f"vm{vm_id}:{socket_path}", mode=mode, gid=gid)
            server.start()  # ConfigError if the path is taken
            self._vms[vm_id] = _Attached(vm_id, server, stats, worker, retirement)
        log.info("vm %d: virtio-gpu-pxos listening on %s", vm_id, socket_path)

    def adopt(self, vm_id: int, sock, on_end=None) -> None:
        """Serve VM ``vm_id`` (registered) on ``sock``, a front-end connection someone else
        made (libvirt's socketpair, handed over by pxos-vhost-gpu). When it ends,
        ``on_end(reason)`` is called once from the VM's loop thread; ``detach`` still has to
        be called (from another thread) to release the rest."""
        self.hv.vm_info(vm_id)
        with self._lock:
            if vm_id in self._vms:
                raise AlreadyExists(f"VM {vm_id} is already attached to {self._vms[vm_id].server.socket_path}")
            stats, worker, retirement, factory = self._device_parts(vm_id)

            peer = VhostUserPeer(sock, factory, name=f"vm{vm_id}:handed-over", on_end=on_end)
            try:
                peer.start()
            except Exception:
                worker.close()
                raise
            self._vms[vm_id] = _Attached(vm_id, peer, stats, worker, retirement)
        log.info("vm %d: virtio-gpu-pxos serving a handed-over connection", vm_id)

    def detach(self, vm_id: int) -> None:
        """Stop serving ``vm_id``: its connection ends (device reset), the socket goes."""
        with self._lock:
            att = self._vms.pop(vm_id, None)
        if att is None:
            raise NotFound(f"VM {vm_id} is not attached")
        att.server.close()
        att.worker.close()
        log.info("vm %d: virtio-gpu-pxos detached", vm_id)

    def retire(self, vm_id: int, why: str) -> bool:
        """The VM is being removed (call before unregistering it): its socket goes now; a
        connected front-end keeps being served, every PXOS request answered with
        ``PXOS_S_VM_GONE`` and ``why``, until it disconnects. Returns whether one was
        connected. Commands already on the VM's worker finish first, so nothing of this
        device reaches the hypervisor once this returns."""
        with self._lock:
            att = self._vms.pop(vm_id, None)
            self._retired = [s for s in self._retired if s.serving]
        if att is None:
            raise NotFound(f"VM {vm_id} is not attached")
        att.retirement.message = why
        connected = att.server.retire()
        att.worker.close()  # runs what is queued (each answers VM_GONE at once), then ends
        if connected:
            with self._lock:
                self._retired.append(att.server)
            log.info("vm %d: removed under a connected guest: its requests now end with PXOS_S_VM_GONE "
                     "until QEMU disconnects", vm_id)
        else:
            log.info("vm %d: virtio-gpu-pxos detached", vm_id)
        return connected

    def status(self) -> dict[int, dict]:
        """Per VM: socket, connected, negotiated features, queue sizes and counters, requests
        served, errors, the device's own counters (``device``) and the jobs its worker ran
        or holds (``worker_jobs_total``)."""
        with self._lock:
            attached = list(self._vms.values())
        out = {}
        for att in attached:
            st = att.server.status(STATUS_TIMEOUT_S)
            st["device"] = self._device_stats(att)
            st["worker_jobs_total"] = att.worker.jobs_total
            out[att.vm_id] = st
        return out

    def set_inline_launch(self, max_s: float) -> None:
        """Change the LAUNCH fast path's estimate bound (0: off) for every VM, connected
        devices included (set on each VM's loop thread)."""
        self.inline_launch_max_s = max_s
        with self._lock:
            attached = list(self._vms.values())
        for att in attached:
            def put(server=att.server) -> None:
                conn = server.connection
                if conn is not None and isinstance(conn.device, GpuDevice):
                    conn.device.inline_launch_max_s = max_s
            att.server.loop.call_and_wait(put, STATUS_TIMEOUT_S)

    def close(self) -> None:
        with self._lock:
            vm_ids = list(self._vms)
            retired, self._retired = self._retired, []
        for server in retired:
            server.close()
        for vm_id in vm_ids:
            try:
                self.detach(vm_id)
            except NotFound:
                pass  # detached meanwhile

    def _device_parts(self, vm_id: int):
        """What every connection of VM ``vm_id`` shares (counters, worker, retirement) and
        the factory that builds its device for a connection."""
        stats, worker, retirement, hv = DeviceStats(), DeviceWorker(f"vm{vm_id}-device"), Retirement(), self.hv

        def factory(connection) -> GpuDevice:
            device = GpuDevice(hv, vm_id, connection, stats, worker, retirement)
            device.inline_launch_max_s = self.inline_launch_max_s
            return device

        return stats, worker, retirement, factory

    def _device_stats(self, att: _Attached) -> dict:
        # The counters change on the VM's loop thread: copy them there.
        ran, st = att.server.loop.call_and_wait(att.stats.as_dict, STATUS_TIMEOUT_S)
        return st if ran else {"error": "loop not responding"}


def _inline_bound() -> float:
    """The LAUNCH fast path's bound: INLINE_LAUNCH_ENV when it holds a number >= 0."""
    env = os.environ.get(INLINE_LAUNCH_ENV)
    if env is None:
        return INLINE_LAUNCH_MAX_S
    try:
        us = float(env)
    except ValueError:
        us = -1.0
    if not 0 <= us < 1e7:  # NaN too
        log.warning("%s=%r is not a number of microseconds >= 0; using %.0f us", INLINE_LAUNCH_ENV, env,
                    INLINE_LAUNCH_MAX_S * 1e6)
        return INLINE_LAUNCH_MAX_S
    return us / 1e6
