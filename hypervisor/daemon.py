"""pxos-hvd: the daemon. Owns the Hypervisor, the device transports (one vhost-user socket
per VM), the gRPC control API and the Prometheus exporter, and their orderly shutdown.

The vhost-user transport is found through the ``pxos.device_backends`` entry point group,
so this package never imports virtio_backend (arrows point one way:
virtio_backend -> hypervisor).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from importlib.metadata import entry_points

from . import __version__
from . import errors as E
from .config import DEFAULT_CONFIG_TOML, DaemonConfig, VMConfig, load_config
from .core import Hypervisor
from .sockets import resolve_vm_socket, socket_access
from .types import VMInfo

log = logging.getLogger("pxos.daemon")

TRANSPORT_GROUP = "pxos.device_backends"


def load_transport(name: str = "vhost-user"):
    """The transport class registered under ``name`` (virtio_backend's VhostUserTransport)."""
    for ep in entry_points(group=TRANSPORT_GROUP):
        if ep.name == name:
            try:
                return ep.load()
            except Exception as exc:
                raise E.ConfigError(f"device transport {name!r} failed to load ({ep.value}): {exc}") from exc
    raise E.ConfigError(f"no device transport {name!r} is installed (entry point group {TRANSPORT_GROUP})")


class Daemon:
    def __init__(self, config: DaemonConfig, *, hypervisor: Hypervisor | None = None,
                 transport_name: str | None = "vhost-user"):
        self.config = config
        mem = config.memory
        self.compiler = None  # the daemon's compile workers (hypervisor/compiling.py), started by start()
        if hypervisor is None:
            from .compiling import Compiler

            self.compiler = Compiler(**config.scheduler.compiler_options())
            pool = None if mem.device_pool == "auto" else mem.device_pool
            kw = dict(device_pool_bytes=pool, host_budget_bytes=mem.host_budget, prefetch=mem.prefetch,
                      window_seconds=config.scheduler.window_seconds, lookahead_depth=config.scheduler.lookahead,
                      time_slice_s=config.scheduler.time_slice_ms / 1000, compiler=self.compiler,
                      gpu_stepping=config.scheduler.gpu_stepping)
            from .devices import DeviceSet, resolve_device_ids

            ids = resolve_device_ids(config.daemon.backend, config.daemon.devices)
            if ids == [0]:  # one device: the Hypervisor itself, as before [daemon] devices existed
                hypervisor = Hypervisor(backend=config.daemon.backend, **kw)
            else:  # many: one Hypervisor per device, VMs placed and moved (devices.py)
                hypervisor = DeviceSet(config.daemon.backend, ids, **kw)
        self.hv = hypervisor
        from .advisor import Advisor

        self.advisor = Advisor(hypervisor, config.advisor, {v.id: self._vm_bounds(v) for v in config.vm})
        self._transport_name = transport_name
        self.transport = None
        self.domains = None  # DomainHandoffs when [libvirt] handoff_socket is set
        self.grpc = None
        self.metrics = None
        self._lock = threading.RLock()  # reload() holds it across add_vm/remove_vm
        self._stopping = False
        self._stopped = threading.Event()
        self._ready = False  # start() finished: what /readyz reports with the dispatcher's state
        from .state import RuntimeState

        self.state = RuntimeState.load(config.daemon.state_file)  # run-time changes (state.py)
        self._vm_configs: dict[int, VMConfig] = {}  # every registered VM as it is now
        # Mode and group of VM sockets, set on the socket before anyone can reach it.
        self._vm_socket_mode, self._vm_socket_gid = socket_access(config.daemon.vm_socket_group)

    def _vm_bounds(self, vm: VMConfig):
        from .advisor import VMBounds

        lo, hi = vm.share_bounds()
        return VMBounds(lo, hi, vm.description, class_pinned=vm.default_class is not None,
                        cap_min=vm.cap_min, cap_max=vm.cap_max)

    # ---- lifecycle ----
    def start(self, *, grpc: bool = True, metrics: bool = True) -> Daemon:
        if self.compiler is not None:
            self.compiler.start()  # every worker now: the first guest compile does not wait for one
        self.hv.start()
        if self._transport_name and (any(v.socket for v in self.config.vm) or grpc
                                     or self.config.libvirt.handoff_socket):
            try:
                self.transport = load_transport(self._transport_name)(self.hv)
            except E.ConfigError:
                if any(v.socket for v in self.config.vm):
                    raise
                log.warning("no vhost-user transport: VMs can be driven over gRPC only", exc_info=True)
        for m in self.config.model:
            info = self.hv.load_model(m.name, m.path, m.dtype)
            log.info("model %s: %d tensors, %d bytes (%s)", info.name, info.ntensors, info.nbytes, info.dtype)
        vms, notes = self.state.apply(self.config.vm)
        for line in notes:
            log.info("state file: %s", line)
        from_file = {v.id: v for v in self.config.vm}
        for vm in vms:
            if vm is from_file.get(vm.id):
                self._add_vm(vm)
                continue
            try:  # a run-time change that no longer fits (a share now taken): the file's table
                self._add_vm(vm)
            except E.PxosError as exc:
                log.warning("state file: VM %d: cannot apply its run-time change (%s); using the config file", vm.id, exc)
                self.state.forget(vm.id)
                if vm.id in from_file:
                    self._add_vm(from_file[vm.id])
        if self.config.libvirt.handoff_socket:
            if self.transport is None:
                raise E.ConfigError("[libvirt] handoff_socket needs the vhost-user transport, which is not available")
            from .domains import DomainHandoffs

            path = resolve_vm_socket(self.config.libvirt.handoff_socket, self.config.daemon.socket_dir)
            self.domains = DomainHandoffs(self, self.config.libvirt, path, mode=self._vm_socket_mode,
                                          gid=self._vm_socket_gid).start()
        d = self.config.daemon
        if d.rebalance_seconds > 0:
            if hasattr(self.hv, "start_rebalancer"):
                self.hv.start_rebalancer(d.rebalance_seconds, d.rebalance_dwell_seconds)
                log.info("rebalancer: every %g s, dwell %g s", d.rebalance_seconds, d.rebalance_dwell_seconds)
            else:
                log.warning("rebalance_seconds is set but this daemon has one device: nothing to rebalance")
        self.advisor.start()
        if self.config.advisor.mode != "off":
            a = self.config.advisor
            log.info("advisor: %s mode, %s model %s, every %g s", a.mode, a.endpoint, a.model, a.interval_seconds)
        if metrics and self.config.daemon.metrics_address:
            from .metrics import MetricsExporter

            self.metrics = MetricsExporter(self.hv, transport_status=self.transport_status, advisor=self.advisor,
                                           handoff_stats=self.handoff_stats)
            host, port = self.metrics.serve(self.config.daemon.metrics_address, ready=self.readiness)
            log.info("metrics on http://%s:%d/metrics", host, port)
        if grpc:
            from .rpc.server import GrpcServer

            d = self.config.daemon
            tls = None
            if d.grpc_tcp:
                from .rpc.tls import TlsFiles

                tls = TlsFiles(d.tls_cert or "", d.tls_key or "", d.tls_client_ca or "")
            self.grpc = GrpcServer(self)
            self.grpc.start(unix_path=d.grpc_socket, tcp_address=d.grpc_tcp, tls=tls)
            log.info("gRPC on unix:%s%s", d.grpc_socket, f" and {d.grpc_tcp} (mutual TLS)" if d.grpc_tcp else "")
        self._ready = True
        log.info("pxos-hvd up: backend %s (%s), device pool %d bytes, %d VMs",
                 self.hv.executor.name, self.hv.device_info().device_name, self.hv.device_info().pool_bytes,
                 len(self.config.vm))
        return self

    def reload(self, config: DaemonConfig) -> list[str]:
        """Apply a re-read config file (SIGHUP). Only the VMs whose table the file changed
        are touched: added, changed (quota, share, cap, class, advisor bounds) or removed to
        match it, and the file decides them again (their run-time change, if any, is
        dropped from the state file). VMs the file did not change keep what was done at run
        time (`pxosctl vm add/remove`, `quota set`). A change one VM refuses (a quota below
        its usage, a new socket) is logged and that VM keeps what it had; the rest still
        applies. [daemon], [memory], [libvirt] and [[model]] changes need a restart: logged, not
        applied. Returns one line per change or refusal."""
        out: list[str] = []
        with self._lock:
            if self._stopping:
                return ["stopping: reload ignored"]
            old = {v.id: v for v in self.config.vm}
            new = {v.id: v for v in config.vm}
            if config.model_dump(exclude={"vm", "advisor"}) != self.config.model_dump(exclude={"vm", "advisor"}):
                out.append("[daemon]/[memory]/[libvirt]/[[model]] changed: they take effect at the next restart")
            kept = dict(old)
            for vm_id in sorted(set(old) | set(new)):
                if old.get(vm_id) == new.get(vm_id):
                    continue  # the file did not change this VM
                line, applied = self._reload_vm(vm_id, new.get(vm_id))
                out.append(line)
                if applied:
                    self.state.forget(vm_id)
                    if vm_id in new:
                        kept[vm_id] = new[vm_id]
                    else:
                        kept.pop(vm_id, None)
            self.config = self.config.model_copy(update={"vm": [kept[i] for i in sorted(kept)]})
        return out

    def _reload_vm(self, vm_id: int, vm: VMConfig | None) -> tuple[str, bool]:
        """Make VM ``vm_id`` what the file now says (None: not there). (log line, applied)."""
        cur = self._vm_configs.get(vm_id)
        try:
            if vm is None:
                if cur is None:
                    return f"VM {vm_id}: no longer in the file (already removed)", True
                self._remove_vm(vm_id)
                return f"VM {vm_id}: removed (no longer in the file)", True
            if cur is None:
                self._add_vm(vm)
                return f"VM {vm_id}: added", True
            if cur.socket != vm.socket or cur.name != vm.name:
                return (f"VM {vm_id}: a new socket or name needs `pxosctl vm remove` and add (kept as it was)",
                        False)
            moved = ""
            if vm.device is not None and vm.device != self.hv.vm_info(vm_id).device:
                r = self.hv.move_vm(vm_id, vm.device)  # a new pin: the VM moves there (refused: kept)
                moved = f", moved to device {vm.device} (paused {r['pause_seconds']:.3f} s)"
            self.hv.set_quota(vm_id, memory_bytes=vm.memory, share_pct=vm.share, cap_pct=vm.cap,
                              default_class=vm.default_class)
            self.advisor.set_bounds(vm_id, self._vm_bounds(vm))
            self._vm_configs[vm_id] = vm
            return (f"VM {vm_id}: quota {vm.memory} bytes, share {vm.share:g}%"
                    + (f", cap {vm.cap:g}%" if vm.cap else "") + moved, True)
        except E.PxosError as exc:
            verb = "removed" if vm is None else "added" if cur is None else "changed"
            return f"VM {vm_id}: not {verb}, kept as it was: {exc}", False

    def readiness(self) -> tuple[bool, str]:
        """(ready, why) for /readyz: started, not stopping, and the dispatcher running."""
        if self._stopping:
            return False, "stopping"
        if not self._ready:
            return False, "starting"
        if not self.hv.dispatcher.alive():
            return False, "the dispatcher thread is not running"
        return True, "ready"

    def stop(self, grace: float = 5.0) -> None:
        """Graceful: stop taking requests, disconnect guests, cancel queued work, let the
        running launch finish."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
        if self.grpc is not None:
            self.grpc.stop(grace)
        if self.domains is not None:
            self.domains.close()
        if self.transport is not None:
            self.transport.close()
        self.advisor.stop()
        self.hv.stop()
        if self.compiler is not None:
            self.compiler.close()  # no worker outlives the daemon
        if self.metrics is not None:
            self.metrics.stop()
        log.info("pxos-hvd stopped")
        self._stopped.set()  # only now: wait() returning lets the process exit

    def wait(self) -> None:
        self._stopped.wait()

    # ---- VMs (the gRPC service calls these: run-time changes, kept in the state file) ----
    def add_vm(self, vm: VMConfig) -> VMInfo:
        """Register a VM at run time (AddVM); recorded in the state file."""
        with self._lock:
            info = self._add_vm(vm)
            self.state.record(vm.id, self._file_vm(vm.id), vm)
            return info

    def remove_vm(self, vm_id: int) -> None:
        """Remove a VM at run time (UnregisterVM); recorded in the state file."""
        with self._lock:
            self._remove_vm(vm_id)
            self.state.record(vm_id, self._file_vm(vm_id), None)

    def set_quota(self, vm_id: int, **kw) -> VMInfo:
        """Change a VM's quota, share or cap at run time (SetQuota); recorded in the state file."""
        with self._lock:
            info = self.hv.set_quota(vm_id, **kw)
            cur = self._vm_configs.get(vm_id)
            if cur is not None:
                update = {}
                if kw.get("memory_bytes") is not None:
                    update["memory"] = info.memory_quota
                if kw.get("share_pct") is not None:
                    update["share"] = kw["share_pct"]
                if kw.get("cap_pct", False) is not False:
                    update["cap"] = kw["cap_pct"]
                now = cur.model_copy(update=update)
                self._vm_configs[vm_id] = now
                self.state.record(vm_id, self._file_vm(vm_id), now)
            return info

    def move_vm(self, vm_id: int, device: int) -> dict:
        """Move a VM to another device (MoveVM; devices.py). Recorded in the state file as
        its new pin, so a restart puts it back there."""
        with self._lock:
            report = self.hv.move_vm(vm_id, device)
            log.info("VM %d moved from device %d to %d: %d bytes, paused %.3f s (%d launches waited)", vm_id,
                     report["from_device"], device, report["bytes"], report["pause_seconds"],
                     report["launches_waited"])
            cur = self._vm_configs.get(vm_id)
            if cur is not None:
                now = cur.model_copy(update={"device": device})
                self._vm_configs[vm_id] = now
                self.state.record(vm_id, self._file_vm(vm_id), now)
            return report

    def _file_vm(self, vm_id: int) -> VMConfig | None:
        return next((v for v in self.config.vm if v.id == vm_id), None)

    def _add_vm(self, vm: VMConfig) -> VMInfo:
        """Register a VM (config, state file or AddVM). Its socket, if any, must lie inside
        socket_dir (SocketPathRefused otherwise, before anything changes); it is made with
        its final owner and mode (vm_socket_group) before it is reachable."""
        with self._lock:
            socket = resolve_vm_socket(vm.socket, self.config.daemon.socket_dir) if vm.socket else None
            if socket and self.transport is None:
                raise E.ConfigError("VM sockets need the vhost-user transport, which is not available")
            info = self.hv.register_vm(vm.id, 0, vm.share, name=vm.name, cap_percent=vm.cap,
                                       default_class=vm.default_class, socket=socket,
                                       memory_quota_bytes=vm.memory,
                                       **({"device": vm.device} if vm.device is not None else {}))
            self.advisor.set_bounds(vm.id, self._vm_bounds(vm))
            if socket:
                try:
                    self.transport.attach(vm.id, socket, mode=self._vm_socket_mode, gid=self._vm_socket_gid)
                except Exception as exc:
                    self.hv.unregister_vm(vm.id)
                    self.advisor.forget(vm.id)
                    raise E.ConfigError(f"VM {vm.id}: cannot listen on {socket}: {exc}") from exc
            log.info("VM %d (%s) registered: memory %d bytes, share %g%%%s%s", vm.id, info.name,
                     info.memory_quota, vm.share, f", cap {vm.cap:g}%" if vm.cap else "",
                     f", socket {socket}" if socket else "")
            self._vm_configs[vm.id] = vm
            return info

    def _remove_vm(self, vm_id: int) -> None:
        """Unregister a VM and free everything it holds. A guest still connected is not cut
        off (QEMU would leave its requests unanswered): its device answers every request,
        and whatever it had in flight, with PXOS_S_VM_GONE until QEMU disconnects."""
        with self._lock:
            info = self.hv.vm_info(vm_id)
            connected = False
            if (info.socket or info.domain) and self.transport is not None:
                try:  # a libvirt handoff (domain) is retired the same way; it ends when QEMU goes
                    connected = self.transport.retire(vm_id, f"VM {vm_id} was removed from pxos-hvd by the operator")
                except E.NotFound:
                    pass  # a handoff that ended meanwhile
            self.hv.unregister_vm(vm_id)
            self.advisor.forget(vm_id)
            self._vm_configs.pop(vm_id, None)
            log.info("VM %d removed%s", vm_id,
                     "; its connected guest now gets PXOS_S_VM_GONE for every request" if connected else "")

    def handoff_stats(self) -> dict | None:
        """libvirt handoff counters for /metrics; None when handoffs are off."""
        return self.domains.stats() if self.domains is not None else None

    def transport_status(self) -> dict[int, dict]:
        return self.transport.status() if self.transport is not None else {}


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 6), "level": record.levelname.lower(), "logger": record.name,
               "msg": record.getMessage()}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config) if args.config else DaemonConfig()
        overrides = {}
        if args.backend:
            overrides["backend"] = args.backend
        if args.grpc_socket:
            overrides["grpc_socket"] = args.grpc_socket
        if args.metrics_address is not None:
            overrides["metrics_address"] = args.metrics_address or None
        if overrides:
            config = config.model_copy(update={"daemon": config.daemon.model_copy(update=overrides)})
        setup_logging(args.log_level or config.daemon.log_level, args.log_format)
        daemon = Daemon(config)
        daemon.start()
    except E.PxosError as exc:
        print(f"pxos-hvd: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"pxos-hvd: cannot start: {exc}", file=sys.stderr)
        return 1

    def on_signal(signum, _frame):
        log.info("signal %s: shutting down", signal.Signals(signum).name)
        threading.Thread(target=daemon.stop, name="pxos-shutdown", daemon=True).start()

    def reload() -> None:
        if not args.config:
            log.warning("SIGHUP: no --config file to reload; nothing changed")
            return
        try:
            new = load_config(args.config)
        except E.PxosError as exc:
            log.error("SIGHUP: %s is not valid, the running config is kept: %s", args.config, exc)
            return
        except OSError as exc:
            log.error("SIGHUP: cannot read %s, the running config is kept: %s", args.config, exc)
            return
        changes = daemon.reload(new)
        log.info("SIGHUP: reloaded %s: %s", args.config, "; ".join(changes) if changes else "no change")

    def on_hup(_signum, _frame):  # reload, never die: a daemon started from a terminal outlives it
        threading.Thread(target=reload, name="pxos-reload", daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_hup)
    if args.ready_fd is not None:  # tell a supervisor (or a test) we are serving
        os.write(args.ready_fd, b"ready\n")
        os.close(args.ready_fd)
    daemon.wait()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "demo":
        from .demo import main as demo_main

        return demo_main(argv[1:])
    if argv and argv[0] == "install-libvirt":
        from .libvirt import install_main

        return install_main(argv[1:])
    p = argparse.ArgumentParser(prog="pxos-hvd", description="pxOS GPU hypervisor daemon "
                                "(`pxos-hvd demo --help` for the demo, `pxos-hvd install-libvirt --help` "
                                "for libvirt's backend description)")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--config", metavar="FILE", help="TOML config (see --print-default-config)")
    p.add_argument("--print-default-config", action="store_true", help="print a commented default config")
    p.add_argument("--check-config", action="store_true", help="validate --config and exit")
    p.add_argument("--backend", choices=["auto", "numpy", "cupy", "wgpu"])
    p.add_argument("--grpc-socket", metavar="PATH")
    p.add_argument("--metrics-address", metavar="HOST:PORT", help="'' turns the exporter off")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", choices=["text", "json"], default="text")
    p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.print_default_config:
        sys.stdout.write(DEFAULT_CONFIG_TOML)
        return 0
    if args.check_config:
        if not args.config:
            p.error("--check-config needs --config")
        try:
            cfg = load_config(args.config)
        except E.ConfigError as exc:
            print(f"pxos-hvd: {exc}", file=sys.stderr)
            return 2
        from .sockets import missing_socket_dirs

        for vm_id, parent in missing_socket_dirs(cfg):
            print(f"pxos-hvd: {args.config}: vm[id={vm_id}].socket: directory {parent} does not exist "
                  "(pxos-hvd creates socket_dir itself and no directory below it)", file=sys.stderr)
            return 2
        missing = [m.path for m in cfg.model if not os.path.isfile(m.path)]
        if missing:
            print(f"pxos-hvd: {args.config}: model file not found: {', '.join(missing)}", file=sys.stderr)
            return 2
        if cfg.advisor.mode != "off":  # the key must be readable where the daemon will read it
            from .advisor_http import read_api_key

            try:
                read_api_key(cfg.advisor.api_key_file, cfg.advisor.api_key_env)
            except E.ConfigError as exc:
                print(f"pxos-hvd: {args.config}: {exc}", file=sys.stderr)
                return 2
        print(f"{args.config}: ok ({len(cfg.vm)} VMs, {len(cfg.model)} models)")
        return 0
    return _run(args)


if __name__ == "__main__":
    sys.exit(main())
