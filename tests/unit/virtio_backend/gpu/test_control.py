"""virtio_backend.gpu.control: hypervisor errors and launch results → wire responses, and
the handlers against a real Hypervisor (NumPy backend)."""

from __future__ import annotations

import pytest

from hypervisor import Hypervisor
from hypervisor import errors as E
from hypervisor.types import LaunchResult
from primitive_lang import Diagnostic
from virtio_backend.gpu import commands as c
from virtio_backend.gpu import guest as g
from virtio_backend.gpu.chain import Segments
from virtio_backend.gpu.control import Deferred, PxosControl, error_response, launch_response
from virtio_backend.gpu.decode import decode_command, decode_header, read_head
from virtio_backend.wire import PxosClass, PxosStatus

S = PxosStatus


@pytest.fixture
def control():
    hv = Hypervisor(backend="numpy", device_pool_bytes=16 << 20).start()
    hv.register_vm(3, 0, 25, cap_percent=50, memory_quota_bytes=1 << 20)
    yield PxosControl(hv, 3, 64)
    hv.stop()


def cmd(req: bytes, writable: int = 1 << 16):
    chain = Segments([memoryview(req)], [memoryview(bytearray(writable))])
    head = read_head(chain)
    return decode_command(decode_header(head), head, chain)


def test_every_error_class_maps_to_its_status():
    assert error_response(E.NotFound("no buffer 7")) == c.ErrorResp(S.PXOS_S_NOT_FOUND, "no buffer 7")
    assert error_response(E.QuotaExceeded(1, 10, 8, 4)).status == S.PXOS_S_QUOTA
    assert error_response(E.Busy("x")).status == S.PXOS_S_BUSY
    assert error_response(E.PxosError("host")).status == S.PXOS_S_INTERNAL
    diag = Diagnostic("bind-dtype", 0, 0, "x is float32")
    r = error_response(E.BindError("x is float32", [diag]))
    assert r.status == S.PXOS_S_BIND and r.diagnostics == (c.Diagnostic(0, 0, "bind-dtype", "x is float32"),)


def test_launch_results_keep_status_class_and_timings():
    res = LaunchResult(5, 3, "PXOS_S_CANCELLED", E.Cancelled("session closed"), 0, 10, 12, "BATCH", "k")
    assert launch_response(res) == c.LaunchResp(S.PXOS_S_CANCELLED, "session closed", 5, 0, 10, 12,
                                                PxosClass.PXOS_CLASS_BATCH)
    ok = LaunchResult(6, 3, "PXOS_S_OK", None, 9, 1, 11, "REALTIME", "k")
    assert launch_response(ok).status == S.PXOS_S_OK and launch_response(ok).message == ""


def test_get_info_reports_the_vm_and_refuses_another_abi_major(control):
    info = control.handle(cmd(g.get_info()))
    assert (info.vm_id, info.memory_quota, info.compute_share_pct, info.compute_cap_pct) == (3, 1 << 20, 25, 50)
    assert info.backend == "numpy" and info.max_inflight == 64
    assert control.handle(cmd(g.get_info(abi_major=0))).status == S.PXOS_S_UNSUPPORTED


def test_launch_is_deferred_until_the_work_completes(control):
    src = "GPU_KERNEL k\nGPU_PARAM x float32[4]\nGPU_PARAM y float32[4]\nGPU_THREAD_CODE:\n    RELU x -> y\nGPU_END\n"
    kid = control.handle(cmd(g.compile(src))).kernels[0].kernel_id
    hx, hy = (control.handle(cmd(g.alloc(2, [4]))).handle for _ in range(2))
    out = control.handle(cmd(g.launch(kid, [g.bind_buffer("x", hx), g.bind_buffer("y", hy)])))
    assert isinstance(out, Deferred)
    assert launch_response(out.completion.wait(10)).status == S.PXOS_S_OK


def test_sessions_are_separate(control):
    h = control.handle(cmd(g.alloc(2, [4], session=1))).handle
    assert control.handle(cmd(g.free(h, session=2))).status == S.PXOS_S_NOT_FOUND
    assert control.handle(cmd(g.free(h, session=1))) == c.NoDataResp()


def test_commands_and_responses_are_frozen_dataclasses():
    import dataclasses

    info = c.InfoResp(1, 2, 3, 4, 5, 6, "numpy", "cpu")
    assert info.flags == 0 and dataclasses.fields(info)[0].name == "vm_id"
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.vm_id = 2
    assert dataclasses.replace(info, vm_id=7) == c.InfoResp(7, 2, 3, 4, 5, 6, "numpy", "cpu", flags=0)
    assert c.KernelInfoResp(1, "k", PxosClass.PXOS_CLASS_NONE, None, 3).params == ()
    hdr = c.Header(0x7000, 1, 2, 3, 0)
    assert hdr.session == 3 and hdr == c.Header(type=0x7000, flags=1, fence_id=2, ctx_id=3, ring_idx=0)
    assert hdr != (0x7000, 1, 2, 3, 0) and hash(hdr) == hash(c.Header(0x7000, 1, 2, 3, 0))
    with pytest.raises(TypeError):
        c.GetInfoCmd(hdr, 1)  # every field without a default is required
