"""A front-end that passes the wrong fds, asks for what was never offered, or remaps the
rings badly (issue 17, findings 6 and 7). Each case ends that connection only: with ONE
warning naming the cause (no traceback, no flood), never a hang or a spin, and a request
that asked for REPLY_ACK sees its reply or the close. The same socket then serves the
next front-end, and another VM's server never notices."""

from __future__ import annotations

import fcntl
import logging
import os
import socket

import pytest

from tests.support.echo_device import HEADER, NOOP
from tests.support.vhost_frontend import (
    HIGH_START,
    LOW_END,
    SET_VRING_CALL,
    SET_VRING_ERR,
    SET_VRING_KICK,
    VhostUserFrontend,
    wait_until,
)

EVENTFD_MAX = 0xFFFFFFFFFFFFFFFE  # the largest count an eventfd holds


def served_ok(path, tag=1):
    with VhostUserFrontend(path) as fe:
        fe.boot()
        fe.submit(0, out=[HEADER.pack(NOOP, 0, tag)], in_=[16])
        fe.kick(0)
        return fe.wait_used(0)[0].data == HEADER.pack(0, 0, tag)


def still_served(fe, tag=7):
    fe.submit(0, out=[HEADER.pack(NOOP, 0, tag)], in_=[16])
    fe.kick(0)
    return fe.wait_used(0)[0].data == HEADER.pack(0, 0, tag)


def closed_by_backend(fe, timeout=5.0) -> bool:
    """True once the back-end hung up; raises TimeoutError if it never does (a hang)."""
    fe.sock.settimeout(timeout)
    try:
        return fe.sock.recv(1) == b""
    except ConnectionResetError:
        return True


def warnings_of(caplog):
    return [r for r in caplog.records if r.name.startswith("virtio_backend") and r.levelno >= logging.WARNING]


# ---- fds that are not eventfds -------------------------------------------------------------


def dead_pipe():
    r, w = os.pipe()
    os.close(w)  # readable forever (EOF): a kick fd like this would spin the loop
    return r


def dead_socket():
    a, b = socket.socketpair()
    b.close()
    return a.detach()


def regular_file(tmp_path):
    return os.open(tmp_path / "not-an-eventfd", os.O_RDWR | os.O_CREAT, 0o600)


def directory(tmp_path):
    return os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)


def full_blocking_pipe():
    r, w = os.pipe()
    os.set_blocking(w, False)
    try:
        while True:
            os.write(w, bytes(65536))
    except BlockingIOError:
        pass
    os.set_blocking(w, True)  # a write to it now blocks until someone reads (nobody will)
    return w, r


WRONG_FDS = {
    "kick: pipe whose writer closed": (SET_VRING_KICK, lambda tmp: dead_pipe()),
    "kick: socket whose peer is gone": (SET_VRING_KICK, lambda tmp: dead_socket()),
    "kick: regular file": (SET_VRING_KICK, regular_file),
    "kick: directory": (SET_VRING_KICK, directory),
    "call: regular file": (SET_VRING_CALL, regular_file),
    "call: directory": (SET_VRING_CALL, directory),
    "err: pipe": (SET_VRING_ERR, lambda tmp: dead_pipe()),
}


@pytest.mark.parametrize("case", sorted(WRONG_FDS))
def test_a_vring_fd_that_is_not_an_eventfd_ends_only_that_connection(server, other_vm, tmp_path, caplog, case):
    srv, devices = server
    request, make = WRONG_FDS[case]
    fd = make(tmp_path)
    caplog.set_level(logging.INFO)
    with VhostUserFrontend(srv.socket_path, need_reply_all=True) as fe:
        fe.boot()
        with pytest.raises(ConnectionResetError):
            fe.vring_fd(request, 0, fd)  # asked for REPLY_ACK: the answer is the close
    os.close(fd)
    wait_until(lambda: not srv.status()["connected"])
    assert "not an eventfd" in srv.status()["last_close_reason"]
    [warning] = warnings_of(caplog)
    assert "not an eventfd" in warning.getMessage() and warning.exc_info is None
    assert devices[0].events[-1] == ("reset",)
    assert served_ok(srv.socket_path) and still_served(other_vm)


def test_a_full_blocking_pipe_as_call_fd_is_refused_before_it_can_block(server, other_vm, caplog):
    srv, _ = server
    w, r = full_blocking_pipe()
    caplog.set_level(logging.INFO)
    with VhostUserFrontend(srv.socket_path) as fe:
        fe.boot()
        fe.vring_fd(SET_VRING_CALL, 0, w)
        fe.submit(0, out=[HEADER.pack(NOOP, 0, 1)], in_=[16])
        fe.kick(0, force=True)  # a notify into that pipe would block the loop forever
        assert closed_by_backend(fe)
    os.close(w)
    os.close(r)
    assert "not an eventfd" in srv.status()["last_close_reason"]
    assert len(warnings_of(caplog)) == 1
    assert served_ok(srv.socket_path) and still_served(other_vm)


# ---- eventfds that cannot take another signal ----------------------------------------------


def saturated_blocking_eventfd():
    fd = os.eventfd(0)  # blocking, as a hostile front-end would pass it
    os.eventfd_write(fd, EVENTFD_MAX)
    return fd


def test_a_saturated_call_eventfd_resets_the_vm_once_and_never_blocks(server, other_vm, caplog):
    srv, devices = server
    fd = saturated_blocking_eventfd()
    caplog.set_level(logging.INFO)
    with VhostUserFrontend(srv.socket_path) as fe:
        fe.boot()
        fe.vring_fd(SET_VRING_CALL, 0, fd)
        fe.get_config()  # a round trip: the new call fd is in place before the kicks
        for tag in range(3):  # several notifies before the reset: still one warning
            fe.submit(0, out=[HEADER.pack(NOOP, 0, tag)], in_=[16])
            fe.kick(0, force=True)
        assert closed_by_backend(fe)
    os.close(fd)
    reason = srv.status()["last_close_reason"]
    assert "call eventfd of queue 0" in reason and "saturated" in reason
    [warning] = warnings_of(caplog)
    assert "saturated" in warning.getMessage()
    assert devices[0].events[-1] == ("reset",)
    assert served_ok(srv.socket_path) and still_served(other_vm)


def test_a_saturated_error_eventfd_resets_the_vm_once(server, other_vm, caplog):
    srv, _ = server
    fd = saturated_blocking_eventfd()
    caplog.set_level(logging.INFO)
    with VhostUserFrontend(srv.socket_path) as fe:
        fe.boot()
        fe.vring_fd(SET_VRING_ERR, 0, fd)
        fe.get_config()
        fe.ring(0).set_avail_idx(1000)  # a corrupt ring: the back-end signals the error fd
        fe.kick(0, force=True)
        assert closed_by_backend(fe)
    os.close(fd)
    assert "error eventfd of queue 0" in srv.status()["last_close_reason"]
    # The corrupt ring itself is logged (as before), then the one reset line.
    assert [r.getMessage() for r in warnings_of(caplog) if "eventfd" in r.getMessage()] != []
    assert len([r for r in warnings_of(caplog) if "ending the connection" in r.getMessage()]) == 1
    assert served_ok(srv.socket_path) and still_served(other_vm)


# ---- what was never offered ------------------------------------------------------------------


def test_a_no_fd_kick_is_refused(server, other_vm, caplog):
    srv, _ = server
    caplog.set_level(logging.INFO)
    with VhostUserFrontend(srv.socket_path, need_reply_all=True) as fe:
        fe.boot()
        with pytest.raises(ConnectionResetError):
            fe.vring_fd(SET_VRING_KICK, 0, None)  # VHOST_USER_VRING_NOFD_MASK: "poll the ring"
    wait_until(lambda: not srv.status()["connected"])
    assert "without an fd" in srv.status()["last_close_reason"]
    assert len(warnings_of(caplog)) == 1
    assert served_ok(srv.socket_path) and still_served(other_vm)


def test_a_ring_address_asking_for_dirty_logging_is_refused(server, other_vm, caplog):
    srv, _ = server
    caplog.set_level(logging.INFO)
    with VhostUserFrontend(srv.socket_path, need_reply_all=True) as fe:
        fe.boot()
        with pytest.raises(ConnectionResetError):
            fe.set_vring_addr(0, *fe.ring_addrs(0), flags=1)  # VHOST_VRING_F_LOG
    wait_until(lambda: not srv.status()["connected"])
    assert "dirty logging" in srv.status()["last_close_reason"]
    assert len(warnings_of(caplog)) == 1
    assert served_ok(srv.socket_path) and still_served(other_vm)


# ---- a new memory table while the rings run (finding 6) --------------------------------------


def remapped(fe, shift: int):
    """The boot layout, except that from ring 1's descriptor table on, guest memory is
    mapped ``shift`` bytes further into the file: ring 0 lands where it was, ring 1 lands
    ``shift`` bytes off (misaligned when shift is 2)."""
    split = fe.ring_addrs(1)[0]
    va = fe.ram_va
    return [(0, LOW_END, va, 0),
            (HIGH_START, split - HIGH_START, va + HIGH_START, HIGH_START),
            (split, fe.ram_size - split - shift, va + split, split + shift)]


def test_a_new_table_that_misaligns_one_running_ring_is_refused_whole(server, other_vm, caplog):
    srv, devices = server
    caplog.set_level(logging.INFO)
    with VhostUserFrontend(srv.socket_path) as fe:
        fe.boot()
        assert still_served(fe)
        with pytest.raises(ConnectionResetError):
            fe.send_mem_table(remapped(fe, 2))  # REPLY_ACK asked: ring 0 fine, ring 1 misaligned
    wait_until(lambda: not srv.status()["connected"])
    assert "not aligned" in srv.status()["last_close_reason"]
    assert len(warnings_of(caplog)) == 1
    assert served_ok(srv.socket_path) and still_served(other_vm)


def test_a_new_table_that_keeps_the_rings_aligned_is_taken_while_running(server):
    srv, _ = server
    with VhostUserFrontend(srv.socket_path) as fe:
        fe.boot()
        fe.send_mem_table(remapped(fe, 0))  # three regions now, the same bytes
        assert srv.status()["connected"]
        assert still_served(fe, tag=9)
        fe.submit(1, out=[HEADER.pack(NOOP, 0, 5)], in_=[16])
        fe.kick(1)
        assert fe.wait_used(1)[0].data == HEADER.pack(0, 0, 5)


def test_a_memfd_left_open_to_seals_gets_sealed_against_shrinking(server):
    srv, _ = server
    with VhostUserFrontend(srv.socket_path, ram_seals="open") as fe:
        fe.boot()
        # Checked first: were the seal missing, the shrink below would pull the memory
        # from under this very process's back-end.
        assert fcntl.fcntl(fe.ram_fd, fcntl.F_GET_SEALS) & fcntl.F_SEAL_SHRINK
        with pytest.raises(PermissionError):
            fe.shrink_ram(0)
        assert srv.status()["connected"] and srv.status()["unsealed_regions"] == 0 and still_served(fe)



def test_tables_held_by_requests_are_bounded_per_connection(server, other_vm, caplog):
    from tests.support.echo_device import HOLD
    from virtio_backend.vhost_user.connection import MAX_LIVE_TABLES

    srv, devices = server
    caplog.set_level(logging.INFO)
    with VhostUserFrontend(srv.socket_path) as fe:
        fe.boot()
        same = [(gpa, size, fe.ram_va + off, off) for gpa, size, off in fe.regions]
        for i in range(MAX_LIVE_TABLES - 1):  # each table kept mapped by a held request
            fe.submit(0, out=[HEADER.pack(HOLD, 0, i)], in_=[16])
            fe.kick(0)
            wait_until(lambda i=i: len(devices[0].held) == i + 1)
            fe.send_mem_table(same)
        fe.submit(0, out=[HEADER.pack(HOLD, 0, 99)], in_=[16])
        fe.kick(0)
        wait_until(lambda: len(devices[0].held) == MAX_LIVE_TABLES)
        with pytest.raises(ConnectionResetError):
            fe.send_mem_table(same)
    wait_until(lambda: not srv.status()["connected"])
    assert "tables are still in use" in srv.status()["last_close_reason"]
    assert len(warnings_of(caplog)) == 1
    assert served_ok(srv.socket_path) and still_served(other_vm)
