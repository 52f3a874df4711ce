"""Run-time VM changes that outlive a restart: the state file ([daemon] state_file).

`pxosctl vm add`, `vm remove` and `quota set` change the running daemon only; the config
file is the operator's, and pxos-hvd never rewrites it. So that a restart (a crash, an
upgrade, systemd's Restart=on-failure) does not silently undo them, the daemon writes each
such change to the state file, and at start applies it over the file's ``[[vm]]`` tables.

Each entry is one VM: ``base``, the file's table for it when the change was made (None:
the file did not name it), and ``now``, what the operator made of it (None: removed).
The file stays the authority for what it says: an entry whose ``base`` no longer equals
the file's table is dropped at start (the file was edited since: its new table wins),
and so is one a SIGHUP reload replaces. Changes the LLM advisor applies are not kept; it
derives them again.

The file is JSON, written whole to a temporary file, flushed and renamed over the old
one (a crash leaves the old or the new, never half of one), mode 0600. A file that
cannot be read or parsed is set aside (``<name>.bad-<time>``) with a logged warning and
the daemon starts from the config file alone: a damaged state file must not keep a host's
GPU daemon down at 3 a.m.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass

from pydantic import ValidationError

from .config import VMConfig

log = logging.getLogger("pxos.state")

STATE_VERSION = 1
#: A state file larger than this is not read (it would take a VM table far past any host).
MAX_STATE_BYTES = 4 << 20


@dataclass(frozen=True)
class Entry:
    base: VMConfig | None  # the config file's table when the change was made
    now: VMConfig | None   # the VM as the operator left it; None: removed


class RuntimeState:
    """The state file's entries, kept in memory and written through on every change.
    ``RuntimeState(None)`` keeps nothing (no state_file configured)."""

    def __init__(self, path: str | None):
        self.path = path
        self.entries: dict[int, Entry] = {}

    # ---- reading ----------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | None) -> RuntimeState:
        st = cls(path)
        if path is None or not os.path.exists(path):
            return st
        try:
            if os.path.getsize(path) > MAX_STATE_BYTES:
                raise ValueError(f"larger than {MAX_STATE_BYTES} bytes")
            with open(path, encoding="utf-8") as f:
                raw = json.load(f)
            st.entries = _parse(raw)
        except (OSError, ValueError, ValidationError) as exc:
            aside = f"{path}.bad-{int(time.time())}"
            try:
                os.replace(path, aside)
                where = f"moved to {aside}"
            except OSError as mv:
                where = f"and could not be moved aside: {mv.strerror or mv}"
            log.warning("state file %s is unreadable (%s); %s; starting from the config file alone",
                        path, _short(exc), where)
            st.entries = {}
        return st

    def apply(self, file_vms: list[VMConfig]) -> tuple[list[VMConfig], list[str]]:
        """The VMs to register at start: the file's, with the recorded changes over them.
        Returns (VMs, one line per change applied or dropped). Drops stale entries."""
        by_id = {v.id: v for v in file_vms}
        notes: list[str] = []
        for vm_id, e in sorted(self.entries.items()):
            if by_id.get(vm_id) != e.base:
                notes.append(f"VM {vm_id}: the config file changed it since its run-time change; the file wins")
                del self.entries[vm_id]
                continue
            if e.now is None:
                by_id.pop(vm_id, None)
                notes.append(f"VM {vm_id}: kept removed (removed at run time)")
            else:
                by_id[vm_id] = e.now
                notes.append(f"VM {vm_id}: {'kept as changed' if e.base else 'kept (added)'} at run time")
        if notes:
            self.save()
        return [by_id[i] for i in sorted(by_id)], notes

    # ---- writing ----------------------------------------------------------------------
    def record(self, vm_id: int, base: VMConfig | None, now: VMConfig | None) -> None:
        """The operator changed VM ``vm_id`` at run time: it is ``now`` (None: removed)."""
        if base == now:
            self.entries.pop(vm_id, None)  # back to what the file says
        else:
            self.entries[vm_id] = Entry(base, now)
        self.save()

    def forget(self, vm_id: int) -> None:
        """The config file now decides this VM again (a reload changed its table)."""
        if self.entries.pop(vm_id, None) is not None:
            self.save()

    def save(self) -> None:
        if self.path is None:
            return
        body = {"version": STATE_VERSION, "vms": [
            {"id": vm_id, "base": _dump(e.base), "now": _dump(e.now)} for vm_id, e in sorted(self.entries.items())]}
        directory = os.path.dirname(os.path.abspath(self.path))
        tmp = f"{self.path}.tmp-{os.getpid()}"
        try:
            os.makedirs(directory, mode=0o750, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(body, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            # The change itself stands (the daemon runs with it); only its persistence failed.
            log.error("state file %s: cannot write (%s): run-time changes will not survive a restart",
                      self.path, exc.strerror or exc)
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _dump(vm: VMConfig | None) -> dict | None:
    return None if vm is None else vm.model_dump(mode="json")


def _parse(raw) -> dict[int, Entry]:
    if not isinstance(raw, dict) or raw.get("version") != STATE_VERSION or not isinstance(raw.get("vms"), list):
        raise ValueError(f"not a version-{STATE_VERSION} pxos-hvd state file")
    out: dict[int, Entry] = {}
    for item in raw["vms"]:
        if not isinstance(item, dict) or not isinstance(item.get("id"), int):
            raise ValueError("an entry without an integer id")
        base = None if item.get("base") is None else VMConfig.model_validate(item["base"])
        now = None if item.get("now") is None else VMConfig.model_validate(item["now"])
        if any(v is not None and v.id != item["id"] for v in (base, now)):
            raise ValueError(f"entry {item['id']}: a table of another VM id")
        out[item["id"]] = Entry(base, now)
    return out


def _short(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]

