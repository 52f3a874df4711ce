"""Generic vhost-user back-end library: knows virtio and vhost-user, nothing of GPUs.

Public API (stable; devices code against it)::

    from virtio_backend.vhost_user import (
        VhostUserServer,      # server = VhostUserServer(path, factory).start(); ...; server.close()
        VhostUserConnection,  # handed to factory(connection); .call_soon_threadsafe(fn, *args)
        VirtioDevice,         # the Protocol a device implements (device.py)
        Virtqueue, Request,   # pop / push / notify; read / read_into / write / *_views
        VhostUserRequest, VhostUserProtocolFeature, VirtioFeature,   # spec names
    )

Modules: ``protocol`` (spec names, typed messages, the strict decoder), ``channel``
(frames and SCM_RIGHTS fds), ``notifiers`` (kick/call/err eventfds: checked, never
blocking), ``memory`` (SET_MEM_TABLE mappings, seals, translation, the SIGBUS guard),
``virtqueue`` (split rings over the C core in ``virtio_backend.core``), ``connection``
(one front-end: the ``_handle_<verb>`` table and the ring state machine), ``loop`` (the
per-socket event loop) and ``server`` (the listener). Each module's docstring documents
its part of the contract; ``device.py`` documents threading and lifecycle.
"""

from virtio_backend.vhost_user.connection import (
    LIBRARY_FEATURES,
    LIBRARY_PROTOCOL_FEATURES,
    VhostUserConnection,
)
from virtio_backend.vhost_user.device import VirtioDevice
from virtio_backend.vhost_user.protocol import (
    VhostUserProtocolFeature,
    VhostUserRequest,
    VirtioFeature,
)
from virtio_backend.vhost_user.server import VhostUserServer
from virtio_backend.vhost_user.virtqueue import QueueStats, Request, Virtqueue

__all__ = [
    "LIBRARY_FEATURES",
    "LIBRARY_PROTOCOL_FEATURES",
    "QueueStats",
    "Request",
    "VhostUserConnection",
    "VhostUserProtocolFeature",
    "VhostUserRequest",
    "VhostUserServer",
    "VirtioDevice",
    "VirtioFeature",
    "Virtqueue",
]
