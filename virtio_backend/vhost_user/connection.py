"""One front-end (QEMU) connection: the back-end side of vhost-user, message by message.

Spec: QEMU ``docs/interop/vhost-user.rst``. Each frame is decoded into a typed
``Message`` (``protocol.decode``), dispatched through one table to one ``_handle_<verb>``,
and answered (replies carry flags 0x5). A ``ProtocolError`` anywhere ends this
connection only: the device is reset, every fd and mapping released, and the server
accepts the next front-end on the same socket.

Features: we offer VERSION_1, INDIRECT_DESC, EVENT_IDX and PROTOCOL_FEATURES plus the
device's bits; protocol features CONFIG (QEMU refuses a GPU back-end without it),
REPLY_ACK (so QEMU waits for SET_* when it asks to, which closes the "kick before enable"
race from its side), RESET_DEVICE (a clean device reset without a reconnect) and MQ
(GET_QUEUE_NUM is then answered). We do not offer INFLIGHT_SHMFD: it lets a back-end that
crashed resume requests from shared memory, but a pxOS reset or disconnect releases the
VM's hypervisor state (buffers, launches) anyway, so there is nothing to resume into, and
QEMU's vhost-user-gpu never asks for it. Nor LOG_SHMFD/LOG_ALL (no migration dirty log),
STATUS, CONFIGURE_MEM_SLOTS or BACKEND_REQ: QEMU then never sends their messages, and
any that come are protocol errors.

Ring states (spec "Ring states"): a ring is *started* by SET_VRING_KICK and *stopped* by
GET_VRING_BASE; with PROTOCOL_FEATURES it starts *disabled* and SET_VRING_ENABLE toggles
it. The device sees ``queue_started`` when a ring is started, enabled and mapped, then at
once ``queue_kicked`` (a kick can arrive before the enable is read). When the last started
ring stops, the device is *suspended*: ``reset()``, in-flight requests invalidated, guest
memory unmapped (QEMU sends SET_MEM_TABLE again before it restarts the rings).

A front-end is trusted with nothing (issue 17): every fd is checked for what it must be
(``notifiers``: eventfds for kick/call/err, made non-blocking; ``memory``: a regular file
for RAM, sealed where it allows), a "no fd" kick (polling) and a ring address asking for
dirty logging (never offered) are refused, a new memory table rebinds running rings
all-or-nothing with the checks of their start, and guest memory that goes bad under its
mapping (the SIGBUS guard counted a fault) ends the connection. Each of these ends only
this connection, with one log line (``fail``); a request that asked for REPLY_ACK gets
its reply or sees the connection close, never silence.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass

from hypervisor.errors import ProtocolError
from virtio_backend.core import PXQ_MAX_QUEUE_SIZE, lib
from virtio_backend.vhost_user import channel, notifiers
from virtio_backend.vhost_user.memory import GuestMemory
from virtio_backend.vhost_user.protocol import (
    DEVICE_REQUESTS,
    U64,
    ConfigAccess,
    DeviceMessage,
    MemTable,
    Message,
    NoPayload,
    VhostUserProtocolFeature,
    VhostUserRequest,
    VirtioFeature,
    VringAddr,
    VringFile,
    VringState,
    encode_config,
    encode_reply,
    encode_u64,
    encode_vring_state,
)
from virtio_backend.vhost_user.virtqueue import Virtqueue

log = logging.getLogger(__name__)
PF, R, VF = VhostUserProtocolFeature, VhostUserRequest, VirtioFeature

# Plain ints, not IntFlags: ``~`` of an IntFlag only complements its named bits, which
# would let unknown bits through the "acked but never offered" checks.
LIBRARY_FEATURES = int(VF.VIRTIO_F_VERSION_1 | VF.VIRTIO_RING_F_INDIRECT_DESC | VF.VIRTIO_RING_F_EVENT_IDX
                       | VF.VHOST_USER_F_PROTOCOL_FEATURES)
LIBRARY_PROTOCOL_FEATURES = int(PF.CONFIG | PF.REPLY_ACK | PF.RESET_DEVICE | PF.MQ)
#: Transport bits QEMU acks although we never offer them (QEMU 10 sends RING_RESET in
#: SET_FEATURES whatever the back-end said, see qemu-facts.md). They need nothing from a
#: split-ring back-end: a ring reset arrives as that ring's stop and restart. Any other
#: bit never offered (packed rings, in-order, IOMMU, dirty logging...) would change what
#: the rings mean, so it ends the connection.
TOLERATED_UNOFFERED_FEATURES = int(VF.VIRTIO_F_RING_RESET | VF.VIRTIO_F_NOTIFY_ON_EMPTY | VF.VIRTIO_F_ANY_LAYOUT)
#: Protocol features a device may add: only those whose messages the library serves.
SERVABLE_PROTOCOL_FEATURES = LIBRARY_PROTOCOL_FEATURES
_TOTALS = ("popped", "completed", "malformed", "dropped_late")
#: Memory tables one connection may keep mapped at once: the current one and those a new
#: table replaced while requests still point into them. Each holds up to 8 mappings and
#: 8 slots of the daemon-wide SIGBUS guard; a front-end that sends table after table
#: while requests are held must not be able to take every slot from the other VMs.
MAX_LIVE_TABLES = 4
#: SET_VRING_ADDR flags: VHOST_VRING_F_LOG asks for dirty logging of the used ring, which
#: needs LOG_ALL/LOG_SHMFD; neither is offered, so any flag is refused.
VHOST_VRING_F_LOG = 0x1
_VRING_ADDR_FLAGS = 0


class RequestFailed(Exception):
    """A request we refuse without ending the connection (REPLY_ACK answers non-zero)."""


@dataclass
class ConnectionStats:
    messages: int = 0
    device_stops: int = 0
    device_errors: int = 0
    memory_faults: int = 0  # SIGBUS faults the guard absorbed in this connection's memory
    # Counters of queues already stopped (live queues keep their own in Virtqueue.stats).
    popped: int = 0
    completed: int = 0
    malformed: int = 0
    dropped_late: int = 0


@dataclass
class _Vring:
    num: int = 0
    base: int = 0
    addr: VringAddr | None = None
    kick_fd: int | None = None
    call_fd: int | None = None
    err_fd: int | None = None
    started: bool = False
    enabled: bool = False
    vq: Virtqueue | None = None


class VhostUserConnection:
    """The back-end of one front-end connection (see the module docstring). The device is
    built by ``device_factory(connection)``; devices use ``call_soon_threadsafe`` and
    ``queue(i)``; everything else runs on the loop thread."""

    def __init__(self, sock: socket.socket, loop, device_factory, *, name: str = "vhost-user",
                 on_closed=None):
        self.name = name
        self.sock, self.loop = sock, loop
        self.features = 0
        self.protocol_features = 0
        self.stats = ConnectionStats()
        self.closed = False
        self.close_reason = ""
        self._on_closed = on_closed
        self._memory: GuestMemory | None = None
        self._tables: list[GuestMemory] = []  # current and retired tables still mapped
        self._guard_seen = lib.pxq_guard_events()
        self._failing = False
        self._owned = False  # SET_OWNER seen: ring and memory requests come only after it
        sock.settimeout(channel.FRAME_TIMEOUT_S)
        self.device = device_factory(self)
        offered = int(self.device.protocol_features())
        if offered & ~SERVABLE_PROTOCOL_FEATURES:
            raise ValueError(f"device asks for protocol features {offered & ~SERVABLE_PROTOCOL_FEATURES:#x} "
                             "the library cannot serve")
        self._vrings = [_Vring() for _ in range(self.device.num_queues)]
        self._handlers = {
            R.GET_FEATURES: self._handle_get_features,
            R.SET_FEATURES: self._handle_set_features,
            R.SET_OWNER: self._handle_set_owner,
            R.RESET_OWNER: self._handle_reset_owner,
            R.SET_MEM_TABLE: self._handle_set_mem_table,
            R.SET_VRING_NUM: self._handle_set_vring_num,
            R.SET_VRING_ADDR: self._handle_set_vring_addr,
            R.SET_VRING_BASE: self._handle_set_vring_base,
            R.GET_VRING_BASE: self._handle_get_vring_base,
            R.SET_VRING_KICK: self._handle_set_vring_kick,
            R.SET_VRING_CALL: self._handle_set_vring_call,
            R.SET_VRING_ERR: self._handle_set_vring_err,
            R.GET_PROTOCOL_FEATURES: self._handle_get_protocol_features,
            R.SET_PROTOCOL_FEATURES: self._handle_set_protocol_features,
            R.GET_QUEUE_NUM: self._handle_get_queue_num,
            R.SET_VRING_ENABLE: self._handle_set_vring_enable,
            R.GET_CONFIG: self._handle_get_config,
            R.SET_CONFIG: self._handle_set_config,
            R.RESET_DEVICE: self._handle_reset_device,
        }
        loop.add_reader(sock.fileno(), self._on_readable)
        loop.after_each(self._check_memory)

    # -- the device's API ---------------------------------------------------------------
    def call_soon_threadsafe(self, fn, *args) -> bool:
        """Run ``fn(*args)`` on this connection's loop thread (from any thread)."""
        return self.loop.call_soon_threadsafe(fn, *args)

    def queue(self, index: int) -> Virtqueue | None:
        return self._vrings[index].vq

    def offered_features(self) -> int:
        return LIBRARY_FEATURES | int(self.device.device_features())

    def offered_protocol_features(self) -> int:
        return LIBRARY_PROTOCOL_FEATURES | int(self.device.protocol_features())

    def totals(self) -> dict[str, int]:
        """Requests popped/completed, malformed chains, late completions dropped: over the
        connection's whole life (stopped queues included)."""
        out = {k: getattr(self.stats, k) for k in _TOTALS}
        for v in self._vrings:
            if v.vq is not None:
                for k in _TOTALS:
                    out[k] += getattr(v.vq.stats, k)
        return out

    def status(self) -> dict:
        queues = {}
        for i, v in enumerate(self._vrings):
            q = {"size": v.num, "started": v.started, "enabled": v.enabled}
            if v.vq is not None:
                s = v.vq.stats
                q.update(broken=v.vq.broken, in_flight=v.vq.in_flight, popped=s.popped,
                         completed=s.completed, malformed=s.malformed, dropped_late=s.dropped_late,
                         kicks=s.kicks, kicks_deferred=s.kicks_deferred)
            queues[i] = q
        return {"connected": not self.closed, "features": self.features,
                "protocol_features": self.protocol_features, "memory_regions":
                len(self._memory.regions) if self._memory else 0,
                "unsealed_regions": self._memory.unsealed() if self._memory else 0, "queues": queues,
                "messages": self.stats.messages, "device_stops": self.stats.device_stops,
                "device_errors": self.stats.device_errors, "memory_faults": self.stats.memory_faults,
                **self.totals()}

    # -- frames ---------------------------------------------------------------------------
    def _on_readable(self) -> None:
        try:
            msg = channel.recv_message(self.sock, self.protocol_features)
            if msg is None:
                self.close("front-end closed the connection")
                return
            self.stats.messages += 1
            self._dispatch(msg)
        except ProtocolError as exc:
            self.fail(f"protocol error: {exc}")
        except Exception as exc:  # a host bug: never leave a REPLY_ACK unanswered
            log.exception("%s: failed on a front-end message", self.name)
            self.close(f"internal error: {type(exc).__name__}: {exc}", quiet=True)

    def _dispatch(self, msg: Message) -> None:
        ok, reply = True, None
        if log.isEnabledFor(logging.DEBUG):  # --log-level debug: every front-end message
            log.debug("%s: <- %s%s", self.name, msg.request.name, " (reply wanted)" if msg.need_reply else "")
        if log.isEnabledFor(logging.DEBUG):  # --log-level debug: every front-end message
            log.debug("%s: <- %s%s", self.name, msg.request.name, " (reply wanted)" if msg.need_reply else "")
        try:
            if msg.request in DEVICE_REQUESTS:
                reply = self._device_message(msg)
            else:
                reply = self._handlers[msg.request](msg.body)
        except RequestFailed as exc:
            log.warning("%s: %s refused: %s", self.name, msg.request.name, exc)
            ok = False
        if reply is not None:
            channel.send_frame(self.sock, encode_reply(msg.request, reply))
        elif msg.need_reply and self.protocol_features & PF.REPLY_ACK:
            channel.send_frame(self.sock, encode_reply(msg.request, encode_u64(0 if ok else 1)))

    def _device_message(self, msg: Message) -> bytes | None:
        body: DeviceMessage = msg.body
        try:
            return self.device.handle_device_message(int(msg.request), body.payload, list(body.fds))
        except ProtocolError:
            raise
        except Exception as exc:
            self.stats.device_errors += 1
            log.exception("%s: device failed on %s", self.name, msg.request.name)
            raise RequestFailed(str(exc)) from exc

    # -- handlers ---------------------------------------------------------------------------
    def _handle_get_features(self, _: NoPayload) -> bytes:
        return encode_u64(self.offered_features())

    def _handle_set_features(self, body: U64) -> None:
        extra = body.value & ~self.offered_features() & ~TOLERATED_UNOFFERED_FEATURES
        if extra:
            raise ProtocolError(f"SET_FEATURES acks bits never offered: {extra:#x}")
        self.features = body.value
        for i in range(len(self._vrings)):  # without PROTOCOL_FEATURES, rings are enabled
            self._update_queue(i)

    def _handle_get_protocol_features(self, _: NoPayload) -> bytes:
        return encode_u64(self.offered_protocol_features())

    def _handle_set_protocol_features(self, body: U64) -> None:
        extra = body.value & ~self.offered_protocol_features()
        if extra:
            raise ProtocolError(f"SET_PROTOCOL_FEATURES acks bits never offered: {extra:#x}")
        self.protocol_features = body.value

    def _handle_set_owner(self, _: NoPayload) -> None:
        self._owned = True  # one front-end per connection: ownership is the connection itself

    def _need_owner(self, what: str) -> None:
        if not self._owned:
            raise ProtocolError(f"{what} before SET_OWNER (the vhost-user order: SET_OWNER first)")

    def _handle_reset_owner(self, _: NoPayload) -> None:
        self._reset_all(keep_notifiers=True)

    def _handle_reset_device(self, _: NoPayload) -> None:
        self._reset_all(keep_notifiers=True)

    def _handle_get_queue_num(self, _: NoPayload) -> bytes:
        return encode_u64(len(self._vrings))

    def _handle_set_mem_table(self, body: MemTable) -> None:
        if not self._owned:
            channel.close_fds(r.fd for r in body.regions)
            self._need_owner("SET_MEM_TABLE")
        self._tables = [t for t in self._tables if not t.closed]
        if len(self._tables) >= MAX_LIVE_TABLES:
            channel.close_fds(r.fd for r in body.regions)
            raise ProtocolError(f"SET_MEM_TABLE while {len(self._tables)} tables are still in use "
                                f"(at most {MAX_LIVE_TABLES})")
        try:
            new = GuestMemory(body.regions)
        finally:
            channel.close_fds(r.fd for r in body.regions)  # the mappings keep what they need
        # Rings already running move to the new table all-or-nothing: every ring's new
        # pointers are checked (inside guest memory, aligned) before any ring changes.
        try:
            moves = [(v.vq, self._translate_rings(new, v)) for v in self._vrings
                     if v.vq is not None and v.vq.live]
        except ProtocolError:
            new.close()
            raise
        for vq, rings in moves:
            vq._rebind(new, rings)  # checked above: cannot fail
        old, self._memory = self._memory, new
        self._tables.append(new)
        if old is not None:
            old.retire()
        for i in range(len(self._vrings)):
            self._update_queue(i)

    def _handle_set_vring_num(self, body: VringState) -> None:
        self._need_owner("SET_VRING_NUM")
        v = self._vring(body.index)
        if v.vq is not None:
            raise ProtocolError(f"SET_VRING_NUM on started ring {body.index}")
        if not 0 < body.num <= PXQ_MAX_QUEUE_SIZE or body.num & (body.num - 1):
            raise ProtocolError(f"ring {body.index}: size {body.num} is not a power of two <= {PXQ_MAX_QUEUE_SIZE}")
        v.num = body.num

    def _handle_set_vring_base(self, body: VringState) -> None:
        self._need_owner("SET_VRING_BASE")
        v = self._vring(body.index)
        if v.vq is not None:
            raise ProtocolError(f"SET_VRING_BASE on started ring {body.index}")
        if body.num > 0xFFFF:
            raise ProtocolError(f"ring {body.index}: base {body.num} does not fit a split ring")
        v.base = body.num

    def _handle_set_vring_addr(self, body: VringAddr) -> None:
        self._need_owner("SET_VRING_ADDR")
        v = self._vring(body.index)
        if body.flags & VHOST_VRING_F_LOG:
            raise ProtocolError(f"ring {body.index}: dirty logging asked (VHOST_VRING_F_LOG) but LOG_ALL "
                                "was never offered")
        if body.flags & ~_VRING_ADDR_FLAGS:
            raise ProtocolError(f"ring {body.index}: unknown address flags {body.flags:#x}")
        if v.vq is not None and (v.addr.desc, v.addr.avail, v.addr.used) != (body.desc, body.avail, body.used):
            raise ProtocolError(f"ring {body.index}: addresses changed while started")
        v.addr = body
        if self._memory is not None and v.num:
            self._translate_rings(self._memory, v)  # refuse a bad address now, not later
        self._update_queue(body.index)

    def _handle_get_vring_base(self, body: VringState) -> bytes:
        v = self._vring(body.index)
        if v.vq is not None:
            v.base = v.vq.last_avail
        self._stop_ring(body.index)
        v.started = False
        self._set_fd(v, "kick_fd", None, body.index)
        if not any(x.started for x in self._vrings):
            self._suspend()
        return encode_vring_state(body.index, v.base)

    def _handle_set_vring_kick(self, body: VringFile) -> None:
        v = self._vring(body.index)
        if body.fd is None:
            # VHOST_USER_VRING_NOFD_MASK: the back-end would have to poll the ring. We
            # never do (a spinning loop per VM), and QEMU always passes a kick eventfd.
            raise ProtocolError(f"ring {body.index}: SET_VRING_KICK without an fd (polling) is not supported")
        self._set_fd(v, "kick_fd", body.fd, body.index)
        v.started = True
        self._update_queue(body.index)

    def _handle_set_vring_call(self, body: VringFile) -> None:
        self._set_fd(self._vring(body.index), "call_fd", body.fd, body.index)

    def _handle_set_vring_err(self, body: VringFile) -> None:
        self._set_fd(self._vring(body.index), "err_fd", body.fd, body.index)

    def _handle_set_vring_enable(self, body: VringState) -> None:
        v = self._vring(body.index)
        if body.num not in (0, 1):
            raise ProtocolError(f"SET_VRING_ENABLE {body.num} for ring {body.index}")
        v.enabled = bool(body.num)
        self._update_queue(body.index)

    def _handle_get_config(self, body: ConfigAccess) -> bytes:
        try:
            data = bytes(self.device.get_config(body.offset, body.size))
            if len(data) != body.size:
                raise ValueError(f"device returned {len(data)} config bytes for {body.size}")
        except Exception:
            self.stats.device_errors += 1
            log.exception("%s: GET_CONFIG %d+%d failed", self.name, body.offset, body.size)
            return b""  # an empty reply is QEMU's error signal (libvhost-user does the same)
        return encode_config(body.offset, body.size, body.flags, data)

    def _handle_set_config(self, body: ConfigAccess) -> None:
        try:
            self.device.set_config(body.offset, body.data)
        except Exception as exc:
            self.stats.device_errors += 1
            raise RequestFailed(f"SET_CONFIG {body.offset}+{body.size}: {exc}") from exc

    # -- ring state ----------------------------------------------------------------------
    def _vring(self, index: int) -> _Vring:
        if not 0 <= index < len(self._vrings):
            raise ProtocolError(f"ring index {index} out of range (device has {len(self._vrings)})")
        return self._vrings[index]

    def _set_fd(self, v: _Vring, attr: str, fd: int | None, index: int) -> None:
        if fd is not None:
            try:  # an eventfd, non-blocking, or the fd is closed and the connection ends
                notifiers.accept_eventfd(fd, f"ring {index} {attr.removesuffix('_fd')} fd")
            except ProtocolError:
                os.close(fd)
                raise
        old = getattr(v, attr)
        if old is not None:
            if attr == "kick_fd":
                self.loop.remove_reader(old)
            os.close(old)
        setattr(v, attr, fd)
        if fd is not None and attr == "kick_fd":
            try:
                self.loop.add_reader(fd, lambda: self._on_kick(index))
            except (OSError, ValueError) as exc:
                raise ProtocolError(f"ring {index}: the kick fd cannot be watched: {exc}") from exc

    def _translate_rings(self, memory: GuestMemory, v: _Vring) -> tuple[int, int, int]:
        """Host pointers of ring ``v``'s parts in ``memory``, checked as a ring start checks
        them: each part inside one region, aligned as the spec asks."""
        try:
            rings = (memory.translate_qva(v.addr.desc, lib.pxq_desc_size(v.num)),
                     memory.translate_qva(v.addr.avail, lib.pxq_avail_size(v.num)),
                     memory.translate_qva(v.addr.used, lib.pxq_used_size(v.num)))
        except Exception as exc:
            raise ProtocolError(f"ring addresses outside the memory table: {exc}") from exc
        if lib.pxq_vring_check_addrs(v.num, *rings) < 0:
            raise ProtocolError(f"ring addresses {v.addr.desc:#x}/{v.addr.avail:#x}/{v.addr.used:#x} are not "
                                "aligned as the spec asks (16/2/4 bytes)")
        return rings

    def _rings_enabled(self, v: _Vring) -> bool:
        return v.enabled or not self.features & VF.VHOST_USER_F_PROTOCOL_FEATURES

    def _update_queue(self, index: int) -> None:
        v = self._vrings[index]
        if v.vq is None and v.started and v.num and v.addr is not None and self._memory is not None:
            try:
                v.vq = Virtqueue(index, v.num, self._memory, self._translate_rings(self._memory, v), v.base,
                                 event_idx=bool(self.features & VF.VIRTIO_RING_F_EVENT_IDX),
                                 indirect=bool(self.features & VF.VIRTIO_RING_F_INDIRECT_DESC),
                                 call_fd_getter=lambda: v.call_fd, err_fd_getter=lambda: v.err_fd,
                                 loop_thread=self.loop.thread_id, on_fd_error=self.fail_soon)
            except ValueError as exc:
                raise ProtocolError(str(exc)) from exc
        vq = v.vq
        if vq is None:
            return
        running = self._rings_enabled(v)
        if running and not vq.enabled:
            vq.enabled = True
            self._device_call("queue_started", index, vq)
            self._device_call("queue_kicked", index, vq)  # kick before enable: re-scan now
        elif not running and vq.enabled:
            vq.enabled = False
            self._device_call("queue_stopped", index)

    def _on_kick(self, index: int) -> None:
        v = self._vrings[index]
        if v.kick_fd is None:
            return
        kicked, why = notifiers.drain(v.kick_fd)
        if why is not None:  # an eventfd we checked cannot fail a read: never retry it
            self.fail(f"kick eventfd of ring {index}: {why}")
            return
        if not kicked:
            return
        vq = v.vq
        if vq is not None and vq.enabled:
            vq.stats.kicks += 1
            self._device_call("queue_kicked", index, vq)

    def _stop_ring(self, index: int) -> None:
        v = self._vrings[index]
        vq, v.vq = v.vq, None
        if vq is None:
            return
        if vq.enabled:
            vq.enabled = False
            self._device_call("queue_stopped", index)
        vq._stop()
        for k in _TOTALS:
            setattr(self.stats, k, getattr(self.stats, k) + getattr(vq.stats, k))

    def _suspend(self) -> None:
        """Every ring stopped (or reset/disconnect): reset the device, unmap memory."""
        for i in range(len(self._vrings)):
            self._stop_ring(i)
        self._device_call("reset")
        self.stats.device_stops += 1
        mem, self._memory = self._memory, None
        if mem is not None:
            mem.retire()
        self._tables = [t for t in self._tables if not t.closed]

    def _reset_all(self, *, keep_notifiers: bool = False) -> None:
        """Back to the state of a fresh connection. RESET_DEVICE keeps the call and error
        eventfds (QEMU sets the error fd once, at start-up, and never again); a
        disconnect closes everything."""
        self._suspend()
        fresh = []
        for i, v in enumerate(self._vrings):
            self._set_fd(v, "kick_fd", None, i)
            if not keep_notifiers:
                self._set_fd(v, "call_fd", None, i)
                self._set_fd(v, "err_fd", None, i)
            fresh.append(_Vring(call_fd=v.call_fd, err_fd=v.err_fd))
        self._vrings = fresh
        self.features = 0

    def _device_call(self, name: str, *args) -> None:
        try:
            getattr(self.device, name)(*args)
        except Exception:
            self.stats.device_errors += 1
            log.exception("%s: device %s%r failed", self.name, name, args)

    # -- guest memory gone bad -------------------------------------------------------------
    def _check_memory(self) -> None:
        """After every loop pass: did the SIGBUS guard absorb a fault in our memory? (One C
        call when nothing happened anywhere; a fault of another VM only costs a scan.)"""
        seen = lib.pxq_guard_events()
        if seen == self._guard_seen or self.closed:
            return
        self._guard_seen = seen
        self._tables = [t for t in self._tables if not t.closed]
        faults = sum(t.faults() for t in self._tables)
        if faults > self.stats.memory_faults:
            self.stats.memory_faults = faults
            self.fail(f"guest memory went bad under its mapping ({faults} SIGBUS absorbed: the front-end "
                      "truncated a memory region, or its file could not supply a page)")

    # -- end -------------------------------------------------------------------------------
    def fail(self, reason: str) -> None:
        """The front-end misbehaved: end this connection (device reset) with ONE warning.
        Other VMs never notice; the socket serves the next front-end."""
        if self.closed:
            return
        log.warning("%s: ending the connection: %s", self.name, reason)
        self.close(reason, quiet=True)

    def fail_soon(self, reason: str) -> None:
        """``fail`` after the current handler returns (from inside a device callback), once."""
        if self._failing or self.closed:
            return
        self._failing = True
        self.loop.call_soon_threadsafe(self.fail, reason)

    def close(self, reason: str = "closed", *, quiet: bool = False) -> None:
        """End the connection: device reset, rings stopped, memory unmapped, fds closed."""
        if self.closed:
            return
        self.closed, self.close_reason = True, reason
        if not quiet:
            log.info("%s: connection ended: %s", self.name, reason)
        self.loop.remove_reader(self.sock.fileno())
        self.loop.remove_after(self._check_memory)
        try:
            self._reset_all()
        finally:
            self.sock.close()
            if self._on_closed is not None:
                self._on_closed(self)


__all__ = ["LIBRARY_FEATURES", "LIBRARY_PROTOCOL_FEATURES", "ConnectionStats", "RequestFailed",
           "VhostUserConnection"]
