"""Where pxos-hvd may create VM sockets: only inside ``socket_dir`` (docs/operations.md,
"Sockets and who may reach them").

A VM socket path comes from the config or from an AddVM call, so it is input: a relative
name is taken inside ``socket_dir``; an absolute path must lie inside it, both as written
(``..`` collapsed) and once the symlinks of its directory are resolved, so a link inside
``socket_dir`` cannot lead out of it. The daemon creates ``socket_dir`` itself when it is
missing (mode 0750) and no other directory: a socket's directory must already exist.
How the socket file gets its owner and mode is the listener's part (virtio_backend's
VhostUserServer binds inside a private directory and renames into place).
"""

from __future__ import annotations

import grp
import os
import stat

from .errors import ConfigError, SocketPathRefused

#: Mode of a socket_dir the daemon creates: QEMU's group may look in, no one else.
SOCKET_DIR_MODE = 0o750


def within(path: str, directory: str) -> bool:
    """``path`` is ``directory`` or lies below it (both absolute and normalised)."""
    return os.path.commonpath([path, directory]) == directory


def lexical_vm_socket(path: str, socket_dir: str) -> str:
    """The absolute, normalised path a VM socket name stands for, if it lies inside
    ``socket_dir`` as written; SocketPathRefused otherwise. No filesystem access."""
    if not path or "\0" in path:
        raise SocketPathRefused("a VM socket path must be a non-empty path without NUL bytes")
    base = os.path.normpath(os.path.abspath(socket_dir))
    full = os.path.normpath(os.path.join(base, path))  # an absolute `path` replaces base
    if full == base or not within(full, base):
        raise SocketPathRefused(f"VM socket {path!r} lies outside socket_dir {base}: pxos-hvd creates "
                                "VM sockets only there (set [daemon] socket_dir, or name a path inside it)")
    return full


def resolve_vm_socket(path: str, socket_dir: str) -> str:
    """lexical_vm_socket, then the same check with symlinks resolved; creates socket_dir if
    it is missing and nothing else. Returns the path to bind."""
    full = lexical_vm_socket(path, socket_dir)
    base = os.path.normpath(os.path.abspath(socket_dir))
    ensure_socket_dir(base)
    parent = os.path.dirname(full)
    real_base, real_parent = os.path.realpath(base), os.path.realpath(parent)
    if not within(real_parent, real_base):
        raise SocketPathRefused(f"VM socket {path!r}: its directory {parent} leads outside socket_dir "
                                f"{base} (through a symlink)")
    try:
        st = os.stat(real_parent)
    except FileNotFoundError:
        raise SocketPathRefused(f"VM socket {path!r}: directory {parent} does not exist; pxos-hvd creates no "
                                "directory but socket_dir itself") from None
    if not stat.S_ISDIR(st.st_mode):
        raise SocketPathRefused(f"VM socket {path!r}: {parent} is not a directory")
    return os.path.join(real_parent, os.path.basename(full))


def missing_socket_dirs(cfg) -> list[tuple[int, str]]:
    """(VM id, directory) for each configured VM socket whose directory does not exist and
    is not socket_dir (which the daemon creates): what `--check-config` reports, since the
    daemon would refuse to start on it."""
    base = os.path.normpath(os.path.abspath(cfg.daemon.socket_dir))
    out = []
    for vm in cfg.vm:
        if vm.socket:
            parent = os.path.dirname(lexical_vm_socket(vm.socket, base))
            if parent != base and not os.path.isdir(parent):
                out.append((vm.id, parent))
    return out


def ensure_socket_dir(socket_dir: str) -> None:
    try:
        os.makedirs(socket_dir, mode=SOCKET_DIR_MODE, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"socket_dir {socket_dir}: cannot create it: {exc.strerror or exc}") from exc


def socket_access(group: str | None) -> tuple[int, int | None]:
    """(mode, gid) of VM sockets: 0600 and our own group, or 0660 and ``group``
    (vm_socket_group: QEMU's, so that an unprivileged QEMU may connect)."""
    if not group:
        return 0o600, None
    try:
        gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigError(f"vm_socket_group: no group {group!r} on this host") from None
    return 0o660, gid
