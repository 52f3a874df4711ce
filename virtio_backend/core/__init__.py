"""The C virtqueue core (``pxq_core.c``), bound through cffi.

``ffi`` and ``lib`` are the compiled module's; the constants are the header's named caps.
The extension is built by the package's own build (``pip install -e .`` runs
``build_pxq.py`` through ``setup.py``); there are no prebuilt binaries.
"""

from __future__ import annotations

try:
    from virtio_backend.core._pxq_core import ffi, lib
except ImportError as exc:  # pragma: no cover - only on a checkout that was never built
    raise ImportError(
        "the virtqueue core is not built: run `pip install -e .` (scripts/setup.sh does) or "
        "`python virtio_backend/core/build_pxq.py`"
    ) from exc

PXQ_MAX_REGIONS: int = lib.PXQ_MAX_REGIONS
PXQ_MAX_QUEUE_SIZE: int = lib.PXQ_MAX_QUEUE_SIZE
PXQ_MAX_INDIRECT_DESCS: int = lib.PXQ_MAX_INDIRECT_DESCS
PXQ_MAX_SEGMENTS: int = lib.PXQ_MAX_SEGMENTS
PXQ_MAX_CHAIN_BYTES: int = lib.PXQ_MAX_CHAIN_BYTES

__all__ = [
    "PXQ_MAX_CHAIN_BYTES",
    "PXQ_MAX_INDIRECT_DESCS",
    "PXQ_MAX_QUEUE_SIZE",
    "PXQ_MAX_REGIONS",
    "PXQ_MAX_SEGMENTS",
    "ffi",
    "lib",
]
