"""The listener and a well-behaved front-end: QEMU 10's sequence end to end through the
scripted front-end, asynchronous completions, stop/restart, reset, reconnection."""

from __future__ import annotations

import os
import socket
import stat
import struct
import threading

import pytest

from hypervisor.errors import ConfigError
from tests.support.echo_device import ECHO, HEADER, HOLD, NOOP, SINK, EchoDevice
from tests.support.leaks import memfd_mappings
from tests.support.vhost_frontend import (
    F_EVENT_IDX,
    F_INDIRECT_DESC,
    F_PROTOCOL_FEATURES,
    F_VERSION_1,
    RESET_DEVICE,
    SET_CONFIG,
    VhostUserFrontend,
    wait_until,
)
from virtio_backend.vhost_user import VhostUserServer


def noop(fe, q=0, tag=0, **kw):
    return fe.submit(q, out=[HEADER.pack(NOOP, 0, tag)], in_=[16], **kw)


def test_socket_is_private_and_removed_on_close(sock_dir):
    path = f"{sock_dir}/vm.sock"
    srv = VhostUserServer(path, EchoDevice.factory()).start()
    mode = os.stat(path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    srv.close()
    assert not os.path.exists(path)


def test_stale_socket_is_replaced_live_or_foreign_paths_refused(sock_dir):
    path = f"{sock_dir}/vm.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()  # the file stays, nobody listens
    with VhostUserServer(path, EchoDevice.factory()):
        with pytest.raises(ConfigError, match="in use"):
            VhostUserServer(path, EchoDevice.factory()).start()
    with open(f"{sock_dir}/file", "w"):
        pass
    with pytest.raises(ConfigError, match="not a socket"):
        VhostUserServer(f"{sock_dir}/file", EchoDevice.factory()).start()


def test_qemu_sequence_config_and_requests(server):
    srv, devices = server
    with VhostUserFrontend(srv.socket_path) as fe:
        fe.boot()
        assert fe.get_config(0, 16) == bytes(range(16))
        assert fe.features == F_VERSION_1 | F_PROTOCOL_FEATURES | F_EVENT_IDX | F_INDIRECT_DESC
        assert fe.offered & (1 << 1)  # the device's own feature bit is offered too
        noop(fe, tag=7)
        fe.submit(0, out=[HEADER.pack(ECHO, 0, 1), b"payload"], in_=[8, 64], indirect=True)
        fe.kick(0)
        used = fe.wait_used(0, 2)
        assert used[0].data == HEADER.pack(0, 0, 7)
        assert used[1].data == HEADER.pack(ECHO, 0, 1) + b"payload"
        dev = devices[0]
        assert dev.events[:4] == [("started", 0), ("kicked", 0), ("started", 1), ("kicked", 1)]
        assert dev.messages and dev.messages[0][0] == 33  # GPU_SET_SOCKET reached the device
        st = srv.status()
        assert st["connected"] and st["queues"][0]["size"] == 64 and st["queues"][1]["size"] == 16
        assert st["requests_served"] == 2 and st["errors"] == 0


@pytest.mark.parametrize("event_idx,indirect", [(False, False), (True, False), (False, True)])
def test_feature_variants(server, event_idx, indirect):
    srv, _ = server
    with VhostUserFrontend(srv.socket_path, event_idx=event_idx, indirect=indirect) as fe:
        fe.boot()
        for round_ in range(3):
            for i in range(10):
                fe.submit(0, out=[HEADER.pack(ECHO, i, round_)], in_=[16], indirect=indirect)
            fe.kick(0)
            assert len(fe.wait_used(0, 10)) == 10


def test_many_batches_through_a_small_ring(server):
    srv, _ = server
    with VhostUserFrontend(srv.socket_path, queue_sizes=(8, 4)) as fe:
        fe.boot()
        total = 0
        for _ in range(50):
            for i in range(4):
                noop(fe, tag=i)
            fe.kick(0)
            total += len(fe.wait_used(0, 4))
        assert total == 200


def test_kick_before_enable_is_not_lost(server):
    srv, _ = server
    with VhostUserFrontend(srv.socket_path) as fe:
        fe.connect()
        fe.handshake()

        def early(fe):
            noop(fe, tag=5)
            fe.kick(0, force=True)

        fe.start(before_enable=early)
        assert fe.wait_used(0)[0].data == HEADER.pack(0, 0, 5)


def test_held_requests_complete_out_of_order_from_another_thread(server):
    srv, devices = server
    with VhostUserFrontend(srv.socket_path) as fe:
        fe.boot()
        heads = [fe.submit(0, out=[HEADER.pack(HOLD, 0, i)], in_=[16], indirect=True) for i in range(64)]
        fe.kick(0)
        wait_until(lambda: len(devices[0].held) == 64)
        assert srv.status()["queues"][0]["in_flight"] == 64
        t = threading.Thread(target=devices[0].complete_held_threadsafe)
        t.start()
        t.join()
        used = fe.wait_used(0, 64)
        assert [u.head for u in used] == list(reversed(heads))
        assert [struct.unpack("<IIQ", u.data)[2] for u in used] == list(range(63, -1, -1))


def test_sink_copies_a_megabyte(server):
    srv, devices = server
    data = os.urandom(1 << 20)
    with VhostUserFrontend(srv.socket_path) as fe:
        fe.boot()
        fe.submit(0, out=[HEADER.pack(SINK, 0, 0), data[:300000], data[300000:]], in_=[16])
        fe.kick(0)
        [u] = fe.wait_used(0)
        assert struct.unpack("<IIQ", u.data)[1] == 1 << 20
        assert bytes(devices[0].sink[:1 << 20]) == data


def test_stop_resets_device_and_unmaps_then_restart_works(server):
    srv, devices = server
    baseline = memfd_mappings("pxos-test-guest-ram")
    with VhostUserFrontend(srv.socket_path) as fe:
        fe.boot()
        for i in range(5):
            noop(fe, tag=i)
        fe.kick(0)
        fe.wait_used(0, 5)
        mapped = memfd_mappings("pxos-test-guest-ram")
        assert mapped >= baseline + 3  # ours and the back-end's two regions
        assert fe.stop() == [5, 0]
        dev = devices[0]
        assert dev.events[-3:] == [("stopped", 0), ("stopped", 1), ("reset",)]
        assert memfd_mappings("pxos-test-guest-ram") == mapped - 2  # back-end unmapped
        fe.start()  # the driver loads again: fresh rings from index 0
        noop(fe, tag=9)
        fe.kick(0)
        assert fe.wait_used(0)[0].data == HEADER.pack(0, 0, 9)
        assert len(devices) == 1  # same connection, same device object, reset in between


def test_reset_device_message(server):
    srv, devices = server
    with VhostUserFrontend(srv.socket_path) as fe:
        fe.boot()
        fe.request(RESET_DEVICE)
        wait_until(lambda: ("reset",) in devices[0].events)
        assert srv.status()["queues"][0]["started"] is False
        fe.start()
        noop(fe, tag=3)
        fe.kick(0)
        assert fe.wait_used(0)[0].data == HEADER.pack(0, 0, 3)


def test_set_config_with_reply_ack(server):
    srv, devices = server
    with VhostUserFrontend(srv.socket_path) as fe:
        fe.boot()
        fe.request(SET_CONFIG, struct.pack("<III", 4, 2, 0) + b"\xAA\xBB")
        assert fe.get_config(0, 8) == bytes([0, 1, 2, 3, 0xAA, 0xBB, 6, 7])
        from tests.support.vhost_frontend import FrontendError

        with pytest.raises(FrontendError, match="failure"):  # beyond the device's 24 bytes
            fe.request(SET_CONFIG, struct.pack("<III", 20, 8, 0) + bytes(8))
        assert fe.get_config(0, 4) == bytes([0, 1, 2, 3])  # the connection carries on


def test_second_frontend_is_turned_away_then_served_after_disconnect(server):
    srv, devices = server
    with VhostUserFrontend(srv.socket_path) as first:
        first.boot()
        with VhostUserFrontend(srv.socket_path) as second:
            second.connect()
            with pytest.raises((ConnectionResetError, BrokenPipeError, OSError)):
                second.handshake()
        assert srv.status()["rejected_total"] == 1
        first.disconnect()
    wait_until(lambda: not srv.status()["connected"])
    assert devices[0].events[-1] == ("reset",)
    with VhostUserFrontend(srv.socket_path) as again:
        again.boot()
        noop(again, tag=1)
        again.kick(0)
        assert again.wait_used(0)[0].data == HEADER.pack(0, 0, 1)
    assert len(devices) == 2 and srv.status()["connections_total"] == 2


def test_without_protocol_features_rings_run_at_kick(server):
    srv, _ = server
    with VhostUserFrontend(srv.socket_path) as fe:
        fe.connect()
        fe.handshake()
        fe.offered &= ~F_PROTOCOL_FEATURES  # acked features without bit 30: rings enabled

        def early(fe):
            noop(fe, tag=4)
            fe.kick(0, force=True)

        fe.start(before_enable=early)
        assert fe.wait_used(0)[0].data == HEADER.pack(0, 0, 4)


def test_ring_reset_acked_without_offer_is_tolerated_packed_is_not(server):
    srv, _ = server
    # QEMU 10 acks VIRTIO_F_RING_RESET whatever the back-end offered
    with VhostUserFrontend(srv.socket_path, extra_features=1 << 40) as fe:
        fe.boot()
        assert srv.status()["features"] & (1 << 40)
        noop(fe, tag=6)
        fe.kick(0)
        assert fe.wait_used(0)[0].data == HEADER.pack(0, 0, 6)
        fe.set_u64(2, fe.features | 1 << 34)  # VIRTIO_F_RING_PACKED: a ring format we lack
    wait_until(lambda: "never offered" in srv.status()["last_close_reason"])


def test_reset_device_keeps_the_error_eventfd(server):
    srv, _ = server
    with VhostUserFrontend(srv.socket_path) as fe:
        fe.boot()
        fe.request(RESET_DEVICE)
        fe.start()
        fe.ring(0).set_avail_idx(500)
        fe.kick(0, force=True)
        wait_until(lambda: fe.errors_signalled(0))


def test_new_memory_table_while_requests_are_held(server):
    srv, devices = server
    from tests.support.vhost_frontend import SET_MEM_TABLE

    with VhostUserFrontend(srv.socket_path) as fe:
        fe.boot()
        steady = memfd_mappings("pxos-test-guest-ram")
        for i in range(3):
            fe.submit(0, out=[HEADER.pack(HOLD, 0, i)], in_=[16])
        fe.kick(0)
        wait_until(lambda: len(devices[0].held) == 3)
        # QEMU re-sends the table when the guest's memory layout changes, rings running.
        fe.request(SET_MEM_TABLE, fe.mem_table_payload(), [fe.ram_fd] * len(fe.regions))
        fe.get_config()  # a round trip: the table was handled
        assert memfd_mappings("pxos-test-guest-ram") == steady + 2  # old table kept for the held ones
        devices[0].complete_held_threadsafe()
        used = fe.wait_used(0, 3)
        assert sorted(struct.unpack("<IIQ", u.data)[2] for u in used) == [0, 1, 2]
        wait_until(lambda: memfd_mappings("pxos-test-guest-ram") == steady)  # old table unmapped
        noop(fe, tag=8)  # and the rings run on the new one
        fe.kick(0)
        assert fe.wait_used(0)[0].data == HEADER.pack(0, 0, 8)


def test_reconnect_right_after_a_close_is_served(server):
    """Issue 11, item 10: a front-end connecting within milliseconds of the previous one's
    close was sometimes turned away at its first message. The hung-up connection is ended
    first, every time."""
    srv, devices = server
    for _ in range(30):
        fe = VhostUserFrontend(srv.socket_path)
        fe.connect()
        fe.handshake()
        fe.close()
        with VhostUserFrontend(srv.socket_path) as again:  # at once, no wait
            again.connect()
            again.handshake()
    assert srv.status()["rejected_total"] == 0


@pytest.mark.parametrize("request_name", ["SET_MEM_TABLE", "SET_VRING_NUM", "SET_VRING_BASE"])
def test_ring_and_memory_requests_before_set_owner_are_refused(server, request_name):
    """Issue 11, item 10: these were accepted before SET_OWNER. Now the connection ends with
    a protocol error, and the socket serves the next front-end."""
    from tests.support import vhost_frontend as V

    srv, _ = server
    fe = VhostUserFrontend(srv.socket_path)
    try:
        fe.connect()
        with pytest.raises((ConnectionResetError, BrokenPipeError, OSError)):
            if request_name == "SET_MEM_TABLE":
                fe.send_mem_table([(0, 1 << 20, fe.ram_va, 0)])
            else:
                fe.vring_state(getattr(V, request_name), 0, 16)
            fe.get_u64(V.GET_FEATURES)  # the connection is gone by now
    finally:
        fe.close()
    wait_until(lambda: "before SET_OWNER" in (srv.status().get("last_close_reason") or ""))
    with VhostUserFrontend(srv.socket_path) as again:
        again.connect()
        again.handshake()
