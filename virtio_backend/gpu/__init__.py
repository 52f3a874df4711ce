"""The virtio-gpu-pxos device: a headless virtio-gpu (device ID 16) whose control queue
also carries the PXOS vendor commands (0x7000..0x70ff), served over vhost-user.

Files: ``virtio_gpu`` (the standard names), ``commands`` (typed commands/responses),
``decode`` / ``encode`` (the wire codec, reading a ``chain`` of segments), ``display`` (the standard control commands of a
headless device), ``control`` (the PXOS command handlers, one per command, calling the
Hypervisor), ``device`` (the ``VirtioDevice`` the vhost-user library drives), ``metrics``
(what the device counts), ``transport`` (the daemon's ``vhost-user`` plugin), ``guest``
(the guest's side of the wire in Python, for tests, benchmarks and docs).
docs/protocol.md specifies the protocol.
"""
