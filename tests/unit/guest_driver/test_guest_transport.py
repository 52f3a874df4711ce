"""pxos_guest's choice of transport (module device or the stock driver's render node), and
what the DRM transport says about a file that is no pxOS render node."""

from __future__ import annotations

import errno

import pytest


def test_explicit_choice_wins_and_nonsense_is_refused(pxos_guest, monkeypatch):
    monkeypatch.setenv("PXOS_TRANSPORT", "drm")
    assert pxos_guest.choose_transport() == "drm"
    assert pxos_guest.choose_transport("module") == "module"
    with pytest.raises(ValueError, match="auto, module or drm"):
        pxos_guest.choose_transport("virgl")


def test_auto_prefers_the_module_device_then_a_pxos_render_node(pxos_guest, monkeypatch, tmp_path):
    monkeypatch.delenv("PXOS_TRANSPORT", raising=False)
    dev = tmp_path / "pxos0"
    dev.write_bytes(b"")
    monkeypatch.setenv("PXOS_DEVICE", str(dev))
    assert pxos_guest.choose_transport() == "module"
    # No module device, and the "render node" is no DRM device at all: the module path
    # is kept, so the error a program gets names /dev/pxosN as before.
    monkeypatch.setenv("PXOS_DEVICE", str(tmp_path / "absent"))
    monkeypatch.setenv("PXOS_DRM_DEVICE", str(dev))
    assert pxos_guest.choose_transport() == "module"


def test_drm_transport_on_a_file_without_the_pxos_capset(pxos_guest, tmp_path):
    import pxos_drm

    node = tmp_path / "renderD128"
    node.write_bytes(b"")
    assert not pxos_drm.is_pxos_render_node(str(node))
    with pytest.raises(OSError) as e:
        pxos_guest.Device(str(node), transport="drm")
    assert e.value.errno == errno.ENODEV and "no pxOS capset" in str(e.value)
