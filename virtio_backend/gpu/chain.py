"""A descriptor chain as the PXOS decoder reads it: the ``Chain`` interface, and
``Segments``, a chain given as memoryview lists.

The device decodes straight from its virtqueue ``Request`` (which has this interface:
lengths, ``read`` of a copied range, views of the readable and writable segments); tests,
tools and the docs' examples decode from ``Segments`` split anywhere, so the decoder's
handling of any split is tested without a virtqueue. ``slice_views`` cuts a byte range
out of segments without copying (WRITE's source, READ's destination).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

__all__ = ["Chain", "Segments", "gather", "slice_views", "total_len"]


class Chain(Protocol):
    """What the decoder reads a request from (``virtqueue.Request`` has all of it)."""

    readable_len: int
    writable_len: int

    def read(self, offset: int = 0, length: int | None = None) -> bytes: ...
    def readable_views(self) -> list[memoryview]: ...
    def writable_views(self) -> list[memoryview]: ...


class Segments:
    """A chain given as lists of memoryviews (device-readable, device-writable), split
    anywhere: the decoder's input in tests and tools, with ``Request``'s semantics (reads
    past the end are short)."""

    def __init__(self, readable: Sequence[memoryview], writable: Sequence[memoryview] = ()):
        self._readable, self._writable = list(readable), list(writable)
        self.readable_len, self.writable_len = total_len(self._readable), total_len(self._writable)

    def read(self, offset: int = 0, length: int | None = None) -> bytes:
        avail = max(self.readable_len - offset, 0)
        n = avail if length is None else min(max(length, 0), avail)
        return gather(self._readable, offset, n)

    def readable_views(self) -> list[memoryview]:
        return list(self._readable)

    def writable_views(self) -> list[memoryview]:
        return list(self._writable)


def total_len(views: Sequence[memoryview]) -> int:
    return sum(len(v) for v in views)


def gather(views: Sequence[memoryview], offset: int, length: int) -> bytes:
    """Copy ``length`` bytes starting ``offset`` bytes into the concatenated segments."""
    if offset + length > total_len(views):
        raise ValueError(f"segments hold fewer than {offset + length} bytes")
    out = bytearray()
    for v in views:
        n = len(v)
        if offset >= n:
            offset -= n
            continue
        take = min(n - offset, length - len(out))
        out += v[offset : offset + take]
        offset = 0
        if len(out) == length:
            break
    return bytes(out)


def slice_views(views: Sequence[memoryview], offset: int, length: int) -> tuple[memoryview, ...]:
    """The pieces of the concatenated segments covering [offset, offset + length), no copy.
    A segment wholly inside the range is passed on as it is (no new view per segment)."""
    out = []
    for v in views:
        if length == 0:
            break
        n = len(v)
        if offset >= n:
            offset -= n
            continue
        take = min(n - offset, length)
        out.append(v if offset == 0 and take == n else v[offset : offset + take])
        length -= take
        offset = 0
    return tuple(out)
