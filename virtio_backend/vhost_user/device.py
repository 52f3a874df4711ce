"""The device interface: what a virtio device implements to be served over vhost-user.

The generic vhost-user library (this package) owns the protocol, guest memory, the
virtqueues and the loop; a device (e.g. ``virtio_backend.gpu``) owns only its semantics.
The shape follows QEMU's ``libvhost-user`` ``VuDevIface`` callback table and rust-vmm's
``VhostUserBackend`` trait: the library calls the device, never the other way round,
except through the objects it hands over (``Virtqueue``, ``Request``, the connection).

Threading contract
------------------
Every method below is called on the connection's loop thread, and every method of the
objects the library hands over (``Virtqueue``, ``Request``) must be called on that same
thread. Work finished on another thread (the hypervisor's dispatcher) comes back with
``connection.call_soon_threadsafe(fn, *args)``; ``fn`` then runs on the loop thread and
may ``push`` and ``notify``. The memoryviews a request hands out (``readable_views``,
``writable_views`` and slices of them) may be read and written on another thread (the
GPU device's worker copies through them); when the queue stops meanwhile, the mapping
behind them stays mapped until the last of them is released, and the SIGBUS guard
watches it throughout. Never keep one past the request's completion.

Lifecycle (per QEMU connection; the factory passed to the server builds one device per
connection, ``factory(connection) -> VirtioDevice``)::

    get_config / set_config / device messages   at any time
    queue_started(i, vq)                         ring i started *and* enabled, memory mapped
    queue_kicked(i, vq)                          the avail ring may hold new heads (also once
                                                 right after queue_started: "kick before enable")
    queue_stopped(i)                             ring i disabled or stopped; no more pops
    reset()                                      every started ring stopped (GET_VRING_BASE),
                                                 RESET_DEVICE/RESET_OWNER, or disconnect

After ``reset()`` the device must hold no ``Request`` it means to use: the library has
already invalidated them (a late ``push`` of one is counted and dropped, never written),
released their memory views, and unmapped the guest memory. A device that still needs to
finish hypervisor work simply lets it complete: pushing the stale request is harmless.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from virtio_backend.vhost_user.virtqueue import Virtqueue


@runtime_checkable
class VirtioDevice(Protocol):
    """A virtio device served by the vhost-user library (see the module docstring)."""

    #: Number of virtqueues the device has (virtio-gpu: 2, control and cursor).
    num_queues: int

    def device_features(self) -> int:
        """Device-specific feature bits (e.g. ``VIRTIO_GPU_F_EDID``). The library adds
        ``VIRTIO_F_VERSION_1``, ``VIRTIO_RING_F_INDIRECT_DESC``, ``VIRTIO_RING_F_EVENT_IDX``
        and ``VHOST_USER_F_PROTOCOL_FEATURES`` itself."""
        ...

    def protocol_features(self) -> int:
        """Extra ``VhostUserProtocolFeature`` bits the device needs on top of the library's
        own (``CONFIG``, ``REPLY_ACK``, ``RESET_DEVICE``); usually 0. Bits the library
        cannot serve are refused at construction (``ValueError``)."""
        ...

    def get_config(self, offset: int, size: int) -> bytes:
        """``size`` bytes of device config space from ``offset`` (offset + size <= 256).
        Raising, or returning the wrong length, answers QEMU with an empty config (its
        error signal) and keeps the connection."""
        ...

    def set_config(self, offset: int, data: bytes) -> None:
        """The driver wrote config space. Raising answers a REPLY_ACK failure."""
        ...

    def queue_started(self, index: int, queue: Virtqueue) -> None:
        """Ring ``index`` is started and enabled, its memory mapped: ``queue`` can pop."""
        ...

    def queue_kicked(self, index: int, queue: Virtqueue) -> None:
        """The avail ring of ``queue`` may have new heads: pop until ``pop()`` returns None
        (that re-arms the guest's kick), or keep the rest for later and call ``pop`` again
        when ready (no kick comes for heads left in the ring)."""
        ...

    def queue_stopped(self, index: int) -> None:
        """Ring ``index`` was disabled or stopped; ``pop`` on it now returns None."""
        ...

    def reset(self) -> None:
        """Stop / reset / disconnect: drop ALL device state. Old guest mappings must never
        be touched again (the library has unmapped them already)."""
        ...

    def handle_device_message(self, request: int, payload: bytes, fds: list[int]) -> bytes | None:
        """A device-specific vhost-user request (e.g. ``GPU_SET_SOCKET`` = 33, no payload,
        one fd). The device owns ``fds`` from this call on (it must close them). Return the
        reply payload for requests that have one, else None. Raise ``ProtocolError`` to end
        the connection."""
        ...
