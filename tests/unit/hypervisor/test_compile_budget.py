"""Per-VM compile budget and the GIL switch interval (issue 14, hypervisor/compiling.py).
A fake clock: nothing here depends on how fast the machine is."""

from __future__ import annotations

import sys

import pytest

from hypervisor import Hypervisor
from hypervisor import errors as E
from hypervisor.compiling import GIL_SWITCH_S, CompileBudget

RELU = """GPU_KERNEL k
GPU_PARAM a float[4]
GPU_THREAD_CODE:
    RELU a -> a
GPU_END
"""


class Clock:
    def __init__(self):
        self.now = 100.0
        self.cpu = 0.0
        self.slept = []

    def sleep(self, s):
        self.slept.append(s)
        self.now += s


def _budget(clock):
    return CompileBudget(0.25, 1.0, clock=lambda: clock.now, sleep=clock.sleep, cpu=lambda: clock.cpu)


def test_a_vm_within_its_budget_never_waits():
    c = _budget(clk := Clock())
    for _ in range(2):
        with c.turn(1):
            clk.cpu += 0.1
    assert clk.slept == [] and c.used(1) == pytest.approx(0.2)


def test_a_vm_over_its_budget_waits_for_its_window_and_others_do_not():
    c = _budget(clk := Clock())
    with c.turn(1):
        clk.cpu += 0.3  # one big compile: over the 0.25 s budget
    with c.turn(2):  # another VM: its own budget
        clk.cpu += 0.1
    assert clk.slept == []
    clk.now += 0.4
    with c.turn(1):  # waits until the big compile leaves the window (1 s after it ended)
        clk.cpu += 0.01
    assert clk.slept == [pytest.approx(0.6)]
    assert c.waited_s == pytest.approx(0.6)


def test_forget_drops_a_vms_usage():
    c = _budget(clk := Clock())
    with c.turn(1):
        clk.cpu += 1.0
    c.forget(1)
    assert c.used(1) == 0.0


def test_hypervisor_charges_compiles_and_shortens_the_gil_interval():
    before = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)
        with Hypervisor(backend="numpy") as hv:
            assert sys.getswitchinterval() <= GIL_SWITCH_S
            hv.register_vm(1, 16, 50)
            hv.compile(1, RELU)
            assert len(hv.compiles._vms[1][1]) == 1  # the compile was charged to VM 1
            with pytest.raises(E.NotFound):
                hv.compile(99, "x")  # an unknown VM gets no budget entry
            assert 99 not in hv.compiles._vms
    finally:
        sys.setswitchinterval(before)
