"""The model store: GGUF files loaded once as read-only buffers every VM may read."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hypervisor import Hypervisor
from hypervisor import errors as E
from hypervisor.models.gguf_file import open_gguf
from tests.support.tiny_gguf import write_tiny_llama

COPY = """GPU_KERNEL cp
GPU_PARAM w float[]
GPU_PARAM o float[]
GPU_THREAD_CODE:
    COPY w -> o
GPU_END
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(write_tiny_llama(tmp_path_factory.mktemp("m") / "tiny.gguf"))


@pytest.fixture
def hv():
    hv = Hypervisor(backend="numpy", device_pool_bytes=64 << 20).start()
    hv.register_vm(1, 0, 50, memory_quota_bytes=1 << 20)
    hv.register_vm(2, 0, 50, memory_quota_bytes=1 << 20)
    yield hv
    hv.stop()


def _meta(hv, vm, opened, session=1):
    return json.loads(hv.read(vm, opened.meta_handle, 0, opened.meta_bytes, session=session))


def test_load_counts_the_model_once_and_in_no_quota(hv, tiny):
    before = hv.device_info().pool_used
    info = hv.load_model("tiny", tiny)
    assert info.ntensors == 2 + 2 * 9 and info.architecture == "llama" and info.users == ()
    assert hv.device_info().pool_used - before == info.nbytes == info.device_bytes
    a, b = hv.open_model(1, "tiny", session=1), hv.open_model(2, "tiny", session=7)
    assert a.model_id == b.model_id and a.meta_handle == b.meta_handle
    assert hv.device_info().pool_used - before == info.nbytes  # still once
    assert hv.vm_info(1).memory_used == hv.vm_info(2).memory_used == 0
    assert hv.list_models()[0].users == (1, 2) and hv.list_models()[0].opens == 2


def test_metadata_lists_config_tokenizer_and_tensors(hv, tiny):
    hv.load_model("tiny", tiny)
    meta = _meta(hv, 1, hv.open_model(1, "tiny", session=1))
    assert meta["format"] == 1 and meta["config"]["n_layer"] == 2 and meta["config"]["tied_embeddings"]
    assert meta["tokenizer"]["model"] == "gpt2" and len(meta["tokenizer"]["tokens"]) == meta["config"]["n_vocab"]
    t = meta["tensors"]["blk.1.attn_k.weight"]
    assert t["shape"] == [16, 32] and t["dtype"] == "float32" and t["source_type"] == "Q8_0"
    mf = open_gguf(tiny)
    want = dict((e.name, a) for e, a in mf.arrays(np.dtype(np.float32)))["blk.1.attn_k.weight"]
    got = np.frombuffer(hv.read(1, t["handle"], session=1), np.float32).reshape(16, 32)
    assert np.array_equal(got, want)


def test_tensors_are_read_only_and_private_to_sessions_that_opened_them(hv, tiny):
    hv.load_model("tiny", tiny)
    meta = _meta(hv, 1, hv.open_model(1, "tiny", session=1))
    h = meta["tensors"]["output_norm.weight"]["handle"]
    with pytest.raises(E.ReadOnly):
        hv.write(1, h, 0, b"\0\0\0\0", session=1)
    with pytest.raises(E.ReadOnly):
        hv.free(1, h, session=1)
    k = hv.compile(1, COPY, session=1)[0]
    out = hv.alloc(1, "float32", (32,), session=1)
    with pytest.raises(E.ReadOnly, match="param o"):
        hv.launch(1, k.kernel_id, {"w": out.handle, "o": h}, session=1)
    assert hv.launch(1, k.kernel_id, {"w": h, "o": out.handle}, session=1).wait(10).status == "PXOS_S_OK"
    for vm, session in ((2, 1), (1, 2)):  # another VM, another session of the same VM
        with pytest.raises(E.NotFound):
            hv.read(vm, h, session=session)


def test_remove_refused_while_open_then_frees_everything(hv, tiny):
    before = hv.device_info().pool_used
    hv.load_model("tiny", tiny)
    opened = hv.open_model(1, "tiny", session=3)
    with pytest.raises(E.ModelInUse, match="open in VM 1"):
        hv.remove_model("tiny")
    hv.close_model(1, opened.model_id, session=3)
    hv.open_model(2, "tiny", session=4)
    hv.reset_vm(2)  # a reset closes what the VM had open
    hv.remove_model("tiny")
    assert hv.list_models() == [] and hv.device_info().pool_used == before
    with pytest.raises(E.NotFound):
        hv.open_model(1, "tiny", session=3)


def test_session_close_closes_its_models(hv, tiny):
    hv.load_model("tiny", tiny)
    hv.open_model(1, "tiny", session=5)
    hv.close_session(1, 5)
    assert hv.list_models()[0].opens == 0


@pytest.mark.parametrize("bad", ["", "a b", "x" * 64, "tab\t"])
def test_bad_names_are_refused(hv, tiny, bad):
    with pytest.raises(E.InvalidArgument):
        hv.load_model(bad, tiny)


def test_bad_files_are_typed_errors_and_leave_nothing_behind(hv, tmp_path, tiny):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + b"\xff" * 100)
    before = hv.device_info().pool_used
    for path in (junk, tmp_path / "missing.gguf"):
        with pytest.raises(E.ModelError):
            hv.load_model("m", str(path))
    other = write_tiny_llama(tmp_path / "q.gguf", architecture="qwen2")
    with pytest.raises(E.ModelError, match="not supported"):
        hv.load_model("m", str(other))
    assert hv.device_info().pool_used == before and hv.list_models() == []
    hv.load_model("m", tiny)  # the name is free again
    with pytest.raises(E.AlreadyExists):
        hv.load_model("m", tiny)


def test_a_model_larger_than_the_pool_is_refused_cleanly(tiny):
    with Hypervisor(backend="numpy", device_pool_bytes=16 << 10) as hv:
        with pytest.raises(E.OutOfDeviceMemory):
            hv.load_model("tiny", tiny)
        assert hv.device_info().pool_used == 0 and hv.list_models() == []


def test_float16_models_take_half(hv, tiny):
    a = hv.load_model("a", tiny)
    b = hv.load_model("b", tiny, dtype="float16")
    assert b.dtype == "float16" and b.nbytes < a.nbytes * 0.6
    with pytest.raises(E.InvalidArgument):
        hv.load_model("c", tiny, dtype="int32")
