"""pxos-vm's command line: errors are one clear line and a nonzero status, nothing starts."""

from __future__ import annotations

import pytest

from qemu import launcher


def test_run_refuses_a_missing_socket(tmp_path, capsys):
    assert launcher.main(["run", "--socket", str(tmp_path / "nope.sock"), "--cmd", "true"]) == 1
    assert "no socket there" in capsys.readouterr().err


def test_file_spec_must_name_a_guest_path(tmp_path):
    with pytest.raises(launcher.LauncherError, match="want /guest/path"):
        launcher._files(["relative=x"])
    with pytest.raises(launcher.LauncherError, match="No such file"):
        launcher._files([f"/root/x={tmp_path / 'missing'}"])
    (tmp_path / "p").write_bytes(b"GPU")
    assert launcher._files([f"/root/p={tmp_path / 'p'}"]) == {"/root/p": b"GPU"}


def test_usage_error_for_unknown_command():
    with pytest.raises(SystemExit) as e:
        launcher.main(["boot"])
    assert e.value.code == 2
