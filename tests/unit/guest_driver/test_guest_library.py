"""pxos_guest without a pxOS device: binding encoding, errors, and what a file that is not
/dev/pxosN answers (the ioctls reach a real kernel, which refuses them)."""

from __future__ import annotations

import errno
import struct

import numpy as np
import pytest


def test_scalar_and_buffer_bindings_encode_as_the_wire_says(pxos_guest):
    dev = pxos_guest.Device.__new__(pxos_guest.Device)
    buf = pxos_guest.Buffer(dev, 0x1234, np.dtype(np.float32), (2, 2))
    arr = pxos_guest.Device._bindings({"x": buf, "lr": 0.5, "n": -3, "k": np.int32(7), "t": 2},
                                      {"lr": np.dtype(np.float32), "t": np.dtype(np.float64)})
    assert (arr[0].name, arr[0].kind, arr[0].dtype, arr[0].value) == (b"x", 1, 0, 0x1234)
    # A scalar takes its param's dtype; the value travels as binary64 / int64 bits.
    assert (arr[1].kind, arr[1].dtype) == (pxos_guest.BIND_SCALAR_F64, 2)
    assert struct.unpack("<d", struct.pack("<Q", arr[1].value))[0] == 0.5
    assert (arr[2].kind, arr[2].dtype) == (pxos_guest.BIND_SCALAR_I64, 5)
    assert struct.unpack("<q", struct.pack("<Q", arr[2].value))[0] == -3
    assert (arr[3].kind, arr[3].dtype) == (pxos_guest.BIND_SCALAR_I64, 4)   # from np.int32
    assert (arr[4].kind, arr[4].dtype) == (pxos_guest.BIND_SCALAR_F64, 3)   # int for a float64 param
    assert struct.unpack("<d", struct.pack("<Q", arr[4].value))[0] == 2.0


def test_too_many_bindings_are_refused_before_any_ioctl(pxos_guest):
    with pytest.raises(ValueError, match="at most 32"):
        pxos_guest.Device._bindings({f"p{i}": 1.0 for i in range(33)})


def test_device_that_is_not_pxos_gives_a_typed_error(pxos_guest, tmp_path):
    with pxos_guest.Device("/dev/null") as dev:
        with pytest.raises(pxos_guest.PxosDeviceError) as info:
            dev.info()
    assert info.value.errno == errno.ENOTTY
    assert info.value.status == ""
    assert "info" in str(info.value)


def test_error_carries_the_device_status_and_message(pxos_guest):
    res = pxos_guest.Result(status=3, message=b"VM 2: over quota")
    e = pxos_guest.PxosDeviceError("alloc", errno.EDQUOT, res)
    assert e.status == "QUOTA"
    assert "PXOS_S_QUOTA: VM 2: over quota" in str(e)


def test_a_removed_vm_raises_vm_gone_and_every_status_has_a_name(pxos_guest):
    from virtio_backend.wire import PxosStatus

    assert pxos_guest.STATUS_NAMES == tuple(s.name.removeprefix("PXOS_S_") for s in PxosStatus)
    res = pxos_guest.Result(status=PxosStatus.PXOS_S_VM_GONE, message=b"VM 2 was removed from pxos-hvd")
    e = pxos_guest.device_error("launch", errno.ENODEV, res)
    assert isinstance(e, pxos_guest.VMGone) and isinstance(e, pxos_guest.PxosDeviceError)
    assert "No such device [PXOS_S_VM_GONE: VM 2 was removed from pxos-hvd]" in str(e)
    quota = pxos_guest.device_error("alloc", errno.EDQUOT, pxos_guest.Result(status=3, message=b"q"))
    assert type(quota) is pxos_guest.PxosDeviceError


def test_alloc_rejects_dtypes_the_wire_lacks(pxos_guest):
    dev = pxos_guest.Device.__new__(pxos_guest.Device)
    with pytest.raises(ValueError):
        dev.alloc(np.complex64, (4,))
    with pytest.raises(ValueError):
        dev.alloc(np.float32, (1,) * 9)
