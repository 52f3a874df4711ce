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


def make_builder() -> cffi.FFI:
    """The builder; paths are relative to the repository root (setuptools wants them so)."""
    ffi = cffi.FFI()
    ffi.cdef(HEADER.read_text())
    ffi.set_source(
        "virtio_backend.core._pxq_core",
        '#include <stdint.h>\n#include "pxq_core.h"\n',
        sources=["virtio_backend/core/pxq_core.c", "virtio_backend/core/pxq_guard.c"],
        include_dirs=["virtio_backend/core"],
        extra_compile_args=CFLAGS,
    )
    return ffi


ffibuilder = make_builder()

if __name__ == "__main__":
    # Rebuild in place exactly as ``pip install -e .`` does (same module name and suffix,
    # so a stale copy can never shadow a fresh one).
    import subprocess
    import sys

    # Unlink first: the build writes the file in place, and a process that has the old
    # one loaded must keep its own (now unlinked) inode rather than see it truncated.
    for old in HERE.glob("_pxq_core*.so"):
        old.unlink()
    subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=HERE.parent.parent, check=True)
