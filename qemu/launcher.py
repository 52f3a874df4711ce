"""`pxos-vm`: prepare guest artefacts and run a pxOS guest under QEMU.

    pxos-vm prepare [--cache DIR] [--json]
    pxos-vm run --socket PATH [--accel auto|kvm|tcg] [--cmd "pxos selftest"] [--mem 256M]
                [--file GUEST_PATH=HOST_PATH ...] [--host-share DIR] [--timeout S] [--log FILE]
                [--bzimage]
    pxos-vm cmdline --socket PATH [...]      # print the QEMU command line, start nothing
    pxos-vm demo [--workload llm|matmul] [--duration S] [--json]   # three guests sharing the device
    pxos-vm generate --prompt TEXT [--max-tokens N] [--json] [--hvd-socket PATH --vm ID]
    pxos-vm serve [--vms N | --hvd-socket PATH --vm ID ...] [--class VM=CLASS] [--subnet NET]
    pxos-vm run --net ...                    # the guest on a virtio-net link (qemu/network.py)

With --cmd the guest runs the command, powers off, and pxos-vm exits with the command's
status (124 if it did not finish in --timeout). Without it the guest's shell is on the
terminal (Ctrl-A X quits QEMU).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from pathlib import Path

from . import artefacts as art
from . import initramfs
from .cmdline import VmSpec, choose_accel, parse_mem, qemu_argv
from .errors import LauncherError
from .guest import Guest
from .network import DEFAULT_SUBNET, GuestNetwork

EXIT_TIMEOUT = 124


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pxos-vm", description="pxOS guests under QEMU")
    sub = p.add_subparsers(dest="command", required=True)

    prep = sub.add_parser("prepare", help="fetch the kernel, build the module, tool and initramfs")
    prep.add_argument("--cache", type=Path, help="cache directory (default $PXOS_CACHE or ~/.cache/pxos/guest)")
    prep.add_argument("--json", action="store_true", help="print the artefact paths as JSON")

    for name, text in (("run", "boot a guest"), ("cmdline", "print the QEMU command line")):
        r = sub.add_parser(name, help=text)
        r.add_argument("--socket", type=Path, help="pxos-hvd's vhost-user socket for this VM")
        r.add_argument("--accel", default="auto", help="kvm, tcg or auto (KVM when usable; default)")
        r.add_argument("--cmd", help='command to run in the guest, e.g. "pxos selftest"')
        r.add_argument("--mem", default="256M", help="guest RAM (default 256M)")
        r.add_argument("--cache", type=Path)
        r.add_argument("--file", action="append", default=[], metavar="GUEST_PATH=HOST_PATH",
                       help="copy a host file into the guest (e.g. a .pxp program)")
        r.add_argument("--name", default="pxos-guest")
        r.add_argument("--host-share", type=Path, metavar="DIR",
                       help="share a host directory read-only; the guest mounts it at /host")
        r.add_argument("--bzimage", action="store_true", help="boot the compressed bzImage, not vmlinux")
        r.add_argument("--driver", choices=initramfs.DRIVERS, default="module",
                       help="what binds the guest's virtio-gpu: module (pxos_gpu.ko, /dev/pxos0; default) or "
                            "stock (the kernel's own virtio_gpu, /dev/dri/renderD128: the DRM transport)")
        if name == "run":
            r.add_argument("--timeout", type=float, default=600.0, help="seconds for --cmd (default 600)")
            r.add_argument("--log", type=Path, help="append the raw console here")
            r.add_argument("--quiet", action="store_true", help="do not echo the console")
            r.add_argument("--net", action="store_true",
                           help="a virtio-net link on a bridge in a network namespace of pxOS's own")
            r.add_argument("--subnet", default=DEFAULT_SUBNET, help=f"with --net (default {DEFAULT_SUBNET})")
    demo = sub.add_parser("demo", help="pxos-hvd and three guests sharing the device, live")
    demo.add_argument("--workload", choices=["llm", "matmul"], default="llm",
                      help="llm: three VMs generate text from one shared model (default); matmul: synthetic load")
    demo.add_argument("--duration", type=int, default=0,
                      help="seconds of load while all guests are busy (default 60 for llm, 20 for matmul)")
    demo.add_argument("--size", type=int, default=384,
                      help="matmul size (default 384: about a millisecond per launch, so each guest keeps the device busy)")
    demo.add_argument("--accel", default="auto")
    demo.add_argument("--json", action="store_true", help="one JSON summary instead of live lines")
    demo.add_argument("--serve", action="store_true",
                      help="the guests serve completions over their network; a load generator drives them")
    srv = sub.add_parser("serve", help="guests answering OpenAI-compatible /v1/completions on their network")
    srv.add_argument("--vms", type=int, default=2, help="VMs of a pxos-hvd started here (default 2)")
    srv.add_argument("--shares", help="their compute shares, e.g. 50,30,20 (default equal)")
    srv.add_argument("--hvd-socket", type=Path, help="a running pxos-hvd's gRPC socket instead")
    srv.add_argument("--vm", type=int, action="append", default=[], help="with --hvd-socket: a VM to serve from")
    srv.add_argument("--class", dest="classes", action="append", default=[], metavar="VM=CLASS",
                     help="the workload class a VM's server asks for (INTERACTIVE, BATCH, ...)")
    srv.add_argument("--subnet", default=DEFAULT_SUBNET, help=f"the guests' subnet (default {DEFAULT_SUBNET})")
    srv.add_argument("--duration", type=float, default=0, help="seconds to serve (default: until Ctrl-C)")
    srv.add_argument("--accel", default="auto")
    srv.add_argument("--json", action="store_true", help="one JSON line (namespace, URLs) once all serve")
    gen = sub.add_parser("generate", help="generate text with a shared model from inside a guest")
    gen.add_argument("--prompt", action="append", required=True, help="repeatable: one generation each")
    gen.add_argument("--max-tokens", type=int, default=32)
    gen.add_argument("--json", action="store_true", help="one JSON object (prompt_tokens, tokens, text, ttft_s, "
                                                          "tokens_per_s, ...)")
    gen.add_argument("--hvd-socket", type=Path, help="a running pxos-hvd's gRPC socket (else one is started "
                                                      "with the default model)")
    gen.add_argument("--vm", type=int, help="with --hvd-socket: which of its VMs the guest is")
    gen.add_argument("--model", default="smollm2", help="the shared model's name (with --hvd-socket)")
    gen.add_argument("--ctx", type=int, default=0, help="KV cache positions (default: what the prompt needs)")
    gen.add_argument("--accel", default="auto")
    gen.add_argument("--timeout", type=float, default=900.0)
    return p


def cmd_generate(args) -> int:
    from .generate import run_generate

    if args.max_tokens < 1:
        raise LauncherError("--max-tokens must be at least 1")
    return run_generate(args.prompt, args.max_tokens, as_json=args.json, hvd_socket=args.hvd_socket, vm=args.vm,
                        model=args.model, accel=args.accel, timeout=args.timeout, ctx=args.ctx)


def cmd_serve(args) -> int:
    from .serve import parse_classes, run_serve

    try:
        shares = [float(x) for x in args.shares.split(",")] if args.shares else None
    except ValueError as e:
        raise LauncherError(f"--shares {args.shares!r}: want numbers like 50,30,20") from e
    return run_serve(vms=args.vms, hvd_socket=args.hvd_socket, vm_ids=args.vm, classes=parse_classes(args.classes),
                     subnet=args.subnet, accel=args.accel, duration=args.duration, as_json=args.json,
                     shares=shares)


def cmd_demo(args) -> int:
    if args.serve:
        from .demo_serve import run_serve_demo

        return run_serve_demo(duration=args.duration or 60, accel=args.accel, as_json=args.json)
    if args.workload == "matmul":
        from .demo import run_demo

        return run_demo(duration=args.duration or 20, size=args.size, accel=args.accel, as_json=args.json)
    from .demo_llm import run_llm_demo

    return run_llm_demo(duration=args.duration or 60, accel=args.accel, as_json=args.json)


def _files(specs: list[str]) -> dict[str, bytes]:
    out = {}
    for spec in specs:
        guest, sep, host = spec.partition("=")
        if not sep or not guest.startswith("/"):
            raise LauncherError(f"--file {spec!r}: want /guest/path=host/path")
        try:
            out[guest] = Path(host).read_bytes()
        except OSError as e:
            raise LauncherError(f"--file {spec!r}: {e.strerror}") from e
    return out


def _artefacts(args) -> art.GuestArtefacts:
    a = art.prepare(args.cache, log=lambda s: print(f"pxos-vm: {s}", file=sys.stderr))
    if getattr(args, "bzimage", False):
        from dataclasses import replace

        a = replace(a, vmlinux=a.bzimage)
    return a


def _check_socket(path: Path | None) -> None:
    if path is not None and not path.is_socket():
        raise LauncherError(f"--socket {path}: no socket there (is pxos-hvd running with this VM?)")


def cmd_prepare(args) -> int:
    a = _artefacts(args)
    if args.json:
        print(json.dumps(a.to_json(), indent=1))
    else:
        print(f"kernel {a.release}: {a.vmlinux}\ninitramfs: {a.initramfs}\nmodule: {a.module}\ntool: {a.tool}")
    return 0


def cmd_cmdline(args) -> int:
    a = _artefacts(args)
    spec = VmSpec(kernel=a.vmlinux, initrd=a.initramfs, socket=args.socket, mem_mib=parse_mem(args.mem),
                  accel=choose_accel(args.accel), name=args.name, interactive=args.cmd is None,
                  host_share=args.host_share, driver=args.driver)
    print(shlex.join(qemu_argv(spec)))
    return 0


def cmd_run(args) -> int:
    _check_socket(args.socket)
    a = _artefacts(args)
    accel = choose_accel(args.accel)
    mem = parse_mem(args.mem)
    files = _files(args.file)
    if args.net:
        with GuestNetwork(args.subnet, tag="run") as net:
            link = net.add_guest(1)
            print(f"pxos-vm: guest at {link.address} on {net.name} (host side {net.host_address}; "
                  f"ip netns exec {net.name} ...)", file=sys.stderr)
            return _run_guest(args, a, accel, mem, files, net, link)
    return _run_guest(args, a, accel, mem, files, None, None)


def _run_guest(args, a, accel, mem, files, net, link) -> int:
    if args.cmd is None:
        with tempfile.TemporaryDirectory(prefix="pxos-vm-") as tmp:
            initrd = initramfs.write_run_initrd(a.initramfs, Path(tmp) / "initrd.gz", None, files,
                                                hostfs=args.host_share is not None, net=link.cidr if link else None,
                                                driver=args.driver)
            spec = VmSpec(kernel=a.vmlinux, initrd=initrd, socket=args.socket, mem_mib=mem, accel=accel,
                          name=args.name, interactive=True, host_share=args.host_share,
                          tap=link.tap if link else None, mac=link.mac if link else None, driver=args.driver)
            argv = qemu_argv(spec)
            # QEMU reads the initrd at start-up; keep the directory until it exits.
            import subprocess

            if net is not None:
                return net.popen(argv).wait()
            return subprocess.call(argv)
    with Guest(a, args.socket, args.cmd, mem_mib=mem, accel=accel, files=files, name=args.name,
               log_path=args.log, echo=not args.quiet, host_share=args.host_share, network=net,
               link=link, driver=args.driver) as guest:
        result = guest.wait(args.timeout)
    if result.exit_status is None:
        if result.total_s < args.timeout:
            tail = "\n".join(result.console.splitlines()[-10:])
            print(f"pxos-vm: QEMU exited {result.qemu_returncode} before the guest command finished:\n{tail}",
                  file=sys.stderr)
            return 1
        print(f"pxos-vm: the guest command did not finish in {args.timeout:.0f} s", file=sys.stderr)
        return EXIT_TIMEOUT
    print(f"pxos-vm: guest command exited {result.exit_status}; boot {result.boot_s or 0:.2f} s, "
          f"command {result.run_s or 0:.2f} s ({accel})", file=sys.stderr)
    return result.exit_status


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        commands = {"prepare": cmd_prepare, "run": cmd_run, "cmdline": cmd_cmdline, "demo": cmd_demo,
                    "generate": cmd_generate, "serve": cmd_serve}
        return commands[args.command](args)
    except LauncherError as e:
        print(f"pxos-vm: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
