"""Moving a VM from one device of a DeviceSet to another (``pxosctl vm move``).

1. Checked first, nothing changed on refusal: the target exists and differs, the VM's
   share fits the target's free share, its buffers fit the target's pool (and host
   budget); the shared models it has open are on the target (DeviceSet.move_vm loads
   them there first: every device's copy has the same handles).
2. Pause: the VM's queued launches leave the source scheduler uncancelled and wait in
   ``VMRecord.held``; launches it submits meanwhile wait there too. The move waits (the
   lock released) until its running launch, its guest transfers and its buffers' copies
   in flight are done.
3. Under the lock: every buffer (freed ones a waiting launch still reads included) is
   copied (peer to peer between GPUs that allow it, else through host memory) into a
   buffer of the same handle on the target; the
   target's scheduler and memory accounts take the VM (share, cap, quota, counters), the
   VMRecord (kernels, statistics) and its open models move, the source lets go of
   everything, and the waiting launches are queued on the target with their buffers
   (and model tensors) re-bound.
   A failure here (the backend's own out-of-memory) undoes the target side and queues
   the waiting launches on the source again: the VM stays where it was, unchanged.

The pause (from step 2 to the end) is reported with the bytes moved and their rate.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from . import errors as E
from .memory import Buffer

if TYPE_CHECKING:
    from .core import Hypervisor
    from .devices import DeviceSet

log = logging.getLogger("pxos.moving")

MOVE_HISTORY = 32  # reports kept for `pxosctl vm moves` / stats
_POLL_S = 0.0005


def _check_fits(src: Hypervisor, dst: Hypervisor, vm_id: int) -> int:
    """Refuse (typed, nothing changed) a move the target cannot take; the bytes to move."""
    vm, mem = src._vm(vm_id), src.memory.vm(vm_id)
    used = sum(v.share for v in dst._vms.values())
    if used + vm.share > 100 + 1e-9:
        raise E.InvalidArgument(f"VM {vm_id} (share {vm.share:g}%) does not fit device {dst.device_id}: "
                                f"{100 - used:g}% of its share is free")
    missing = [n for n in src.models.opens_of(vm_id) if not dst.model_devices(n)]
    if missing:  # DeviceSet.move_vm loads them on the target first
        raise E.Busy(f"VM {vm_id} has shared model(s) {', '.join(sorted(missing))} open, not loaded on device "
                     f"{dst.device_id}; retry")
    need = sum(b.nbytes for b in mem.buffers.values() if not b.reset_held)
    d = dst.memory
    if d.committed + need + d.max_queued_temps() + d.swap_reserve(max((b.nbytes for b in mem.buffers.values()),
                                                                      default=0)) > d.capacity:
        raise E.OutOfDeviceMemory(
            f"VM {vm_id}: its {need} bytes of buffers do not fit device {dst.device_id} "
            f"({d.committed} of {d.capacity} bytes hold buffers there)")
    return need


def _quiet(src: Hypervisor, vm_id: int) -> bool:
    """Nothing of the VM runs or copies: its launches all wait in ``held``."""
    vm, mem = src._vms[vm_id], src.memory.vm(vm_id)
    if vm.inflight != len(vm.held) or mem.temp_bytes or mem.held_bytes:
        return False
    src.memory.reap()
    return not any(b.active or b.transfers or b.arriving is not None or b.leaving is not None
                   for b in mem.buffers.values())


def _requeue(hv: Hypervisor, vm_id: int, held: list) -> None:
    """Queue waiting launches on ``hv`` (lock held): their buffers pinned, temps admitted."""
    mem = hv.memory
    for t in held:
        job = t.payload
        unique = {b.handle: b.nbytes for b, _ in job.buffers.values()}
        mem.admit_launch(vm_id, job.temp_bytes, sum(unique.values()))
        for buf, writes in job.buffers.values():
            mem.pin(buf, writes)
        hv.scheduler.submit(replace(t))


def _unqueue(hv: Hypervisor, held: list) -> None:
    mem = hv.memory
    for t in held:
        job = t.payload
        mem.retire_launch(job.temp_bytes)
        for buf, writes in job.buffers.values():
            mem.unpin(buf, writes)  # a freed buffer stays: the move holds it in `buffers`


def _copy(src: Hypervisor, buf: Buffer, dst: Hypervisor, new: Buffer) -> bool:
    """The buffer's bytes into its new buffer: GPU to GPU where the two reach each other
    (the executor's ``peer_copy``, CuPy), else in one pass through host memory: the
    target's fill hands a host view (its own bytes on NumPy, pinned staging on a GPU) that
    the source's copy-out fills. Its device copy is the newest where it has one; no copy is
    in flight and nothing runs on it (_quiet); waiting launches keep their pins meanwhile.
    True when it went peer to peer."""
    on_src = buf.device is not None
    peer = getattr(src.executor, "peer_copy", None)
    if on_src and new.device is not None and peer is not None:
        try:
            if peer(buf.device, dst.executor, new.device):
                return True
        except Exception:  # a peer path that fails: the host path below still moves it
            log.warning("peer copy from device %d to %d failed; copying through host memory",
                        src.device_id, dst.device_id, exc_info=True)
    source = buf.device if on_src else buf.host
    target, on_dst, waits = dst.memory.begin_transfer(new, True)
    try:
        for f in waits:
            f.wait()
        dst.memory.fill_in(target, on_dst, 0, buf.nbytes,
                           lambda view: src.memory.copy_out(source, on_src, 0, [view]))
    finally:
        dst.memory.end_transfer(new)
    return False


def move_vm(ds: DeviceSet, vm_id: int, target: int, *, timeout: float, by: str = "operator") -> dict:
    t0 = time.perf_counter()
    with ds._lock:
        src_id = ds.device_of(vm_id)
        if target not in ds.devices:
            raise E.InvalidArgument(f"no device {target}; this daemon has devices {sorted(ds.devices)}")
        if target == src_id:
            raise E.InvalidArgument(f"VM {vm_id} is already on device {target}")
        src, dst = ds.devices[src_id], ds.devices[target]
        vm = src._vm(vm_id)
        if vm.held is not None:
            raise E.Busy(f"VM {vm_id} is already moving")
        _check_fits(src, dst, vm_id)
        vm.held = src.scheduler.cancel(vm_id, lambda t: True)  # taken out, not failed
    deadline = time.monotonic() + timeout
    while True:
        with ds._lock:
            if src._vms.get(vm_id) is not vm:  # removed meanwhile: its held launches failed with it
                raise E.NotFound(f"VM {vm_id} was removed while it was moving")
            if _quiet(src, vm_id):
                t_drained = time.perf_counter()
                try:
                    report = _move_locked(ds, src, dst, vm_id)
                except BaseException:
                    held, vm.held = vm.held, None
                    for t in held:
                        src.scheduler.submit(t)
                    src.dispatcher.wake()
                    raise
                break
            if time.monotonic() > deadline:
                held, vm.held = vm.held, None
                for t in held:
                    src.scheduler.submit(t)
                src.dispatcher.wake()
                raise E.Busy(f"VM {vm_id}: its running launch or transfers did not finish within {timeout:g} s; "
                             "not moved")
        time.sleep(_POLL_S)
    end = time.perf_counter()
    pause = end - t0
    report.update(vm_id=vm_id, from_device=src_id, to_device=target, by=by, pause_seconds=pause,
                  drain_seconds=t_drained - t0, copy_seconds=end - t_drained,
                  mb_per_s=report["bytes"] / 1e6 / (end - t_drained) if end > t_drained else 0.0)
    ds.moves.append(report)
    del ds.moves[:-MOVE_HISTORY]
    ds._emit("vm_moved", vm_id, **{k: v for k, v in report.items() if k != "vm_id"})
    return report


def _move_locked(ds: DeviceSet, src: Hypervisor, dst: Hypervisor, vm_id: int) -> dict:
    vm, smem = src._vms[vm_id], src.memory.vm(vm_id)
    _check_fits(src, dst, vm_id)  # again: the target may have changed while we waited
    held = vm.held  # queued before the move, and submitted while it waited
    buffers = sorted(smem.buffers.values(), key=lambda b: b.handle)
    freed = [b.handle for b in buffers if b.freed]  # by the guest; a waiting launch still reads it
    try:
        dst.scheduler.add_vm(vm_id, vm.share, vm.cap)
    except ValueError as exc:
        raise E.InvalidArgument(str(exc)) from exc
    try:
        dst.memory.add_vm(vm_id, max(smem.quota, smem.live_bytes))
        dmem = dst.memory.vm(vm_id)
        new: dict[int, Buffer] = {}
        peer_bytes = 0
        for b in buffers:
            nb = dst.memory.alloc(vm_id, b.session, b.spec, handle=b.handle)
            new[b.handle] = nb
            if _copy(src, b, dst, nb):
                peer_bytes += b.nbytes
    except BaseException:
        dst.memory.remove_vm(vm_id)
        dst.scheduler.remove_vm(vm_id)
        raise
    # Nothing can fail from here on: the source lets go, the target holds the VM.
    dmem.quota, dmem.grace_quota, dmem.idle = smem.quota, smem.grace_quota, smem.idle
    for k in ("h2d_bytes", "d2h_bytes", "evictions", "prefetch_hits", "prefetch_misses", "stall_seconds"):
        setattr(dmem, k, getattr(smem, k))
    opens = src.models.opens_of(vm_id)
    _unqueue(src, held)
    for t in held:  # its own buffers, and shared models' tensors: the target's copy (same handles)
        t.payload.buffers = {n: (new[b.handle] if b.handle in new else dst.models.tensor(b.handle), w)
                             for n, (b, w) in t.payload.buffers.items()}
    src.models.close_all(vm_id)
    dst.models.adopt_opens(vm_id, opens)
    src.scheduler.remove_vm(vm_id)
    src.memory.remove_vm(vm_id)
    src.classifier.forget(vm_id)
    dst._add_vm(src._drop_vm(vm_id))  # its in-flight count (the held launches) goes with it
    dst.memory.idle_hint(vm_id, vm.idle)
    vm.held = None
    _requeue(dst, vm_id, held)
    for h in freed:  # freed on the target too: it goes when its last launch lets go of it
        dst.memory._release(new[h])
    ds._where[vm_id] = dst.device_id
    dst.dispatcher.wake()
    return {"bytes": sum(b.nbytes for b in buffers), "buffers": len(buffers), "launches_waited": len(held),
            "peer_bytes": peer_bytes}
