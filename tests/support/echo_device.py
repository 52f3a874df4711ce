"""A test-only loopback device for the vhost-user library (not product code).

Each chain's readable part starts with a 16-byte header ``<I op, I arg, Q tag>``:

- ``NOOP``: answer a 16-byte response ``<I status=0, I 0, Q tag>``;
- ``ECHO``: write the readable bytes back into the writable part;
- ``SINK``: copy the payload after the header into a host buffer (as a WRITE command
  would), answer ``<I 0, I nbytes, Q tag>``;
- ``HOLD``: keep the request; ``complete_held()`` (loop thread) or
  ``complete_held_threadsafe()`` (any thread) answers later, in reverse order.

It records the library's callbacks in ``events`` so tests can check the lifecycle.
"""

from __future__ import annotations

import struct

HEADER = struct.Struct("<IIQ")
NOOP, ECHO, SINK, HOLD = 0, 1, 2, 3
SINK_MAX = 16 << 20


class EchoDevice:
    num_queues = 2

    def __init__(self, connection, *, extra_protocol_features: int = 0, config: bytes = bytes(range(24))):
        self.connection = connection
        self.events: list[tuple] = []
        self.held: list = []
        self.sink = bytearray(SINK_MAX)
        self.sunk = 0
        self.config = bytearray(config)
        self.extra_protocol_features = extra_protocol_features
        self.messages: list[tuple[int, bytes, list[int]]] = []
        self.queues: dict[int, object] = {}

    @classmethod
    def factory(cls, registry: list | None = None, **kwargs):
        def make(connection):
            dev = cls(connection, **kwargs)
            if registry is not None:
                registry.append(dev)
            return dev

        return make

    # -- VirtioDevice -------------------------------------------------------------------------
    def device_features(self) -> int:
        return 1 << 1  # a device-specific bit (VIRTIO_GPU_F_EDID's position)

    def protocol_features(self) -> int:
        return self.extra_protocol_features

    def get_config(self, offset: int, size: int) -> bytes:
        return bytes(self.config[offset:offset + size]).ljust(size, b"\0")

    def set_config(self, offset: int, data: bytes) -> None:
        if offset + len(data) > len(self.config):
            raise ValueError("config write beyond the config space")
        self.config[offset:offset + len(data)] = data

    def queue_started(self, index: int, queue) -> None:
        self.events.append(("started", index))
        self.queues[index] = queue

    def queue_kicked(self, index: int, queue) -> None:
        self.events.append(("kicked", index))
        served = 0
        while (req := queue.pop()) is not None:
            served += self.serve(queue, req)
        if served:
            queue.notify()

    def queue_stopped(self, index: int) -> None:
        self.events.append(("stopped", index))
        self.queues.pop(index, None)

    def reset(self) -> None:
        self.events.append(("reset",))
        self.queues.clear()
        # held requests are deliberately kept: tests complete them late to check dropping

    def handle_device_message(self, request: int, payload: bytes, fds: list[int]) -> bytes | None:
        import os

        self.messages.append((request, payload, list(fds)))
        for fd in fds:
            os.close(fd)
        return None

    # -- serving ------------------------------------------------------------------------------
    def serve(self, queue, req) -> int:
        if req.readable_len < HEADER.size:
            queue.push(req, 0)
            return 1
        op, arg, tag = HEADER.unpack(req.read(0, HEADER.size))
        if op == HOLD:
            self.held.append((queue, req, tag))
            return 0
        if op == ECHO:
            written = req.write(0, req.read())
        elif op == SINK:
            n = min(req.readable_len - HEADER.size, SINK_MAX)
            self.sunk = req.read_into(HEADER.size, memoryview(self.sink)[:n])
            written = req.write(0, HEADER.pack(0, self.sunk, tag))
        else:
            written = req.write(0, HEADER.pack(0, 0, tag))
        queue.push(req, written)
        return 1

    def complete_held(self) -> int:
        """Answer held requests (newest first: out of order); returns how many were live."""
        live = 0
        touched = set()
        while self.held:
            queue, req, tag = self.held.pop()
            if req.live:
                live += 1
                queue.push(req, req.write(0, HEADER.pack(0, 0, tag)))
            else:
                queue.push(req, 0)  # stale: the library drops it
            touched.add(queue)
        for q in touched:
            q.notify()
        return live

    def complete_held_threadsafe(self) -> bool:
        return self.connection.call_soon_threadsafe(self.complete_held)
