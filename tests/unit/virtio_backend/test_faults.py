"""Faults through the scripted front-end. A broken front-end (bad headers, wrong sizes,
too many fds, unknown requests) ends its own connection only: the listener serves the
next one and another VM's server never notices. A guest's bad descriptors are completed
empty and counted; a corrupt ring stops that queue. Nothing leaks: fds and mappings
return to where they were."""

from __future__ import annotations

import struct

import pytest

from tests.support.echo_device import HEADER, HOLD, NOOP
from tests.support.leaks import memfd_mappings, open_fds, settle
from tests.support.vhost_frontend import (
    GET_FEATURES,
    HDR,
    SET_FEATURES,
    SET_VRING_NUM,
    VhostUserFrontend,
    wait_until,
)
from virtio_backend.core import PXQ_MAX_INDIRECT_DESCS

NEXT, WRITE, INDIRECT = 1, 2, 4


def served_ok(path, tag=1):
    with VhostUserFrontend(path) as fe:
        fe.boot()
        fe.submit(0, out=[HEADER.pack(NOOP, 0, tag)], in_=[16])
        fe.kick(0)
        return fe.wait_used(0)[0].data == HEADER.pack(0, 0, tag)


BAD_FRAMES = {
    "bad version": lambda fe: fe.send_raw(HDR.pack(GET_FEATURES, 0x2, 0)),
    "reply flag on a request": lambda fe: fe.send_raw(HDR.pack(GET_FEATURES, 0x5, 0)),
    "unknown request": lambda fe: fe.send_raw(HDR.pack(999, 0x1, 0)),
    "unsupported request": lambda fe: fe.send_raw(HDR.pack(6, 0x1, 16) + bytes(16)),  # SET_LOG_BASE
    "payload too short": lambda fe: fe.send_raw(HDR.pack(SET_FEATURES, 0x1, 4) + bytes(4)),
    "payload too long": lambda fe: fe.send_raw(HDR.pack(GET_FEATURES, 0x1, 8) + bytes(8)),
    "huge size": lambda fe: fe.send_raw(HDR.pack(GET_FEATURES, 0x1, 1 << 30)),
    "too many fds": lambda fe: fe.send_raw(HDR.pack(GET_FEATURES, 0x1, 0), [fe.ram_fd] * 12),
    "unexpected fd": lambda fe: fe.send_raw(HDR.pack(GET_FEATURES, 0x1, 0), [fe.ram_fd]),
    "ring index out of range": lambda fe: fe.send(SET_VRING_NUM, struct.pack("<II", 7, 64)),
    "ring size not a power of two": lambda fe: fe.send(SET_VRING_NUM, struct.pack("<II", 0, 48)),
    "features never offered": lambda fe: fe.send(SET_FEATURES, struct.pack("<Q", 1 << 60)),
    "mem table beyond its file": lambda fe: fe.send(
        5, struct.pack("<IIQQQQ", 1, 0, 0, 1 << 40, 0x7F0000000000, 0), [fe.ram_fd]),
}


@pytest.mark.parametrize("fault", sorted(BAD_FRAMES))
def test_bad_frames_end_only_that_connection(server, other_vm, fault):
    srv, devices = server
    settle()
    fds, maps = open_fds(), memfd_mappings()
    with VhostUserFrontend(srv.socket_path) as fe:
        fe.boot()
        BAD_FRAMES[fault](fe)
        with pytest.raises((ConnectionResetError, OSError)):
            fe.recv_reply(GET_FEATURES)  # the back-end hangs up instead of answering
    wait_until(lambda: not srv.status()["connected"])
    st = srv.status()
    assert st["last_close_reason"].startswith("protocol error"), st["last_close_reason"]
    assert st["errors"] >= 1
    assert devices[0].events[-1] == ("reset",)
    settle()
    assert (open_fds(), memfd_mappings()) == (fds, maps)
    # The same socket serves the next front-end, and the other VM never noticed.
    assert served_ok(srv.socket_path)
    other_vm.submit(0, out=[HEADER.pack(NOOP, 0, 2)], in_=[16])
    other_vm.kick(0)
    assert other_vm.wait_used(0)[0].data == HEADER.pack(0, 0, 2)


def table_gpa(fe):
    return fe.heap.alloc(16 * PXQ_MAX_INDIRECT_DESCS + 32, 4096)


def good(fe):
    g = fe.heap.alloc(64)
    fe.mem[g:g + 16] = HEADER.pack(NOOP, 0, 0)
    return g


GUEST_FAULTS = {
    # each builds descriptors {index: (addr, len, flags, next)} (indices 20+ to stay clear
    # of the driver's own), maybe writes an indirect table, and names the expected reason
    "outside guest memory": (lambda fe: {20: (0xA0000, 16, 0, 0)}, "EFAULT"),
    "past the end of RAM": (lambda fe: {20: (fe.ram_size - 8, 16, 0, 0)}, "EFAULT"),
    "address wraps": (lambda fe: {20: (2**64 - 8, 16, 0, 0)}, "EFAULT"),
    "looping chain": (lambda fe: {20: (good(fe), 16, NEXT, 21), 21: (good(fe), 16, NEXT, 20)}, "ELOOP"),
    "next out of range": (lambda fe: {20: (good(fe), 16, NEXT, 64)}, "ERANGE"),
    "oversized length": (lambda fe: {20: (good(fe), 0xFFFFFF00, 0, 0)}, "EFBIG"),
    "zero length": (lambda fe: {20: (good(fe), 0, 0, 0)}, "EINVAL"),
    "readable after writable": (lambda fe: {20: (good(fe), 16, NEXT | WRITE, 21), 21: (good(fe), 16, 0, 0)},
                                "EINVAL"),
    "indirect with next": (lambda fe: {20: (table_gpa(fe), 16, INDIRECT | NEXT, 21), 21: (good(fe), 16, 0, 0)},
                           "EINVAL"),
    "indirect of odd length": (lambda fe: {20: (table_gpa(fe), 24, INDIRECT, 0)}, "EINVAL"),
    "indirect table too long": (lambda fe: {20: (table_gpa(fe), 16 * (PXQ_MAX_INDIRECT_DESCS + 1), INDIRECT, 0)},
                                "EINVAL"),
    "indirect table outside memory": (lambda fe: {20: (0xA0000, 32, INDIRECT, 0)}, "EFAULT"),
}


def nested_indirect(fe):
    t = table_gpa(fe)
    struct.pack_into("<QIHH", fe.mem, t, t + 256, 16, INDIRECT, 0)
    return {20: (t, 16, INDIRECT, 0)}


def looping_indirect(fe):
    t = table_gpa(fe)
    struct.pack_into("<QIHH", fe.mem, t, good(fe), 16, NEXT, 1)
    struct.pack_into("<QIHH", fe.mem, t + 16, good(fe), 16, NEXT, 0)
    return {20: (t, 32, INDIRECT, 0)}


GUEST_FAULTS["nested indirect"] = (nested_indirect, "EINVAL")
GUEST_FAULTS["loop inside an indirect table"] = (looping_indirect, "ELOOP")


@pytest.mark.parametrize("fault", sorted(GUEST_FAULTS))
def test_guest_descriptor_faults_complete_empty_and_the_queue_goes_on(server, fault):
    srv, devices = server
    build, reason = GUEST_FAULTS[fault]
    with VhostUserFrontend(srv.socket_path) as fe:
        fe.boot()
        head = fe.ring(0).add_raw(build(fe), head=20)
        fe.submit(0, out=[HEADER.pack(NOOP, 0, 3)], in_=[16])
        fe.kick(0)
        used = fe.wait_used(0, 2)
        assert (used[0].head, used[0].len) == (head, 0)
        assert used[1].data == HEADER.pack(0, 0, 3)
        st = srv.status()
        assert st["connected"] and st["queues"][0]["malformed"] == 1
        assert devices[0].queues[0].stats.errors_by_reason == {reason: 1}


def test_corrupt_avail_ring_stops_that_queue_until_restart(server):
    srv, _ = server
    with VhostUserFrontend(srv.socket_path) as fe:
        fe.boot()
        fe.ring(0).set_avail_idx(1000)
        fe.kick(0, force=True)
        wait_until(lambda: fe.errors_signalled(0))
        st = srv.status()
        assert st["connected"] and st["queues"][0]["broken"]
        fe.submit(1, out=[HEADER.pack(NOOP, 0, 1)], in_=[16])  # the other queue still serves
        fe.kick(1)
        assert fe.wait_used(1)[0].len == 16
        fe.stop()
        fe.start()  # the driver resets the device: a fresh ring
        fe.submit(0, out=[HEADER.pack(NOOP, 0, 2)], in_=[16])
        fe.kick(0)
        assert fe.wait_used(0)[0].data == HEADER.pack(0, 0, 2)


def test_disconnect_mid_request_drops_the_late_completion(server):
    srv, devices = server
    with VhostUserFrontend(srv.socket_path) as fe:
        fe.boot()
        fe.submit(0, out=[HEADER.pack(HOLD, 0, 1)], in_=[16])
        fe.kick(0)
        wait_until(lambda: devices[0].held)
        _, req, _ = devices[0].held[0]
        queue = devices[0].held[0][0]
        out_gpa = [g for g, n, w in fe.ring(0).chains[0].buffers if w][0]
        used_before = fe.ring(0).used_idx()
        fe.disconnect()  # QEMU dies with the request in flight
        wait_until(lambda: not srv.status()["connected"])
        assert devices[0].events[-1] == ("reset",) and not req.live
        assert devices[0].complete_held_threadsafe() is True
        wait_until(lambda: queue.stats.dropped_late == 1)
        assert fe.ring(0).used_idx() == used_before  # nothing written to guest memory
        assert bytes(fe.mem[out_gpa:out_gpa + 16]) == bytes(16)
    assert served_ok(srv.socket_path)


def test_stop_with_requests_in_flight_then_late_completion(server):
    srv, devices = server
    with VhostUserFrontend(srv.socket_path) as fe:
        fe.boot()
        for i in range(3):
            fe.submit(0, out=[HEADER.pack(HOLD, 0, i)], in_=[16])
        fe.kick(0)
        wait_until(lambda: len(devices[0].held) == 3)
        assert fe.stop()[0] == 3
        used_before = fe.ring(0).used_idx()
        devices[0].complete_held_threadsafe()
        wait_until(lambda: not devices[0].held)
        assert fe.ring(0).used_idx() == used_before


def test_repeated_connections_leak_nothing(server):
    srv, _ = server
    assert served_ok(srv.socket_path)  # warm up lazily created objects
    wait_until(lambda: not srv.status()["connected"])
    settle()
    fds, maps = open_fds(), memfd_mappings()
    for i in range(10):
        with VhostUserFrontend(srv.socket_path) as fe:
            fe.boot()
            fe.submit(0, out=[HEADER.pack(HOLD if i % 2 else NOOP, 0, i)], in_=[16])
            fe.kick(0)
            if i % 3 == 0:
                fe.stop()
        wait_until(lambda: not srv.status()["connected"])
    settle()
    assert (open_fds(), memfd_mappings()) == (fds, maps)
    assert srv.status()["lingering_regions"] == 0


def test_memory_table_kept_exported_by_a_device_lingers_safely(server):
    srv, devices = server
    with VhostUserFrontend(srv.socket_path) as fe:
        fe.boot()
        fe.submit(0, out=[HEADER.pack(HOLD, 0, 1)], in_=[16])
        fe.kick(0)
        wait_until(lambda: devices[0].held)
        _, req, _ = devices[0].held[0]
        keep = []
        srv.call_soon_threadsafe(lambda: keep.append(req.writable_views()[0][0:8]))  # a derived slice
        wait_until(lambda: keep)
        fe.stop()
        assert srv.status()["lingering_regions"] >= 1
        keep[0].release()
        wait_until(lambda: srv.status()["lingering_regions"] == 0, timeout=5)
