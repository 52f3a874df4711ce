"""pxosctl: the operator's command line for pxos-hvd, over gRPC (hypervisor/rpc).

    pxosctl [--socket PATH | --tcp HOST:PORT --tls-cert C --tls-key K --tls-ca CA] [--json] COMMAND ...
      vm list | vm show ID | vm add ID --memory 8G --share 30 [--cap 50] ... | vm remove ID
      quota set VM [--memory 8G [--evict]] [--share 30] [--cap 50 | --no-cap]
      stats | top [--once] | events [--vm ID] [--kind K] | run --vm ID FILE --bind ...
      model add NAME FILE [--dtype float16] | model list | model remove NAME
      advice [--json] | advice accept VM | advice reject VM

Exit codes: 0 ok, 1 the daemon refused or the request failed, 2 usage error, 3 the daemon
could not be reached. Errors are one line on stderr (plus a program's diagnostics, one
per line); never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from . import __version__
from .config import parse_size
from .ctl_format import message_json, pct, print_json, size, table
from .errors import ConfigError
from .rpc import pxos_pb2 as pb
from .rpc.client import Client, default_socket
from .rpc.status import RpcFailure
from .rpc.tls import TlsFiles

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


class UsageError(Exception):
    """A command line that cannot be carried out as written (exit 2)."""


def _size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _vm_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"VM id must be a positive integer, got {text!r}") from None
    if not 0 < value < 2**32:
        raise argparse.ArgumentTypeError(f"VM id must be in 1..{2**32 - 1}, got {value}")
    return value


def _percent(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a percentage, got {text!r}") from None


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints the usage too)
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


_AUTO_SOCKET = object()  # `vm add --socket` with no value


def _socket_name(args) -> str:
    if args.vm_socket is _AUTO_SOCKET:
        return f"vm{args.vm}.sock"  # the daemon resolves a bare name inside its socket_dir
    return args.vm_socket or ""


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print data as JSON (one object; one per line for streams)")
    p = _Parser(prog="pxosctl", description="Control pxos-hvd, the pxOS GPU hypervisor.", parents=[common])
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--socket", metavar="PATH", help=f"daemon's unix socket (default $PXOS_SOCKET or {default_socket()})")
    p.add_argument("--tcp", metavar="HOST:PORT", help="reach the daemon over TCP instead (mutual TLS: --tls-*)")
    tls = p.add_argument_group("TLS (for --tcp; the daemon accepts TCP clients only with mutual TLS)")
    tls.add_argument("--tls-cert", metavar="PEM", default=os.environ.get("PXOS_TLS_CERT"),
                     help="this client's certificate (default $PXOS_TLS_CERT)")
    tls.add_argument("--tls-key", metavar="PEM", default=os.environ.get("PXOS_TLS_KEY"),
                     help="its private key (default $PXOS_TLS_KEY)")
    tls.add_argument("--tls-ca", metavar="PEM", default=os.environ.get("PXOS_TLS_CA"),
                     help="CA certificate that signed the daemon's (default $PXOS_TLS_CA)")
    tls.add_argument("--tls-server-name", metavar="NAME",
                     help="name to check the daemon's certificate against, when not HOST")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per request (default 30)")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    vm = sub.add_parser("vm", help="list, show, add and remove VMs").add_subparsers(dest="vm_command", required=True)
    vm.add_parser("list", parents=[common], help="every registered VM")
    show = vm.add_parser("show", parents=[common], help="one VM: quota, usage, figures")
    show.add_argument("vm", type=_vm_id)
    add = vm.add_parser("add", parents=[common], help="register a VM")
    add.add_argument("vm", type=_vm_id)
    add.add_argument("--memory", type=_size_arg, required=True, help="memory quota, e.g. 8G or 512Mi")
    add.add_argument("--share", type=_percent, required=True, help="compute share, percent")
    add.add_argument("--cap", type=_percent, help="hard cap, percent")
    add.add_argument("--name")
    add.add_argument("--class", dest="wclass", choices=["REALTIME", "INTERACTIVE", "THROUGHPUT", "BATCH"],
                     type=str.upper, help="default workload class")
    add.add_argument("--socket", dest="vm_socket", metavar="PATH", nargs="?", const=_AUTO_SOCKET,
                     help="vhost-user socket for the VM's QEMU, inside the daemon's socket_dir (a bare name "
                          "is placed there); --socket alone makes vm<ID>.sock there; without --socket the VM "
                          "has no socket and is driven over gRPC only")
    add.add_argument("--device", type=int, help="pin to this device (default: placed where most is free)")
    add.add_argument("--domain", metavar="NAME|UUID", help="the libvirt domain this VM serves (its pxos-vhost-gpu "
                                                          "hands the connection over; not with --socket)")
    move = vm.add_parser("move", parents=[common], help="move a VM to another device (a pause, nothing lost)")
    move.add_argument("vm", type=_vm_id)
    move.add_argument("--device", type=int, required=True, help="the target device's id")
    remove = vm.add_parser("remove", parents=[common], help="unregister a VM (frees all it holds)")
    remove.add_argument("vm", type=_vm_id)

    quota = sub.add_parser("quota", help="change a VM's quota at run time").add_subparsers(
        dest="quota_command", required=True)
    qset = quota.add_parser("set", parents=[common], help="memory quota, share, cap")
    qset.add_argument("vm", type=_vm_id)
    qset.add_argument("--memory", type=_size_arg)
    qset.add_argument("--share", type=_percent)
    qset.add_argument("--evict", action="store_true",
                      help="with --memory below what the VM holds: move its buffers to host RAM (overcommit) "
                           "instead of refusing; it allocates nothing new until it fits")
    capg = qset.add_mutually_exclusive_group()
    capg.add_argument("--cap", type=_percent)
    capg.add_argument("--no-cap", action="store_true", help="remove the hard cap")

    from .ctl_advice import add_parser as add_advice_parser
    from .ctl_model import add_parser as add_model_parser

    add_model_parser(sub, common)
    add_advice_parser(sub, common, _vm_id)

    sub.add_parser("stats", parents=[common], help="every VM, the device and the scheduler")
    sub.add_parser("status", parents=[common],
                   help="is the daemon up and answering? one line (exit 0), or why not (exit non-zero)")

    top = sub.add_parser("top", parents=[common], help="live dashboard, refreshed every second")
    top.add_argument("--once", action="store_true", help="print one frame and exit (for scripts, non-ttys)")
    top.add_argument("--interval", type=float, default=1.0, help="seconds between frames")
    top.add_argument("--count", type=int, help="exit after this many frames")

    ev = sub.add_parser("events", parents=[common], help="print the hypervisor's events as they happen")
    ev.add_argument("--vm", type=_vm_id, action="append", default=[], help="only this VM (repeatable)")
    ev.add_argument("--kind", action="append", default=[], help="only this kind (repeatable)")
    ev.add_argument("--count", type=int, help="exit after this many events")

    run = sub.add_parser("run", parents=[common], help="compile and launch a program on a VM's behalf")
    run.add_argument("--vm", type=_vm_id, required=True)
    run.add_argument("file", help="primitive program (.pxp); '-' reads stdin")
    run.add_argument("--kernel", help="which kernel, when the file has several")
    run.add_argument("--bind", action="append", default=[], metavar="NAME=SPEC",
                     help="NAME=random:SHAPE[:DTYPE] | NAME=zeros:SHAPE[:DTYPE] | NAME=FILE.npy | "
                          "NAME=scalar:VALUE (SHAPE like 64x128)")
    run.add_argument("--out", metavar="DIR", help="save every output as DIR/NAME.npy")
    run.add_argument("--class", dest="wclass", type=str.upper,
                     choices=["REALTIME", "INTERACTIVE", "THROUGHPUT", "BATCH"])
    run.add_argument("--priority", type=int)
    run.add_argument("--seed", type=int, default=0, help="seed of random: inputs (default 0)")
    return p


# ---------------------------------------------------------------- commands

def _vm_rows(vms) -> list[list[str]]:
    return [[str(v.vm_id), v.name, size(v.memory_used), size(v.memory_quota), pct(v.share, 0),
             pct(v.cap, 0) if v.HasField("cap") else "-", v.default_class or "auto", v.socket or "-", v.domain or "-",
             str(v.device)] for v in vms]


_VM_HEADERS = ["ID", "NAME", "USED", "QUOTA", "SHARE", "CAP", "CLASS", "SOCKET", "DOMAIN", "DEVICE"]


def cmd_vm(c: Client, args) -> int:
    if args.vm_command == "list":
        resp = c.call("ListVMs", pb.ListVMsRequest())
        if args.json:
            print_json({"vms": [message_json(v) for v in resp.vms]})
        else:
            print(table(_VM_HEADERS, _vm_rows(resp.vms), left=2))
    elif args.vm_command == "show":
        resp = c.call("GetVM", pb.VMRef(vm_id=args.vm))
        if args.json:
            print_json(message_json(resp))
        else:
            _print_vm(resp)
    elif args.vm_command == "add":
        req = pb.RegisterVMRequest(vm_id=args.vm, name=args.name or "", memory_bytes=args.memory, share=args.share,
                                   default_class=args.wclass or "", socket=_socket_name(args),
                                   domain=args.domain or "")
        if args.cap is not None:
            req.cap = args.cap
        if args.device is not None:
            req.device = args.device
        info = c.call("RegisterVM", req)
        _print_info(info, args, f"VM {info.vm_id} ({info.name}) registered")
    elif args.vm_command == "move":
        r = c.call("MoveVM", pb.MoveVMRequest(vm_id=args.vm, device=args.device), timeout=max(args.timeout, 90.0))
        if args.json:
            print_json(message_json(r))
        else:
            print(f"VM {args.vm} moved from device {r.from_device} to device {r.info.device}: paused "
                  f"{1e3 * r.pause_seconds:.1f} ms, {size(r.bytes)} in {r.buffers} buffers "
                  f"({r.mb_per_s:.0f} MB/s{', peer to peer' if r.peer_bytes else ''}), "
                  f"{r.launches_waited} queued launches waited")
    elif args.vm_command == "remove":
        c.call("UnregisterVM", pb.VMRef(vm_id=args.vm))
        if args.json:
            print_json({"vm_id": args.vm, "removed": True})
        else:
            print(f"VM {args.vm} removed")
    return EXIT_OK


def _print_info(info, args, headline: str) -> None:
    if args.json:
        print_json(message_json(info))
    else:
        print(headline)
        print(table(_VM_HEADERS, _vm_rows([info]), left=2))


def _print_vm(resp) -> None:
    i, s = resp.info, resp.stats
    lines = [
        ("VM", f"{i.vm_id} ({i.name})"),
        ("device", str(i.device)),
        ("memory", f"{size(i.memory_used)} used of {size(i.memory_quota)} "
                   f"(device {size(s.memory_device_bytes)}, host {size(s.memory_host_bytes)})"),
        ("share", f"{pct(i.share, 0)} target, {pct(100 * s.achieved_share)} achieved"
                  + (f", cap {pct(i.cap, 0)}" if i.HasField("cap") else "")),
        ("class", i.default_class or "auto (classified per launch)"),
        ("launches", f"{s.launches_total} ({s.launches_failed} failed); queued {s.queue_depth}, "
                     f"in flight {s.inflight}"),
        ("by class", ", ".join(f"{k} {v}" for k, v in sorted(s.launches_by_class.items())) or "-"),
        ("device time", f"{s.device_seconds_total:.3f} s"),
        ("latency", f"p50 {s.latency_p50_ms:.3f} ms, p99 {s.latency_p99_ms:.3f} ms"),
        ("switches in", str(s.vm_switches_in)),
        ("buffers", f"{s.buffers}; kernels {s.kernels}; idle {'yes' if s.idle else 'no'}"),
        ("socket", i.socket or "-"),
        ("domain", i.domain or "-"),
    ]
    if s.transport.present:
        t = s.transport
        lines.append(("transport", f"{'connected' if t.connected else 'not connected'}, {t.requests} requests, "
                                   f"{t.errors} errors, features {t.features:#x}"))
    lines += [(k, f"{v:g}") for k, v in sorted(s.extra.items())]
    width = max(len(k) for k, _ in lines)
    for k, v in lines:
        print(f"{k.ljust(width)}  {v}")


def cmd_quota(c: Client, args) -> int:
    req = pb.SetQuotaRequest(vm_id=args.vm)
    if args.memory is not None:
        req.memory_bytes = args.memory
    if args.share is not None:
        req.share = args.share
    if args.cap is not None:
        req.cap = args.cap
    elif args.no_cap:
        req.remove_cap = True
    if args.memory is None and args.share is None and args.cap is None and not args.no_cap:
        raise UsageError("quota set needs at least one of --memory, --share, --cap, --no-cap")
    if args.evict:
        if args.memory is None:
            raise UsageError("--evict goes with --memory (a memory quota cut)")
        req.evict = True
    info = c.call("SetQuota", req)
    note = ""
    if args.evict and info.memory_used > info.memory_quota:
        note = (f"; its buffers went to host RAM and it allocates nothing new until it holds less than "
                f"{size(info.memory_quota)} (holds {size(info.memory_used)})")
    _print_info(info, args, f"VM {info.vm_id} quota set{note}")
    return EXIT_OK


def cmd_stats(c: Client, args) -> int:
    resp = c.call("Stats", pb.StatsRequest())
    if args.json:
        print_json(message_json(resp))
        return EXIT_OK
    d, s = resp.device, resp.scheduler
    print(f"device   {d.backend} ({d.device_name}): pool {size(d.pool_used)} of {size(d.pool_bytes)}, "
          f"host {size(d.host_used)} of {size(d.host_budget)}")
    if d.api or d.vendor or d.time_source:
        print(f"adapter  {d.device_name}: vendor {d.vendor or '-'}, api {d.api or '-'}, "
              f"device time from {d.time_source or '-'}")
    print(f"sched    busy {s.busy_seconds:.3f} s, {s.launches} launches, {s.vm_switches} VM switches "
          f"(p50 {1e6 * s.switch_p50_seconds:.1f} us, p99 {1e6 * s.switch_p99_seconds:.1f} us), "
          f"look-ahead {len(s.lookahead)}/{s.lookahead_depth}")
    if len(resp.devices) > 1:
        for u in resp.devices:
            print(f"device {u.id}  {u.device_name}: {u.vms} VMs, shares {pct(u.share_used, 0)}, busy "
                  f"{pct(100 * u.utilisation)}, pool {size(u.pool_used)} of {size(u.pool_bytes)}, "
                  f"{u.launches} launches, {u.queue_depth} queued")
    rows = [[str(v.vm_id), v.name, pct(v.share, 0), pct(100 * v.achieved_share), size(v.memory_used),
             size(v.memory_quota), str(v.queue_depth), str(v.launches_total), str(v.launches_failed),
             f"{v.device_seconds_total:.3f}", f"{v.latency_p50_ms:.3f}", f"{v.latency_p99_ms:.3f}",
             str(v.vm_switches_in), str(v.device)] for v in resp.vms]
    print(table(["ID", "NAME", "SHARE", "ACHIEVED", "USED", "QUOTA", "QUEUE", "LAUNCHES", "FAILED",
                 "DEVICE_S", "P50_MS", "P99_MS", "SWITCHES", "DEV"], rows, left=2))
    return EXIT_OK


def cmd_status(c: Client, args) -> int:
    """One round trip (Stats): the daemon answers, with its backend, VMs and pool use."""
    resp = c.call("Stats", pb.StatsRequest())
    d = resp.device
    if args.json:
        print_json({"ok": True, "pxosctl_version": __version__, "backend": d.backend, "device_name": d.device_name,
                    "vms": len(resp.vms), "pool_used": d.pool_used, "pool_bytes": d.pool_bytes,
                    "launches": resp.scheduler.launches})
    else:
        print(f"pxos-hvd up: backend {d.backend} ({d.device_name}), {len(resp.vms)} VMs, "
              f"pool {size(d.pool_used)} of {size(d.pool_bytes)}, {resp.scheduler.launches} launches")
    return EXIT_OK


def cmd_events(c: Client, args) -> int:
    import json

    seen = 0
    for ev in c.watch_events(args.vm, args.kind):
        if args.json:
            out = message_json(ev)
            out["detail"] = json.loads(out.pop("detail_json") or "{}")
            print_json(out)
        else:
            stamp = time.strftime("%H:%M:%S", time.localtime(ev.time)) + f".{int(ev.time * 1000) % 1000:03d}"
            vm = f" vm={ev.vm_id}" if ev.HasField("vm_id") else ""
            detail = " ".join(f"{k}={v}" for k, v in json.loads(ev.detail_json or "{}").items())
            dropped = f" (dropped {ev.dropped})" if ev.dropped else ""
            print(f"{stamp} {ev.kind}{vm} {detail}{dropped}".rstrip(), flush=True)
        seen += 1
        if args.count is not None and seen >= args.count:
            break
    return EXIT_OK


def _commands():
    from .ctl_advice import cmd_advice
    from .ctl_model import cmd_model
    from .ctl_run import cmd_run
    from .ctl_top import cmd_top

    return {"vm": cmd_vm, "quota": cmd_quota, "stats": cmd_stats, "status": cmd_status, "events": cmd_events, "run": cmd_run,
            "top": cmd_top, "model": cmd_model,
            "advice": cmd_advice}


def _client(args) -> Client:
    if not args.tcp:
        return Client(socket_path=args.socket, timeout=args.timeout)
    missing = [f"--{n}" for n in ("tls-cert", "tls-key", "tls-ca") if not getattr(args, n.replace("-", "_"))]
    if missing:
        raise UsageError(f"--tcp needs {', '.join(missing)} (or $PXOS_TLS_CERT, $PXOS_TLS_KEY, $PXOS_TLS_CA): "
                         "pxos-hvd accepts TCP clients only with mutual TLS")
    try:
        return Client(tcp=args.tcp, timeout=args.timeout, tls=TlsFiles(args.tls_cert, args.tls_key, args.tls_ca),
                      server_name=args.tls_server_name)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help exits 0, errors 2; main() returns instead of exiting
        return int(exc.code or 0)
    args.json = getattr(args, "json", False)
    if args.socket and args.tcp:
        parser.print_usage(sys.stderr)
        print("pxosctl: error: give --socket or --tcp, not both", file=sys.stderr)
        return EXIT_USAGE
    try:
        client = _client(args)
    except UsageError as exc:
        print(f"pxosctl: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return _commands()[args.command](client, args)
    except UsageError as exc:
        if args.json:
            print_json({"error": {"code": "USAGE", "message": str(exc)}})
        print(f"pxosctl: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RpcFailure as exc:
        if args.json:  # a script reading --json gets the error as JSON on stdout too
            print_json({"error": {"code": exc.code, "status": exc.status, "type": exc.error_type,
                                  "message": exc.message, "unreachable": exc.unreachable,
                                  "diagnostics": [{"line": d.line, "column": d.column, "code": d.code,
                                                   "message": d.message} for d in exc.diagnostics]}})
        print(f"pxosctl: error: {exc}", file=sys.stderr)
        for d in exc.diagnostics:
            print(f"  {d.line}:{d.column}: error[{d.code}]: {d.message}", file=sys.stderr)
        return EXIT_UNREACHABLE if exc.unreachable else EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:  # `pxosctl events | head`
        sys.stderr.close()
        return EXIT_OK
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
