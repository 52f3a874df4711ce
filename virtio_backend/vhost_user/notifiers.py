"""The kick, call and error eventfds a front-end passes (SET_VRING_KICK / _CALL / _ERR).

Spec: QEMU ``docs/interop/vhost-user.rst``, "SET_VRING_KICK" and friends: each carries
an eventfd. A front-end can pass anything (issue 17, finding 7), and what it passes is
then read and written on the VM's loop thread, so each fd is checked for what it must be
before it is used, and used so that it can never block the loop:

- it must be an eventfd (``/proc/self/fd/N`` reads ``anon_inode:[eventfd]``; without a
  /proc, an anonymous inode). A pipe whose writer closed, a socket whose peer is gone, a
  regular file or a directory is refused with a ``ProtocolError`` before epoll ever sees
  it: such a kick fd would be readable forever (a spinning loop) or make epoll fail;
- it is made non-blocking (``O_NONBLOCK`` lives on the open file, which the front-end
  shares: QEMU creates its eventfds non-blocking anyway). A call or error eventfd whose
  counter is saturated then fails a write with EAGAIN instead of blocking the loop
  forever; ``signal`` reports it and the connection resets that VM, once.
"""

from __future__ import annotations

import os
import stat

from hypervisor.errors import ProtocolError

EVENTFD_LINK = "anon_inode:[eventfd]"
_PROC_FD = "/proc/self/fd"
_HAVE_PROC = os.path.isdir(_PROC_FD)


def describe(fd: int) -> str:
    """What an fd is, in a few words (for refusals and logs)."""
    if _HAVE_PROC:
        try:
            return os.readlink(f"{_PROC_FD}/{fd}")
        except OSError as exc:
            return f"unreadable ({exc.strerror})"
    try:
        return stat.filemode(os.fstat(fd).st_mode)
    except OSError as exc:
        return f"unreadable ({exc.strerror})"


def is_eventfd(fd: int) -> bool:
    if _HAVE_PROC:
        return describe(fd) == EVENTFD_LINK
    try:
        return stat.S_IFMT(os.fstat(fd).st_mode) == 0  # an anonymous inode (no /proc to tell more)
    except OSError:
        return False


def accept_eventfd(fd: int, what: str) -> None:
    """Refuse (``ProtocolError``) an fd that is not an eventfd; make it non-blocking."""
    if not is_eventfd(fd):
        raise ProtocolError(f"{what}: the fd is {describe(fd)}, not an eventfd")
    try:
        os.set_blocking(fd, False)
    except OSError as exc:
        raise ProtocolError(f"{what}: cannot make the eventfd non-blocking: {exc}") from exc


def signal(fd: int) -> str | None:
    """Add 1 to a (non-blocking) eventfd. None when done, else why not: never blocks."""
    try:
        os.eventfd_write(fd, 1)
    except BlockingIOError:
        return "its counter is saturated (the front-end never reads it)"
    except OSError as exc:
        return f"writing it failed: {exc}"
    return None


def drain(fd: int) -> tuple[bool, str | None]:
    """Read a kick eventfd: (kicked, error). An empty one is (False, None)."""
    try:
        return os.eventfd_read(fd) > 0, None
    except BlockingIOError:
        return False, None
    except OSError as exc:
        return False, f"reading it failed: {exc}"
