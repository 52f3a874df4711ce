"""qemu/serve.py's pure parts: the guest's command and the --class specs."""

from __future__ import annotations

import shlex

import pytest

from qemu.errors import LauncherError
from qemu.serve import parse_classes, serve_command


def test_serve_command_runs_pxos_serve_in_the_host_chroot():
    argv = shlex.split(serve_command(wclass="INTERACTIVE", ctx=256))
    assert argv[:2] == ["chroot", "/host"]
    assert argv[argv.index("-m") + 1] == "pxos_serve"
    assert argv[argv.index("--class") + 1] == "INTERACTIVE" and argv[argv.index("--ctx") + 1] == "256"
    first = serve_command(before="echo hi")
    assert first.startswith("echo hi; chroot /host")


def test_class_specs():
    assert parse_classes(["1=interactive", "2=BATCH"]) == {1: "INTERACTIVE", 2: "BATCH"}
    for bad in ("1", "x=BATCH", "1=FAST"):
        with pytest.raises(LauncherError):
            parse_classes([bad])
