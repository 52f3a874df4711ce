"""The DRM transport's user-space side against the guest kernel's own uapi header: the
ioctl numbers and struct sizes the Python library (pxos_drm.py) and the tool
(pxos_drm.c) use are those of Debian's include/uapi/drm/virtgpu_drm.h, compiled here with
the C compiler (the header comes with the guest artefacts, hence the qemu marker)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.qemu

GUEST_PY = Path(__file__).resolve().parents[2] / "guest_driver" / "python"
PROBE = r"""
#include <stdio.h>
#include <drm/virtgpu_drm.h>
int main(void)
{
    printf("MAP %lu\nEXECBUFFER %lu\nGETPARAM %lu\nRESOURCE_CREATE %lu\nGET_CAPS %lu\nWAIT %lu\n",
           (unsigned long)DRM_IOCTL_VIRTGPU_MAP, (unsigned long)DRM_IOCTL_VIRTGPU_EXECBUFFER,
           (unsigned long)DRM_IOCTL_VIRTGPU_GETPARAM, (unsigned long)DRM_IOCTL_VIRTGPU_RESOURCE_CREATE,
           (unsigned long)DRM_IOCTL_VIRTGPU_GET_CAPS, (unsigned long)DRM_IOCTL_VIRTGPU_WAIT);
    printf("GEM_CLOSE %lu\nFENCE_FD_OUT %d\n", (unsigned long)DRM_IOCTL_GEM_CLOSE, VIRTGPU_EXECBUF_FENCE_FD_OUT);
    return 0;
}
"""


def test_pxos_drm_matches_the_guest_kernels_virtgpu_uapi(guest_artefacts, tmp_path):
    common = next(guest_artefacts.headers.parent.glob("linux-headers-*-common"))
    uapi = common / "include" / "uapi"
    assert (uapi / "drm" / "virtgpu_drm.h").is_file()
    # The guest kernel's drm/ uapi headers (as installed user-space headers would be);
    # <linux/types.h> and friends from the host's.
    inc = tmp_path / "inc"
    (inc / "drm").mkdir(parents=True)
    for h in (uapi / "drm").glob("*.h"):
        (inc / "drm" / h.name).write_bytes(h.read_bytes())
    uapi = inc
    src = tmp_path / "probe.c"
    src.write_text(PROBE)
    # Kernel-tree headers, not yet sanitized by headers_install: __user means nothing here.
    subprocess.run(["cc", "-D__user=", "-o", str(tmp_path / "probe"), "-I", str(uapi), str(src)], check=True)
    out = subprocess.run([str(tmp_path / "probe")], capture_output=True, text=True, check=True).stdout
    want = {k: int(v) for k, v in (line.split() for line in out.splitlines())}
    sys.path.insert(0, str(GUEST_PY))
    try:
        import pxos_drm as d
    finally:
        sys.path.remove(str(GUEST_PY))
    got = {"MAP": d._MAP, "EXECBUFFER": d._EXECBUFFER, "GETPARAM": d._GETPARAM,
           "RESOURCE_CREATE": d._RESOURCE_CREATE, "GET_CAPS": d._GET_CAPS, "GEM_CLOSE": d._GEM_CLOSE,
           "FENCE_FD_OUT": d._FENCE_FD_OUT}
    assert got == {k: want[k] for k in got}
    # The tool defines the same structs itself (no libdrm in a static busybox guest): its
    # ioctl numbers, computed from its own struct sizes, must be the header's too.
    tool = Path(__file__).resolve().parents[2] / "guest_driver" / "tools"
    check = tmp_path / "tool.c"
    check.write_text('#include "pxos_drm.c"\n#include <drm/virtgpu_drm.h>\n'
                     "_Static_assert(PXD_IOCTL_MAP == DRM_IOCTL_VIRTGPU_MAP, \"map\");\n"
                     "_Static_assert(PXD_IOCTL_EXECBUFFER == DRM_IOCTL_VIRTGPU_EXECBUFFER, \"execbuffer\");\n"
                     "_Static_assert(PXD_IOCTL_RESOURCE_CREATE == DRM_IOCTL_VIRTGPU_RESOURCE_CREATE, \"create\");\n"
                     "_Static_assert(PXD_IOCTL_GET_CAPS == DRM_IOCTL_VIRTGPU_GET_CAPS, \"caps\");\n"
                     "_Static_assert(PXD_IOCTL_WAIT == DRM_IOCTL_VIRTGPU_WAIT, \"wait\");\n"
                     "_Static_assert(PXD_IOCTL_GEM_CLOSE == DRM_IOCTL_GEM_CLOSE, \"gem close\");\n")
    root = Path(__file__).resolve().parents[2] / "guest_driver" / "include" / "uapi"
    subprocess.run(["cc", "-D__user=", "-fsyntax-only", "-I", str(tool), "-I", str(root), "-I", str(uapi), str(check)], check=True)
