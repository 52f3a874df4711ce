"""pxos-vm's command line: errors are one clear line and a nonzero status, nothing starts."""

from __future__ import annotations

import os

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


@pytest.mark.qemu
def test_qemu_that_cannot_connect_is_reported(tmp_path, capsys):
    """A socket nobody listens on: QEMU exits at once and pxos-vm says why (needs QEMU and
    the guest artefacts; skipped where they are missing)."""
    import socket

    from qemu import artefacts
    from qemu.errors import GuestImageError

    try:
        artefacts.prepare()
    except GuestImageError as e:
        if os.environ.get("PXOS_REQUIRE_QEMU") == "1":  # CI: a guest that cannot be prepared fails
            pytest.fail(f"guest artefacts unavailable: {e}")
        pytest.skip(f"guest artefacts unavailable: {e}")
    path = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()                                   # the file stays; connecting is refused
    assert launcher.main(["run", "--socket", str(path), "--cmd", "true", "--quiet", "--accel", "tcg"]) == 1
    err = capsys.readouterr().err
    assert "QEMU exited 1 before the guest command finished" in err
    assert "Connection refused" in err
