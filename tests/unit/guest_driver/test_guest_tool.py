"""The static `pxos` tool: it builds without warnings, links statically (it must run in a
busybox initramfs), and reports a missing or foreign device clearly."""

from __future__ import annotations

import re
import struct
import subprocess

PT_INTERP = 3


def run(tool, *args, env=None):
    return subprocess.run([str(tool), *args], capture_output=True, text=True, env=env, timeout=30)


def test_tool_is_static(pxos_tool):
    elf = pxos_tool.read_bytes()
    assert elf[:4] == b"\x7fELF" and elf[4] == 2  # ELF64
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    types = [struct.unpack_from("<I", elf, phoff + i * phentsize)[0] for i in range(phnum)]
    assert PT_INTERP not in types  # no program interpreter: nothing to find in the initramfs


def test_usage_lists_every_command(pxos_tool):
    proc = run(pxos_tool)
    assert proc.returncode == 2
    for cmd in ("info", "compile", "run", "stats", "idle", "selftest", "workload", "bench", "load", "--bind"):
        assert cmd in proc.stderr


def test_missing_device_is_reported(pxos_tool):
    proc = run(pxos_tool, "info", env={"PXOS_DEVICE": "/nonexistent/pxos9"})
    assert proc.returncode == 1
    assert "/nonexistent/pxos9: No such file or directory" in proc.stderr


def test_foreign_device_is_reported(pxos_tool):
    proc = run(pxos_tool, "selftest", env={"PXOS_DEVICE": "/dev/null"})
    assert proc.returncode == 1
    assert "Inappropriate ioctl" in proc.stderr
    assert re.search(r"^selftest: 0/\d+ passed", proc.stdout, re.M)


def test_bad_bind_is_a_usage_error(pxos_tool, tmp_path):
    prog = tmp_path / "p.pxp"
    prog.write_text("GPU_KERNEL k\nGPU_END\n")
    # /dev/zero opens fine; the --bind is refused before anything reaches the device.
    proc = run(pxos_tool, "run", str(prog), "--bind", "x=float[2,2]:1,2,3",
               env={"PXOS_DEVICE": "/dev/zero"})
    assert proc.returncode == 2
    assert "3 values for 4 elements" in proc.stderr
