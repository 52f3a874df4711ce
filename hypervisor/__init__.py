"""pxos-hvd: the host side of pxOS. ``Hypervisor`` is the API everything else drives."""

from .core import Hypervisor
from .types import (BufferInfo, Completion, DeviceInfo, Event, KernelInfo, LaunchResult, Scalar,
                    SessionCloseResult, VMInfo, VMStats)

__all__ = ["BufferInfo", "Completion", "DeviceInfo", "Event", "Hypervisor", "KernelInfo", "LaunchResult",
           "Scalar", "SessionCloseResult", "VMInfo", "VMStats"]
