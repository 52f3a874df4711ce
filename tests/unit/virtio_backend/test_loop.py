"""The vhost-user event loop: a handler that removes another fd's reader in the same pass
(a new front-end's accept ending the hung-up connection, a reset closing kick fds) keeps
that reader from running on the fd it no longer owns (found by bench/soak.py: the old
connection's handler read its closed socket and logged EBADF as a host bug)."""

from __future__ import annotations

import os
import threading

from virtio_backend.vhost_user.loop import EventLoop


def test_a_reader_removed_earlier_in_the_same_pass_is_not_called():
    loop = EventLoop("test")
    a, b = os.eventfd(1, os.EFD_NONBLOCK), os.eventfd(1, os.EFD_NONBLOCK)  # both readable at once
    ran: list[str] = []

    def make(name, other):
        def handler():
            ran.append(name)
            loop.remove_reader(other)  # as _on_accept closing the previous connection does
            loop.stop()
        return handler

    loop.add_reader(a, make("a", b))
    loop.add_reader(b, make("b", a))
    t = threading.Thread(target=loop.run)
    t.start()
    t.join(timeout=10)
    try:
        assert len(ran) == 1, ran  # whichever ran first took the other's fd away
    finally:
        loop.close()
        os.close(a)
        os.close(b)


def test_a_reader_replaced_in_the_same_pass_gets_only_its_own_events():
    loop = EventLoop("test")
    a, b = os.eventfd(1, os.EFD_NONBLOCK), os.eventfd(1, os.EFD_NONBLOCK)
    ran: list[str] = []

    def replace_other(name, other):
        def handler():
            ran.append(name)
            loop.remove_reader(other)
            loop.add_reader(other, lambda: ran.append("new"))  # the fd number reused by a new file
            loop.stop()
        return handler

    loop.add_reader(a, replace_other("a", b))
    loop.add_reader(b, replace_other("b", a))
    t = threading.Thread(target=loop.run)
    t.start()
    t.join(timeout=10)
    try:
        assert ran[0] in ("a", "b") and ran[1:] in ([], ["new"]), ran  # never the old handler of the other fd
    finally:
        loop.close()
        os.close(a)
        os.close(b)
