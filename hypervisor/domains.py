"""libvirt domains served through handoffs: which VM a pxos-vhost-gpu process is for, and
the life of that VM's connection (docs/operations.md, "libvirt").

A handoff names its domain (hypervisor/libvirt.py tells which); a ``[[vm]]`` whose
``domain`` is the domain's name or UUID serves it, else, when ``[libvirt] auto_register``
is on, a VM is registered for it with the ``[libvirt]`` defaults (and removed when the
domain stops). One connection per VM at a time. The handoff ends when either the device
connection ends (QEMU went away: the shim is told, and exits) or the shim goes (libvirt
stopped it with the domain: the device connection is ended); the VM's usage is back to
zero either way (its device is reset).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from . import errors as E
from .config import LibvirtSection, VMConfig
from .handoff import HandoffListener, Hello
from .libvirt import DomainIdentity, IdentityError, check_domain_name, identify

log = logging.getLogger("pxos.domains")


@dataclass(eq=False)
class Handoff:
    vm_id: int
    identity: DomainIdentity
    auto: bool       # a VM registered for this domain, removed when it ends
    shim_pid: int


class DomainHandoffs:
    """The daemon's handoff service; ``start()`` listens on ``path``."""

    def __init__(self, daemon, cfg: LibvirtSection, path: str, *, mode: int = 0o600, gid: int | None = None):
        self.daemon, self.cfg = daemon, cfg
        self._path, self._mode, self._gid = path, mode, gid
        self._lock = threading.Lock()
        self._by_vm: dict[int, Handoff] = {}
        self._closing = False
        self.listener: HandoffListener | None = None

    def start(self) -> DomainHandoffs:
        self.listener = HandoffListener(self._path, self._on_hello, self._on_hangup, mode=self._mode,
                                        gid=self._gid).start()
        log.info("libvirt handoffs on %s", self._path)
        return self

    # ---- a handoff arrives (its own thread) ----
    def _identify(self, hello: Hello, pid: int) -> DomainIdentity:
        if hello.libvirt_pidfile:
            return identify(hello.libvirt_pidfile, pid, state_dir=self.cfg.state_dir,
                            timeout=self.cfg.identity_timeout_seconds)
        return DomainIdentity(check_domain_name(hello.name), source="named by pxos-vhost-gpu --name")

    def _on_hello(self, hello: Hello, conn, pid: int) -> tuple[Handoff, dict]:
        ident = self._identify(hello, pid)
        d = self.daemon
        if d.transport is None:
            raise E.ConfigError("no vhost-user transport: pxos-hvd cannot serve devices")
        with d._lock, self._lock:
            if self._closing:
                raise E.Busy("pxos-hvd is stopping")
            # Every registered VM as it is now: the file's, changed at run time or not.
            vm = next((v for v in d._vm_configs.values() if v.domain and ident.matches(v.domain)), None)
            auto = vm is None
            if vm is not None:
                vm_id = vm.id
                if vm_id in self._by_vm:
                    raise E.AlreadyExists(f"VM {vm_id} already serves domain {self._by_vm[vm_id].identity.name} "
                                          f"(shim pid {self._by_vm[vm_id].shim_pid})")
            elif self.cfg.auto_register:  # lives as long as the domain runs: not in the state file
                vm_id = self._free_id()
                d._add_vm(VMConfig(id=vm_id, name=_vm_name(ident.name), memory=self.cfg.default_memory,
                                  share=self.cfg.default_share, cap=self.cfg.default_cap))
            else:
                raise IdentityError(f"domain {ident.name!r}{f' ({ident.uuid})' if ident.uuid else ''}: no [[vm]] "
                                    "has it as domain (name or UUID), and [libvirt] auto_register is off")
            h = Handoff(vm_id, ident, auto, pid)
            # Recorded before the device serves: its connection may end at once.
            d.hv.set_domain(vm_id, ident.name)
            self._by_vm[vm_id] = h
            try:
                d.transport.adopt(vm_id, conn, on_end=lambda reason, h=h: self._device_ended(h, reason))
            except Exception:
                del self._by_vm[vm_id]
                if auto:
                    d._remove_vm(vm_id)
                else:
                    d.hv.set_domain(vm_id, None)
                raise
            info = d.hv.vm_info(vm_id)
        log.info("libvirt domain %s%s (%s, shim pid %d) served as VM %d (%s)%s", ident.name,
                 f" {ident.uuid}" if ident.uuid else "", ident.source, pid, vm_id, info.name,
                 ", registered with the [libvirt] defaults" if auto else "")
        return h, {"vm_id": vm_id, "vm_name": info.name, "domain": ident.name, "uuid": ident.uuid}

    def _free_id(self) -> int:
        taken = {i.vm_id for i in self.daemon.hv.list_vms()} | {v.id for v in self.daemon.config.vm}
        vm_id = self.cfg.first_auto_id
        while vm_id in taken:
            vm_id += 1
        return vm_id

    # ---- a handoff ends ----
    def _device_ended(self, h: Handoff, reason: str) -> None:
        # On the VM's loop thread: detaching joins that thread, so finish elsewhere.
        if not self._closing:
            threading.Thread(target=self._finish, args=(h, f"device connection ended ({reason})"),
                             name=f"pxos-handoff-end-{h.vm_id}", daemon=True).start()

    def _on_hangup(self, h: Handoff) -> None:
        self._finish(h, "pxos-vhost-gpu went away (libvirt stopped the domain)")

    def _finish(self, h: Handoff, why: str) -> None:
        with self._lock:
            if self._by_vm.get(h.vm_id) is not h:
                return
            del self._by_vm[h.vm_id]
        d = self.daemon
        with d._lock:
            try:
                d.transport.detach(h.vm_id)
            except E.NotFound:
                pass  # retired (the operator removed the VM) or detached already
            try:
                # The VM may have been removed by the operator meanwhile, and maybe added
                # again (then it is not this domain's any more): leave such a VM alone.
                still_ours = d.hv.vm_info(h.vm_id).domain == h.identity.name
            except E.NotFound:
                still_ours = False
            try:
                if still_ours and h.auto:
                    d._remove_vm(h.vm_id)  # run-time VMs of a domain are not kept in the state file
                elif still_ours:
                    d.hv.set_domain(h.vm_id, None)
            except E.PxosError as exc:
                log.warning("VM %d: after domain %s ended: %s", h.vm_id, h.identity.name, exc)
        if self.listener is not None:
            self.listener.end(h)
        log.info("libvirt domain %s: VM %d released: %s", h.identity.name, h.vm_id, why)

    def stats(self) -> dict:
        """Counters for /metrics: handoffs accepted and refused, domains served now."""
        lst = self.listener
        with self._lock:
            domains = len(self._by_vm)
        return {"accepted": lst.handoffs_total if lst else 0, "refused": lst.refused_total if lst else 0,
                "domains": domains}

    def status(self) -> dict[int, dict]:
        with self._lock:
            return {vm_id: {"domain": h.identity.name, "uuid": h.identity.uuid, "libvirt_id": h.identity.libvirt_id,
                            "shim_pid": h.shim_pid, "auto": h.auto} for vm_id, h in self._by_vm.items()}

    def close(self) -> None:
        """Stop taking handoffs; every shim's connection is closed (they exit)."""
        with self._lock:
            self._closing = True
            live = list(self._by_vm.values())
        for h in live:
            self._finish(h, "pxos-hvd is stopping")
        if self.listener is not None:
            self.listener.close()


def _vm_name(domain: str) -> str:
    return domain[:63]
