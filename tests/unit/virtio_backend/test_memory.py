"""Guest memory: regions of a real memfd mapped like QEMU's, translated both ways with
overflow-safe checks, refused when inconsistent, and unmapped without leaks (or kept,
unreachable, while something still exports them)."""

from __future__ import annotations

import fcntl
import os

import pytest

from hypervisor.errors import GuestMemoryError, ProtocolError
from tests.support.leaks import memfd_mappings, open_fds
from virtio_backend.vhost_user import memory
from virtio_backend.vhost_user.memory import GuestMemory
from virtio_backend.vhost_user.protocol import MemoryRegion

SIZE = 4 << 20
QVA = 0x7F0000000000


@pytest.fixture
def ram_fd():
    fd = os.memfd_create("pxos-test-mem", os.MFD_CLOEXEC)
    os.ftruncate(fd, SIZE)
    os.pwrite(fd, b"low", 0x100)
    os.pwrite(fd, b"high", 0xC0100)
    yield fd
    os.close(fd)


def qemu_layout(fd):
    return [MemoryRegion(0, 0xA0000, QVA, 0, fd),
            MemoryRegion(0xC0000, SIZE - 0xC0000, QVA + 0xC0000, 0xC0000, fd)]


def test_regions_map_from_their_offset(ram_fd):
    m = GuestMemory(qemu_layout(ram_fd))
    try:
        assert bytes(m.view(0x100, 3)) == b"low"
        assert bytes(m.view(0xC0100, 4)) == b"high"
        assert m.translate_qva(QVA + 0xC0100, 4) == m.translate_gpa(0xC0100, 4)
        m.view(0xC0200, 2)[:] = b"ok"
        assert os.pread(ram_fd, 2, 0xC0200) == b"ok"  # shared with the front-end
    finally:
        m.close()


@pytest.mark.parametrize("gpa,length", [
    (0xA0000, 1),            # the hole
    (0x9FFFF, 2),            # straddles region 0's end
    (SIZE, 1),               # past the end
    (2**64 - 1, 2),          # wraps
    (0, 2**64),              # longer than anything
    (-1, 1),
])
def test_translation_refuses_ranges_outside(ram_fd, gpa, length):
    m = GuestMemory(qemu_layout(ram_fd))
    try:
        with pytest.raises(GuestMemoryError):
            m.translate_gpa(gpa, length)
    finally:
        m.close()


def test_refuses_file_smaller_than_the_region(ram_fd):
    with pytest.raises(ProtocolError, match="file has"):
        GuestMemory([MemoryRegion(0, SIZE, QVA, 0x1000, ram_fd)])


@pytest.mark.parametrize("regions", [
    [(0, 0x1000, QVA, 0), (0x800, 0x1000, QVA + 0x10000, 0x1000)],     # overlapping gpa
    [(0, 0x1000, QVA, 0), (0x10000, 0x1000, QVA + 0x800, 0x1000)],     # overlapping qva
    [(0, 0, QVA, 0)],                                                  # empty
    [(2**64 - 0x1000, 0x2000, QVA, 0)],                                # gpa overflow
    [(0, 0x1000, 2**64 - 1, 0)],                                       # qva overflow
])
def test_refuses_inconsistent_tables_without_leaking(ram_fd, regions):
    fds, maps = open_fds(), memfd_mappings("pxos-test-mem")
    with pytest.raises(ProtocolError):
        GuestMemory([MemoryRegion(g, s, q, o, ram_fd) for g, s, q, o in regions])
    assert (open_fds(), memfd_mappings("pxos-test-mem")) == (fds, maps)


def test_close_unmaps_everything(ram_fd):
    before = memfd_mappings("pxos-test-mem")
    m = GuestMemory(qemu_layout(ram_fd))
    assert memfd_mappings("pxos-test-mem") == before + 2
    assert m.close()
    assert memfd_mappings("pxos-test-mem") == before
    with pytest.raises(GuestMemoryError):
        m.translate_gpa(0x100, 1)


def test_exported_region_lingers_until_released(ram_fd):
    before = memfd_mappings("pxos-test-mem")
    m = GuestMemory(qemu_layout(ram_fd))
    kept = m.view(0x100, 3)  # a derived buffer someone forgot to drop
    assert not m.close()
    assert memory.lingering() >= 1
    assert memfd_mappings("pxos-test-mem") == before + 1
    assert m.c_mem.nregions == 0  # unreachable from the core meanwhile
    kept.release()
    memory.reap()
    assert memfd_mappings("pxos-test-mem") == before


def test_retired_table_waits_for_its_requests(ram_fd):
    before = memfd_mappings("pxos-test-mem")
    m = GuestMemory(qemu_layout(ram_fd))
    m.users = 1  # one request in flight points into it
    m.retire()
    assert m.c_mem.nregions == 0 and memfd_mappings("pxos-test-mem") == before + 2
    m.release_user()
    assert memfd_mappings("pxos-test-mem") == before


# ---- issue 17, finding 2: what a memory fd must be, and seals ----------------------------


def _fd_of(kind: str, tmp_path):
    if kind == "pipe":
        r, w = os.pipe()
        os.close(w)
        return r
    if kind == "directory":
        return os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    if kind == "socket":
        import socket

        a, b = socket.socketpair()
        b.close()
        return a.detach()
    if kind == "eventfd":
        return os.eventfd(0)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["pipe", "directory", "socket", "eventfd"])
def test_refuses_a_memory_fd_that_is_not_a_regular_file(kind, tmp_path):
    fd = _fd_of(kind, tmp_path)
    try:
        with pytest.raises(ProtocolError, match="not a regular file"):
            GuestMemory([MemoryRegion(0, 0x1000, QVA, 0, fd)])
    finally:
        os.close(fd)


def test_a_sealed_memfd_is_used_as_it_is(ram_fd):
    sealed = os.memfd_create("pxos-test-mem", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(sealed, SIZE)
    fcntl.fcntl(sealed, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL)
    try:
        m = GuestMemory(qemu_layout(sealed))
        assert m.unsealed() == 0
        m.close()
    finally:
        os.close(sealed)


def test_a_memfd_that_allows_seals_is_sealed_against_shrinking():
    fd = os.memfd_create("pxos-test-mem", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, SIZE)
    try:
        m = GuestMemory(qemu_layout(fd))
        assert m.unsealed() == 0
        assert fcntl.fcntl(fd, fcntl.F_GET_SEALS) & fcntl.F_SEAL_SHRINK
        with pytest.raises(PermissionError):
            os.ftruncate(fd, 0)  # the front-end can no longer pull the memory away
        os.ftruncate(fd, SIZE * 2)  # growing is still its business
        m.close()
    finally:
        os.close(fd)


def test_a_memfd_that_cannot_be_sealed_is_mapped_under_the_guard(ram_fd):
    from virtio_backend.core import lib

    before = lib.pxq_guard_active()
    m = GuestMemory(qemu_layout(ram_fd))  # made without MFD_ALLOW_SEALING
    try:
        assert m.unsealed() == 2 and m.faults() == 0
        assert lib.pxq_guard_active() == before + 2
    finally:
        m.close()
    assert lib.pxq_guard_active() == before


def test_a_lingering_region_stays_guarded_until_unmapped(ram_fd):
    from virtio_backend.core import lib

    before = lib.pxq_guard_active()
    m = GuestMemory(qemu_layout(ram_fd))
    kept = m.view(0x100, 3)
    assert not m.close()
    assert lib.pxq_guard_active() == before + 1  # still mapped: still watched
    kept.release()
    memory.reap()
    assert lib.pxq_guard_active() == before


def test_a_region_left_mapped_is_info_at_first_and_a_warning_only_if_it_lingers(monkeypatch, caplog):
    """Issue 11, item 7 (found by the soak): a region still in use when its front-end left is
    normal (unmapped within a reap period); only one mapped LINGER_WARN_S later is a warning."""
    import logging
    import time

    from virtio_backend.vhost_user import memory as m

    class Region:
        gpa, size, lingering_warned = 0x1000, 0x2000, False
        lingering_since = time.monotonic()

        def try_unmap(self):
            return False

    r = Region()
    monkeypatch.setattr(m, "_lingering", [r])
    with caplog.at_level(logging.INFO, logger=m.log.name):
        assert m.reap() == 1
        assert not [x for x in caplog.records if x.levelno >= logging.WARNING]
        r.lingering_since -= m.LINGER_WARN_S + 1
        m.reap()
        m.reap()
    warnings = [x for x in caplog.records if x.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "still mapped" in warnings[0].getMessage()
