"""What pxos-hvd knows of libvirt: which domain a pxos-vhost-gpu process serves, and the
backend description file libvirt looks for (docs/operations.md, "libvirt").

Which domain (established with libvirt 11.3, December 2026; see libvirt's
src/qemu/qemu_vhost_user_gpu.c and src/util/vircommand.c): libvirt starts the backend
daemonized, with a pidfile ``<state dir>/<id>-<short name>-<alias>-vhost-user-gpu.pid``
that the process itself holds open and locked (the descriptor is inherited on purpose, so
libvirt can tell the process is alive). pxos-vhost-gpu reports that path; pxos-hvd checks
that the file lies in libvirt's state directory, is root's, and holds the pid of the
process on the other end of the handoff socket (SO_PEERCRED), which only the process
libvirt started can satisfy. The short name is cut to
20 characters, so the full name and the UUID come from the domain's status file
``<state dir>/<name>.xml`` (``<domstatus><domain id='N'>``), which libvirt writes before
QEMU opens the device and keeps 0600 root: reading it needs pxos-hvd to run as root.
"""

from __future__ import annotations

import json
import os
import re
import stat
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from . import errors as E

#: Where the system libvirtd keeps its QEMU driver's pidfiles and domain status files.
DEFAULT_STATE_DIR = "/run/libvirt/qemu"
#: libvirt's backend pidfile, as qemuVhostUserGPUCreatePidFilename names it.
PIDFILE_RE = re.compile(r"^(?P<id>\d{1,10})-(?P<rest>.+)-vhost-user-gpu\.pid$")
#: libvirt cuts the name in the short name to this many characters (VIR_DOMAIN_SHORT_NAME_MAX).
SHORT_NAME_MAX = 20
#: A status file is a few tens of KiB; more than this is not one of libvirt's.
MAX_STATUS_BYTES = 8 << 20
#: Status files looked at in one pass (a state dir holds one per running domain).
MAX_STATUS_FILES = 4096
#: Longest domain name pxos-hvd takes (libvirt allows more; VM names stop at 63).
MAX_DOMAIN_NAME = 255
UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")

#: Where libvirt (privileged) reads vhost-user backend descriptions, and the name of ours.
DESCRIPTION_DIRS = ("/etc/qemu/vhost-user", "/usr/share/qemu/vhost-user")
DESCRIPTION_NAME = "50-pxos-gpu.json"
SHIM = "pxos-vhost-gpu"


class IdentityError(E.PxosError):
    """Which domain a handoff is for could not be established (the handoff is refused)."""


@dataclass(frozen=True)
class DomainIdentity:
    name: str
    uuid: str | None = None
    libvirt_id: int | None = None
    source: str = ""  # how it was learned: "libvirt status", "named by pxos-vhost-gpu --name"

    def matches(self, wanted: str) -> bool:
        """``wanted`` (a [[vm]]'s ``domain``) is this domain's name, or its UUID (any case)."""
        if wanted == self.name:
            return True
        return self.uuid is not None and wanted.lower() == self.uuid.lower()


def parse_pidfile_name(path: str) -> tuple[int, str]:
    """(libvirt domain id, '<short name>-<alias>') from a backend pidfile path."""
    m = PIDFILE_RE.match(os.path.basename(path))
    if not os.path.isabs(path) or m is None:
        raise IdentityError(f"{path!r} is not a libvirt vhost-user-gpu pidfile "
                            "(<state dir>/<id>-<name>-<alias>-vhost-user-gpu.pid)")
    return int(m.group("id")), m.group("rest")


def _owners() -> frozenset[int]:
    """Who may have written libvirt's files: root (the system libvirtd), or pxos-hvd's user."""
    return frozenset({0, os.geteuid()})


def _read_owned(path: str | Path, limit: int) -> bytes | None:
    """``path``'s first ``limit`` bytes if it is a regular file (not a symlink) owned by
    root or by us; None otherwise. Whoever can hand over could also write files elsewhere
    (libvirt's state dir belongs to its QEMU user): only libvirt's own files count."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid not in _owners() or st.st_mode & stat.S_IWOTH:
            return None
        return os.read(fd, limit)
    finally:
        os.close(fd)


def identify(pidfile: str, peer_pid: int, *, state_dir: str = DEFAULT_STATE_DIR, timeout: float = 10.0,
             poll: float = 0.1) -> DomainIdentity:
    """The domain whose backend is ``peer_pid``, given the pidfile it holds (see the module
    docstring); the pidfile must lie in libvirt's ``state_dir``. IdentityError names what
    did not hold."""
    dom_id, rest = parse_pidfile_name(pidfile)
    if os.path.dirname(os.path.normpath(pidfile)) != os.path.normpath(state_dir):
        raise IdentityError(f"{pidfile} is not in libvirt's state directory {state_dir} "
                            "([libvirt] state_dir)")
    try:
        text = _read_owned(pidfile, 64)
    except OSError as exc:
        raise IdentityError(f"cannot read libvirt's pidfile {pidfile}: {exc.strerror or exc}") from exc
    if text is None:
        raise IdentityError(f"{pidfile} is not libvirt's: not a regular file owned by root")
    try:
        pid = int(text.strip() or b"-1")
    except ValueError:
        raise IdentityError(f"libvirt's pidfile {pidfile} holds no pid") from None
    if pid != peer_pid:
        raise IdentityError(f"libvirt's pidfile {pidfile} names pid {pid}, but the process handing over is "
                            f"pid {peer_pid}: not the backend libvirt started")
    state_dir = Path(pidfile).parent
    deadline = time.monotonic() + timeout
    why = "no status file names it"
    while True:
        try:
            found = _status_of(state_dir, dom_id, rest)
        except PermissionError as exc:
            raise IdentityError(f"cannot read libvirt's domain status in {state_dir} ({exc.strerror}): "
                                "pxos-hvd must run as root to learn the domain of a libvirt handoff") from exc
        if found is not None:
            return found
        if time.monotonic() >= deadline:
            raise IdentityError(f"libvirt domain {dom_id} ({rest.rsplit('-', 1)[0]}): {why} in {state_dir} "
                                f"within {timeout:g} s")
        time.sleep(poll)


def _status_of(state_dir: Path, dom_id: int, rest: str) -> DomainIdentity | None:
    for i, path in enumerate(sorted(state_dir.glob("*.xml"))):
        if i >= MAX_STATUS_FILES:
            break
        try:
            data = _read_owned(path, MAX_STATUS_BYTES + 1)
            if data is None or len(data) > MAX_STATUS_BYTES:
                continue  # not libvirt's (owner), or too big to be a status file
            root = ET.fromstring(data)
        except PermissionError:
            raise
        except (OSError, ET.ParseError):
            continue  # being rewritten, or not libvirt's: the next pass sees it
        dom = root.find("domain") if root.tag == "domstatus" else None
        if dom is None or dom.get("id") != str(dom_id):
            continue
        name = (dom.findtext("name") or "").strip()
        uuid = (dom.findtext("uuid") or "").strip() or None
        # The pidfile's short name is the name's first 20 characters: a status file of
        # another domain that took the same id (an old file) does not pass this.
        if not name or not rest.startswith(name[:SHORT_NAME_MAX] + "-"):
            continue
        if len(name) > MAX_DOMAIN_NAME or not name.isprintable():
            raise IdentityError(f"libvirt domain {dom_id}: its name is not one pxos-hvd takes "
                                f"(1..{MAX_DOMAIN_NAME} printable characters)")
        if uuid is not None and not UUID_RE.match(uuid):
            uuid = None
        return DomainIdentity(name, uuid, dom_id, "libvirt status")
    return None


def check_domain_name(name: str) -> str:
    """A name the shim gives with ``--name`` (plain QEMU): printable, bounded."""
    if not isinstance(name, str) or not 0 < len(name) <= MAX_DOMAIN_NAME or not name.isprintable():
        raise IdentityError(f"a domain name must be 1..{MAX_DOMAIN_NAME} printable characters")
    return name


# ---------------------------------------------------------------- the description file

def description(binary: str) -> dict:
    """The vhost-user backend description (QEMU's docs/interop/vhost-user.json) libvirt
    reads to find the program it starts for ``<driver name='vhostuser'/>`` video."""
    return {
        "description": "pxOS: the VM's virtio-gpu served by pxos-hvd (one daemon schedules every VM)",
        "type": "gpu",
        "binary": binary,
    }


def find_shim() -> str:
    """The installed pxos-vhost-gpu: beside this interpreter (a venv's bin/), else on PATH."""
    import shutil
    import sys

    beside = Path(sys.executable).parent / SHIM
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(SHIM)
    if found:
        return os.path.abspath(found)
    raise E.ConfigError(f"{SHIM} is not installed beside {sys.executable} nor on PATH (pip install pxos)")


def install_description(directory: str = DESCRIPTION_DIRS[0], binary: str | None = None,
                        name: str = DESCRIPTION_NAME) -> Path:
    """Write the description into ``directory`` (created if missing); returns the file."""
    binary = binary or find_shim()
    if not os.path.isabs(binary):
        raise E.ConfigError(f"the backend binary must be an absolute path, got {binary!r}")
    target = Path(directory) / name
    try:
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        tmp = target.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(description(binary), indent=2) + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except OSError as exc:
        raise E.ConfigError(f"cannot write {target}: {exc.strerror or exc}") from exc
    return target


def install_main(argv: list[str]) -> int:
    """``pxos-hvd install-libvirt``: write the description libvirt finds pxos-vhost-gpu by."""
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="pxos-hvd install-libvirt",
                                description="Install the vhost-user GPU backend description that makes libvirt "
                                            "start pxos-vhost-gpu for <video><driver name='vhostuser'/></video> "
                                            "(restart nothing: libvirt reads it at each domain start)")
    p.add_argument("--dir", default=DESCRIPTION_DIRS[0], help=f"where (default {DESCRIPTION_DIRS[0]}; "
                                                              f"packagers: {DESCRIPTION_DIRS[1]})")
    p.add_argument("--binary", help="the pxos-vhost-gpu to name (default: the one installed beside pxos-hvd)")
    p.add_argument("--print", action="store_true", help="print the description instead of writing it")
    args = p.parse_args(argv)
    try:
        binary = args.binary or find_shim()
        if args.print:
            print(json.dumps(description(binary), indent=2))
            return 0
        path = install_description(args.dir, binary)
    except E.PxosError as exc:
        print(f"pxos-hvd install-libvirt: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path} (binary {binary})")
    return 0
