"""Guest memory shared by the front-end: SET_MEM_TABLE regions mapped, translated, unmapped.

Each region arrives with an fd; like QEMU's libvhost-user we map ``mmap_offset + size``
bytes of it from offset 0 and use the part from ``mmap_offset`` (``docs/interop/
vhost-user.rst``, "Memory region description"). Descriptor addresses are guest-physical;
ring addresses are the front-end's virtual addresses (``userspace_addr``); both translate
through the same table, with overflow-safe range checks (the C core does the hot path).

Lifetime: ``GuestMemory.close()`` first empties the C table (nothing in the core can reach
the mappings any more), releases our own views, then unmaps. A region whose memory is
still exported (a device kept a derived buffer past its request) cannot be unmapped
without risking a crash, so it lingers, unreachable from the rings, until ``reap()``
finds it free; ``lingering()`` reports how many do.
"""

from __future__ import annotations

import logging
import mmap
import os
import stat
from collections.abc import Sequence

from hypervisor.errors import GuestMemoryError, ProtocolError
from virtio_backend.core import PXQ_MAX_REGIONS, ffi, lib
from virtio_backend.vhost_user.protocol import MemoryRegion

log = logging.getLogger(__name__)

_U64_MAX = (1 << 64) - 1
_lingering: list[MappedRegion] = []


class MappedRegion:
    """One region of guest memory, mapped read-write and shared."""

    __slots__ = ("gpa", "size", "qva", "mmap_offset", "host", "view", "_mm", "_anchor")

    def __init__(self, desc: MemoryRegion):
        self.gpa, self.size = desc.guest_phys_addr, desc.memory_size
        self.qva, self.mmap_offset = desc.userspace_addr, desc.mmap_offset
        if self.size == 0:
            raise ProtocolError("memory region of size 0")
        for name, start in (("guest", self.gpa), ("user", self.qva), ("mmap offset", self.mmap_offset)):
            if start > _U64_MAX - self.size:
                raise ProtocolError(f"memory region {name} range {start:#x}+{self.size:#x} overflows")
        length = self.mmap_offset + self.size
        try:
            st = os.fstat(desc.fd)
        except OSError as exc:
            raise ProtocolError(f"memory region fd: {exc}") from exc
        # Touching a page past the end of the file raises SIGBUS in the whole daemon.
        if stat.S_ISREG(st.st_mode) and st.st_size < length:
            raise ProtocolError(f"memory region needs {length:#x} bytes but its file has {st.st_size:#x}")
        try:
            self._mm = mmap.mmap(desc.fd, length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except (OSError, ValueError, OverflowError) as exc:
            raise ProtocolError(f"mapping memory region {self.gpa:#x}+{self.size:#x}: {exc}") from exc
        self._anchor = ffi.from_buffer("char[]", self._mm, require_writable=True)
        self.host = int(ffi.cast("uintptr_t", self._anchor)) + self.mmap_offset
        self.view = memoryview(self._mm)[self.mmap_offset:length]

    def try_unmap(self) -> bool:
        """Unmap now if nothing exports the memory; False (still mapped) otherwise."""
        if self._anchor is not None:
            ffi.release(self._anchor)
            self._anchor = None
            self.view.release()
        try:
            self._mm.close()
        except BufferError:
            return False
        return True


class GuestMemory:
    """The current memory table: regions, the C ``struct pxq_mem``, and translation."""

    def __init__(self, regions: Sequence[MemoryRegion]):
        if len(regions) > PXQ_MAX_REGIONS:
            raise ProtocolError(f"{len(regions)} memory regions, at most {PXQ_MAX_REGIONS}")
        self.c_mem = ffi.new("struct pxq_mem *")
        self.regions: list[MappedRegion] = []
        self.closed = False
        #: Requests in flight that point into this table; a retired table is unmapped
        #: when the last of them ends (a new table can arrive while requests are held).
        self.users = 0
        self.retired = False
        try:
            for desc in regions:
                self._check_disjoint(desc)
                self.regions.append(MappedRegion(desc))
        except BaseException:
            self.close()
            raise
        for i, r in enumerate(self.regions):
            c = self.c_mem.regions[i]
            c.gpa, c.size, c.qva, c.host = r.gpa, r.size, r.qva, r.host
        self.c_mem.nregions = len(self.regions)

    def _check_disjoint(self, desc: MemoryRegion) -> None:
        for r in self.regions:
            for a, b in ((desc.guest_phys_addr, r.gpa), (desc.userspace_addr, r.qva)):
                if a < b + r.size and b < a + desc.memory_size:
                    raise ProtocolError(f"memory regions overlap at {a:#x} and {b:#x}")

    def translate_gpa(self, gpa: int, length: int) -> int:
        """Host address of guest-physical [gpa, gpa + length); ``GuestMemoryError`` if any
        byte lies outside one region."""
        return self._translate(lib.pxq_translate_gpa, gpa, length, "guest-physical")

    def translate_qva(self, qva: int, length: int) -> int:
        """Host address of front-end virtual [qva, qva + length) (ring addresses)."""
        return self._translate(lib.pxq_translate_qva, qva, length, "front-end virtual")

    def _translate(self, fn, addr: int, length: int, what: str) -> int:
        if self.closed:
            raise GuestMemoryError("guest memory is unmapped")
        if not (0 <= addr <= _U64_MAX and 0 <= length <= _U64_MAX):
            raise GuestMemoryError(f"{what} range {addr:#x}+{length:#x} is not a 64-bit range")
        out = ffi.new("uint64_t *")
        if fn(self.c_mem, addr, length, out) < 0:
            raise GuestMemoryError(f"{what} range {addr:#x}+{length:#x} is outside guest memory")
        return int(out[0])

    def view(self, gpa: int, length: int) -> memoryview:
        """A memoryview of guest-physical [gpa, gpa + length) (inside one region)."""
        host = self.translate_gpa(gpa, length)
        for r in self.regions:
            if r.host <= host < r.host + r.size:
                off = host - r.host
                return r.view[off:off + length]
        raise GuestMemoryError(f"{gpa:#x} not mapped")  # pragma: no cover - translate found it

    def retire(self) -> None:
        """A newer table replaced this one: unmap once no request in flight uses it."""
        self.retired = True
        self.c_mem.nregions = 0
        if self.users == 0:
            self.close()

    def release_user(self) -> None:
        self.users -= 1
        if self.retired and self.users == 0 and not self.closed:
            self.close()

    def close(self) -> bool:
        """Make the table unreachable and unmap; True when every region is unmapped now."""
        self.closed = True
        self.c_mem.nregions = 0
        ok = True
        for r in self.regions:
            if not r.try_unmap():
                log.warning("guest memory region %#x+%#x still exported; unmapping later", r.gpa, r.size)
                _lingering.append(r)
                ok = False
        self.regions = []
        return ok


def reap() -> int:
    """Retry unmapping lingering regions; returns how many still linger."""
    _lingering[:] = [r for r in _lingering if not r.try_unmap()]
    return len(_lingering)


def lingering() -> int:
    return len(_lingering)
