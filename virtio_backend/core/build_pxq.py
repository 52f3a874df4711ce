"""cffi build script of the virtqueue core: ``setup.py`` names ``ffibuilder`` here, so
``pip install -e .`` compiles ``pxq_core.c`` into ``virtio_backend.core._pxq_core``.

The cdef is the header itself (read at build time), so declarations cannot drift from
the C. Run directly (``python virtio_backend/core/build_pxq.py``) to rebuild in place.
"""

from __future__ import annotations

import pathlib

import cffi

HERE = pathlib.Path(__file__).resolve().parent
HEADER = HERE / "pxq_core.h"
CFLAGS = ["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter"]


def make_builder(root: str = "") -> cffi.FFI:
    """The builder; paths are relative to the repository root (setuptools wants them so)
    unless ``root`` names it."""
    prefix = f"{root}/" if root else ""
    ffi = cffi.FFI()
    ffi.cdef(HEADER.read_text())
    ffi.set_source(
        "virtio_backend.core._pxq_core",
        '#include <stdint.h>\n#include "pxq_core.h"\n',
        sources=[f"{prefix}virtio_backend/core/pxq_core.c"],
        include_dirs=[f"{prefix}virtio_backend/core"],
        extra_compile_args=CFLAGS,
    )
    return ffi


ffibuilder = make_builder()

if __name__ == "__main__":
    import os
    import shutil

    root = HERE.parent.parent
    # Build under build/ (ignored), then put only the extension next to this file. A
    # rename, not a copy over the old file: processes that loaded it keep their inode.
    so = make_builder(str(root)).compile(tmpdir=str(root / "build" / "pxq_core"), verbose=False)
    target = HERE / pathlib.Path(so).name
    shutil.copy2(so, f"{target}.tmp")
    os.replace(f"{target}.tmp", target)
    print(target)
