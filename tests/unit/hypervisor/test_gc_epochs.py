"""GcEpochs (hypervisor/compiling.py; docs/scheduling.md "Compiles", item 8) with the real
collector: cyclic garbage frozen by a compile's ``settle()`` waits for the end of the epoch
and no longer; garbage that was never frozen is collected as ever; the epoch ends on time
with no compile after it (the thread), and nothing stays frozen past ``close()``."""

from __future__ import annotations

import gc
import time
import weakref

import pytest

from hypervisor.compiling import Compiler, GcEpochs
from tests.unit.hypervisor.test_compile_pool import big_source


class Node:
    def __init__(self) -> None:
        self.other = self  # a cycle: only the cyclic collector reclaims it


def _cycle() -> weakref.ref:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


@pytest.fixture
def unfrozen():
    gc.collect()
    yield
    gc.unfreeze()  # whatever a test left frozen goes back to the collector


def test_cyclic_garbage_frozen_by_a_compile_is_reclaimed_at_the_end_of_the_epoch(unfrozen):
    now = [0.0]
    g = GcEpochs(60.0, clock=lambda: now[0], background=False)
    frozen = _cycle()  # alive when the compile settles: frozen with the heap
    g.settle()
    assert g.frozen and gc.get_freeze_count() > 0
    gc.collect()  # becomes garbage right after the freeze (nothing references it)
    assert frozen() is not None  # the price: a full collection skips it
    fresh = _cycle()  # made after the freeze: an ordinary young object
    gc.collect()
    assert fresh() is None  # never frozen: collected as ever
    now[0] = 59.9
    assert not g.tick() and frozen() is not None
    now[0] = 60.0  # one epoch after the freeze
    assert g.tick()
    assert frozen() is None and not g.frozen and gc.get_freeze_count() == 0 and g.epochs == 1


def test_later_compiles_in_the_epoch_do_not_extend_it(unfrozen):
    now = [0.0]
    g = GcEpochs(60.0, clock=lambda: now[0], background=False)
    g.settle()
    first = _cycle()
    now[0] = 30.0
    g.settle()  # a second program: the heap is frozen again, the first garbage with it
    gc.collect()
    assert first() is not None
    now[0] = 60.0  # one epoch after the first freeze, not after the last
    g.settle()  # a compile ends the epoch too, then freezes anew
    assert first() is None and g.epochs == 1 and g.frozen


def test_the_epoch_ends_with_no_compile_after_it(unfrozen):
    g = GcEpochs(0.05)
    try:
        frozen = _cycle()
        g.settle()
        deadline = time.monotonic() + 30  # a bound for a loaded machine, not a measurement
        while g.epochs == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert frozen() is None and g.epochs == 1 and not g.frozen
    finally:
        g.close()
    assert not g._thread.is_alive()


def test_closing_the_compiler_unfreezes_and_ends_the_thread(unfrozen):
    c = Compiler(workers=0, gc_freeze=True)
    c.compile(1, big_source(7, 2))  # over inline_bytes: a program built here, the heap frozen
    assert c.gc.frozen and gc.get_freeze_count() > 0
    c.close()
    assert not c.gc.frozen and gc.get_freeze_count() == 0 and not c.gc._thread.is_alive()
