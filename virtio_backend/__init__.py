"""pxOS's virtio side: the QEMU-facing vhost-user back-end and the virtio-gpu-pxos device.

- ``virtio_backend.vhost_user``: the generic vhost-user library (protocol, guest memory,
  virtqueues, loop, listener). Knows nothing of GPUs.
- ``virtio_backend.core``: the split-virtqueue C core, bound through cffi.
- ``virtio_backend.gpu``: the virtio-gpu-pxos device built on the library.

Arrows point one way: ``virtio_backend`` -> ``hypervisor`` (never the reverse).
"""
