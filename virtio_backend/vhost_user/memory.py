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

A front-end may not shrink memory under us (issue 17, finding 2). Each region's fd must
be a regular file (memfd, tmpfs, hugetlbfs) at least ``mmap_offset + size`` bytes long.
Where the fd allows seals and has none against shrinking, we add ``F_SEAL_SHRINK``
ourselves (QEMU's ``memory-backend-memfd`` seals by default, so this only tightens a
front-end that left the door open); ``sealed`` says whether the size is now fixed. Every
mapping, sealed or not, is watched by the C core's SIGBUS guard (``pxq_guard.c``): a
page that vanishes anyway (an unsealed file truncated, a full tmpfs, an empty hugetlb
pool) turns the whole mapping into zero-filled private memory instead of killing the
daemon, and ``faults()`` tells the connection to reset that VM.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import mmap
import os
import stat
import time
from collections.abc import Sequence

from hypervisor.errors import GuestMemoryError, ProtocolError
from virtio_backend.core import PXQ_MAX_REGIONS, ffi, lib
from virtio_backend.vhost_user.protocol import MemoryRegion

log = logging.getLogger(__name__)

#: A guest memory region still mapped this long after its table closed is logged as a warning.
LINGER_WARN_S = 60.0

_U64_MAX = (1 << 64) - 1
_lingering: list[MappedRegion] = []


class MappedRegion:
    """One region of guest memory, mapped read-write and shared, watched by the guard."""

    __slots__ = ("gpa", "size", "qva", "mmap_offset", "host", "view", "sealed", "_mm", "_anchor", "_guard",
                 "lingering_since", "lingering_warned")

    def __init__(self, desc: MemoryRegion):
        self.gpa, self.size = desc.guest_phys_addr, desc.memory_size
        self.qva, self.mmap_offset = desc.userspace_addr, desc.mmap_offset
        self._mm = self._anchor = None
        self.lingering_since, self.lingering_warned = 0.0, False
        self._guard = -1
        if self.size == 0:
            raise ProtocolError("memory region of size 0")
        for name, start in (("guest", self.gpa), ("user", self.qva), ("mmap offset", self.mmap_offset)):
            if start > _U64_MAX - self.size:
                raise ProtocolError(f"memory region {name} range {start:#x}+{self.size:#x} overflows")
        length = self.mmap_offset + self.size
        self.sealed = _check_fd(desc.fd, length)
        try:
            self._mm = mmap.mmap(desc.fd, length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except (OSError, ValueError, OverflowError) as exc:
            raise ProtocolError(f"mapping memory region {self.gpa:#x}+{self.size:#x}: {exc}") from exc
        self._anchor = ffi.from_buffer("char[]", self._mm, require_writable=True)
        base = int(ffi.cast("uintptr_t", self._anchor))
        self._guard = lib.pxq_guard_add(base, length, desc.fd)
        if self._guard < 0:
            self.try_unmap()
            raise ProtocolError(f"memory region {self.gpa:#x}+{self.size:#x}: the SIGBUS guard cannot watch "
                                f"it ({errno.errorcode.get(-self._guard, self._guard)}; "
                                f"{lib.PXQ_GUARD_SLOTS} mappings daemon-wide)")
        self.host = base + self.mmap_offset
        self.view = memoryview(self._mm)[self.mmap_offset:length]

    def faults(self) -> int:
        """SIGBUS faults the guard absorbed in this mapping (> 0: its memory went bad)."""
        return lib.pxq_guard_faults(self._guard) if self._guard >= 0 else 0

    def try_unmap(self) -> bool:
        """Unmap now if nothing exports the memory; False (still mapped) otherwise."""
        if self._anchor is not None:
            ffi.release(self._anchor)
            self._anchor = None
            if self._guard >= 0:  # a half-built region has no view yet
                self.view.release()
        try:
            self._mm.close()
        except BufferError:
            return False
        if self._guard >= 0:  # the mapping is gone: nothing left to watch
            lib.pxq_guard_remove(self._guard)
            self._guard = -1
        return True


def _check_fd(fd: int, length: int) -> bool:
    """Refuse an fd that is not a mappable regular file of at least ``length`` bytes;
    seal it against shrinking where it allows. Returns whether its size is now fixed."""
    try:
        st = os.fstat(fd)
    except OSError as exc:
        raise ProtocolError(f"memory region fd: {exc}") from exc
    if not stat.S_ISREG(st.st_mode):
        # memfd, tmpfs and hugetlbfs files are all regular; a pipe, socket, device or
        # directory is not guest RAM.
        raise ProtocolError(f"memory region fd is not a regular file (mode {stat.filemode(st.st_mode)})")
    if st.st_size < length:  # touching a page past the end would raise SIGBUS
        raise ProtocolError(f"memory region needs {length:#x} bytes but its file has {st.st_size:#x}")
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError:
        return False  # a file system without seals: the guard alone protects us
    if seals & fcntl.F_SEAL_SHRINK:
        return True
    if seals & fcntl.F_SEAL_SEAL:
        return False  # sealing closed without SHRINK (a memfd made without MFD_ALLOW_SEALING)
    try:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
    except OSError as exc:
        log.info("memory region fd allows seals but F_SEAL_SHRINK was refused (%s); relying on the guard", exc)
        return False
    # The file may have shrunk between fstat and the seal: check again, now that it can't.
    if os.fstat(fd).st_size < length:
        raise ProtocolError(f"memory region needs {length:#x} bytes but its file shrank below that")
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

    def faults(self) -> int:
        """SIGBUS faults absorbed in any region of this table."""
        return sum(r.faults() for r in self.regions)

    def unsealed(self) -> int:
        """Regions whose file size is not fixed by a seal (the guard alone protects them)."""
        return sum(1 for r in self.regions if not r.sealed)

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
                # Normal after a front-end left mid-request (a copy still holds a view): the
                # loop's reaper unmaps it within a second. Only one that lingers is a warning.
                log.info("guest memory region %#x+%#x still in use by a request; unmapping it shortly",
                         r.gpa, r.size)
                r.lingering_since = time.monotonic()
                _lingering.append(r)
                ok = False
        self.regions = []
        return ok


def reap() -> int:
    """Retry unmapping lingering regions; returns how many still linger. One still mapped
    LINGER_WARN_S after its table closed is logged once as a warning."""
    _lingering[:] = [r for r in _lingering if not r.try_unmap()]
    now = time.monotonic()
    for r in _lingering:
        since = r.lingering_since
        if now - since > LINGER_WARN_S and not r.lingering_warned:
            r.lingering_warned = True
            log.warning("guest memory region %#x+%#x still mapped %.0f s after its front-end left", r.gpa, r.size,
                        now - since)
    return len(_lingering)


def lingering() -> int:
    return len(_lingering)
