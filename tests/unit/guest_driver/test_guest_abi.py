"""The ioctl half of pxos_gpu.h: it compiles on its own, has no implicit padding, and the
guest Python library's ctypes mirror has the C compiler's sizes, offsets and numbers."""

from __future__ import annotations

import ctypes
import subprocess

import pytest


@pytest.fixture(scope="module")
def uapi():
    from pathlib import Path

    return Path(__file__).resolve().parents[3] / "guest_driver" / "include" / "uapi"


STRUCTS = {
    "pxos_ioc_result": "Result", "pxos_ioc_info": "IocInfo", "pxos_ioc_alloc": "IocAlloc",
    "pxos_ioc_free": "IocFree", "pxos_ioc_transfer": "IocTransfer", "pxos_ioc_compile": "IocCompile",
    "pxos_ioc_kernel_info": "IocKernelInfo", "pxos_ioc_kernel_free": "IocKernelFree",
    "pxos_ioc_launch": "IocLaunch", "pxos_ioc_reap": "IocReap", "pxos_ioc_stats": "IocStats",
    "pxos_ioc_idle_hint": "IocIdleHint", "pxos_binding": "Binding", "pxos_param_desc": "ParamDesc",
    "pxos_diag": "Diag", "pxos_kernel_desc": "KernelDesc", "pxos_ioc_model_open": "IocModelOpen",
    "pxos_ioc_model_close": "IocModelClose",
}
IOCTLS = ["INFO", "ALLOC", "FREE", "WRITE", "READ", "COMPILE", "KERNEL_INFO", "KERNEL_FREE", "LAUNCH",
          "SUBMIT", "REAP", "STATS", "IDLE_HINT", "MODEL_OPEN", "MODEL_CLOSE"]


def _c_layout(gcc, tmp_path, pxos_guest, UAPI) -> dict[str, int]:
    lines = []
    for cname, pyname in STRUCTS.items():
        lines.append(f'printf("size {pyname} %zu\\n", sizeof(struct {cname}));')
        for field, _ in getattr(pxos_guest, pyname)._fields_:
            lines.append(f'printf("off {pyname}.{field} %zu\\n", offsetof(struct {cname}, {field}));')
    for name in IOCTLS:
        lines.append(f'printf("ioctl {name} %lu\\n", (unsigned long)PXOS_IOC_{name});')
    src = tmp_path / "layout.c"
    src.write_text("#include <stdio.h>\n#include <stddef.h>\n#include <sys/ioctl.h>\n#include \"pxos_gpu.h\"\n"
                   "int main(void) {\n" + "\n".join(lines) + "\nreturn 0;\n}\n")
    exe = tmp_path / "layout"
    subprocess.run([gcc, "-std=c11", "-Wall", "-Werror", f"-I{UAPI}", str(src), "-o", str(exe)], check=True)
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    return {k: int(v) for k, v in (line.rsplit(" ", 1) for line in out.splitlines())}


def test_ctypes_mirror_matches_the_c_compiler(gcc, tmp_path, pxos_guest, uapi):
    c = _c_layout(gcc, tmp_path, pxos_guest, uapi)
    for pyname in STRUCTS.values():
        st = getattr(pxos_guest, pyname)
        assert ctypes.sizeof(st) == c[f"size {pyname}"], pyname
        for field, _ in st._fields_:
            assert getattr(st, field).offset == c[f"off {pyname}.{field}"], f"{pyname}.{field}"
    for name in IOCTLS:
        assert pxos_guest.IOCTLS[name] == c[f"ioctl {name}"], name


def test_ioctl_structs_have_no_implicit_padding(gcc, tmp_path, uapi):
    UAPI = uapi
    src = tmp_path / "pad.c"
    src.write_text('#include "pxos_gpu.h"\nint main(void) { return 0; }\n')
    proc = subprocess.run([gcc, "-std=c11", "-Wpadded", "-fsyntax-only", f"-I{UAPI}", str(src)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    padded = [line for line in proc.stderr.splitlines() if "pxos_ioc" in line]
    assert padded == []


@pytest.mark.parametrize("std", ["c11", "gnu11", "c99"])
def test_header_compiles_alone(gcc, tmp_path, std, uapi):
    UAPI = uapi
    src = tmp_path / "alone.c"
    src.write_text('#include "pxos_gpu.h"\nint main(void) { return PXOS_IOCTL_VERSION - 1; }\n')
    proc = subprocess.run([gcc, f"-std={std}", "-Wall", "-Wextra", "-Werror", f"-I{UAPI}", str(src),
                           "-o", str(tmp_path / "a.out")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_ioctl_numbers_are_distinct_and_read_write(pxos_guest):
    nums = list(pxos_guest.IOCTLS.values())
    assert len(set(nums)) == len(nums)
    for n in nums:
        assert n >> 30 == 3                      # _IOC_READ | _IOC_WRITE
        assert (n >> 8) & 0xFF == pxos_guest.IOC_MAGIC
        assert (n >> 16) & 0x3FFF < 16384        # the size fits _IOC_SIZEBITS
