"""pxos-hvd: the host side of pxOS. ``Hypervisor`` is the API everything else drives."""

import os as _os

# The NumPy executor charges a launch with its thread's CPU time; BLAS worker threads
# would do work that time does not see (and compete with the vhost-user threads), so
# BLAS runs on the calling thread unless the operator says otherwise. This only takes
# effect if NumPy was not imported earlier in the process.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    _os.environ.setdefault(_var, "1")

from .core import Hypervisor  # noqa: E402 - after the BLAS settings above
from .types import (  # noqa: E402
    BufferInfo,
    Completion,
    DeviceInfo,
    Event,
    KernelInfo,
    LaunchResult,
    Scalar,
    SessionCloseResult,
    VMInfo,
    VMStats,
)

__all__ = ["BufferInfo", "Completion", "DeviceInfo", "Event", "Hypervisor", "KernelInfo", "LaunchResult",
           "Scalar", "SessionCloseResult", "VMInfo", "VMStats"]
