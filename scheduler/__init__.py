"""pxOS scheduler: workload classes, the classifier, weighted fair sharing of measured
device time with hard caps, and the look-ahead the memory prefetcher reads.

Pure Python, no threads, no I/O; knows nothing of virtio or CuPy. docs/scheduling.md
states what a share guarantees, what a cap limits and what a class changes.
"""

from scheduler.classifier import Classifier
from scheduler.errors import (
    DuplicateVM,
    InvalidCharge,
    InvalidCost,
    InvalidShare,
    InvalidTicket,
    QueueFull,
    SchedulerError,
    UnknownVM,
)
from scheduler.fair import CLASS_LAG, MAX_LOOKAHEAD, MAX_QUEUE_DEPTH, WAKEUP_LAG, FairScheduler
from scheduler.stats import SchedulerStats, VMSchedStats
from scheduler.workload import MAX_EST_SECONDS, LaunchCost, Ticket, WorkloadClass

__all__ = [
    "CLASS_LAG",
    "MAX_EST_SECONDS",
    "MAX_LOOKAHEAD",
    "MAX_QUEUE_DEPTH",
    "WAKEUP_LAG",
    "Classifier",
    "DuplicateVM",
    "FairScheduler",
    "InvalidCharge",
    "InvalidCost",
    "InvalidShare",
    "InvalidTicket",
    "LaunchCost",
    "QueueFull",
    "SchedulerError",
    "SchedulerStats",
    "Ticket",
    "UnknownVM",
    "VMSchedStats",
    "WorkloadClass",
]
