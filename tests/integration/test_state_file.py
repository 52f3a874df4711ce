"""Run-time changes survive a restart (issue 11, item 5): `vm add`, `vm remove` and `quota
set` are written to [daemon] state_file and applied over the config file at the next start;
the config file stays the authority for what it changes later (restart or SIGHUP); a
damaged state file is set aside and never keeps the daemon down."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile

import pytest

from hypervisor import Hypervisor
from hypervisor.config import DaemonConfig, VMConfig
from hypervisor.daemon import Daemon

MiB = 1 << 20


@pytest.fixture
def workdir():
    d = tempfile.mkdtemp(prefix="pxos-", dir="/tmp")  # short: unix socket paths fit in 108 bytes
    yield d
    shutil.rmtree(d, ignore_errors=True)


def config(workdir: str, vms: list[dict], *, state: bool = True) -> DaemonConfig:
    return DaemonConfig.model_validate({
        "daemon": {"grpc_socket": os.path.join(workdir, "hvd.sock"), "metrics_address": None, "backend": "numpy",
                   "socket_dir": os.path.join(workdir, "vms"),
                   "state_file": os.path.join(workdir, "state", "state.json") if state else None},
        "vm": vms})


def start(cfg: DaemonConfig) -> Daemon:
    return Daemon(cfg, hypervisor=Hypervisor(backend="numpy", device_pool_bytes=64 * MiB)).start(
        grpc=False, metrics=False)


def quotas(d: Daemon) -> dict[int, tuple[int, float, float | None]]:
    return {i.vm_id: (i.memory_quota, i.share_pct, i.cap_pct) for i in d.hv.list_vms()}


FILE = [{"id": 1, "memory": 8 * MiB, "share": 30}, {"id": 2, "memory": 8 * MiB, "share": 30, "socket": "vm2.sock"}]


def test_run_time_changes_survive_a_restart(workdir):
    cfg = config(workdir, FILE)
    d = start(cfg)
    d.set_quota(1, memory_bytes=16 * MiB, share_pct=20.0, cap_pct=50.0)
    d.remove_vm(2)
    d.add_vm(VMConfig(id=3, name="late", memory=4 * MiB, share=10, socket="vm3.sock"))
    before = quotas(d)
    d.stop(grace=1.0)
    assert os.stat(cfg.daemon.state_file).st_mode & 0o777 == 0o600

    d2 = start(cfg)  # the same config file: the changes are back
    try:
        assert quotas(d2) == before == {1: (16 * MiB, 20.0, 50.0), 3: (4 * MiB, 10.0, None)}
        assert d2.hv.vm_info(3).name == "late" and os.path.exists(os.path.join(workdir, "vms", "vm3.sock"))
        assert not os.path.exists(os.path.join(workdir, "vms", "vm2.sock"))
        # Undoing a change by hand (back to the file's values) empties its entry.
        d2.set_quota(1, memory_bytes=8 * MiB, share_pct=30.0, cap_pct=None)
        ids = [e["id"] for e in json.load(open(cfg.daemon.state_file))["vms"]]
        assert ids == [2, 3]
    finally:
        d2.stop(grace=1.0)


def test_the_config_file_wins_for_a_vm_it_changed_since(workdir, caplog):
    d = start(config(workdir, FILE))
    d.set_quota(1, share_pct=20.0)
    d.set_quota(2, share_pct=25.0)
    d.stop(grace=1.0)
    edited = [dict(FILE[0], share=40), FILE[1]]  # the operator edited VM 1's table meanwhile
    with caplog.at_level(logging.INFO, logger="pxos"):
        d2 = start(config(workdir, edited))
    try:
        assert quotas(d2)[1][1] == 40.0 and quotas(d2)[2][1] == 25.0
        assert "VM 1: the config file changed it since its run-time change; the file wins" in caplog.text
    finally:
        d2.stop(grace=1.0)


def test_sighup_keeps_run_time_changes_of_vms_the_file_did_not_change(workdir):
    cfg = config(workdir, FILE)
    d = start(cfg)
    try:
        d.remove_vm(2)
        d.set_quota(1, share_pct=20.0)
        lines = d.reload(config(workdir, [dict(FILE[0], memory=12 * MiB), FILE[1]]))
        # VM 1's table changed in the file: the file decides it again (share back to 30).
        assert lines == ["VM 1: quota 12582912 bytes, share 30%"]
        assert quotas(d) == {1: (12 * MiB, 30.0, None)}  # VM 2 stays removed
        assert [e["id"] for e in json.load(open(cfg.daemon.state_file))["vms"]] == [2]
    finally:
        d.stop(grace=1.0)


def test_a_damaged_state_file_is_set_aside_and_the_daemon_starts(workdir, caplog):
    cfg = config(workdir, FILE)
    os.makedirs(os.path.dirname(cfg.daemon.state_file))
    with open(cfg.daemon.state_file, "w") as f:
        f.write('{"version": 1, "vms": [{"id": 1, "base": null, "now": {"id": 1, "memory": -5}}]}')
    with caplog.at_level(logging.WARNING, logger="pxos"):
        d = start(cfg)
    try:
        assert quotas(d) == {1: (8 * MiB, 30.0, None), 2: (8 * MiB, 30.0, None)}
        assert "is unreadable" in caplog.text and "starting from the config file alone" in caplog.text
        aside = [n for n in os.listdir(os.path.dirname(cfg.daemon.state_file)) if ".bad-" in n]
        assert len(aside) == 1
    finally:
        d.stop(grace=1.0)


def test_a_change_that_no_longer_fits_falls_back_to_the_file(workdir, caplog):
    cfg = config(workdir, FILE)
    d = start(cfg)
    d.add_vm(VMConfig(id=3, memory=4 * MiB, share=40))
    d.stop(grace=1.0)
    # The file now gives VM 1 most of the device: VM 3's run-time 40 % no longer fits.
    with caplog.at_level(logging.WARNING, logger="pxos"):
        d2 = start(config(workdir, [dict(FILE[0], share=60), FILE[1]]))
    try:
        assert set(quotas(d2)) == {1, 2}
        assert "VM 3: cannot apply its run-time change" in caplog.text
    finally:
        d2.stop(grace=1.0)


def test_without_a_state_file_nothing_is_written(workdir):
    cfg = config(workdir, FILE, state=False)
    d = start(cfg)
    d.set_quota(1, share_pct=20.0)
    d.stop(grace=1.0)
    assert not os.path.exists(os.path.join(workdir, "state"))
    d2 = start(cfg)
    try:
        assert quotas(d2)[1][1] == 30.0
    finally:
        d2.stop(grace=1.0)
