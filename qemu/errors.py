"""Errors of the launcher: every failure names the step that failed.

qemu/ stands apart from the daemon (design.md: no arrow from qemu/ to hypervisor/), so
its root is its own ``LauncherError`` rather than hypervisor.errors.PxosError: importing
that package would pull the whole daemon (NumPy, the language, the scheduler) into a tool
that only builds images and starts QEMU.
"""

from __future__ import annotations


class LauncherError(Exception):
    """Root of the launcher's errors."""


class GuestImageError(LauncherError):
    """Preparing the guest artefacts failed (apt, unpacking, building the module or tool)."""


class LaunchError(LauncherError):
    """QEMU could not be started, or the guest did not reach the point asked for."""
