"""Tenant isolation on the host side of the Hypervisor (issue 17): what one VM can make
the daemon hold is bounded per VM and counted, reading one VM's figures costs nothing per
other VM or per buffer, and a reset gives the VM's next driver a zero usage at once."""

from __future__ import annotations

from scheduler.window import UsageWindow


class _CountingDict(dict):
    """A VM's buffer table that counts every walk over it."""

    walks = 0

    def values(self):
        type(self).walks += 1
        return super().values()

    def items(self):
        type(self).walks += 1
        return super().items()

    def __iter__(self):
        type(self).walks += 1
        return super().__iter__()


def test_one_vms_stats_read_nothing_of_other_vms_or_of_its_buffers(hv, monkeypatch):
    for vm in range(1, 41):
        hv.register_vm(vm, 100, 1)
    for _ in range(300):
        hv.alloc(1, "float32", [4])
    hv.free(1, hv.alloc(1, "float32", [4]).handle)
    pruned: list[int] = []
    real_prune = UsageWindow.prune

    def counting_prune(self, now, window):
        pruned.append(id(self))
        return real_prune(self, now, window)

    monkeypatch.setattr(UsageWindow, "prune", counting_prune)
    mine = id(hv.scheduler._vms[1].usage)
    mem = hv.memory.vm(1)
    mem.buffers = _CountingDict(mem.buffers)

    s = hv.stats(1)
    assert s.buffers == 300 and s.memory_used == 300 * 16
    assert set(pruned) == {mine}, "a guest's STATS read other VMs' scheduler state"
    assert _CountingDict.walks == 0, "a guest's STATS walked its buffers under the lock"

    pruned.clear()
    table = hv.all_stats()
    assert [t.vm_id for t in table] == list(range(1, 41)) and table[0].buffers == 300
    assert sorted(pruned) == sorted({id(v.usage) for v in hv.scheduler._vms.values()}), \
        "all_stats read some VM's window more than once"
    assert _CountingDict.walks == 0
