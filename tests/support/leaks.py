"""Leak probes: open fds and shared guest-memory mappings of this process."""

from __future__ import annotations

import gc
import os


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def memfd_mappings(name: str = "memfd:") -> int:
    """Mappings of memfd files (guest RAM as both sides of a test map it)."""
    with open("/proc/self/maps") as f:
        return sum(1 for line in f if name in line)


def settle() -> None:
    gc.collect()
