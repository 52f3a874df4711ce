"""pxos-vhost-gpu: the per-VM vhost-user GPU back-end program libvirt starts for
``<video><driver name='vhostuser'/></video>``. It serves nothing itself: it hands the
connection to the running pxos-hvd (hypervisor/handoff.py) and stays alive as long as the
VM's device connection does, as libvirt expects of a back-end process (it holds the
pidfile libvirt locks, sits in the VM's cgroup, and is killed when the VM stops).

Options follow QEMU's vhost-user back-end conventions (docs/interop/vhost-user.json):
``--print-capabilities``, ``--fd=N`` (a connected socket: what libvirt passes), or
``--socket-path=PATH`` (listen there for one QEMU, for use without libvirt; give
``--name``). ``--handoff-socket`` (or $PXOS_HANDOFF_SOCKET) is pxos-hvd's handoff socket.
Exit status: 0 when the VM's connection ended normally, 1 when the handoff failed (the
message says why, on stderr and to syslog: under libvirt stderr is /dev/null).
"""

from __future__ import annotations

import argparse
import array
import json
import os
import re
import socket
import stat
import sys

from hypervisor.handoff import DEFAULT_HANDOFF_SOCKET, HANDOFF_ENV, encode_hello

PROG = "pxos-vhost-gpu"
#: QEMU's VHostUserBackendCapabilities for a gpu: pxOS needs neither virgl nor a render node.
CAPABILITIES = {"type": "gpu", "features": []}
#: How long the daemon may take to accept (it reads libvirt's record of the domain first).
REPLY_TIMEOUT_S = 120.0
_PIDFILE = re.compile(r"-vhost-user-gpu\.pid$")


class ShimError(Exception):
    pass


def libvirt_pidfile() -> str | None:
    """The libvirt pidfile this process holds open (libvirt leaves it inherited and locked)."""
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return None
    for fd in fds:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("/") and _PIDFILE.search(target):
            return target
    return None


def connected_fd(fd: int) -> socket.socket:
    try:
        st = os.fstat(fd)
    except OSError as exc:
        raise ShimError(f"--fd={fd}: not an open descriptor ({exc.strerror})") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise ShimError(f"--fd={fd}: not a socket")
    return socket.socket(fileno=fd)


def accept_one(path: str) -> socket.socket:
    """Listen on ``path`` for one front-end (QEMU's -chardev socket,path=...), then remove it."""
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)
        except FileNotFoundError:
            pass
        lsock.bind(path)
        lsock.listen(1)
        conn, _ = lsock.accept()
        return conn
    except OSError as exc:
        raise ShimError(f"--socket-path={path}: {exc.strerror or exc}") from exc
    finally:
        lsock.close()
        try:
            os.unlink(path)
        except OSError:
            pass


def hand_over(conn: socket.socket, handoff: str, *, pidfile: str | None, name: str | None) -> dict:
    """Send the connection to pxos-hvd; returns its reply (ok) and the open control socket."""
    ctl = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        ctl.connect(handoff)
    except OSError as exc:
        ctl.close()
        raise ShimError(f"pxos-hvd is not running or not reachable: cannot connect to its handoff socket "
                        f"{handoff} ({exc.strerror or exc}); start pxos-hvd with [libvirt] handoff_socket set "
                        f"(docs/operations.md, 'libvirt')") from None
    try:
        ctl.sendmsg([encode_hello(pidfile, name)],
                    [(socket.SOL_SOCKET, socket.SCM_RIGHTS, _fd_bytes(conn.fileno()))])
        ctl.settimeout(REPLY_TIMEOUT_S)
        data = ctl.recv(65536)
    except OSError as exc:
        ctl.close()
        raise ShimError(f"handoff to pxos-hvd failed: {exc.strerror or exc}") from None
    finally:
        conn.close()  # pxos-hvd holds it now (or it was refused): this copy must not linger
    try:
        reply = json.loads(data.decode()) if data else {"ok": False, "error": "pxos-hvd closed the connection"}
    except ValueError:
        reply = {"ok": False, "error": "pxos-hvd's reply is not JSON"}
    if not reply.get("ok"):
        ctl.close()
        raise ShimError(f"pxos-hvd refused the VM: {reply.get('error', 'no reason given')}")
    reply["_control"] = ctl
    return reply


def _fd_bytes(fd: int) -> bytes:
    return array.array("i", [fd]).tobytes()


def wait_until_over(ctl: socket.socket) -> None:
    """Block until pxos-hvd closes the control connection (the VM's connection ended)."""
    ctl.settimeout(None)
    while True:
        try:
            if not ctl.recv(4096):
                return
        except InterruptedError:
            continue
        except OSError:
            return


def _report(msg: str) -> None:
    print(f"{PROG}: {msg}", file=sys.stderr, flush=True)
    try:
        import syslog

        syslog.openlog(PROG, syslog.LOG_PID)
        syslog.syslog(syslog.LOG_ERR, msg)
    except OSError:
        pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description="pxOS vhost-user GPU back-end for libvirt: hands the "
                                "VM's connection to the running pxos-hvd")
    p.add_argument("--print-capabilities", action="store_true", help="print the back-end's capabilities (JSON)")
    p.add_argument("--fd", type=int, help="a connected vhost-user socket (libvirt passes one)")
    p.add_argument("--socket-path", help="listen here for one QEMU instead")
    p.add_argument("--name", help="the VM's name, where libvirt does not tell it (with --socket-path)")
    p.add_argument("--handoff-socket", default=os.environ.get(HANDOFF_ENV) or DEFAULT_HANDOFF_SOCKET,
                   help=f"pxos-hvd's handoff socket (default ${HANDOFF_ENV} or {DEFAULT_HANDOFF_SOCKET})")
    # libvirt adds these when the domain asks for 3D; pxOS offers neither (see CAPABILITIES).
    p.add_argument("--virgl", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--render-node", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.print_capabilities:
        print(json.dumps(CAPABILITIES))
        return 0
    if (args.fd is None) == (args.socket_path is None):
        p.error("give --fd=N or --socket-path=PATH (or --print-capabilities)")
    if args.virgl or args.render_node:
        _report("virgl and render nodes are not offered (pxOS serves its own GPU protocol); ignoring them")
    try:
        conn = connected_fd(args.fd) if args.fd is not None else accept_one(args.socket_path)
        pidfile = libvirt_pidfile()
        if pidfile is None and not args.name:
            conn.close()
            raise ShimError("not started by libvirt (no libvirt pidfile held) and no --name given: "
                            "pxos-hvd cannot tell which VM this is")
        reply = hand_over(conn, args.handoff_socket, pidfile=pidfile, name=args.name)
    except ShimError as exc:
        _report(str(exc))
        return 1
    print(f"{PROG}: VM {reply.get('vm_id')} ({reply.get('vm_name')}) serves domain {reply.get('domain')}",
          file=sys.stderr, flush=True)
    wait_until_over(reply["_control"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
