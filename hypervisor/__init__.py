"""pxos-hvd: the host side of pxOS. ``Hypervisor`` is the API everything else drives.

The names below are imported on first use, so that ``import hypervisor.errors`` (what
virtio_backend needs to raise the right errors) does not pull in NumPy, the language
and the scheduler.
"""

import os as _os


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("pxos")
    except metadata.PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


__version__ = _version()

# The NumPy executor charges a launch with its thread's CPU time; BLAS worker threads
# would do work that time does not see (and compete with the vhost-user threads), so
# BLAS runs on the calling thread unless the operator says otherwise. This only takes
# effect if NumPy was not imported earlier in the process.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    _os.environ.setdefault(_var, "1")

_LAZY = {
    "Hypervisor": ".core",
    **{name: ".types" for name in ("BufferInfo", "Completion", "DeviceInfo", "Event", "KernelInfo",
                                   "LaunchResult", "Scalar", "SessionCloseResult", "VMInfo", "VMStats")},
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hypervisor' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(module, __name__), name)
    globals()[name] = value
    return value
