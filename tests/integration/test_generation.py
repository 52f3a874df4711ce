"""Generation with a shared model through the hypervisor, as a guest runs it (pxos_llm over
the guest library's API, served in-process by HostDevice): logits against a plain NumPy
forward pass, greedy tokens, two VMs at once, overcommit. The same program inside real
guests is tests/e2e/test_guest_generate.py; against llama.cpp, test_generation_llama_cpp.py."""

from __future__ import annotations

import threading

import numpy as np
import pxos_llm
import pytest

from hypervisor import Hypervisor
from tests.support.host_device import HostDevice
from tests.support.llama_ref import LlamaReference
from tests.support.tiny_gguf import write_tiny_llama

PROMPTS = [[5, 17, 200, 33, 41], [100], [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(write_tiny_llama(tmp_path_factory.mktemp("m") / "tiny.gguf", n_layer=3))


@pytest.fixture(scope="module")
def ref(tiny):
    return LlamaReference(tiny)


BACKENDS = ["numpy", pytest.param("wgpu", marks=pytest.mark.wgpu),  # wgpu: lavapipe in CI
            pytest.param("cupy", marks=pytest.mark.gpu)]


def _hv(tiny, pool=64 << 20, host=0, vms=(1,), backend="numpy"):
    hv = Hypervisor(backend=backend, device_pool_bytes=pool, host_budget_bytes=host).start()
    hv.load_model("tiny", tiny)
    for v in vms:
        hv.register_vm(v, 0, 100 / len(vms), memory_quota_bytes=16 << 20)
    return hv


def _greedy_ref(ref: LlamaReference, ids: list[int], n: int) -> list[int]:
    ref.reset()
    logits = ref.forward(ids)[-1]
    out = []
    for _ in range(n):
        out.append(int(np.argmax(logits)))
        logits = ref.forward([out[-1]])[-1]
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("ids", PROMPTS)
def test_prefill_logits_match_the_numpy_reference(tiny, ref, ids, backend):
    hv = _hv(tiny, backend=backend)
    try:
        runner = pxos_llm.LlamaRunner(HostDevice(hv, 1), "tiny", ctx=64)
        got = runner.prefill_logits(ids)
        ref.reset()
        want = ref.forward(ids)[-1]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    finally:
        hv.stop()


@pytest.mark.parametrize("backend", BACKENDS)
def test_greedy_generation_matches_the_reference_step_by_step(tiny, ref, backend):
    hv = _hv(tiny, backend=backend)
    try:
        runner = pxos_llm.LlamaRunner(HostDevice(hv, 1), "tiny", ctx=64)
        for ids in PROMPTS:
            res = runner.generate_ids(ids, 12)
            assert res.tokens == _greedy_ref(ref, ids, 12)
            # embed, layer2 (blocks 0-1), layer (block 2), head: 4 launches a token
            assert res.launches == 12 * 4 and res.ttft_s > 0 and res.stopped == "length"
        one = pxos_llm.LlamaRunner(HostDevice(hv, 1, session=2), "tiny", ctx=64, layers_per_launch=1)
        res = one.generate_ids(PROMPTS[0], 12)
        assert res.tokens == _greedy_ref(ref, PROMPTS[0], 12) and res.launches == 12 * 5
        # the logits of decode steps, through the KV cache at runtime positions
        feed = [7, 99, 3, 250, 1]
        got = runner.logits(PROMPTS[0], feed)
        ref.reset()
        want = [ref.forward(PROMPTS[0])[-1]] + [ref.forward([t])[-1] for t in feed]
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)
    finally:
        hv.stop()


def test_two_vms_generate_at_once_with_the_model_held_once(tiny, ref):
    hv = _hv(tiny, vms=(1, 2))
    try:
        model_bytes = hv.list_models()[0].nbytes
        out: dict[int, list[int]] = {}

        def run(vm: int, ids: list[int]) -> None:
            runner = pxos_llm.LlamaRunner(HostDevice(hv, vm), "tiny", ctx=64)
            out[vm] = runner.generate_ids(ids, 16).tokens

        threads = [threading.Thread(target=run, args=(v, PROMPTS[v - 1])) for v in (1, 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert out[1] == _greedy_ref(ref, PROMPTS[0], 16) and out[2] == _greedy_ref(ref, PROMPTS[1], 16)
        assert hv.list_models()[0].users == (1, 2)
        used = hv.device_info().pool_used
        own = sum(hv.vm_info(v).memory_used for v in (1, 2))
        assert used == model_bytes + own  # the model once, each VM its own cache
    finally:
        hv.stop()


@pytest.mark.parametrize("backend", BACKENDS)
def test_overcommit_streams_the_model_with_identical_results(tmp_path, backend):
    tiny = str(write_tiny_llama(tmp_path / "wide.gguf", n_layer=4, n_embd=64, n_ff=256))
    full = _hv(tiny, backend=backend)
    try:
        want = pxos_llm.LlamaRunner(HostDevice(full, 1), "tiny", ctx=64).generate_ids(PROMPTS[2], 10).tokens
        model_bytes = full.list_models()[0].nbytes
    finally:
        full.stop()
    # a pool of a quarter of the model plus room for the VM's own buffers and a launch's
    # temporaries (512 KiB here, where a two-block launch binds half the model's blocks):
    # the layers stream in and out
    small = _hv(tiny, pool=model_bytes // 4 + (512 << 10), host=64 << 20, backend=backend)
    assert small.memory.pool_bytes < model_bytes * 0.8
    try:
        runner = pxos_llm.LlamaRunner(HostDevice(small, 1), "tiny", ctx=64)
        assert runner.generate_ids(PROMPTS[2], 10).tokens == want
        m = small.list_models()[0]
        assert m.device_bytes < m.nbytes * 0.8 and m.host_bytes > 0  # part of it is in host RAM
        assert small.dispatcher.launches == 10 * 4  # embed, two layer2, head
    finally:
        small.stop()


def test_generation_refuses_a_prompt_longer_than_the_cache(tiny):
    hv = _hv(tiny)
    try:
        runner = pxos_llm.LlamaRunner(HostDevice(hv, 1), "tiny", ctx=16)
        with pytest.raises(ValueError, match="KV cache"):
            runner.generate_ids(list(range(1, 15)), 8)
    finally:
        hv.stop()
