"""The scheduler's errors: every one is a ``SchedulerError``, itself a ``ValueError``.

The scheduler does not import the hypervisor (arrows point one way), so it has its own
small hierarchy; the hypervisor maps these onto ``ConfigError`` / ``InvalidArgument`` /
``NotFound`` at its boundary. Raising one of these always leaves the scheduler unchanged.
"""

from __future__ import annotations


class SchedulerError(ValueError):
    """Root of the scheduler's errors."""


class InvalidShare(SchedulerError):
    """A compute share or cap out of range, or shares that would sum to more than 100 %."""


class UnknownVM(SchedulerError):
    """A VM id the scheduler has no record of."""


class DuplicateVM(SchedulerError):
    """``add_vm`` for a VM id that is already registered."""


class InvalidTicket(SchedulerError):
    """A ticket that cannot be queued: wrong types, out-of-range fields, a launch id that
    does not increase within its VM."""


class QueueFull(SchedulerError):
    """A VM already has the maximum number of queued launches."""


class InvalidCost(SchedulerError):
    """A launch cost with negative or non-integer fields."""


class InvalidCharge(SchedulerError):
    """A measured device time that is negative, not finite, or ends before it starts."""
